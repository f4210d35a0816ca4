"""Each layer type's rules: output shapes from bottom shapes, weight blobs from params.

The registry (:data:`bnfuse.layertypes.SPECS`) names one shape rule and one weight layout
per layer type; this module holds them. A shape rule validates the configuration and
returns the top shapes. A weight layout returns the blobs Caffe creates for the layer, in
order, as :class:`~bnfuse.layertypes.Blob` (role and shape); it is exact when given the
bottom shapes and has ``None`` for what depends on them otherwise. Only the BatchNorm
dialects also depend on how many blobs the layer holds, and they ask
:func:`bnfuse.layertypes.batchnorm.detect_layer`, the one place that decides a dialect.

Example:
    >>> import bnfuse
    >>> net = bnfuse.load(bnfuse.example_path("prototxt"))
    >>> [str(b) for b in conv_weights(net.layer("conv2"), None, 0)]  # group 2, with bias
    ['weight (32, ?, ...)', 'bias (32,)']
    >>> [str(b) for b in conv_weights(net.layer("conv2"), [(1, 16, 16, 16)], 0)]
    ['weight (32, 8, 3, 3)', 'bias (32,)']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from bnfuse.layertypes._base import DEPTHWISE_TYPES, Blob, Dim, LayerLike, Shape, unsupported
from bnfuse.layertypes._forks import (
    detection_output_config,
    interp_geometry,
    normalize_config,
    permute_order,
    prior_box_config,
    relu6_slope,
    shuffle_groups,
    upsample_output,
)
from bnfuse.layertypes.batchnorm import detect_layer
from bnfuse.layertypes.geometry import (
    CAFFE_INT_MAX,
    POOL_MAX,
    canonical_axis,
    check_blob_shape,
    check_ints,
    concat_axis,
    conv_geometry,
    count,
    crop_offsets,
    pool_geometry,
    scale_operand_shape,
    slice_layout,
)

# --------------------------------------------------------------------------- output shapes


def conv_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    if len(bottoms) != len(layer.tops):
        raise unsupported(layer, "needs one top per bottom")
    result = []
    for shape in bottoms:
        if tuple(shape) != tuple(bottoms[0]):
            raise unsupported(layer, "all bottoms must have the same shape")
        g = conv_geometry(layer, shape)
        spatial = g.output_spatial(shape[g.axis + 1 :], deconv=layer.type == "Deconvolution")
        result.append((*shape[: g.axis], g.num_output, *spatial))
    return result


def pool_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    g = pool_geometry(layer, bottoms[0])
    out = (*bottoms[0][:2], *g.output)
    if len(layer.tops) == 1:
        return [out]
    # Caffe allows a second top only for MAX pooling: the argmax mask (SegNet's upsampling).
    if len(layer.tops) != 2 or g.method != POOL_MAX:
        raise unsupported(layer, "only MAX pooling may have a second (mask) top")
    return [out, out]


def elementwise_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    if len(bottoms) != 1 or len(layer.tops) != 1:
        raise unsupported(layer, "needs exactly one bottom and one top")
    return [tuple(bottoms[0])]


def _not_in_place(layer: LayerLike) -> None:
    """Caffe's Split, Flatten and Reshape share their bottom's data with a new top blob,
    and refuse a top that is their bottom (``CHECK_NE(top[0], bottom[0])``)."""
    if set(layer.tops) & set(layer.bottoms[:1]):
        raise unsupported(layer, f"Caffe's {layer.type} does not allow in-place computation "
                                 f"(top {layer.bottoms[0]!r} is also its bottom)")


def copies_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    _not_in_place(layer)
    return [tuple(bottoms[0])] * len(layer.tops)


def scale_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    scale_operand_shape(layer, bottoms)
    return [tuple(bottoms[0])]


def inner_product_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    ip = layer.param.inner_product_param
    axis = canonical_axis(layer, int(ip.axis), len(bottoms[0]))
    check_ints(layer, "num_output", [int(ip.num_output)])
    check_blob_shape(layer, "the weight", (int(ip.num_output), count(bottoms[0], axis)))
    return [(*bottoms[0][:axis], int(ip.num_output))]


def eltwise_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    if any(tuple(b) != tuple(bottoms[0]) for b in bottoms):
        raise unsupported(layer, f"bottom shapes differ: {[tuple(b) for b in bottoms]}")
    ep = layer.param.eltwise_param
    if len(ep.coeff) not in (0, len(bottoms)):
        raise unsupported(layer, f"{len(ep.coeff)} coeffs for {len(bottoms)} bottoms")
    return [tuple(bottoms[0])]


def concat_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    first = tuple(bottoms[0])
    axis = concat_axis(layer, len(first))
    total = 0
    for b in bottoms:
        if len(b) != len(first) or b[:axis] != first[:axis] or b[axis + 1 :] != first[axis + 1 :]:
            raise unsupported(layer, f"bottom {tuple(b)} cannot join {first} on axis {axis}")
        total += b[axis]
    return [(*first[:axis], total, *first[axis + 1 :])]


def slice_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    shape = tuple(bottoms[0])
    axis, sizes = slice_layout(layer, shape)
    return [(*shape[:axis], s, *shape[axis + 1 :]) for s in sizes]


def flatten_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    _not_in_place(layer)
    fp = layer.param.flatten_param
    shape = tuple(bottoms[0])
    start = canonical_axis(layer, int(fp.axis), len(shape))
    end = canonical_axis(layer, int(fp.end_axis), len(shape))
    if end < start:
        raise unsupported(layer, f"end_axis {end} is before axis {start}")
    return [(*shape[:start], count(shape, start, end + 1), *shape[end + 1 :])]


def reshape_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    _not_in_place(layer)
    rp = layer.param.reshape_param
    shape = tuple(bottoms[0])
    ndim = len(shape)
    dims = [int(d) for d in rp.shape.dim]
    # Reshape's axis indexes the gaps between axes, so -1 means "after the last one".
    start = int(rp.axis)
    start = start + ndim + 1 if start < 0 else start
    if not 0 <= start <= ndim:
        raise unsupported(layer, f"axis {rp.axis} is out of range for a {ndim}-D bottom")
    num_axes = int(rp.num_axes)
    if num_axes < -1:
        raise unsupported(layer, f"num_axes must be >= -1, got {num_axes}")
    end = ndim if num_axes == -1 else start + num_axes
    if end > ndim:
        raise unsupported(layer, f"axis + num_axes exceeds the bottom's {ndim} axes")
    middle: list[int] = []
    inferred: int | None = None
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= ndim:
                raise unsupported(layer, f"dim {i} copies axis {start + i} that does not exist")
            middle.append(shape[start + i])
        elif d == -1:
            if inferred is not None:
                raise unsupported(layer, "more than one -1 dim")
            inferred = i
            middle.append(1)
        elif d > 0:
            middle.append(d)
        else:
            raise unsupported(layer, f"dim {d} is invalid (use > 0, 0 or -1)")
    top = [*shape[:start], *middle, *shape[end:]]
    total = count(shape)
    known = count(top)
    if inferred is not None:
        if known == 0 or total % known:
            raise unsupported(layer, f"cannot infer a dim: {total} values into {tuple(top)}")
        top[start + inferred] = total // known
    if count(top) != total:
        raise unsupported(layer, f"{total} values do not fit shape {tuple(top)}")
    return [tuple(top)]


def crop_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    if len(bottoms) != 2:
        raise unsupported(layer, "needs two bottoms (the blob and the reference)")
    shape, reference = tuple(bottoms[0]), tuple(bottoms[1])
    crop_offsets(layer, shape, reference)
    axis = canonical_axis(layer, int(layer.param.crop_param.axis), len(shape))
    return [(*shape[:axis], *reference[axis:])]


def lrn_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    if len(bottoms[0]) != 4:
        raise unsupported(layer, f"LRN needs a 4-D bottom, got {tuple(bottoms[0])}")
    size = int(layer.param.lrn_param.local_size)
    check_ints(layer, "local_size", [size])
    if size <= 0 or size % 2 == 0:
        raise unsupported(layer, f"local_size must be odd and positive, got {size}")
    _, c, h, w = bottoms[0]
    if int(layer.param.lrn_param.norm_region) == 0 and (c + size - 1) * h * w > CAFFE_INT_MAX:
        # Caffe's ACROSS_CHANNELS keeps the squares padded by size - 1 channels in one blob.
        raise unsupported(layer, f"local_size {size} over {c} channels of {h}x{w} needs a "
                                 f"padded blob of {(c + size - 1) * h * w} values, more than "
                                 f"Caffe's {CAFFE_INT_MAX}")
    return [tuple(bottoms[0])]


def softmax_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    canonical_axis(layer, int(layer.param.softmax_param.axis), len(bottoms[0]))
    return [tuple(bottoms[0])]


def same_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    return [tuple(bottoms[0])]


def _legacy(shape: Shape, axis: int) -> int:
    """Caffe's legacy accessors (``channels()``, ``height()``...): 1 beyond the last axis."""
    return shape[axis] if axis < len(shape) else 1


