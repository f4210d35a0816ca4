"""The ONNX graph builder: a loaded Caffe net as an ONNX model with Caffe's arithmetic.

Every layer is written with ONNX operators that compute what Caffe's TEST-phase CPU
layer computes; where ONNX's own operator differs from Caffe, the difference is built
explicitly:

- Pooling: Caffe's output size (ceil rounding by default, the forks' ``ceil_mode``
  read by :func:`bnfuse.layertypes.geometry.pool_geometry`) is reached by padding the
  input explicitly to the extent the windows cover (``-FLT_MAX`` for MAX, zeros for
  AVE) and pooling without padding. Caffe's AVE divisor is the window clipped to the
  padded extent; where it differs from ``kernel_h * kernel_w`` (windows overhanging the
  padding), the windows are summed by a depthwise convolution of ones and divided by a
  precomputed divisor map.
- BatchNorm of every dialect: the blob roles come from
  :func:`bnfuse.layertypes.batchnorm.detect_layer` (via the verifier's
  :func:`bnfuse.verification.norms.norm_dialect`, which refuses what cannot run); BVLC's
  stored statistics are multiplied by ``1/f`` in float32 as Caffe does, eps is the
  fork's own (clamped as the fork clamps it), and the result is one
  ``BatchNormalization`` (or ``Mul``/``Add`` for SegNet's inference map, or the batch
  statistics written out for ``use_global_stats: false``).
- Scale and Bias broadcast over ``axis``/``num_axes``; InnerProduct flattens from its
  ``axis`` and honours ``transpose``.
- Fork layers the executor runs are written with the fork's arithmetic: SegNet's mask
  and unpooling, PSPNet's ``Interp`` (its bilinear weights as two matrix products), SSD's
  ``Normalize`` and ``PriorBox`` (a constant: it depends on shapes only), ``Axpy``,
  ``ShuffleChannel``, ``ReLU6``, nearest ``Upsample``.

Blob names: Caffe lets layers write a name again (in place). ONNX values are assigned
once, so each write is a version (:mod:`bnfuse.graph`). The final version of a blob
keeps Caffe's name (so the outputs are named as in Caffe), and so does a net input;
earlier versions are named ``name#version`` (``#`` repeated until the name is free).
Helper values made inside a layer are named ``layer/what``.

This module imports ``onnx`` only inside :func:`export_graph`, and never
:mod:`bnfuse.folding`: the ONNX Runtime verification backend uses it to run nets.

Example:
    >>> import bnfuse
    >>> net = bnfuse.load(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
    >>> exported = export_graph(net)
    >>> exported.inputs, exported.outputs
    ({'data': (1, 3, 32, 32)}, ['prob'])
    >>> [n.op_type for n in exported.model.graph.node][:4]
    ['Conv', 'BatchNormalization', 'Mul', 'Add']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bnfuse._text import quote_user_text
from bnfuse.errors import BackendUnavailableError, BnfuseError, UnsupportedLayerError
from bnfuse.export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from bnfuse.graph import BlobVersion, build_graph
from bnfuse.io.guard import deferred_signals
from bnfuse.layertypes._base import DEPTHWISE_TYPES, LayerLike, NetLike, Shape
from bnfuse.layertypes._forks import (
    interp_geometry,
    normalize_config,
    permute_order,
    prior_box_config,
    refused_fork_field,
    relu6_slope,
    shuffle_groups,
    upsample_output,
)
from bnfuse.layertypes.batchnorm import BVLC_DEFAULT_EPS
from bnfuse.layertypes.geometry import (
    POOL_AVE,
    POOL_MAX,
    ROUND_CEIL,
    PoolGeometry,
    canonical_axis,
    concat_axis,
    conv_geometry,
    count,
    crop_offsets,
    pool_geometry,
    pooled_size,
    scale_operand_shape,
    slice_layout,
)
from bnfuse.layertypes.shapes import input_layer_shapes, is_input_layer, layer_output_shapes
from bnfuse.verification._forklayers import source_positions
from bnfuse.verification._ssd import prior_box_forward
from bnfuse.verification.layers import layer_weights
from bnfuse.verification.norms import norm_dialect

Array = npt.NDArray[Any]


_INSTALL = 'pip install "bnfuse[onnx]"'
#: Caffe seeds max pooling with -FLT_MAX: padding with it leaves every maximum unchanged.
_FLT_MIN = float(np.finfo(np.float32).min)
_F32 = np.dtype(np.float32)


def import_onnx() -> Any:
    """Import ``onnx``, or raise :class:`~bnfuse.errors.BackendUnavailableError` saying how.

    Example:
        >>> import_onnx().__name__
        'onnx'
    """
    try:
        # onnx starts a native thread when imported; made with SIGINT/SIGTERM/SIGHUP
        # blocked, it inherits that mask, so those signals keep reaching the main thread
        # and bnfuse's deferral around a commit's renames stays effective.
        with deferred_signals():
            import onnx
    except ImportError:
        raise BackendUnavailableError(f"ONNX export needs the onnx package: {_INSTALL}") from None
    return onnx


@dataclass(frozen=True)
class OnnxGraph:
    """An exported model and how its values relate to the Caffe net's blobs.

    ``inputs`` maps each graph input (a Caffe input blob) to its shape; ``outputs`` are
    the Caffe net's outputs, named as in Caffe; ``blob_values`` maps every Caffe blob name
    to the ONNX value holding its final version (the name itself, except for an input
    that layers rewrite in place).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
        >>> export_graph(net).blob_values["conv1"]
        'conv1'
    """

    model: Any
    inputs: dict[str, Shape]
    outputs: list[str]
    blob_values: dict[str, str]


def _where(layer: LayerLike) -> str:
    return f"layer {quote_user_text(layer.name)} (type {quote_user_text(layer.type, 60)})"


def _refuse(layer: LayerLike, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"{_where(layer)}: {why}; it cannot be exported to ONNX")


class _Builder:
    """Nodes, initializers and unique names of the graph being written."""

    def __init__(self, onnx: Any, opset: int, used: set[str]) -> None:
        self.onnx = onnx
        self.helper = onnx.helper
        self.opset = opset
        self.used = used
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._node_names: set[str] = set()

    def fresh(self, hint: str) -> str:
        name = hint
        while name in self.used:
            name += "#"
        self.used.add(name)
        return name

    def const(self, value: npt.ArrayLike, hint: str, dtype: npt.DTypeLike = np.float32) -> str:
        name = self.fresh(hint)
        array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def ints(self, values: Sequence[int], hint: str) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64), hint, np.int64)

    def node(self, op: str, inputs: Sequence[str], outputs: Sequence[str], layer: LayerLike,
             **attrs: Any) -> None:
        # Node names have their own namespace: the layer's name, then layer/op, made unique.
        name = layer.name if layer.name not in self._node_names else f"{layer.name}/{op}"
        while name in self._node_names:
            name += "#"
        self._node_names.add(name)
        self.nodes.append(self.helper.make_node(op, list(inputs), list(outputs), name=name,
                                                **attrs))

    def op(self, op: str, inputs: Sequence[str], layer: LayerLike, what: str,
           **attrs: Any) -> str:
        """One node with one output named ``layer/what``; return the output's name."""
        out = self.fresh(f"{layer.name}/{what}")
        self.node(op, inputs, [out], layer, **attrs)
        return out


