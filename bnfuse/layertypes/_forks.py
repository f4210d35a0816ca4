"""Fork fields: read the parameter blocks bnfuse's schema does not know, or refuse them.

Forks of Caffe add layer types whose parameters (``prior_box_param``, ``norm_param``,
``interp_param``, ...) are not in bnfuse's schema, so they are kept only in the layer's
text. :func:`read_block` reads one such block against a small description of the fork's
message (field kinds and whether they repeat), as Caffe's text parser would; a field the
description does not list is refused, so a later revision of the fork that adds a field
cannot be run with the field silently dropped.

:func:`refused_fork_field` is the rule for every other unknown field on a layer the
numpy executor runs: it is either honoured (``pooling_param.ceil_mode``), known not to
change the TEST-phase output (an engine or precision hint, a filler, a BatchNorm
dialect's field that :mod:`bnfuse.layertypes.batchnorm` reads), or it is named as the
reason the executor does not run the layer.

Example:
    >>> import bnfuse
    >>> net = bnfuse.load(b'''
    ... layer { name: "p" type: "Pooling" bottom: "x" top: "y"
    ...         pooling_param { pool: MAX kernel_size: 3 stride: 2 ceil_mode: false } }
    ... layer { name: "c" type: "Convolution" bottom: "y" top: "z"
    ...         convolution_param { num_output: 4 kernel_size: 1 quantize: true } }
    ... ''')
    >>> refused_fork_field(net.layer("p")) is None, refused_fork_field(net.layer("c"))
    (True, 'convolution_param.quantize')
    >>> pool_round_mode(net.layer("p"))  # ceil_mode: false is ROUND_FLOOR
    1
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnfuse.errors import BnfuseError, UnsupportedLayerError
from bnfuse.io.prototxt import MessageNode, ScalarValue
from bnfuse.layertypes._base import LayerLike, unsupported
from bnfuse.layertypes.batchnorm import (  # the field names only that module may spell
    _NVIDIA_ONLY_FIELDS,
    _PSP_NEW_ONLY_FIELDS,
    _PSP_OLD_ONLY_FIELDS,
    _SEGNET_ONLY_FIELDS,
    NORM_TYPES,
)


@dataclass(frozen=True)
class Field:
    """How one field of a fork's message is written.

    ``kind`` is ``float`` (held as float32, as Caffe holds it), ``double``, ``int``
    (int32), ``uint`` (uint32), ``bool``, ``string``, ``enum`` (``values`` maps names to
    numbers), ``message`` (``fields`` describes it) or ``any`` (a message read by nobody:
    a filler).

    Example:
        >>> Field("enum", values={"CORNER": 1}).kind
        'enum'
    """

    kind: str
    repeated: bool = False
    values: Mapping[str, int] | None = None
    fields: Mapping[str, Field] | None = None


Spec = Mapping[str, Field]

_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "uint": (0, 2**32 - 1)}


def _scalar(layer: LayerLike, path: str, field: Field, value: ScalarValue) -> Any:
    try:
        if field.kind == "float":
            return float(np.float32(value.as_float()))
        if field.kind == "double":
            return value.as_float()
        if field.kind in _INT_RANGE:
            number = value.as_int()
            low, high = _INT_RANGE[field.kind]
            if not low <= number <= high:
                raise unsupported(layer, f"{path} is {number}, outside its {field.kind}32 range")
            return number
        if field.kind == "bool":
            return value.as_bool()
        if field.kind == "string":
            return value.text()
        if field.kind == "enum":
            names = field.values or {}
            code = value.int_or_none()
            if code is not None and code in names.values():
                return code
            if value.kind == "identifier" and value.text() in names:
                return names[value.text()]
            raise unsupported(layer, f"{path} is {value.text()[:40]!r}; the fork's values are "
                                     f"{sorted(names)}")
    except UnsupportedLayerError:
        raise
    except BnfuseError as exc:
        raise unsupported(layer, f"cannot read {path}: {exc}") from None
    raise unsupported(layer, f"{path}: a value where the fork writes a message")


def _message(layer: LayerLike, path: str, block: MessageNode, spec: Spec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in block.fields:
        where = f"{path}.{item.name}"
        field = spec.get(item.name)
        if field is None:
            raise unsupported(layer, f"fork field {where} is not one the numpy executor knows; "
                                     "it may change what the layer computes, so the layer is "
                                     "not run")
        parsed: list[Any] = []
        for value in item.values:
            if isinstance(value, MessageNode):
                if field.kind == "any":
                    parsed.append(value)
                elif field.kind == "message":
                    parsed.append(_message(layer, where, value, field.fields or {}))
                else:
                    raise unsupported(layer, f"{where}: a message where the fork writes a value")
            elif field.kind in ("any", "message"):
                raise unsupported(layer, f"{where}: a value where the fork writes a message")
            else:
                parsed.append(_scalar(layer, where, field, value))
        if field.repeated:
            out.setdefault(item.name, []).extend(parsed)
        elif parsed:
            out[item.name] = parsed[-1]
    return out


def read_block(layer: LayerLike, group: str, spec: Spec) -> dict[str, Any]:
    """The fields written in the layer's ``group`` block, read as the fork's message.

    Repeated fields map to a list of every value in order; messages to a dict. A layer
    without text (built in code) has no fork fields: the result is empty.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "p" type: "Permute" bottom: "x" top: "y"
        ...   permute_param { order: 0 order: 2 order: 3 order: 1 } }''')
        >>> read_block(net.layer("p"), "permute_param", PERMUTE_PARAM)
        {'order': [0, 2, 3, 1]}
    """
    node = getattr(layer, "node", None)
    block = node.message(group) if isinstance(node, MessageNode) else None
    if block is None:
        return {}
    return _message(layer, group, block, spec)


# --------------------------------------------------------------------------- SSD


_FILLER = Field("any")

#: weiliu89/caffe (branch ssd) ``NormalizeParameter``.
NORM_PARAM: Spec = {
    "across_spatial": Field("bool"),
    "scale_filler": _FILLER,
    "channel_shared": Field("bool"),
    "eps": Field("float"),
}
#: weiliu89/caffe (branch ssd) ``PermuteParameter``.
PERMUTE_PARAM: Spec = {"order": Field("uint", repeated=True)}
#: weiliu89/caffe (branch ssd) ``PriorBoxParameter``.
PRIOR_BOX_PARAM: Spec = {
    "min_size": Field("float", repeated=True),
    "max_size": Field("float", repeated=True),
    "aspect_ratio": Field("float", repeated=True),
    "flip": Field("bool"),
    "clip": Field("bool"),
    "variance": Field("float", repeated=True),
    "img_size": Field("uint"),
    "img_h": Field("uint"),
    "img_w": Field("uint"),
    "step": Field("float"),
    "step_h": Field("float"),
    "step_w": Field("float"),
    "offset": Field("float"),
}
CODE_CORNER, CODE_CENTER_SIZE, CODE_CORNER_SIZE = 1, 2, 3
_CODE_TYPES = {"CORNER": CODE_CORNER, "CENTER_SIZE": CODE_CENTER_SIZE,
               "CORNER_SIZE": CODE_CORNER_SIZE}
#: weiliu89/caffe (branch ssd) ``DetectionOutputParameter``; saving and visualising write
#: files or windows and never change the top, so they are read and left alone.
DETECTION_OUTPUT_PARAM: Spec = {
    "num_classes": Field("uint"),
    "share_location": Field("bool"),
    "background_label_id": Field("int"),
    "nms_param": Field("message", fields={"nms_threshold": Field("float"),
                                          "top_k": Field("int"), "eta": Field("float")}),
    "save_output_param": Field("any"),
    "code_type": Field("enum", values=_CODE_TYPES),
    "variance_encoded_in_target": Field("bool"),
    "keep_top_k": Field("int"),
    "confidence_threshold": Field("float"),
    "visualize": Field("bool"),
    "visualize_threshold": Field("float"),
    "save_file": Field("string"),
}


@dataclass(frozen=True)
class NormalizeConfig:
    """SSD's ``Normalize``: L2 norm over channels (per position) or over the whole image.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "n" type: "Normalize" bottom: "x" top: "y"
        ...   norm_param { across_spatial: false channel_shared: false } }''')
        >>> normalize_config(net.layer("n"))
        NormalizeConfig(across_spatial=False, channel_shared=False, eps=1.000000013351432e-10)
    """

    across_spatial: bool
    channel_shared: bool
    eps: float


def normalize_config(layer: LayerLike) -> NormalizeConfig:
    """Read a ``Normalize`` layer's ``norm_param`` with the fork's defaults."""
    p = read_block(layer, "norm_param", NORM_PARAM)
    return NormalizeConfig(bool(p.get("across_spatial", True)),
                           bool(p.get("channel_shared", True)),
                           float(p.get("eps", np.float32(1e-10))))


def permute_order(layer: LayerLike, ndim: int) -> tuple[int, ...]:
    """The axes a ``Permute`` layer's top takes from its bottom, the unnamed ones appended.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "p" type: "Permute" bottom: "x" top: "y"
        ...   permute_param { order: 0 order: 2 } }''')
        >>> permute_order(net.layer("p"), 4)
        (0, 2, 1, 3)
    """
    order: list[int] = []
    for axis in read_block(layer, "permute_param", PERMUTE_PARAM).get("order", []):
        if axis >= ndim:
            raise unsupported(layer, f"order {axis} is not an axis of a {ndim}-D bottom")
        if axis in order:
            raise unsupported(layer, f"order {axis} is given twice")
        order.append(axis)
    return (*order, *(axis for axis in range(ndim) if axis not in order))


@dataclass(frozen=True)
class PriorBoxConfig:
    """SSD's ``PriorBox`` settings after the fork's ``LayerSetUp`` (float32 values).

    ``aspect_ratios`` starts with 1 and holds each written ratio once (within 1e-6),
    followed by its reciprocal when ``flip``; ``img_h``/``step_h`` of 0 mean "from the
    bottoms".

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "p" type: "PriorBox" bottom: "f" bottom: "d"
        ...   top: "p" prior_box_param { min_size: 30 max_size: 60 aspect_ratio: 2 } }''')
        >>> cfg = prior_box_config(net.layer("p"))
        >>> cfg.aspect_ratios, cfg.num_priors, cfg.variance
        ((1.0, 2.0, 0.5), 4, (0.10000000149011612,))
    """

    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...]
    aspect_ratios: tuple[float, ...]
    clip: bool
    variance: tuple[float, ...]
    img_h: int
    img_w: int
    step_h: float
    step_w: float
    offset: float

    @property
    def num_priors(self) -> int:
        """Boxes per feature-map position."""
        return len(self.aspect_ratios) * len(self.min_sizes) + len(self.max_sizes)


def _f32(value: float) -> float:
    return float(np.float32(value))


def prior_box_config(layer: LayerLike) -> PriorBoxConfig:
    """Read and check a ``PriorBox`` layer's ``prior_box_param`` as the fork does."""
    p = read_block(layer, "prior_box_param", PRIOR_BOX_PARAM)
    min_sizes = tuple(p.get("min_size", []))
    if not min_sizes or min(min_sizes) <= 0:
        raise unsupported(layer, "min_size must be given and positive")
    flip = bool(p.get("flip", True))
    ratios = [1.0]
    for ratio in p.get("aspect_ratio", []):
        if any(abs(ratio - known) < 1e-6 for known in ratios):
            continue
        if ratio <= 0:
            raise unsupported(layer, f"aspect_ratio {ratio} must be positive")
        ratios.append(ratio)
        if flip:
            ratios.append(_f32(1.0 / ratio))
    max_sizes = tuple(p.get("max_size", []))
    if max_sizes and (len(max_sizes) != len(min_sizes)
                      or any(hi <= lo for lo, hi in zip(min_sizes, max_sizes, strict=True))):
        raise unsupported(layer, "max_size needs one value per min_size, each greater")
    variance = tuple(p.get("variance", [])) or (_f32(0.1),)
    if len(variance) not in (1, 4) or min(variance) <= 0:
        raise unsupported(layer, "variance needs 1 or 4 positive values")
    if "img_h" in p or "img_w" in p:
        if "img_size" in p:
            raise unsupported(layer, "img_size and img_h/img_w are both set")
        img_h, img_w = int(p.get("img_h", 0)), int(p.get("img_w", 0))
        if img_h <= 0 or img_w <= 0:
            raise unsupported(layer, "img_h and img_w must both be positive")
    else:
        img_h = img_w = int(p.get("img_size", 0))
        if "img_size" in p and img_h <= 0:
            raise unsupported(layer, "img_size must be positive")
    if "step_h" in p or "step_w" in p:
        if "step" in p:
            raise unsupported(layer, "step and step_h/step_w are both set")
        step_h, step_w = float(p.get("step_h", 0.0)), float(p.get("step_w", 0.0))
        if step_h <= 0 or step_w <= 0:
            raise unsupported(layer, "step_h and step_w must both be positive")
    else:
        step_h = step_w = float(p.get("step", 0.0))
        if "step" in p and step_h <= 0:
            raise unsupported(layer, "step must be positive")
    return PriorBoxConfig(min_sizes, max_sizes, tuple(ratios), bool(p.get("clip", False)),
                          variance, img_h, img_w, step_h, step_w,
                          float(p.get("offset", 0.5)))