def normalize_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    """SSD's ``Normalize``: the bottom's shape (2 to 4 axes, read as N, C, H, W).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'layer { name: "n" type: "Normalize" bottom: "x" top: "y" }')
        >>> normalize_shapes(net.layer("n"), [(1, 512, 38, 38)])
        [(1, 512, 38, 38)]
    """
    if not 2 <= len(bottoms[0]) <= 4:
        raise unsupported(layer, f"needs a bottom of 2 to 4 axes, got {tuple(bottoms[0])}")
    normalize_config(layer)
    return [tuple(bottoms[0])]


def permute_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    """SSD's ``Permute``: the bottom's axes in ``order``.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "p" type: "Permute" bottom: "x" top: "y"
        ...   permute_param { order: 0 order: 2 order: 3 order: 1 } }''')
        >>> permute_shapes(net.layer("p"), [(1, 12, 19, 19)])
        [(1, 19, 19, 12)]
    """
    shape = tuple(bottoms[0])
    return [tuple(shape[axis] for axis in permute_order(layer, len(shape)))]


def prior_box_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    """SSD's ``PriorBox``: ``(1, 2, H * W * num_priors * 4)`` from the feature map's H, W.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "p" type: "PriorBox" bottom: "f" bottom: "d"
        ...   top: "p" prior_box_param { min_size: 30 max_size: 60 aspect_ratio: 2 } }''')
        >>> prior_box_shapes(net.layer("p"), [(1, 512, 19, 19), (1, 3, 300, 300)])
        [(1, 2, 5776)]
    """
    config = prior_box_config(layer)
    if len(bottoms) != 2:
        raise unsupported(layer, "needs two bottoms (the feature map and the image)")
    feature, image = bottoms
    if len(feature) > 4 or len(image) > 4:
        raise unsupported(layer, "its bottoms must have at most 4 axes")
    positions = _legacy(tuple(feature), 2) * _legacy(tuple(feature), 3)
    size = positions * config.num_priors * 4
    if size <= 0:
        raise unsupported(layer, f"makes no prior for feature map {tuple(feature)}")
    return [(1, 2, size)]


