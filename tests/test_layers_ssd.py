"""SSD's layers (weiliu89/caffe, branch ssd): Normalize, Permute, PriorBox, DetectionOutput.

Each forward is checked against a reference written here as plain Python loops over
scalars (the fork's own loop structure, re-written; not the vectorised code under test),
and the whole net against ``../shared/golden_forks/ssd_tiny``, made and run by the SSD
fork's own Caffe (skipped when ``../shared`` is absent).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from conftest import shared_path

import bnfuse
from bnfuse.errors import UnsupportedLayerError
from bnfuse.layertypes import SPECS, weight_layout
from bnfuse.layertypes.shapes import infer_shapes
from bnfuse.verification.executor import forward

Array = npt.NDArray[Any]
F4 = np.float32
RNG = np.random.default_rng(7)


def net_of(text: str, blobs: dict[str, list[Array]] | None = None) -> bnfuse.Net:
    net = bnfuse.load(text.encode())
    for name, arrays in (blobs or {}).items():
        net.set_blobs(net.layer(name), arrays)
    return net


# --------------------------------------------------------------------------- Normalize


def ref_normalize(x: Array, scale: Array, across: bool, shared: bool, eps: float) -> Array:
    n, c, h, w = x.shape
    y = np.zeros((n, c, h, w), np.float64)
    xd = x.astype(np.float64)
    for i in range(n):
        total = sum(xd[i, k, a, b] ** 2 for k in range(c) for a in range(h) for b in range(w))
        for a in range(h):
            for b in range(w):
                norm = math.sqrt(total + eps) if across else \
                    math.sqrt(sum(xd[i, k, a, b] ** 2 for k in range(c)) + eps)
                for k in range(c):
                    factor = float(scale.reshape(-1)[0 if shared else k])
                    y[i, k, a, b] = xd[i, k, a, b] / norm * factor
    return y


@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("shared", [True, False])
def test_normalize_matches_loops(across: bool, shared: bool) -> None:
    x = RNG.standard_normal((2, 3, 4, 5)).astype(F4)
    scale = np.array(2.5, F4) if shared else np.array([20.0, 1.0, -3.0], F4)
    text = f"""layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{
      dim: 2 dim: 3 dim: 4 dim: 5 }} }} }}
    layer {{ name: "n" type: "Normalize" bottom: "x" top: "y" norm_param {{
      across_spatial: {str(across).lower()} channel_shared: {str(shared).lower()} eps: 0.001
      scale_filler {{ type: "constant" value: 20 }} }} }}"""
    net = net_of(text, {"n": [scale]})
    y = forward(net, {"x": x})["y"]
    # float32 sums of 3 (or 60) squares: a few ulp from the float64 loops.
    np.testing.assert_allclose(y, ref_normalize(x, scale, across, shared, float(F4(1e-3))),
                               rtol=2e-6, atol=1e-6)
    assert [str(b) for b in weight_layout(net.layer("n"), [(2, 3, 4, 5)])] == \
        (["scale ()"] if shared else ["scale (3,)"])


def test_normalize_defaults_are_the_forks() -> None:
    """across_spatial and channel_shared default to true, eps to 1e-10."""
    net = net_of('layer { name: "n" type: "Normalize" bottom: "x" top: "y" }',
                 {"n": [np.array(1.0, F4)]})
    x = np.array([[[[3.0]], [[4.0]]], [[[0.0]], [[0.0]]]], F4)
    y = forward(net, {"x": x})["y"]
    np.testing.assert_allclose(y.ravel(), [0.6, 0.8, 0.0, 0.0], rtol=1e-6)


# --------------------------------------------------------------------------- Permute


def test_permute_matches_index_loops() -> None:
    x = RNG.standard_normal((2, 3, 4, 5)).astype(F4)
    net = net_of("""layer { name: "p" type: "Permute" bottom: "x" top: "y"
      permute_param { order: 0 order: 2 order: 3 order: 1 } }""")
    y = forward(net, {"x": x})["y"]
    assert y.shape == (2, 4, 5, 3)
    for i in range(2):
        for a in range(4):
            for b in range(5):
                for c in range(3):
                    assert y[i, a, b, c] == x[i, c, a, b]


@pytest.mark.parametrize(("orders", "shape", "message"), [
    ("order: 1", (2, 3, 4), None),  # unnamed axes follow in their order: (1, 0, 2)
    ("order: 4", (2, 3, 4, 5), "order 4 is not an axis of a 4-D bottom"),
    ("order: 0 order: 0", (2, 3), "order 0 is given twice"),
    ("order: -1", (2, 3), "outside its uint32 range"),
    ("axes: 1", (2, 3), "fork field permute_param.axes is not one"),
])
def test_permute_shape_rule(orders: str, shape: tuple[int, ...], message: str | None) -> None:
    net = net_of(f"""layer {{ name: "p" type: "Permute" bottom: "x" top: "y"
      permute_param {{ {orders} }} }}""")
    if message is None:
        assert infer_shapes(net, {"x": shape})["y"] == (3, 2, 4)
        return
    with pytest.raises(UnsupportedLayerError, match=message):
        infer_shapes(net, {"x": shape})


# --------------------------------------------------------------------------- PriorBox


def ref_prior_box(fh: int, fw: int, ih: int, iw: int, mins: list[float], maxs: list[float],
                  ratios: list[float], flip: bool, clip: bool, variance: list[float],
                  step: float | None, offset: float) -> Array:
    """The fork's loops, with its int min_size and its float32 centers."""
    all_ratios = [1.0]
    for r in ratios:
        if all(abs(r - known) >= 1e-6 for known in all_ratios):
            all_ratios.append(r)
            if flip:
                all_ratios.append(float(F4(1.0 / r)))
    step_w = F4(step) if step else F4(F4(iw) / F4(fw))
    step_h = F4(step) if step else F4(F4(ih) / F4(fh))
    coords: list[float] = []
    for h in range(fh):
        for w in range(fw):
            cx = float(F4(F4(w + F4(offset)) * step_w))
            cy = float(F4(F4(h + F4(offset)) * step_h))
            for s, m in enumerate(mins):
                side = int(m)
                boxes = [(float(side), float(side))]
                if maxs:
                    big = float(F4(math.sqrt(side * int(maxs[s]))))
                    boxes.append((big, big))
                for r in all_ratios:
                    if abs(r - 1.0) < 1e-6:
                        continue
                    root = F4(np.sqrt(F4(r)))
                    boxes.append((float(F4(side * root)), float(F4(side / root))))
                for bw, bh in boxes:
                    coords += [(cx - bw / 2.0) / iw, (cy - bh / 2.0) / ih,
                               (cx + bw / 2.0) / iw, (cy + bh / 2.0) / ih]
    values = [float(F4(v)) for v in coords]
    if clip:
        values = [min(max(v, 0.0), 1.0) for v in values]
    var = [float(F4(v)) for v in variance] or [float(F4(0.1))]
    variances = [var[k % len(var)] for k in range(len(values))]
    return np.array([[values, variances]], F4)


