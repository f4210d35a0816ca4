"""Fork fields on layers the numpy executor runs: honoured (``ceil_mode``) or refused.

A fork field that changes what a layer computes must never be ignored: the executor
either computes with it or raises :class:`UnsupportedLayerError` naming the field, and
the local check then leaves that layer out. Fields known not to change the TEST output
(engine and precision hints, fillers, BatchNorm dialect fields) pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from conftest import shared_path

import bnfuse
from bnfuse.errors import UnsupportedLayerError
from bnfuse.layertypes import executable
from bnfuse.layertypes._forks import refused_fork_field
from bnfuse.layertypes.shapes import infer_shapes
from bnfuse.verification.executor import forward
from bnfuse.verification.local import verify_local
from bnfuse.verification.randweights import random_weights

Array = npt.NDArray[Any]
RNG = np.random.default_rng(3)

POOL = """layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{
  dim: 1 dim: 2 dim: {size} dim: {size} }} }} }}
layer {{ name: "pool" type: "Pooling" bottom: "x" top: "y"
  pooling_param {{ pool: {pool} kernel_size: 3 stride: 2 pad: 1 {extra} }} }}"""


def ref_pool(x: Array, out: int, is_max: bool) -> Array:
    """Caffe's pooling loops (kernel 3, stride 2, pad 1) for ``out`` positions per axis."""
    n, c, h, w = x.shape
    y = np.zeros((n, c, out, out), np.float64)
    for i in range(n):
        for k in range(c):
            for a in range(out):
                for b in range(out):
                    h0, w0 = a * 2 - 1, b * 2 - 1
                    h1, w1 = min(h0 + 3, h + 1), min(w0 + 3, w + 1)
                    area = (h1 - h0) * (w1 - w0)
                    rows = range(max(h0, 0), min(h1, h))
                    cols = range(max(w0, 0), min(w1, w))
                    values = [float(x[i, k, r, s]) for r in rows for s in cols]
                    y[i, k, a, b] = max(values) if is_max else sum(values) / area
    return y


@pytest.mark.parametrize(("extra", "out"), [
    ("ceil_mode: false", 56),   # floor((112 + 2 - 3) / 2) + 1
    ("ceil_mode: true", 57),    # ceil: the default, as without the field
    ("", 57),
    ("round_mode: FLOOR", 56),  # BVLC's own spelling
    ("ceil_mode: 0 round_mode: FLOOR", 56),  # both written, agreeing
])
def test_ceil_mode_decides_the_rounding(extra: str, out: int) -> None:
    net = bnfuse.load(POOL.format(size=112, pool="MAX", extra=extra).encode())
    assert infer_shapes(net)["y"] == (1, 2, out, out)


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_ceil_mode_false_runs_with_floor_rounding(pool: str) -> None:
    net = bnfuse.load(POOL.format(size=10, pool=pool, extra="ceil_mode: false").encode())
    x = RNG.standard_normal((1, 2, 10, 10)).astype(np.float32)
    y = forward(net, {"x": x})["y"]
    assert y.shape == (1, 2, 5, 5)  # floor((10 + 2 - 3) / 2) + 1; ceil would give 6
    # Sums of at most 9 float32 values against float64 loops.
    np.testing.assert_allclose(y, ref_pool(x, 5, pool == "MAX"), rtol=1e-6, atol=1e-7)


def test_ceil_mode_and_round_mode_that_disagree_are_refused() -> None:
    net = bnfuse.load(POOL.format(size=9, pool="MAX",
                                  extra="ceil_mode: false round_mode: CEIL").encode())
    with pytest.raises(UnsupportedLayerError, match="round_mode and ceil_mode"):
        infer_shapes(net)


def test_densenet_pool1_is_56x56() -> None:
    net = bnfuse.load(shared_path("corpus", "prototxt", "densenet121.prototxt"))
    assert infer_shapes(net, stop_at_unknown=True)["pool1"] == (1, 64, 56, 56)


CONV = """layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{
  dim: 1 dim: 2 dim: 5 dim: 5 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "x" top: "c" {top}
  convolution_param {{ num_output: 2 kernel_size: 3 {inner} }} }}
layer {{ name: "bn" type: "BatchNorm" bottom: "c" top: "c" }}
layer {{ name: "relu" type: "ReLU" bottom: "c" top: "r" }}"""


