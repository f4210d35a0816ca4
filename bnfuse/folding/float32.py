"""Caffe's own float32 arithmetic for a chain of per-channel layers, on probe inputs.

The float64 fold of :mod:`bnfuse.folding.arith` is exact for the values, but Caffe
itself computes a chain in float32, step by step. :func:`caffe_float32_batchnorm`,
:func:`caffe_float32_scale` and :func:`caffe_float32_bias` replay those steps in
float32 on the inputs 0 and 1 (a :class:`Float32Probe`) and raise
:class:`~bnfuse.errors.UnsupportedLayerError` naming the step and the channel where
Caffe would produce inf or NaN, so the planner keeps such a chain instead of folding
it into finite weights.

Example:
    >>> caffe_float32_bias(Float32Probe.unit(2), [0.5, 1.0]).at_one.tolist()
    [1.5, 2.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bnfuse.errors import ModelMismatchError, UnsupportedLayerError
from bnfuse.folding.arith import F32Array, _first_bad, _real_array, _vector

__all__ = [
    "Float32Probe",
    "caffe_float32_batchnorm",
    "caffe_float32_bias",
    "caffe_float32_scale",
]

_F32 = np.float32


def _f32_vector(blob: npt.ArrayLike, what: str) -> F32Array:
    """One value per channel as float32, as Caffe's ``Blob<float>`` holds it."""
    vec = _vector(blob, what)
    # A double blob value beyond float32 becomes inf in Caffe's float net; judged later.
    with np.errstate(over="ignore", invalid="ignore"):
        return vec.astype(_F32)


def _not_finite(values: F32Array) -> npt.NDArray[np.bool_]:
    return ~np.isfinite(values)


def _float32_reason(detail: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"Caffe's float32 arithmetic is not finite: {detail}")


@dataclass(frozen=True, eq=False)
class Float32Probe:
    """What Caffe's float32 layers output, per channel, for the inputs 0 and 1.

    A fold replaces a chain of per-channel layers by its float64 map; Caffe evaluates
    the chain layer by layer in float32. When that evaluation is not finite (a variance
    plus eps that is 0 in float32, a ``1/factor`` that overflows, a Scale that pushes
    the normalised value past float32's range), real Caffe outputs inf or NaN while the
    folded weights would be finite, so the fold would change what the model computes.
    The probe runs Caffe's float32 arithmetic, step by step and in Caffe's order, on the
    inputs 0 and 1 of every channel: the chain folds only when every step is finite for
    both (an overflow that only much larger inputs reach depends on the data).

    Example:
        >>> probe = Float32Probe.unit(2)
        >>> probe.at_zero.tolist(), probe.at_one.tolist(), probe.at_one.dtype.name
        ([0.0, 0.0], [1.0, 1.0], 'float32')
    """

    at_zero: F32Array
    at_one: F32Array

    @classmethod
    def unit(cls, channels: int) -> Float32Probe:
        """The inputs themselves: 0 and 1 in each of ``channels`` channels.

        Example:
            >>> Float32Probe.unit(1).at_one.tolist()
            [1.0]
        """
        return cls(np.zeros(channels, _F32), np.ones(channels, _F32))

    @property
    def channels(self) -> int:
        """Number of channels probed."""
        return int(self.at_zero.size)

    def _checked(self, what: str) -> Float32Probe:
        for name, values in (("0", self.at_zero), ("1", self.at_one)):
            bad = _not_finite(values)
            if bad.any():
                raise _float32_reason(f"{what} is {values[bad][0]} in {_first_bad(bad)} "
                                      f"for the input {name}")
        return self


