"""The SSD fork's layers (weiliu89/caffe, branch ``ssd``), TEST phase, on arrays.

Written from the fork's ``normalize_layer.cpp``, ``prior_box_layer.cpp``,
``detection_output_layer.cpp`` and ``util/bbox_util.cpp``. The fork does its box
arithmetic in C ``float`` whatever the blob type (``NormalizedBBox`` holds floats, the
scores are a ``vector<float>``), so the decoding and NMS here run in float32 too and only
the final rows take the working dtype.

Example:
    >>> from bnfuse.layertypes._forks import PriorBoxConfig
    >>> cfg = PriorBoxConfig((4.0,), (), (1.0,), False, (0.1,), 0, 0, 0.0, 0.0, 0.5)
    >>> prior_box_forward((1, 1, 1, 2), (1, 3, 8, 8), cfg, np.dtype("f4"))[0, 0]
    array([0.  , 0.25, 0.5 , 0.75, 0.5 , 0.25, 1.  , 0.75], dtype=float32)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from bnfuse.layertypes._forks import (
    CODE_CENTER_SIZE,
    CODE_CORNER,
    DetectionOutputConfig,
    NormalizeConfig,
    PriorBoxConfig,
)

Array = npt.NDArray[Any]
_F4 = np.float32


def _nchw(x: Array) -> Array:
    """View a 2- to 4-axis blob as (N, C, H*W), as Caffe's legacy accessors read it."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def normalize_forward(x: Array, scale: Array, config: NormalizeConfig) -> Array:
    """SSD's ``Normalize``: ``x / sqrt(sum(x^2) + eps) * scale``.

    The sum runs over the channels at each position (``across_spatial: false``) or over
    the whole image; ``scale`` is one value (``channel_shared``) or one per channel.

    Example:
        >>> from bnfuse.layertypes._forks import NormalizeConfig
        >>> x = np.array([[[[3.0]], [[4.0]]]], np.float32)
        >>> normalize_forward(x, np.float32(10), NormalizeConfig(False, True, 0.0)).ravel()
        array([6., 8.], dtype=float32)
    """
    t = x.dtype.type
    xr = _nchw(x)
    square = xr * xr
    eps = t(config.eps)
    if config.across_spatial:
        norm = np.sqrt(square.sum(axis=(1, 2), keepdims=True) + eps)
        # Caffe scales by 1.0 / norm, the reciprocal taken in double.
        y = xr * (1.0 / norm.astype(np.float64)).astype(x.dtype)
    else:
        y = xr / np.sqrt(square.sum(axis=1, keepdims=True) + eps)
    factor = scale.reshape(1, -1, 1) if scale.ndim else scale  # per channel, or shared
    out: Array = (y * factor).reshape(x.shape)
    return out


def prior_box_forward(feature: tuple[int, ...], image: tuple[int, ...], config: PriorBoxConfig,
                      dtype: np.dtype[Any]) -> Array:
    """SSD's ``PriorBox``: per feature-map position, ``num_priors`` boxes, then variances.

    Centers are ``(w + offset) * step`` in float32; each box edge is
    ``(center -/+ size / 2) / image size`` in double, as the fork writes it. The order
    per position is: for each ``min_size``, the square box, the ``sqrt(min * max)`` box,
    then one box per aspect ratio other than 1.

    Example: see the module docstring.
    """
    height = feature[2] if len(feature) > 2 else 1
    width = feature[3] if len(feature) > 3 else 1
    if config.img_h == 0 or config.img_w == 0:
        img_h = image[2] if len(image) > 2 else 1
        img_w = image[3] if len(image) > 3 else 1
    else:
        img_h, img_w = config.img_h, config.img_w
    if config.step_h == 0 or config.step_w == 0:
        step_w, step_h = _F4(_F4(img_w) / _F4(width)), _F4(_F4(img_h) / _F4(height))
    else:
        step_w, step_h = _F4(config.step_w), _F4(config.step_h)
    offset = _F4(config.offset)
    cx = (np.arange(width, dtype=_F4) + offset) * step_w
    cy = (np.arange(height, dtype=_F4) + offset) * step_h
    sizes: list[tuple[float, float]] = []
    for s, min_size in enumerate(config.min_sizes):
        side = int(min_size)  # the fork holds the size in an int
        sizes.append((float(_F4(side)), float(_F4(side))))
        if config.max_sizes:
            big = float(_F4(np.sqrt(float(side * int(config.max_sizes[s])))))
            sizes.append((big, big))
        for ratio in config.aspect_ratios:
            if abs(ratio - 1.0) < 1e-6:
                continue
            root = np.sqrt(_F4(ratio))
            sizes.append((float(_F4(side * root)), float(_F4(side / root))))
    box_w = np.array([w for w, _ in sizes], np.float64)
    box_h = np.array([h for _, h in sizes], np.float64)
    gx = cx.astype(np.float64)[None, :, None]
    gy = cy.astype(np.float64)[:, None, None]
    boxes = np.empty((height, width, len(sizes), 4), np.float64)
    boxes[..., 0] = (gx - box_w / 2.0) / img_w
    boxes[..., 1] = (gy - box_h / 2.0) / img_h
    boxes[..., 2] = (gx + box_w / 2.0) / img_w
    boxes[..., 3] = (gy + box_h / 2.0) / img_h
    # Caffe stores each edge into a Dtype blob, so float32 rounding happens there.
    coords = boxes.astype(dtype).ravel()
    if config.clip:
        coords = np.minimum(np.maximum(coords, dtype.type(0)), dtype.type(1))
    variances = np.array(config.variance, np.float32).astype(dtype)
    out = np.empty((1, 2, coords.size), dtype)
    out[0, 0] = coords
    out[0, 1] = np.resize(variances, coords.size)
    return out


