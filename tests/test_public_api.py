"""A converter's use of bnfuse, through ``bnfuse`` names only.

Everything here is what a Caffe-to-X converter does with bnfuse: load a net, ask for
the per-channel map of each BatchNorm dialect, Scale and Bias, run the net and read
its blobs. Every expected value is computed in this file with numpy, from the blobs
and the formulas of the Caffe sources, never with bnfuse's own arithmetic.
"""

from __future__ import annotations

import numpy as np
import pytest

import bnfuse

RNG = np.random.default_rng(20261201)


def _net_with(text: bytes, blobs: dict[str, list[np.ndarray]]) -> bnfuse.Net:
    net = bnfuse.load(text)
    for name, arrays in blobs.items():
        net.set_blobs(net.layer(name), arrays)
    return net


def _one(layer_text: bytes, blobs: list[np.ndarray]) -> bnfuse.Layer:
    net = _net_with(b'layer { name: "n" ' + layer_text + b' bottom: "x" top: "x" }',
                    {"n": blobs})
    return net.layer("n")


def _f32(value: float) -> float:
    return float(np.float32(value))


# --------------------------------------------------------------------------- affine_of


def test_affine_of_bvlc_batchnorm_divides_by_the_factor() -> None:
    mean, var = RNG.standard_normal(5), RNG.uniform(0.5, 2.0, 5)
    factor = 7.5
    layer = _one(b'type: "BatchNorm" batch_norm_param { eps: 0.001 }',
                 [mean * factor, var * factor, np.array([factor])])
    affine = bnfuse.affine_of(layer)
    scale = 1.0 / np.sqrt(var + _f32(0.001))
    assert isinstance(affine, bnfuse.Affine) and affine.channels == 5
    assert affine.scale.dtype == np.float64 and not affine.scale.flags.writeable
    np.testing.assert_allclose(affine.scale, scale, rtol=1e-6)  # the blobs are float32
    np.testing.assert_allclose(affine.shift, -mean * scale, rtol=1e-6, atol=1e-7)


def test_affine_of_bvlc_zero_factor_means_zero_statistics() -> None:
    layer = _one(b'type: "BatchNorm"', [np.full(3, 4.0), np.full(3, 9.0), np.zeros(1)])
    affine = bnfuse.affine_of(layer)
    np.testing.assert_array_equal(affine.scale, np.full(3, 1.0 / np.sqrt(_f32(1e-5))))
    np.testing.assert_array_equal(affine.shift, np.zeros(3))


def test_affine_of_every_fork_dialect() -> None:
    c = 4
    gamma, beta = RNG.uniform(0.5, 2, c), RNG.standard_normal(c)
    mean, var = RNG.standard_normal(c), RNG.uniform(0.5, 2, c)

    def blob(v: np.ndarray) -> np.ndarray:
        return v.reshape(1, c, 1, 1)

    segnet = _one(b'type: "BN" bn_param { bn_mode: INFERENCE }', [blob(gamma), blob(beta)])
    np.testing.assert_allclose(bnfuse.affine_of(segnet).scale, gamma, rtol=1e-6)
    np.testing.assert_allclose(bnfuse.affine_of(segnet).shift, beta, rtol=1e-6)

    pspnet = _one(b'type: "BN" bn_param { eps: 0.01 momentum: 0.9 }',
                  [blob(gamma), blob(beta), blob(mean), blob(var)])
    s = gamma / np.sqrt(var + _f32(0.01))
    np.testing.assert_allclose(bnfuse.affine_of(pspnet).scale, s, rtol=1e-6)
    np.testing.assert_allclose(bnfuse.affine_of(pspnet).shift, beta - mean * s, rtol=1e-5,
                               atol=1e-6)

    cudnn = _one(b'type: "CuDNNBatchNorm" batch_norm_param { eps: 1e-9 }',
                 [blob(gamma), blob(beta), blob(mean), blob(var)])
    s = gamma / np.sqrt(var + 1e-5)  # CUDNN_BN_MIN_EPSILON
    np.testing.assert_allclose(bnfuse.affine_of(cudnn).scale, s, rtol=1e-6)

    nvidia = _one(b'type: "BatchNorm" batch_norm_param { scale_bias: true eps: 1e-7 }',
                  [mean, var, np.ones(1), gamma, beta])
    s = gamma / np.sqrt(var + _f32(1e-5))  # NVIDIA clamps eps to float(1e-5)
    np.testing.assert_allclose(bnfuse.affine_of(nvidia).scale, s, rtol=1e-6)
    np.testing.assert_allclose(bnfuse.affine_of(nvidia).shift, beta - mean * s, rtol=1e-5,
                               atol=1e-6)


def test_affine_of_scale_and_bias() -> None:
    gamma, beta = RNG.standard_normal(3), RNG.standard_normal(3)
    scale = _one(b'type: "Scale" scale_param { bias_term: true }', [gamma, beta])
    np.testing.assert_allclose(bnfuse.affine_of(scale).scale, gamma, rtol=1e-6)
    np.testing.assert_allclose(bnfuse.affine_of(scale).shift, beta, rtol=1e-6)
    no_bias = _one(b'type: "Scale"', [gamma])
    np.testing.assert_array_equal(bnfuse.affine_of(no_bias).shift, np.zeros(3))
    bias = _one(b'type: "Bias"', [beta])
    np.testing.assert_array_equal(bnfuse.affine_of(bias).scale, np.ones(3))
    np.testing.assert_allclose(bnfuse.affine_of(bias).shift, beta, rtol=1e-6)


