"""Caffe's layer geometry: axes, convolution and pooling windows, Scale/Slice/Crop operands.

These are the readings of a layer's parameters that both a blob's shape and the values
behind it depend on, so the shape rules (:mod:`bnfuse.layertypes.shapes`), the weight
layouts (:mod:`bnfuse.layertypes`) and the numpy executor all use them and can never
disagree.

Example:
    >>> import bnfuse
    >>> net = bnfuse.load(b'''layer { name: "conv" type: "Convolution" bottom: "x" top: "y"
    ...   convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 2 } }''')
    >>> g = conv_geometry(net.layer("conv"), (1, 4, 16, 16))
    >>> g.group, g.output_spatial((16, 16), deconv=False)
    (2, (16, 16))
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bnfuse.layertypes._base import DEPTHWISE_TYPES, LayerLike, Shape, unsupported
from bnfuse.layertypes._forks import pool_round_mode

# PoolingParameter enum values (caffe.proto): fixed by the file format.
POOL_MAX = 0
POOL_AVE = 1
POOL_STOCHASTIC = 2
ROUND_CEIL = 0
ROUND_FLOOR = 1

#: Caffe holds sizes and geometry in C ``int``: ``Blob::Reshape`` refuses a blob of more
#: than INT_MAX values (or a dimension beyond it), and a ``uint32`` kernel, pad, stride,
#: dilation or local_size of 2**31 or more wraps negative there, which its checks refuse.
CAFFE_INT_MAX = 2**31 - 1
#: ``kMaxBlobAxes`` in Caffe's blob.hpp.
CAFFE_MAX_AXES = 32


def check_ints(layer: LayerLike, what: str, values: Sequence[int]) -> None:
    """Geometry values must fit Caffe's ``int`` (a larger ``uint32`` wraps negative there).

    Example:
        >>> from types import SimpleNamespace as L
        >>> check_ints(L(name="c", type="Convolution"), "pad", [2**32 - 1])
        Traceback (most recent call last):
        ...
        bnfuse.errors.UnsupportedLayerError: layer 'c' (type 'Convolution'): pad 4294967295 \
is beyond Caffe's int range (at most 2147483647): Caffe cannot build this layer
    """
    for value in values:
        if value > CAFFE_INT_MAX:
            raise unsupported(layer, f"{what} {value} is beyond Caffe's int range (at most "
                                     f"{CAFFE_INT_MAX}): Caffe cannot build this layer")


def check_blob_shape(layer: LayerLike, what: str, shape: Sequence[int]) -> None:
    """A blob Caffe can hold: at most 32 axes, dims from 0 to INT_MAX, at most INT_MAX values.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'layer { name: "in" type: "Input" top: "x" }')
        >>> check_blob_shape(net.layers[0], "top 'x'", (1, 3, 224, 224))
        >>> check_blob_shape(net.layers[0], "top 'x'", (2**62, 4, 0))
        Traceback (most recent call last):
        ...
        bnfuse.errors.UnsupportedLayerError: layer 'in' (type 'Input'): top 'x' has shape \
