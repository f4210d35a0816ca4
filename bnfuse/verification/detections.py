"""SSD ``DetectionOutput`` results compared as sets of detections, not element by element.

A ``DetectionOutput`` top holds one row per detection, ``[image, label, score, xmin, ymin,
xmax, ymax]`` (shape ``(1, 1, N, 7)``; a net that detects nothing writes one row of
``-1``). Non-maximum suppression emits the rows in score order, so two nearly equal
scores swap rows, and a detection near a cut-off appears in one net and not in the other:
comparing the arrays element by element would call a correct fold wrong. The rule here:

1. Rows with a negative image index (the "nothing detected" row) are dropped.
2. Per ``(image, label)``, the detections of the two nets are matched greedily by
   intersection over union (IoU): the pair with the highest IoU first, each detection at
   most once, and only pairs with ``IoU >= min_iou`` (:data:`MIN_IOU`, 0.9: a correct fold
   moves a box by rounding, far less than 10% of its area).
3. A matched pair passes when its scores differ by at most ``score_tol`` (the caller's
   tolerance for the blob, see :func:`bnfuse.verification.compare.verify`).
4. A detection left unmatched is *excused* when rounding can explain why it is there in
   one net only: its score is within ``score_tol`` of ``confidence_threshold``; or the
   other net kept ``keep_top_k`` detections of its image and its score is within
   ``score_tol`` of the lowest one kept; or it overlaps a higher-scored detection of its
   own ``(image, label)`` (in either net) with an IoU within :data:`NMS_MARGIN` of
   ``nms_threshold``, so a tiny move of either box flips the suppression. Any other
   unmatched detection fails the comparison.

Example:
    >>> a = np.array([[0, 1, 0.9, 0.1, 0.1, 0.5, 0.5], [0, 1, 0.8, 0.6, 0.6, 0.9, 0.9]])
    >>> b = a[::-1].copy()  # the same detections in the other order
    >>> b[0, 2] += 1e-6
    >>> result = compare_detections(a, b, score_tol=1e-4)
    >>> result.passed, result.matched, result.unmatched, round(result.max_score_diff, 6)
    (True, 2, 0, 1e-06)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]

#: Smallest IoU at which two detections of the same image and label are the same one.
MIN_IOU = 0.9
#: How close to ``nms_threshold`` an overlap must be for NMS to decide either way.
NMS_MARGIN = 0.05
#: Columns of a detection row.
ROW = ("image", "label", "score", "xmin", "ymin", "xmax", "ymax")


@dataclass(frozen=True)
class DetectionRules:
    """The cut-offs of the ``DetectionOutput`` layer (None: not known, no excuse from it).

    Example:
        >>> DetectionRules(confidence_threshold=0.01, keep_top_k=200).nms_threshold is None
        True
    """

    confidence_threshold: float | None = None
    keep_top_k: int | None = None
    nms_threshold: float | None = None


@dataclass(frozen=True)
class DetectionComparison:
    """Two sets of detections compared (see the module docstring for the rule).

    ``unmatched`` counts the detections of either net without a match that no cut-off
    excuses; ``excused`` those a cut-off explains; ``score_failures`` the matched pairs
    whose scores differ beyond the tolerance. ``min_iou`` is the smallest IoU of a
    matched pair (1.0 when nothing matched).

    Example:
        >>> c = DetectionComparison(3, 3, 3, 0, 0, 0, 1e-6, 0.99, "")
        >>> c.passed, c.describe()
        (True, '3 of 3/3 detections matched (min IoU 0.990, score diff 1.0e-06)')
    """

    count_a: int
    count_b: int
    matched: int
    unmatched: int
    excused: int
    score_failures: int
    max_score_diff: float
    min_iou: float
    reason: str

    @property
    def passed(self) -> bool:
        """True when every detection matched or is excused and every score agrees."""
        return not self.reason and not self.unmatched and not self.score_failures

    def describe(self) -> str:
        """One line: how many matched, how closely, and what is left over."""
        text = (f"{self.matched} of {self.count_a}/{self.count_b} detections matched "
                f"(min IoU {self.min_iou:.3f}, score diff {self.max_score_diff:.1e})")
        if self.excused:
            text += f", {self.excused} unmatched at a cut-off"
        if self.unmatched:
            text += f", {self.unmatched} unmatched"
        if self.score_failures:
            text += f", {self.score_failures} scores beyond tolerance"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {"count_a": self.count_a, "count_b": self.count_b, "matched": self.matched,
                "unmatched": self.unmatched, "excused": self.excused,
                "score_failures": self.score_failures,
                "max_score_diff": self.max_score_diff, "min_iou": self.min_iou}


def detection_rows(value: npt.ArrayLike) -> Array | None:
    """The detection rows of a ``DetectionOutput`` value as ``(n, 7)`` float64, or None
    when it does not hold rows of 7; the "nothing detected" rows are dropped.

    Example:
        >>> detection_rows(np.full((1, 1, 1, 7), -1.0)).shape
        (0, 7)
    """
    array = np.asarray(value, dtype=np.float64)
    if array.size % len(ROW) or (array.ndim and array.shape[-1] != len(ROW)):
        return None
    rows = array.reshape(-1, len(ROW))
    return rows[rows[:, 0] >= 0]


def iou(box: Array, boxes: Array) -> Array:
    """IoU of one ``[xmin, ymin, xmax, ymax]`` box with each row of ``boxes``.

    Empty boxes (zero area) overlap nothing unless both are the same point set.

    Example:
        >>> iou(np.array([0.0, 0.0, 2.0, 2.0]), np.array([[1.0, 0.0, 3.0, 2.0]])).round(4)
        array([0.3333])
    """
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = width * height
    area = max(0.0, float(box[2] - box[0])) * max(0.0, float(box[3] - box[1]))
    areas = (np.clip(boxes[:, 2] - boxes[:, 0], 0, None)
             * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))
    union = area + areas - inter
    same = np.all(boxes == box, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        result: Array = np.where(union > 0, inter / np.where(union > 0, union, 1.0),
                                 same.astype(np.float64))
    return result


def _match(rows_a: Array, rows_b: Array, min_iou: float) -> list[tuple[int, int, float]]:
    """Greedy IoU matching of two detection sets of one (image, label): (i, j, IoU)."""
    if not len(rows_a) or not len(rows_b):
        return []
    overlaps = np.stack([iou(row[3:], rows_b[:, 3:]) for row in rows_a])
    pairs = [(float(overlaps[i, j]), i, j) for i, j in zip(*np.nonzero(overlaps >= min_iou),
                                                           strict=True)]
    # Highest IoU first; ties by position, so the result does not depend on the sort.
    pairs.sort(key=lambda item: (-item[0], item[1], item[2]))
    used_a: set[int] = set()
    used_b: set[int] = set()
    matches: list[tuple[int, int, float]] = []
    for overlap, i, j in pairs:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            matches.append((int(i), int(j), overlap))
    return matches


def _excused(row: Array, own: Array, other: Array, other_image: Array, *,
             rules: DetectionRules, score_tol: float) -> bool:
    """Whether rounding can explain that ``row`` is in one net only (rule 4)."""
    score = float(row[2])
    if (rules.confidence_threshold is not None
            and abs(score - rules.confidence_threshold) <= score_tol):
        return True
    if (rules.keep_top_k is not None and rules.keep_top_k > 0
            and len(other_image) >= rules.keep_top_k
            and score <= float(other_image[:, 2].min()) + score_tol):
        return True
    if rules.nms_threshold is not None:
        rivals = np.concatenate([own, other])
        rivals = rivals[rivals[:, 2] >= score - score_tol]
        rivals = rivals[~np.all(rivals == row, axis=1)]
        if len(rivals):
            near = np.abs(iou(row[3:], rivals[:, 3:]) - rules.nms_threshold) <= NMS_MARGIN
            if near.any():
                return True
    return False


def compare_detections(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    *,
    score_tol: float,
    rules: DetectionRules | None = None,
    min_iou: float = MIN_IOU,
) -> DetectionComparison:
    """Compare two ``DetectionOutput`` values as sets (the rule of the module docstring).

    Example:
        A detection near the confidence threshold may vanish; one far above it may not:

        >>> a = np.array([[0, 2, 0.9, 0.1, 0.1, 0.5, 0.5], [0, 2, 0.0101, 0.6, 0.6, 0.9, 0.9]])
        >>> rules = DetectionRules(confidence_threshold=0.01)
        >>> c = compare_detections(a, a[:1], score_tol=1e-3, rules=rules)
        >>> c.passed, c.excused, c.unmatched
        (True, 1, 0)
        >>> c = compare_detections(a[:1], a[1:], score_tol=1e-3, rules=rules)
        >>> c.passed, c.unmatched, c.excused
        (False, 1, 1)
        >>> c.describe()  # doctest: +ELLIPSIS
        '0 of 1/1 detections matched (...), 1 unmatched at a cut-off, 1 unmatched'
    """
    resolved = rules or DetectionRules()
    rows_a, rows_b = detection_rows(a), detection_rows(b)
    if rows_a is None or rows_b is None:
        return DetectionComparison(0, 0, 0, 0, 0, 0, math.inf, 0.0,
                                   "not detection rows of 7 values")
    matched = unmatched = excused = score_failures = 0
    max_diff, min_overlap = 0.0, 1.0
    keys = {(float(r[0]), float(r[1])) for r in rows_a} | {(float(r[0]), float(r[1]))
                                                            for r in rows_b}
    for image, label in sorted(keys):
        sel_a = rows_a[(rows_a[:, 0] == image) & (rows_a[:, 1] == label)]
        sel_b = rows_b[(rows_b[:, 0] == image) & (rows_b[:, 1] == label)]
        pairs = _match(sel_a, sel_b, min_iou)
        for i, j, overlap in pairs:
            diff = abs(float(sel_a[i, 2]) - float(sel_b[j, 2]))
            max_diff, min_overlap = max(max_diff, diff), min(min_overlap, overlap)
            score_failures += diff > score_tol
        matched += len(pairs)
        images: Mapping[int, Array] = {0: rows_a[rows_a[:, 0] == image],
                                       1: rows_b[rows_b[:, 0] == image]}
        for side, (own, other) in enumerate(((sel_a, sel_b), (sel_b, sel_a))):
            used = {pair[side] for pair in pairs}
            for index in range(len(own)):
                if index in used:
                    continue
                if _excused(own[index], own, other, images[1 - side], rules=resolved,
                            score_tol=score_tol):
                    excused += 1
                else:
                    unmatched += 1
    return DetectionComparison(len(rows_a), len(rows_b), matched, unmatched, excused,
                               score_failures, max_diff, min_overlap, "")


def detection_rules(layer: Any) -> DetectionRules:
    """The cut-offs a ``DetectionOutput`` layer states in ``detection_output_param``.

    Read from the layer's text (SSD's fields are a fork's), so it works whether or not
    the schema knows them; a field not written keeps SSD's default (confidence threshold
    unset, keep_top_k -1 = all, nms_threshold 0.3).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b\'\'\'layer { name: "det" type: "DetectionOutput" bottom: "x"
        ...   top: "out" detection_output_param { num_classes: 21 keep_top_k: 200
        ...   confidence_threshold: 0.01 nms_param { nms_threshold: 0.45 } } }\'\'\')
        >>> detection_rules(net.layer("det"))
        DetectionRules(confidence_threshold=0.01, keep_top_k=200, nms_threshold=0.45)
    """
    text_field = getattr(layer, "text_field", None)

    def number(*path: str) -> float | None:
        if not callable(text_field):
            return None
        text = text_field("detection_output_param", *path)
        try:
            return None if text is None else float(text)
        except ValueError:
            return None

    keep = number("keep_top_k")
    nms = number("nms_param", "nms_threshold")
    return DetectionRules(
        confidence_threshold=number("confidence_threshold"),
        keep_top_k=None if keep is None or not math.isfinite(keep) or keep < 0 else int(keep),
        nms_threshold=0.3 if nms is None else nms,
    )


__all__ = [
    "MIN_IOU",
    "NMS_MARGIN",
    "ROW",
    "DetectionComparison",
    "DetectionRules",
    "compare_detections",
    "detection_rows",
    "detection_rules",
    "iou",
]
