"""Blob shapes of a net, computed from the prototxt alone, the way Caffe's ``Reshape`` does.

Two public functions:

- :func:`infer_shapes` walks the layers in order and returns every blob's final shape
  without running any arithmetic (an in-place blob keeps its shape anyway).
- :func:`param_shapes` gives the weight blob shapes Caffe would create for one layer
  from its parameters and its bottom shapes; the loader checks caffemodels against it
  and the random-weight generator fills it.

The geometry helpers (:func:`conv_geometry`, :func:`pool_geometry`, :func:`canonical_axis`)
are shared with the executor so that a shape and the values behind it can never disagree.

Example:
    >>> import bnfuse
    >>> net = bnfuse.load(bnfuse.example_path("prototxt"))  # no weights needed
    >>> infer_shapes(net)["prob"]
    (1, 10)
    >>> param_shapes(net.layer("conv1"), [infer_shapes(net)["data"]])
    [(16, 3, 3, 3)]
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bnfuse._text import quote_user_text
from bnfuse.errors import ModelMismatchError, UnsupportedLayerError
from bnfuse.layertypes.batchnorm import NORM_TYPES, detect_layer
from bnfuse.net import CONV_TYPES, DEPTHWISE_TYPES  # defined once, with the net model

if TYPE_CHECKING:
    from bnfuse.verification.executor import LayerLike, NetLike

Shape = tuple[int, ...]

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


def _where(layer: LayerLike) -> str:
    return f"layer {quote_user_text(layer.name)} (type {quote_user_text(layer.type, 60)})"


def _check_ints(layer: LayerLike, what: str, values: Sequence[int]) -> None:
    """Geometry values must fit Caffe's ``int``."""
    for value in values:
        if value > CAFFE_INT_MAX:
            raise _unsupported(layer, f"{what} {value} is beyond Caffe's int range (at most "
                                      f"{CAFFE_INT_MAX}): Caffe cannot build this layer")