@dataclass
class _Call:
    """What a layer's emitter gets: the layer, its bottoms and its tops (names, shapes)."""

    layer: LayerLike
    ins: list[str]
    in_shapes: list[Shape]
    outs: list[str]
    out_shapes: list[Shape]

    def weights(self) -> list[Array]:
        return layer_weights(self.layer, self.in_shapes, _F32)


Emitter = Callable[[_Builder, _Call], None]


# --------------------------------------------------------------------------- emitters


def _convolution(b: _Builder, c: _Call) -> None:
    layer = c.layer
    weights = c.weights()
    for x, shape, out in zip(c.ins, c.in_shapes, c.outs, strict=True):
        g = conv_geometry(layer, shape)
        if g.axis != 1:
            raise _refuse(layer, f"the channel axis is {g.axis}; ONNX convolves on axis 1")
        w = b.const(weights[0], f"{layer.name}/weight")
        inputs = [x, w]
        if len(weights) > 1:
            inputs.append(b.const(weights[1], f"{layer.name}/bias"))
        op = "ConvTranspose" if layer.type == "Deconvolution" else "Conv"
        b.node(op, inputs, [out], layer, kernel_shape=list(g.kernel), strides=list(g.stride),
               pads=list(g.pad) * 2, dilations=list(g.dilation), group=g.group)


def _inner_product(b: _Builder, c: _Call) -> None:
    layer = c.layer
    ip = layer.param.inner_product_param
    (shape,), (out_shape,) = c.in_shapes, c.out_shapes
    axis = canonical_axis(layer, int(ip.axis), len(shape))
    weights = c.weights()
    rows = c.ins[0]
    if len(shape) != 2 or axis != 1:
        rows = b.op("Flatten", [rows], layer, "rows", axis=axis)
    inputs = [rows, b.const(weights[0], f"{layer.name}/weight")]
    if len(weights) > 1:
        inputs.append(b.const(weights[1], f"{layer.name}/bias"))
    flat = (count(shape, 0, axis), int(ip.num_output))
    if flat == out_shape:
        b.node("Gemm", inputs, c.outs, layer, transB=0 if ip.transpose else 1)
        return
    y = b.op("Gemm", inputs, layer, "gemm", transB=0 if ip.transpose else 1)
    b.node("Reshape", [y, b.ints(out_shape, f"{layer.name}/shape")], c.outs, layer)


def _channel_shaped(values: Array, ndim: int) -> Array:
    """Per-channel values shaped to broadcast over axis 1 of an ``ndim``-D blob."""
    return values.reshape((-1,) + (1,) * max(0, ndim - 2))


def _batch_norm(b: _Builder, c: _Call) -> None:
    layer = c.layer
    dialect = norm_dialect(layer)
    c.weights()  # blob count and shapes, as Caffe would check them
    (x,), (shape,) = c.ins, c.in_shapes
    channels = shape[1] if len(shape) > 1 else 1
    if len(shape) < 2:
        raise _refuse(layer, f"its input {shape} has no channel axis")

    def role(name: str) -> Array:
        return np.asarray(layer.blobs[dialect.index(name)]).astype(_F32).reshape(-1)

    if dialect.statistics == "none":  # SegNet INFERENCE: scale * x + shift
        scaled = b.op("Mul", [x, b.const(_channel_shaped(role("scale"), len(shape)),
                                         f"{layer.name}/scale")], layer, "scaled")
        b.node("Add", [scaled, b.const(_channel_shaped(role("shift"), len(shape)),
                                       f"{layer.name}/shift")], c.outs, layer)
        return
    eps = float(BVLC_DEFAULT_EPS if dialect.eps is None else dialect.eps)
    scale = role("scale") if dialect.has("scale") else np.ones(channels, _F32)
    shift = role("shift") if dialect.has("shift") else np.zeros(channels, _F32)
    if dialect.statistics == "batch":
        _batch_statistics_norm(b, c, eps, (scale, shift) if dialect.has("scale") else None)
        return
    if dialect.has("factor"):
        factor = np.asarray(layer.blobs[dialect.index("factor")]).astype(_F32).reshape(-1)
        if factor.size != 1:
            raise _refuse(layer, f"the factor blob holds {factor.size} values, not 1")
        # Caffe's rule: statistics times 1/f in float32; a zero factor zeroes them.
        k = np.float32(0) if factor[0] == 0 else np.float32(1) / factor[0]
        mean, var = role("mean") * k, role("variance") * k
    else:
        mean, var = role("mean"), role("variance")
    b.node("BatchNormalization",
           [x, b.const(scale, f"{layer.name}/scale"), b.const(shift, f"{layer.name}/shift"),
            b.const(mean, f"{layer.name}/mean"), b.const(var, f"{layer.name}/variance")],
           c.outs, layer, epsilon=eps)