(4611686018427387904, 4, 0); Caffe's blobs allow dimensions from 0 to 2147483647 and at \
most 2147483647 values
    """
    dims = [int(d) for d in shape]
    if len(dims) > CAFFE_MAX_AXES:
        raise unsupported(layer, f"{what} has {len(dims)} axes; Caffe's blobs have at most "
                                 f"{CAFFE_MAX_AXES}")
    if any(d < 0 or d > CAFFE_INT_MAX for d in dims) or math.prod(dims) > CAFFE_INT_MAX:
        raise unsupported(layer, f"{what} has shape {tuple(dims)}; Caffe's blobs allow "
                                 f"dimensions from 0 to {CAFFE_INT_MAX} and at most "
                                 f"{CAFFE_INT_MAX} values")

def canonical_axis(layer: LayerLike, axis: int, ndim: int) -> int:
    """Turn a possibly negative ``axis`` into an index in ``[0, ndim)`` as Caffe does.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "sm" type: "Softmax" bottom: "x" top: "y" }''')
        >>> sm = net.layer("sm")  # the layer only names itself in the error for a bad axis
        >>> canonical_axis(sm, -1, 4), canonical_axis(sm, 2, 4)
        (3, 2)
    """
    if not -ndim <= axis < ndim:
        raise unsupported(layer, f"axis {axis} is out of range for a {ndim}-D blob")
    return axis + ndim if axis < 0 else axis


def count(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    """Number of elements of ``shape[start:end]`` (1 for an empty range), like ``Blob::count``.

    Example:
        >>> count((2, 3, 4), 1)
        12
    """
    return math.prod(shape[start:end])


# --------------------------------------------------------------------------- convolution


@dataclass(frozen=True)
class ConvGeometry:
    """Everything a convolution or deconvolution needs besides its weights.

    ``axis`` is the canonical channel axis; the spatial axes are the ones after it, and
    ``kernel``, ``stride``, ``pad``, ``dilation`` and ``output`` have one value per
    spatial axis, resolved from Caffe's repeated fields or their ``_h``/``_w`` pairs
    (defaults stride 1, pad 0, dilation 1). ``group`` is the input channels for the
    depthwise types. Pads are symmetric, and the output size rounds down (floor), as in
    Caffe's ``compute_output_shape``; a deconvolution's is ``stride·(size-1) +
    dilation·(kernel-1) + 1 - 2·pad``.

    Example:
        >>> g = ConvGeometry(1, 3, 8, 1, (3, 3), (1, 1), (1, 1), (1, 1), True)
        >>> g.output_spatial((5, 5), deconv=False)
        (5, 5)
    """

    axis: int
    channels: int
    num_output: int
    group: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad: tuple[int, ...]
    dilation: tuple[int, ...]
    bias_term: bool
    #: The output extent per spatial axis (``()`` when built without a bottom shape).
    output: tuple[int, ...] = ()

    def output_spatial(self, spatial: Sequence[int], *, deconv: bool) -> Shape:
        """Output extent per spatial axis (Caffe's ``compute_output_shape``).

        Example:
            >>> g = ConvGeometry(1, 4, 6, 2, (4, 4), (2, 2), (1, 1), (1, 1), False)
            >>> g.output_spatial((7, 7), deconv=True)
            (14, 14)
        """
        out = []
        for size, k, s, p, d in zip(
            spatial, self.kernel, self.stride, self.pad, self.dilation, strict=True
        ):
            extent = d * (k - 1) + 1
            if deconv:
                out.append(s * (size - 1) + extent - 2 * p)
            else:
                # Integer division truncates like C++ for the non-negative case Caffe allows.
                out.append((size + 2 * p - extent) // s + 1)
        return tuple(out)


def _per_axis(
    layer: LayerLike,
    what: str,
    values: Sequence[int],
    h_w: tuple[int, int] | None,
    *,
    n_spatial: int,
    default: int | None,
) -> tuple[int, ...]:
    """Expand a repeated field (one value, one per axis) or its ``_h``/``_w`` pair."""
    if h_w is not None:
        if n_spatial != 2:
            raise unsupported(layer, f"{what}_h/{what}_w need exactly 2 spatial axes")
        if values:
            raise unsupported(layer, f"{what} and {what}_h/{what}_w are both set")
        return h_w
    if not values:
        if default is None:
            raise unsupported(layer, f"{what} is not set")
        return (default,) * n_spatial
    if len(values) == 1:
        return (int(values[0]),) * n_spatial
    if len(values) == n_spatial:
        return tuple(int(v) for v in values)
    raise unsupported(
        layer, f"{what} has {len(values)} values; expected 1 or {n_spatial} (one per spatial axis)"
    )


def _h_w(param: Any, what: str, layer: LayerLike) -> tuple[int, int] | None:
    """``(x_h, x_w)`` when either is set (both are then required), else None."""
    has_h = param.HasField(f"{what}_h")
    has_w = param.HasField(f"{what}_w")
    if not (has_h or has_w):
        return None
    if not (has_h and has_w):
        raise unsupported(layer, f"{what}_h and {what}_w must be set together")
    return int(getattr(param, f"{what}_h")), int(getattr(param, f"{what}_w"))


def conv_geometry(layer: LayerLike, bottom_shape: Sequence[int]) -> ConvGeometry:
    """Read a Convolution / Deconvolution / depthwise layer's geometry for ``bottom_shape``.

    Depthwise aliases are grouped convolutions with one group per input channel.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "conv" type: "Convolution" bottom: "x" top: "y"
        ...   convolution_param { num_output: 64 kernel_size: 7 stride: 2 pad: 3 } }''')
        >>> g = conv_geometry(net.layer("conv"), (1, 3, 224, 224))
        >>> g.kernel, g.stride, g.pad, g.output_spatial((224, 224), deconv=False)
        ((7, 7), (2, 2), (3, 3), (112, 112))
    """
    cp = layer.param.convolution_param
    ndim = len(bottom_shape)
    axis = canonical_axis(layer, int(cp.axis), ndim)
    n_spatial = ndim - axis - 1
    if n_spatial < 1:
        raise unsupported(layer, f"a {ndim}-D bottom has no spatial axis after axis {axis}")
    kernel = _per_axis(
        layer,
        "kernel",
        cp.kernel_size,
        _h_w(cp, "kernel", layer),
        n_spatial=n_spatial,
        default=None,
    )
    stride = _per_axis(
        layer, "stride", cp.stride, _h_w(cp, "stride", layer), n_spatial=n_spatial, default=1
    )
    pad = _per_axis(layer, "pad", cp.pad, _h_w(cp, "pad", layer), n_spatial=n_spatial, default=0)
    dilation = _per_axis(layer, "dilation", cp.dilation, None, n_spatial=n_spatial, default=1)
    for what, values in (("kernel", kernel), ("stride", stride), ("pad", pad),
                         ("dilation", dilation), ("num_output", [int(cp.num_output)]),
                         ("group", [int(cp.group)])):
        check_ints(layer, what, values)
    if min(kernel) <= 0 or min(stride) <= 0 or min(dilation) <= 0 or min(pad) < 0:
        raise unsupported(layer, "kernel, stride and dilation must be > 0 and pad >= 0")
    channels = int(bottom_shape[axis])
    num_output = int(cp.num_output)
    group = channels if layer.type in DEPTHWISE_TYPES else int(cp.group)
    if num_output <= 0 or group <= 0 or channels % group or num_output % group:
        raise unsupported(
            layer,
            f"num_output {num_output} and {channels} input channels must both be "
            f"positive multiples of group {group}",
        )
    geometry = ConvGeometry(
        axis, channels, num_output, group, kernel, stride, pad, dilation, bool(cp.bias_term)
    )
    deconv = layer.type == "Deconvolution"
    out = geometry.output_spatial(bottom_shape[axis + 1 :], deconv=deconv)
    if min(out) <= 0:
        raise unsupported(layer, f"output spatial size {out} is empty for bottom {bottom_shape}")
    return dataclasses.replace(geometry, output=out)


# --------------------------------------------------------------------------- pooling


@dataclass(frozen=True)
class PoolGeometry:
    """A 2-D pooling window: method, kernel, stride, pad, output size and rounding, (h, w).

    ``method`` is Caffe's enum value (:data:`POOL_MAX` 0, :data:`POOL_AVE` 1; see
    :attr:`method_name`); ``kernel`` is the whole input for ``global_pooling``. Pads are
    symmetric; ``round_mode`` is :data:`ROUND_CEIL` (Caffe's default) or
    :data:`ROUND_FLOOR` (BVLC's ``round_mode: FLOOR``, or a fork's ``ceil_mode: false``).
    ``output`` is :func:`pooled_size` of each axis: rounded, then one less when the
    last window would start in the bottom/right padding. A window may overhang the
    padded input on the bottom/right (:meth:`overhang`). MAX takes the largest input
    value a window covers (padding never counts); AVE sums the input values it covers
    and divides by the part of the window inside the padded input (padding counts, the
    overhang does not).

    Example:
        >>> PoolGeometry(POOL_MAX, (3, 3), (2, 2), (0, 0), (56, 56)).output
        (56, 56)
    """

    method: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    output: tuple[int, int]
    round_mode: int = ROUND_CEIL

    @property
    def method_name(self) -> str:
        """``"MAX"`` or ``"AVE"``, as Caffe's ``PoolingParameter.PoolMethod`` spells it.

        Example:
            >>> PoolGeometry(POOL_AVE, (2, 2), (2, 2), (0, 0), (3, 3)).method_name
            'AVE'
        """
        return {POOL_MAX: "MAX", POOL_AVE: "AVE", POOL_STOCHASTIC: "STOCHASTIC"}[self.method]

    @property
    def ceil(self) -> bool:
        """True when the output size rounds up (Caffe's default), False when it rounds down.

        Example:
            >>> PoolGeometry(POOL_MAX, (2, 2), (2, 2), (0, 0), (2, 2), ROUND_FLOOR).ceil
            False
        """
        return self.round_mode == ROUND_CEIL

    def overhang(self, size: tuple[int, int]) -> tuple[int, int]:
        """How far the last window reaches past the padded input of ``size`` (h, w), per axis.

        ``(output - 1)·stride + kernel - (size + 2·pad)``, at least 0: the extra padding
        at the bottom/right that another runtime needs to produce Caffe's output size
        (Caffe counts it in no window: neither in a MAX nor in an AVE divisor).

        Example:
            >>> g = PoolGeometry(POOL_MAX, (2, 2), (2, 2), (0, 0), (3, 3))  # 5x5 input, ceil
            >>> g.overhang((5, 5))
            (1, 1)
        """
        return (max(0, (self.output[0] - 1) * self.stride[0] + self.kernel[0]
                    - size[0] - 2 * self.pad[0]),
                max(0, (self.output[1] - 1) * self.stride[1] + self.kernel[1]
                    - size[1] - 2 * self.pad[1]))


def pooled_size(size: int, kernel: int, stride: int, pad: int, round_mode: int) -> int:
    """Caffe's pooled extent: rounded (ceil by default), then the last window must start
    inside the image or its top/left padding, never entirely in the bottom/right padding.

    Example:
        >>> pooled_size(112, 3, 2, 0, ROUND_CEIL)   # ceil((112 - 3) / 2) + 1
        56
        >>> pooled_size(4, 2, 2, 1, ROUND_CEIL)     # 4 windows would start in the padding
        3
    """
    span = size + 2 * pad - kernel
    # Exact integer ceil/floor; same as Caffe's float ceil()/floor() for real sizes.
    out = (-(-span // stride) if round_mode == ROUND_CEIL else span // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def pool_geometry(layer: LayerLike, bottom_shape: Sequence[int]) -> PoolGeometry:
    """Read a Pooling layer's geometry for a 4-D ``bottom_shape``.

    The rounding is BVLC's ``round_mode`` or the forks' ``ceil_mode: false`` (floor),
    read by :func:`bnfuse.layertypes._forks.pool_round_mode`.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "pool" type: "Pooling" bottom: "x" top: "y"
        ...   pooling_param { pool: MAX kernel_size: 3 stride: 2 } }''')
        >>> pool_geometry(net.layer("pool"), (1, 64, 112, 112)).output
        (56, 56)
    """
    pp = layer.param.pooling_param
    if len(bottom_shape) != 4:
        raise unsupported(layer, f"Caffe pools 4-D blobs only, got shape {tuple(bottom_shape)}")
    method = int(pp.pool)
    if method not in (POOL_MAX, POOL_AVE):
        raise unsupported(layer, "only MAX and AVE pooling have a deterministic TEST output")
    height, width = int(bottom_shape[2]), int(bottom_shape[3])
    kernel_hw = _h_w(pp, "kernel", layer)
    if pp.global_pooling:
        if kernel_hw is not None or pp.HasField("kernel_size"):
            raise unsupported(layer, "global_pooling and a kernel size are both set")
        kernel = (height, width)
    elif kernel_hw is not None:
        if pp.HasField("kernel_size"):
            raise unsupported(layer, "kernel_size and kernel_h/kernel_w are both set")
        kernel = kernel_hw
    elif pp.HasField("kernel_size"):
        kernel = (int(pp.kernel_size), int(pp.kernel_size))
    else:
        raise unsupported(layer, "kernel_size (or kernel_h and kernel_w) is not set")
    pad_hw = _h_w(pp, "pad", layer)
    if pad_hw is not None and pp.HasField("pad"):
        raise unsupported(layer, "pad and pad_h/pad_w are both set")
    pad = pad_hw if pad_hw is not None else (int(pp.pad), int(pp.pad))
    stride_hw = _h_w(pp, "stride", layer)
    if stride_hw is not None and pp.HasField("stride"):
        raise unsupported(layer, "stride and stride_h/stride_w are both set")
    stride = stride_hw if stride_hw is not None else (int(pp.stride), int(pp.stride))
    for what, values in (("kernel", kernel), ("stride", stride), ("pad", pad)):
        check_ints(layer, what, values)
    if pp.global_pooling and (pad != (0, 0) or stride != (1, 1)):
        raise unsupported(layer, "global_pooling allows only pad 0 and stride 1")
    if min(kernel) <= 0 or min(stride) <= 0 or pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        raise unsupported(layer, "kernel and stride must be > 0 and pad < kernel")
    round_mode = pool_round_mode(layer)
    output = (
        pooled_size(height, kernel[0], stride[0], pad[0], round_mode),
        pooled_size(width, kernel[1], stride[1], pad[1], round_mode),
    )
    if min(output) <= 0:
        raise unsupported(layer, f"pooled size {output} is empty for bottom {tuple(bottom_shape)}")
    return PoolGeometry(method, kernel, stride, pad, output, round_mode)


def scale_operand_shape(layer: LayerLike, bottoms: Sequence[Shape]) -> tuple[int, Shape]:
    """``(axis, shape)`` of the factor a Scale/Bias layer broadcasts over bottom 0.

    With two bottoms the factor is bottom 1; with one it is a weight blob whose shape is
    ``bottom.shape[axis : axis + num_axes]`` (``num_axes = -1`` means to the end).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''
        ... layer { name: "per_channel" type: "Scale" bottom: "x" top: "x" }
        ... layer { name: "first_two" type: "Scale" bottom: "x" top: "x"
        ...         scale_param { axis: 0 num_axes: 2 } }
        ... ''')
        >>> scale_operand_shape(net.layer("per_channel"), [(2, 8, 5, 5)])
        (1, (8,))
        >>> scale_operand_shape(net.layer("first_two"), [(2, 8, 5, 5)])
        (0, (2, 8))
    """
    p = layer.param.scale_param if layer.type == "Scale" else layer.param.bias_param
    shape = tuple(bottoms[0])
    if len(bottoms) > 1:
        operand = tuple(bottoms[1])
        # A scalar second bottom applies everywhere; Caffe then ignores axis.
        axis = 0 if not operand else canonical_axis(layer, int(p.axis), len(shape))
    else:
        axis = canonical_axis(layer, int(p.axis), len(shape)) if shape else 0
        num_axes = int(p.num_axes)
        if num_axes < -1:
            raise unsupported(layer, f"num_axes must be >= -1, got {num_axes}")
        end = len(shape) if num_axes == -1 else axis + num_axes
        if end > len(shape):
            raise unsupported(layer, f"axis {axis} + num_axes {num_axes} exceeds {len(shape)}-D")
        operand = shape[axis:end]
    if shape[axis : axis + len(operand)] != operand:
        raise unsupported(
            layer, f"operand shape {operand} does not match bottom {shape} from axis {axis}"
        )
    return axis, operand


def concat_axis(layer: LayerLike, ndim: int) -> int:
    """The axis a Concat layer joins along (``concat_dim`` wins when set, as in Caffe).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''
        ... layer { name: "channels" type: "Concat" bottom: "a" bottom: "b" top: "c" }
        ... layer { name: "last" type: "Concat" bottom: "a" bottom: "b" top: "d"
        ...         concat_param { axis: -1 } }
        ... ''')
        >>> concat_axis(net.layer("channels"), 4), concat_axis(net.layer("last"), 4)
        (1, 3)
    """
    cp = layer.param.concat_param
    if cp.HasField("concat_dim"):
        return canonical_axis(layer, int(cp.concat_dim), ndim)
    return canonical_axis(layer, int(cp.axis), ndim)


def slice_layout(layer: LayerLike, shape: Sequence[int]) -> tuple[int, list[int]]:
    """``(axis, sizes)``: the axis a Slice layer cuts and each top's extent on it.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "slice" type: "Slice" bottom: "x"
        ...   top: "a" top: "b" slice_param { slice_point: 2 } }''')
        >>> slice_layout(net.layer("slice"), (1, 6, 4, 4))
        (1, [2, 4])
    """
    sp = layer.param.slice_param
    ndim = len(shape)
    axis = canonical_axis(
        layer, int(sp.slice_dim) if sp.HasField("slice_dim") else int(sp.axis), ndim
    )
    extent = int(shape[axis])
    n = len(layer.tops)
    points = [int(p) for p in sp.slice_point]
    if points:
        if len(points) != n - 1:
            raise unsupported(layer, f"{len(points)} slice points for {n} tops (need {n - 1})")
        edges = [0, *points, extent]
        sizes = [b - a for a, b in itertools.pairwise(edges)]
        if min(sizes) <= 0:
            raise unsupported(layer, f"slice points {points} do not cut extent {extent}")
        return axis, sizes
    if extent % n:
        raise unsupported(layer, f"extent {extent} on axis {axis} does not split into {n} tops")
    return axis, [extent // n] * n


def crop_offsets(layer: LayerLike, shape: Sequence[int], reference: Sequence[int]) -> list[int]:
    """Per-axis start offsets of a Crop of ``shape`` to ``reference`` (0 before ``axis``).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "crop" type: "Crop" bottom: "x" bottom: "ref"
        ...   top: "y" crop_param { axis: 2 offset: 2 } }''')
        >>> crop_offsets(net.layer("crop"), (1, 3, 10, 10), (1, 8, 6, 6))
        [0, 0, 2, 2]
    """
    cp = layer.param.crop_param
    ndim = len(shape)
    if len(reference) != ndim:
        raise unsupported(layer, f"bottoms {tuple(shape)} and {tuple(reference)} differ in rank")
    axis = canonical_axis(layer, int(cp.axis), ndim)
    given = [int(o) for o in cp.offset]
    if len(given) not in (0, 1, ndim - axis):
        raise unsupported(layer, f"{len(given)} offsets; need 0, 1 or {ndim - axis}")
    offsets = [0] * ndim
    for i in range(axis, ndim):
        offset = 0 if not given else given[0] if len(given) == 1 else given[i - axis]
        if offset < 0 or shape[i] - offset < reference[i]:
            raise unsupported(
                layer, f"axis {i}: offset {offset} + size {reference[i]} exceeds {shape[i]}"
            )
        offsets[i] = offset
    return offsets


__all__ = [
    "POOL_AVE",
    "POOL_MAX",
    "POOL_STOCHASTIC",
    "ROUND_CEIL",
    "ROUND_FLOOR",
    "ConvGeometry",
    "PoolGeometry",
    "canonical_axis",
    "concat_axis",
    "conv_geometry",
    "count",
    "crop_offsets",
    "pool_geometry",
    "pooled_size",
    "scale_operand_shape",
    "slice_layout",
]