def check_blob_shape(layer: LayerLike, what: str, shape: Sequence[int]) -> None:
    """A blob Caffe can hold: dims from 0 to INT_MAX and at most INT_MAX values.

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
        raise _unsupported(layer, f"{what} has {len(dims)} axes; Caffe's blobs have at most "
                                  f"{CAFFE_MAX_AXES}")
    if any(d < 0 or d > CAFFE_INT_MAX for d in dims) or math.prod(dims) > CAFFE_INT_MAX:
        raise _unsupported(layer, f"{what} has shape {tuple(dims)}; Caffe's blobs allow "
                                  f"dimensions from 0 to {CAFFE_INT_MAX} and at most "
                                  f"{CAFFE_INT_MAX} values")


def _unsupported(layer: LayerLike, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"{_where(layer)}: {why}")


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
        raise _unsupported(layer, f"axis {axis} is out of range for a {ndim}-D blob")
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

    ``axis`` is the canonical channel axis; the spatial axes are the ones after it.

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
            raise _unsupported(layer, f"{what}_h/{what}_w need exactly 2 spatial axes")
        if values:
            raise _unsupported(layer, f"{what} and {what}_h/{what}_w are both set")
        return h_w
    if not values:
        if default is None:
            raise _unsupported(layer, f"{what} is not set")
        return (default,) * n_spatial
    if len(values) == 1:
        return (int(values[0]),) * n_spatial
    if len(values) == n_spatial:
        return tuple(int(v) for v in values)
    raise _unsupported(
        layer, f"{what} has {len(values)} values; expected 1 or {n_spatial} (one per spatial axis)"
    )


def _h_w(param: Any, what: str, layer: LayerLike) -> tuple[int, int] | None:
    """``(x_h, x_w)`` when either is set (both are then required), else None."""
    has_h = param.HasField(f"{what}_h")
    has_w = param.HasField(f"{what}_w")
    if not (has_h or has_w):
        return None
    if not (has_h and has_w):
        raise _unsupported(layer, f"{what}_h and {what}_w must be set together")
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
        raise _unsupported(layer, f"a {ndim}-D bottom has no spatial axis after axis {axis}")
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
        _check_ints(layer, what, values)
    if min(kernel) <= 0 or min(stride) <= 0 or min(dilation) <= 0 or min(pad) < 0:
        raise _unsupported(layer, "kernel, stride and dilation must be > 0 and pad >= 0")
    channels = int(bottom_shape[axis])
    num_output = int(cp.num_output)
    group = channels if layer.type in DEPTHWISE_TYPES else int(cp.group)
    if num_output <= 0 or group <= 0 or channels % group or num_output % group:
        raise _unsupported(
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
        raise _unsupported(layer, f"output spatial size {out} is empty for bottom {bottom_shape}")
    return geometry


def _conv_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    if len(bottoms) != len(layer.tops):
        raise _unsupported(layer, "needs one top per bottom")
    result = []
    for shape in bottoms:
        if tuple(shape) != tuple(bottoms[0]):
            raise _unsupported(layer, "all bottoms must have the same shape")
        g = conv_geometry(layer, shape)
        spatial = g.output_spatial(shape[g.axis + 1 :], deconv=layer.type == "Deconvolution")
        result.append((*shape[: g.axis], g.num_output, *spatial))
    return result


# --------------------------------------------------------------------------- pooling


@dataclass(frozen=True)
class PoolGeometry:
    """A 2-D pooling window: method, kernel, stride, pad and output size (h, w).

    Example:
        >>> PoolGeometry(POOL_MAX, (3, 3), (2, 2), (0, 0), (56, 56)).output
        (56, 56)
    """

    method: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    output: tuple[int, int]


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

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "pool" type: "Pooling" bottom: "x" top: "y"
        ...   pooling_param { pool: MAX kernel_size: 3 stride: 2 } }''')
        >>> pool_geometry(net.layer("pool"), (1, 64, 112, 112)).output
        (56, 56)
    """
    pp = layer.param.pooling_param
    if len(bottom_shape) != 4:
        raise _unsupported(layer, f"Caffe pools 4-D blobs only, got shape {tuple(bottom_shape)}")
    method = int(pp.pool)
    if method not in (POOL_MAX, POOL_AVE):
        raise _unsupported(layer, "only MAX and AVE pooling have a deterministic TEST output")
    height, width = int(bottom_shape[2]), int(bottom_shape[3])
    kernel_hw = _h_w(pp, "kernel", layer)
    if pp.global_pooling:
        if kernel_hw is not None or pp.HasField("kernel_size"):
            raise _unsupported(layer, "global_pooling and a kernel size are both set")
        kernel = (height, width)
    elif kernel_hw is not None:
        if pp.HasField("kernel_size"):
            raise _unsupported(layer, "kernel_size and kernel_h/kernel_w are both set")
        kernel = kernel_hw
    elif pp.HasField("kernel_size"):
        kernel = (int(pp.kernel_size), int(pp.kernel_size))
    else:
        raise _unsupported(layer, "kernel_size (or kernel_h and kernel_w) is not set")
    pad_hw = _h_w(pp, "pad", layer)
    if pad_hw is not None and pp.HasField("pad"):
        raise _unsupported(layer, "pad and pad_h/pad_w are both set")
    pad = pad_hw if pad_hw is not None else (int(pp.pad), int(pp.pad))
    stride_hw = _h_w(pp, "stride", layer)
    if stride_hw is not None and pp.HasField("stride"):
        raise _unsupported(layer, "stride and stride_h/stride_w are both set")
    stride = stride_hw if stride_hw is not None else (int(pp.stride), int(pp.stride))
    for what, values in (("kernel", kernel), ("stride", stride), ("pad", pad)):
        _check_ints(layer, what, values)
    if pp.global_pooling and (pad != (0, 0) or stride != (1, 1)):
        raise _unsupported(layer, "global_pooling allows only pad 0 and stride 1")
    if min(kernel) <= 0 or min(stride) <= 0 or pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        raise _unsupported(layer, "kernel and stride must be > 0 and pad < kernel")
    round_mode = int(pp.round_mode)
    output = (
        pooled_size(height, kernel[0], stride[0], pad[0], round_mode),
        pooled_size(width, kernel[1], stride[1], pad[1], round_mode),
    )
    if min(output) <= 0:
        raise _unsupported(layer, f"pooled size {output} is empty for bottom {tuple(bottom_shape)}")
    return PoolGeometry(method, kernel, stride, pad, output)


