"""Apply the planner's decisions to a net.

Each function takes one :class:`~bnfuse.folding.planner.Action` and edits the net
through :class:`~bnfuse.net.Net` methods, so the text, the typed params and the
caffemodel records stay consistent. The arithmetic is delegated to
:mod:`bnfuse.folding.arith`; weights are read from the net at the time the action
is applied, so two folds that touch one layer (a forward fold into a
convolution that then absorbs its own BatchNorm) compose correctly.
"""

from __future__ import annotations

import numpy as np

from bnfuse.errors import BnfuseError, ModelMismatchError, UnsupportedLayerError
from bnfuse.folding import arith
from bnfuse.folding.planner import (
    FOLD_FORWARD,
    FOLD_INTO_PRODUCER,
    MERGE_TO_SCALE,
    Action,
)
from bnfuse.net import CONV_TYPES, Layer, Net


def _bias_of(layer: Layer) -> np.ndarray | None:
    return layer.blobs[1] if len(layer.blobs) > 1 else None


def _ensure_bias_term(net: Net, layer: Layer) -> None:
    """Turn on ``bias_term`` for a layer that gains a bias blob, keeping ``param`` consistent."""
    if len(layer.blobs) > 1:
        return
    group = "inner_product_param" if layer.type == "InnerProduct" else "convolution_param"
    net.set_field(layer, (group, "bias_term"), True)
    if len(layer.param.param) == 1:
        # One ParamSpec per existing blob: give the new bias blob one too.
        net.add_param_spec(layer, like=0)


def _fold_into_producer(net: Net, action: Action) -> None:
    assert action.affine is not None
    producer = action.target_layers[0]
    chain = action.chain_layers
    weight, bias = producer.blobs[0], _bias_of(producer)
    if producer.type in CONV_TYPES:
        new = arith.fold_into_convolution(weight, bias, action.affine)
    elif producer.type == "Deconvolution":
        group = producer.param.convolution_param.group or 1
        new = arith.fold_into_deconvolution(weight, bias, action.affine, group)
    elif producer.type == "InnerProduct":
        transpose = producer.param.inner_product_param.transpose
        new = arith.fold_into_inner_product(weight, bias, action.affine, transpose)
    else:  # the planner only picks the types above
        raise BnfuseError(f"internal: cannot fold into a {producer.type}")
    _ensure_bias_term(net, producer)
    net.set_blobs(producer, list(new))
    last_top = chain[-1].tops[0]
    if producer.tops[0] != last_top:
        # Readers and net outputs keep the name the last folded layer published.
        net.set_top(producer, 0, last_top)
    for layer in chain:
        net.remove_layer(layer)


def _fold_forward(net: Net, action: Action) -> None:
    assert action.affine is not None
    chain = action.chain_layers
    source = chain[0].bottoms[0]
    for reader in action.target_layers:
        weight, bias = reader.blobs[0], _bias_of(reader)
        if reader.type == "Convolution":
            group = reader.param.convolution_param.group or 1
            new = arith.fold_forward_into_convolution(weight, bias, action.affine, group)
        else:
            transpose = reader.param.inner_product_param.transpose
            inputs = weight.shape[0 if transpose else 1]
            new = arith.fold_forward_into_inner_product(
                weight, bias, action.affine, inputs // action.affine.channels, transpose)
        _ensure_bias_term(net, reader)
        net.set_blobs(reader, list(new))
        if reader.bottoms[0] != source:
            net.set_bottom(reader, 0, source)
    for layer in chain:
        net.remove_layer(layer)


def _merge_to_scale(net: Net, action: Action) -> None:
    assert action.affine is not None
    chain = action.chain_layers
    scales = [layer for layer in chain if layer.type == "Scale"]
    keeper = scales[0] if scales else chain[0]
    dtype = chain[0].blobs[0].dtype if chain[0].blobs else np.dtype(np.float32)
    if keeper.type != "Scale":
        # A BatchNorm flavour with no Scale after it becomes the Scale itself.
        for name in ("batch_norm_param", "bn_param"):
            net.clear_field(keeper, name)
        net.set_type(keeper, "Scale")
        net.set_param_spec_count(keeper, 2)
    if not keeper.param.scale_param.bias_term:
        net.set_field(keeper, ("scale_param", "bias_term"), True)
    net.set_blobs(keeper, [action.affine.scale.astype(dtype), action.affine.shift.astype(dtype)])
    source = chain[0].bottoms[0]
    if keeper.bottoms[0] != source:
        net.set_bottom(keeper, 0, source)
    last_top = chain[-1].tops[0]
    if keeper.tops[0] != last_top:
        net.set_top(keeper, 0, last_top)
    for layer in chain:
        if layer is not keeper:
            net.remove_layer(layer)


_APPLY = {
    FOLD_INTO_PRODUCER: _fold_into_producer,
    FOLD_FORWARD: _fold_forward,
    MERGE_TO_SCALE: _merge_to_scale,
}


def apply(net: Net, actions: list[Action]) -> None:
    """Carry out every rewriting action of a plan on ``net`` (skips are left alone)."""
    for action in actions:
        handler = _APPLY.get(action.kind)
        if handler is not None:
            try:
                handler(net, action)
            except (ModelMismatchError, UnsupportedLayerError) as exc:
                # The arithmetic knows arrays only; the user needs the file and the layers.
                source = net.weights.source if net.weights is not None else net.prototxt_source
                raise type(exc)(f"{source}: cannot fold {' + '.join(action.chain)} into "
                                f"{', '.join(action.target)}: {exc}") from None


__all__ = ["apply"]