def _reduce(b: _Builder, op: str, x: str, axes: list[int], *, layer: LayerLike,
            what: str) -> str:
    """A reduction keeping its axes (axes an attribute before opset 18, an input from 18)."""
    if b.opset >= 18:
        return b.op(op, [x, b.ints(axes, f"{layer.name}/axes")], layer, what, keepdims=1)
    return b.op(op, [x], layer, what, axes=axes, keepdims=1)


def _batch_statistics_norm(b: _Builder, c: _Call, eps: float, affine: tuple[Array, Array] | None
                           ) -> None:
    """BVLC BatchNorm with ``use_global_stats: false``: the batch's own mean and variance."""
    layer = c.layer
    (x,), (shape,) = c.ins, c.in_shapes
    axes = [0, *range(2, len(shape))]
    mean = _reduce(b, "ReduceMean", x, axes, layer=layer, what="batch_mean")
    centred = b.op("Sub", [x, mean], layer, "centred")
    square = b.op("Mul", [centred, centred], layer, "square")
    var = _reduce(b, "ReduceMean", square, axes, layer=layer, what="batch_variance")
    padded = b.op("Add", [var, b.const(np.float32(eps), f"{layer.name}/eps")], layer, "var_eps")
    std = b.op("Sqrt", [padded], layer, "std")
    if affine is None:
        b.node("Div", [centred, std], c.outs, layer)
        return
    scale, shift = affine
    normed = b.op("Div", [centred, std], layer, "normed")
    scaled = b.op("Mul", [normed, b.const(_channel_shaped(scale, len(shape)),
                                          f"{layer.name}/scale")], layer, "scaled")
    b.node("Add", [scaled, b.const(_channel_shaped(shift, len(shape)), f"{layer.name}/shift")],
           c.outs, layer)


def _operand_shape(shape: Shape, axis: int, operand: Shape) -> Shape:
    """The operand of a Scale/Bias shaped for numpy-style broadcasting from ``axis``."""
    return tuple(operand) + (1,) * (len(shape) - axis - len(operand))


def _scale_or_bias(b: _Builder, c: _Call) -> None:
    layer = c.layer
    axis, operand = scale_operand_shape(layer, c.in_shapes)
    shape = c.in_shapes[0]
    target = _operand_shape(shape, axis, operand)
    weights = c.weights()
    if len(c.ins) > 1:
        factor = c.ins[1]
        if tuple(c.in_shapes[1]) != target:
            factor = b.op("Reshape", [factor, b.ints(target, f"{layer.name}/operand_shape")],
                          layer, "operand")
    else:
        factor = b.const(weights[0].reshape(target), f"{layer.name}/operand")
    if layer.type == "Bias":
        b.node("Add", [c.ins[0], factor], c.outs, layer)
        return
    if not layer.param.scale_param.bias_term:
        b.node("Mul", [c.ins[0], factor], c.outs, layer)
        return
    scaled = b.op("Mul", [c.ins[0], factor], layer, "scaled")
    bias = b.const(weights[-1].reshape(target), f"{layer.name}/bias")
    b.node("Add", [scaled, bias], c.outs, layer)


def _relu(b: _Builder, c: _Call) -> None:
    slope = float(c.layer.param.relu_param.negative_slope)
    if slope == 0:
        b.node("Relu", c.ins, c.outs, c.layer)
    else:
        b.node("LeakyRelu", c.ins, c.outs, c.layer, alpha=slope)


def _prelu(b: _Builder, c: _Call) -> None:
    (slope,) = c.weights()
    shape = c.in_shapes[0]
    operand = slope.reshape(()) if slope.size == 1 and slope.ndim == 0 else \
        _channel_shaped(slope, len(shape)) if len(shape) > 1 else slope.reshape(-1)
    b.node("PRelu", [c.ins[0], b.const(operand, f"{c.layer.name}/slope")], c.outs, c.layer)


def _simple(op: str) -> Emitter:
    def emit(b: _Builder, c: _Call) -> None:
        b.node(op, c.ins[:1], c.outs, c.layer)

    return emit


def _elu(b: _Builder, c: _Call) -> None:
    b.node("Elu", c.ins, c.outs, c.layer, alpha=float(c.layer.param.elu_param.alpha))


def _power(b: _Builder, c: _Call) -> None:
    layer = c.layer
    pp = layer.param.power_param
    power, scale, shift = (np.float32(v) for v in (pp.power, pp.scale, pp.shift))
    (x,), (shape,) = c.ins, c.in_shapes
    if power * scale == 0:
        # Caffe's shortcut: the output does not depend on x at all.
        value = np.float32(1) if power == 0 else np.power(shift, power)
        b.node("Expand", [b.const(value, f"{layer.name}/value"),
                          b.ints(shape, f"{layer.name}/shape")], c.outs, layer)
        return
    steps: list[tuple[str, np.float32, str]] = []
    if scale != 1:
        steps.append(("Mul", scale, "scale"))
    if shift != 0:
        steps.append(("Add", shift, "shift"))
    if power != 1:
        steps.append(("Pow", power, "power"))
    if not steps:
        b.node("Identity", [x], c.outs, layer)
        return
    for i, (op, value, what) in enumerate(steps):
        operand = b.const(value, f"{layer.name}/{what}")
        if i == len(steps) - 1:
            b.node(op, [x, operand], c.outs, layer)
        else:
            x = b.op(op, [x, operand], layer, what + "d")


