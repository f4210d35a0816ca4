"""Fold arithmetic checked against plain numpy reference layers.

Every fold is compared with running the unfolded layers: a reference
convolution / deconvolution / inner product written here with explicit loops
and ``einsum`` (Caffe's semantics), followed by the BatchNorm + Scale formula
in float64. Tolerances:

- float64: ``rtol = 1e-10`` with ``atol = 1e-10 * max|reference|`` (folding only
  reorders a few float64 operations);
- float32 weights: the folded weight must equal the float64 fold rounded once
  to float32, exactly; layer outputs then agree to ``1e-5`` of ``max|reference|``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnfuse.errors import BnfuseError, ModelMismatchError, UnsupportedLayerError
from bnfuse.folding.arith import (
    Affine,
    affine_from_batchnorm,
    affine_from_bias,
    affine_from_scale,
    affine_problem,
    affine_to_scale_blobs,
    caffe_batchnorm_stats,
    check_finite_stats,
    compose,
    fold_forward_into_convolution,
    fold_forward_into_inner_product,
    fold_into_convolution,
    fold_into_deconvolution,
    fold_into_inner_product,
)

F64 = npt.NDArray[Any]  # reference helpers take any float dtype
RTOL = 1e-10
SETTINGS = settings(max_examples=60, deadline=None)


# --------------------------------------------------------------------------- references


def conv_ref(
    x: F64,
    w: F64,
    b: F64 | None,
    *,
    stride: int = 1,
    dilation: int = 1,
    pad: int = 0,
    group: int = 1,
) -> F64:
    """Caffe 2-D convolution, float64, by summing one kernel tap at a time."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, _, h, wd = x.shape
    cout, cin_g, kh, kw = w.shape
    ho = (h - dilation * (kh - 1) - 1) // stride + 1
    wo = (wd - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, cout, ho, wo))
    og = cout // group
    for g in range(group):
        xs = x[:, g * cin_g : (g + 1) * cin_g]
        ws = w[g * og : (g + 1) * og].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                patch = xs[
                    :,
                    :,
                    i * dilation : i * dilation + stride * (ho - 1) + 1 : stride,
                    j * dilation : j * dilation + stride * (wo - 1) + 1 : stride,
                ]
                out[:, g * og : (g + 1) * og] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    if b is not None:
        out += np.asarray(b, np.float64).reshape(1, -1, 1, 1)
    return out


def deconv_ref(
    x: F64,
    w: F64,
    b: F64 | None,
    *,
    stride: int = 1,
    dilation: int = 1,
    pad: int = 0,
    group: int = 1,
) -> F64:
    """Caffe deconvolution: weight (Cin, Cout/group, kh, kw), scatter then crop ``pad``."""
    n, cin, h, wd = x.shape
    _, og, kh, kw = w.shape
    cin_g = cin // group
    full_h = stride * (h - 1) + dilation * (kh - 1) + 1
    full_w = stride * (wd - 1) + dilation * (kw - 1) + 1
    out = np.zeros((n, og * group, full_h, full_w))
    for g in range(group):
        xs = x[:, g * cin_g : (g + 1) * cin_g].astype(np.float64)
        ws = w[g * cin_g : (g + 1) * cin_g].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                contrib = np.einsum("nchw,co->nohw", xs, ws[:, :, i, j])
                out[
                    :,
                    g * og : (g + 1) * og,
                    i * dilation : i * dilation + stride * (h - 1) + 1 : stride,
                    j * dilation : j * dilation + stride * (wd - 1) + 1 : stride,
                ] += contrib
    out = out[:, :, pad : full_h - pad, pad : full_w - pad]
    if b is not None:
        out += np.asarray(b, np.float64).reshape(1, -1, 1, 1)
    return out


def ip_ref(x: F64, w: F64, b: F64 | None, *, transpose: bool = False) -> F64:
    """Caffe inner product over the input flattened from axis 1."""
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    m = np.asarray(w, np.float64).reshape(w.shape[-2:])
    out = flat @ (m if transpose else m.T)
    if b is not None:
        out += np.asarray(b, np.float64).reshape(1, -1)
    return out