@dataclass(frozen=True)
class DetectionOutputConfig:
    """SSD's ``DetectionOutput`` settings (TEST phase: decoding, NMS, top-k).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "d" type: "DetectionOutput" bottom: "l"
        ...   bottom: "c" bottom: "p" top: "d" detection_output_param { num_classes: 21
        ...   nms_param { nms_threshold: 0.45 top_k: 100 } code_type: CENTER_SIZE } }''')
        >>> cfg = detection_output_config(net.layer("d"))
        >>> cfg.num_classes, cfg.code_type, cfg.top_k, cfg.keep_top_k, cfg.confidence_threshold
        (21, 2, 100, -1, -3.4028234663852886e+38)
    """

    num_classes: int
    share_location: bool
    background_label_id: int
    code_type: int
    variance_encoded_in_target: bool
    keep_top_k: int
    confidence_threshold: float
    nms_threshold: float
    top_k: int
    eta: float

    @property
    def num_loc_classes(self) -> int:
        """How many box sets the location bottom holds per prior."""
        return 1 if self.share_location else self.num_classes


def detection_output_config(layer: LayerLike) -> DetectionOutputConfig:
    """Read and check a ``DetectionOutput`` layer's ``detection_output_param``."""
    p = read_block(layer, "detection_output_param", DETECTION_OUTPUT_PARAM)
    if "num_classes" not in p or p["num_classes"] <= 0:
        raise unsupported(layer, "num_classes must be given and positive")
    nms = p.get("nms_param", {})
    threshold = float(nms.get("nms_threshold", _f32(0.3)))
    eta = float(nms.get("eta", 1.0))
    if threshold < 0 or not 0 < eta <= 1:
        raise unsupported(layer, "nms_threshold must be >= 0 and eta in (0, 1]")
    lowest = float(np.finfo(np.float32).min)  # -FLT_MAX when no threshold is written
    return DetectionOutputConfig(
        int(p["num_classes"]), bool(p.get("share_location", True)),
        int(p.get("background_label_id", 0)), int(p.get("code_type", CODE_CORNER)),
        bool(p.get("variance_encoded_in_target", False)), int(p.get("keep_top_k", -1)),
        float(p.get("confidence_threshold", lowest)), threshold,
        int(nms.get("top_k", -1)), eta)