def _pool_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    g = pool_geometry(layer, bottoms[0])
    out = (*bottoms[0][:2], *g.output)
    if len(layer.tops) == 1:
        return [out]
    # Caffe allows a second top only for MAX pooling: the argmax mask (SegNet's upsampling).
    if len(layer.tops) != 2 or g.method != POOL_MAX:
        raise _unsupported(layer, "only MAX pooling may have a second (mask) top")
    return [out, out]


# --------------------------------------------------------------------------- other layers


def input_shapes_of(layer: LayerLike) -> list[Shape]:
    """The shapes an ``Input`` layer declares, one per top.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(bnfuse.example_path("prototxt"))
        >>> input_shapes_of(net.layer("data"))
        [(1, 3, 32, 32)]
    """
    declared = [tuple(int(d) for d in s.dim) for s in layer.param.input_param.shape]
    for shape in declared:
        check_blob_shape(layer, "the declared input", shape)
    n = len(layer.tops)
    if len(declared) == 1:
        return declared * n
    if len(declared) != n:
        raise _unsupported(layer, f"{len(declared)} input shapes for {n} tops (need 1 or {n})")
    return declared


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
            raise _unsupported(layer, f"num_axes must be >= -1, got {num_axes}")
        end = len(shape) if num_axes == -1 else axis + num_axes
        if end > len(shape):
            raise _unsupported(layer, f"axis {axis} + num_axes {num_axes} exceeds {len(shape)}-D")
        operand = shape[axis:end]
    if shape[axis : axis + len(operand)] != operand:
        raise _unsupported(
            layer, f"operand shape {operand} does not match bottom {shape} from axis {axis}"
        )
    return axis, operand


def _same_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    return [tuple(bottoms[0])]