def _box_size(b: Array) -> Array:
    """``BBoxSize``: width * height, 0 for an inverted box (float32)."""
    w = b[..., 2] - b[..., 0]
    h = b[..., 3] - b[..., 1]
    valid = (b[..., 2] >= b[..., 0]) & (b[..., 3] >= b[..., 1])
    size: Array = np.where(valid, w * h, _F4(0))
    return size


def decode_boxes(loc: Array, prior: Array, variance: Array, code_type: int,
                 variance_in_target: bool) -> Array:
    """``DecodeBBox`` for every prior: (P, 4) offsets -> (P, 4) corner boxes, in float32.

    Example:
        >>> prior = np.array([[0.25, 0.25, 0.75, 0.75]], np.float32)
        >>> variance = np.array([[0.1, 0.1, 0.2, 0.2]], np.float32)
        >>> decode_boxes(np.zeros((1, 4), np.float32), prior, variance, 2, False)
        array([[0.25, 0.25, 0.75, 0.75]], dtype=float32)
    """
    # Variances already in the target multiply by 1, which changes no float bit.
    v = np.ones_like(variance) if variance_in_target else variance
    if code_type == CODE_CORNER:
        decoded: Array = prior + v * loc
        return decoded
    pw = prior[:, 2] - prior[:, 0]
    ph = prior[:, 3] - prior[:, 1]
    if code_type == CODE_CENTER_SIZE:
        two = _F4(2)
        cx = v[:, 0] * loc[:, 0] * pw + (prior[:, 0] + prior[:, 2]) / two
        cy = v[:, 1] * loc[:, 1] * ph + (prior[:, 1] + prior[:, 3]) / two
        half_w = np.exp(v[:, 2] * loc[:, 2]) * pw / two
        half_h = np.exp(v[:, 3] * loc[:, 3]) * ph / two
        return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
    corner_size: Array = prior + v * loc * np.stack([pw, ph, pw, ph], axis=1)
    return corner_size


def _overlaps(box: Array, size: Array, kept: Array, kept_size: Array) -> Array:
    """``JaccardOverlap(box, kept[k])`` for every kept box (float32)."""
    apart = ((kept[:, 0] > box[2]) | (kept[:, 2] < box[0])
             | (kept[:, 1] > box[3]) | (kept[:, 3] < box[1]))
    iw = np.minimum(box[2], kept[:, 2]) - np.maximum(box[0], kept[:, 0])
    ih = np.minimum(box[3], kept[:, 3]) - np.maximum(box[1], kept[:, 1])
    touching = ~apart & (iw > 0) & (ih > 0)
    inter = iw * ih
    with np.errstate(all="ignore"):
        iou = inter / (size + kept_size - inter)
    result: Array = np.where(touching, iou, _F4(0))
    return result