# --------------------------------------------------------------------------- other forks

#: The MobileNet-v2 forks' ``ReLU6Parameter`` (e.g. eric612/MobileNet-YOLO).
RELU6_PARAM: Spec = {"negative_slope": Field("float")}
#: hszhao/PSPNet and DeepLab v2 ``InterpParameter``.
INTERP_PARAM: Spec = {name: Field("int") for name in
                      ("height", "width", "zoom_factor", "shrink_factor", "pad_beg", "pad_end")}


#: farmingyard/ShuffleNet ``ShuffleChannelParameter``.
SHUFFLE_CHANNEL_PARAM: Spec = {"group": Field("uint")}


def shuffle_groups(layer: LayerLike, channels: int) -> int:
    """``shuffle_channel_param.group`` (1 by default), which must divide ``channels``.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "s" type: "ShuffleChannel" bottom: "x"
        ...   top: "y" shuffle_channel_param { group: 3 } }''')
        >>> shuffle_groups(net.layer("s"), 24)
        3
    """
    group = int(read_block(layer, "shuffle_channel_param", SHUFFLE_CHANNEL_PARAM)
                .get("group", 1))
    if group < 1 or channels % group:
        raise unsupported(layer, f"group {group} does not divide the {channels} channels")
    return group


def relu6_slope(layer: LayerLike) -> float:
    """``relu6_param.negative_slope`` (float32; 0 by default, and where the fork has none).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "r" type: "ReLU6" bottom: "x" top: "x"
        ...   relu6_param { negative_slope: 0.5 } }''')
        >>> relu6_slope(net.layer("r"))
        0.5
    """
    return float(read_block(layer, "relu6_param", RELU6_PARAM).get("negative_slope", 0.0))


