"""How one blob's two values are compared, by what the blob holds.

:func:`compare_values` is the metric of float values (see :mod:`bnfuse.verification.compare`
for the tolerances), :func:`compare_indices` the exact comparison of index-valued tops,
:func:`compare_detection_blob` the set comparison of ``DetectionOutput`` rows
(:mod:`bnfuse.verification.detections`); :func:`blob_kind` says which applies
(:func:`bnfuse.layertypes.top_kind`) and :func:`blob_noise` measures, with the same
metric, how far a one-ulp change of the weights moved a blob. All of them are re-exported
by :mod:`bnfuse.verification.compare`.

Example:
    >>> c = compare_values("x", np.array([1.0, -2.0]), np.array([1.0, -2.002]), rtol=2e-3,
    ...                    atol=0.0)
    >>> c.passed, c.kind, round(c.max_rel, 6)
    (True, 'values', 0.001)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from bnfuse.layertypes import top_kind
from bnfuse.verification.detections import (
    DetectionComparison,
    DetectionRules,
    compare_detections,
    detection_rows,
)

if TYPE_CHECKING:
    from bnfuse.layertypes._base import LayerLike

Array = npt.NDArray[Any]

@dataclass(frozen=True)
class Noise:
    """What moving net ``a``'s weights by one ulp did to one blob (see :func:`verify`).

    ``rel`` is the relative difference (the metric of values; for detections, of the
    scores of matched detections); ``count`` the number of index elements that changed
    (index-valued tops).

    Example:
        >>> Noise(rel=3e-6).to_dict()
        {'rel': 3e-06, 'count': None}
    """

    rel: float | None = None
    count: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {"rel": None if self.rel is None else _json_float(self.rel), "count": self.count}


@dataclass
class BlobComparison:
    """One blob compared between the two nets.

    ``kind`` is what the blob holds (:data:`bnfuse.layertypes.TOP_KINDS`): ``"values"``
    are compared by ``max_abs``/``max_rel``; ``"indices"`` exactly, ``differing`` being
    the number of elements that differ, ``allowed`` how many may; ``"detections"`` as
    sets (``detections`` holds the details, ``differing`` the unmatched ones). ``rtol``
    is the tolerance applied, ``floor`` the depth-scaled default it cannot go below,
    ``noise`` what a one-ulp change of net ``a``'s weights did to the blob (None: not
    measured); ``reason`` says why it failed.

    Example:
        >>> c = BlobComparison("conv1", (1, 8, 4, 4), (1, 8, 4, 4), 1e-6, 2e-7, True, False)
        >>> c.passed, c.to_dict()["name"], c.kind
        (True, 'conv1', 'values')
    """

    name: str
    shape_a: tuple[int, ...] | None
    shape_b: tuple[int, ...] | None
    max_abs: float
    max_rel: float
    passed: bool
    is_output: bool
    rtol: float = 0.0
    depth: int = 0
    producer: str = ""
    reason: str = ""
    kind: str = "values"
    floor: float = 0.0
    noise: Noise | None = None
    differing: int = 0
    allowed: int = 0
    detections: DetectionComparison | None = None

    def describe(self) -> str:
        """One line: the difference found against what was allowed, and the noise."""
        if self.kind == "indices":
            size = math.prod(self.shape_a or ())
            text = f"{self.differing} of {size} indices differ (allowed {self.allowed})"
            if self.noise is not None and self.noise.count is not None:
                text += f", noise {self.noise.count}"
            return text
        if self.kind == "detections" and self.detections is not None:
            text = self.detections.describe() + f", score tolerance {self.rtol:.1e}"
        else:
            text = (f"max_abs {self.max_abs:.3e}, max_rel {self.max_rel:.3e}, "
                    f"tolerance {self.rtol:.1e}")
        if self.noise is not None and self.noise.rel is not None:
            text += f", noise {self.noise.rel:.1e}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (infinite differences become the string ``"inf"``; an index or
        detection blob has no ``max_abs``/``max_rel``: null)."""
        values = self.kind == "values"
        return {"name": self.name, "kind": self.kind, "shape_a": _list(self.shape_a),
                "shape_b": _list(self.shape_b),
                "max_abs": _json_float(self.max_abs) if values else None,
                "max_rel": _json_float(self.max_rel) if values else None,
                "differing": self.differing, "allowed": self.allowed,
                "passed": self.passed, "is_output": self.is_output, "rtol": self.rtol,
                "floor": self.floor,
                "noise": None if self.noise is None else self.noise.to_dict(),
                "detections": None if self.detections is None else self.detections.to_dict(),
                "depth": self.depth, "producer": self.producer, "reason": self.reason}