def _exp(b: _Builder, c: _Call) -> None:
    layer = c.layer
    ep = layer.param.exp_param
    base, scale, shift = float(ep.base), float(ep.scale), float(ep.shift)
    if base != -1 and base <= 0:
        raise _refuse(layer, f"base must be -1 (e) or > 0, got {base}")
    log_base = 1.0 if base == -1 else float(np.log(base))
    inner = np.float32(log_base * scale)
    outer = np.float32(1.0 if shift == 0 else np.exp(shift) if base == -1 else base**shift)
    x = c.ins[0]
    if inner != 1:
        x = b.op("Mul", [x, b.const(inner, f"{layer.name}/inner")], layer, "inner")
    if outer == 1:
        b.node("Exp", [x], c.outs, layer)
        return
    y = b.op("Exp", [x], layer, "exp")
    b.node("Mul", [y, b.const(outer, f"{layer.name}/outer")], c.outs, layer)


def _log(b: _Builder, c: _Call) -> None:
    layer = c.layer
    lp = layer.param.log_param
    base, scale, shift = float(lp.base), float(lp.scale), float(lp.shift)
    if base != -1 and base <= 0:
        raise _refuse(layer, f"base must be -1 (e) or > 0, got {base}")
    base_scale = np.float32(1.0 if base == -1 else 1.0 / float(np.log(base)))
    x = c.ins[0]
    if scale != 1:
        x = b.op("Mul", [x, b.const(np.float32(scale), f"{layer.name}/scale")], layer, "scaled")
    if shift != 0:
        x = b.op("Add", [x, b.const(np.float32(shift), f"{layer.name}/shift")], layer, "shifted")
    if base_scale == 1:
        b.node("Log", [x], c.outs, layer)
        return
    y = b.op("Log", [x], layer, "ln")
    b.node("Mul", [y, b.const(base_scale, f"{layer.name}/base_scale")], c.outs, layer)


def _clip(b: _Builder, c: _Call) -> None:
    cp = c.layer.param.clip_param
    lo = b.const(np.float32(cp.min), f"{c.layer.name}/min")
    hi = b.const(np.float32(cp.max), f"{c.layer.name}/max")
    b.node("Clip", [c.ins[0], lo, hi], c.outs, c.layer)


def _threshold(b: _Builder, c: _Call) -> None:
    layer = c.layer
    t = b.const(np.float32(layer.param.threshold_param.threshold), f"{layer.name}/threshold")
    above = b.op("Greater", [c.ins[0], t], layer, "above")
    b.node("Cast", [above], c.outs, layer, to=b.onnx.TensorProto.FLOAT)


def _swish(b: _Builder, c: _Call) -> None:
    layer = c.layer
    beta = np.float32(layer.param.swish_param.beta)
    x = c.ins[0]
    scaled = x if beta == 1 else b.op("Mul", [x, b.const(beta, f"{layer.name}/beta")], layer,
                                      "scaled")
    gate = b.op("Sigmoid", [scaled], layer, "gate")
    b.node("Mul", [x, gate], c.outs, layer)


def _identity(b: _Builder, c: _Call) -> None:
    for out in c.outs:
        b.node("Identity", c.ins[:1], [out], c.layer)


def pool_divisors(g: PoolGeometry, height: int, width: int) -> Array:
    """Caffe's AVE divisor per output position: the window clipped to the padded extent.

    Example:
        >>> g = PoolGeometry(POOL_AVE, (3, 3), (2, 2), (1, 1), (4, 4))
        >>> pool_divisors(g, 6, 6)  # the last windows overhang the padding by one
        array([[9., 9., 9., 6.],
               [9., 9., 9., 6.],
               [9., 9., 9., 6.],
               [6., 6., 6., 4.]], dtype=float32)
    """
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = g.kernel, g.stride, g.pad, g.output
    hstart = np.arange(oh) * sh - ph
    wstart = np.arange(ow) * sw - pw
    size_h = np.minimum(hstart + kh, height + ph) - hstart
    size_w = np.minimum(wstart + kw, width + pw) - wstart
    return (size_h[:, None] * size_w[None, :]).astype(np.float32)


def _pool(b: _Builder, layer: LayerLike, value: tuple[str, Shape], g: PoolGeometry,
          outs: Sequence[str]) -> None:
    """Caffe's 2-D pooling of ``value`` (name, shape) into ``outs[0]`` (module docstring)."""
    x, shape = value
    _, channels, height, width = shape
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = g.kernel, g.stride, g.pad, g.output
    is_max = g.method == POOL_MAX
    if (kh, kw) == (height, width) and (oh, ow) == (1, 1) and (ph, pw) == (0, 0):
        b.node("GlobalMaxPool" if is_max else "GlobalAveragePool", [x], outs, layer)
        return
    # Pad to the extent every window covers; the windows then lie inside the padded input.
    ext_h = max((oh - 1) * sh + kh, ph + height)
    ext_w = max((ow - 1) * sw + kw, pw + width)
    end_h, end_w = ext_h - ph - height, ext_w - pw - width
    padded = x
    if ph or pw or end_h or end_w:
        fill = b.const(np.float32(_FLT_MIN if is_max else 0.0), f"{layer.name}/fill")
        pads = b.ints([0, 0, ph, pw, 0, 0, end_h, end_w], f"{layer.name}/pads")
        padded = b.op("Pad", [x, pads, fill], layer, "padded", mode="constant")
    window = {"kernel_shape": [kh, kw], "strides": [sh, sw]}
    if is_max:
        b.node("MaxPool", [padded], outs, layer, **window)
        return
    divisors = pool_divisors(g, height, width)
    if bool((divisors == kh * kw).all()):
        b.node("AveragePool", [padded], outs, layer, **window)
        return
    # Windows overhanging the padding: sum them exactly, divide by Caffe's clipped size.
    ones = b.const(np.ones((channels, 1, kh, kw), np.float32), f"{layer.name}/ones")
    total = b.op("Conv", [padded, ones], layer, "window_sum", group=channels, **window)
    b.node("Div", [total, b.const(divisors.reshape(1, 1, oh, ow), f"{layer.name}/divisor")],
           outs, layer)