@pytest.mark.parametrize(("top", "inner", "refused"), [
    ("", "quantize_bits: 8", "convolution_param.quantize_bits"),
    ("sparse_mode: true", "", "sparse_mode"),
    ("", "weight_filler { type: 'xavier' } my_filler { type: 'msra' }", None),
    ('engine: "MKL2017"', "", None),  # Intel Caffe's engine choice
    ("forward_type: FLOAT16 forward_math: FLOAT", "", None),  # NVIDIA Caffe precision
    ("", "cudnn_convolution_algo_seeker: FINDEX engine: CUDNN", None),
])
def test_unknown_fields_are_refused_by_name_or_known_inert(top: str, inner: str,
                                                           refused: str | None) -> None:
    net = bnfuse.load(CONV.format(top=top, inner=inner).encode())
    conv = net.layer("conv")
    assert refused_fork_field(conv) == refused
    assert executable(conv) is (refused is None) and executable(conv.type)
    net.set_blobs(conv, [np.ones((2, 2, 3, 3), np.float32), np.zeros(2, np.float32)])
    net.set_blobs(net.layer("bn"), [np.zeros(2, np.float32), np.ones(2, np.float32),
                                    np.ones(1, np.float32)])
    if refused is None:
        assert forward(net)["r"].shape == (1, 2, 3, 3)
        return
    with pytest.raises(UnsupportedLayerError,
                       match=f"'conv'.*fork field {refused} may change what the layer computes"):
        forward(net)


def test_batchnorm_dialect_fields_are_the_dialects_business() -> None:
    net = bnfuse.load(b"""layer { name: "bn" type: "BN" bottom: "x" top: "x"
      bn_param { bn_mode: INFERENCE scale_filler { type: "constant" } } }
    layer { name: "bn2" type: "BN" bottom: "x" top: "x" bn_param { novel: 1 } }""")
    assert refused_fork_field(net.layer("bn")) is None
    assert refused_fork_field(net.layer("bn2")) == "bn_param.novel"


def test_local_check_leaves_a_refused_layer_out() -> None:
    """The ReLU after the fold carries a fork field: it becomes a region boundary."""
    text = """layer { name: "in" type: "Input" top: "x" input_param { shape {
      dim: 1 dim: 2 dim: 6 dim: 6 } } }
    layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
      convolution_param { num_output: 3 kernel_size: 3 } }
    layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }
    layer { name: "relu" type: "ReLU" bottom: "c" top: "r" relu_param { clip_at: 6 } }
    layer { name: "conv2" type: "Convolution" bottom: "r" top: "d"
      convolution_param { num_output: 2 kernel_size: 1 } }
    layer { name: "bn2" type: "BatchNorm" bottom: "d" top: "d" }"""
    original = random_weights(text.encode(), seed=0, unmeasurable="unit")
    folded = bnfuse.fold_net(random_weights(text.encode(), seed=0, unmeasurable="unit")).net
    with pytest.raises(UnsupportedLayerError, match=r"relu_param\.clip_at"):
        forward(original)
    result = verify_local(original, folded)
    assert result.passed
    assert sorted(blob.name for blob in result.blobs) == ["c", "d"]
    assert "local check: 4 layers of a, 2 of b, 2 region inputs" in result.notes[-1]


# --------------------------------------------------------------------------- ReLU6, Interp


@pytest.mark.parametrize(("param", "slope"), [("", 0.0), ("relu6_param { negative_slope: 0.1 }",
                                                           0.1)])
def test_relu6_matches_its_formula(param: str, slope: float) -> None:
    net = bnfuse.load(f'layer {{ name: "r" type: "ReLU6" bottom: "x" top: "y" {param} }}'
                      .encode())
    x = np.array([-3.0, -0.5, 0.0, 2.5, 6.0, 7.5], np.float32)
    expected = [min(max(v, 0.0) + np.float32(slope) * min(v, 0.0), 6.0) for v in x.tolist()]
    np.testing.assert_allclose(forward(net, {"x": x})["y"], expected, rtol=1e-7)