def _list(shape: tuple[int, ...] | None) -> list[int] | None:
    return None if shape is None else [int(d) for d in shape]


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else ("inf" if value > 0 else "nan")


def _sortable(value: float) -> float:
    return math.inf if math.isnan(value) else value



def compare_values(name: str, a: Array, b: Array, *, rtol: float, atol: float) -> BlobComparison:
    """Compare one blob's two float values: ``max_abs``, ``max_rel`` and the verdict.

    A blob passes when the shapes agree, the non-finite values agree, and
    ``max_abs <= atol + rtol * max|a|`` (see :mod:`bnfuse.verification.compare`).

    Example:
        >>> c = compare_values("x", np.array([1.0, 2.0]), np.array([1.0, 2.001]),
        ...                    rtol=1e-3, atol=0.0)
        >>> round(c.max_rel, 6), c.passed
        (0.0005, True)
    """
    shape_a, shape_b = tuple(int(d) for d in a.shape), tuple(int(d) for d in b.shape)
    if shape_a != shape_b:
        return BlobComparison(name, shape_a, shape_b, math.inf, math.inf, False, False,
                              rtol=rtol, reason=f"shape {shape_a} vs {shape_b}")
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    finite_x, finite_y = np.isfinite(x), np.isfinite(y)
    # Non-finite values must agree exactly (same inf, or NaN in both).
    same_special = (x == y) | (np.isnan(x) & np.isnan(y))
    bad_special = ~(finite_x & finite_y) & ~same_special
    both = finite_x & finite_y
    with np.errstate(over="ignore"):  # float64 extremes: an infinite difference, no warning
        diff = np.abs(x[both] - y[both])
    max_abs = float(diff.max()) if diff.size else 0.0
    reference = float(np.abs(x[finite_x]).max()) if finite_x.any() else 0.0
    reason = ""
    if bad_special.any():
        max_abs = math.inf
        reason = f"{int(bad_special.sum())} non-finite values differ"
    # Against an all-zero reference any difference at all is infinitely relative.
    max_rel = max_abs / reference if reference > 0 else (0.0 if max_abs == 0 else math.inf)
    passed = not reason and max_abs <= atol + rtol * reference
    if not passed and not reason:
        reason = "values differ beyond tolerance"
    return BlobComparison(name, shape_a, shape_b, max_abs, max_rel, passed, False,
                          rtol=rtol, reason=reason)


def compare_indices(name: str, a: Array, b: Array, *, allowed: int = 0,
                    pooled: Array | None = None, rtol: float = 0.0,
                    atol: float = 0.0) -> BlobComparison:
    """Compare an index-valued blob exactly: how many elements differ, at most ``allowed``.

    ``pooled``, for a MAX-pooling mask, is net ``b``'s input of that pooling (N, C, H,
    W), the values the indices point at: an element whose two indices point at values
    equal within ``rtol`` (of the plane's largest magnitude) and ``atol`` is a tie that
    rounding may break either way, and does not count as differing.

    Example:
        >>> c = compare_indices("mask", np.array([3.0, 7.0, 480.0]), np.array([3.0, 6.0, 480.0]))
        >>> c.passed, c.differing, c.kind, c.to_dict()["max_abs"]
        (False, 1, 'indices', None)
        >>> compare_indices("mask", np.array([3.0, 7.0]), np.array([3.0, 6.0]), allowed=1).passed
        True
    """
    shape_a, shape_b = tuple(int(d) for d in a.shape), tuple(int(d) for d in b.shape)
    if shape_a != shape_b:
        return BlobComparison(name, shape_a, shape_b, 0.0, 0.0, False, False, kind="indices",
                              differing=max(math.prod(shape_a), math.prod(shape_b)),
                              allowed=allowed, reason=f"shape {shape_a} vs {shape_b}")
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    differs = ~((x == y) | (np.isnan(x) & np.isnan(y)))
    if pooled is not None and differs.any():
        differs &= ~_ties(x, y, np.asarray(pooled, dtype=np.float64), rtol, atol)
    differing = int(np.count_nonzero(differs))
    passed = differing <= allowed
    return BlobComparison(name, shape_a, shape_b, 0.0, 0.0, passed, False, kind="indices",
                          differing=differing, allowed=allowed,
                          reason="" if passed else f"{differing} indices differ")