def nms(boxes: Array, sizes: Array, scores: Array, config: DetectionOutputConfig) -> list[int]:
    """``ApplyNMSFast``: greedy NMS over the boxes scoring above the threshold.

    Candidates are sorted by score (stable, descending) and cut to ``top_k``; each is
    kept when its overlap with every kept box is at most the (adaptive) threshold.

    Example:
        >>> from bnfuse.layertypes._forks import DetectionOutputConfig
        >>> cfg = DetectionOutputConfig(2, True, 0, 2, False, -1, 0.1, 0.5, -1, 1.0)
        >>> boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 0.9], [2, 2, 3, 3]], np.float32)
        >>> nms(boxes, _box_size(boxes), np.array([0.9, 0.8, 0.05], np.float32), cfg)
        [0]
    """
    candidates = np.flatnonzero(scores > _F4(config.confidence_threshold))
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    if -1 < config.top_k < order.size:
        order = order[: config.top_k]
    threshold = _F4(config.nms_threshold)
    kept: list[int] = []
    for idx in order.tolist():
        keep = True
        if kept:
            chosen = np.array(kept)
            overlap = _overlaps(boxes[idx], sizes[idx], boxes[chosen], sizes[chosen])
            keep = bool(np.all(overlap <= threshold))
        if keep:
            kept.append(idx)
            if config.eta < 1 and threshold > 0.5:
                threshold = _F4(threshold * _F4(config.eta))
    return kept


def detection_output_forward(loc: Array, conf: Array, prior: Array,
                             config: DetectionOutputConfig, dtype: np.dtype[Any]) -> Array:
    """SSD's ``DetectionOutput``: decode, per-class NMS, keep_top_k; ``(1, 1, rows, 7)``.

    Rows are ``[image, label, score, xmin, ymin, xmax, ymax]``, image by image, labels
    ascending, and within a label in NMS order (score descending). When no box is kept
    the result has one row per image: its index, then six ``-1``. The CPU code refuses a
    shared-location net with ``background_label_id: -1`` (it never decodes the shared
    boxes); the fork's GPU code runs it, and so does this one.

    Example:
        >>> from bnfuse.layertypes._forks import DetectionOutputConfig
        >>> cfg = DetectionOutputConfig(2, True, 0, 2, False, -1, 0.5, 0.45, -1, 1.0)
        >>> prior = np.array([[[0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 0.75, 0.75]]], np.float32)
        >>> prior = np.concatenate([prior.reshape(1, 1, 8), np.full((1, 1, 8), 0.1)], axis=1)
        >>> conf = np.array([[0.25, 0.75, 0.875, 0.125]], np.float32)  # (prior, class)
        >>> detection_output_forward(np.zeros((1, 8)), conf, prior, cfg, np.dtype("f4"))[0, 0]
        array([[0.  , 1.  , 0.75, 0.25, 0.25, 0.5 , 0.5 ]], dtype=float32)
    """
    num = loc.shape[0]
    priors = prior.shape[2] // 4 if prior.ndim > 2 else 0
    prior_flat = prior.astype(_F4).reshape(-1)
    prior_boxes = prior_flat[: priors * 4].reshape(priors, 4)
    variances = prior_flat[priors * 4 : priors * 8].reshape(priors, 4)
    loc_classes = config.num_loc_classes
    locs = loc.astype(_F4).reshape(num, priors, loc_classes, 4)
    scores_all = conf.astype(_F4).reshape(num, priors, config.num_classes)
    rows: list[list[float]] = []
    for i in range(num):
        decoded: dict[int, tuple[Array, Array]] = {}
        for c in range(loc_classes):
            label = -1 if config.share_location else c
            if label == config.background_label_id and not config.share_location:
                continue
            boxes = decode_boxes(locs[i, :, c], prior_boxes, variances, config.code_type,
                                 config.variance_encoded_in_target)
            decoded[label] = (boxes, _box_size(boxes))
        kept: dict[int, list[int]] = {}
        for c in range(config.num_classes):
            if c == config.background_label_id:
                continue
            boxes, sizes = decoded[-1 if config.share_location else c]
            kept[c] = nms(boxes, sizes, scores_all[i, :, c], config)
        total = sum(len(v) for v in kept.values())
        if -1 < config.keep_top_k < total:
            pairs = [(float(scores_all[i, idx, c]), c, idx) for c, v in kept.items() for idx in v]
            # Caffe's std::sort is not stable; equal scores are kept in label order here.
            pairs.sort(key=lambda p: -p[0])
            kept = {}
            for _, c, idx in pairs[: config.keep_top_k]:
                kept.setdefault(c, []).append(idx)
        for c in sorted(kept):
            boxes = decoded[-1 if config.share_location else c][0]
            for idx in kept[c]:
                rows.append([float(i), float(c), float(scores_all[i, idx, c]),
                             *(float(v) for v in boxes[idx])])
    if not rows:
        empty = np.full((1, 1, num, 7), -1, dtype)
        empty[0, 0, :, 0] = np.arange(num)
        return empty
    return np.array(rows, np.float64).astype(dtype).reshape(1, 1, len(rows), 7)


__all__ = [
    "decode_boxes",
    "detection_output_forward",
    "nms",
    "normalize_forward",
    "prior_box_forward",
]