@pytest.mark.parametrize(("params", "feature", "image", "args"), [
    ("min_size: 12 max_size: 24 aspect_ratio: 2 variance: 0.1 variance: 0.1 variance: 0.2 "
     "variance: 0.2 step: 4 offset: 0.5", (3, 4), (16, 16),
     ([12.0], [24.0], [2.0], True, False, [0.1, 0.1, 0.2, 0.2], 4.0, 0.5)),
    ("min_size: 28.7 aspect_ratio: 2 aspect_ratio: 3 aspect_ratio: 2.0000001 flip: false "
     "clip: true", (2, 3), (20, 30), ([28.7], [], [2.0, 3.0, 2.0000001], False, True, [], None,
                                      0.5)),
    ("min_size: 4 min_size: 9 max_size: 8 max_size: 15 aspect_ratio: 0.5 offset: 0.25 "
     "variance: 0.2", (2, 2), (10, 7),
     ([4.0, 9.0], [8.0, 15.0], [0.5], True, False, [0.2], None, 0.25)),
])
def test_prior_box_matches_loops(params: str, feature: tuple[int, int], image: tuple[int, int],
                                 args: tuple[Any, ...]) -> None:
    net = net_of(f"""layer {{ name: "p" type: "PriorBox" bottom: "f" bottom: "d" top: "y"
      prior_box_param {{ {params} }} }}""")
    f = np.zeros((1, 2, *feature), F4)
    d = np.zeros((1, 3, *image), F4)
    y = forward(net, {"f": f, "d": d})["y"]
    expected = ref_prior_box(*feature, *image, *args)
    assert y.shape == expected.shape == infer_shapes(net, {"f": f.shape, "d": d.shape})["y"]
    # The same float32 roundings in the same order: equal to the last bit.
    np.testing.assert_array_equal(y, expected)


