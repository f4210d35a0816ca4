"""The executor runs every BatchNorm dialect by its fork's formula, written out here."""

from __future__ import annotations

import numpy as np
import pytest

import bnfuse
from bnfuse.errors import UnsupportedLayerError
from bnfuse.verification.executor import forward

HEAD = b"""layer { name: "in" type: "Input" top: "x"
        input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
"""


def _run(layer_text: bytes, blobs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    net = bnfuse.load(HEAD + layer_text)
    net.set_blobs(net.layers[1], blobs)
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 4))
    return x, forward(net, {"x": x}, dtype=np.float64)["y"]


def _per_channel(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, np.float64).reshape(1, 3, 1, 1)


def test_segnet_bn_inference_is_scale_times_x_plus_shift() -> None:
    scale, shift = np.array([2.0, -1.0, 0.5]), np.array([0.1, 0.2, 0.3])
    x, y = _run(b'layer { name: "bn" type: "BN" bottom: "x" top: "y" '
                b'bn_param { bn_mode: INFERENCE } }',
                [scale.reshape(1, 3, 1, 1), shift.reshape(1, 3, 1, 1)])
    np.testing.assert_allclose(y, x * _per_channel(scale) + _per_channel(shift), rtol=1e-12)


def test_segnet_bn_in_learn_mode_is_refused() -> None:
    with pytest.raises(UnsupportedLayerError, match="bn_mode is LEARN"):
        _run(b'layer { name: "bn" type: "BN" bottom: "x" top: "y" }',
             [np.ones((1, 3, 1, 1)), np.zeros((1, 3, 1, 1))])


def test_pspnet_bn_uses_stored_statistics_without_a_factor() -> None:
    slope, bias = np.array([1.5, 1.0, 0.5]), np.array([0.0, 1.0, -1.0])
    mean, var = np.array([0.3, -0.2, 1.0]), np.array([2.0, 0.5, 1.0])
    x, y = _run(b'layer { name: "bn" type: "BN" bottom: "x" top: "y" '
                b'bn_param { slope_filler { type: "constant" } eps: 0.001 } }',
                [v.reshape(1, 3, 1, 1) for v in (slope, bias, mean, var)])
    eps = float(np.float32(1e-3))  # bn_param.eps is a float32 field
    want = _per_channel(slope) * (x - _per_channel(mean)) / np.sqrt(_per_channel(var) + eps) \
        + _per_channel(bias)
    np.testing.assert_allclose(y, want, rtol=1e-12)


def test_cudnn_batchnorm_layout_is_scale_bias_mean_var() -> None:
    scale, bias = np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.0, -0.5])
    mean, var = np.array([1.0, 0.0, -1.0]), np.array([4.0, 1.0, 0.25])
    x, y = _run(b'layer { name: "bn" type: "CuDNNBatchNorm" bottom: "x" top: "y" }',
                [v.reshape(1, 3, 1, 1) for v in (scale, bias, mean, var)])
    want = _per_channel(scale) * (x - _per_channel(mean)) / np.sqrt(_per_channel(var) + 1e-5) \
        + _per_channel(bias)
    np.testing.assert_allclose(y, want, rtol=1e-12)


def test_nvidia_five_blob_batchnorm_ignores_the_factor_and_applies_scale_bias() -> None:
    mean, var = np.array([1.0, 0.0, -1.0]), np.array([4.0, 1.0, 0.25])
    scale, bias = np.array([2.0, 1.0, 0.5]), np.array([0.0, 0.1, 0.2])
    x, y = _run(b'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" '
                b'batch_norm_param { scale_bias: true eps: 1e-6 } }',
                [mean, var, np.array([7.0]), scale, bias])
    # NVIDIA Caffe clamps eps to at least 1e-5 (as a float32) and never reads blobs[2].
    eps = float(np.float32(1e-5))
    want = (x - _per_channel(mean)) / np.sqrt(_per_channel(var) + eps) * _per_channel(scale) \
        + _per_channel(bias)
    np.testing.assert_allclose(y, want, rtol=1e-12)
