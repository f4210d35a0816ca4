"""DetectionOutput results compared as sets of detections, on hand-written arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bnfuse
from bnfuse.verification.compare import compare_detection_blob, compare_runs, default_tolerances
from bnfuse.verification.detections import (
    DetectionRules,
    compare_detections,
    detection_rows,
    detection_rules,
    iou,
)

# Three detections of image 0 and one of image 1: [image, label, score, x0, y0, x1, y1].
ROWS = np.array([
    [0, 1, 0.95, 0.10, 0.10, 0.40, 0.50],
    [0, 1, 0.60, 0.55, 0.20, 0.90, 0.70],
    [0, 7, 0.30, 0.20, 0.20, 0.30, 0.30],
    [1, 1, 0.80, 0.00, 0.00, 1.00, 1.00],
])
RULES = DetectionRules(confidence_threshold=0.05, keep_top_k=3, nms_threshold=0.45)


def as_top(rows: np.ndarray) -> np.ndarray:
    """Rows shaped as Caffe's DetectionOutput top, (1, 1, N, 7)."""
    return rows.reshape(1, 1, -1, 7)


def test_reordered_rows_with_rounding_match() -> None:
    b = ROWS[[3, 2, 0, 1]].copy()
    b[:, 2] += 2e-6  # scores moved by rounding
    b[:, 3:] += 1e-5  # boxes too
    result = compare_detections(as_top(ROWS), as_top(b), score_tol=1e-5, rules=RULES)
    assert result.passed
    assert (result.matched, result.unmatched, result.excused, result.score_failures) == (4, 0, 0, 0)
    assert result.max_score_diff == pytest.approx(2e-6, abs=1e-12)
    assert 0.999 < result.min_iou < 1.0


def test_element_comparison_would_fail_but_sets_pass() -> None:
    a, b = as_top(ROWS), as_top(ROWS[[1, 0, 2, 3]])
    assert float(np.abs(a - b).max()) == pytest.approx(0.5)  # rows swapped by NMS order
    blob = compare_detection_blob("detection_out", a, b, rtol=2e-4, atol=1e-7)
    assert blob.passed and blob.kind == "detections" and blob.differing == 0
    assert blob.to_dict()["max_abs"] is None  # never reported as a float difference
    assert blob.to_dict()["detections"]["matched"] == 4


def test_a_score_beyond_tolerance_fails() -> None:
    b = ROWS.copy()
    b[1, 2] = 0.58
    result = compare_detections(ROWS, b, score_tol=1e-3, rules=RULES)
    assert not result.passed
    assert (result.matched, result.score_failures) == (4, 1)
    assert result.max_score_diff == pytest.approx(0.02)


def test_a_moved_box_is_unmatched_and_fails() -> None:
    b = ROWS.copy()
    b[0, 3:] = [0.10, 0.10, 0.40, 0.42]  # height 0.40 -> 0.32: IoU 0.8 < 0.9
    assert iou(ROWS[0, 3:], b[:1, 3:])[0] == pytest.approx(0.8)
    result = compare_detections(ROWS, b, score_tol=1e-3, rules=RULES)
    assert not result.passed
    assert (result.matched, result.unmatched, result.excused) == (3, 2, 0)  # one in each net
    assert "2 unmatched" in result.describe()


def test_label_and_image_must_agree() -> None:
    b = ROWS.copy()
    b[3, 0] = 0  # same box and score, but given to image 0
    result = compare_detections(ROWS, b, score_tol=1e-3, rules=DetectionRules())
    assert (result.matched, result.unmatched) == (3, 2)


def test_detection_at_the_confidence_threshold_may_vanish() -> None:
    near = np.vstack([ROWS, [1, 3, 0.0502, 0.5, 0.5, 0.6, 0.6]])
    result = compare_detections(near, ROWS, score_tol=1e-3, rules=RULES)
    assert result.passed and (result.excused, result.unmatched) == (1, 0)
    far = np.vstack([ROWS, [1, 3, 0.0700, 0.5, 0.5, 0.6, 0.6]])
    result = compare_detections(far, ROWS, score_tol=1e-3, rules=RULES)
    assert not result.passed and (result.excused, result.unmatched) == (0, 1)


def test_detection_at_the_keep_top_k_cut_off_may_swap() -> None:
    # Image 0 keeps 3 (keep_top_k): a 0.3001 box replaces the 0.30 one in net b.
    b = ROWS.copy()
    b[2] = [0, 4, 0.3001, 0.70, 0.70, 0.80, 0.80]
    result = compare_detections(ROWS, b, score_tol=1e-3, rules=RULES)
    assert result.passed and (result.matched, result.excused, result.unmatched) == (3, 2, 0)
    strict = DetectionRules(confidence_threshold=0.05, keep_top_k=10, nms_threshold=0.45)
    assert not compare_detections(ROWS, b, score_tol=1e-3, rules=strict).passed