def detection_output_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    """SSD's ``DetectionOutput``: ``(1, 1, 1, 7)`` before the pass, as Caffe's Reshape says.

    The forward pass then gives ``(1, 1, kept, 7)``: one row ``[image, label, score,
    xmin, ymin, xmax, ymax]`` per detection, or one row of ``-1`` per image (its image
    index first) when nothing is kept. The bottoms are checked as Caffe checks them.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "d" type: "DetectionOutput" bottom: "l"
        ...   bottom: "c" bottom: "p" top: "d" detection_output_param { num_classes: 3 } }''')
        >>> detection_output_shapes(net.layer("d"), [(2, 40), (2, 30), (1, 2, 40)])
        [(1, 1, 1, 7)]
    """
    config = detection_output_config(layer)
    if len(bottoms) != 3:
        raise unsupported(layer, "needs three bottoms (locations, confidences, priors)")
    loc, conf, prior = (tuple(b) for b in bottoms)
    if max(len(loc), len(conf), len(prior)) > 4 or min(len(loc), len(conf)) < 1:
        raise unsupported(layer, "its bottoms must have 1 to 4 axes")
    if loc[0] != conf[0]:
        raise unsupported(layer, f"{loc[0]} location rows but {conf[0]} confidence rows")
    priors = _legacy(prior, 2) // 4
    if count(loc, 1) != _legacy(loc, 1) or count(conf, 1) != _legacy(conf, 1):
        raise unsupported(layer, "locations and confidences must be (N, K) blobs")
    if priors * config.num_loc_classes * 4 != _legacy(loc, 1):
        raise unsupported(layer, f"{priors} priors need {priors * config.num_loc_classes * 4} "
                                 f"location values per image, got {_legacy(loc, 1)}")
    if priors * config.num_classes != _legacy(conf, 1):
        raise unsupported(layer, f"{priors} priors need {priors * config.num_classes} "
                                 f"confidences per image, got {_legacy(conf, 1)}")
    if count(prior) < 2 * priors * 4:
        raise unsupported(layer, f"the prior blob {prior} holds no variances")
    return [(1, 1, 1, 7)]