def bn_scale_ref(
    z: F64,
    *,
    mean_blob: F64,
    var_blob: F64,
    factor: float,
    eps: float,
    gamma: F64 | None,
    beta: F64 | None,
) -> F64:
    """BatchNorm (Caffe factor rule) then Scale, written out directly, channel axis 1."""
    k = 0.0 if factor == 0 else 1.0 / factor
    shape = [1] * z.ndim
    shape[1] = -1
    mean = (mean_blob * k).reshape(shape)
    var = (var_blob * k).reshape(shape)
    y = (z - mean) / np.sqrt(var + eps)
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y


def assert_close(actual: npt.ArrayLike, expected: npt.ArrayLike, rtol: float = RTOL) -> None:
    exp = np.asarray(expected, np.float64)
    scale = float(np.max(np.abs(exp))) if exp.size else 0.0
    np.testing.assert_allclose(np.asarray(actual, np.float64), exp, rtol=rtol, atol=rtol * scale)


# --------------------------------------------------------------------------- strategies


@st.composite
def bn_case(draw: Any, channels: int) -> dict[str, Any]:
    """Random BatchNorm (+ optional Scale) blobs for ``channels`` channels."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    factor = draw(st.sampled_from([0.0, 1.0, 999.982, 0.5, 37.0]))
    eps = draw(st.sampled_from([1e-12, 1e-9, 1e-5, 1e-3]))
    mean = rng.normal(0, 2, channels)
    var = rng.uniform(0.0, 3.0, channels)
    with_scale = draw(st.booleans())
    with_beta = draw(st.booleans())
    return {
        "mean_blob": mean * factor,
        "var_blob": var * factor,
        "factor": factor,
        "eps": eps,
        "gamma": rng.normal(0, 1.5, channels) if with_scale else None,
        "beta": rng.normal(0, 1.0, channels) if with_beta else None,
    }


def affine_of(case: dict[str, Any]) -> Affine:
    mean, var = caffe_batchnorm_stats(case["mean_blob"], case["var_blob"], [case["factor"]])
    return affine_from_batchnorm(mean, var, case["eps"], case["gamma"], case["beta"])


def reference_after(z: F64, case: dict[str, Any]) -> F64:
    return bn_scale_ref(z, **case)


# --------------------------------------------------------------------------- fold into a producer


@SETTINGS
@given(data=st.data())
def test_fold_into_convolution_matches_conv_then_bn(data: st.DataObject) -> None:
    group = data.draw(st.sampled_from([1, 2, 3]), "group")
    depthwise = data.draw(st.booleans(), "depthwise")
    cin_g = 1 if depthwise else data.draw(st.integers(1, 3))
    og = 1 if depthwise else data.draw(st.integers(1, 3))
    kh, kw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    stride, dilation, pad = (
        data.draw(st.integers(1, 2)),
        data.draw(st.integers(1, 2)),
        data.draw(st.integers(0, 1)),
    )
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    cin, cout = cin_g * group, og * group
    x = rng.normal(size=(2, cin, 7, 6))
    w = rng.normal(size=(cout, cin_g, kh, kw))
    b = rng.normal(size=cout) if data.draw(st.booleans(), "bias") else None
    case = data.draw(bn_case(cout))
    kw_args = {"stride": stride, "dilation": dilation, "pad": pad, "group": group}

    expected = reference_after(conv_ref(x, w, b, **kw_args), case)
    w2, b2 = fold_into_convolution(w, b, affine_of(case))
    assert w2.dtype == np.float64 and w2.shape == w.shape and b2.shape == (cout,)
    assert_close(conv_ref(x, w2, b2, **kw_args), expected)


@SETTINGS
@given(data=st.data())
def test_fold_into_deconvolution_grouped(data: st.DataObject) -> None:
    group = data.draw(st.sampled_from([1, 2, 3]), "group")
    cin_g, og = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    k = data.draw(st.integers(1, 3))
    stride, dilation = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    pad = data.draw(st.integers(0, (dilation * (k - 1)) // 2))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    cin, cout = cin_g * group, og * group
    x = rng.normal(size=(2, cin, 4, 5))
    w = rng.normal(size=(cin, og, k, k))
    b = rng.normal(size=cout) if data.draw(st.booleans(), "bias") else None
    case = data.draw(bn_case(cout))
    kw_args = {"stride": stride, "dilation": dilation, "pad": pad, "group": group}

    expected = reference_after(deconv_ref(x, w, b, **kw_args), case)
    w2, b2 = fold_into_deconvolution(w, b, affine_of(case), group)
    assert w2.shape == w.shape
    assert_close(deconv_ref(x, w2, b2, **kw_args), expected)


def test_deconvolution_wrong_axes_give_different_answers() -> None:
    """Scaling the grouped deconvolution weight on the 'obvious' axes is wrong."""
    rng = np.random.default_rng(7)
    group, cin_g, og = 2, 3, 2
    cin, cout = cin_g * group, og * group
    x = rng.normal(size=(1, cin, 4, 4))
    w = rng.normal(size=(cin, og, 3, 3))
    b = rng.normal(size=cout)
    affine = Affine([1.0, 2.0, 3.0, 4.0], [0.5, -0.5, 1.0, 2.0])
    expected = affine.apply(deconv_ref(x, w, b, group=group))

    w_ok, b_ok = fold_into_deconvolution(w, b, affine, group)
    assert_close(deconv_ref(x, w_ok, b_ok, group=group), expected)

    b_fold = b * affine.scale + affine.shift
    # Wrong 1: axis 1 with the first group's scales only (what a group-unaware tool does).
    w_axis1 = w * affine.scale[:og].reshape(1, og, 1, 1)
    # Wrong 2: axis 0, as if it were a convolution (needs Cin == Cout to even run).
    w_axis0 = w[:cout] * affine.scale.reshape(cout, 1, 1, 1)
    w_axis0 = np.concatenate([w_axis0, w[cout:]])
    for wrong in (w_axis1, w_axis0):
        got = deconv_ref(x, wrong, b_fold, group=group)
        assert np.max(np.abs(got - expected)) > 1e-3 * np.max(np.abs(expected))


@SETTINGS
@given(data=st.data())
def test_fold_into_inner_product(data: st.DataObject) -> None:
    n_out, c, spatial = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4)), 3
    transpose = data.draw(st.booleans(), "transpose")
    legacy = data.draw(st.booleans(), "legacy 4-D")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = rng.normal(size=(3, c, spatial))
    k = c * spatial
    w = rng.normal(size=(k, n_out) if transpose else (n_out, k))
    if legacy:
        w = w.reshape((1, 1, *w.shape))
    b = rng.normal(size=n_out) if data.draw(st.booleans(), "bias") else None
    case = data.draw(bn_case(n_out))

    expected = reference_after(ip_ref(x, w, b, transpose=transpose), case)
    w2, b2 = fold_into_inner_product(w, b, affine_of(case), transpose)
    assert w2.shape == w.shape
    assert_close(ip_ref(x, w2, b2, transpose=transpose), expected)


@SETTINGS
@given(data=st.data())
def test_float32_fold_is_one_rounding_of_the_float64_fold(data: st.DataObject) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    cout, cin = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    w32 = rng.normal(size=(cout, cin, 3, 3)).astype(np.float32)
    b32 = rng.normal(size=cout).astype(np.float32) if data.draw(st.booleans()) else None
    case = data.draw(bn_case(cout))
    affine = affine_of(case)

    w2, b2 = fold_into_convolution(w32, b32, affine)
    w64, b64 = fold_into_convolution(w32.astype(np.float64), b32, affine)
    assert w2.dtype == np.float32 and b2.dtype == np.float32
    np.testing.assert_array_equal(w2, w64.astype(np.float32))
    np.testing.assert_array_equal(b2, b64.astype(np.float32))

    x = rng.normal(size=(1, cin, 5, 5)).astype(np.float32)
    expected = reference_after(conv_ref(x, w32, b32, pad=1), case)
    assert_close(conv_ref(x, w2, b2, pad=1), expected, rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtype_is_preserved_for_every_fold(dtype: type[np.floating[Any]]) -> None:
    affine = Affine([2.0, 0.5], [1.0, -1.0])
    w = np.ones((2, 2, 1, 1), dtype=dtype)
    results = [
        fold_into_convolution(w, None, affine),
        fold_into_deconvolution(w, None, affine, 1),
        fold_into_inner_product(w.reshape(2, 2), None, affine),
        fold_forward_into_convolution(w, None, affine),
        fold_forward_into_inner_product(w.reshape(2, 2), None, affine, 1),
    ]
    for w2, b2 in results:
        assert w2.dtype == dtype and b2.dtype == dtype


def test_inputs_are_never_modified_and_may_be_read_only() -> None:
    w = np.arange(8, dtype=np.float32).reshape(2, 4, 1, 1)
    b = np.array([1.0, 2.0], dtype=np.float32)
    w.flags.writeable = False
    b.flags.writeable = False
    w_copy, b_copy = w.copy(), b.copy()
    affine = Affine([3.0, 4.0], [1.0, 1.0])
    w2, b2 = fold_into_convolution(w, b, affine)
    assert w2.flags.writeable and not np.shares_memory(w2, w) and not np.shares_memory(b2, b)
    fold_forward_into_inner_product(w.reshape(2, 4), b, Affine.identity(4), 1)
    np.testing.assert_array_equal(w, w_copy)
    np.testing.assert_array_equal(b, b_copy)


def test_bias_keeps_legacy_shape_and_dtype() -> None:
    w = np.ones((3, 2), np.float32)
    b = np.zeros((1, 1, 1, 3), np.float64)
    _, b2 = fold_into_inner_product(w, b, Affine([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]))
    assert b2.shape == (1, 1, 1, 3) and b2.dtype == np.float64
    assert b2.ravel().tolist() == [1.0, 1.0, 1.0]


def test_float16_overflow_is_refused() -> None:
    w = np.full((1, 1, 1, 1), 60000.0, np.float16)
    with pytest.raises(UnsupportedLayerError, match=r"do not fit float16"):
        fold_into_convolution(w, None, Affine([10.0], [0.0]))


# --------------------------------------------------------------------------- forward folds


@SETTINGS
@given(data=st.data())
def test_forward_fold_into_grouped_convolution(data: st.DataObject) -> None:
    group = data.draw(st.sampled_from([1, 2, 3]), "group")
    depthwise = data.draw(st.booleans(), "depthwise")
    cin_g = 1 if depthwise else data.draw(st.integers(1, 3))
    og = data.draw(st.integers(1, 3))
    kh, kw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    stride, dilation = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    cin, cout = cin_g * group, og * group
    x = rng.normal(size=(2, cin, 7, 8))
    w = rng.normal(size=(cout, cin_g, kh, kw))
    b = rng.normal(size=cout) if data.draw(st.booleans(), "bias") else None
    case = data.draw(bn_case(cin))
    kw_args = {"stride": stride, "dilation": dilation, "group": group}

    expected = conv_ref(reference_after(x, case), w, b, **kw_args)
    w2, b2 = fold_forward_into_convolution(w, b, affine_of(case), group)
    assert_close(conv_ref(x, w2, b2, **kw_args), expected)


def test_forward_fold_with_padding_is_not_exact() -> None:
    """Why the planner requires pad 0: the border reads the padded zeros."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 2, 5, 5))
    w = rng.normal(size=(3, 2, 3, 3))
    affine = Affine([1.5, 0.5], [2.0, -1.0])
    expected = conv_ref(affine.apply(x), w, None, pad=1)
    w2, b2 = fold_forward_into_convolution(w, None, affine)
    got = conv_ref(x, w2, b2, pad=1)
    assert_close(got[:, :, 1:-1, 1:-1], expected[:, :, 1:-1, 1:-1])  # interior is exact
    assert np.max(np.abs(got - expected)) > 1e-3  # the border is not