def test_detection_at_the_nms_threshold_may_vanish() -> None:
    box = [0.10, 0.30, 0.40, 0.70]  # overlaps the 0.95 box [0.1, 0.1, 0.4, 0.5] by 0.06/0.18
    assert iou(ROWS[0, 3:], np.array([box]))[0] == pytest.approx(1 / 3)
    a = np.vstack([ROWS, [0, 1, 0.50, *box]])
    near = DetectionRules(confidence_threshold=0.05, keep_top_k=10, nms_threshold=0.35)
    result = compare_detections(a, ROWS, score_tol=1e-3, rules=near)
    assert result.passed and (result.excused, result.unmatched) == (1, 0)  # |1/3 - 0.35| <= 0.05
    far = DetectionRules(confidence_threshold=0.05, keep_top_k=10, nms_threshold=0.45)
    result = compare_detections(a, ROWS, score_tol=1e-3, rules=far)
    assert not result.passed and (result.excused, result.unmatched) == (0, 1)


def test_nothing_detected_rows_are_dropped() -> None:
    empty = np.full((1, 1, 1, 7), -1.0)
    assert detection_rows(empty).shape == (0, 7)
    assert compare_detections(empty, empty, score_tol=0.0).passed
    result = compare_detections(empty, ROWS, score_tol=1e-3, rules=DetectionRules())
    assert (result.matched, result.unmatched) == (0, 4)


def test_not_rows_of_seven() -> None:
    result = compare_detections(np.zeros((2, 6)), np.zeros((2, 6)), score_tol=1.0)
    assert not result.passed and result.reason == "not detection rows of 7 values"


def test_rules_read_from_the_layer() -> None:
    net = bnfuse.load(b'''layer { name: "det" type: "DetectionOutput" bottom: "x" top: "out"
        detection_output_param { num_classes: 21 keep_top_k: -1 } }''')
    assert detection_rules(net.layer("det")) == DetectionRules(None, None, 0.3)


def test_compare_runs_reports_detections_apart() -> None:
    net = bnfuse.load(b'''
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 } } }
layer { name: "det" type: "DetectionOutput" bottom: "x" top: "detection_out"
        detection_output_param { num_classes: 8 keep_top_k: 3 confidence_threshold: 0.05
                                 nms_param { nms_threshold: 0.45 } } }''')
    a = {"x": np.zeros((1, 4)), "detection_out": as_top(ROWS)}
    swapped = {"x": np.zeros((1, 4)), "detection_out": as_top(ROWS[[1, 0, 3, 2]])}
    result = compare_runs(net.layers, net.layers, a, swapped, tolerances=default_tolerances(),
                          backend="numpy", skip=["x"])
    assert result.passed and [b.kind for b in result.blobs] == ["detections"]
    summary = result.summary()
    assert summary.splitlines()[0] == "PASSED (numpy, float32): 0 blobs compared"
    assert "detections 'detection_out': 4 of 4/4 detections matched" in summary
    moved = ROWS.copy()
    moved[0, 2] = 0.9
    result = compare_runs(net.layers, net.layers, a, {"detection_out": as_top(moved)},
                          tolerances=default_tolerances(), backend="numpy", skip=["x"])
    assert not result.passed and result.first_divergence == "detection_out"
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["blobs"][0]["detections"]["score_failures"] == 1


def test_a_mask_index_that_flips_between_tied_values_is_not_a_difference() -> None:
    # SegNet's pool masks: two inputs equal within rounding may win either way in the
    # folded net (found on SegNet-Tutorial's segnet_sun_low_resolution by the corpus run).
    from bnfuse.verification.metrics import compare_indices

    pooled = np.array([[[[1.0, 3.0], [3.0 + 1e-7, 0.5]]]])  # one 2x2 plane
    a, b = np.array([[[[1.0]]]]), np.array([[[[2.0]]]])   # flat indices 1 and 2
    assert compare_indices("mask", a, b).differing == 1
    tied = compare_indices("mask", a, b, pooled=pooled, rtol=1e-6, atol=0.0)
    assert tied.passed and tied.differing == 0
    # A real difference (3 against 0.5) still counts.
    far = compare_indices("mask", a, np.array([[[[3.0]]]]), pooled=pooled, rtol=1e-6)
    assert not far.passed and far.differing == 1