def test_prior_box_img_size_overrides_the_image() -> None:
    net = net_of("""layer { name: "p" type: "PriorBox" bottom: "f" bottom: "d" top: "y"
      prior_box_param { min_size: 10 img_h: 40 img_w: 20 step_h: 8 step_w: 4 } }""")
    y = forward(net, {"f": np.zeros((1, 1, 1, 1), F4), "d": np.zeros((1, 1, 3, 3), F4)})["y"]
    # center (0.5 * 4, 0.5 * 8) = (2, 4); half size 5: x in (-3, 7) / 20, y in (-1, 9) / 40.
    np.testing.assert_allclose(y[0, 0], [-0.15, -0.025, 0.35, 0.225], rtol=1e-6)


@pytest.mark.parametrize(("params", "message"), [
    ("", "min_size must be given"),
    ("min_size: 10 max_size: 5", "max_size needs one value per min_size"),
    ("min_size: 10 variance: 0.1 variance: 0.2", "variance needs 1 or 4"),
    ("min_size: 10 img_size: 30 img_h: 30 img_w: 30", "img_size and img_h/img_w"),
    ("min_size: 10 step: 3 step_h: 3 step_w: 3", "step and step_h/step_w"),
    ("min_size: 10 density: 2", "fork field prior_box_param.density is not one"),
    ("min_size: 10 flip: maybe", "cannot read prior_box_param.flip"),
])
def test_prior_box_refuses_what_the_fork_refuses(params: str, message: str) -> None:
    net = net_of(f"""layer {{ name: "p" type: "PriorBox" bottom: "f" bottom: "d" top: "y"
      prior_box_param {{ {params} }} }}""")
    with pytest.raises(UnsupportedLayerError, match=message):
        infer_shapes(net, {"f": (1, 1, 2, 2), "d": (1, 3, 8, 8)})


# --------------------------------------------------------------------------- DetectionOutput


def ref_decode(p: list[float], v: list[float], loc: list[float], code: int,
               in_target: bool) -> list[float]:
    """``DecodeBBox`` for one box, one float32 operation at a time."""
    p4, v4, l4 = [F4(a) for a in p], [F4(1.0) if in_target else F4(a) for a in v], \
        [F4(a) for a in loc]
    if code == 1:
        return [float(F4(p4[k] + F4(v4[k] * l4[k]))) for k in range(4)]
    pw, ph = F4(p4[2] - p4[0]), F4(p4[3] - p4[1])
    if code == 2:
        cx = F4(F4(F4(v4[0] * l4[0]) * pw) + F4(F4(p4[0] + p4[2]) / F4(2)))
        cy = F4(F4(F4(v4[1] * l4[1]) * ph) + F4(F4(p4[1] + p4[3]) / F4(2)))
        hw = F4(F4(np.exp(F4(v4[2] * l4[2])) * pw) / F4(2))
        hh = F4(F4(np.exp(F4(v4[3] * l4[3])) * ph) / F4(2))
        return [float(F4(cx - hw)), float(F4(cy - hh)), float(F4(cx + hw)), float(F4(cy + hh))]
    ext = [pw, ph, pw, ph]
    return [float(F4(p4[k] + F4(F4(v4[k] * l4[k]) * ext[k]))) for k in range(4)]


