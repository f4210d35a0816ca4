"""Binary-weight nets: the forks' semantics, binarize, thresholds, packed-bit blobs.

Expected values come from loops written out here, never from the code under test.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import bnfuse
from bnfuse.errors import UnsupportedLayerError
from bnfuse.folding.binarize import binarize_net, sign_thresholds
from bnfuse.verification._binarylayers import binary_conventions, verify_binarized
from bnfuse.verification.executor import forward

RNG = np.random.default_rng(7)


def _sign(v: float, zero_to: int) -> float:
    return 1.0 if v > 0 else -1.0 if v < 0 else float(zero_to)


def _loop_conv(x, w, b, group, zero_to, after):
    """The forks' binary convolution, stride 1, no pad, by loops (float64)."""
    n, _c, h, wd = x.shape
    cout, cin_g, kh, kw = w.shape
    oh, ow = h - kh + 1, wd - kw + 1
    y = np.zeros((n, cout, oh, ow))
    for o in range(cout):
        taps = [abs(float(v)) for v in w[o].ravel()]
        alpha = sum(taps) / len(taps)
        g = o // (cout // group)
        for i, r, s in itertools.product(range(n), range(oh), range(ow)):
            acc = 0.0
            for ci, p, q in itertools.product(range(cin_g), range(kh), range(kw)):
                sw = _sign(float(w[o, ci, p, q]), zero_to)
                if not after:
                    sw *= alpha
                acc += sw * float(x[i, g * cin_g + ci, r + p, s + q])
            acc += 0.0 if b is None else float(b[o])
            y[i, o, r, s] = acc * alpha if after else acc
    return y


def _weights(shape, zeros=2):
    w = RNG.standard_normal(shape).astype(np.float32)
    w.reshape(-1)[:zeros] = 0.0  # zero weights: the forks disagree on their sign
    return w


CONV = b'''input: "x" input_shape { dim: 2 dim: 4 dim: 5 dim: 5 }
layer { name: "c" type: "BinaryConvolution" bottom: "x" top: "c"
  convolution_param { num_output: 4 kernel_size: 3 group: GROUP } BLOCK }
'''