def ref_interp(x: Array, pad: int, in_h: int, in_w: int, out_h: int, out_w: int) -> Array:
    """The fork's interp2 loops, scalar by scalar, float32 as it computes."""
    f4 = np.float32
    y = np.zeros((*x.shape[:2], out_h, out_w), np.float32)
    rh = f4(f4(in_h - 1) / f4(out_h - 1)) if out_h > 1 else f4(0)
    rw = f4(f4(in_w - 1) / f4(out_w - 1)) if out_w > 1 else f4(0)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            win = x[n, c, pad : pad + in_h, pad : pad + in_w]
            for i in range(out_h):
                hr = f4(rh * f4(i))
                h = int(hr)
                hp = 1 if h < in_h - 1 else 0
                l1 = f4(hr - f4(h))
                l0 = f4(f4(1) - l1)
                for j in range(out_w):
                    wr = f4(rw * f4(j))
                    w = int(wr)
                    wp = 1 if w < in_w - 1 else 0
                    m1 = f4(wr - f4(w))
                    m0 = f4(f4(1) - m1)
                    if (in_h, in_w) == (out_h, out_w):
                        y[n, c, i, j] = win[i, j]
                        continue
                    up = f4(f4(m0 * win[h, w]) + f4(m1 * win[h, w + wp]))
                    down = f4(f4(m0 * win[h + hp, w]) + f4(m1 * win[h + hp, w + wp]))
                    y[n, c, i, j] = f4(f4(l0 * up) + f4(l1 * down))
    return y


@pytest.mark.parametrize(("param", "second", "geometry"), [
    ("zoom_factor: 3", None, (0, 4, 5, 10, 13)),
    ("shrink_factor: 2", None, (0, 4, 5, 2, 3)),
    ("height: 7 width: 2", None, (0, 4, 5, 7, 2)),
    ("shrink_factor: 2 zoom_factor: 2", None, (0, 4, 5, 3, 5)),
    ("pad_beg: -1 pad_end: -1 zoom_factor: 2", None, (1, 2, 3, 3, 5)),
    ("", (1, 1, 6, 1), (0, 4, 5, 6, 1)),
    ("height: 4 width: 5", None, (0, 4, 5, 4, 5)),  # same size: a copy
])
def test_interp_matches_loops(param: str, second: tuple[int, ...] | None,
                              geometry: tuple[int, ...]) -> None:
    bottoms = 'bottom: "x" bottom: "ref"' if second else 'bottom: "x"'
    net = bnfuse.load(f"""layer {{ name: "i" type: "Interp" {bottoms} top: "y"
      interp_param {{ {param} }} }}""".encode())
    x = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    feed = {"x": x} | ({"ref": np.zeros(second, np.float32)} if second else {})
    y = forward(net, feed)["y"]
    expected = ref_interp(x, *geometry)
    assert y.shape == expected.shape
    np.testing.assert_array_equal(y, expected)  # the same float32 operations in order


@pytest.mark.parametrize(("param", "message"), [
    ("pad_beg: 1", "must be <= 0"),
    ("zoom_factor: 0", "must be >= 1"),
    ("", "gives no output size"),
    ("zoom_factor: 2 align: true", r"fork field interp_param\.align is not one"),
])
def test_interp_refuses_what_the_fork_refuses(param: str, message: str) -> None:
    net = bnfuse.load(f"""layer {{ name: "i" type: "Interp" bottom: "x" top: "y"
      interp_param {{ {param} }} }}""".encode())
    with pytest.raises(UnsupportedLayerError, match=message):
        infer_shapes(net, {"x": (1, 2, 4, 4)})


def test_depthwise_types_run_as_grouped_convolutions() -> None:
    """``ConvolutionDepthwise`` and ``DepthwiseConvolution``: one group per channel."""
    x = RNG.standard_normal((1, 3, 5, 5)).astype(np.float32)
    w = RNG.standard_normal((3, 1, 3, 3)).astype(np.float32)
    for kind in ("ConvolutionDepthwise", "DepthwiseConvolution"):
        net = bnfuse.load(f"""layer {{ name: "d" type: "{kind}" bottom: "x" top: "y"
          convolution_param {{ num_output: 3 kernel_size: 3 bias_term: false }} }}""".encode())
        net.set_blobs(net.layer("d"), [w])
        y = forward(net, {"x": x})["y"]
        expected = np.zeros((1, 3, 3, 3))
        for c in range(3):
            for i in range(3):
                for j in range(3):
                    expected[0, c, i, j] = sum(float(w[c, 0, a, b]) * float(x[0, c, i + a, j + b])
                                               for a in range(3) for b in range(3))
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- Upsample