def ref_size(b: list[float]) -> float:
    if b[2] < b[0] or b[3] < b[1]:
        return 0.0
    return float(F4(F4(F4(b[2]) - F4(b[0])) * F4(F4(b[3]) - F4(b[1]))))


def ref_iou(a: list[float], b: list[float]) -> float:
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    iw = F4(F4(min(a[2], b[2])) - F4(max(a[0], b[0])))
    ih = F4(F4(min(a[3], b[3])) - F4(max(a[1], b[1])))
    if not (iw > 0 and ih > 0):
        return 0.0
    inter = F4(iw * ih)
    return float(F4(inter / F4(F4(F4(ref_size(a)) + F4(ref_size(b))) - inter)))


def ref_detection_output(loc: Array, conf: Array, prior: Array, classes: int, shared: bool,
                         background: int, code: int, in_target: bool, keep_top_k: int,
                         threshold: float, nms_threshold: float, top_k: int) -> Array:
    num = loc.shape[0]
    priors = prior.shape[2] // 4
    flat_prior = [float(v) for v in prior.ravel()]
    rows: list[list[float]] = []
    for i in range(num):
        loc_i = [float(v) for v in loc[i].ravel()]
        conf_i = [float(v) for v in conf[i].ravel()]
        kept: dict[int, list[int]] = {}
        boxes_of: dict[int, list[list[float]]] = {}
        for c in range(classes):
            if c == background:
                continue
            lc = 0 if shared else c
            step = 4 * (1 if shared else classes)
            boxes = [ref_decode(flat_prior[4 * p : 4 * p + 4],
                                flat_prior[4 * (priors + p) : 4 * (priors + p) + 4],
                                loc_i[p * step + 4 * lc : p * step + 4 * lc + 4], code, in_target)
                     for p in range(priors)]
            boxes_of[c] = boxes
            scores = [conf_i[p * classes + c] for p in range(priors)]
            cands = [p for p in range(priors) if scores[p] > float(F4(threshold))]
            cands.sort(key=lambda p: -scores[p])  # Python's sort is stable
            if top_k > -1:
                cands = cands[:top_k]
            chosen: list[int] = []
            for p in cands:
                if all(ref_iou(boxes[p], boxes[q]) <= float(F4(nms_threshold)) for q in chosen):
                    chosen.append(p)
            kept[c] = chosen
        if keep_top_k > -1 and sum(len(v) for v in kept.values()) > keep_top_k:
            pairs = [(conf_i[p * classes + c], c, p) for c in sorted(kept) for p in kept[c]]
            pairs.sort(key=lambda t: -t[0])
            kept = {}
            for _, c, p in pairs[:keep_top_k]:
                kept.setdefault(c, []).append(p)
        for c in sorted(kept):
            for p in kept[c]:
                rows.append([i, c, conf_i[p * classes + c], *boxes_of[c][p]])
    if not rows:
        return np.array([[[[i, -1, -1, -1, -1, -1, -1] for i in range(num)]]], F4)
    return np.array([[rows]], F4)


def detection_case(classes: int, shared: bool, priors: int, num: int) -> tuple[Array, ...]:
    centers = RNG.uniform(0.1, 0.9, (priors, 2))
    sizes = RNG.uniform(0.05, 0.4, (priors, 2))
    corners = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)
    variances = np.tile([0.1, 0.1, 0.2, 0.2], (priors, 1))
    prior = np.stack([corners.ravel(), variances.ravel()])[None].astype(F4)
    loc = RNG.normal(0, 1, (num, priors * 4 * (1 if shared else classes))).astype(F4)
    logits = RNG.normal(0, 2, (num, priors, classes))
    conf = (np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)).astype(F4)
    return loc, conf.reshape(num, -1), prior


