"""Each BatchNorm flavour against its own direct definition.

Inputs ``x`` of shape (N, C, H, W) are pushed through the flavour's formula,
written out here from the blob meanings, and through the flavour's affine
map; they agree to ``rtol = 1e-12`` with ``atol = 1e-12 * max|reference|`` in
float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnfuse.errors import UnsupportedLayerError
from bnfuse.folding.variants import (
    CUDNN_BN_MIN_EPSILON,
    NVIDIA_MIN_EPS,
    PSPNET_DEFAULT_EPS,
    PSPNET_LEGACY_DEFAULT_VAR_EPS,
    VariantChoice,
    bvlc_batchnorm,
    classify_bn_layer,
    cudnn_batchnorm,
    nvidia_batchnorm,
    pspnet_bn,
    segnet_bn,
    variant_affine,
)

F64 = npt.NDArray[np.float64]
TOL = 1e-12
SETTINGS = settings(max_examples=40, deadline=None)


def per_channel(v: npt.ArrayLike) -> F64:
    return np.asarray(v, np.float64).reshape(1, -1, 1, 1)


def assert_close(actual: F64, expected: F64) -> None:
    scale = float(np.max(np.abs(expected)))
    np.testing.assert_allclose(actual, expected, rtol=TOL, atol=TOL * scale)


@st.composite
def stats(draw: Any) -> tuple[np.random.Generator, int, F64]:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    c = draw(st.integers(1, 6))
    x = rng.normal(size=(2, c, 3, 2))
    return rng, c, x


@SETTINGS
@given(
    case=stats(),
    factor=st.sampled_from([0.0, 1.0, 999.982, 3.0]),
    eps=st.sampled_from([1e-10, 1e-5, 1e-3]),
)
def test_bvlc(case: tuple[np.random.Generator, int, F64], factor: float, eps: float) -> None:
    rng, c, x = case
    mean, var = rng.normal(size=c), rng.uniform(0.1, 2.0, c)
    blobs = [mean * factor, var * factor, np.array([factor])]
    k = 0.0 if factor == 0 else 1.0 / factor
    expected = (x - per_channel(blobs[0] * k)) / np.sqrt(per_channel(blobs[1] * k) + eps)
    assert_close(bvlc_batchnorm(blobs, eps).apply(x), expected)


@SETTINGS
@given(case=stats(), five=st.booleans(), eps=st.sampled_from([0.0, 1e-8, 1e-5, 1e-3]))
def test_nvidia(case: tuple[np.random.Generator, int, F64], five: bool, eps: float) -> None:
    rng, c, x = case
    mean, var = rng.normal(size=c), rng.uniform(0.1, 2.0, c)
    blobs: list[F64] = [mean, var, np.array([7.0])]  # the correction blob is not applied
    eps_used = float(max(np.float32(eps), np.float32(1e-5)))  # float32, as in the C++ source
    expected = (x - per_channel(mean)) / np.sqrt(per_channel(var) + eps_used)
    if five:
        scale, bias = rng.normal(size=c), rng.normal(size=c)
        blobs += [scale, bias]
        expected = expected * per_channel(scale) + per_channel(bias)
    assert_close(nvidia_batchnorm(blobs, eps).apply(x), expected)


def test_nvidia_and_bvlc_differ_when_the_factor_is_not_one() -> None:
    blobs = [np.array([2.0]), np.array([8.0]), np.array([2.0])]
    assert not np.allclose(nvidia_batchnorm(blobs).scale, bvlc_batchnorm(blobs).scale)


@SETTINGS
@given(case=stats(), eps=st.sampled_from([1e-9, 1e-5, 1e-3]))
def test_cudnn(case: tuple[np.random.Generator, int, F64], eps: float) -> None:
    rng, c, x = case
    scale, bias = rng.normal(size=(1, c, 1, 1)), rng.normal(size=(1, c, 1, 1))
    mean, var = rng.normal(size=(1, c, 1, 1)), rng.uniform(0.1, 2.0, (1, c, 1, 1))
    eps_used = max(eps, CUDNN_BN_MIN_EPSILON)
    expected = scale * (x - mean) / np.sqrt(var + eps_used) + bias
    assert_close(cudnn_batchnorm([scale, bias, mean, var], eps).apply(x), expected)


@SETTINGS
@given(case=stats())
def test_segnet_inference(case: tuple[np.random.Generator, int, F64]) -> None:
    rng, c, x = case
    scale, shift = rng.normal(size=(1, c, 1, 1)), rng.normal(size=(1, c, 1, 1))
    assert_close(segnet_bn([scale, shift], "INFERENCE").apply(x), scale * x + shift)


@SETTINGS
@given(case=stats(), eps=st.sampled_from([1e-10, 1e-5, 1e-3]))
def test_pspnet(case: tuple[np.random.Generator, int, F64], eps: float) -> None:
    rng, c, x = case
    slope, bias = rng.normal(size=(1, c, 1, 1)), rng.normal(size=(1, c, 1, 1))
    mean, var = rng.normal(size=(1, c, 1, 1)), rng.uniform(0.1, 2.0, (1, c, 1, 1))
    expected = slope * (x - mean) / np.sqrt(var + eps) + bias
    blobs = [slope, bias, mean, var]
    assert_close(pspnet_bn(blobs, eps).apply(x), expected)
    assert_close(pspnet_bn(blobs, var_eps=eps).apply(x), expected)


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: segnet_bn([[1.0], [0.0]], "LEARN"), "bn_mode is LEARN"),
        (lambda: segnet_bn([[1.0], [0.0]], None), "bn_mode is LEARN"),
        (lambda: cudnn_batchnorm([[1.0]] * 5), "expected 4 blobs, got 5"),
        (lambda: bvlc_batchnorm([[1.0]] * 2), "expected 3 blobs, got 2"),
        (lambda: nvidia_batchnorm([[1.0]] * 4), "expected 3 or 5 blobs, got 4"),
        (lambda: pspnet_bn([[1.0]] * 2), "expected 4 blobs"),
        (lambda: bvlc_batchnorm([[0.0], [-1.0], [1.0]]), "variance + eps <= 0 in channel 0"),
    ],
)
def test_refusals(call: Any, words: str) -> None:
    with pytest.raises(UnsupportedLayerError) as info:
        call()
    assert words in str(info.value)


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("layer_type", "blobs", "params", "expected"),
    [
        ("BatchNorm", 3, {}, VariantChoice("bvlc", 1e-5, None)),
        ("BatchNorm", 3, {"eps": "0.001"}, VariantChoice("bvlc", 0.001, None)),
        ("BatchNorm", 5, {"eps": 1e-8}, VariantChoice("nvidia", NVIDIA_MIN_EPS, None)),
        ("BatchNorm", 5, {"eps": 0.5}, VariantChoice("nvidia", 0.5, None)),
        ("BatchNorm", 3, {"scale_bias": "false"}, VariantChoice("nvidia", NVIDIA_MIN_EPS, None)),
        ("CuDNNBatchNorm", 4, {"eps": 1e-6}, VariantChoice("cudnn", CUDNN_BN_MIN_EPSILON, None)),
        ("BN", 2, {"bn_mode": "INFERENCE"}, VariantChoice("segnet", None, None)),
        (
            "BN",
            4,
            {"slope_filler": {}, "frozen": True},
            VariantChoice("pspnet", PSPNET_DEFAULT_EPS, None),
        ),
        (
            "BN",
            4,
            {"moving_average": "true", "scale_filler": {}},
            VariantChoice("pspnet-legacy", PSPNET_LEGACY_DEFAULT_VAR_EPS, None),
        ),
    ],
)
def test_classify_foldable(
    layer_type: str, blobs: int, params: dict[str, object], expected: VariantChoice
) -> None:
    choice = classify_bn_layer(layer_type, blobs, params)
    assert choice == expected and choice.foldable


@pytest.mark.parametrize(
    ("layer_type", "blobs", "params", "words"),
    [
        ("BatchNorm", 3, {"use_global_stats": False}, "use_global_stats is false"),
        ("BatchNorm", 4, {}, "expected 3"),
        ("CuDNNBatchNorm", 5, {}, "expected 4"),
        ("BN", 2, {}, "bn_mode is LEARN"),
        ("BN", 4, {"var_eps": 1e-5}, "moving_average is not true"),
        ("BN", 4, {"moving_average": True, "axis": 2}, "axis is not 1"),
        ("BN", 4, {"momentum": 0.9}, "does not tell the PSPNet BN dialects apart"),
        ("BN", 4, {"slope_filler": {}, "var_eps": 1e-5}, "mixes fields"),
        ("BN", 3, {}, "expected 2 or 4"),
        ("ReLU", 0, {}, "not a BatchNorm flavour"),
    ],
)
def test_classify_not_foldable(
    layer_type: str, blobs: int, params: dict[str, object], words: str
) -> None:
    choice = classify_bn_layer(layer_type, blobs, params)
    assert not choice.foldable and choice.reason is not None and words in choice.reason
    with pytest.raises(UnsupportedLayerError):
        variant_affine(choice, [np.ones(1)] * blobs)


def test_explicit_dialect_resolves_ambiguity() -> None:
    choice = classify_bn_layer("BN", 4, {"eps": 1e-3}, bn_dialect="pspnet")
    assert choice == VariantChoice("pspnet", 1e-3, None)
    blobs = [np.array([2.0]), np.array([1.0]), np.array([0.5]), np.array([4.0 - 1e-3])]
    a = variant_affine(choice, blobs)
    assert a.scale.tolist() == [1.0] and a.shift.tolist() == [0.5]
    with pytest.raises(UnsupportedLayerError, match="unknown BN dialect"):
        classify_bn_layer("BN", 4, {}, bn_dialect="caffe2")


def test_variant_affine_dispatches_each_flavour() -> None:
    one = [np.array([1.0])]
    assert variant_affine(classify_bn_layer("BatchNorm", 3), one * 3).channels == 1
    assert variant_affine(classify_bn_layer("BatchNorm", 5), one * 5).channels == 1
    assert variant_affine(classify_bn_layer("CuDNNBatchNorm", 4), one * 4).channels == 1
    legacy = classify_bn_layer("BN", 4, {"moving_average": True})
    a = variant_affine(legacy, [np.array([1.0]), np.array([0.0]), np.array([0.0]), np.array([1.0])])
    assert a.scale[0] == 1.0 / np.sqrt(1.0 + PSPNET_LEGACY_DEFAULT_VAR_EPS)
