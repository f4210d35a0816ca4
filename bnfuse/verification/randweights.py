"""Realistic random weights for any prototxt, so folds can be tested without trained models.

Random weights are only useful for testing folds if the net behaves like a
trained one: activations neither explode nor vanish with depth, and every
BatchNorm sees statistics that match its input (a fold with wrong statistics is
invisible when every BatchNorm is the identity). So:

- Convolution, Deconvolution and InnerProduct weights are He-scaled normal
  (standard deviation ``sqrt(2 / fan_in)``; for a deconvolution the fan-in of
  an output is ``C_in/group * kernel / stride``); biases are small, N(0, 0.05).
- Scale: ``gamma`` uniform in [0.75, 1.25], ``beta`` N(0, 0.1); Bias N(0, 0.1);
  PReLU slopes uniform in [0.1, 0.3].
- BatchNorm statistics are **measured**: the net is run layer by layer with the
  numpy executor on a seeded standard-normal batch, and each BatchNorm gets the
  per-channel mean and (population) variance of its actual input, stored as
  Caffe does with a factor ``f`` (``[mean·f, var·f, [f]]``), ``f`` being
  ``0.999 · U(0.5, 2)`` per layer unless ``factor`` is given. With the same batch,
  every BatchNorm output then has per-channel mean 0 and variance
  ``var / (var + eps)``. The batch is drawn as ``executor.forward(net, seed=seed)``
  draws its inputs (``default_rng(seed).standard_normal`` per Input top, in order,
  at ``input_shapes`` when given), so a test can replay it. A channel with fewer
  than 2 values per batch (a BatchNorm after global pooling with batch 1) gets
  variance 1; a variance below 1% of the layer's median (dead channels) is
  raised to it, so another batch does not blow such channels up by ``1/sqrt(eps)``.

Layers the executor does not know (fork layers, Python layers) stop the
measurement for everything computed from their outputs. With
``unmeasurable="error"`` (the default) the first BatchNorm that cannot be measured
raises :class:`~bnfuse.errors.UnsupportedLayerError` naming the layer that blocks
it; with ``"unit"`` such BatchNorms get mean 0 and variance 1 (times the factor)
and everything that can still be shaped gets weights; a layer with weights whose
shape cannot be known raises in ``"error"`` mode and is left without weights in
``"unit"`` mode. Fork layers with weights of their own (SegNet ``BN``, ...) are
never filled: their blob layout is the fork's.

Example:
    >>> import bnfuse
    >>> from bnfuse.verification.executor import forward
    >>> from bnfuse.verification.randweights import random_weights
    >>> net = random_weights(bnfuse.example_path("prototxt"), seed=1)
    >>> [b.shape for b in net.layer("conv1/bn").blobs]
    [(16,), (16,), (1,)]
    >>> out = forward(net, seed=1)["conv2/bn"]  # replay the measurement batch
    >>> bool(abs(out.mean(axis=(0, 2, 3))).max() < 1e-4), round(float(out.var()), 2)
    (True, 1.0)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from bnfuse._checks import (
    require_destination,
    require_input_shapes,
    require_optional_number,
    require_seed,
    require_source,
)
from bnfuse._text import quote_user_text
from bnfuse.errors import BnfuseError, UnsupportedLayerError, naming_file
from bnfuse.layertypes import has_weights, weight_layout
from bnfuse.layertypes.batchnorm import NORM_TYPES, detect_layer
from bnfuse.layertypes.geometry import conv_geometry
from bnfuse.verification.budget import (
    MemoryBudgetError,
    check_budget,
    estimate_random_weights,
    format_size,
    resolve_max_memory,
)
from bnfuse.verification.norms import norm_blobs

if TYPE_CHECKING:
    from bnfuse.net import Layer, Net, Source

Array = npt.NDArray[Any]
Shape = tuple[int, ...]

BIAS_STD = 0.05
SCALE_GAMMA = (0.75, 1.25)
SCALE_BETA_STD = 0.1
PRELU_SLOPE = (0.1, 0.3)
FACTOR_RANGE = (0.5, 2.0)
#: A channel's variance is raised to at least this fraction of its layer's median.
VAR_FLOOR = 0.01


@dataclass
class _Single:
    """One layer seen as a net, so the executor can run it alone."""

    layers: list[Layer]


def _he(rng: np.random.Generator, shape: Shape, fan_in: float) -> Array:
    std = float(np.sqrt(2.0 / max(fan_in, 1.0)))
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _fan_in(layer: Layer, weight: Shape) -> float:
    """Inputs summed into one output value, for the He scale of a weight matrix."""
    if layer.type == "InnerProduct":
        transpose = bool(layer.param.inner_product_param.transpose)
        return float(weight[0] if transpose else weight[1])
    if layer.type == "Deconvolution":
        group = int(layer.param.convolution_param.group) or 1
        kernel = float(np.prod(weight[2:]))
        stride = 1.0
        try:
            probe = (1, weight[0], *([8] * (len(weight) - 2)))
            stride = float(np.prod(conv_geometry(layer, probe).stride))
        except BnfuseError:
            pass
        return weight[0] / group * kernel / stride
    return float(np.prod(weight[1:]))


def _weights_for(layer: Layer, shapes: list[Shape], rng: np.random.Generator) -> list[Array]:
    """Random (non-BatchNorm) weights of the given shapes for ``layer``, by blob role."""
    blobs = []
    for blob, shape in zip(weight_layout(layer), shapes, strict=True):
        if blob.role == "weight":
            blobs.append(_he(rng, shape, _fan_in(layer, shape)))
        elif blob.role == "bias":
            blobs.append((rng.standard_normal(shape) * BIAS_STD).astype(np.float32))
        elif blob.role == "scale":
            blobs.append(rng.uniform(*SCALE_GAMMA, size=shape).astype(np.float32))
        elif blob.role == "slope":
            blobs.append(rng.uniform(*PRELU_SLOPE, size=shape).astype(np.float32))
        else:  # shift (Scale, Bias) and anything else: small values around 0
            blobs.append((rng.standard_normal(shape) * SCALE_BETA_STD).astype(np.float32))
    return blobs


def random_weights(
    prototxt_or_net: Source | Net,
    *,
    seed: int = 0,
    factor: float | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    unmeasurable: Literal["error", "unit"] = "error",
    max_memory: int | None = None,
) -> Net:
    """Give every layer of a net realistic random weights (see the module docstring).

    ``prototxt_or_net`` is a prototxt (path, bytes, file) or a loaded Net, which is
    changed in place and returned. ``input_shapes`` overrides the Input layers'
    shapes for the measurement batch (e.g. a batch of 4). ``factor`` fixes the
    BatchNorm factor; by default it is random per layer. ``max_memory`` is the memory
    budget in bytes (default: half of the machine's memory): the memory the measurement
    run and the weights will take is estimated from the shapes first, and a
    :class:`~bnfuse.verification.budget.MemoryBudgetError` is raised above it.

    Example:
        >>> net = random_weights(b'''
        ... layer { name: "d" type: "Input" top: "d"
        ...         input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
        ... layer { name: "c" type: "Convolution" bottom: "d" top: "c"
        ...         convolution_param { num_output: 4 kernel_size: 3 } }
        ... layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }''', seed=0)
        >>> [tuple(b.shape) for b in net.layer("c").blobs]
        [(4, 3, 3, 3), (4,)]
    """
    from bnfuse.net import Net, load

    budget = _check_arguments(prototxt_or_net, seed=seed, factor=factor,
                              input_shapes=input_shapes, unmeasurable=unmeasurable,
                              max_memory=max_memory)
    net = prototxt_or_net if isinstance(prototxt_or_net, Net) else load(prototxt_or_net)
    try:
        with naming_file(net.prototxt_source):
            check_budget(estimate_random_weights(net, input_shapes), budget,
                         "making random weights (the measurement run and the weights)")
            return _fill(net, seed=seed, factor=factor, input_shapes=input_shapes,
                         unmeasurable=unmeasurable)
    except MemoryError:
        raise MemoryBudgetError(
            "making random weights ran out of memory although the estimate was within the "
            f"budget of {format_size(budget)}; lower --max-memory (max_memory=) to what this "
            "machine can spare") from None


def _check_arguments(prototxt_or_net: object, *, seed: object, factor: object,
                     input_shapes: object, unmeasurable: object, max_memory: object) -> int:
    """:func:`random_weights`' own argument checks; returns the memory budget."""
    from bnfuse.net import Net

    if not isinstance(prototxt_or_net, Net):
        require_source(prototxt_or_net, "random_weights", "prototxt_or_net")
    require_seed(seed, "random_weights")
    require_optional_number(factor, "random_weights", "factor")
    require_input_shapes(input_shapes, "random_weights")
    if unmeasurable not in ("error", "unit"):
        raise BnfuseError(f"random_weights: unmeasurable must be 'error' or 'unit', not "
                          f"{quote_user_text(unmeasurable, 40)}")
    return resolve_max_memory(max_memory, "random_weights")


def _fill(net: Net, *, seed: int, factor: float | None,
          input_shapes: Mapping[str, Sequence[int]] | None,
          unmeasurable: Literal["error", "unit"]) -> Net:
    """:func:`random_weights` once the arguments and the memory budget are checked."""
    from bnfuse.layertypes import executable
    from bnfuse.layertypes.shapes import (
        as_shapes,
        input_shape_error,
        is_input_layer,
        param_shapes,
    )
    from bnfuse.verification.executor import forward
    from bnfuse.verification.inputs import input_layer_shapes, seeded_inputs
    from bnfuse.verification.local import shape_walk

    # The measurement batch is drawn by the one input generator verify and the executor
    # use, so `forward(net, seed=seed)` replays it; the weights use their own stream.
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    given = as_shapes(input_shapes)
    declared = input_layer_shapes(net.layers, given, required=False)
    batch = seeded_inputs(declared, seed)
    # Each layer's bottoms as that layer sees them (a name-keyed map would give the last
    # shape of a blob that a layer changes in place, which Caffe refuses).
    bottoms_seen = list(shape_walk(net, given))
    # The last layer reading each blob, so values can be dropped once no one needs them.
    last_read: dict[str, int] = {}
    for index, layer in enumerate(net.layers):
        for name in layer.bottoms:
            last_read[name] = index
    values: dict[str, Array] = {}
    blocker: dict[str, str] = {}  # blob -> the unsupported layer its value depends on

    # An input whose shape the prototxt leaves open blocks what reads it, and in "error"
    # mode its own error is raised: it names the blob and the shape to pass.
    shape_errors: dict[str, UnsupportedLayerError] = {}

    def blocked_by(layer: Layer) -> str:
        for name in layer.bottoms:
            if name in blocker:
                return blocker[name]
        return f"{layer.name!r} ({layer.type})"

    def refuse(layer: Layer, message: str) -> UnsupportedLayerError:
        return shape_errors.get(blocked_by(layer), UnsupportedLayerError(message))

    for index, layer in enumerate(net.layers):
        if is_input_layer(layer):
            for top in layer.tops:
                if top in batch:
                    values[top] = batch[top]
                    blocker.pop(top, None)
                else:
                    reason = f"input {top!r} of unknown shape"
                    blocker[top] = reason
                    shape_errors[reason] = input_shape_error(
                        layer, top, _stated(layer, top))
            continue
        bottom_shapes = bottoms_seen[index]
        runnable = executable(layer.type) and all(n in values for n in layer.bottoms)
        if executable(layer.type) and all(s is not None for s in bottom_shapes):
            wanted = param_shapes(layer, [s for s in bottom_shapes if s is not None])
        elif executable(layer.type):
            wanted = None  # weights exist maybe, but their shape is unknown
        else:
            wanted = []  # a layer the verifier does not know: its weights are left alone
        if wanted is None:
            if unmeasurable == "error" and has_weights(layer):
                raise refuse(
                    layer, f"layer {layer.name!r} ({layer.type}): its input shape depends on "
                    f"layer {blocked_by(layer)}, which the numpy executor does not support; "
                    "pass unmeasurable='unit' to fill what can be shaped")
        elif layer.type in NORM_TYPES:
            dialect = detect_layer(layer, weights_loaded=False)
            f = 1.0
            if dialect.has("factor"):
                f = float(factor) if factor is not None else \
                    0.999 * float(rng.uniform(*FACTOR_RANGE))
            channels = int(wanted[0][1] if len(wanted[0]) == 4 else wanted[0][0])
            if runnable or unmeasurable == "unit":
                measured = values[layer.bottoms[0]] if runnable else None
                net.set_blobs(layer, norm_blobs(layer, measured, channels, factor=f,
                                                var_floor=VAR_FLOOR))
            else:
                raise refuse(
                    layer, f"cannot measure the statistics of {layer.type} {layer.name!r}: its "
                    f"input depends on layer {blocked_by(layer)}, which the numpy executor does "
                    "not support; pass unmeasurable='unit' for mean 0, variance 1")
        elif wanted:
            net.set_blobs(layer, _weights_for(layer, wanted, rng))
        out: dict[str, Array] | None = None
        if runnable:
            feed = {name: values[name] for name in layer.bottoms}
            try:
                out = forward(_Single([layer]), feed, dtype=np.float32)
            except UnsupportedLayerError:
                # A known type in a configuration the executor does not run (e.g. a
                # pooling mask top): what depends on it is blocked, like an unknown type.
                out = None
        if out is not None:
            for top in layer.tops:
                values[top] = out[top]
                blocker.pop(top, None)
        else:
            reason = blocked_by(layer)
            for top in layer.tops:
                values.pop(top, None)
                blocker[top] = reason
        for name in set(layer.bottoms) | set(layer.tops):
            if last_read.get(name, -1) <= index and name in values:
                # Keep net outputs' values only as long as needed: nothing reads them.
                del values[name]
    if shape_errors and not any(layer.blobs for layer in net.layers):
        # Even "unit" mode shaped nothing: the input shape is what is missing, say so.
        raise next(iter(shape_errors.values()))
    return net


def _stated(layer: Layer, top: str) -> tuple[int | None, ...] | None:
    """What the prototxt states of the shape of ``layer``'s ``top`` (for the error)."""
    from bnfuse.layertypes.datalayers import data_shapes, is_data_layer

    if not is_data_layer(layer):
        return None
    return data_shapes(layer)[layer.tops.index(top)]


def write_random_model(
    prototxt: str | os.PathLike[str],
    out_prototxt: str | os.PathLike[str],
    out_caffemodel: str | os.PathLike[str],
    *,
    seed: int = 0,
    factor: float | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    unmeasurable: Literal["error", "unit"] = "error",
    max_memory: int | None = None,
) -> Net:
    """Fill ``prototxt`` with :func:`random_weights` and write the net and its caffemodel.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import bnfuse
        >>> out = Path(tempfile.mkdtemp())
        >>> write_random_model(bnfuse.example_path("prototxt"), out / "r.prototxt",
        ...                    out / "r.caffemodel", seed=3)  # doctest: +ELLIPSIS
        <Net 'bnfuse_example': 12 layers from ...example.prototxt>
        >>> bnfuse.load(out / "r.prototxt", out / "r.caffemodel").layer("fc").blobs[0].shape
        (10, 8192)
    """
    from bnfuse.net import save

    require_destination(prototxt, "write_random_model", "prototxt")
    net = random_weights(Path(prototxt), seed=seed, factor=factor, input_shapes=input_shapes,
                         unmeasurable=unmeasurable, max_memory=max_memory)
    save(net, out_prototxt, out_caffemodel)
    return net


__all__ = ["random_weights", "write_random_model"]