@dataclass(frozen=True)
class InterpGeometry:
    """PSPNet's ``Interp``: the input window (after cropping) and the output size.

    Example:
        >>> InterpGeometry(pad_beg=0, in_h=5, in_w=5, out_h=9, out_w=9).out_h
        9
    """

    pad_beg: int
    in_h: int
    in_w: int
    out_h: int
    out_w: int


def interp_geometry(layer: LayerLike, bottoms: Sequence[Sequence[int]]) -> InterpGeometry:
    """The ``Interp`` output size, chosen as the fork's ``Reshape`` chooses it.

    Only ``shrink_factor``, only ``zoom_factor``, ``height`` and ``width``, both
    factors (shrink then zoom), or else the second bottom's height and width; the input
    is first cropped by ``-pad_beg`` / ``-pad_end`` (they must be <= 0).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "i" type: "Interp" bottom: "x" top: "y"
        ...   interp_param { zoom_factor: 8 } }''')
        >>> interp_geometry(net.layer("i"), [(1, 21, 60, 60)]).out_h  # 60 + 59 * 7
        473
    """
    p = read_block(layer, "interp_param", INTERP_PARAM)
    pad_beg, pad_end = int(p.get("pad_beg", 0)), int(p.get("pad_end", 0))
    if pad_beg > 0 or pad_end > 0:
        raise unsupported(layer, "pad_beg and pad_end must be <= 0 (cropping only)")
    shape = tuple(bottoms[0])
    if len(shape) != 4:
        raise unsupported(layer, f"needs a 4-D bottom, got {shape}")
    in_h, in_w = shape[2] + pad_beg + pad_end, shape[3] + pad_beg + pad_end
    shrink, zoom = int(p.get("shrink_factor", 1)), int(p.get("zoom_factor", 1))
    if ("shrink_factor" in p and shrink < 1) or ("zoom_factor" in p and zoom < 1):
        raise unsupported(layer, "shrink_factor and zoom_factor must be >= 1")
    if "shrink_factor" in p and "zoom_factor" not in p:
        out_h, out_w = (in_h - 1) // shrink + 1, (in_w - 1) // shrink + 1
    elif "zoom_factor" in p and "shrink_factor" not in p:
        out_h, out_w = in_h + (in_h - 1) * (zoom - 1), in_w + (in_w - 1) * (zoom - 1)
    elif "height" in p and "width" in p:
        out_h, out_w = int(p["height"]), int(p["width"])
    elif "shrink_factor" in p and "zoom_factor" in p:
        out_h, out_w = (in_h - 1) // shrink + 1, (in_w - 1) // shrink + 1
        out_h, out_w = out_h + (out_h - 1) * (zoom - 1), out_w + (out_w - 1) * (zoom - 1)
    elif len(bottoms) == 2 and len(bottoms[1]) == 4:
        out_h, out_w = int(bottoms[1][2]), int(bottoms[1][3])
    else:
        raise unsupported(layer, "gives no output size (a factor, height and width, or a "
                                 "second 4-D bottom)")
    if min(in_h, in_w, out_h, out_w) <= 0:
        raise unsupported(layer, f"input {in_h}x{in_w} or output {out_h}x{out_w} is empty")
    return InterpGeometry(-pad_beg, in_h, in_w, out_h, out_w)


