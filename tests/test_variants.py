"""Each BatchNorm dialect's fold arithmetic against its own direct definition.

Inputs ``x`` of shape (N, C, H, W) are pushed through the dialect's formula,
written out here from the blob meanings, and through the affine map the fold
computes (``detect`` then ``dialect_affine``); they agree to ``rtol = 1e-12``
with ``atol = 1e-12 * max|reference|`` in float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnfuse.errors import UnsupportedLayerError
from bnfuse.folding.arith import Affine
from bnfuse.folding.variants import dialect_affine
from bnfuse.layertypes.batchnorm import (
    CUDNN_BN_MIN_EPSILON,
    NVIDIA_MIN_EPS,
    PSPNET_DEFAULT_EPS,
    PSPNET_LEGACY_DEFAULT_VAR_EPS,
    detect,
)

F64 = npt.NDArray[np.float64]
TOL = 1e-12
SETTINGS = settings(max_examples=40, deadline=None)


def f32(value: float) -> float:
    """A ``float`` proto field as Caffe reads it (eps, var_eps are float32 in caffe.proto)."""
    return float(np.float32(value))


def fold_affine(layer_type: str, fields: dict[str, object], blobs: list[Any],
                **options: Any) -> Affine:
    """The map the fold computes for a layer with these fields and blobs."""
    return dialect_affine(detect(layer_type, fields, len(blobs), **options), blobs)


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
    expected = (x - per_channel(blobs[0] * k)) / np.sqrt(per_channel(blobs[1] * k) + f32(eps))
    assert_close(fold_affine("BatchNorm", {"eps": eps}, blobs).apply(x), expected)


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
    # NVIDIA text: scale_bias (5 blobs) or an explicit scale_bias: false (3 blobs).
    fields = {"scale_bias": "true" if five else "false", "eps": eps}
    assert_close(fold_affine("BatchNorm", fields, blobs).apply(x), expected)


def test_nvidia_and_bvlc_differ_when_the_factor_is_not_one() -> None:
    blobs = [np.array([2.0]), np.array([8.0]), np.array([2.0])]
    nvidia = fold_affine("BatchNorm", {"scale_bias": "false"}, blobs)
    bvlc = fold_affine("BatchNorm", {}, blobs)
    assert not np.allclose(nvidia.scale, bvlc.scale)


@SETTINGS
@given(case=stats(), eps=st.sampled_from([1e-9, 1e-5, 1e-3]))
def test_cudnn(case: tuple[np.random.Generator, int, F64], eps: float) -> None:
    rng, c, x = case
    scale, bias = rng.normal(size=(1, c, 1, 1)), rng.normal(size=(1, c, 1, 1))
    mean, var = rng.normal(size=(1, c, 1, 1)), rng.uniform(0.1, 2.0, (1, c, 1, 1))
    eps_used = max(f32(eps), CUDNN_BN_MIN_EPSILON)
    expected = scale * (x - mean) / np.sqrt(var + eps_used) + bias
    assert_close(fold_affine("CuDNNBatchNorm", {"eps": eps}, [scale, bias, mean, var]).apply(x),
                 expected)


@SETTINGS
@given(case=stats())
def test_segnet_inference(case: tuple[np.random.Generator, int, F64]) -> None:
    rng, c, x = case
    scale, shift = rng.normal(size=(1, c, 1, 1)), rng.normal(size=(1, c, 1, 1))
    assert_close(fold_affine("BN", {"bn_mode": "INFERENCE"}, [scale, shift]).apply(x),
                 scale * x + shift)


@SETTINGS
@given(case=stats(), eps=st.sampled_from([1e-10, 1e-5, 1e-3]))
def test_pspnet(case: tuple[np.random.Generator, int, F64], eps: float) -> None:
    rng, c, x = case
    slope, bias = rng.normal(size=(1, c, 1, 1)), rng.normal(size=(1, c, 1, 1))
    mean, var = rng.normal(size=(1, c, 1, 1)), rng.uniform(0.1, 2.0, (1, c, 1, 1))
    expected = slope * (x - mean) / np.sqrt(var + f32(eps)) + bias
    blobs = [slope, bias, mean, var]
    assert_close(fold_affine("BN", {"eps": eps}, blobs).apply(x), expected)
    legacy = {"var_eps": eps, "moving_average": "true"}
    assert_close(fold_affine("BN", legacy, blobs).apply(x), expected)


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: fold_affine("BN", {"bn_mode": "LEARN"}, [[1.0], [0.0]]), "bn_mode is LEARN"),
        (lambda: fold_affine("BN", {}, [[1.0], [0.0]]), "bn_mode is LEARN"),
        (lambda: fold_affine("CuDNNBatchNorm", {}, [[1.0]] * 5), "with 5 blobs"),
        (lambda: fold_affine("BatchNorm", {}, [[1.0]] * 2), "expected 3 or 5"),
        (lambda: fold_affine("BatchNorm", {"scale_bias": "true"}, [[1.0]] * 4),
         "expected 3 or 5"),
        (lambda: fold_affine("BN", {"eps": 1e-5}, [[1.0]] * 2), "SegNet's 2 blobs"),
        (lambda: dialect_affine(detect("BatchNorm", {}, 3), [[1.0]] * 2),
         "expected 3 blobs (mean, variance, factor), got 2"),
        (lambda: fold_affine("BatchNorm", {}, [[0.0], [-1.0], [1.0]]),
         "variance + eps <= 0 in channel 0"),
    ],
)
def test_refusals(call: Any, words: str) -> None:
    with pytest.raises(UnsupportedLayerError) as info:
        call()
    assert words in str(info.value)


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("layer_type", "blobs", "params", "expected"),
    [
        ("BatchNorm", 3, {}, ("bvlc", f32(1e-5))),
        ("BatchNorm", 3, {"eps": "0.001"}, ("bvlc", f32(0.001))),
        ("BatchNorm", 5, {"eps": 1e-8}, ("nvidia", NVIDIA_MIN_EPS)),
        ("BatchNorm", 5, {"eps": 0.5}, ("nvidia", 0.5)),
        ("BatchNorm", 3, {"scale_bias": "false"}, ("nvidia", NVIDIA_MIN_EPS)),
        ("CuDNNBatchNorm", 4, {"eps": 1e-6}, ("cudnn", CUDNN_BN_MIN_EPSILON)),
        ("BN", 2, {"bn_mode": "INFERENCE"}, ("segnet", None)),
        (
            "BN",
            4,
            {"slope_filler": {}, "frozen": True},
            ("pspnet", f32(PSPNET_DEFAULT_EPS)),
        ),
        (
            "BN",
            4,
            {"moving_average": "true", "scale_filler": {}},
            ("pspnet-legacy", f32(PSPNET_LEGACY_DEFAULT_VAR_EPS)),
        ),
    ],
)
def test_detect_foldable(
    layer_type: str, blobs: int, params: dict[str, object], expected: tuple[str, float | None]
) -> None:
    dialect = detect(layer_type, params, blobs)
    assert (dialect.name, dialect.eps) == expected and dialect.foldable


@pytest.mark.parametrize(
    ("layer_type", "blobs", "params", "words"),
    [
        ("BatchNorm", 3, {"use_global_stats": False}, "use_global_stats is false"),
        ("BatchNorm", 4, {}, "expected 3 or 5"),
        ("CuDNNBatchNorm", 5, {}, "expected 4"),
        ("BN", 2, {}, "bn_mode is LEARN"),
        ("BN", 4, {"var_eps": 1e-5}, "moving_average is not true"),
        ("BN", 4, {"moving_average": True, "axis": 2}, "axis is not 1"),
        ("BN", 4, {}, "does not tell the PSPNet BN dialects apart"),
        ("BN", 4, {"scale_filler": {}}, "does not tell the PSPNet BN dialects apart"),
        ("BN", 4, {"bn_mode": "INFERENCE"}, "PSPNet's 4 blobs"),
        ("BN", 2, {"axis": 1, "decay": 0.9}, "SegNet's 2 blobs"),
        ("BN", 4, {"slope_filler": {}, "var_eps": 1e-5}, "mixes fields"),
        ("BN", 3, {}, "expected 2 or 4"),
        ("ReLU", 0, {}, "not a BatchNorm dialect"),
    ],
)
def test_detect_not_foldable(
    layer_type: str, blobs: int, params: dict[str, object], words: str
) -> None:
    dialect = detect(layer_type, params, blobs)
    assert not dialect.foldable and dialect.reason is not None and words in dialect.reason
    with pytest.raises(UnsupportedLayerError):
        dialect_affine(dialect, [np.ones(1)] * blobs)


def test_explicit_dialect_resolves_ambiguity() -> None:
    dialect = detect("BN", {"eps": 1e-3}, 4, bn_dialect="pspnet")
    assert (dialect.name, dialect.eps, dialect.reason) == ("pspnet", f32(1e-3), None)
    blobs = [np.array([2.0]), np.array([1.0]), np.array([0.5]), np.array([4.0 - f32(1e-3)])]
    a = dialect_affine(dialect, blobs)
    assert a.scale.tolist() == [1.0] and a.shift.tolist() == [0.5]
    with pytest.raises(UnsupportedLayerError, match="unknown BN dialect"):
        detect("BN", {}, 4, bn_dialect="caffe2")


def test_variant_affine_dispatches_each_flavour() -> None:
    one = [np.array([1.0])]
    assert fold_affine("BatchNorm", {}, one * 3).channels == 1
    assert fold_affine("BatchNorm", {}, one * 5).channels == 1
    assert fold_affine("CuDNNBatchNorm", {}, one * 4).channels == 1
    blobs = [np.array([1.0]), np.array([0.0]), np.array([0.0]), np.array([1.0])]
    a = fold_affine("BN", {"moving_average": True}, blobs)
    assert a.scale[0] == 1.0 / np.sqrt(1.0 + f32(PSPNET_LEGACY_DEFAULT_VAR_EPS))