def _pooling(b: _Builder, c: _Call) -> None:
    layer = c.layer
    g = pool_geometry(layer, c.in_shapes[0])
    if len(c.outs) == 1:
        _pool(b, layer, (c.ins[0], c.in_shapes[0]), g, c.outs)
        return
    if g.method != POOL_MAX:
        raise _refuse(layer, "only MAX pooling has a mask top")
    _pool_with_mask(b, layer, (c.ins[0], c.in_shapes[0]), g, c.outs)


def _pool_with_mask(b: _Builder, layer: LayerLike, value: tuple[str, Shape], g: PoolGeometry,
                    outs: Sequence[str]) -> None:
    """MAX pooling and Caffe's mask: the index ``h * W + w`` of each window's maximum.

    ONNX's ``MaxPool`` gives the maximum's index in the flattened padded input; the
    position inside the image follows from it (ties go to the first maximum in both).
    """
    x, (_, _, height, width) = value
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = g.kernel, g.stride, g.pad, g.output
    ext_h = max((oh - 1) * sh + kh, ph + height)
    ext_w = max((ow - 1) * sw + kw, pw + width)
    fill = b.const(np.float32(_FLT_MIN), f"{layer.name}/fill")
    pads = b.ints([0, 0, ph, pw, 0, 0, ext_h - ph - height, ext_w - pw - width],
                  f"{layer.name}/pads")
    padded = b.op("Pad", [x, pads, fill], layer, "padded", mode="constant")
    flat = b.fresh(f"{layer.name}/argmax")
    b.node("MaxPool", [padded], [outs[0], flat], layer, kernel_shape=[kh, kw],
           strides=[sh, sw])

    def const(v: int, what: str) -> str:
        return b.const(np.int64(v), f"{layer.name}/{what}", np.int64)

    in_plane = b.op("Mod", [flat, const(ext_h * ext_w, "plane")], layer, "in_plane")
    row = b.op("Div", [in_plane, const(ext_w, "padded_width")], layer, "padded_row")
    col = b.op("Mod", [in_plane, const(ext_w, "padded_width#")], layer, "padded_col")
    image_row = b.op("Sub", [row, const(ph, "pad_h")], layer, "row")
    image_col = b.op("Sub", [col, const(pw, "pad_w")], layer, "col")
    offset = b.op("Mul", [image_row, const(width, "width")], layer, "row_offset")
    index = b.op("Add", [offset, image_col], layer, "index")
    b.node("Cast", [index], [outs[1]], layer, to=b.onnx.TensorProto.FLOAT)


def _lrn(b: _Builder, c: _Call) -> None:
    layer = c.layer
    lp = layer.param.lrn_param
    size = int(lp.local_size)
    alpha, beta = float(lp.alpha), float(lp.beta)
    (x,), (shape,) = c.ins, c.in_shapes
    if int(lp.norm_region) == 0:  # ACROSS_CHANNELS: ONNX's LRN is Caffe's formula
        if size % 2 == 0:
            raise _refuse(layer, f"local_size {size} is even; Caffe's LRN needs it odd")
        b.node("LRN", [x], c.outs, layer, size=size, alpha=alpha, beta=beta, bias=float(lp.k))
        return
    if len(shape) != 4:
        raise _refuse(layer, f"WITHIN_CHANNEL LRN needs a 4-D input, got {shape}")
    # WITHIN_CHANNEL: x * (1 + alpha * avepool(x^2))^-beta, as Caffe chains it (k unused).
    pre_pad = (size - 1) // 2
    out_hw = (pooled_size(shape[2], size, 1, pre_pad, ROUND_CEIL),
              pooled_size(shape[3], size, 1, pre_pad, ROUND_CEIL))
    g = PoolGeometry(POOL_AVE, (size, size), (1, 1), (pre_pad, pre_pad), out_hw)
    square = b.op("Mul", [x, x], layer, "square")
    pooled = b.fresh(f"{layer.name}/pooled")
    _pool(b, layer, (square, shape), g, [pooled])
    scaled = b.op("Mul", [pooled, b.const(np.float32(alpha), f"{layer.name}/alpha")], layer,
                  "scaled")
    base = b.op("Add", [scaled, b.const(np.float32(1), f"{layer.name}/one")], layer, "base")
    factor = b.op("Pow", [base, b.const(np.float32(-beta), f"{layer.name}/beta")], layer,
                  "factor")
    b.node("Mul", [x, factor], c.outs, layer)


def _chain(b: _Builder, c: _Call, op: str, terms: Sequence[str]) -> None:
    """``terms[0] op terms[1] op ...`` left to right, as Caffe accumulates."""
    if len(terms) == 1:
        b.node("Identity", terms, c.outs, c.layer)
        return
    acc = terms[0]
    for i, term in enumerate(terms[1:], start=2):
        if i == len(terms):
            b.node(op, [acc, term], c.outs, c.layer)
        else:
            acc = b.op(op, [acc, term], c.layer, f"{op.lower()}{i}")


def _eltwise(b: _Builder, c: _Call) -> None:
    layer = c.layer
    ep = layer.param.eltwise_param
    operation = int(ep.operation)
    if operation == 0:
        _chain(b, c, "Mul", c.ins)
    elif operation == 1:
        coeffs = [float(v) for v in ep.coeff] or [1.0] * len(c.ins)
        if len(coeffs) != len(c.ins):
            raise _refuse(layer, f"{len(coeffs)} coefficients for {len(c.ins)} bottoms")
        terms = [x if k == 1 else b.op("Mul", [x, b.const(np.float32(k), f"{layer.name}/coeff")],
                                       layer, f"term{i}")
                 for i, (x, k) in enumerate(zip(c.ins, coeffs, strict=True))]
        _chain(b, c, "Add", terms)
    elif operation == 2:
        _chain(b, c, "Max", c.ins)
    else:
        raise _refuse(layer, f"unknown eltwise operation {operation}")


def _concat(b: _Builder, c: _Call) -> None:
    axis = concat_axis(c.layer, len(c.in_shapes[0]))
    b.node("Concat", c.ins, c.outs, c.layer, axis=axis)


