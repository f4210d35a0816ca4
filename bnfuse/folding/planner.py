"""Decide which folds are exact on a net, and say why the others are not.

The planner knows layers and the blob graph, never bytes. It finds *chains* of
per-channel affine layers (a BatchNorm flavour, then optionally a Scale, then
optionally a Bias, each reading only the previous one's output) and picks, for
each chain, the first exact option:

1. fold into the producer (Convolution, depthwise types, Deconvolution,
   InnerProduct) when the producer's output feeds the chain alone;
2. fold forward into the readers when every reader is a zero-padded
   Convolution or an InnerProduct;
3. merge the chain into one ``Scale`` layer with bias;
4. otherwise keep it, with the reason in the report.

Example:
    >>> import bnfuse
    >>> from bnfuse.folding.planner import plan
    >>> net = bnfuse.load(b'''
    ... layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }
    ... layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x"
    ...         batch_norm_param { use_global_stats: false } }
    ... ''')
    >>> [action.kind for action in plan(net, structural=True)]
    ['skipped']
    >>> print(plan(net, structural=True)[0].reason)  # doctest: +NORMALIZE_WHITESPACE
    use_global_stats is false: BatchNorm normalises with the batch statistics
    (force_global_stats=True folds it with the stored statistics)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bnfuse._text import quote_user_text
from bnfuse.errors import BnfuseError
from bnfuse.folding import arith, float32, variants
from bnfuse.folding.affine import layer_affine, scale_bias_problem
from bnfuse.graph import Graph, build_graph
from bnfuse.layertypes.batchnorm import NORM_TYPES, Dialect, detect_layer
from bnfuse.net import CONV_TYPES, Layer, Net

#: Producers whose output channels a per-channel affine map can be folded into.
PRODUCER_TYPES = CONV_TYPES | {"Deconvolution", "InnerProduct"}

FOLD_INTO_PRODUCER = "folded_into_producer"
FOLD_FORWARD = "folded_forward"
MERGE_TO_SCALE = "merged_into_scale"
SKIPPED = "skipped"
KEPT = "kept"


@dataclass
class Action:
    """One decision of the planner.

    ``kind`` is one of ``folded_into_producer``, ``folded_forward``,
    ``merged_into_scale``, ``skipped`` (a fold was not exact: ``reason`` says
    why and the layers stay as they are) or ``kept`` (already minimal, e.g. a
    lone Scale with no foldable neighbour). ``chain`` names the affine layers,
    ``target`` the layer(s) that absorb them.
    """

    kind: str
    chain: list[str]
    target: list[str] = field(default_factory=list)
    reason: str = ""
    # Not part of the report: what the rewrite needs (layers by identity, not by name,
    # since Caffe tolerates duplicate layer names).
    affine: arith.Affine | None = field(default=None, repr=False)
    chain_layers: list[Layer] = field(default_factory=list, repr=False)
    target_layers: list[Layer] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready view of the action.

        Example:
            >>> Action("skipped", ["bn1"], reason="no weights").to_dict()
            {'kind': 'skipped', 'layers': ['bn1'], 'target': [], 'reason': 'no weights'}
        """
        return {"kind": self.kind, "layers": list(self.chain), "target": list(self.target),
                "reason": self.reason}


@dataclass
class FoldOptions:
    """Switches of :func:`plan` (see :func:`bnfuse.fold`)."""

    forward: bool = True
    merge_unfoldable: bool = True
    force_global_stats: bool = False


class _SkipError(Exception):
    """A chain cannot be rewritten at all; the message is the report's reason."""


def _norm_dialect(layer: Layer, options: FoldOptions, structural: bool) -> Dialect:
    """The layer's BatchNorm dialect, as :func:`~bnfuse.layertypes.batchnorm.detect` reads it."""
    dialect = detect_layer(layer, weights_loaded=not structural)
    return dialect.with_stored_statistics() if options.force_global_stats else dialect


def _layer_affine(layer: Layer, options: FoldOptions, structural: bool) -> arith.Affine | None:
    """The layer's map (:func:`~bnfuse.folding.affine.layer_affine`), or _SkipError with
    the reason it has none."""
    try:
        return layer_affine(layer, force_global_stats=options.force_global_stats,
                            structural=structural)
    except BnfuseError as exc:
        raise _SkipError(str(exc)) from None


