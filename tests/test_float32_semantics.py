"""A chain folds only when Caffe's own float32 evaluation of it is finite.

Each case below is a model whose float64 fold is finite (bnfuse folded every one of them
before the float32 rule) while Caffe, computing layer by layer in float32, outputs inf or
NaN. The float32 values are written out bit for bit (``float.fromhex``). Each test checks
three facts: the planner keeps the chain with a reason naming the step and the channel,
the reference executor (Caffe's float32 arithmetic) really gives a non-finite value in
that channel for the original model, and ``fold`` writes nothing different.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bnfuse
from bnfuse.errors import UnsupportedLayerError
from bnfuse.folding.float32 import (
    Float32Probe,
    caffe_float32_batchnorm,
    caffe_float32_bias,
    caffe_float32_scale,
)
from bnfuse.verification.executor import forward
from tests.modelkit import caffemodel_bytes

F32 = np.float32
#: float32(1e-5), Caffe's default eps as the float field holds it.
EPS = float.fromhex("0x1.4f8b58p-17")
#: -2.999999742314685e-05 (bits 0xb7fba881): times float32(1/3) it is exactly -EPS in
#: float32, while in float64 the sum with EPS is +6.06e-13.
CANCELLING_VARIANCE = float.fromhex("-0x1.f75102p-16")
#: The smallest float32 subnormal (bits 0x00000001): times 0.25 it is 0 in float32.
SMALLEST_SUBNORMAL = float.fromhex("0x1p-149")
#: float32(1e-40), a subnormal (bits 0x000116c2): 1/f overflows float32.
SUBNORMAL_FACTOR = float.fromhex("0x1.16c2p-133")

INPUT = """layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 2 dim: 2 dim: 2 } } }
"""
CONV = """layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 1 } }
"""


def _conv(weight: float = 1.0, bias: tuple[float, float] = (0.0, 0.0)) -> list[np.ndarray]:
    return [np.full((2, 2, 1, 1), weight, F32), np.array(bias, F32)]


def _bn(mean: list[float], var: list[float], factor: float) -> list[np.ndarray]:
    return [np.array(mean, F32), np.array(var, F32), np.array([factor], F32)]


def _model(tmp_path: Path, text: str, weights: dict[str, list[np.ndarray]],
           types: dict[str, str]) -> tuple[Path, Path]:
    prototxt, caffemodel = tmp_path / "m.prototxt", tmp_path / "m.caffemodel"
    prototxt.write_text(text)
    caffemodel.write_bytes(caffemodel_bytes(weights, types))
    return prototxt, caffemodel


def _check(paths: tuple[Path, Path], words: list[str], blob: str, channel: int) -> None:
    """Kept with the reason; Caffe's float32 arithmetic is non-finite there; nothing folded."""
    original = bnfuse.load(*paths)
    caffe_out = forward(original, {"data": np.ones((1, 2, 2, 2), F32)})[blob]
    assert not np.isfinite(caffe_out[0, channel]).all()
    assert np.isfinite(caffe_out[0, 1 - channel]).all()
    result = bnfuse.fold(*paths)
    [action] = result.report.actions
    assert action.kind == "skipped"
    assert "Caffe's float32 arithmetic is not finite" in action.reason
    for word in words:
        assert word in action.reason, action.reason
    assert [layer.type for layer in result.net.layers] == \
        [layer.type for layer in original.layers]
    for before, after in zip(original.layers, result.net.layers, strict=True):
        assert all(np.array_equal(p, q, equal_nan=True)
                   for p, q in zip(before.blobs, after.blobs, strict=True))