#: alexgkendall/caffe-segnet ``UpsampleParameter`` (two bottoms: the values and the mask).
UPSAMPLE_PARAM: Spec = {"scale": Field("uint"), "scale_h": Field("uint"),
                        "scale_w": Field("uint"), "pad_out_h": Field("bool"),
                        "pad_out_w": Field("bool"), "upsample_h": Field("uint"),
                        "upsample_w": Field("uint")}
#: The one-bottom nearest-neighbour ``Upsample`` (eric612/MobileNet-YOLO and other YOLOv3
#: forks): only an integer ``scale``.
NEAREST_UPSAMPLE_PARAM: Spec = {"scale": Field("int")}


def upsample_output(layer: LayerLike, bottoms: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The (height, width) an ``Upsample`` layer makes.

    Two bottoms are SegNet's unpooling (``upsample_h``/``upsample_w``, or ``H * scale -
    pad_out``, scale 2 by default); one bottom is the YOLOv3 forks' nearest-neighbour
    upsampling by ``scale``, whose default differs between those forks, so it must be
    written.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "u" type: "Upsample" bottom: "x"
        ...   bottom: "mask" top: "y" upsample_param { scale: 2 pad_out_h: true } }''')
        >>> upsample_output(net.layer("u"), [(1, 64, 45, 60), (1, 64, 45, 60)])
        (89, 120)
    """
    shape = tuple(bottoms[0])
    if len(shape) != 4:
        raise unsupported(layer, f"needs a 4-D bottom, got {shape}")
    if len(bottoms) == 1:
        p = read_block(layer, "upsample_param", NEAREST_UPSAMPLE_PARAM)
        if "scale" not in p or p["scale"] < 1:
            raise unsupported(layer, "a one-bottom (nearest) Upsample needs a written scale "
                                     ">= 1: its forks default it differently")
        return shape[2] * int(p["scale"]), shape[3] * int(p["scale"])
    if len(bottoms) != 2 or tuple(bottoms[1]) != shape:
        raise unsupported(layer, "SegNet's Upsample needs a mask bottom of the values' shape")
    p = read_block(layer, "upsample_param", UPSAMPLE_PARAM)
    if "upsample_h" in p and "upsample_w" in p:
        if p["upsample_h"] <= 1 or p["upsample_w"] <= 1:
            raise unsupported(layer, "upsample_h and upsample_w must be > 1")
        return int(p["upsample_h"]), int(p["upsample_w"])
    if "scale_h" in p or "scale_w" in p:
        if "scale" in p or "scale_h" not in p or "scale_w" not in p:
            raise unsupported(layer, "give scale, or scale_h and scale_w")
        scale_h, scale_w = int(p["scale_h"]), int(p["scale_w"])
    else:
        scale_h = scale_w = int(p.get("scale", 2))
    pad_h, pad_w = bool(p.get("pad_out_h", False)), bool(p.get("pad_out_w", False))
    if scale_h <= 1 or scale_w <= 1 or (pad_h and scale_h != 2) or (pad_w and scale_w != 2):
        raise unsupported(layer, "scales must be > 1, and 2 where pad_out is set")
    return shape[2] * scale_h - int(pad_h), shape[3] * scale_w - int(pad_w)


# --------------------------------------------------------------------------- fork fields


#: The fork parameter block each fork type's forward reads (and checks field by field).
OWN_GROUPS: Mapping[str, frozenset[str]] = {
    "Normalize": frozenset({"norm_param"}),
    "Permute": frozenset({"permute_param"}),
    "PriorBox": frozenset({"prior_box_param"}),
    "DetectionOutput": frozenset({"detection_output_param"}),
    "ReLU6": frozenset({"relu6_param"}),
    "Interp": frozenset({"interp_param"}),
    "Upsample": frozenset({"upsample_param"}),
    "ShuffleChannel": frozenset({"shuffle_channel_param"}),
    "Axpy": frozenset(),
    "BinaryConvolution": frozenset({"binary_convolution_param"}),  # read by its forward
}

#: Types whose top shape is known only after the forward pass (Caffe reshapes the top
#: inside ``Forward``): the shape rule gives the shape Caffe's ``Reshape`` declares.
_RUNTIME_SHAPED = frozenset({"DetectionOutput"})


def runtime_shaped(layer_type: str) -> bool:
    """True for a type whose top shape is known only once it has run (``DetectionOutput``).

    Example:
        >>> runtime_shaped("DetectionOutput"), runtime_shaped("PriorBox")
        (True, False)
    """
    return layer_type in _RUNTIME_SHAPED

#: Fork fields the executor computes with.
HONOURED = frozenset({"pooling_param.ceil_mode"})

#: Layer-level fork fields that choose how, not what, a layer computes: Intel Caffe's
#: ``engine`` string (MKL2017, MKLDNN), NVIDIA Caffe 0.17's storage and math types and
#: its tensor-core switch. The executor computes in its own float32/float64 either way.
_INERT_TOP = frozenset({"engine", "forward_type", "backward_type", "forward_math",
                        "backward_math", "cudnn_math_override"})
#: Names inside a known parameter block that never change the TEST output: an engine
#: choice or a cuDNN algorithm search, and fillers (they only initialise missing weights).
_INERT_IN_BLOCK = frozenset({"engine", "cudnn_convolution_algo_seeker"})
#: Fields of the BatchNorm dialects; :mod:`bnfuse.layertypes.batchnorm` reads them and
#: refuses, with its reason, what it cannot run.
_NORM_FIELDS = (_NVIDIA_ONLY_FIELDS | _SEGNET_ONLY_FIELDS | _PSP_NEW_ONLY_FIELDS
                | _PSP_OLD_ONLY_FIELDS
                | {"scale_filler", "shift_filler", "use_global_stats", "moving_average_fraction"})


def _inert(layer_type: str, path: str) -> bool:
    group, _, name = path.partition(".")
    if not name:
        return group in _INERT_TOP
    if layer_type in NORM_TYPES and group in ("bn_param", "batch_norm_param"):
        return "." not in name and name in _NORM_FIELDS
    leaf = name.split(".")[0]
    return leaf in _INERT_IN_BLOCK or leaf.endswith("_filler")


def _field_paths(layer: LayerLike, path: str) -> list[str]:
    """An unknown block's own fields (``bn_param`` -> ``bn_param.bn_mode``...), else ``path``.

    An empty unknown block stays itself: even its defaults may switch something on.
    """
    node = getattr(layer, "node", None)
    if "." in path or not isinstance(node, MessageNode):
        return [path]
    head = node.first(path)
    if head is None or not head.is_message:
        return [path]
    names = [f"{path}.{item.name}" for block in node.messages(path) for item in block.fields]
    return names or [path]


def refused_fork_fields(layer: LayerLike) -> list[str]:
    """Every fork field on ``layer`` that the numpy executor would ignore, in text order.

    A layer's own fork block (``prior_box_param`` on ``PriorBox``) is read field by field
    by its forward; honoured fields and fields known not to change the TEST output pass.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "c" type: "Convolution" bottom: "x" top: "y"
        ...   engine: "MKL2017" convolution_param { num_output: 4 kernel_size: 1
        ...   quantize: true bits: 8 } }''')
        >>> refused_fork_fields(net.layer("c"))
        ['convolution_param.quantize', 'convolution_param.bits']
    """
    own = OWN_GROUPS.get(layer.type, frozenset())
    refused: list[str] = []
    for written in getattr(layer, "unknown_fields", ()):
        if written.partition(".")[0] in own:
            continue
        refused.extend(path for path in _field_paths(layer, str(written))
                       if path not in HONOURED and not _inert(layer.type, path))
    return refused


def refused_fork_field(layer: LayerLike) -> str | None:
    """The first of :func:`refused_fork_fields`, or None.

    Example: see the module docstring.
    """
    refused = refused_fork_fields(layer)
    return refused[0] if refused else None


def pool_round_mode(layer: LayerLike) -> int:
    """A Pooling layer's rounding: BVLC's ``round_mode``, or the forks' ``ceil_mode``.

    ``ceil_mode`` (BVLC pull request 3057, kept by OpenCV and several forks) is a bool
    that defaults to true: true rounds up like BVLC's CEIL, false rounds down like FLOOR.
    The two fields come from programs that never had both; a file that writes both with
    different meanings is refused.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "p" type: "Pooling" bottom: "x" top: "y"
        ...   pooling_param { kernel_size: 2 round_mode: FLOOR } }''')
        >>> pool_round_mode(net.layer("p"))
        1
    """
    pp = layer.param.pooling_param
    round_mode = int(pp.round_mode)
    fields_of = getattr(layer, "fields_of", None)
    written = fields_of("pooling_param") if callable(fields_of) else {}
    if "ceil_mode" not in written:
        return round_mode
    text = str(written["ceil_mode"])
    value = ScalarValue.from_token(text)
    try:
        ceil = value.as_bool()
    except BnfuseError:
        raise unsupported(layer, f"pooling_param.ceil_mode is {text[:40]!r}, not true or "
                                 "false") from None
    from_ceil = 0 if ceil else 1
    if pp.HasField("round_mode") and round_mode != from_ceil:
        raise unsupported(layer, "pooling_param sets round_mode and ceil_mode to different "
                                 "roundings")
    return from_ceil


__all__ = [
    "CODE_CENTER_SIZE",
    "CODE_CORNER",
    "CODE_CORNER_SIZE",
    "DETECTION_OUTPUT_PARAM",
    "HONOURED",
    "INTERP_PARAM",
    "NEAREST_UPSAMPLE_PARAM",
    "NORM_PARAM",
    "OWN_GROUPS",
    "PERMUTE_PARAM",
    "PRIOR_BOX_PARAM",
    "RELU6_PARAM",
    "SHUFFLE_CHANNEL_PARAM",
    "UPSAMPLE_PARAM",
    "DetectionOutputConfig",
    "Field",
    "InterpGeometry",
    "NormalizeConfig",
    "PriorBoxConfig",
    "detection_output_config",
    "interp_geometry",
    "normalize_config",
    "permute_order",
    "pool_round_mode",
    "prior_box_config",
    "read_block",
    "refused_fork_field",
    "refused_fork_fields",
    "relu6_slope",
    "runtime_shaped",
    "shuffle_groups",
    "upsample_output",
]
