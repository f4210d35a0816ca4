"""The one-pass fold arithmetic gives exactly the bits of the float64-once formula.

Each fold scales its weight with one ``np.multiply`` whose float64 loop rounds every
product straight into the result. The rule it must keep is "compute the product in
float64, round once to the weight's dtype". That formula is written out here as it
was before, ``(w.astype(float64) * s).astype(w.dtype)``, and the folds must match it
bit for bit (compared as unsigned integers, so -0.0, NaN payloads and subnormals
count) on random values and on the edge values of each dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from bnfuse.errors import UnsupportedLayerError
from bnfuse.folding.arith import (
    Affine,
    fold_forward_into_convolution,
    fold_forward_into_inner_product,
    fold_into_convolution,
    fold_into_deconvolution,
    fold_into_inner_product,
)

Array = npt.NDArray[Any]
UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def float64_once(w: Array, factor: Array) -> Array:
    """The reference rule: a float64 product, then one cast to the weight's dtype."""
    with np.errstate(over="ignore", invalid="ignore"):
        return (w.astype(np.float64) * factor).astype(w.dtype)


def bits(a: Array) -> Array:
    return np.ascontiguousarray(a).view(UINT[a.dtype.itemsize])


def edge_values(dtype: type[np.floating[Any]]) -> Array:
    info = np.finfo(dtype)
    tiny = float(info.smallest_subnormal)
    # Near the top of the range only by a factor the scales below cannot overflow.
    return np.array([0.0, -0.0, tiny, -tiny, 3 * tiny, float(info.tiny), float(info.max) / 64,
                     -float(info.max) / 64, 1.0, -1.0, float(info.eps), 1 + float(info.eps)],
                    dtype=dtype)


def weights(dtype: type[np.floating[Any]], shape: tuple[int, ...], seed: int) -> Array:
    """Random weights over many magnitudes, with the edge values in the first entries."""
    rng = np.random.default_rng(seed)
    top = 2 if dtype is np.float16 else 8
    w = (rng.standard_normal(shape) * 10.0 ** rng.integers(-8, top, shape)).astype(dtype)
    edges = edge_values(dtype)
    w.reshape(-1)[: edges.size] = edges
    return w


def scales(n: int, seed: int) -> Array:
    """float64 per-channel scales: random, tiny (results underflow to subnormals),
    negative, and ones that put float32 products exactly between two floats."""
    rng = np.random.default_rng(seed)
    s = rng.standard_normal(n).clip(-4, 4) * 10.0 ** rng.integers(-3, 1, n)
    fixed = [1e-30, -0.5, 1.0 + 2.0**-24, 1.0 - 2.0**-25, 3.0, -1e-300][:n]
    s[: len(fixed)] = fixed
    return s


DTYPES = [np.float16, np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_convolution_weights_match_the_float64_once_rule(dtype: type[np.floating[Any]]) -> None:
    w = weights(dtype, (7, 3, 3, 3), seed=1)
    w[1, 0, 0, 0] = np.finfo(dtype).tiny  # times -0.5: a subnormal product
    s = scales(7, seed=2)
    got, _ = fold_into_convolution(w, None, Affine(s, np.zeros(7)))
    assert got.dtype == w.dtype and got.shape == w.shape
    expected = float64_once(w, s.reshape(7, 1, 1, 1))
    np.testing.assert_array_equal(bits(got), bits(expected))
    # The edge cases are really there: -0.0 kept its sign, a subnormal product exists.
    assert np.signbit(got.reshape(-1)[1]) != np.signbit(np.float64(s[0]))
    assert got[1, 0, 0, 0] == -float(np.finfo(dtype).tiny) / 2
    assert 0 < abs(float(got[1, 0, 0, 0])) < float(np.finfo(dtype).tiny)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_producer_fold_matches_the_float64_once_rule(
        dtype: type[np.floating[Any]]) -> None:
    s, t = scales(6, seed=3), np.zeros(6)
    affine = Affine(s, t)
    # (fold, the weight as the rule sees it, the float64 factor that broadcasts over it)
    cases: list[tuple[Callable[[], tuple[Array, Array]], Array, Array]] = []
    w = weights(dtype, (4, 3, 2, 2), seed=4)  # Deconvolution (Cin, Cout/group, k, k), group 2
    cases.append((lambda: fold_into_deconvolution(w, None, affine, group=2),
                  w.reshape(2, 2, 3, 2, 2), s.reshape(2, 1, 3, 1, 1)))
    ip = weights(dtype, (6, 5), seed=5)
    cases.append((lambda: fold_into_inner_product(ip, None, affine), ip, s[:, None]))
    ipt = weights(dtype, (5, 6), seed=6)
    cases.append((lambda: fold_into_inner_product(ipt, None, affine, transpose=True), ipt,
                  s[None, :]))
    fw = weights(dtype, (4, 3, 3, 3), seed=7)  # forward into a group-2 conv reading 6 channels
    cases.append((lambda: fold_forward_into_convolution(fw, None, affine, group=2),
                  fw.reshape(2, 2, 3, 9), s.reshape(2, 1, 3, 1)))
    fip = weights(dtype, (2, 12), seed=8)  # forward into an inner product, 2 positions each
    cases.append((lambda: fold_forward_into_inner_product(fip, None, affine, spatial=2), fip,
                  np.repeat(s, 2)[None, :]))
    for fold, seen, factor in cases:
        got = fold()[0]
        expected = float64_once(seen, factor).reshape(got.shape)
        np.testing.assert_array_equal(bits(got), bits(expected))


def test_overflow_is_refused_with_the_float64_value_and_flat_index() -> None:
    w = np.array([[1.0, 2.0], [3.0e38, 1.0]], np.float32)
    # Channel 1's scale 2 pushes 3e38 past float32's max; the message names the product.
    with pytest.raises(UnsupportedLayerError) as info:
        fold_into_convolution(w, None, Affine([1.0, 2.0], [0.0, 0.0]))
    assert str(info.value) == (
        "folded convolution weights do not fit float32: value "
        f"{float(np.float32(3.0e38)) * 2.0:.6g} at flat index 2 is out of range")


def test_non_finite_inputs_pass_through_unchanged_as_before() -> None:
    # An input that already holds inf or NaN is not refused (the planner judges the
    # statistics; a weight's own inf is the model's): the output is what the rule gives.
    w = np.array([np.inf, np.nan, -np.inf, 3.0e38], np.float32)
    got, bias = fold_into_convolution(w.reshape(4, 1), None, Affine([2.0, 1.0, -1.0, 2.0],
                                                                     [0.0, 0.0, 0.0, 0.0]))
    expected = float64_once(w, np.array([2.0, 1.0, -1.0, 2.0]))
    np.testing.assert_array_equal(bits(got.reshape(-1)), bits(expected))
    assert bias.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_a_large_weight_is_scanned_in_blocks_and_still_refused() -> None:
    # Over the scan's block size, with the one bad value in the last block.
    w = np.ones((3, 70_000), np.float32)
    w[2, -1] = 2.0e38
    with pytest.raises(UnsupportedLayerError, match=r"value 4e\+38 at flat index 209999 "):
        fold_into_inner_product(w, None, Affine([1.0, 1.0, 2.0], [0.0, 0.0, 0.0]))