def _slice(b: _Builder, c: _Call) -> None:
    axis, sizes = slice_layout(c.layer, c.in_shapes[0])
    if len(c.outs) == 1:
        b.node("Identity", c.ins, c.outs, c.layer)
        return
    b.node("Split", [c.ins[0], b.ints(sizes, f"{c.layer.name}/sizes")], c.outs, c.layer,
           axis=axis)


def _reshaped(b: _Builder, c: _Call) -> None:
    b.node("Reshape", [c.ins[0], b.ints(c.out_shapes[0], f"{c.layer.name}/shape")], c.outs,
           c.layer)


def _crop(b: _Builder, c: _Call) -> None:
    layer = c.layer
    shape, reference = c.in_shapes
    offsets = crop_offsets(layer, shape, reference)
    axis = canonical_axis(layer, int(layer.param.crop_param.axis), len(shape))
    axes = list(range(axis, len(shape)))
    starts = [offsets[i] for i in axes]
    ends = [offsets[i] + reference[i] for i in axes]
    b.node("Slice", [c.ins[0], b.ints(starts, f"{layer.name}/starts"),
                     b.ints(ends, f"{layer.name}/ends"), b.ints(axes, f"{layer.name}/axes")],
           c.outs, layer)


def _softmax(b: _Builder, c: _Call) -> None:
    axis = canonical_axis(c.layer, int(c.layer.param.softmax_param.axis), len(c.in_shapes[0]))
    b.node("Softmax", c.ins, c.outs, c.layer, axis=axis)


def _permute(b: _Builder, c: _Call) -> None:
    order = permute_order(c.layer, len(c.in_shapes[0]))
    b.node("Transpose", c.ins, c.outs, c.layer, perm=list(order))


# --------------------------------------------------------------------------- fork layers


def _relu6(b: _Builder, c: _Call) -> None:
    layer = c.layer
    slope = relu6_slope(layer)
    x = c.ins[0]
    if slope != 0:
        x = b.op("LeakyRelu", [x], layer, "leaky", alpha=slope)
        b.node("Min", [x, b.const(np.float32(6), f"{layer.name}/six")], c.outs, layer)
        return
    b.node("Clip", [x, b.const(np.float32(0), f"{layer.name}/zero"),
                    b.const(np.float32(6), f"{layer.name}/six")], c.outs, layer)


