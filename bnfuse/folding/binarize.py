"""Binarize binary-weight layers: weights to exactly +1/-1, alpha into the affine chain.

For each binary-weight layer (a fork type of :mod:`bnfuse.layertypes.binary`, or a plain
Convolution/InnerProduct the caller declares binary-trained with a convention) the
result is a BVLC layer whose weights are ``sign(W)`` (float32 +1/-1, the dialect's sign
of 0) and a Scale (``bias_term: true``) holding ``alpha`` composed with the per-channel
affine chain that followed (BatchNorm, Scale, Bias): the chain is merged into one Scale
(a new Scale is inserted when nothing affine follows).
Alpha after the bias (``alpha * (x*B + b)``) keeps ``b`` in the layer and composes
``(alpha, 0)``; alpha before it (``x*(alpha B) + b``) moves ``b`` into the Scale's
shift, composing ``(alpha, b)``, and zeroes the layer's bias. BatchNorm is never folded
into a binarized layer (that would undo the +1/-1 weights).

Where a sign-like activation (``Signum``, ``BinActiv``) reads the merged Scale's top,
:func:`sign_thresholds` turns ``(scale, shift)`` into per-channel thresholds.

Example:
    >>> t = sign_thresholds(np.array([2.0, -1.0, 0.0], np.float32),
    ...                     np.array([-3.0, 1.0, -1.0], np.float32), zero_to=-1)
    >>> t.threshold.tolist(), t.polarity.tolist(), t.tie.tolist()
    ([1.5, 1.0, -inf], [1, -1, -1], [-1, -1, -1])
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

from bnfuse._checks import require_net, require_source
from bnfuse.errors import BnfuseError, UnsupportedLayerError
from bnfuse.folding.arith import (
    Affine,
    affine_from_bias,
    affine_from_scale,
    affine_problem,
    affine_to_scale_blobs,
    compose,
)
from bnfuse.folding.rewrite import chain_to_scale
from bnfuse.folding.variants import dialect_affine
from bnfuse.io.atomic import atomic_write
from bnfuse.layertypes.batchnorm import NORM_TYPES, detect_layer
from bnfuse.layertypes.binary import (
    BINARY_TYPES,
    OWN_BLOCKS,
    PLAIN_TYPE,
    SIGN_ACTIVATIONS,
    BinaryDialect,
    alpha_axes,
    binary_dialect,
)
from bnfuse.net import Destination, Layer, Net, Source, load, save

F32 = npt.NDArray[np.float32]

BIAS_NONE = "no bias"
BIAS_KEPT = "kept in the layer; alpha scales it in the Scale (alpha after bias)"
BIAS_MOVED = "moved into the Scale's shift; the layer's bias is 0 (alpha before bias)"


@dataclass(frozen=True)
class Thresholds:
    """Per-channel ``sign(scale*x + shift) == polarity * sign(x - threshold)``.

    ``tie`` is the output at ``x == threshold`` (the activation's sign of 0); a channel
    with scale 0 has threshold ``-inf`` and outputs ``polarity`` everywhere.

    Example: see the module docstring.
    """

    threshold: npt.NDArray[np.float64]
    polarity: npt.NDArray[np.int8]
    tie: npt.NDArray[np.int8]


def sign_thresholds(scale: F32, shift: F32, *, zero_to: int) -> Thresholds:
    """The thresholds of ``act(scale*x + shift)``, ``act`` = sign with ``act(0) = zero_to``.

    The threshold is ``-shift/scale`` rounded once to float64 (from the exact quotient).

    Example: see the module docstring.
    """
    threshold = np.empty(scale.size, np.float64)
    polarity = np.empty(scale.size, np.int8)
    tie = np.full(scale.size, zero_to, np.int8)
    for c, (a, b) in enumerate(zip(scale.tolist(), shift.tolist(), strict=True)):
        if a == 0:
            threshold[c] = -np.inf
            polarity[c] = 1 if b > 0 else -1 if b < 0 else zero_to
            tie[c] = polarity[c]
        else:
            threshold[c] = float(Fraction(-b) / Fraction(a))
            polarity[c] = 1 if a > 0 else -1
    return Thresholds(threshold, polarity, tie)


@dataclass
class BinarizedLayer:
    """What binarize did to one layer (``skipped`` is the reason it did nothing).

    Example:
        >>> BinarizedLayer("c", "BinaryConvolution", "kohuthonza").to_dict()["layer"]
        'c'
    """

    layer: str
    type: str
    convention: str
    alpha_min: float = float("nan")
    alpha_max: float = float("nan")
    bias: str = BIAS_NONE
    alpha_into: str = ""
    merged: list[str] = field(default_factory=list)
    thresholds_for: str | None = None
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "type": self.type, "convention": self.convention,
                "alpha_min": self.alpha_min, "alpha_max": self.alpha_max, "bias": self.bias,
                "alpha_into": self.alpha_into, "merged": list(self.merged),
                "thresholds_for": self.thresholds_for, "skipped": self.skipped}


@dataclass
class BinarizeReport:
    """Per binary layer, what :func:`binarize_net` did."""

    layers: list[BinarizedLayer]

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [entry.to_dict() for entry in self.layers]}

    def conventions(self) -> dict[str, str]:
        """The convention of every binary layer, by name (what a check runs them with)."""
        return {entry.layer: entry.convention for entry in self.layers}

    def declared(self) -> dict[str, str]:
        """Each plain layer declared binary-trained, with the binary type it was run as."""
        binary_of = {plain: binary for binary, plain in PLAIN_TYPE.items()}
        return {entry.layer: binary_of[entry.type] for entry in self.layers
                if entry.type in binary_of}


@dataclass
class BinarizeResult:
    """The binarized net, its report and the thresholds of sign activations (by the
    activation layer's name); :meth:`save` writes the files.

    Example:
        >>> import tempfile, pathlib
        >>> r = binarize_net(load(b'layer { name: "r" type: "ReLU" bottom: "x" top: "x" }'))
        >>> r.report.layers, r.thresholds
        ([], {})
    """

    net: Net
    report: BinarizeReport
    thresholds: dict[str, Thresholds]

    def save(self, prototxt: Destination, caffemodel: Destination | None = None, *,
             thresholds: Destination | None = None,
             check: Callable[[str, str], None] | None = None) -> None:
        """Write the net (:func:`bnfuse.save`, ``check`` is its) and, when asked, the
        thresholds sidecar (:func:`save_thresholds`)."""
        save(self.net, prototxt, caffemodel, check=check)
        if thresholds is not None:
            save_thresholds(self.net, self.thresholds, thresholds)


def thresholds_npz(thresholds: dict[str, Thresholds]) -> bytes:
    """The sidecar: per activation layer ``L``, arrays ``L/threshold`` (float64),
    ``L/polarity`` and ``L/tie`` (int8), in one ``.npz``."""
    arrays: dict[str, npt.NDArray[Any]] = {}
    for name, t in thresholds.items():
        arrays[f"{name}/threshold"] = t.threshold
        arrays[f"{name}/polarity"] = t.polarity
        arrays[f"{name}/tie"] = t.tie
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def save_thresholds(net: Net, thresholds: dict[str, Thresholds], dest: Destination) -> None:
    """Write the sidecar through bnfuse's guarded writer (never over an input file)."""
    inputs = [p for p in (net.prototxt_path, net.caffemodel_path) if p is not None]
    with atomic_write(dest, inputs=inputs) as out:
        out.write(thresholds_npz(thresholds))


# --------------------------------------------------------------------------- graph


_AFFINE_TYPES = (*sorted(NORM_TYPES), "Scale", "Bias")


def _readers(net: Net, blob: str) -> list[Layer]:
    return [layer for layer in net.layers if blob in layer.bottoms]


def _chain(net: Net, layer: Layer) -> list[Layer]:
    """The per-channel affine layers that directly follow ``layer``, consecutively, with
    nothing else reading a value in between."""
    chain: list[Layer] = []
    layers = net.layers
    position = net.index(layer) + 1
    current = layer.tops[0]
    while position < len(layers):
        nxt = layers[position]
        if nxt.type not in _AFFINE_TYPES or nxt.bottoms != (current,) or len(nxt.tops) != 1:
            break
        if current != nxt.tops[0] and any(r is not nxt for r in _readers(net, current)):
            break
        chain.append(nxt)
        current = nxt.tops[0]
        position += 1
    return chain


def _affine_of(layer: Layer, channels: int) -> Affine:
    blobs = [np.asarray(b) for b in layer.blobs]
    if layer.type in NORM_TYPES:
        return dialect_affine(detect_layer(layer, weights_loaded=True), blobs)
    p = layer.param.scale_param if layer.type == "Scale" else layer.param.bias_param
    if int(p.axis) != 1 or int(p.num_axes) != 1 or not blobs or blobs[0].size != channels:
        raise UnsupportedLayerError(f"layer {layer.name!r}: not a per-channel {layer.type}")
    if layer.type == "Scale":
        return affine_from_scale(blobs[0], blobs[1] if len(blobs) > 1 else None, channels)
    return affine_from_bias(blobs[0], channels)


def _fresh(net: Net, name: str, *, blobs: bool) -> str:
    """``name``, or ``name`` with underscores added, used by no blob (or layer) of ``net``."""
    taken = ({b for other in net.layers for b in (*other.tops, *other.bottoms)} if blobs
             else {other.name for other in net.layers})
    while name in taken:
        name += "_"
    return name


def _dialect(layer: Layer, convention: str | None) -> BinaryDialect:
    if layer.type in BINARY_TYPES:
        try:
            return binary_dialect(layer)
        except UnsupportedLayerError:
            if convention is None:
                raise
    return binary_dialect(layer, convention)


def _binarize_one(net: Net, layer: Layer, convention: str | None,
                  thresholds: dict[str, Thresholds]) -> BinarizedLayer:
    dialect = _dialect(layer, convention)
    entry = BinarizedLayer(layer.name, layer.type, dialect.name)
    if not layer.blobs:
        entry.skipped = "the layer has no weights (no caffemodel)"
        return entry
    weight = np.asarray(layer.blobs[0], np.float64)
    signs = np.where(weight > 0, 1.0, np.where(weight < 0, -1.0, float(dialect.zero_to)))
    alpha = np.abs(weight).mean(axis=alpha_axes(weight.ndim))
    bias = np.asarray(layer.blobs[1], np.float64).reshape(-1) if len(layer.blobs) > 1 else None
    entry.alpha_min, entry.alpha_max = float(alpha.min()), float(alpha.max())
    chain = _chain(net, layer)
    if bias is None:
        first = Affine(alpha, np.zeros_like(alpha))
    elif dialect.alpha_after_bias:
        first, entry.bias = Affine(alpha, np.zeros_like(alpha)), BIAS_KEPT
    else:
        first, entry.bias = Affine(alpha, bias), BIAS_MOVED
    total = first
    try:
        for link in chain:
            total = compose(total, _affine_of(link, alpha.size))
    except BnfuseError as exc:
        entry.skipped = f"the affine chain cannot be merged: {exc}"
        return entry
    problem = affine_problem(total)
    if problem is not None:
        entry.skipped = f"alpha composed with the chain: {problem}"
        return entry
    scale, shift = affine_to_scale_blobs(total, np.float32)
    scales = [link for link in chain if link.type == "Scale"]
    keeper = scales[0] if scales else chain[0] if chain else None
    entry.merged = [link.name for link in chain]
    new_bias = [] if bias is None else [
        (np.zeros(bias.size) if entry.bias == BIAS_MOVED else bias).astype(np.float32)
        .reshape(np.shape(layer.blobs[1]))]
    net.set_blobs(layer, [signs.astype(np.float32), *new_bias])
    if layer.type in BINARY_TYPES:
        block = OWN_BLOCKS.get(layer.type)
        if block is not None:
            net.clear_field(layer, block[0])
        net.set_type(layer, PLAIN_TYPE[layer.type])
    source = layer.tops[0]
    last_top = chain[-1].tops[0] if chain else source
    if source != last_top or keeper is None:
        # The +1/-1 output is a new value: a new name, so no one compares it with alpha's.
        fresh = _fresh(net, f"{source}_sign", blobs=True)
        net.set_top(layer, 0, fresh)
        source = fresh
    if keeper is None:
        # Nothing affine follows: a new Scale takes alpha (and the bias, if it moved).
        keeper = net.insert_layer_after(layer, [
            ("name", _fresh(net, f"{layer.name}_alpha", blobs=False)), ("type", "Scale"),
            ("bottom", source), ("top", last_top), ("scale_param", [("bias_term", True)])])
    entry.alpha_into = keeper.name
    net.set_blobs(keeper, [scale, shift])
    chain_to_scale(net, chain, keeper, source, last_top)
    readers = [r for r in _readers(net, last_top) if r is not keeper and r is not layer]
    if readers and readers[0].type in SIGN_ACTIVATIONS:
        act = SIGN_ACTIVATIONS[readers[0].type]
        thresholds[readers[0].name] = sign_thresholds(scale, shift, zero_to=act.zero_to)
        entry.thresholds_for = readers[0].name
    return entry


def binarize_net(net: Net, *, layers: Sequence[str] = (),
                 convention: str | None = None) -> BinarizeResult:
    """Binarize every fork binary layer of ``net`` and the plain ``layers`` (declared
    binary-trained, with ``convention``), in place.

    Example:
        >>> import numpy as np
        >>> net = load(b'''
        ... layer { name: "c" type: "Convolution" bottom: "x" top: "c"
        ...         convolution_param { num_output: 2 kernel_size: 1 bias_term: false } }
        ... layer { name: "s" type: "Scale" bottom: "c" top: "c" }''')
        >>> net.set_blobs(net.layer("c"), [np.array([[[[0.5]], [[-0.5]]], [[[2.0]], [[0.0]]]])])
        >>> net.set_blobs(net.layer("s"), [np.array([1.0, 3.0])])
        >>> r = binarize_net(net, layers=["c"], convention="zzqiuzz")
        >>> net.layer("c").blobs[0].ravel().tolist(), net.layer("s").blobs[0].tolist()
        ([1.0, -1.0, 1.0, 1.0], [0.5, 3.0])
    """
    require_net(net, "binarize_net")
    if isinstance(layers, (str, bytes)):
        raise TypeError("binarize_net: layers must be a list of layer names, not a string")
    for name in layers:
        layer = net.layer(name)
        if layer.type not in PLAIN_TYPE.values() and layer.type not in BINARY_TYPES:
            raise UnsupportedLayerError(f"binarize: layer {name!r} is a {layer.type}, not a "
                                        "Convolution or InnerProduct")
    if layers and convention is None:
        raise BnfuseError("binarize: layers declared binary-trained need a convention "
                          "(kohuthonza or zzqiuzz)")
    chosen = [layer for layer in net.layers
              if layer.type in BINARY_TYPES or layer.name in set(layers)]
    net._read_weights_privately(chosen)
    thresholds: dict[str, Thresholds] = {}
    entries = [_binarize_one(net, layer, convention, thresholds) for layer in chosen]
    return BinarizeResult(net, BinarizeReport(entries), thresholds)


def binarize(prototxt: Source, caffemodel: Source | None = None, *,
             layers: Sequence[str] = (), convention: str | None = None) -> BinarizeResult:
    """Load a net and binarize it; see :func:`binarize_net`.

    Example:
        >>> import bnfuse
        >>> binarize(bnfuse.example_path("prototxt")).report.layers  # no binary layers
        []
    """
    require_source(prototxt, "binarize", "prototxt")
    require_source(caffemodel, "binarize", "caffemodel", optional=True)
    return binarize_net(load(prototxt, caffemodel), layers=layers, convention=convention)


__all__ = ["BinarizeReport", "BinarizeResult", "BinarizedLayer", "Thresholds", "binarize",
           "binarize_net", "save_thresholds", "sign_thresholds", "thresholds_npz"]
