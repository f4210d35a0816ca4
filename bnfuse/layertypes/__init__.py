"""What bnfuse knows about Caffe layer types, written once for every part of bnfuse.

This package is neutral ground: the loader (:mod:`bnfuse.net`), the folds
(:mod:`bnfuse.folding`) and the verifier (:mod:`bnfuse.verification`) all ask it, and it
imports none of them.

:data:`SPECS` is the registry: one :class:`LayerSpec` per layer type bnfuse knows, with
its output-shape rule, its weight layout (the blobs Caffe creates, as role and shape) and
the name of its forward function in :mod:`bnfuse.verification.layers`. Everything else
about weights is derived from the layout here: the blob counts a caffemodel may hold
(:func:`blob_counts`), the shape checks at load (:func:`weight_mismatch`), the axes of a
legacy 4-D blob (:func:`legacy_shape`), whether a layer has weights (:func:`has_weights`)
or sums products with a weight matrix (:func:`accumulates`), and the bottom shape its
weights imply (:func:`implied_bottom`). Adding a layer type is one entry in :data:`SPECS`
(plus its forward function in the verifier).

- :mod:`bnfuse.layertypes.batchnorm`: the one decision of what a BatchNorm-like layer is
  (its dialect: blob roles, eps, TEST-phase meaning, foldability).
- :mod:`bnfuse.layertypes.geometry`: convolution and pooling windows, axes, operands.
- :mod:`bnfuse.layertypes.shapes`: every blob's shape from the prototxt, weight shapes.

Example:
    >>> import bnfuse
    >>> net = bnfuse.load(bnfuse.example_path("prototxt"))
    >>> conv = net.layer("conv2")  # group 2, with a bias
    >>> SPECS["Convolution"].forward, blob_counts(conv), has_weights(net.layer("relu1"))
    ('_convolution', (2,), False)
    >>> [str(blob) for blob in weight_layout(conv)]  # as many kernel axes as the bottom has
    ['weight (32, ?, ...)', 'bias (32,)']
    >>> [str(blob) for blob in weight_layout(conv, [(1, 16, 16, 16)])]
    ['weight (32, 8, 3, 3)', 'bias (32,)']
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType

import numpy as np

from bnfuse.errors import BnfuseError
from bnfuse.layertypes import _rules as rule
from bnfuse.layertypes._base import (
    CONV_TYPES,
    DEPTHWISE_TYPES,
    Blob,
    Dim,
    LayerLike,
    Layout,
    Shape,
    ShapeRule,
    unsupported,
)
from bnfuse.layertypes._forks import refused_fork_field
from bnfuse.layertypes.batchnorm import NORM_TYPES, detect


@dataclass(frozen=True)
class LayerSpec:
    """Everything bnfuse knows about one layer type.

    ``shape`` computes the top shapes from the bottom shapes (None: bnfuse cannot shape
    the type; ``Input`` declares its shapes instead). ``weights`` is the weight layout
    (None: the type has no weights). ``forward`` names the type's function in
    :mod:`bnfuse.verification.layers` (None: the numpy executor cannot run it); it is a
    name so that this package needs nothing from the verifier.

    Example:
        >>> SPECS["PReLU"].forward, SPECS["ReLU"].weights is None, SPECS["BNLL"].shape
        ('_prelu', True, None)
    """

    type: str
    shape: ShapeRule | None = None
    weights: Layout | None = None
    forward: str | None = None


def _table(*specs: LayerSpec) -> Mapping[str, LayerSpec]:
    return MappingProxyType({spec.type: spec for spec in specs})


def _elementwise(layer_type: str, forward: str) -> LayerSpec:
    return LayerSpec(layer_type, rule.elementwise_shapes, None, forward)


#: The registry: every layer type bnfuse knows, described once.
SPECS: Mapping[str, LayerSpec] = _table(
    LayerSpec("Input"),  # fed by the caller: its shapes are declared, not computed
    *(LayerSpec(t, rule.conv_shapes, rule.conv_weights, "_convolution")
      for t in ("Convolution", *sorted(DEPTHWISE_TYPES), "Deconvolution")),
    LayerSpec("InnerProduct", rule.inner_product_shapes, rule.inner_product_weights,
              "_inner_product"),
    LayerSpec("BatchNorm", rule.same_shapes, rule.norm_weights, "_batch_norm"),
    LayerSpec("BN", rule.same_shapes, rule.norm_weights, "_batch_norm"),
    LayerSpec("CuDNNBatchNorm", rule.same_shapes, rule.norm_weights, "_batch_norm"),
    LayerSpec("Scale", rule.scale_shapes, rule.scale_weights, "_scale"),
    LayerSpec("Bias", rule.scale_shapes, rule.bias_weights, "_bias"),
    LayerSpec("PReLU", rule.elementwise_shapes, rule.prelu_weights, "_prelu"),
    _elementwise("ReLU", "_relu"),
    _elementwise("ELU", "_elu"),
    _elementwise("Sigmoid", "_sigmoid"),
    _elementwise("TanH", "_tanh"),
    _elementwise("AbsVal", "_absval"),
    _elementwise("Power", "_power"),
    _elementwise("Exp", "_exp"),
    _elementwise("Log", "_log"),
    _elementwise("Clip", "_clip"),
    _elementwise("Swish", "_swish"),
    _elementwise("Threshold", "_threshold"),
    _elementwise("Dropout", "_identity"),
    LayerSpec("BNLL"),  # weightless; neither shaped nor run by bnfuse
    LayerSpec("Split", rule.copies_shapes, None, "_identity"),
    LayerSpec("Pooling", rule.pool_shapes, None, "_pooling"),
    LayerSpec("Eltwise", rule.eltwise_shapes, None, "_eltwise"),
    LayerSpec("Concat", rule.concat_shapes, None, "_concat"),
    LayerSpec("Slice", rule.slice_shapes, None, "_slice"),
    LayerSpec("Flatten", rule.flatten_shapes, None, "_reshaped"),
    LayerSpec("Reshape", rule.reshape_shapes, None, "_reshaped"),
    LayerSpec("Crop", rule.crop_shapes, None, "_crop"),
    LayerSpec("Softmax", rule.softmax_shapes, None, "_softmax"),
    LayerSpec("LRN", rule.lrn_shapes, None, "_lrn"),
    # Fork layers (the fork and source file of each are named in docs/supported.md).
    LayerSpec("Normalize", rule.normalize_shapes, rule.normalize_weights, "_normalize"),
    LayerSpec("Permute", rule.permute_shapes, None, "_permute"),
    LayerSpec("PriorBox", rule.prior_box_shapes, None, "_prior_box"),
    LayerSpec("DetectionOutput", rule.detection_output_shapes, None, "_detection_output"),
    LayerSpec("ReLU6", rule.relu6_shapes, None, "_relu6"),
    LayerSpec("ShuffleChannel", rule.shuffle_channel_shapes, None, "_shuffle_channel"),
    LayerSpec("Axpy", rule.axpy_shapes, None, "_axpy"),
    LayerSpec("Interp", rule.interp_shapes, None, "_interp"),
    LayerSpec("Upsample", rule.upsample_shapes, None, "_upsample"),
    # Binary-weight forks (bnfuse.layertypes.binary): a BVLC counterpart's blobs and params.
    LayerSpec("BinaryConvolution", rule.conv_shapes, rule.conv_weights, "_binary_convolution"),
    LayerSpec("BinaryInnerProduct", rule.inner_product_shapes, rule.inner_product_weights,
              "_binary_inner_product"),
    _elementwise("Signum", "_signum"),
)


def spec_of(layer_type: str) -> LayerSpec | None:
    """The registry entry of ``layer_type``, or None for a type bnfuse does not know.

    Example:
        >>> spec_of("Scale").forward, spec_of("Proposal")
        ('_scale', None)
    """
    return SPECS.get(layer_type)


def executable(layer: str | LayerLike) -> bool:
    """True when the numpy executor runs the type (``Input`` is fed with the inputs).

    Given a layer rather than a type name, also False when the layer carries a fork
    field the executor would have to ignore (:func:`bnfuse.layertypes._forks.refused_fork_field`).

    Example:
        >>> executable("Input"), executable("Softmax"), executable("BNLL"), executable("Python")
        (True, True, False, False)
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "r" type: "ReLU" bottom: "x" top: "x"
        ...   relu_param { quantized: true } }''')
        >>> executable(net.layer("r").type), executable(net.layer("r"))
        (True, False)
    """
    layer_type = layer if isinstance(layer, str) else layer.type
    spec = SPECS.get(layer_type)
    runs = spec is not None and (spec.forward is not None or layer_type == "Input")
    return runs and (isinstance(layer, str) or refused_fork_field(layer) is None)


# --------------------------------------------------------------------------- weights


def weight_layout(
    layer: LayerLike,
    bottoms: Sequence[Sequence[int]] | None = None,
    *,
    blob_count: int | None = None,
) -> list[Blob]:
    """The weight blobs Caffe creates for ``layer``, in order, as role and shape.

    Without ``bottoms`` an axis that depends on a bottom shape is ``None``; with them the
    layout is exact (or the configuration error is raised). ``blob_count`` is how many
    blobs the layer holds when they are not attached yet (by default ``len(layer.blobs)``);
    only the BatchNorm dialects depend on it. A type bnfuse does not know raises
    :class:`~bnfuse.errors.UnsupportedLayerError`.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "s" type: "Scale" bottom: "x" bottom: "f"
        ...   top: "y" scale_param { bias_term: true } }''')
        >>> [str(b) for b in weight_layout(net.layer("s"))]  # bottom 1 is the factor
        ['shift (...)']
        >>> [str(b) for b in weight_layout(net.layer("s"), [(2, 6, 4, 4), (6,)])]
        ['shift (6,)']
    """
    spec = SPECS.get(layer.type)
    if spec is None:
        raise unsupported(layer, "bnfuse does not know the weight layout of this layer type")
    if spec.weights is None:
        return []
    known = None if bottoms is None else [tuple(int(d) for d in s) for s in bottoms]
    count = len(layer.blobs) if blob_count is None else blob_count
    return spec.weights(layer, known, count)


def has_weights(layer: LayerLike) -> bool:
    """True when Caffe creates weight blobs for ``layer`` (False for unknown types).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''
        ... layer { name: "s1" type: "Scale" bottom: "x" top: "x" }
        ... layer { name: "s2" type: "Scale" bottom: "x" bottom: "f" top: "y" }
        ... ''')
        >>> has_weights(net.layer("s1")), has_weights(net.layer("s2"))
        (True, False)
    """
    spec = SPECS.get(layer.type)
    return spec is not None and spec.weights is not None and bool(weight_layout(layer))


def accumulates(layer: LayerLike) -> bool:
    """True when ``layer`` sums products with a weight matrix (a ``weight`` blob).

    These are the convolutions and inner products: each adds a float rounding per sum
    that grows with the path's depth, which the verifier's tolerance follows.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(bnfuse.example_path("prototxt"))
        >>> [layer.name for layer in net.layers if accumulates(layer)]
        ['conv1', 'conv2', 'fc']
    """
    spec = SPECS.get(layer.type)
    if spec is None or spec.weights is None:
        return False
    return any(blob.role == "weight" for blob in weight_layout(layer))


#: More blobs than any BatchNorm dialect has (the probe bound of :func:`blob_counts`).
_MAX_NORM_BLOBS = 8


@functools.cache
def _dialect_counts(layer_type: str) -> tuple[int, ...]:
    # The count of a BatchNorm-like layer is what tells its dialect, so every count that
    # some dialect of the type has may be loaded; detect (with no fields written, and with
    # PSPNet named, which a 4-blob BN without fields leaves open) says which counts those
    # are. Fields that contradict the count make an unknown dialect, reported, not refused.
    return tuple(sorted({
        n for n in range(1, _MAX_NORM_BLOBS) for choice in (None, "pspnet")
        if detect(layer_type, None, n, bn_dialect=choice).roles
    }))


def blob_counts(layer: LayerLike) -> tuple[int, ...] | None:
    """The blob counts a caffemodel may hold for ``layer`` (None: a type bnfuse does not know).

    Decided by the params alone, so the loader can check a caffemodel before reading it.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''
        ... layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        ...         inner_product_param { num_output: 4 bias_term: false } }
        ... layer { name: "bn" type: "BatchNorm" bottom: "y" top: "y" }
        ... layer { name: "p" type: "Proposal" bottom: "y" top: "z" }
        ... ''')
        >>> [blob_counts(layer) for layer in net.layers]  # BVLC's 3 or NVIDIA's 5
        [(1,), (3, 5), None]
    """
    if layer.type not in SPECS:
        return None
    if layer.type in NORM_TYPES:
        return _dialect_counts(layer.type)
    return (len(weight_layout(layer, blob_count=0)),)


def squeeze_legacy(shape: Sequence[int], rank: int) -> Shape:
    """Drop the leading 1s a legacy 4-D blob (num, channels, height, width) pads ``rank`` to.

    Example:
        >>> squeeze_legacy((1, 1, 10, 20), 2), squeeze_legacy((1, 1, 1, 1), 0)
        ((10, 20), ())
    """
    squeezed = list(shape)
    while len(squeezed) > rank and squeezed[0] == 1:
        squeezed.pop(0)
    return tuple(squeezed)


def legacy_shape(
    layer: LayerLike, index: int, shape: Sequence[int], *, blob_count: int | None = None
) -> Shape:
    """The axes blob ``index``, stored with Caffe's legacy 4-D dims, has in the layout.

    A blob whose rank depends on the bottoms keeps its 4 dims.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "fc" type: "InnerProduct" bottom: "x"
        ...   top: "y" inner_product_param { num_output: 3 } }''')
        >>> legacy_shape(net.layer("fc"), 0, (1, 1, 3, 12)), legacy_shape(net.layer("fc"), 1,
        ...                                                                (1, 1, 1, 3))
        ((3, 12), (3,))
    """
    layout = _known_layout(layer, blob_count)
    if index >= len(layout) or not layout[index].rank_known:
        return tuple(shape)
    return squeeze_legacy(shape, len(layout[index].shape))


def _known_layout(layer: LayerLike, blob_count: int | None = None) -> list[Blob]:
    """The params-only layout, or nothing when bnfuse cannot read it.

    That is a type bnfuse does not know, or a BatchNorm field :func:`detect` cannot read:
    the blobs are then loaded as they are, and whoever needs the dialect (the fold,
    ``inspect``) reports why.
    """
    try:
        return weight_layout(layer, blob_count=blob_count)
    except BnfuseError:
        return []


def weight_mismatch(layer: LayerLike) -> str | None:
    """Why ``layer``'s blobs do not fit the shapes its params determine (None: they fit).

    Axes that depend on the bottom shapes (``?`` in the message, ``...`` for axes whose
    number does) are not checked here; the executor checks them. Nothing is checked for
    a type bnfuse does not know.

    Example:
        >>> import numpy as np, bnfuse
        >>> net = bnfuse.load(b'''layer { name: "fc" type: "InnerProduct" bottom: "x"
        ...   top: "y" inner_product_param { num_output: 3 } }''')
        >>> net.set_blobs(net.layer("fc"), [np.zeros((3, 5)), np.zeros(4)])
        >>> weight_mismatch(net.layer("fc"))
        'blob 1 (bias) should have shape (3,), the caffemodel has (4,)'
    """
    for index, (want, blob) in enumerate(zip(_known_layout(layer), layer.blobs, strict=False)):
        shape = tuple(int(d) for d in np.shape(blob))
        if not want.fits(shape):
            return (f"blob {index} ({want.role}) should have shape {want.shape_text}, "
                    f"the caffemodel has {shape}")
    return None


#: The largest spatial extent :func:`implied_bottom` tries.
_MAX_PROBE_SPATIAL = 1024


def _exact_layout(layer: LayerLike, bottom: Shape) -> list[Shape] | None:
    try:
        shapes = [blob.resolved for blob in weight_layout(layer, [bottom])]
    except BnfuseError:
        return None
    return None if any(s is None for s in shapes) else [s for s in shapes if s is not None]


def _channels_fitting(
    layer: LayerLike, actual: list[Shape], probe: Callable[[int], Shape], start: int
) -> int | None:
    """The channel count ``c`` whose layout at ``probe(c)`` gives ``actual``.

    Every layout axis is an affine function of the channel count (``c``, ``c / group``,
    ``c · H · W``), so two evaluations give it; 1 when no axis depends on it.
    """
    low, high = _exact_layout(layer, probe(start)), _exact_layout(layer, probe(2 * start))
    if low is None or high is None or [len(s) for s in low] != [len(s) for s in actual]:
        return None
    for lows, highs, wanted in zip(low, high, actual, strict=True):
        for lo, hi, want in zip(lows, highs, wanted, strict=True):
            if hi != lo:
                slope = Fraction(hi - lo, start)
                channels = (want - lo) / slope + start
                return int(channels) if channels.denominator == 1 and channels > 0 else None
    return 1


def _bottom_of_rank(layer: LayerLike, actual: list[Shape], start: int, *, batch: int, rank: int,
                    spatial: int) -> Shape | None:
    size = spatial
    while size <= _MAX_PROBE_SPATIAL:
        def probe(channels: int, size: int = size) -> Shape:
            return (batch, channels, *(size,) * (rank - 2))

        low = _exact_layout(layer, probe(start))
        if low is not None:
            wider = _exact_layout(layer, (batch, start, *(2 * size,) * (rank - 2)))
            if rank > 2 and wider != low:
                return None  # the spatial extent trades against the channels: not implied
            channels = _channels_fitting(layer, actual, probe, start)
            if channels is not None and _exact_layout(layer, probe(channels)) == actual:
                return probe(channels)
        size *= 2
    return None


def implied_bottom(layer: LayerLike, *, batch: int, spatial: int) -> Shape | None:
    """A shape of bottom 0 that ``layer``'s blobs fit exactly, or None when none is found.

    The channels come from the weights; the batch is ``batch`` and every spatial axis is
    ``spatial`` (doubled until the layer accepts it). Shapes with 2 spatial axes are tried
    first, then none, 1 and 3; a shape with spatial axes only when the weights do not
    depend on their extent (an inner product's do: it gets ``(batch, K)``). Used to shape
    an input no layer before it could.

    Example:
        >>> import numpy as np, bnfuse
        >>> net = bnfuse.load(b'''layer { name: "conv" type: "Convolution" bottom: "x"
        ...   top: "y" convolution_param { num_output: 6 kernel_size: 11 group: 2 } }''')
        >>> net.set_blobs(net.layer("conv"), [np.zeros((6, 4, 11, 11)), np.zeros(6)])
        >>> implied_bottom(net.layer("conv"), batch=2, spatial=8)  # 8 is below the kernel
        (2, 8, 16, 16)
    """
    actual = [tuple(int(d) for d in np.shape(blob)) for blob in layer.blobs]
    if not actual:
        return None
    # A channel count to evaluate the layout at: the product of the blobs' extents is a
    # multiple of whatever they must divide (a convolution's group divides num_output).
    start = math.prod(d for shape in actual for d in shape if d > 0)
    for rank in (4, 2, 3, 5):
        found = _bottom_of_rank(layer, actual, start, batch=batch, rank=rank, spatial=spatial)
        if found is not None:
            return found
    return None


#: What a top of a layer holds, for a comparison: float values (the default), integer
#: indices stored as floats, or SSD detection rows ``[image, label, score, x0, y0, x1, y1]``.
TOP_KINDS = ("values", "indices", "detections")


def top_kind(layer: LayerLike, index: int) -> str:
    """What top number ``index`` of ``layer`` holds: one of :data:`TOP_KINDS`.

    Indices: the second top of MAX pooling (the arg-max mask SegNet's Upsample reads) and
    the tops of ``ArgMax`` without ``out_max_val`` (with it, the top holds the maximum
    values, alone or interleaved with their indices, and compares as values). Detections:
    the top of ``DetectionOutput``, whose rows NMS may emit in another order.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''
        ... layer { name: "pool" type: "Pooling" bottom: "x" top: "p" top: "mask"
        ...         pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
        ... layer { name: "arg" type: "ArgMax" bottom: "p" top: "cls" }
        ... layer { name: "det" type: "DetectionOutput" bottom: "p" top: "out" }
        ... ''')
        >>> [top_kind(net.layer("pool"), i) for i in (0, 1)]
        ['values', 'indices']
        >>> top_kind(net.layer("arg"), 0), top_kind(net.layer("det"), 0)
        ('indices', 'detections')
    """
    from bnfuse import proto

    if layer.type == "Pooling" and index == 1:
        pooling = layer.param.pooling_param
        if pooling.pool == proto.PoolingParameter.MAX:
            return "indices"
    if layer.type == "ArgMax" and not layer.param.argmax_param.out_max_val:
        return "indices"
    if layer.type == "DetectionOutput" and index == 0:
        return "detections"
    return "values"


__all__ = [
    "CONV_TYPES",
    "DEPTHWISE_TYPES",
    "NORM_TYPES",
    "SPECS",
    "TOP_KINDS",
    "Blob",
    "Dim",
    "LayerLike",
    "LayerSpec",
    "Layout",
    "Shape",
    "ShapeRule",
    "accumulates",
    "blob_counts",
    "executable",
    "has_weights",
    "implied_bottom",
    "legacy_shape",
    "spec_of",
    "squeeze_legacy",
    "top_kind",
    "weight_layout",
    "weight_mismatch",
]