def test_variance_plus_eps_cancels_to_zero_in_float32(tmp_path: Path) -> None:
    # float64: -3e-5 * (1/3) + 1e-5 = +6.06e-13, so s = 1.28e6 folded fine; Caffe: 0.
    k = F32(1) / F32(3.0)
    assert F32(CANCELLING_VARIANCE) * k + F32(EPS) == 0
    assert CANCELLING_VARIANCE * (1 / 3.0) + EPS > 0
    text = INPUT + CONV + 'layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }\n'
    paths = _model(tmp_path, text, {"conv": _conv(),
                                    "bn": _bn([0.0, 0.0], [3.0, CANCELLING_VARIANCE], 3.0)},
                   {"conv": "Convolution", "bn": "BatchNorm"})
    _check(paths, ["BatchNorm 'bn'", "variance/factor + eps is 0 in channel 1",
                   "divides by zero"], "conv", 1)


def test_variance_underflows_to_zero_in_float32(tmp_path: Path) -> None:
    # eps 0: float64 variance 3.5e-46 > 0 gives s = 5.3e22 (fits float32); float32: 0.
    with np.errstate(under="ignore"):
        assert F32(SMALLEST_SUBNORMAL) * F32(0.25) == 0
    text = INPUT + CONV + ('layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" '
                           'batch_norm_param { eps: 0 } }\n')
    paths = _model(tmp_path, text, {"conv": _conv(),
                                    "bn": _bn([0.0, 0.0], [4.0, SMALLEST_SUBNORMAL], 4.0)},
                   {"conv": "Convolution", "bn": "BatchNorm"})
    _check(paths, ["variance/factor + eps is 0 in channel 1", "variance/factor 0, eps 0"],
           "conv", 1)


def test_one_over_a_subnormal_factor_overflows_float32(tmp_path: Path) -> None:
    # float64: k = 1e40, mean 0, variance 1: a finite fold. float32: k = inf, 0 * inf = NaN.
    with np.errstate(over="ignore"):
        assert np.isinf(F32(1) / F32(SUBNORMAL_FACTOR))
    text = INPUT + CONV + 'layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }\n'
    paths = _model(tmp_path, text,
                   {"conv": _conv(),
                    "bn": _bn([0.0, 0.0], [SUBNORMAL_FACTOR, SUBNORMAL_FACTOR], SUBNORMAL_FACTOR)},
                   {"conv": "Convolution", "bn": "BatchNorm"})
    original = bnfuse.load(*paths)
    assert np.isnan(forward(original, {"data": np.ones((1, 2, 2, 2), F32)})["conv"]).all()
    [action] = bnfuse.fold(*paths).report.actions
    assert action.kind == "skipped"
    assert "1/factor is inf (factor 9.9999461e-41)" in action.reason


def test_scale_after_batchnorm_overflows_float32(tmp_path: Path) -> None:
    # BatchNorm of variance 0: 1/sqrt(eps) = 316; times gamma 2e36 that is 6.3e38 > FLT_MAX.
    # float64 folds it forward into convolution weights 1e-10 * 6.3e38 = 6.3e28 (finite).
    text = INPUT + (
        'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }\n'
        'layer { name: "scale" type: "Scale" bottom: "bn" top: "bn" }\n'
        'layer { name: "conv" type: "Convolution" bottom: "bn" top: "conv" '
        'convolution_param { num_output: 2 kernel_size: 1 } }\n')
    paths = _model(tmp_path, text,
                   {"bn": _bn([0.0, 0.0], [0.0, 0.0], 1.0),
                    "scale": [np.array([1.0, 2e36], F32)], "conv": _conv(weight=1e-10)},
                   {"bn": "BatchNorm", "scale": "Scale", "conv": "Convolution"})
    _check(paths, ["Scale 'scale': Caffe's float32 arithmetic is not finite",
                   "the Scale output is inf in channel 1 for the input 1"], "bn", 1)