def _elementwise(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    if len(bottoms) != 1 or len(layer.tops) != 1:
        raise _unsupported(layer, "needs exactly one bottom and one top")
    return [tuple(bottoms[0])]


def _copies(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    return [tuple(bottoms[0])] * len(layer.tops)


def _scale_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    scale_operand_shape(layer, bottoms)
    return [tuple(bottoms[0])]


def _inner_product_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    ip = layer.param.inner_product_param
    axis = canonical_axis(layer, int(ip.axis), len(bottoms[0]))
    _check_ints(layer, "num_output", [int(ip.num_output)])
    check_blob_shape(layer, "the weight", (int(ip.num_output), count(bottoms[0], axis)))
    return [(*bottoms[0][:axis], int(ip.num_output))]


def _eltwise_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    if any(tuple(b) != tuple(bottoms[0]) for b in bottoms):
        raise _unsupported(layer, f"bottom shapes differ: {[tuple(b) for b in bottoms]}")
    ep = layer.param.eltwise_param
    if len(ep.coeff) not in (0, len(bottoms)):
        raise _unsupported(layer, f"{len(ep.coeff)} coeffs for {len(bottoms)} bottoms")
    return [tuple(bottoms[0])]


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


def _concat_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    first = tuple(bottoms[0])
    axis = concat_axis(layer, len(first))
    total = 0
    for b in bottoms:
        if len(b) != len(first) or b[:axis] != first[:axis] or b[axis + 1 :] != first[axis + 1 :]:
            raise _unsupported(layer, f"bottom {tuple(b)} cannot join {first} on axis {axis}")
        total += b[axis]
    return [(*first[:axis], total, *first[axis + 1 :])]


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
            raise _unsupported(layer, f"{len(points)} slice points for {n} tops (need {n - 1})")
        edges = [0, *points, extent]
        sizes = [b - a for a, b in itertools.pairwise(edges)]
        if min(sizes) <= 0:
            raise _unsupported(layer, f"slice points {points} do not cut extent {extent}")
        return axis, sizes
    if extent % n:
        raise _unsupported(layer, f"extent {extent} on axis {axis} does not split into {n} tops")
    return axis, [extent // n] * n


def _slice_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    shape = tuple(bottoms[0])
    axis, sizes = slice_layout(layer, shape)
    return [(*shape[:axis], s, *shape[axis + 1 :]) for s in sizes]


def _flatten_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    fp = layer.param.flatten_param
    shape = tuple(bottoms[0])
    start = canonical_axis(layer, int(fp.axis), len(shape))
    end = canonical_axis(layer, int(fp.end_axis), len(shape))
    if end < start:
        raise _unsupported(layer, f"end_axis {end} is before axis {start}")
    return [(*shape[:start], count(shape, start, end + 1), *shape[end + 1 :])]


def _reshape_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    rp = layer.param.reshape_param
    shape = tuple(bottoms[0])
    ndim = len(shape)
    dims = [int(d) for d in rp.shape.dim]
    # Reshape's axis indexes the gaps between axes, so -1 means "after the last one".
    start = int(rp.axis)
    start = start + ndim + 1 if start < 0 else start
    if not 0 <= start <= ndim:
        raise _unsupported(layer, f"axis {rp.axis} is out of range for a {ndim}-D bottom")
    num_axes = int(rp.num_axes)
    if num_axes < -1:
        raise _unsupported(layer, f"num_axes must be >= -1, got {num_axes}")
    end = ndim if num_axes == -1 else start + num_axes
    if end > ndim:
        raise _unsupported(layer, f"axis + num_axes exceeds the bottom's {ndim} axes")
    middle: list[int] = []
    inferred: int | None = None
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= ndim:
                raise _unsupported(layer, f"dim {i} copies axis {start + i} that does not exist")
            middle.append(shape[start + i])
        elif d == -1:
            if inferred is not None:
                raise _unsupported(layer, "more than one -1 dim")
            inferred = i
            middle.append(1)
        elif d > 0:
            middle.append(d)
        else:
            raise _unsupported(layer, f"dim {d} is invalid (use > 0, 0 or -1)")
    top = [*shape[:start], *middle, *shape[end:]]
    total = count(shape)
    known = count(top)
    if inferred is not None:
        if known == 0 or total % known:
            raise _unsupported(layer, f"cannot infer a dim: {total} values into {tuple(top)}")
        top[start + inferred] = total // known
    if count(top) != total:
        raise _unsupported(layer, f"{total} values do not fit shape {tuple(top)}")
    return [tuple(top)]


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
        raise _unsupported(layer, f"bottoms {tuple(shape)} and {tuple(reference)} differ in rank")
    axis = canonical_axis(layer, int(cp.axis), ndim)
    given = [int(o) for o in cp.offset]
    if len(given) not in (0, 1, ndim - axis):
        raise _unsupported(layer, f"{len(given)} offsets; need 0, 1 or {ndim - axis}")
    offsets = [0] * ndim
    for i in range(axis, ndim):
        offset = 0 if not given else given[0] if len(given) == 1 else given[i - axis]
        if offset < 0 or shape[i] - offset < reference[i]:
            raise _unsupported(
                layer, f"axis {i}: offset {offset} + size {reference[i]} exceeds {shape[i]}"
            )
        offsets[i] = offset
    return offsets


def _crop_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    if len(bottoms) != 2:
        raise _unsupported(layer, "needs two bottoms (the blob and the reference)")
    shape, reference = tuple(bottoms[0]), tuple(bottoms[1])
    crop_offsets(layer, shape, reference)
    axis = canonical_axis(layer, int(layer.param.crop_param.axis), len(shape))
    return [(*shape[:axis], *reference[axis:])]


def _lrn_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    if len(bottoms[0]) != 4:
        raise _unsupported(layer, f"LRN needs a 4-D bottom, got {tuple(bottoms[0])}")
    size = int(layer.param.lrn_param.local_size)
    _check_ints(layer, "local_size", [size])
    if size <= 0 or size % 2 == 0:
        raise _unsupported(layer, f"local_size must be odd and positive, got {size}")
    _, c, h, w = bottoms[0]
    if int(layer.param.lrn_param.norm_region) == 0 and (c + size - 1) * h * w > CAFFE_INT_MAX:
        # Caffe's ACROSS_CHANNELS keeps the squares padded by size - 1 channels in one blob.
        raise _unsupported(layer, f"local_size {size} over {c} channels of {h}x{w} needs a "
                                  f"padded blob of {(c + size - 1) * h * w} values, more than "
                                  f"Caffe's {CAFFE_INT_MAX}")
    return [tuple(bottoms[0])]


def _softmax_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    canonical_axis(layer, int(layer.param.softmax_param.axis), len(bottoms[0]))
    return [tuple(bottoms[0])]


def _batch_norm_shapes(layer: LayerLike, bottoms: Sequence[Shape]) -> list[Shape]:
    return [tuple(bottoms[0])]


ShapeRule = Callable[["LayerLike", Sequence[Shape]], list[Shape]]

#: Output-shape rule per supported layer type (``Input`` is handled by the walker).
SHAPE_RULES: dict[str, ShapeRule] = {
    "Convolution": _conv_shapes,
    "ConvolutionDepthwise": _conv_shapes,
    "DepthwiseConvolution": _conv_shapes,
    "Deconvolution": _conv_shapes,
    "InnerProduct": _inner_product_shapes,
    "BatchNorm": _batch_norm_shapes,
    "BN": _batch_norm_shapes,
    "CuDNNBatchNorm": _batch_norm_shapes,
    "Scale": _scale_shapes,
    "Bias": _scale_shapes,
    "ReLU": _elementwise,
    "PReLU": _elementwise,
    "ELU": _elementwise,
    "Sigmoid": _elementwise,
    "TanH": _elementwise,
    "AbsVal": _elementwise,
    "Power": _elementwise,
    "Exp": _elementwise,
    "Log": _elementwise,
    "Clip": _elementwise,
    "Swish": _elementwise,
    "Threshold": _elementwise,
    "Dropout": _elementwise,
    "Pooling": _pool_shapes,
    "Eltwise": _eltwise_shapes,
    "Concat": _concat_shapes,
    "Slice": _slice_shapes,
    "Split": _copies,
    "Flatten": _flatten_shapes,
    "Reshape": _reshape_shapes,
    "Crop": _crop_shapes,
    "Softmax": _softmax_shapes,
    "LRN": _lrn_shapes,
}

#: Every layer type the verifier understands (shape rules and the executor agree on it).
SUPPORTED_TYPES = frozenset(SHAPE_RULES) | {"Input"}


def layer_output_shapes(layer: LayerLike, bottom_shapes: Sequence[Shape]) -> list[Shape]:
    """Shapes of ``layer``'s tops for the given bottom shapes (not for ``Input``).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(bnfuse.example_path("prototxt"))
        >>> layer_output_shapes(net.layer("relu1"), [(1, 8, 4, 4)])
        [(1, 8, 4, 4)]
        >>> layer_output_shapes(net.layer("pool1"), [(1, 8, 4, 4)])
        [(1, 8, 2, 2)]
    """
    rule = SHAPE_RULES.get(layer.type)
    if rule is None:
        raise unsupported_type(layer)
    if not bottom_shapes:
        raise _unsupported(layer, "has no bottom")
    shapes = rule(layer, [tuple(int(d) for d in s) for s in bottom_shapes])
    if len(shapes) != len(layer.tops):
        raise _unsupported(layer, f"makes {len(shapes)} tops but declares {len(layer.tops)}")
    for top, shape in zip(layer.tops, shapes, strict=True):
        check_blob_shape(layer, f"top {quote_user_text(top)}", shape)
    return shapes


def unsupported_type(layer: LayerLike) -> UnsupportedLayerError:
    """The error for a layer type the verifier cannot run (Python layers, fork layers...).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "mbox_priorbox" type: "PriorBox"
        ...   bottom: "conv" bottom: "data" top: "mbox_priorbox" }''')
        >>> print(unsupported_type(net.layer("mbox_priorbox")))  # doctest: +ELLIPSIS
        layer 'mbox_priorbox' has type 'PriorBox', which the numpy reference executor ...
    """
    return UnsupportedLayerError(
        f"layer {quote_user_text(layer.name)} has type {quote_user_text(layer.type, 60)}, "
        "which the numpy reference executor "
        f"does not implement; verify with another backend or remove the layer"
    )


def infer_shapes(
    net: NetLike,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    *,
    stop_at_unknown: bool = False,
) -> dict[str, tuple[int, ...]]:
    """Every blob's shape after the forward pass, from the layer parameters alone.

    ``input_shapes`` overrides the shapes declared by ``Input`` layers and supplies blobs
    that no layer produces. With ``stop_at_unknown=True`` the walk stops at the first layer
    it cannot handle and returns the shapes computed so far instead of raising.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(bnfuse.example_path("prototxt"))
        >>> infer_shapes(net)["pool1"]
        (1, 16, 16, 16)
        >>> shapes = infer_shapes(net, {"data": (2, 3, 64, 64)})  # override the Input shape
        >>> shapes["pool1"], shapes["fc"]
        ((2, 16, 32, 32), (2, 10))
    """
    given = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
    shapes: dict[str, Shape] = {}
    for layer in net.layers:
        try:
            if layer.type == "Input":
                declared = input_shapes_of(layer)
                for top, shape in zip(layer.tops, declared, strict=True):
                    shapes[top] = given.get(top, shape)
                continue
            bottoms = []
            for b in layer.bottoms:
                if b not in shapes and b in given:
                    shapes[b] = given[b]
                if b not in shapes:
                    raise ModelMismatchError(
                        f"{_where(layer)}: bottom {quote_user_text(b)} is produced by no "
                        "earlier layer "
                        f"and was not given as an input"
                    )
                bottoms.append(shapes[b])
            outs = layer_output_shapes(layer, bottoms)
        except UnsupportedLayerError:
            if stop_at_unknown:
                return shapes
            raise
        shapes.update(zip(layer.tops, outs, strict=True))
    return shapes


def param_shapes(layer: LayerLike, bottom_shapes: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Shapes of the weight blobs Caffe creates for ``layer`` (empty for weightless layers).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(bnfuse.example_path("prototxt"))
        >>> param_shapes(net.layer("conv2"), [(1, 16, 16, 16)])  # group 2, with bias
        [(32, 8, 3, 3), (32,)]
        >>> param_shapes(net.layer("conv2/bn"), [(1, 32, 16, 16)])  # mean, variance, factor
        [(32,), (32,), (1,)]
        >>> param_shapes(net.layer("relu2"), [(1, 32, 16, 16)])
        []
    """
    bottoms = [tuple(int(d) for d in s) for s in bottom_shapes]
    kind = layer.type
    if kind not in SUPPORTED_TYPES:
        raise unsupported_type(layer)
    if kind in CONV_TYPES or kind == "Deconvolution":
        g = conv_geometry(layer, bottoms[0])
        if kind == "Deconvolution":
            weight = (g.channels, g.num_output // g.group, *g.kernel)
        else:
            weight = (g.num_output, g.channels // g.group, *g.kernel)
        return [weight, (g.num_output,)] if g.bias_term else [weight]
    if kind == "InnerProduct":
        ip = layer.param.inner_product_param
        axis = canonical_axis(layer, int(ip.axis), len(bottoms[0]))
        n, k = int(ip.num_output), count(bottoms[0], axis)
        weight = (k, n) if ip.transpose else (n, k)
        return [weight, (n,)] if ip.bias_term else [weight]
    if kind in NORM_TYPES:
        shape = bottoms[0]
        dialect = detect_layer(layer)
        if dialect.name == "unknown":
            raise _unsupported(layer, dialect.reason or "unknown BatchNorm layout")
        return dialect.blob_shapes(shape[1] if len(shape) > 1 else 1)
    if kind in ("Scale", "Bias"):
        _, operand = scale_operand_shape(layer, bottoms)
        if kind == "Bias":
            return [] if len(bottoms) > 1 else [operand]
        has_bias = bool(layer.param.scale_param.bias_term)
        weights = [] if len(bottoms) > 1 else [operand]
        return [*weights, operand] if has_bias else weights
    if kind == "PReLU":
        if layer.param.prelu_param.channel_shared:
            return [()]
        shape = bottoms[0]
        return [(shape[1] if len(shape) > 1 else 1,)]
    return []


__all__ = [
    "CAFFE_INT_MAX",
    "CAFFE_MAX_AXES",
    "CONV_TYPES",
    "DEPTHWISE_TYPES",
    "SHAPE_RULES",
    "SUPPORTED_TYPES",
    "ConvGeometry",
    "PoolGeometry",
    "canonical_axis",
    "check_blob_shape",
    "concat_axis",
    "conv_geometry",
    "count",
    "crop_offsets",
    "infer_shapes",
    "input_shapes_of",
    "layer_output_shapes",
    "param_shapes",
    "pool_geometry",
    "pooled_size",
    "scale_operand_shape",
    "slice_layout",
    "unsupported_type",
]