DET_TEXT = """layer {{ name: "d" type: "DetectionOutput" bottom: "loc" bottom: "conf"
  bottom: "prior" top: "out" detection_output_param {{ num_classes: {classes}
  share_location: {shared} background_label_id: {background} code_type: {code}
  variance_encoded_in_target: {in_target} keep_top_k: {keep} confidence_threshold: {thr}
  nms_param {{ nms_threshold: {nms} top_k: {top_k} }} }} }}"""
CODES = {1: "CORNER", 2: "CENTER_SIZE", 3: "CORNER_SIZE"}


@pytest.mark.parametrize(("classes", "shared", "background", "code", "in_target", "keep",
                          "thr", "nms", "top_k", "num"), [
    (4, True, 0, 2, False, 50, 0.05, 0.45, 100, 1),
    (3, False, 0, 1, False, -1, 0.2, 0.3, 20, 2),
    (3, True, -1, 3, True, 7, 0.1, 0.5, -1, 2),  # keep_top_k cuts across classes
    (5, False, 2, 2, True, 200, 0.01, 0.7, 30, 1),
])
def test_detection_output_matches_loops(classes: int, shared: bool, background: int, code: int,
                                        in_target: bool, keep: int, thr: float, nms: float,
                                        top_k: int, num: int) -> None:
    loc, conf, prior = detection_case(classes, shared, 60, num)
    net = net_of(DET_TEXT.format(classes=classes, shared=str(shared).lower(),
                                 background=background, code=CODES[code],
                                 in_target=str(in_target).lower(), keep=keep, thr=thr, nms=nms,
                                 top_k=top_k))
    out = forward(net, {"loc": loc, "conf": conf, "prior": prior})["out"]
    expected = ref_detection_output(loc, conf, prior, classes, shared, background, code,
                                    in_target, keep, thr, nms, top_k)
    assert out.shape == expected.shape and out.shape[2] > 1
    # float32 operations in the fork's order, one at a time: equal to the last bit.
    np.testing.assert_array_equal(out, expected)


def test_detection_output_without_detections_has_one_row_per_image() -> None:
    loc, conf, prior = detection_case(3, True, 10, 3)
    net = net_of(DET_TEXT.format(classes=3, shared="true", background=0, code="CENTER_SIZE",
                                 in_target="false", keep=-1, thr=1.0, nms=0.45, top_k=10))
    out = forward(net, {"loc": loc, "conf": conf, "prior": prior})["out"]
    expected = [[i, -1, -1, -1, -1, -1, -1] for i in range(3)]
    np.testing.assert_array_equal(out, np.array([[expected]], F4))


@pytest.mark.parametrize(("shapes", "message"), [
    ([(1, 40), (1, 30), (1, 2, 40)], None),
    ([(1, 44), (1, 30), (1, 2, 40)], "10 priors need 40 location values per image, got 44"),
    ([(1, 40), (1, 33), (1, 2, 40)], "10 priors need 30 confidences per image, got 33"),
    ([(2, 40), (1, 30), (1, 2, 40)], "2 location rows but 1 confidence rows"),
    ([(1, 40), (1, 30), (1, 1, 40)], "holds no variances"),
])
def test_detection_output_shape_rule(shapes: list[tuple[int, ...]], message: str | None) -> None:
    net = net_of("""layer { name: "d" type: "DetectionOutput" bottom: "l" bottom: "c"
      bottom: "p" top: "out" detection_output_param { num_classes: 3 } }""")
    given = dict(zip(("l", "c", "p"), shapes, strict=True))
    if message is None:
        assert infer_shapes(net, given)["out"] == (1, 1, 1, 7)
        return
    with pytest.raises(UnsupportedLayerError, match=message):
        infer_shapes(net, given)


def test_ssd_types_are_registered() -> None:
    assert {t: SPECS[t].forward for t in ("Normalize", "Permute", "PriorBox",
                                          "DetectionOutput")} == {
        "Normalize": "_normalize", "Permute": "_permute", "PriorBox": "_prior_box",
        "DetectionOutput": "_detection_output"}