def caffe_float32_batchnorm(
    mean_blob: npt.ArrayLike,
    var_blob: npt.ArrayLike,
    eps: float,
    *,
    factor_blob: npt.ArrayLike | None = None,
    scale: npt.ArrayLike | None = None,
    shift: npt.ArrayLike | None = None,
    multiply_by_rsqrt: bool = False,
) -> Float32Probe:
    """Caffe's float32 evaluation of a BatchNorm, on the inputs 0 and 1 (:class:`Float32Probe`).

    The steps are the forks' TEST-phase code, each rounded to float32: with a BVLC
    ``factor_blob``, ``k = 0 if f == 0 else 1 / f``, then ``mean·k``, ``variance·k``;
    then ``d = variance + eps``, and ``(x - mean) / sqrt(d)`` (``multiply_by_rsqrt``:
    NVIDIA's ``(x - mean) · d^-0.5``), then ``· scale + shift`` when the dialect has them.
    Raises :class:`~bnfuse.errors.UnsupportedLayerError` naming the first step that is
    not finite and its channel; returns the probe otherwise.

    Example:
        >>> caffe_float32_batchnorm([2.0], [8.0], 0.0, factor_blob=[2.0]).at_zero.tolist()
        [-0.5]
        >>> caffe_float32_batchnorm([0.0], [-1.0], 1.0)  # 0 in float32: Caffe divides by 0
        Traceback (most recent call last):
        ...
        bnfuse.errors.UnsupportedLayerError: Caffe's float32 arithmetic is not finite: \
variance + eps is 0 in channel 0 (variance -1, eps 1), so Caffe divides by zero
    """
    mean = _f32_vector(mean_blob, "BatchNorm mean blob")
    var = _f32_vector(var_blob, "BatchNorm variance blob")
    if mean.size != var.size:
        raise ModelMismatchError(
            f"BatchNorm blobs: mean has {mean.size} channels but variance has {var.size}")
    for role, values in (("mean", mean), ("variance", var)):
        bad = _not_finite(values)
        if bad.any():
            raise _float32_reason(f"the {role} blob is {values[bad][0]} in float32 in "
                                  f"{_first_bad(bad)}")
    stored = "variance"
    with np.errstate(all="ignore"):
        if factor_blob is not None:
            factor = _real_array(factor_blob, "BatchNorm factor blob")
            if factor.size != 1:
                raise ModelMismatchError(
                    f"BatchNorm factor blob: expected a single value, got shape {factor.shape}")
            f = _F32(factor.reshape(-1)[0])
            k = _F32(0) if f == 0 else _F32(1) / f
            if not np.isfinite(k):
                raise _float32_reason(f"1/factor is {k} (factor {float(f):.9g}), so Caffe's "
                                      "mean and variance are inf or NaN")
            mean, var = mean * k, var * k
            stored = "variance/factor"
            for role, values in (("mean/factor", mean), (stored, var)):
                bad = _not_finite(values)
                if bad.any():
                    raise _float32_reason(f"{role} is {values[bad][0]} in {_first_bad(bad)}")
        eps32 = _F32(eps)
        denom = var + eps32
        for bad, what in ((denom == 0, "is 0"), (~(denom > 0) & (denom != 0), "is negative")):
            if bad.any():
                c = int(np.flatnonzero(bad)[0])
                effect = ("so Caffe divides by zero" if what == "is 0"
                          else "so Caffe's square root is NaN")
                raise _float32_reason(
                    f"{stored} + eps {what} in {_first_bad(bad)} ({stored} {float(var[c]):.9g}, "
                    f"eps {float(eps32):.9g}), {effect}")
        if multiply_by_rsqrt:
            factor_per_channel = np.power(denom, _F32(-0.5))
            at_zero, at_one = (_F32(0) - mean) * factor_per_channel, \
                (_F32(1) - mean) * factor_per_channel
        else:
            root = np.sqrt(denom)
            at_zero, at_one = (_F32(0) - mean) / root, (_F32(1) - mean) / root
    probe = Float32Probe(at_zero.astype(_F32), at_one.astype(_F32))._checked(
        "the normalised value")
    if scale is None and shift is None:
        return probe
    return caffe_float32_scale(probe, np.ones(probe.channels) if scale is None else scale,
                               shift, what="the BatchNorm's scaled output")


def caffe_float32_scale(
    probe: Float32Probe, gamma: npt.ArrayLike, beta: npt.ArrayLike | None = None,
    *, what: str = "the Scale output",
) -> Float32Probe:
    """A Scale layer's float32 output ``x·gamma (+ beta)`` for the probed inputs.

    Caffe multiplies, then adds the bias, rounding each step to float32. ``gamma`` and
    ``beta`` hold one value per channel, or one value for every channel. Raises
    :class:`~bnfuse.errors.UnsupportedLayerError` (``what`` names the step) when a value
    is not finite.

    Example:
        >>> caffe_float32_scale(Float32Probe.unit(1), [2.0], [1.0]).at_one.tolist()
        [3.0]
        >>> caffe_float32_scale(Float32Probe.unit(1), [3e38], [3e38])
        Traceback (most recent call last):
        ...
        bnfuse.errors.UnsupportedLayerError: Caffe's float32 arithmetic is not finite: \
the Scale output is inf in channel 0 for the input 1
    """
    g = _f32_per_channel(gamma, probe.channels, "Scale blob")
    b = None if beta is None else _f32_per_channel(beta, probe.channels, "Scale bias blob")
    with np.errstate(all="ignore"):
        at_zero, at_one = probe.at_zero * g, probe.at_one * g
        if b is not None:
            at_zero, at_one = at_zero + b, at_one + b
    return Float32Probe(at_zero.astype(_F32), at_one.astype(_F32))._checked(what)


def caffe_float32_bias(probe: Float32Probe, beta: npt.ArrayLike, *,
                       what: str = "the Bias output") -> Float32Probe:
    """A Bias layer's float32 output ``x + beta`` for the probed inputs.

    Example:
        >>> caffe_float32_bias(Float32Probe.unit(2), [0.5, 1.0]).at_zero.tolist()
        [0.5, 1.0]
    """
    b = _f32_per_channel(beta, probe.channels, "Bias blob")
    with np.errstate(all="ignore"):
        at_zero, at_one = probe.at_zero + b, probe.at_one + b
    return Float32Probe(at_zero.astype(_F32), at_one.astype(_F32))._checked(what)


def _f32_per_channel(blob: npt.ArrayLike, channels: int, what: str) -> F32Array:
    values = _f32_vector(blob, what)
    if values.size not in (1, channels):
        raise ModelMismatchError(f"{what}: has {values.size} values, expected {channels} or 1")
    bad = _not_finite(values)
    if bad.any():
        raise _float32_reason(f"{what} is {values[bad][0]} in float32 in {_first_bad(bad)}")
    return values