def _shuffle_channel(b: _Builder, c: _Call) -> None:
    layer = c.layer
    shape = c.in_shapes[0]
    n, channels = shape[0], shape[1]
    group = shuffle_groups(layer, channels)
    grouped = b.op("Reshape", [c.ins[0], b.ints((n, group, channels // group, -1),
                                                f"{layer.name}/grouped_shape")],
                   layer, "grouped")
    swapped = b.op("Transpose", [grouped], layer, "swapped", perm=[0, 2, 1, 3])
    b.node("Reshape", [swapped, b.ints(shape, f"{layer.name}/shape")], c.outs, layer)


def _axpy(b: _Builder, c: _Call) -> None:
    layer = c.layer
    a, x, y = c.ins
    a_shape, x_shape = c.in_shapes[0], c.in_shapes[1]
    target = (a_shape[0], a_shape[1], *([1] * (len(x_shape) - 2)))
    if tuple(a_shape) != target:
        a = b.op("Reshape", [a, b.ints(target, f"{layer.name}/a_shape")], layer, "a")
    scaled = b.op("Mul", [a, x], layer, "ax")
    b.node("Add", [scaled, y], c.outs, layer)


def _normalize(b: _Builder, c: _Call) -> None:
    layer = c.layer
    config = normalize_config(layer)
    (scale,) = c.weights()
    (x,), (shape,) = c.ins, c.in_shapes
    if len(shape) < 2:
        raise _refuse(layer, f"its input {shape} has no channel axis")
    axes = list(range(1, len(shape))) if config.across_spatial else [1]
    total = _reduce(b, "ReduceSumSquare", x, axes, layer=layer, what="sum_square")
    padded = b.op("Add", [total, b.const(np.float32(config.eps), f"{layer.name}/eps")], layer,
                  "sum_square_eps")
    norm = b.op("Sqrt", [padded], layer, "norm")
    if config.across_spatial:
        # Caffe multiplies by the reciprocal of the norm.
        inverse = b.op("Reciprocal", [norm], layer, "inverse")
        normed = b.op("Mul", [x, inverse], layer, "normed")
    else:
        normed = b.op("Div", [x, norm], layer, "normed")
    factor = scale.reshape(()) if scale.ndim == 0 else _channel_shaped(scale, len(shape))
    b.node("Mul", [normed, b.const(factor, f"{layer.name}/scale")], c.outs, layer)


def _prior_box(b: _Builder, c: _Call) -> None:
    # The priors depend on the two bottoms' shapes only: a constant of the exported graph.
    layer = c.layer
    feature, image = c.in_shapes
    priors = prior_box_forward(feature, image, prior_box_config(layer), _F32)
    tensor = b.onnx.numpy_helper.from_array(np.ascontiguousarray(priors, np.float32),
                                            f"{layer.name}/priors")
    b.node("Constant", [], c.outs, layer, value=tensor)


def _unpool(b: _Builder, c: _Call) -> None:
    """SegNet's unpooling: each value to the place its mask names in its own channel."""
    layer = c.layer
    n, channels, height, width = c.in_shapes[0]
    out_h, out_w = upsample_output(layer, c.in_shapes)
    # Caffe truncates the float mask to int; MaxUnpool indexes the flattened whole output.
    index = b.op("Cast", [c.ins[1]], layer, "mask_index", to=b.onnx.TensorProto.INT64)
    planes = np.arange(n * channels, dtype=np.int64).reshape(n, channels, 1, 1) * out_h * out_w
    flat = b.op("Add", [index, b.const(planes, f"{layer.name}/plane_offsets", np.int64)],
                layer, "flat_index")
    shape = b.ints((n, channels, out_h, out_w), f"{layer.name}/shape")
    b.node("MaxUnpool", [c.ins[0], flat, shape], c.outs, layer,
           kernel_shape=[max(1, out_h // height), max(1, out_w // width)])


def _upsample(b: _Builder, c: _Call) -> None:
    layer = c.layer
    if len(c.ins) != 1:
        _unpool(b, c)
        return
    n, channels, height, width = c.in_shapes[0]
    out_h, _ = upsample_output(layer, c.in_shapes)
    k = out_h // height
    # Nearest-neighbour by repetition: (N,C,H,1,W,1) broadcast to (N,C,H,k,W,k), exactly.
    spread = b.op("Reshape", [c.ins[0], b.ints((n, channels, height, 1, width, 1),
                                               f"{layer.name}/spread_shape")], layer, "spread")
    tiled = b.op("Expand", [spread, b.ints((n, channels, height, k, width, k),
                                           f"{layer.name}/tiled_shape")], layer, "tiled")
    b.node("Reshape", [tiled, b.ints(c.out_shapes[0], f"{layer.name}/shape")], c.outs, layer)


def _interp_matrix(size_in: int, size_out: int) -> Array:
    """``(size_out, size_in)`` weights of the fork's linear interpolation along one axis."""
    index, step, near, far = source_positions(size_in, size_out, _F32)
    matrix = np.zeros((size_out, size_in), np.float32)
    rows = np.arange(size_out)
    np.add.at(matrix, (rows, index), near)
    np.add.at(matrix, (rows, index + step), far)
    return matrix


def _interp(b: _Builder, c: _Call) -> None:
    """PSPNet's ``Interp``: crop, then the fork's bilinear weights as two matrix products.

    Each output is ``h0 * (w0 * a + w1 * b) + h1 * (w0 * c + w1 * d)`` as the fork sums it;
    the other terms of the products are exact zeros.
    """
    layer = c.layer
    g = interp_geometry(layer, c.in_shapes)
    x = c.ins[0]
    _, _, height, width = c.in_shapes[0]
    if (g.pad_beg, g.in_h, g.in_w) != (0, height, width):
        x = b.op("Slice", [x, b.ints([g.pad_beg] * 2, f"{layer.name}/starts"),
                           b.ints([g.pad_beg + g.in_h, g.pad_beg + g.in_w], f"{layer.name}/ends"),
                           b.ints([2, 3], f"{layer.name}/axes")], layer, "window")
    if (g.in_h, g.in_w) == (g.out_h, g.out_w):
        b.node("Identity", [x], c.outs, layer)
        return
    columns = b.const(_interp_matrix(g.in_w, g.out_w).T, f"{layer.name}/columns")
    along_w = b.op("MatMul", [x, columns], layer, "along_width")
    rows = b.const(_interp_matrix(g.in_h, g.out_h), f"{layer.name}/rows")
    b.node("MatMul", [rows, along_w], c.outs, layer)


_EMITTERS: dict[str, Emitter] = {
    "Convolution": _convolution,
    **{t: _convolution for t in DEPTHWISE_TYPES},
    "Deconvolution": _convolution,
    "InnerProduct": _inner_product,
    "BatchNorm": _batch_norm,
    "BN": _batch_norm,
    "CuDNNBatchNorm": _batch_norm,
    "Scale": _scale_or_bias,
    "Bias": _scale_or_bias,
    "ReLU": _relu,
    "PReLU": _prelu,
    "ELU": _elu,
    "Sigmoid": _simple("Sigmoid"),
    "TanH": _simple("Tanh"),
    "AbsVal": _simple("Abs"),
    "Power": _power,
    "Exp": _exp,
    "Log": _log,
    "Clip": _clip,
    "Threshold": _threshold,
    "Swish": _swish,
    "Dropout": _identity,
    "Split": _identity,
    "Pooling": _pooling,
    "LRN": _lrn,
    "Eltwise": _eltwise,
    "Concat": _concat,
    "Slice": _slice,
    "Flatten": _reshaped,
    "Reshape": _reshaped,
    "Crop": _crop,
    "Softmax": _softmax,
    "Permute": _permute,
    "ReLU6": _relu6,
    "ShuffleChannel": _shuffle_channel,
    "Axpy": _axpy,
    "Normalize": _normalize,
    "PriorBox": _prior_box,
    "Upsample": _upsample,
    "Interp": _interp,
}

#: Every layer type the exporter writes (``Input`` and data layers become graph inputs).
EXPORTABLE_TYPES = frozenset({"Input", *_EMITTERS})


def unexportable_types(net: NetLike) -> list[str]:
    """The layer types of ``net`` the exporter cannot write, sorted (input layers pass).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''
        ... layer { name: "r" type: "Reorg" bottom: "x" top: "y" }
        ... layer { name: "d" type: "DetectionOutput" bottom: "y" bottom: "x" bottom: "x"
        ...         top: "z" }
        ... layer { name: "s" type: "Sigmoid" bottom: "z" top: "z" }''')
        >>> unexportable_types(net)
        ['DetectionOutput', 'Reorg']
    """
    return sorted({layer.type for layer in net.layers
                   if not is_input_layer(layer) and layer.type not in _EMITTERS})


# --------------------------------------------------------------------------- the graph


def _value_names(net: NetLike, graph_inputs: set[str]) -> tuple[dict[BlobVersion, str],
                                                                dict[str, str]]:
    """ONNX names of every blob version, and each Caffe name's final version's name."""
    graph = build_graph(net.layers)
    versions: list[BlobVersion] = []
    for i in range(len(net.layers)):
        versions.extend(graph.reads[i])
        versions.extend(graph.writes[i])
    final: dict[str, BlobVersion] = {}
    for v in versions:
        if v.name not in final or v.version > final[v.name].version:
            final[v.name] = v
    used = {v.name for v in versions}
    names: dict[BlobVersion, str] = {}

    def keeps_name(v: BlobVersion) -> bool:
        first_is_input = v.name in graph_inputs
        if first_is_input:
            return v.version == 0
        return v is final[v.name] or v == final[v.name]

    for v in dict.fromkeys(versions):
        if keeps_name(v):
            names[v] = v.name
    for v in dict.fromkeys(versions):
        if v not in names:
            candidate = f"{v.name}#{v.version}"
            while candidate in used:
                candidate += "#"
            used.add(candidate)
            names[v] = candidate
    return names, {name: names[v] for name, v in final.items()}


def export_graph(
    net: NetLike,
    *,
    opset: int = DEFAULT_OPSET,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    every_blob: bool = False,
    name: str | None = None,
) -> OnnxGraph:
    """Write ``net`` (as it is: no folding here) as an ONNX model in float32.

    ``input_shapes`` overrides the shapes the input layers declare and gives those the
    net leaves open. ``every_blob`` makes the final version of every Caffe blob a graph
    output too (what a verification run compares), not only the net's outputs.

    Raises :class:`~bnfuse.errors.UnsupportedLayerError` naming every layer type the net
    uses that the exporter cannot write (one error for all of them), or a layer whose
    configuration it cannot write; :class:`~bnfuse.errors.BackendUnavailableError` when
    ``onnx`` is not installed.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''
        ... layer { name: "data" type: "Input" top: "data"
        ...         input_param { shape { dim: 1 dim: 2 dim: 6 dim: 6 } } }
        ... layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
        ...         pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
        ... layer { name: "relu" type: "ReLU" bottom: "pool" top: "pool" }''')
        >>> exported = export_graph(net, opset=13)
        >>> [n.op_type for n in exported.model.graph.node]
        ['Pad', 'Conv', 'Div', 'Relu']
        >>> [o.name for o in exported.model.graph.output], exported.model.opset_import[0].version
        (['pool'], 13)
    """
    if not isinstance(opset, int) or isinstance(opset, bool):
        raise TypeError(f"export: opset must be an int, not {type(opset).__name__}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise BnfuseError(f"opset {opset} is not supported: bnfuse writes opsets {MIN_OPSET} "
                          f"to {MAX_OPSET}")
    missing = unexportable_types(net)
    if missing:
        training = any(t.endswith(("Loss", "Accuracy")) or t == "Silence" for t in missing)
        hint = ("; this is a train/val net: export its deploy form (bnfuse fold --deploy, "
                "bnfuse.deploy.to_deploy)" if training else "")
        raise UnsupportedLayerError(
            f"{getattr(net, 'prototxt_source', 'the net')}: layer types "
            f"{', '.join(quote_user_text(t, 60) for t in missing)} cannot be exported to "
            f"ONNX{hint}")
    onnx = import_onnx()
    helper = onnx.helper
    layers = list(net.layers)
    for layer in layers:
        field = refused_fork_field(layer)
        if field is not None:
            raise _refuse(layer, f"fork field {field} may change what the layer computes")
    stated = input_layer_shapes(layers, input_shapes, required=False)
    graph_inputs = {top for layer in layers if is_input_layer(layer) for top in layer.tops}
    graph = build_graph(layers)
    open_inputs = {v.name for reads in graph.reads for v in reads if v.producer is None}
    graph_inputs |= open_inputs
    names, blob_values = _value_names(net, graph_inputs)
    b = _Builder(onnx, opset, set(names.values()) | {v.name for v in names})
    shapes: dict[BlobVersion, Shape] = {}
    inputs: dict[str, Shape] = {}
    given = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}

    def input_shape(blob: str, layer: LayerLike | None) -> Shape:
        shape = stated.get(blob, given.get(blob))
        if shape is None:
            where = f"{_where(layer)}: " if layer is not None else ""
            raise BnfuseError(f"{where}the shape of input {quote_user_text(blob)} is not "
                              "stated; give it (input_shapes=, --input-shape)")
        return shape

    for index, layer in enumerate(layers):
        if is_input_layer(layer):
            for v in graph.writes[index]:
                if not graph.readers(v):
                    continue  # a top nobody reads (a data layer's label): no input of the model
                shapes[v] = inputs[names[v]] = input_shape(v.name, layer)
            continue
        for v in graph.reads[index]:
            if v.producer is None and v not in shapes:
                shapes[v] = inputs[names[v]] = input_shape(v.name, layer)
        in_shapes = [shapes[v] for v in graph.reads[index]]
        out_shapes = layer_output_shapes(layer, in_shapes)
        call = _Call(layer, [names[v] for v in graph.reads[index]], in_shapes,
                     [names[v] for v in graph.writes[index]], out_shapes)
        _EMITTERS[layer.type](b, call)
        shapes.update(zip(graph.writes[index], out_shapes, strict=True))
    produced = {names[v] for v in shapes}
    outputs = [names[v] for v in graph.outputs() if v in shapes and names[v] not in inputs]
    if every_blob:
        finals = [value for value in blob_values.values()
                  if value not in inputs and value in produced]
        outputs = list(dict.fromkeys([*outputs, *finals]))
    shape_of = {names[v]: shape for v, shape in shapes.items()}
    float32 = onnx.TensorProto.FLOAT

    def info(value: str) -> Any:
        return helper.make_tensor_value_info(value, float32, list(shape_of[value]))

    output_set = set(outputs)
    model_graph = helper.make_graph(
        b.nodes, name or "bnfuse",
        [info(value) for value in inputs],
        [info(value) for value in outputs],
        initializer=b.initializers,
        value_info=[info(value) for value in shape_of
                    if value not in inputs and value not in output_set],
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(model_graph, opset_imports=opsets,
                              ir_version=helper.find_min_ir_version_for(opsets),
                              producer_name="bnfuse")
    return OnnxGraph(model, inputs, [o for o in outputs if o in output_set],
                     {k: v for k, v in blob_values.items() if v in shape_of})


__all__ = [
    "DEFAULT_OPSET",
    "EXPORTABLE_TYPES",
    "MAX_OPSET",
    "MIN_OPSET",
    "OnnxGraph",
    "export_graph",
    "import_onnx",
    "pool_divisors",
    "unexportable_types",
]