@SETTINGS
@given(data=st.data())
def test_forward_fold_into_inner_product_over_chw(data: st.DataObject) -> None:
    c, h, wd = (
        data.draw(st.integers(1, 4)),
        data.draw(st.integers(1, 3)),
        data.draw(st.integers(1, 3)),
    )
    n_out = data.draw(st.integers(1, 4))
    transpose = data.draw(st.booleans(), "transpose")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = rng.normal(size=(2, c, h, wd))
    k = c * h * wd
    w = rng.normal(size=(k, n_out) if transpose else (n_out, k))
    b = rng.normal(size=n_out) if data.draw(st.booleans(), "bias") else None
    case = data.draw(bn_case(c))

    expected = ip_ref(reference_after(x, case), w, b, transpose=transpose)
    w2, b2 = fold_forward_into_inner_product(w, b, affine_of(case), h * wd, transpose)
    assert_close(ip_ref(x, w2, b2, transpose=transpose), expected)


# --------------------------------------------------------------------------- affine maps


@SETTINGS
@given(data=st.data())
def test_compose_is_apply_then_apply(data: st.DataObject) -> None:
    c = data.draw(st.integers(1, 6))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    a = Affine(rng.normal(size=c), rng.normal(size=c))
    b = Affine(rng.normal(size=c), rng.normal(size=c))
    x = rng.normal(size=(2, c, 3))
    assert_close(compose(a, b).apply(x), b.apply(a.apply(x)))
    assert_close(compose(Affine.identity(c), a).apply(x), a.apply(x))


