"""Apply the planner's decisions to a net, all or nothing.

:func:`apply` works in two phases. :func:`prepare` computes every new weight array
(the arithmetic is in :mod:`bnfuse.folding.arith`) without touching the net: a later
action that reads a layer an earlier one changes (a forward fold into a convolution
that then absorbs its own BatchNorm) sees the earlier result, exactly as if the
actions were applied one by one. Only when every action has succeeded does
:func:`commit` make the edits, through :class:`~bnfuse.net.Net` methods; those only
rename, retype and remove what ``prepare`` has already checked. A fold that fails
half way therefore leaves the net exactly as it was.

Example:
    >>> import bnfuse
    >>> from bnfuse.folding import planner
    >>> net = bnfuse.load(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
    >>> edits = prepare(net, planner.plan(net))
    >>> len(net), [edit.action.kind for edit in edits]  # nothing changed yet
    (12, ['folded_into_producer', 'folded_into_producer'])
    >>> commit(net, edits)
    >>> len(net)
    8
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from bnfuse.errors import BnfuseError, InternalError, ModelMismatchError, UnsupportedLayerError
from bnfuse.folding import arith
from bnfuse.folding.planner import (
    FOLD_FORWARD,
    FOLD_INTO_PRODUCER,
    MERGE_TO_SCALE,
    SKIPPED,
    Action,
)
from bnfuse.net import CONV_TYPES, Layer, Net

__all__ = ["Edit", "apply", "chain_to_scale", "commit", "prepare"]

Arrays = list[np.ndarray]
Op = Callable[[Net], None]


@dataclass
class Edit:
    """One action, computed: the new weights per layer and the edits still to make."""

    action: Action
    blobs: list[tuple[Layer, Arrays]] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    bias_added: set[int] = field(default_factory=set)


class _Overlay:
    """The weights as they will be once the prepared edits are committed.

    An edit being prepared sees its own new weights first, then those of the edits
    already prepared; it joins the overlay only when all of it has been computed, so an
    action skipped half way leaves nothing behind.
    """

    def __init__(self) -> None:
        self._blobs: dict[int, Sequence[np.ndarray]] = {}
        self._bias_added: set[int] = set()

    def blobs(self, edit: Edit, layer: Layer) -> Sequence[np.ndarray]:
        for target, blobs in reversed(edit.blobs):
            if target is layer:
                return blobs
        return self._blobs.get(id(layer), layer.blobs)

    def bias(self, edit: Edit, layer: Layer) -> np.ndarray | None:
        blobs = self.blobs(edit, layer)
        return blobs[1] if len(blobs) > 1 else None

    def ensure_bias_term(self, edit: Edit, layer: Layer) -> None:
        """Turn on ``bias_term`` for a layer that gains a bias blob, and give the new blob a
        ``param`` entry when the layer has one per blob (Caffe rejects more than blobs)."""
        key = id(layer)
        if len(self.blobs(edit, layer)) > 1 or key in self._bias_added or key in edit.bias_added:
            return
        edit.bias_added.add(key)
        group = "inner_product_param" if layer.type == "InnerProduct" else "convolution_param"
        edit.ops.append(lambda net: net.set_field(layer, (group, "bias_term"), True))
        if len(layer.param.param) == 1:
            edit.ops.append(lambda net: net.add_param_spec(layer, like=0))

    def absorb(self, edit: Edit) -> None:
        for layer, blobs in edit.blobs:
            self._blobs[id(layer)] = blobs
        self._bias_added |= edit.bias_added


def _fold_into_producer(overlay: _Overlay, edit: Edit) -> None:
    action = edit.action
    assert action.affine is not None
    producer = action.target_layers[0]
    chain = action.chain_layers
    weight, bias = overlay.blobs(edit, producer)[0], overlay.bias(edit, producer)
    if producer.type in CONV_TYPES:
        new = arith.fold_into_convolution(weight, bias, action.affine)
    elif producer.type == "Deconvolution":
        group = producer.param.convolution_param.group or 1
        new = arith.fold_into_deconvolution(weight, bias, action.affine, group)
    elif producer.type == "InnerProduct":
        transpose = producer.param.inner_product_param.transpose
        new = arith.fold_into_inner_product(weight, bias, action.affine, transpose)
    else:
        raise InternalError(f"the planner chose a {producer.type} as a fold target")
    overlay.ensure_bias_term(edit, producer)
    edit.blobs.append((producer, list(new)))
    last_top = chain[-1].tops[0]

    def rewire(net: Net) -> None:
        if producer.tops[0] != last_top:
            # Readers and net outputs keep the name the last folded layer published.
            net.set_top(producer, 0, last_top)
        for layer in chain:
            net.remove_layer(layer)

    edit.ops.append(rewire)


def _fold_forward(overlay: _Overlay, edit: Edit) -> None:
    action = edit.action
    assert action.affine is not None
    chain = action.chain_layers
    source = chain[0].bottoms[0]
    for reader in action.target_layers:
        weight, bias = overlay.blobs(edit, reader)[0], overlay.bias(edit, reader)
        if reader.type == "Convolution":
            group = reader.param.convolution_param.group or 1
            new = arith.fold_forward_into_convolution(weight, bias, action.affine, group)
        else:
            transpose = reader.param.inner_product_param.transpose
            inputs = weight.shape[0 if transpose else 1]
            new = arith.fold_forward_into_inner_product(
                weight, bias, action.affine, inputs // action.affine.channels, transpose)
        overlay.ensure_bias_term(edit, reader)
        edit.blobs.append((reader, list(new)))

    def rewire(net: Net) -> None:
        for reader in action.target_layers:
            if reader.bottoms[0] != source:
                net.set_bottom(reader, 0, source)
        for layer in chain:
            net.remove_layer(layer)

    edit.ops.append(rewire)


def _merge_to_scale(overlay: _Overlay, edit: Edit) -> None:
    action = edit.action
    assert action.affine is not None
    chain = action.chain_layers
    scales = [layer for layer in chain if layer.type == "Scale"]
    keeper = scales[0] if scales else chain[0]
    first = overlay.blobs(edit, chain[0])
    dtype = first[0].dtype if first else np.dtype(np.float32)
    # Checked cast: a map that does not fit the blobs' dtype (float16) is refused, not inf.
    scale, shift = arith.affine_to_scale_blobs(action.affine, dtype)
    edit.blobs.append((keeper, [scale, shift]))
    source = chain[0].bottoms[0]
    last_top = chain[-1].tops[0]

    def rewire(net: Net) -> None:
        chain_to_scale(net, chain, keeper, source, last_top)

    edit.ops.append(rewire)


def chain_to_scale(net: Net, chain: Sequence[Layer], keeper: Layer, source: str,
                   last_top: str) -> None:
    """Make ``keeper`` the one Scale (with bias) of ``chain`` from ``source`` to
    ``last_top``, and remove the chain's other layers; its blobs are set by the caller.

    A BatchNorm dialect with no Scale after it becomes the Scale itself.
    """
    if keeper.type != "Scale":
        for name in ("batch_norm_param", "bn_param"):
            net.clear_field(keeper, name)
        net.set_type(keeper, "Scale")
        net.set_param_spec_count(keeper, 2)
    if not keeper.param.scale_param.bias_term:
        net.set_field(keeper, ("scale_param", "bias_term"), True)
    if keeper.bottoms[0] != source:
        net.set_bottom(keeper, 0, source)
    if keeper.tops[0] != last_top:
        net.set_top(keeper, 0, last_top)
    for layer in chain:
        if layer is not keeper:
            net.remove_layer(layer)


_PREPARE: Mapping[str, Callable[[_Overlay, Edit], None]] = {
    FOLD_INTO_PRODUCER: _fold_into_producer,
    FOLD_FORWARD: _fold_forward,
    MERGE_TO_SCALE: _merge_to_scale,
}


def _where(net: Net) -> str:
    return net.weights.source if net.weights is not None else net.prototxt_source


def prepare(net: Net, actions: Sequence[Action]) -> list[Edit]:
    """Compute every rewriting action of a plan; the net is not changed.

    An action whose result cannot be stored (folded weights that overflow the blobs'
    dtype) becomes a skip with that reason, and the others go on. Any other error (a
    broken model) is raised with the file and the layers added, before anything is
    edited.
    """
    overlay = _Overlay()
    edits: list[Edit] = []
    for action in actions:
        handler = _PREPARE.get(action.kind)
        if handler is None:
            continue  # skips and kept layers change nothing
        for layer in [*action.chain_layers, *action.target_layers]:
            if layer.node is None:
                raise UnsupportedLayerError(
                    f"{net.prototxt_source}: layer {layer.name!r} comes from the net's input "
                    "fields and cannot be rewritten")
        edit = Edit(action)
        try:
            handler(overlay, edit)
        except UnsupportedLayerError as exc:
            action.kind, action.reason = SKIPPED, str(exc)
            action.target = []
            continue
        except ModelMismatchError as exc:
            # The arithmetic knows arrays only; the user needs the file and the layers.
            raise ModelMismatchError(
                f"{_where(net)}: cannot fold {' + '.join(action.chain)} into "
                f"{', '.join(action.target)}: {exc}") from None
        overlay.absorb(edit)
        edits.append(edit)
    return edits


def commit(net: Net, edits: Sequence[Edit]) -> None:
    """Make the edits :func:`prepare` computed (nothing here should fail on a prepared plan).

    Raises :class:`~bnfuse.errors.InternalError` if one does: that is a bug in bnfuse.
    """
    try:
        for edit in edits:
            for layer, blobs in edit.blobs:
                net._replace_blobs(layer, blobs)
            for op in edit.ops:
                op(net)
    except BnfuseError as exc:
        raise InternalError(f"applying a prepared fold failed: {exc}") from exc


def apply(net: Net, actions: Sequence[Action]) -> None:
    """Carry out every rewriting action of a plan on ``net``, all or nothing."""
    commit(net, prepare(net, actions))