def _shared_params(layer: Layer) -> str | None:
    names = [spec.name for spec in layer.param.param if spec.name]
    if names:
        return (f"the weights of {layer.name!r} are shared with other layers "
                f"(param name {names[0]!r}); changing them would change those layers too")
    return None


def _caffe_float32_problem(chain: Sequence[Layer], options: FoldOptions) -> str | None:
    """Why Caffe's own float32 evaluation of the chain is not finite, or ``None``.

    The float64 map may be finite where Caffe, computing layer by layer in float32,
    produces inf or NaN (a variance + eps that is 0 in float32, a ``1/factor`` that
    overflows, a Scale that overflows); folding would then change what the model
    computes. The probe (:class:`~bnfuse.folding.float32.Float32Probe`) replays Caffe's
    steps on the inputs 0 and 1; the reason names the layer, the step and the channel.
    """
    probe: float32.Float32Probe | None = None
    for layer in chain:
        blobs = [np.asarray(blob) for blob in layer.blobs]
        where = f"{layer.type} {quote_user_text(layer.name)}"
        try:
            if layer.type in NORM_TYPES:
                probe = variants.dialect_float32_probe(
                    _norm_dialect(layer, options, structural=False), blobs)
                continue
            if probe is None:
                probe = float32.Float32Probe.unit(int(blobs[0].size))
            if layer.type == "Scale":
                probe = float32.caffe_float32_scale(probe, blobs[0].reshape(-1),
                                                  blobs[1].reshape(-1) if len(blobs) > 1
                                                  else None)
            else:
                probe = float32.caffe_float32_bias(probe, blobs[0].reshape(-1))
        except BnfuseError as exc:
            return f"{where}: {exc}"
    return None