def ref_unpool(x: Array, mask: Array, out_h: int, out_w: int) -> Array:
    """SegNet's loop: zeros, then each value to the flat index its mask names."""
    n, c, h, w = x.shape
    y = np.zeros((n, c, out_h * out_w), np.float32)
    for i in range(n):
        for k in range(c):
            for p in range(h * w):
                y[i, k, int(mask[i, k].ravel()[p])] = x[i, k].ravel()[p]
    return y.reshape(n, c, out_h, out_w)


@pytest.mark.parametrize(("param", "size", "pool"), [
    ("scale: 2", 10, "kernel_size: 2 stride: 2"),
    ("scale: 2 pad_out_h: true", 9, "kernel_size: 2 stride: 2"),
    ("upsample_h: 9 upsample_w: 10", None, "kernel_size: 3 stride: 2"),  # windows overlap
])
def test_segnet_upsample_undoes_max_pooling(param: str, size: int | None, pool: str) -> None:
    h, w = (size or 9), (size or 10)
    text = f"""layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{
      dim: 2 dim: 3 dim: {h} dim: {w} }} }} }}
    layer {{ name: "pool" type: "Pooling" bottom: "x" top: "p" top: "mask"
      pooling_param {{ pool: MAX {pool} }} }}
    layer {{ name: "up" type: "Upsample" bottom: "p" bottom: "mask" top: "y"
      upsample_param {{ {param} }} }}"""
    net = bnfuse.load(text.encode())
    x = RNG.standard_normal((2, 3, h, w)).astype(np.float32)
    out = forward(net, {"x": x})
    assert out["y"].shape == infer_shapes(net)["y"]
    expected = ref_unpool(out["p"], out["mask"], *out["y"].shape[2:])
    np.testing.assert_array_equal(out["y"], expected)
    if size == 10:  # 2x2 windows tile the image: each kept value is back in its place
        kept = out["y"] != 0
        np.testing.assert_array_equal(out["y"][kept], x[kept])


def test_nearest_upsample_repeats_each_value() -> None:
    net = bnfuse.load(b"""layer { name: "u" type: "Upsample" bottom: "x" top: "y"
      upsample_param { scale: 3 } }""")
    x = RNG.standard_normal((1, 2, 2, 3)).astype(np.float32)
    y = forward(net, {"x": x})["y"]
    assert y.shape == (1, 2, 6, 9)
    for c in range(2):
        for i in range(6):
            for j in range(9):
                assert y[0, c, i, j] == x[0, c, i // 3, j // 3]


@pytest.mark.parametrize(("bottoms", "param", "error", "message"), [
    ('bottom: "x"', "", UnsupportedLayerError, "needs a written scale"),
    ('bottom: "x"', "scale: 2 pad_out_h: true",
     UnsupportedLayerError, r"upsample_param\.pad_out_h is not one"),
    ('bottom: "x" bottom: "m"', "scale: 3 pad_out_w: true", UnsupportedLayerError,
     "2 where pad_out is set"),
])
def test_upsample_refuses_what_its_forks_refuse(bottoms: str, param: str,
                                                error: type[Exception], message: str) -> None:
    net = bnfuse.load(f"""layer {{ name: "u" type: "Upsample" {bottoms} top: "y"
      upsample_param {{ {param} }} }}""".encode())
    with pytest.raises(error, match=message):
        infer_shapes(net, {"x": (1, 2, 4, 4), "m": (1, 2, 4, 4)})


def test_upsample_with_a_mask_from_elsewhere_is_refused() -> None:
    from bnfuse.errors import ModelMismatchError

    net = bnfuse.load(b"""layer { name: "u" type: "Upsample" bottom: "x" bottom: "m"
      top: "y" upsample_param { scale: 2 } }""")
    x = np.ones((1, 1, 2, 2), np.float32)
    with pytest.raises(ModelMismatchError, match="names positions outside the 4x4 output"):
        forward(net, {"x": x, "m": np.full((1, 1, 2, 2), 16.0, np.float32)})