@pytest.mark.parametrize(("text", "blobs", "words"), [
    (b'type: "BatchNorm" batch_norm_param { use_global_stats: false }', 3,
     "use_global_stats is false"),
    (b'type: "BN" bn_param { bn_mode: LEARN }', 2, "bn_mode is LEARN"),
    (b'type: "Scale" scale_param { axis: 0 }', 1, "works on axis 0"),
    (b'type: "ReLU"', 0, "ReLU is not a per-channel affine layer"),
    (b'type: "Scale"', 0, "has no weights in the caffemodel"),
])
def test_affine_of_says_why_a_layer_is_no_map(text: bytes, blobs: int, words: str) -> None:
    layer = _one(text, [np.ones(2) for _ in range(blobs)])
    with pytest.raises(bnfuse.UnsupportedLayerError, match=words):
        bnfuse.affine_of(layer)


def test_affine_of_refuses_a_scale_whose_factor_is_an_input() -> None:
    net = bnfuse.load(b'layer { name: "s" type: "Scale" bottom: "x" bottom: "f" top: "y" }')
    with pytest.raises(bnfuse.UnsupportedLayerError, match="2 bottoms: its factor is an input"):
        bnfuse.affine_of(net.layer("s"))


def test_affine_of_force_global_stats_reads_the_stored_statistics() -> None:
    layer = _one(b'type: "BatchNorm" batch_norm_param { use_global_stats: false eps: 0 }',
                 [np.array([2.0]), np.array([8.0]), np.array([2.0])])
    affine = bnfuse.affine_of(layer, force_global_stats=True)
    assert affine.scale.tolist() == [0.5] and affine.shift.tolist() == [-0.5]


# --------------------------------------------------------------------------- forward


CONV_NET = b'''
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 2 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
'''


def _conv_net() -> tuple[bnfuse.Net, dict[str, np.ndarray]]:
    w = RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(3).astype(np.float32)
    mean = RNG.standard_normal(3).astype(np.float32)
    var = RNG.uniform(0.5, 2, 3).astype(np.float32)
    net = _net_with(CONV_NET, {"conv": [w, b], "bn": [mean, var, np.ones(1, np.float32)]})
    return net, {"w": w, "b": b, "mean": mean, "var": var}


def _expected(x: np.ndarray, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The net by hand, in float64: 3x3 convolution with zero padding 1, BatchNorm,
    ReLU, then 2x2/2 MAX pooling with Caffe's ceil rounding (5 -> 3: the last window
    overhangs and takes the maximum of what it covers)."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.zeros((1, 3, 5, 5))
    for o in range(3):
        for i in range(5):
            for j in range(5):
                conv[0, o, i, j] = np.sum(xp[0, :, i:i + 3, j:j + 3] * p["w"][o]) + p["b"][o]
    bn = (conv - p["mean"].reshape(1, 3, 1, 1)) / np.sqrt(p["var"].reshape(1, 3, 1, 1) + 1e-5)
    relu = np.maximum(bn, 0)
    pool = np.zeros((1, 3, 3, 3))
    for i in range(3):
        for j in range(3):
            pool[0, :, i, j] = relu[0, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max(axis=(1, 2))
    return {"conv#0": conv, "conv#1": bn, "conv": relu, "pool": pool}


def test_forward_gives_every_blob_as_caffe_computes_it() -> None:
    net, p = _conv_net()
    x = RNG.standard_normal((1, 2, 5, 5)).astype(np.float32)
    blobs = bnfuse.forward(net, {"data": x})
    expected = _expected(x, p)
    assert sorted(blobs) == ["conv", "data", "pool"]
    assert blobs["pool"].dtype == np.float32 and blobs["pool"].shape == (1, 3, 3, 3)
    np.testing.assert_allclose(blobs["conv"], expected["conv"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(blobs["pool"], expected["pool"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(blobs["data"], x)


def test_forward_keeps_the_blobs_and_versions_asked_for() -> None:
    net, p = _conv_net()
    x = RNG.standard_normal((1, 2, 5, 5))
    conv_versions = net.graph().versions_of("conv")
    assert [str(v) for v in conv_versions] == ["conv#0", "conv#1", "conv#2"]
    kept = bnfuse.forward(net, {"data": x}, dtype=np.float64,
                          blobs=[conv_versions[0], conv_versions[1], "pool"])
    assert list(kept) == ["conv#0", "conv#1", "pool"]
    expected = _expected(x, p)
    for key, value in kept.items():
        assert value.dtype == np.float64
        np.testing.assert_allclose(value, expected[key], rtol=1e-5, atol=1e-6)


def test_forward_seeds_the_inputs_it_is_not_given() -> None:
    net, p = _conv_net()
    x = np.random.default_rng(3).standard_normal((1, 2, 5, 5)).astype(np.float32)
    seeded = bnfuse.forward(net, seed=3, blobs=["data", "pool"])
    np.testing.assert_array_equal(seeded["data"], x)
    np.testing.assert_allclose(seeded["pool"], _expected(x, p)["pool"], rtol=1e-5, atol=1e-5)


def test_forward_refuses_unknown_names() -> None:
    net, _ = _conv_net()
    with pytest.raises(bnfuse.ModelMismatchError, match="'dta'"):
        bnfuse.forward(net, {"dta": np.zeros((1, 2, 5, 5))})
    with pytest.raises(bnfuse.BnfuseError, match="no blob named 'poll'"):
        bnfuse.forward(net, blobs=["poll"])
    with pytest.raises(TypeError, match="blobs must be a list"):
        bnfuse.forward(net, blobs="pool")
