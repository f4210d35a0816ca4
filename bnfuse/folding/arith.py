"""Fold arithmetic on numpy arrays: per-channel affine maps and weights.

This module knows arrays, never layers. Every BatchNorm-like layer that
bnfuse can fold is first turned into an :class:`Affine` -- one scale ``s`` and
one shift ``t`` per channel, ``y = s * x + t`` -- and the fold functions below
merge such a map into the weights of a neighbouring linear layer.

Dtype policy
------------
- Everything is computed in float64, whatever the input dtype, so the only
  rounding added by a fold is the final cast. A weight is scaled in one pass
  (numpy's float64 loop rounding each product straight into the result), with
  exactly the bits of a float64 product cast afterwards and no float64 copy.
- Results are cast back to the dtype of the weight they replace: a float32
  weight stays float32, float16 stays float16, float64 stays float64. A bias
  keeps its own dtype; a bias created for a producer that had none takes the
  weight's dtype.
- If that cast overflows (a finite float64 value that is infinite in the
  target dtype, e.g. a large scale on float16 weights), the fold raises
  :class:`~bnfuse.errors.UnsupportedLayerError` instead of writing infinities.
- Inputs are never modified: they may be read-only views into a memory-mapped
  caffemodel. Every result is a new array.
- Shapes keep their layout: a legacy 4-D bias ``(1, 1, 1, N)`` or inner-product
  weight ``(1, 1, N, K)`` comes back in the same shape.

Errors
------
Blobs whose shapes do not fit together raise
:class:`~bnfuse.errors.ModelMismatchError`. Statistics that make a fold
undefined (non-finite values, ``variance + eps <= 0``) are a property of the
model, not a bug: :func:`check_finite_stats` returns the reason as text so the
planner can ask "is this exact?" before folding and report the skip, and
:func:`affine_from_batchnorm` raises
:class:`~bnfuse.errors.UnsupportedLayerError` with that same reason when it is
called anyway. Messages name no file or layer (this module does not know
them); callers add that context.

Caffe's float32 semantics
-------------------------
The float64 fold is exact for the values; whether Caffe's own step-by-step float32
evaluation of a chain is finite is judged by :mod:`bnfuse.folding.float32`.

Example:
    >>> import numpy as np
    >>> bn = affine_from_batchnorm([1.0], [3.0], eps=1.0)
    >>> w, b = fold_into_convolution(np.ones((1, 1, 1, 1), np.float32), None, bn)
    >>> w.dtype.name, float(w.ravel()[0]), b.tolist()
    ('float32', 0.5, [-0.5])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bnfuse.errors import ModelMismatchError, UnsupportedLayerError

#: A float64 vector or array computed here.
F64Array = npt.NDArray[np.float64]
#: A weight or bias blob of any floating dtype.
FloatArray = npt.NDArray[np.floating[Any]]
#: A per-channel float32 vector, computed the way Caffe's float layers compute it.
F32Array = npt.NDArray[np.float32]

__all__ = [
    "Affine",
    "F32Array",
    "F64Array",
    "FloatArray",
    "affine_from_batchnorm",
    "affine_from_bias",
    "affine_from_scale",
    "affine_problem",
    "affine_to_scale_blobs",
    "caffe_batchnorm_stats",
    "check_finite_stats",
    "compose",
    "fold_forward_into_convolution",
    "fold_forward_into_inner_product",
    "fold_into_convolution",
    "fold_into_deconvolution",
    "fold_into_inner_product",
]


# --------------------------------------------------------------------------- helpers


def _real_array(blob: npt.ArrayLike, what: str) -> npt.NDArray[Any]:
    arr = np.asarray(blob)
    # Booleans and complex numbers are never valid blob contents; refusing them
    # here keeps a wrong argument from turning into silent arithmetic.
    if arr.dtype.kind not in "fiu":
        raise ModelMismatchError(f"{what}: expected real numbers, got dtype {arr.dtype}")
    return arr


def _vector(blob: npt.ArrayLike, what: str) -> F64Array:
    """One value per channel as a new float64 vector.

    Accepts ``(C,)`` and legacy shapes with unit axes such as ``(1, C, 1, 1)``.
    """
    arr = _real_array(blob, what)
    if sum(1 for d in arr.shape if d != 1) > 1:
        raise ModelMismatchError(f"{what}: expected one value per channel, got shape {arr.shape}")
    if arr.size == 0:
        raise ModelMismatchError(f"{what}: is empty")
    # A signalling NaN (a corrupt float) makes the cast warn; NaN is judged later, not here.
    with np.errstate(invalid="ignore"):
        return np.array(arr, dtype=np.float64).reshape(-1)


def _float_weight(w: npt.ArrayLike, what: str, min_ndim: int) -> FloatArray:
    arr = np.asarray(w)
    if arr.dtype.kind != "f":
        raise ModelMismatchError(f"{what}: expected a floating-point blob, got dtype {arr.dtype}")
    if arr.ndim < min_ndim:
        raise ModelMismatchError(
            f"{what}: expected at least {min_ndim} axes, got shape {arr.shape}"
        )
    return arr


def _matrix(w: FloatArray, what: str) -> FloatArray:
    """View an inner-product weight as 2-D, dropping legacy leading unit axes."""
    if w.ndim == 2:
        return w
    if w.ndim > 2 and all(d == 1 for d in w.shape[:-2]):
        return w.reshape(w.shape[-2:])
    raise ModelMismatchError(f"{what}: expected a 2-D weight (N, K), got shape {w.shape}")


def _bias(
    b: npt.ArrayLike | None, n: int, weight_dtype: np.dtype[Any], what: str
) -> tuple[F64Array, tuple[int, ...], np.dtype[Any]]:
    """The bias as float64 plus the shape and dtype to give the folded one back."""
    if b is None:
        # A producer without bias gets one: zeros, in the weight's dtype.
        return np.zeros(n, dtype=np.float64), (n,), weight_dtype
    arr = np.asarray(b)
    if arr.dtype.kind != "f":
        raise ModelMismatchError(f"{what}: expected a floating-point blob, got dtype {arr.dtype}")
    vec = _vector(arr, what)
    if vec.size != n:
        raise ModelMismatchError(f"{what}: has {vec.size} values, expected {n}")
    return vec, arr.shape, arr.dtype


#: Elements per block of the finiteness scan: its boolean temporary stays in cache
#: instead of being a quarter of the weight's size.
_FINITE_BLOCK = 1 << 16

#: "Are the inputs of this fold finite?", asked only when a result is not: scanning a
#: large weight costs a full pass, which a fold whose results are finite never needs.
Finite = Callable[[], bool]


def _all_finite(*arrays: npt.NDArray[Any]) -> bool:
    for a in arrays:
        if a.size <= _FINITE_BLOCK or not a.flags.c_contiguous:
            if not bool(np.isfinite(a).all()):
                return False
            continue
        flat = a.reshape(-1)
        for start in range(0, flat.size, _FINITE_BLOCK):
            if not bool(np.isfinite(flat[start : start + _FINITE_BLOCK]).all()):
                return False
    return True


def _finite_inputs(*arrays: npt.NDArray[Any]) -> Finite:
    return lambda: _all_finite(*arrays)


def _out_of_range(
    what: str, dtype: np.dtype[Any], value: float, index: int
) -> UnsupportedLayerError:
    return UnsupportedLayerError(
        f"folded {what} do not fit {np.dtype(dtype).name}: value "
        f"{value:.6g} at flat index {index} is out of range"
    )


def _cast(values: F64Array, dtype: np.dtype[Any], what: str, inputs_finite: Finite) -> FloatArray:
    """Cast a float64 result to ``dtype``, refusing to invent infinities."""
    with np.errstate(over="ignore", invalid="ignore"):
        out: FloatArray = values.astype(dtype)
    if not _all_finite(out) and inputs_finite():
        bad = int(np.flatnonzero(~np.isfinite(out.reshape(-1)))[0])
        raise _out_of_range(what, dtype, float(values.reshape(-1)[bad]), bad)
    return out


def _multiply_once(w: FloatArray, factor: F64Array, what: str, inputs_finite: Finite) -> FloatArray:
    """``w * factor`` in float64, rounded once to ``w``'s dtype, in a single pass.

    The same bits as ``(w.astype(float64) * factor).astype(w.dtype)``: numpy runs its
    float64 loop (``factor`` is float64), converting each input element exactly and
    rounding each product once into ``out``, a block at a time, so no full-size
    float64 temporary exists. ``factor`` broadcasts against ``w``. A product that is
    not finite in ``w``'s dtype while every input is finite raises (a checked cast).
    """
    out: FloatArray = np.empty(w.shape, dtype=w.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        np.multiply(w, factor, out=out, casting="same_kind")
    if not _all_finite(out) and inputs_finite():
        bad = int(np.flatnonzero(~np.isfinite(out.reshape(-1)))[0])
        where = np.unravel_index(bad, out.shape)
        # The float64 product the message reports, the same operation numpy made.
        value = float(w[where]) * float(np.broadcast_to(factor, out.shape)[where])
        raise _out_of_range(what, w.dtype, value, bad)
    return out


def _first_bad(mask: npt.NDArray[np.bool_]) -> str:
    """'channel 3' or 'channel 3 (and 4 more)' for the first True entry."""
    idx = np.flatnonzero(mask)
    more = f" (and {idx.size - 1} more)" if idx.size > 1 else ""
    return f"channel {int(idx[0])}{more}"


def _broadcast(vec: F64Array, channels: int | None, what: str) -> F64Array:
    if channels is None or vec.size == channels:
        return vec
    if vec.size == 1:
        # A scalar Scale/Bias (num_axes: 0) applies the same value to every channel.
        return np.full(channels, vec[0], dtype=np.float64)
    raise ModelMismatchError(f"{what}: has {vec.size} values, expected {channels} or 1")


# --------------------------------------------------------------------------- affine maps


@dataclass(frozen=True, eq=False)
class Affine:
    """A per-channel affine map ``y[c] = scale[c] * x[c] + shift[c]`` in float64.

    Both vectors are stored as read-only float64 copies of what was passed in,
    so an ``Affine`` never aliases a caller's (or a caffemodel's) memory.

    Example:
        >>> a = Affine([2.0, 3.0], [1.0, 0.0])
        >>> a.channels, a.apply([[1.0, 1.0]]).tolist()
        (2, [[3.0, 3.0]])
    """

    scale: F64Array
    shift: F64Array

    def __init__(self, scale: npt.ArrayLike, shift: npt.ArrayLike) -> None:
        s = _vector(scale, "affine scale")
        t = _vector(shift, "affine shift")
        if s.shape != t.shape:
            raise ModelMismatchError(
                f"affine map: scale has {s.size} channels but shift has {t.size}"
            )
        s.flags.writeable = False
        t.flags.writeable = False
        object.__setattr__(self, "scale", s)
        object.__setattr__(self, "shift", t)

    @property
    def channels(self) -> int:
        """Number of channels the map applies to.

        Example:
            >>> Affine.identity(4).channels
            4
        """
        return int(self.scale.size)

    @classmethod
    def identity(cls, channels: int) -> Affine:
        """The map that changes nothing (scale 1, shift 0).

        Example:
            >>> Affine.identity(2).shift.tolist()
            [0.0, 0.0]
        """
        if channels < 1:
            raise ModelMismatchError(f"affine map: channel count must be >= 1, got {channels}")
        return cls(np.ones(channels), np.zeros(channels))

    def is_identity(self) -> bool:
        """True when scale is exactly 1 and shift exactly 0 in every channel.

        Example:
            >>> Affine([1.0], [0.0]).is_identity(), Affine([1.0], [0.5]).is_identity()
            (True, False)
        """
        return bool(np.all(self.scale == 1.0) and np.all(self.shift == 0.0))

    def apply(self, x: npt.ArrayLike, axis: int = 1) -> F64Array:
        """Apply the map to ``x`` along its channel ``axis``, in float64.

        Example:
            >>> Affine([2.0], [1.0]).apply([[[5.0]]]).tolist()
            [[[11.0]]]
        """
        arr = np.asarray(x, dtype=np.float64)
        ax = axis % arr.ndim
        if arr.shape[ax] != self.channels:
            raise ModelMismatchError(
                f"affine map: input has {arr.shape[ax]} channels on axis {axis}, "
                f"expected {self.channels}"
            )
        shape = [1] * arr.ndim
        shape[ax] = self.channels
        result: F64Array = arr * self.scale.reshape(shape) + self.shift.reshape(shape)
        return result


def affine_problem(affine: Affine) -> str | None:
    """Why ``affine`` cannot be folded exactly (a non-finite value), or ``None``.

    Composing finite maps can still overflow, so the planner asks this about
    the composed map of a whole chain.

    Example:
        >>> affine_problem(Affine([1.0], [0.0])) is None
        True
        >>> affine_problem(Affine([1.0, float("inf")], [0.0, 0.0]))
        'scale is not finite in channel 1'
    """
    for name, vec in (("scale", affine.scale), ("shift", affine.shift)):
        bad = ~np.isfinite(vec)
        if bad.any():
            return f"{name} is not finite in {_first_bad(bad)}"
    return None


def compose(a: Affine, b: Affine) -> Affine:
    """The map that applies ``a`` first, then ``b``.

    ``b(a(x)) = b.s * (a.s * x + a.t) + b.t``, so scale ``a.s * b.s`` and shift
    ``b.s * a.t + b.t``.

    Example:
        >>> c = compose(Affine([2.0], [1.0]), Affine([3.0], [4.0]))
        >>> c.scale.tolist(), c.shift.tolist()
        ([6.0], [7.0])
    """
    if a.channels != b.channels:
        raise ModelMismatchError(
            f"cannot compose affine maps over {a.channels} and {b.channels} channels"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        # Overflow shows up as inf in the result; affine_problem reports it.
        return Affine(a.scale * b.scale, b.scale * a.shift + b.shift)


def caffe_batchnorm_stats(
    mean_blob: npt.ArrayLike, var_blob: npt.ArrayLike, factor_blob: npt.ArrayLike
) -> tuple[F64Array, F64Array]:
    """Mean and variance from BVLC BatchNorm blobs ``[mean*f, var*f, f]``.

    Caffe divides both by the stored moving-average factor ``f`` with the rule
    ``k = 0 if f == 0 else 1 / f``: a zero factor gives zero statistics, not
    "divide by one". The factor blob holds one value; its shape may be ``(1,)``,
    ``()`` or legacy ``(1, 1, 1, 1)``.

    Example:
        >>> m, v = caffe_batchnorm_stats([2.0, 4.0], [8.0, 6.0], [2.0])
        >>> m.tolist(), v.tolist()
        ([1.0, 2.0], [4.0, 3.0])
        >>> caffe_batchnorm_stats([2.0], [8.0], [0.0])[1].tolist()
        [0.0]
    """
    mean = _vector(mean_blob, "BatchNorm mean blob")
    var = _vector(var_blob, "BatchNorm variance blob")
    if mean.size != var.size:
        raise ModelMismatchError(
            f"BatchNorm blobs: mean has {mean.size} channels but variance has {var.size}"
        )
    factor = _real_array(factor_blob, "BatchNorm factor blob")
    if factor.size != 1:
        raise ModelMismatchError(
            f"BatchNorm factor blob: expected a single value, got shape {factor.shape}"
        )
    f = float(factor.reshape(-1)[0])
    k = 0.0 if f == 0.0 else 1.0 / f
    # inf * 0 (a corrupt blob) is NaN, as in Caffe; check_finite_stats judges it, quietly.
    with np.errstate(over="ignore", invalid="ignore"):
        return mean * k, var * k


def check_finite_stats(
    mean: npt.ArrayLike,
    var: npt.ArrayLike,
    eps: float,
    gamma: npt.ArrayLike | None = None,
    beta: npt.ArrayLike | None = None,
) -> str | None:
    """Why BatchNorm statistics cannot be folded exactly, or ``None`` if they can.

    Checks, in float64: every value finite, ``variance + eps > 0`` in every
    channel, and the resulting scale and shift finite (no overflow). Shape
    disagreements are not a "reason" but a broken model: they raise
    :class:`~bnfuse.errors.ModelMismatchError`.

    Example:
        >>> check_finite_stats([0.0, 0.0], [1.0, 1.0], 1e-5) is None
        True
        >>> check_finite_stats([0.0, 0.0], [1.0, -1.0], 1e-5)
        'variance + eps <= 0 in channel 1 (variance -1, eps 1e-05)'
    """
    m, v, g, b = _stat_vectors(mean, var, gamma, beta)
    if not np.isfinite(eps):
        return f"eps is not finite ({eps})"
    for name, vec in (("mean", m), ("variance", v), ("scale (gamma)", g), ("shift (beta)", b)):
        bad = ~np.isfinite(vec)
        if bad.any():
            return f"{name} is not finite in {_first_bad(bad)}"
    denom = v + eps
    bad = denom <= 0.0
    if bad.any():
        c = int(np.flatnonzero(bad)[0])
        return f"variance + eps <= 0 in {_first_bad(bad)} (variance {v[c]:.6g}, eps {eps:.6g})"
    with np.errstate(over="ignore", invalid="ignore"):
        s = g / np.sqrt(denom)
        t = b - m * s
    bad = ~np.isfinite(s)
    if bad.any():
        return f"folded scale overflows in {_first_bad(bad)}"
    bad = ~np.isfinite(t)
    if bad.any():
        return f"folded shift overflows in {_first_bad(bad)}"
    return None


def _stat_vectors(
    mean: npt.ArrayLike,
    var: npt.ArrayLike,
    gamma: npt.ArrayLike | None,
    beta: npt.ArrayLike | None,
) -> tuple[F64Array, F64Array, F64Array, F64Array]:
    m = _vector(mean, "BatchNorm mean")
    v = _vector(var, "BatchNorm variance")
    if m.size != v.size:
        raise ModelMismatchError(
            f"BatchNorm statistics: mean has {m.size} channels but variance has {v.size}"
        )
    g = np.ones_like(m) if gamma is None else _vector(gamma, "BatchNorm scale (gamma)")
    b = np.zeros_like(m) if beta is None else _vector(beta, "BatchNorm shift (beta)")
    for name, vec in (("scale (gamma)", g), ("shift (beta)", b)):
        if vec.size != m.size:
            raise ModelMismatchError(
                f"BatchNorm {name}: has {vec.size} channels, statistics have {m.size}"
            )
    return m, v, g, b


def affine_from_batchnorm(
    mean: npt.ArrayLike,
    var: npt.ArrayLike,
    eps: float,
    gamma: npt.ArrayLike | None = None,
    beta: npt.ArrayLike | None = None,
) -> Affine:
    """The affine map of ``gamma * (x - mean) / sqrt(var + eps) + beta``.

    ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``; ``gamma``
    defaults to 1 and ``beta`` to 0. ``mean`` and ``var`` are the statistics
    actually used (for BVLC blobs, after :func:`caffe_batchnorm_stats`).
    Raises :class:`~bnfuse.errors.UnsupportedLayerError` with the reason from
    :func:`check_finite_stats` when the map is undefined.

    Example:
        >>> a = affine_from_batchnorm([1.0], [4.0], 0.0, gamma=[2.0], beta=[3.0])
        >>> a.scale.tolist(), a.shift.tolist()
        ([1.0], [2.0])
    """
    reason = check_finite_stats(mean, var, eps, gamma, beta)
    if reason is not None:
        raise UnsupportedLayerError(f"cannot fold BatchNorm: {reason}")
    m, v, g, b = _stat_vectors(mean, var, gamma, beta)
    s = g / np.sqrt(v + eps)
    return Affine(s, b - m * s)


def affine_from_scale(
    gamma: npt.ArrayLike, beta: npt.ArrayLike | None = None, channels: int | None = None
) -> Affine:
    """The affine map of a Scale layer: ``gamma * x (+ beta)``.

    With ``channels`` given, a single value (``num_axes: 0``) is applied to
    every channel.

    Example:
        >>> affine_from_scale([2.0], [1.0], channels=3).shift.tolist()
        [1.0, 1.0, 1.0]
    """
    g = _broadcast(_vector(gamma, "Scale blob"), channels, "Scale blob")
    b = (
        np.zeros_like(g)
        if beta is None
        else _broadcast(_vector(beta, "Scale bias blob"), channels, "Scale bias blob")
    )
    if b.size != g.size:
        raise ModelMismatchError(
            f"Scale bias blob: has {b.size} values, the scale blob has {g.size}"
        )
    return Affine(g, b)


def affine_from_bias(beta: npt.ArrayLike, channels: int | None = None) -> Affine:
    """The affine map of a Bias layer: ``x + beta``.

    Example:
        >>> affine_from_bias([0.5, 1.5]).shift.tolist()
        [0.5, 1.5]
    """
    b = _broadcast(_vector(beta, "Bias blob"), channels, "Bias blob")
    return Affine(np.ones_like(b), b)


def affine_to_scale_blobs(
    affine: Affine, dtype: npt.DTypeLike = np.float32
) -> tuple[FloatArray, FloatArray]:
    """The ``(gamma, beta)`` blobs of one Scale layer (``bias_term: true``) equal to ``affine``.

    Used when a BatchNorm (+ Scale) cannot fold into a neighbour but can still
    collapse into a single Scale layer. Both blobs have shape ``(C,)``.

    Example:
        >>> g, b = affine_to_scale_blobs(Affine([2.0], [1.0]))
        >>> g.dtype.name, g.tolist(), b.tolist()
        ('float32', [2.0], [1.0])
    """
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise ModelMismatchError(f"Scale blobs: expected a floating-point dtype, got {dt}")
    finite = _finite_inputs(affine.scale, affine.shift)
    return (
        _cast(affine.scale, dt, "Scale weights", finite),
        _cast(affine.shift, dt, "Scale bias", finite),
    )


# --------------------------------------------------------------------------- fold into a producer


def fold_into_convolution(
    w: npt.ArrayLike, b: npt.ArrayLike | None, affine: Affine
) -> tuple[FloatArray, FloatArray]:
    """Fold ``affine`` applied to a convolution's output into its weights.

    Weight ``(Cout, Cin/group, *kernel)``: ``W'[o] = W[o] * s[o]`` and
    ``b'[o] = b[o] * s[o] + t[o]`` (``b = 0`` when the convolution has no bias).
    Grouping does not matter here: output channel ``o`` is always axis 0.

    Example:
        >>> import numpy as np
        >>> w, b = fold_into_convolution(np.ones((2, 1, 1, 1)), [1.0, 1.0],
        ...                              Affine([2.0, 3.0], [0.0, 1.0]))
        >>> w.ravel().tolist(), b.tolist()
        ([2.0, 3.0], [2.0, 4.0])
    """
    wa = _float_weight(w, "convolution weight", 2)
    cout = wa.shape[0]
    if affine.channels != cout:
        raise ModelMismatchError(
            f"convolution has {cout} output channels but the folded map has {affine.channels}"
        )
    b64, bshape, bdtype = _bias(b, cout, wa.dtype, "convolution bias")
    s, t = affine.scale, affine.shift
    finite = _finite_inputs(wa, b64, s, t)
    w2 = _multiply_once(wa, s.reshape((cout,) + (1,) * (wa.ndim - 1)), "convolution weights",
                        finite)
    with np.errstate(over="ignore", invalid="ignore"):
        b2 = b64 * s + t
    return (
        w2,
        _cast(b2, bdtype, "convolution bias", finite).reshape(bshape),
    )


def fold_into_deconvolution(
    w: npt.ArrayLike, b: npt.ArrayLike | None, affine: Affine, group: int = 1
) -> tuple[FloatArray, FloatArray]:
    """Fold ``affine`` applied to a deconvolution's output into its weights.

    Deconvolution weights are ``(Cin, Cout/group, *kernel)``: output channel
    ``o`` of group ``g`` lives at ``[g*Cin/group : (g+1)*Cin/group, o - g*Cout/group]``.
    The weight is viewed as ``(group, Cin/group, Cout/group, *kernel)`` and
    axis 2 is scaled by the group's slice of ``s``. (Scaling axis 1 of the
    plain weight with ``s[:Cout/group]`` -- what many tools do -- is only right
    when ``group == 1``.)

    Example:
        >>> import numpy as np
        >>> w, b = fold_into_deconvolution(np.ones((2, 1, 1, 1)), None,
        ...                                Affine([2.0, 3.0], [0.0, 1.0]), group=2)
        >>> w.ravel().tolist(), b.tolist()
        ([2.0, 3.0], [0.0, 1.0])
    """
    wa = _float_weight(w, "deconvolution weight", 2)
    if group < 1:
        raise ModelMismatchError(f"deconvolution group must be >= 1, got {group}")
    cin, per_group = wa.shape[0], wa.shape[1]
    if cin % group:
        raise ModelMismatchError(
            f"deconvolution weight has {cin} input channels, not divisible by group {group}"
        )
    cout = per_group * group
    if affine.channels != cout:
        raise ModelMismatchError(
            f"deconvolution has {cout} output channels (weight {wa.shape}, group {group}) "
            f"but the folded map has {affine.channels}"
        )
    b64, bshape, bdtype = _bias(b, cout, wa.dtype, "deconvolution bias")
    s, t = affine.scale, affine.shift
    kernel = wa.shape[2:]
    finite = _finite_inputs(wa, b64, s, t)
    grouped = wa.reshape((group, cin // group, per_group, *kernel))
    s_view = s.reshape((group, 1, per_group) + (1,) * len(kernel))
    w2 = _multiply_once(grouped, s_view, "deconvolution weights", finite).reshape(wa.shape)
    with np.errstate(over="ignore", invalid="ignore"):
        b2 = b64 * s + t
    return (
        w2,
        _cast(b2, bdtype, "deconvolution bias", finite).reshape(bshape),
    )


def fold_into_inner_product(
    w: npt.ArrayLike, b: npt.ArrayLike | None, affine: Affine, transpose: bool = False
) -> tuple[FloatArray, FloatArray]:
    """Fold ``affine`` applied to an inner product's output into its weights.

    Weight ``(N, K)`` (scale axis 0), or ``(K, N)`` with ``transpose: true``
    (scale axis 1). Legacy 4-D weights ``(1, 1, N, K)`` keep their shape.

    Example:
        >>> import numpy as np
        >>> w, b = fold_into_inner_product(np.ones((3, 2)), None, Affine.identity(2),
        ...                                transpose=True)
        >>> w.shape, b.tolist()
        ((3, 2), [0.0, 0.0])
    """
    wa = _float_weight(w, "inner product weight", 2)
    m = _matrix(wa, "inner product weight")
    n = m.shape[1] if transpose else m.shape[0]
    if affine.channels != n:
        layout = "(K, N)" if transpose else "(N, K)"
        raise ModelMismatchError(
            f"inner product weight {wa.shape} read as {layout} has {n} outputs "
            f"but the folded map has {affine.channels}"
        )
    b64, bshape, bdtype = _bias(b, n, wa.dtype, "inner product bias")
    s, t = affine.scale, affine.shift
    finite = _finite_inputs(wa, b64, s, t)
    w2 = _multiply_once(m, s[np.newaxis, :] if transpose else s[:, np.newaxis],
                        "inner product weights", finite)
    with np.errstate(over="ignore", invalid="ignore"):
        b2 = b64 * s + t
    return (
        w2.reshape(wa.shape),
        _cast(b2, bdtype, "inner product bias", finite).reshape(bshape),
    )


# --------------------------------------------------------------------------- fold forward


def fold_forward_into_convolution(
    w: npt.ArrayLike, b: npt.ArrayLike | None, affine: Affine, group: int = 1
) -> tuple[FloatArray, FloatArray]:
    """Fold ``affine`` applied to a convolution's INPUT into the convolution.

    For output ``o`` in group ``g`` and local input channel ``i`` (global
    channel ``c = g*Cin/group + i``): ``W'[o, i, ...] = W[o, i, ...] * s[c]`` and
    ``b'[o] = b[o] + sum_{i, k} W[o, i, k] * t[c]``.

    Exact only when the convolution has zero padding: padding inserts zeros
    *after* the affine map in the original net, but the folded net would pad
    before it. The caller (the planner) checks padding; stride and dilation do
    not matter because every kernel tap then reads a real input value.

    Example:
        >>> import numpy as np
        >>> w, b = fold_forward_into_convolution(np.ones((1, 2, 1, 1)), [0.0],
        ...                                      Affine([2.0, 3.0], [1.0, 1.0]))
        >>> w.ravel().tolist(), b.tolist()
        ([2.0, 3.0], [2.0])
    """
    wa = _float_weight(w, "convolution weight", 2)
    if group < 1:
        raise ModelMismatchError(f"convolution group must be >= 1, got {group}")
    cout, cin_g = wa.shape[0], wa.shape[1]
    if cout % group:
        raise ModelMismatchError(
            f"convolution has {cout} output channels, not divisible by group {group}"
        )
    cin = cin_g * group
    if affine.channels != cin:
        raise ModelMismatchError(
            f"convolution reads {cin} input channels (weight {wa.shape}, group {group}) "
            f"but the folded map has {affine.channels}"
        )
    b64, bshape, bdtype = _bias(b, cout, wa.dtype, "convolution bias")
    s, t = affine.scale, affine.shift
    finite = _finite_inputs(wa, b64, s, t)
    taps = int(np.prod(wa.shape[2:], dtype=np.int64))
    grouped = wa.reshape(group, cout // group, cin_g, taps)
    w2 = _multiply_once(grouped, s.reshape(group, 1, cin_g, 1), "convolution weights",
                        finite).reshape(wa.shape)
    with np.errstate(over="ignore", invalid="ignore"):
        # The shift reaches every tap of every input channel of the group once. The sum
        # runs over a float64 copy as it always has: its order fixes the bias's bits.
        shift_through = np.einsum("gojk,gj->go", grouped.astype(np.float64),
                                  t.reshape(group, cin_g))
        b2 = b64 + shift_through.reshape(cout)
    return (
        w2,
        _cast(b2, bdtype, "convolution bias", finite).reshape(bshape),
    )


def fold_forward_into_inner_product(
    w: npt.ArrayLike,
    b: npt.ArrayLike | None,
    affine: Affine,
    spatial: int = 1,
    transpose: bool = False,
) -> tuple[FloatArray, FloatArray]:
    """Fold ``affine`` applied to an inner product's INPUT into the inner product.

    The inner product reads a ``C x spatial`` input flattened channel-major (as
    Caffe flattens ``(N, C, H, W)`` from axis 1), so input ``k = c*spatial + p``
    is scaled by ``s[c]`` and shifted by ``t[c]``: ``W'[n, k] = W[n, k] * s[c]``
    and ``b'[n] = b[n] + sum_k W[n, k] * t[c]``. With ``transpose: true`` the
    weight is ``(K, N)``.

    Example:
        >>> import numpy as np
        >>> w, b = fold_forward_into_inner_product(np.ones((1, 4)), None,
        ...                                        Affine([2.0, 3.0], [1.0, 0.0]), spatial=2)
        >>> w.tolist(), b.tolist()
        ([[2.0, 2.0, 3.0, 3.0]], [2.0])
    """
    wa = _float_weight(w, "inner product weight", 2)
    if spatial < 1:
        raise ModelMismatchError(f"inner product: spatial size must be >= 1, got {spatial}")
    m = _matrix(wa, "inner product weight")
    k_in, n = (m.shape[0], m.shape[1]) if transpose else (m.shape[1], m.shape[0])
    if k_in != affine.channels * spatial:
        raise ModelMismatchError(
            f"inner product reads {k_in} inputs but the folded map covers "
            f"{affine.channels} channels x {spatial} positions = {affine.channels * spatial}"
        )
    b64, bshape, bdtype = _bias(b, n, wa.dtype, "inner product bias")
    s_in = np.repeat(affine.scale, spatial)
    t_in = np.repeat(affine.shift, spatial)
    finite = _finite_inputs(wa, b64, s_in, t_in)
    w2 = _multiply_once(m, s_in[:, np.newaxis] if transpose else s_in[np.newaxis, :],
                        "inner product weights", finite)
    with np.errstate(over="ignore", invalid="ignore"):
        # A float64 copy for the product with the shift, as always: its summation
        # order (BLAS) fixes the bias's bits.
        m64 = m.astype(np.float64)
        b2 = b64 + (t_in @ m64 if transpose else m64 @ t_in)
    return (
        w2.reshape(wa.shape),
        _cast(b2, bdtype, "inner product bias", finite).reshape(bshape),
    )