def _ties(mask_a: Array, mask_b: Array, pooled: Array, rtol: float, atol: float) -> Array:
    """Where two MAX-pooling masks point at values equal within the tolerance.

    A mask holds, per (item, channel), a flat index into that channel's H x W plane.
    """
    if (mask_a.ndim != 4 or pooled.ndim != 4 or mask_a.shape[:2] != pooled.shape[:2]
            or not (np.isfinite(mask_a).all() and np.isfinite(mask_b).all())):
        return np.zeros(mask_a.shape, dtype=bool)
    n, c = pooled.shape[:2]
    plane = pooled.reshape(n, c, -1)
    size = plane.shape[2]
    ia, ib = (m.astype(np.int64).reshape(n, c, -1) for m in (mask_a, mask_b))
    inside = (ia >= 0) & (ia < size) & (ib >= 0) & (ib < size)
    va = np.take_along_axis(plane, np.clip(ia, 0, size - 1), axis=2)
    vb = np.take_along_axis(plane, np.clip(ib, 0, size - 1), axis=2)
    scale = np.abs(plane).max(axis=2, keepdims=True) if size else np.zeros((n, c, 1))
    tied: Array = (inside & (np.abs(va - vb) <= rtol * scale + atol)).reshape(mask_a.shape)
    return tied


def compare_detection_blob(name: str, a: Array, b: Array, *, rtol: float, atol: float,
                           rules: DetectionRules | None = None) -> BlobComparison:
    """Compare a ``DetectionOutput`` blob as sets (:mod:`bnfuse.verification.detections`).

    Scores may differ by ``atol + rtol * max(score in a)``; ``max_abs`` is the largest
    score difference of a matched pair, ``differing`` the unmatched detections no cut-off
    excuses.

    Example:
        >>> a = np.array([[[[0, 1, 0.9, 0.1, 0.1, 0.5, 0.5], [0, 3, 0.7, 0.2, 0.2, 0.4, 0.4]]]])
        >>> c = compare_detection_blob("det", a, a[:, :, ::-1], rtol=1e-4, atol=0.0)
        >>> c.passed, c.kind, c.detections.matched
        (True, 'detections', 2)
    """
    shape_a, shape_b = tuple(int(d) for d in a.shape), tuple(int(d) for d in b.shape)
    rows = detection_rows(a)
    scores = np.abs(rows[:, 2]) if rows is not None and len(rows) else np.ones(1)
    scale = float(scores.max()) or 1.0
    result = compare_detections(a, b, score_tol=atol + rtol * scale, rules=rules)
    reason = result.reason or ("" if result.passed else "detections differ")
    return BlobComparison(name, shape_a, shape_b, result.max_score_diff,
                          result.max_score_diff / scale, result.passed, False, rtol=rtol,
                          kind="detections", differing=result.unmatched, detections=result,
                          reason=reason)


def blob_noise(kind: str, reference: Array, moved: Array,
               rules: DetectionRules | None = None) -> Noise:
    """The noise of one blob: what the one-ulp run of net ``a`` changed, per ``kind``.

    Example:
        >>> round(blob_noise("values", np.array([2.0, 4.0]), np.array([2.0, 4.001])).rel, 9)
        0.00025
        >>> blob_noise("indices", np.array([1.0, 2.0]), np.array([1.0, 3.0]))
        Noise(rel=None, count=1)
    """
    if kind == "indices":
        return Noise(count=compare_indices("", reference, moved).differing)
    if kind == "detections":
        return Noise(rel=compare_detection_blob("", reference, moved, rtol=0.0, atol=0.0,
                                                rules=rules).max_rel)
    return Noise(rel=compare_values("", reference, moved, rtol=0.0, atol=0.0).max_rel)


def blob_kind(layer: LayerLike, name: str) -> str:
    """What blob ``name``, a top of ``layer``, holds (:func:`bnfuse.layertypes.top_kind`)."""
    return top_kind(layer, list(layer.tops).index(name))


__all__ = [
    "BlobComparison",
    "Noise",
    "blob_kind",
    "blob_noise",
    "compare_detection_blob",
    "compare_indices",
    "compare_values",
]