# --------------------------------------------------------------------------- the fork's Caffe


def golden() -> tuple[Any, dict[str, Array], dict[str, Any]]:
    folder = shared_path("golden_forks", "ssd_tiny")
    ref = np.load(folder / "blobs.npz")
    blobs = {key[len("blob:"):]: ref[key] for key in ref.files
             if key.startswith("blob:") and "_split_" not in key}
    expect = json.loads((folder / "expect.json").read_text())
    return folder, {"data": ref["input:data"], **blobs}, expect


def test_ssd_tiny_matches_the_forks_caffe_blob_by_blob() -> None:
    folder, ref, expect = golden()
    net = bnfuse.load(folder / "model.prototxt", folder / "model.caffemodel")
    assert [layer.type for layer in net.layers] == expect["types_before"]
    out = forward(net, {"data": ref["data"]})
    shapes = infer_shapes(net)
    for name, want in ref.items():
        got = out[name]
        assert got.shape == want.shape, name
        if name != "detection_out":
            assert shapes[name] == want.shape
        # Measured: every blob equal to the bit except the softmax and what follows it
        # (1 float32 ulp of exp: 1.8e-7 of the largest value); 1e-6 leaves 5x room.
        scale = float(np.abs(want).max())
        assert float(np.abs(got.astype(np.float64) - want).max()) <= 1e-6 * scale, name
    rows, want_rows = out["detection_out"][0, 0], ref["detection_out"][0, 0]
    assert rows.shape == (50, 7)
    np.testing.assert_array_equal(rows[:, :2], want_rows[:, :2])  # image and label exactly


def test_ssd_tiny_folded_still_matches_and_verifies_end_to_end() -> None:
    folder, ref, expect = golden()
    paths = folder / "model.prototxt", folder / "model.caffemodel"
    folded = bnfuse.fold(*paths).net
    assert [layer.type for layer in folded.layers] == expect["types_after"]
    out = forward(folded, {"data": ref["data"]})
    for name in ("conv2_norm", "mbox_loc", "mbox_conf_flatten", "mbox_priorbox",
                 "detection_out"):
        # The fold rounds its weights once more in float32: measured at most 1.4e-6 of the
        # largest value (mbox_loc); 1e-5 is the executor's depth-free float32 bound here.
        scale = float(np.abs(ref[name]).max())
        assert out[name].shape == ref[name].shape
        assert float(np.abs(out[name].astype(np.float64) - ref[name]).max()) <= 1e-5 * scale
    np.testing.assert_array_equal(out["detection_out"][0, 0, :, :2],
                                  ref["detection_out"][0, 0, :, :2])
    result = bnfuse.verify(bnfuse.load(*paths), folded, inputs={"data": ref["data"]})
    assert result.passed and result.scope == "net"
    assert "detection_out" in [blob.name for blob in result.blobs]


def test_ssd_tiny_in_float64_stays_within_float32_rounding_of_the_fork() -> None:
    """float64 runs every layer wider than Caffe's float32 (the boxes stay float32)."""
    folder, ref, _ = golden()
    net = bnfuse.load(folder / "model.prototxt", folder / "model.caffemodel")
    out = forward(net, {"data": ref["data"]}, dtype=np.float64)
    for name in ("conv2_norm", "mbox_priorbox", "mbox_conf_flatten", "detection_out"):
        assert out[name].dtype == np.float64 and out[name].shape == ref[name].shape
        # Measured at most 4.1e-7 of the largest value (conv2_norm): Caffe's own float32
        # rounding; the PriorBox edges, computed in double by the fork too, differ only by
        # the float32 store (4.7e-8).
        scale = float(np.abs(ref[name]).max())
        assert float(np.abs(out[name] - ref[name]).max()) <= 2e-6 * scale, name
    np.testing.assert_array_equal(out["detection_out"][0, 0, :, :2],
                                  ref["detection_out"][0, 0, :, :2])