def test_scale_bias_maps() -> None:
    x = np.arange(6.0).reshape(1, 3, 2)
    assert_close(
        affine_from_scale([2.0, 3.0, 4.0]).apply(x), x * np.array([2.0, 3.0, 4.0]).reshape(1, 3, 1)
    )
    assert_close(affine_from_scale([2.0], [1.0], channels=3).apply(x), 2 * x + 1)
    assert_close(
        affine_from_bias([1.0, 2.0, 3.0]).apply(x), x + np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1)
    )


def test_scale_blobs_of_an_affine() -> None:
    gamma, beta = affine_to_scale_blobs(Affine([1.5, 2.0], [0.0, -1.0]), np.float16)
    assert gamma.dtype == np.float16 and gamma.tolist() == [1.5, 2.0] and beta.tolist() == [0, -1]


def test_affine_is_read_only_copy() -> None:
    s = np.array([1.0, 2.0])
    a = Affine(s, [0.0, 0.0])
    s[0] = 9.0
    assert a.scale[0] == 1.0
    with pytest.raises(ValueError):
        a.scale[0] = 3.0


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("factor_blob", [[4.0], np.array(4.0), np.full((1, 1, 1, 1), 4.0)])
def test_factor_blob_shapes(factor_blob: npt.ArrayLike) -> None:
    mean, var = caffe_batchnorm_stats([8.0, 4.0], [4.0, 2.0], factor_blob)
    assert mean.tolist() == [2.0, 1.0] and var.tolist() == [1.0, 0.5]