class _Planner:
    def __init__(self, net: Net, options: FoldOptions, structural: bool) -> None:
        self.net = net
        # Structure only (no caffemodel): decide on the graph, skip every numeric check.
        self.structural = structural
        self.layers = net.layers
        self.options = options
        self.graph: Graph = build_graph(self.layers)
        self.used: set[int] = set()
        # Layers that absorbed a forward fold: their output channels are untouched, so
        # they may still absorb the chain that follows them (one run reaches the fixed
        # point; the rewrite composes the two folds through its overlay).
        self.forward_targets: set[int] = set()

    # --- chain discovery ------------------------------------------------------

    def _sole_reader(self, index: int) -> int | None:
        """The one layer reading ``index``'s only top, if exactly one does and it is no output."""
        layer = self.layers[index]
        if len(layer.tops) != 1:
            return None
        version = self.graph.writes[index][0]
        readers = self.graph.readers(version)
        if len(readers) != 1 or self.graph.is_output(version):
            return None
        return readers[0]

    def _chain(self, start: int) -> tuple[list[int], list[str]]:
        """Indices of the affine chain starting at ``start`` and notes on where it stopped."""
        chain = [start]
        notes: list[str] = []
        allowed = ["Scale", "Bias"] if self.layers[start].type in NORM_TYPES else \
            (["Bias"] if self.layers[start].type == "Scale" else [])
        while allowed:
            nxt = self._sole_reader(chain[-1])
            if nxt is None or nxt in self.used or self.layers[nxt].type not in allowed:
                break
            problem = scale_bias_problem(self.layers[nxt], structural=self.structural)
            if problem is not None:
                notes.append(problem)
                break
            chain.append(nxt)
            allowed = allowed[allowed.index(self.layers[nxt].type) + 1:]
        return chain, notes

    # --- options -------------------------------------------------------------

    def _producer_problem(self, chain: list[int],
                          affine: arith.Affine | None) -> tuple[int | None, str]:
        first = self.layers[chain[0]]
        version = self.graph.reads[chain[0]][0]
        producer_index = self.graph.producer(version)
        if producer_index is None:
            return None, f"{first.name!r} reads the net input {first.bottoms[0]!r}"
        producer = self.layers[producer_index]
        if producer.type not in PRODUCER_TYPES:
            return None, f"its producer {producer.name!r} is a {producer.type}, not a linear layer"
        if producer_index in self.used and producer_index not in self.forward_targets:
            return None, f"its producer {producer.name!r} is already rewritten by another fold"
        if len(producer.bottoms) != 1 or len(producer.tops) != 1:
            return None, f"producer {producer.name!r} has several bottoms or tops"
        if not producer.blobs and not self.structural:
            return None, f"producer {producer.name!r} has no weights in the caffemodel"
        others = [self.layers[i].name for i in self.graph.readers(version) if i != chain[0]]
        if others:
            return None, (f"the output of {producer.name!r} is also read by {others[0]!r}, which "
                          "needs the unnormalised values")
        if self.graph.is_output(version):
            return None, f"the output of {producer.name!r} is a net output"
        shared = _shared_params(producer)
        if shared:
            return None, shared
        if producer.type == "InnerProduct":
            axis = producer.param.inner_product_param.axis
            count = producer.param.inner_product_param.num_output
        else:
            axis = producer.param.convolution_param.axis
            count = producer.param.convolution_param.num_output
        if axis != 1:
            return None, f"producer {producer.name!r} writes its outputs on axis {axis}, not 1"
        if affine is not None and count != affine.channels:
            return None, (f"producer {producer.name!r} has {count} outputs but the chain has "
                          f"{affine.channels} channels")
        return producer_index, ""

    def _forward_problem(self, chain: list[int],
                         affine: arith.Affine | None) -> tuple[list[int], str]:
        last = chain[-1]
        version = self.graph.writes[last][0]
        if self.graph.is_output(version):
            return [], f"the output of {self.layers[last].name!r} is a net output"
        readers = self.graph.readers(version)
        if not readers:
            return [], "nothing reads its output"
        source_version = self.graph.reads[chain[0]][0]
        for index in readers:
            reader = self.layers[index]
            if index in self.used:
                return [], f"its reader {reader.name!r} is already rewritten by another fold"
            if reader.type not in ("Convolution", "InnerProduct"):
                return [], (f"its reader {reader.name!r} is a {reader.type}; forward folds need "
                            "every reader to be a Convolution or InnerProduct")
            if len(reader.bottoms) != 1 or (not reader.blobs and not self.structural):
                return [], f"reader {reader.name!r} has several bottoms or no weights"
            shared = _shared_params(reader)
            if shared:
                return [], shared
            if reader.type == "Convolution":
                conv = reader.param.convolution_param
                pads = [*conv.pad, conv.pad_h, conv.pad_w]
                if any(pads):
                    return [], (f"reader {reader.name!r} pads its input with zeros; after a "
                                "forward fold the padding would no longer be the normalised "
                                "zero, so the borders would change")
                if conv.axis != 1:
                    return [], f"reader {reader.name!r} convolves over axis {conv.axis}"
                if affine is not None and \
                        reader.blobs[0].shape[1] * (conv.group or 1) != affine.channels:
                    return [], f"reader {reader.name!r} expects another channel count"
            else:
                ip = reader.param.inner_product_param
                if ip.axis != 1:
                    return [], f"reader {reader.name!r} flattens from axis {ip.axis}, not 1"
                inputs = reader.blobs[0].shape[0 if ip.transpose else 1] if reader.blobs else 0
                if affine is not None and inputs % affine.channels:
                    return [], (f"reader {reader.name!r} has {inputs} inputs, not a multiple of "
                                f"{affine.channels} channels")
            # The reader will read the chain's input instead: nothing but the chain itself
            # (which goes away) may write that name between the chain and the reader.
            for later in self.graph.versions_of(source_version.name):
                writer = later.producer
                if later.version > source_version.version and writer is not None and \
                        writer < index and writer not in chain:
                    return [], (f"blob {source_version.name!r} is overwritten by "
                                f"{self.layers[writer].name!r} before {reader.name!r} reads it")
        return readers, ""

    # --- main loop -------------------------------------------------------------

    def run(self) -> list[Action]:
        actions: list[Action] = []
        for index, layer in enumerate(self.layers):
            if index in self.used:
                continue
            if layer.type in NORM_TYPES:
                actions.append(self._plan_chain(index))
            elif layer.type in ("Scale", "Bias"):
                problem = scale_bias_problem(layer, structural=self.structural)
                if problem is None:
                    actions.append(self._plan_chain(index))
                elif self._reads_norm(index):
                    actions.append(Action(SKIPPED, [layer.name], reason=problem))
        return actions

    def _reads_norm(self, index: int) -> bool:
        producer = self.graph.producer(self.graph.reads[index][0]) \
            if self.graph.reads[index] else None
        return producer is not None and self.layers[producer].type in NORM_TYPES

    def _plan_chain(self, start: int) -> Action:
        chain, notes = self._chain(start)
        layers = [self.layers[i] for i in chain]
        names = [layer.name for layer in layers]
        first = self.layers[start]
        try:
            affine = _layer_affine(first, self.options, self.structural)
            if affine is not None:
                for i in chain[1:]:
                    try:
                        after = _layer_affine(self.layers[i], self.options,
                                              structural=False)
                        assert after is not None  # only a structural reading gives None
                        affine = arith.compose(affine, after)
                    except _SkipError:
                        raise
                    except BnfuseError as exc:  # e.g. BatchNorm and Scale channel counts differ
                        raise _SkipError(f"{' + '.join(names)}: {exc}") from None
                problem = arith.affine_problem(affine) or _caffe_float32_problem(
                    [self.layers[i] for i in chain], self.options)
                if problem:
                    raise _SkipError(problem)
        except _SkipError as skip:
            self.used.update(chain)
            return Action(SKIPPED, names, reason=str(skip))
        self.used.update(chain)
        producer, why_not_producer = self._producer_problem(chain, affine)
        if producer is not None:
            self.used.add(producer)
            self.forward_targets.discard(producer)
            return Action(FOLD_INTO_PRODUCER, names, [self.layers[producer].name],
                          affine=affine, chain_layers=layers,
                          target_layers=[self.layers[producer]])
        reasons = [why_not_producer]
        if self.options.forward:
            readers, why_not_forward = self._forward_problem(chain, affine)
            if readers:
                self.used.update(readers)
                self.forward_targets.update(readers)
                return Action(FOLD_FORWARD, names, [self.layers[i].name for i in readers],
                              reason=f"not into its producer: {why_not_producer}",
                              affine=affine, chain_layers=layers,
                              target_layers=[self.layers[i] for i in readers])
            reasons.append(f"not forward: {why_not_forward}")
        reasons.extend(notes)
        reason = "; ".join(r for r in reasons if r)
        single_scale = len(chain) == 1 and first.type == "Scale"
        if self.options.merge_unfoldable and not single_scale:
            return Action(MERGE_TO_SCALE, names, [names[-1]], reason=reason, affine=affine,
                          chain_layers=layers)
        kind = KEPT if single_scale else SKIPPED
        if not self.options.merge_unfoldable and not single_scale:
            reason += "; merging into one Scale is turned off"
        return Action(kind, names, reason=reason)


def plan(net: Net, options: FoldOptions | None = None, *,
         structural: bool = False) -> list[Action]:
    """Return the fold decisions for ``net``, in layer order, without changing it.

    With ``structural=True`` (a net loaded without weights, as ``bnfuse
    inspect`` may do) the decisions use the graph and the params only; checks
    that need numbers (finite statistics, channel counts) are left out and the
    plan cannot be applied.

    Example: see the module docstring.
    """
    return _Planner(net, options or FoldOptions(), structural).run()


def layer_counts(layers: Sequence[Layer]) -> dict[str, int]:
    """Number of layers of each type, in first-seen order.

    Example:
        >>> from types import SimpleNamespace as L
        >>> layer_counts([L(type="Convolution"), L(type="ReLU"), L(type="Convolution")])
        {'Convolution': 2, 'ReLU': 1}
    """
    counts: dict[str, int] = {}
    for layer in layers:
        counts[layer.type] = counts.get(layer.type, 0) + 1
    return counts


__all__ = ["Action", "FoldOptions", "layer_counts", "plan"]