def relu6_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    """``ReLU6``: elementwise (its ``relu6_param`` is read, so a bad one is refused here).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'layer { name: "r" type: "ReLU6" bottom: "x" top: "x" }')
        >>> relu6_shapes(net.layer("r"), [(1, 32, 112, 112)])
        [(1, 32, 112, 112)]
    """
    relu6_slope(layer)
    return elementwise_shapes(layer, bottoms)


def shuffle_channel_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    """ShuffleNet's ``ShuffleChannel``: the bottom's shape (the group must divide C).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "s" type: "ShuffleChannel" bottom: "x"
        ...   top: "y" shuffle_channel_param { group: 2 } }''')
        >>> shuffle_channel_shapes(net.layer("s"), [(1, 8, 4, 4)])
        [(1, 8, 4, 4)]
    """
    if len(bottoms[0]) < 2:
        raise unsupported(layer, f"needs a channel axis, got shape {tuple(bottoms[0])}")
    shuffle_groups(layer, int(bottoms[0][1]))
    return [tuple(bottoms[0])]


def axpy_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    """SENet's ``Axpy``: ``a * x + y`` with ``a`` of shape (N, C) or (N, C, 1, 1).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "f" type: "Axpy" bottom: "a" bottom: "x"
        ...   bottom: "y" top: "z" }''')
        >>> axpy_shapes(net.layer("f"), [(2, 8, 1, 1), (2, 8, 5, 5), (2, 8, 5, 5)])
        [(2, 8, 5, 5)]
    """
    if len(bottoms) != 3:
        raise unsupported(layer, f"takes 3 bottoms (a, x, y), got {len(bottoms)}")
    a, x, y = (tuple(b) for b in bottoms)
    if (len(x) < 2 or a[:2] != x[:2] or any(d != 1 for d in a[2:]) or len(a) not in (2, 4)
            or x != y):
        raise unsupported(layer, f"needs a of shape (N, C) or (N, C, 1, 1) and x, y of one "
                                 f"shape, got {a}, {x}, {y}")
    return [x]


def interp_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    """PSPNet's ``Interp``: ``(N, C, out_h, out_w)``.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "i" type: "Interp" bottom: "x" top: "y"
        ...   interp_param { shrink_factor: 2 } }''')
        >>> interp_shapes(net.layer("i"), [(1, 3, 473, 473)])  # (473 - 1) // 2 + 1
        [(1, 3, 237, 237)]
    """
    g = interp_geometry(layer, bottoms)
    return [(*bottoms[0][:2], g.out_h, g.out_w)]


def upsample_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    """SegNet's (values + mask) or the YOLOv3 forks' (nearest) ``Upsample``.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "u" type: "Upsample" bottom: "x" top: "y"
        ...   upsample_param { scale: 2 } }''')
        >>> upsample_shapes(net.layer("u"), [(1, 256, 13, 13)])
        [(1, 256, 26, 26)]
    """
    return [(*bottoms[0][:2], *upsample_output(layer, bottoms))]