def test_zero_factor_gives_zero_statistics() -> None:
    mean, var = caffe_batchnorm_stats([8.0], [4.0], [0.0])
    assert mean.tolist() == [0.0] and var.tolist() == [0.0]
    a = affine_from_batchnorm(mean, var, 0.25)
    assert a.scale.tolist() == [2.0] and a.shift.tolist() == [0.0]


def test_legacy_4d_statistics_are_accepted() -> None:
    mean, _ = caffe_batchnorm_stats(np.ones((1, 3, 1, 1)), np.ones((1, 3, 1, 1)), [1.0])
    assert mean.shape == (3,)


@pytest.mark.parametrize(
    ("mean", "var", "eps", "words"),
    [
        ([0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, -2.0], 1e-5, "variance + eps <= 0 in channel 3"),
        ([0.0, 0.0], [0.0, 0.0], 0.0, "variance + eps <= 0 in channel 0 (and 1 more)"),
        ([0.0, float("nan")], [1.0, 1.0], 1e-5, "mean is not finite in channel 1"),
        ([0.0], [float("inf")], 1e-5, "variance is not finite in channel 0"),
        ([0.0], [1.0], float("nan"), "eps is not finite"),
    ],
)
def test_unfoldable_statistics_are_reported(
    mean: list[float], var: list[float], eps: float, words: str
) -> None:
    reason = check_finite_stats(mean, var, eps)
    assert reason is not None and words in reason
    with pytest.raises(UnsupportedLayerError, match="cannot fold BatchNorm") as info:
        affine_from_batchnorm(mean, var, eps)
    assert words in str(info.value)