def test_bias_after_scale_overflows_float32_in_a_forward_fold(tmp_path: Path) -> None:
    # Scale shift 3e38 then Bias 3e38: inf in float32. float64 t = 6e38, and the forward
    # fold into a convolution of weights 1e-10 writes a finite bias of 1.2e29.
    text = INPUT + (
        'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }\n'
        'layer { name: "scale" type: "Scale" bottom: "bn" top: "bn" '
        'scale_param { bias_term: true } }\n'
        'layer { name: "bias" type: "Bias" bottom: "bn" top: "bn" }\n'
        'layer { name: "conv" type: "Convolution" bottom: "bn" top: "conv" '
        'convolution_param { num_output: 2 kernel_size: 1 } }\n')
    paths = _model(tmp_path, text,
                   {"bn": _bn([0.0, 0.0], [1.0, 1.0], 1.0),
                    "scale": [np.ones(2, F32), np.array([0.0, 3e38], F32)],
                    "bias": [np.array([0.0, 3e38], F32)], "conv": _conv(weight=1e-10)},
                   {"bn": "BatchNorm", "scale": "Scale", "bias": "Bias",
                    "conv": "Convolution"})
    original = bnfuse.load(*paths)
    caffe_out = forward(original, {"data": np.ones((1, 2, 2, 2), F32)})
    assert np.isinf(caffe_out["bn"][0, 1]).all() and np.isinf(caffe_out["conv"]).all()
    [action] = bnfuse.fold(*paths).report.actions
    assert action.kind == "skipped"
    assert action.reason == ("Bias 'bias': Caffe's float32 arithmetic is not finite: the "
                             "Bias output is inf in channel 1 for the input 0")


def test_a_finite_chain_still_folds_and_verifies(tmp_path: Path) -> None:
    """The rule does not touch ordinary statistics (a near-cancelling but positive sum)."""
    text = INPUT + CONV + 'layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }\n'
    nearly = float(np.nextafter(F32(CANCELLING_VARIANCE), F32(0)))  # one ulp towards 0
    paths = _model(tmp_path, text,
                   {"conv": _conv(), "bn": _bn([0.5, -0.5], [3.0, nearly], 3.0)},
                   {"conv": "Convolution", "bn": "BatchNorm"})
    [action] = bnfuse.fold(*paths).report.actions
    assert action.kind == "folded_into_producer"


def test_probe_values_follow_caffe_float32_order() -> None:
    # BVLC mean 2/2 = 1, variance 8/2 = 4, eps 0: (0 - 1)/2 and (1 - 1)/2.
    probe = caffe_float32_batchnorm([2.0], [8.0], 0.0, factor_blob=[2.0])
    assert probe.at_zero.tolist() == [-0.5] and probe.at_one.tolist() == [0.0]
    assert probe.at_zero.dtype == np.float32
    # NVIDIA multiplies by (variance + eps)^-0.5: variance 3, eps 1 -> 0.5.
    nvidia = caffe_float32_batchnorm([0.0], [3.0], 1.0, multiply_by_rsqrt=True)
    assert nvidia.at_one.tolist() == [0.5]
    scaled = caffe_float32_scale(Float32Probe.unit(2), [2.0, 3.0], [1.0, 0.0])
    assert scaled.at_zero.tolist() == [1.0, 0.0] and scaled.at_one.tolist() == [3.0, 3.0]
    assert caffe_float32_bias(scaled, [1.0]).at_one.tolist() == [4.0, 4.0]


@pytest.mark.parametrize(("call", "words"), [
    (lambda: caffe_float32_batchnorm([0.0], [-2.0], 1.0), "variance + eps is negative"),
    (lambda: caffe_float32_batchnorm([4e38], [1.0], 0.0), "the mean blob is inf in float32"),
    (lambda: caffe_float32_batchnorm([3e38], [1e-8], 0.0), "the normalised value is -inf"),
    (lambda: caffe_float32_batchnorm([0.0], [1.0], 0.0, scale=[1.0], shift=[np.inf]),
     "Scale bias blob is inf in float32"),
])
def test_probe_names_the_step(call: object, words: str) -> None:
    with pytest.raises(UnsupportedLayerError, match="Caffe's float32 arithmetic is not "
                                                    "finite") as info:
        call()  # type: ignore[operator]
    assert words in str(info.value)