# --------------------------------------------------------------------------- weight layouts


def _written_kernel(cp: Any) -> tuple[int, ...] | None:
    """The kernel extents when the params alone fix the number of spatial axes."""
    if cp.HasField("kernel_h") and cp.HasField("kernel_w"):
        return int(cp.kernel_h), int(cp.kernel_w)
    if len(cp.kernel_size) > 1:
        return tuple(int(k) for k in cp.kernel_size)
    return None  # one kernel_size is repeated over however many spatial axes the bottom has


def conv_weights(layer: LayerLike, bottoms: Sequence[Shape] | None, blob_count: int) -> list[Blob]:
    """Convolution ``(Cout, Cin/group, *kernel)``, Deconvolution ``(Cin, Cout/group, *kernel)``,
    then the bias ``(Cout,)`` when ``bias_term``. Depthwise types have one group per channel.

    Example: see the module docstring.
    """
    cp = layer.param.convolution_param
    deconv = layer.type == "Deconvolution"
    if bottoms:
        g = conv_geometry(layer, bottoms[0])
        per_group = g.num_output // g.group if deconv else g.channels // g.group
        first = g.channels if deconv else g.num_output
        weight = Blob("weight", (first, per_group, *g.kernel))
        return [weight, Blob("bias", (g.num_output,))] if g.bias_term else [weight]
    num_output, group = int(cp.num_output), int(cp.group)
    kernel = _written_kernel(cp)
    known: tuple[Dim, ...]
    if deconv:
        valid = group > 0 and num_output % group == 0
        known = (None, num_output // group if valid else None)
    else:
        known = (num_output, 1 if layer.type in DEPTHWISE_TYPES else None)
    weight = Blob("weight", (*known, *(kernel or ())), rank_known=kernel is not None)
    return [weight, Blob("bias", (num_output,))] if cp.bias_term else [weight]


def inner_product_weights(
    layer: LayerLike, bottoms: Sequence[Shape] | None, blob_count: int
) -> list[Blob]:
    """``(num_output, K)``, ``(K, num_output)`` when ``transpose``, then the bias.

    ``K`` is the bottom's size from ``axis`` on.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "fc" type: "InnerProduct" bottom: "x"
        ...   top: "y" inner_product_param { num_output: 10 axis: 2 transpose: true } }''')
        >>> [str(b) for b in inner_product_weights(net.layer("fc"), [(2, 3, 4, 5)], 0)]
        ['weight (20, 10)', 'bias (10,)']
    """
    ip = layer.param.inner_product_param
    n = int(ip.num_output)
    k = None
    if bottoms:
        k = count(bottoms[0], canonical_axis(layer, int(ip.axis), len(bottoms[0])))
    weight = Blob("weight", (k, n) if ip.transpose else (n, k))
    return [weight, Blob("bias", (n,))] if ip.bias_term else [weight]


class _NormView:
    """A layer as :func:`detect_layer` reads it, holding ``blob_count`` blobs.

    The loader asks for the layout before it attaches the blobs; a layer built in code
    has no prototxt text, so its typed param gives the fields.
    """

    def __init__(self, layer: LayerLike, blob_count: int) -> None:
        self.type = layer.type
        self.blobs = range(blob_count)
        self._layer = layer

    def fields_of(self, group: str) -> dict[str, object]:
        fields_of = getattr(self._layer, "fields_of", None)
        if callable(fields_of):
            return dict(fields_of(group))
        param = self._layer.param
        if group not in param.DESCRIPTOR.fields_by_name or not param.HasField(group):
            return {}
        return {field.name: value for field, value in getattr(param, group).ListFields()}


# Stands for the channel count in a dialect's blob shapes when the bottom is unknown.
_CHANNELS = -1


def norm_weights(layer: LayerLike, bottoms: Sequence[Shape] | None, blob_count: int) -> list[Blob]:
    """The blobs of the layer's BatchNorm dialect (none when the dialect is unknown).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" }')
        >>> [str(b) for b in norm_weights(net.layer("bn"), None, 5)]  # NVIDIA, scale_bias
        ['mean (?,)', 'variance (?,)', 'correction (1,)', 'scale (?,)', 'shift (?,)']
    """
    dialect = detect_layer(_NormView(layer, blob_count))
    channels = _CHANNELS
    if bottoms:
        shape = bottoms[0]
        channels = shape[1] if len(shape) > 1 else 1
    shapes = dialect.blob_shapes(channels)
    return [Blob(role, tuple(None if d == _CHANNELS else d for d in shape))
            for role, shape in zip(dialect.roles, shapes, strict=True)]


def _two_bottoms(layer: LayerLike, bottoms: Sequence[Shape] | None) -> bool:
    return max(len(layer.bottoms), len(bottoms or ())) > 1


def _operand(layer: LayerLike, bottoms: Sequence[Shape] | None, role: str) -> Blob:
    """The factor a Scale/Bias layer broadcasts: bottom 1, or ``bottom[axis:axis+num_axes]``."""
    two = _two_bottoms(layer, bottoms)
    if bottoms and len(bottoms) >= (2 if two else 1):
        return Blob(role, scale_operand_shape(layer, bottoms[: 2 if two else 1])[1])
    p = layer.param.scale_param if layer.type == "Scale" else layer.param.bias_param
    num_axes = int(p.num_axes)
    if two or num_axes < 0:  # bottom 1's shape, or up to the bottom's last axis
        return Blob(role, (), rank_known=False)
    return Blob(role, (None,) * num_axes)


def scale_weights(layer: LayerLike, bottoms: Sequence[Shape] | None, blob_count: int) -> list[Blob]:
    """The factor (unless bottom 1 is the factor), then the shift when ``bias_term``.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "s" type: "Scale" bottom: "x" top: "x"
        ...   scale_param { bias_term: true } }''')
        >>> [str(b) for b in scale_weights(net.layer("s"), [(1, 8, 4, 4)], 0)]
        ['scale (8,)', 'shift (8,)']
    """
    operand = _operand(layer, bottoms, "scale")
    blobs = [] if _two_bottoms(layer, bottoms) else [operand]
    return [*blobs, replace(operand, role="shift")] if layer.param.scale_param.bias_term else blobs


def bias_weights(layer: LayerLike, bottoms: Sequence[Shape] | None, blob_count: int) -> list[Blob]:
    """The shift, unless bottom 1 is the shift.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'layer { name: "b" type: "Bias" bottom: "x" top: "x" }')
        >>> [str(b) for b in bias_weights(net.layer("b"), None, 0)]
        ['shift (?,)']
    """
    return [] if _two_bottoms(layer, bottoms) else [_operand(layer, bottoms, "shift")]


def prelu_weights(layer: LayerLike, bottoms: Sequence[Shape] | None, blob_count: int) -> list[Blob]:
    """One slope per channel (axis 1), or a single 0-D slope when ``channel_shared``.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "p" type: "PReLU" bottom: "x" top: "x"
        ...   prelu_param { channel_shared: true } }''')
        >>> [str(b) for b in prelu_weights(net.layer("p"), [(1, 8, 4, 4)], 0)]
        ['slope ()']
    """
    if layer.param.prelu_param.channel_shared:
        return [Blob("slope", ())]
    channels = None
    if bottoms:
        shape = bottoms[0]
        channels = shape[1] if len(shape) > 1 else 1
    return [Blob("slope", (channels,))]


def normalize_weights(
    layer: LayerLike, bottoms: Sequence[Shape] | None, blob_count: int
) -> list[Blob]:
    """SSD's ``Normalize``: one scale per channel, or one 0-D scale when ``channel_shared``.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "n" type: "Normalize" bottom: "x" top: "y"
        ...   norm_param { channel_shared: false } }''')
        >>> [str(b) for b in normalize_weights(net.layer("n"), [(1, 512, 38, 38)], 0)]
        ['scale (512,)']
    """
    if normalize_config(layer).channel_shared:
        return [Blob("scale", ())]
    channels = None
    if bottoms:
        channels = bottoms[0][1] if len(bottoms[0]) > 1 else 1
    return [Blob("scale", (channels,))]