def test_overflowing_scale_is_reported() -> None:
    reason = check_finite_stats([0.0], [0.0], 1e-300, gamma=[1e200])
    assert reason == "folded scale overflows in channel 0"
    assert affine_problem(compose(Affine([1e200], [0.0]), Affine([1e200], [0.0]))) == (
        "scale is not finite in channel 0"
    )


def test_finite_statistics_have_no_reason() -> None:
    assert check_finite_stats([1.0, 2.0], [0.0, 1.0], 1e-5, [1.0, 2.0], [0.0, 0.0]) is None


# --------------------------------------------------------------------------- shape errors


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (
            lambda: fold_into_convolution(np.ones((3, 2, 1, 1)), None, Affine.identity(2)),
            "3 output channels",
        ),
        (
            lambda: fold_into_convolution(np.ones((2, 2, 1, 1)), np.ones(3), Affine.identity(2)),
            "convolution bias: has 3 values, expected 2",
        ),
        (
            lambda: fold_into_deconvolution(np.ones((3, 2, 1, 1)), None, Affine.identity(4), 2),
            "not divisible by group 2",
        ),
        (
            lambda: fold_into_deconvolution(np.ones((4, 2, 1, 1)), None, Affine.identity(2), 2),
            "4 output channels",
        ),
        (
            lambda: fold_into_inner_product(np.ones((3, 2)), None, Affine.identity(2)),
            "has 3 outputs",
        ),
        (
            lambda: fold_into_inner_product(np.ones((2, 3, 2)), None, Affine.identity(2)),
            "expected a 2-D weight",
        ),
        (
            lambda: fold_forward_into_convolution(np.ones((2, 2, 1, 1)), None, Affine.identity(3)),
            "reads 2 input channels",
        ),
        (
            lambda: fold_forward_into_convolution(
                np.ones((3, 1, 1, 1)), None, Affine.identity(2), 2
            ),
            "not divisible by group 2",
        ),
        (
            lambda: fold_forward_into_inner_product(np.ones((2, 5)), None, Affine.identity(2), 2),
            "reads 5 inputs",
        ),
        (
            lambda: fold_into_convolution(
                np.ones((2, 1, 1, 1), np.int32), None, Affine.identity(2)
            ),
            "floating-point",
        ),
        (lambda: caffe_batchnorm_stats([1.0, 2.0], [1.0], [1.0]), "mean has 2 channels"),
        (lambda: caffe_batchnorm_stats([1.0], [1.0], [1.0, 2.0]), "single value"),
        (
            lambda: caffe_batchnorm_stats(np.ones((2, 2)), np.ones(4), [1.0]),
            "one value per channel",
        ),
        (lambda: compose(Affine.identity(2), Affine.identity(3)), "2 and 3 channels"),
        (lambda: Affine([1.0, 2.0], [0.0]), "scale has 2 channels but shift has 1"),
        (lambda: affine_from_batchnorm([0.0], [1.0], 1e-5, gamma=[1.0, 1.0]), "gamma"),
        (lambda: affine_from_scale([1.0, 2.0], channels=3), "expected 3 or 1"),
    ],
)
def test_shape_mismatches_raise_model_mismatch(call: Any, words: str) -> None:
    with pytest.raises(ModelMismatchError) as info:
        call()
    assert words in str(info.value)
    assert isinstance(info.value, BnfuseError)