def _conv_net(group: int, block: bytes, tail: bytes = b"") -> bnfuse.Net:
    text = CONV.replace(b"GROUP", str(group).encode()).replace(b"BLOCK", block) + tail
    net = bnfuse.load(text)
    net.set_blobs(net.layer("c"), [_weights((4, 4 // group, 3, 3)),
                                   RNG.standard_normal(4).astype(np.float32)])
    return net


@pytest.mark.parametrize("group", [1, 2])
def test_kohuthonza_conv_matches_loops(group: int) -> None:
    net = _conv_net(group, b"binary_convolution_param { scale_weight_diff: false }")
    x = RNG.standard_normal((2, 4, 5, 5))
    got = forward(net, {"x": x}, dtype=np.float64)["c"]
    w, b = (np.asarray(blob) for blob in net.layer("c").blobs)
    np.testing.assert_allclose(got, _loop_conv(x, w, b, group, -1, after=True), rtol=1e-12,
                               atol=1e-12)


def test_zzqiuzz_conv_needs_its_convention_and_matches_loops() -> None:
    net = _conv_net(2, b"")
    x = RNG.standard_normal((2, 4, 5, 5))
    with pytest.raises(UnsupportedLayerError, match="ambiguous"):
        forward(net, {"x": x})
    with binary_conventions({"c": "zzqiuzz"}):
        got = forward(net, {"x": x}, dtype=np.float64)["c"]
    w, b = (np.asarray(blob) for blob in net.layer("c").blobs)
    np.testing.assert_allclose(got, _loop_conv(x, w, b, 2, +1, after=False), rtol=1e-12,
                               atol=1e-12)


def test_unknown_fork_field_is_refused() -> None:
    net = _conv_net(1, b"binary_convolution_param { quantize: true }")
    with pytest.raises(UnsupportedLayerError, match="quantize"):
        forward(net, {"x": np.zeros((2, 4, 5, 5))})


IP = b'''input: "x" input_shape { dim: 3 dim: 6 }
layer { name: "ip" type: "BinaryInnerProduct" bottom: "x" top: "ip"
  inner_product_param { num_output: 3 } }
'''


def test_zzqiuzz_inner_product_matches_loops() -> None:
    net = bnfuse.load(IP)
    w, b = _weights((3, 6), zeros=3), RNG.standard_normal(3).astype(np.float32)
    net.set_blobs(net.layer("ip"), [w, b])
    x = RNG.standard_normal((3, 6))
    got = forward(net, {"x": x}, dtype=np.float64)["ip"]
    want = np.zeros((3, 3))
    for i, o in itertools.product(range(3), range(3)):
        alpha = sum(abs(float(v)) for v in w[o]) / 6
        want[i, o] = sum(alpha * _sign(float(w[o, k]), 1) * x[i, k] for k in range(6)) + b[o]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_signum_maps_zero_to_minus_one() -> None:
    net = bnfuse.load(b'layer { name: "s" type: "Signum" bottom: "x" top: "y" }')
    got = forward(net, {"x": np.array([[-0.5, 0.0, -0.0, 2.0]], np.float32)})["y"]
    assert got.tolist() == [[-1.0, -1.0, -1.0, 1.0]]


# --------------------------------------------------------------------------- binarize


BN_SCALE = b'''
layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }
layer { name: "sc" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }
layer { name: "r" type: "ReLU" bottom: "c" top: "c" }
'''


def _set_bn(net: bnfuse.Net, name: str, channels: int) -> None:
    mean = RNG.standard_normal(channels).astype(np.float32)
    var = RNG.uniform(0.5, 2.0, channels).astype(np.float32)
    net.set_blobs(net.layer(name), [mean * 2, var * 2, np.array([2.0], np.float32)])


def _check_binarized(reference: dict[str, np.ndarray], net: bnfuse.Net, x: np.ndarray,
                     top: str, binarized: list[str]) -> None:
    for name in binarized:
        assert set(np.unique(net.layer(name).blobs[0]).tolist()) <= {-1.0, 1.0}
        assert net.layer(name).blobs[0].dtype == np.float32
    got = forward(net, {"x": x}, dtype=np.float64)[top]
    np.testing.assert_allclose(got, reference[top], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("block", "convention", "zero_to"), [
    (b"binary_convolution_param { }", None, -1), (b"", "zzqiuzz", 1)])
def test_binarize_conv_bn_scale(block: bytes, convention: str | None, zero_to: int) -> None:
    net = _conv_net(2, block, BN_SCALE)
    _set_bn(net, "bn", 4)
    net.set_blobs(net.layer("sc"), [RNG.uniform(0.5, 2, 4).astype(np.float32),
                                    RNG.standard_normal(4).astype(np.float32)])
    x = RNG.standard_normal((2, 4, 5, 5))
    w = np.asarray(net.layer("c").blobs[0])
    with binary_conventions({"c": convention} if convention else {}):
        reference = forward(net, {"x": x}, dtype=np.float64)
    result = binarize_net(net, convention=convention)
    [entry] = result.report.layers
    assert entry.skipped is None and entry.alpha_into == "sc" and entry.merged == ["bn", "sc"]
    assert [layer.type for layer in net.layers] == ["Input", "Convolution", "Scale", "ReLU"]
    want_signs = np.where(w > 0, 1.0, np.where(w < 0, -1.0, zero_to))
    np.testing.assert_array_equal(net.layer("c").blobs[0], want_signs)
    alphas = [np.abs(w[o]).mean() for o in range(4)]
    assert entry.alpha_min == pytest.approx(min(alphas)) and entry.alpha_max == pytest.approx(
        max(alphas))
    assert ("after" in entry.bias) == (zero_to == -1)
    _check_binarized(reference, net, x, "c", ["c"])


def test_binarize_inner_product_bn_without_scale_not_in_place() -> None:
    text = IP + b'layer { name: "bn" type: "BatchNorm" bottom: "ip" top: "out" }\n'
    net = bnfuse.load(text)
    net.set_blobs(net.layer("ip"), [_weights((3, 6)), RNG.standard_normal(3).astype("f4")])
    _set_bn(net, "bn", 3)
    x = RNG.standard_normal((3, 6))
    reference = forward(net, {"x": x}, dtype=np.float64)
    result = binarize_net(net)
    assert result.report.layers[0].alpha_into == "bn"
    assert net.layer("bn").type == "Scale" and net.layer("ip").tops == ("ip_sign",)
    _check_binarized(reference, net, x, "out", ["ip"])


@pytest.mark.parametrize(("block", "convention"), [
    (b"binary_convolution_param { }", None), (b"", "zzqiuzz")])
def test_binarize_without_affine_after_inserts_a_scale(block: bytes,
                                                       convention: str | None) -> None:
    relu = b'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }\n'
    net = _conv_net(1, block, relu)
    x = RNG.standard_normal((2, 4, 5, 5))
    with binary_conventions({"c": convention} if convention else {}):
        reference = forward(net, {"x": x}, dtype=np.float64)
    [entry] = binarize_net(net, convention=convention).report.layers
    assert entry.skipped is None and entry.alpha_into == "c_alpha" and entry.merged == []
    assert [(layer.name, layer.type, layer.bottoms, layer.tops) for layer in net.layers[1:]] == [
        ("c", "Convolution", ("x",), ("c_sign",)), ("c_alpha", "Scale", ("c_sign",), ("c",)),
        ("r", "ReLU", ("c",), ("c",))]
    _check_binarized(reference, net, x, "c", ["c"])


def test_plain_layers_already_alpha_sign_binarize_to_same_outputs() -> None:
    text = (b'input: "x" input_shape { dim: 1 dim: 2 dim: 4 dim: 4 }\n'
            b'layer { name: "conv" type: "Convolution" bottom: "x" top: "y"\n'
            b'  convolution_param { num_output: 3 kernel_size: 3 } }\n'
            b'layer { name: "bn" type: "BatchNorm" bottom: "y" top: "y" }\n')
    net = bnfuse.load(text)
    alpha = np.array([0.25, 1.5, 3.0], np.float32)
    signs = np.where(RNG.standard_normal((3, 2, 3, 3)) >= 0, 1.0, -1.0).astype(np.float32)
    net.set_blobs(net.layer("conv"), [signs * alpha[:, None, None, None],
                                      np.array([0.5, -1.0, 2.0], np.float32)])
    _set_bn(net, "bn", 3)
    x = RNG.standard_normal((1, 2, 4, 4))
    reference = forward(net, {"x": x}, dtype=np.float64)
    result = binarize_net(net, layers=["conv"], convention="zzqiuzz")
    np.testing.assert_array_equal(net.layer("conv").blobs[0], signs)
    assert result.report.layers[0].alpha_min == pytest.approx(0.25)
    _check_binarized(reference, net, x, "y", ["conv"])


def test_binarize_verify_against_fork_semantics() -> None:
    def build() -> bnfuse.Net:
        rng = np.random.default_rng(3)
        net = bnfuse.load(CONV.replace(b"GROUP", b"1").replace(b"BLOCK", b"") + BN_SCALE)
        net.set_blobs(net.layer("c"), [rng.standard_normal((4, 4, 3, 3)).astype("f4"),
                                       rng.standard_normal(4).astype("f4")])
        net.set_blobs(net.layer("bn"), [rng.standard_normal(4).astype("f4"),
                                        rng.uniform(1, 2, 4).astype("f4"),
                                        np.array([1.0], "f4")])
        net.set_blobs(net.layer("sc"), [rng.uniform(1, 2, 4).astype("f4"),
                                        rng.standard_normal(4).astype("f4")])
        return net

    binarized = binarize_net(build(), convention="zzqiuzz").net
    good = verify_binarized(build(), binarized, conventions={"c": "zzqiuzz"})
    assert good.passed
    # The other fork's rule is a different function: the check must see it.
    bad = verify_binarized(build(), binarized, conventions={"c": "kohuthonza"})
    assert not bad.passed


# --------------------------------------------------------------------------- thresholds


@pytest.mark.parametrize("zero_to", [-1, 1])
def test_thresholds_reproduce_signs_including_ties_and_zero_scale(zero_to: int) -> None:
    scale = np.array([2.0, -0.5, 0.0, 0.0, 0.0, 4.0, -3.0], np.float32)
    shift = np.array([-3.0, 1.0, 2.0, -2.0, 0.0, 0.0, 1.5], np.float32)
    t = sign_thresholds(scale, shift, zero_to=zero_to)

    def act(v: float) -> int:
        return 1 if v > 0 else -1 if v < 0 else zero_to

    def side(x: float, c: int) -> int:
        d = x - t.threshold[c]
        return int(t.polarity[c]) * (1 if d > 0 else -1) if d != 0 else int(t.tie[c])

    xs = [*RNG.standard_normal(200).tolist(), 1.5, 2.0, 0.0, 0.5, -0.5]
    for c in range(scale.size):
        for x in [*xs, float(t.threshold[c]) if np.isfinite(t.threshold[c]) else 0.0]:
            exact = float(scale[c]) * x + float(shift[c])
            assert side(x, c) == act(exact), (c, x)


def test_thresholds_of_signum_after_binarized_chain() -> None:
    tail = BN_SCALE.replace(b'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }',
                            b'layer { name: "r" type: "Signum" bottom: "c" top: "s" }')
    net = _conv_net(1, b"binary_convolution_param { }", tail)
    _set_bn(net, "bn", 4)
    net.set_blobs(net.layer("sc"), [np.array([1, -1, 0, 2], np.float32),
                                    np.array([0.5, 0, 1, -1], np.float32)])
    result = binarize_net(net)
    assert list(result.thresholds) == ["r"]
    t = result.thresholds["r"]
    scale, shift = (np.asarray(b, np.float64) for b in net.layer("sc").blobs)
    for c in range(4):
        if scale[c] == 0:
            assert t.threshold[c] == -np.inf and t.polarity[c] == (1 if shift[c] > 0 else -1)
        else:
            assert t.threshold[c] == pytest.approx(-shift[c] / scale[c], rel=1e-15)
            assert t.polarity[c] == (1 if scale[c] > 0 else -1) and t.tie[c] == -1


# --------------------------------------------------------------------------- packed bits


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_packed_bit_blob_is_named_not_called_corrupt(tmp_path) -> None:
    shape = _field(7, _field(1, b"".join(_varint(d) for d in (4, 1, 2, 2))))
    blob = shape + _field(10, bytes([0b10110010, 0b01001101]))  # 16 weights, 2 bytes
    layer = _field(1, b"bconv") + _field(2, b"BinaryConvolution") + _field(7, blob)
    model = tmp_path / "packed.caffemodel"
    model.write_bytes(_field(100, layer))
    text = (b'input: "x" input_shape { dim: 1 dim: 1 dim: 3 dim: 3 }\n'
            b'layer { name: "bconv" type: "BinaryConvolution" bottom: "x" top: "y"\n'
            b'  convolution_param { num_output: 4 kernel_size: 2 bias_term: false } }\n')
    with pytest.raises(bnfuse.CaffemodelError) as caught:
        bnfuse.load(text, model)
    message = str(caught.value)
    assert "packed-bit" in message and "'bconv'" in message and "field 10" in message
    assert "corrupt" not in message


# --------------------------------------------------------------------------- command line


def test_cli_binarize_verify_writes_net_and_thresholds(tmp_path, capsys) -> None:
    from bnfuse.cli import main

    tail = BN_SCALE.replace(b'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }',
                            b'layer { name: "r" type: "Signum" bottom: "c" top: "s" }')
    net = _conv_net(2, b"binary_convolution_param { }", tail)
    _set_bn(net, "bn", 4)
    net.set_blobs(net.layer("sc"), [np.array([1, -1, 0, 2], np.float32),
                                    np.array([0.5, 0, 1, -1], np.float32)])
    bnfuse.save(net, tmp_path / "b.prototxt", tmp_path / "b.caffemodel")
    out = tmp_path / "out"
    code = main(["binarize", str(tmp_path / "b.prototxt"), str(tmp_path / "b.caffemodel"),
                 "-o", f"{out}.prototxt", "-w", f"{out}.caffemodel", "--verify",
                 "--thresholds", f"{out}.npz"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "alpha into Scale 'sc'" in printed and "thresholds for 'r'" in printed
    written = bnfuse.load(f"{out}.prototxt", f"{out}.caffemodel")
    assert [layer.type for layer in written.layers] == ["Input", "Convolution", "Scale",
                                                        "Signum"]
    with np.load(f"{out}.npz") as sidecar:
        assert sorted(sidecar.files) == ["r/polarity", "r/threshold", "r/tie"]
        assert sidecar["r/threshold"][2] == -np.inf and sidecar["r/polarity"][2] == 1
        assert sidecar["r/tie"].dtype == np.int8
