"""Blob shapes of a net, computed from the prototxt alone, the way Caffe's ``Reshape`` does.

Two public functions:

- :func:`infer_shapes` walks the layers in order and returns every blob's final shape
  without running any arithmetic (an in-place blob keeps its shape anyway).
- :func:`param_shapes` gives the weight blob shapes Caffe would create for one layer
  from its parameters and its bottom shapes (the layout of :data:`bnfuse.layertypes.SPECS`
  with every axis resolved); the random-weight generator fills it and the executor checks
  weights against it.

Each layer type's rule is the one the registry (:data:`bnfuse.layertypes.SPECS`) names.

Example:
    >>> import bnfuse
    >>> net = bnfuse.load(bnfuse.example_path("prototxt"))  # no weights needed
    >>> infer_shapes(net)["prob"]
    (1, 10)
    >>> param_shapes(net.layer("conv1"), [infer_shapes(net)["data"]])
    [(16, 3, 3, 3)]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from bnfuse._text import quote_user_text
from bnfuse.errors import ModelMismatchError, UnsupportedLayerError
from bnfuse.layertypes import implied_bottom, spec_of, weight_layout
from bnfuse.layertypes._base import LayerLike, NetLike, Shape, unsupported, where
from bnfuse.layertypes.datalayers import (
    CHANNELS_DECIDED_BY,
    DECIDED_BY,
    PartialShape,
    data_shapes,
    is_data_layer,
)
from bnfuse.layertypes.geometry import check_blob_shape


def as_shapes(shapes: Mapping[str, Sequence[int]] | None) -> dict[str, Shape]:
    """Given shapes by blob name as tuples of ints (None: none given).

    Example:
        >>> as_shapes({"data": [1, 3, 8, 8]}), as_shapes(None)
        ({'data': (1, 3, 8, 8)}, {})
    """
    return {k: tuple(int(d) for d in v) for k, v in (shapes or {}).items()}


def is_input_layer(layer: LayerLike) -> bool:
    """Whether the net is fed through ``layer``: an ``Input`` or a data layer
    (:func:`~bnfuse.layertypes.datalayers.is_data_layer`), whose tops verification feeds.

    Example:
        >>> from types import SimpleNamespace
        >>> [is_input_layer(SimpleNamespace(type=t, bottoms=())) for t in ("Input", "Data", "ReLU")]
        [True, True, False]
    """
    return layer.type == "Input" or is_data_layer(layer)


def _declared(layer: LayerLike) -> list[PartialShape | None]:
    if layer.type != "Input":
        return data_shapes(layer)
    declared = [tuple(int(d) for d in s.dim) for s in layer.param.input_param.shape]
    for shape in declared:
        check_blob_shape(layer, "the declared input", shape)
    n = len(layer.tops)
    if len(declared) == 1:
        return list(declared * n)
    if len(declared) != n:
        raise unsupported(layer, f"{len(declared)} input shapes for {n} tops (need 1 or {n})")
    return list(declared)


def _shown_partial(shape: PartialShape | None) -> str:
    """A shape to pass, with letters for the axes not known: ``(8, C, H, W)``."""
    if shape is None:
        return "(N, C, H, W)"
    letters = "NCHW" if len(shape) == 4 else "N" + "D" * len(shape)
    return "(" + ", ".join(str(d) if d is not None else letters[i]
                           for i, d in enumerate(shape)) + ("," if len(shape) == 1 else "") + ")"


def input_shape_error(layer: LayerLike, top: str,
                      shape: PartialShape | None) -> UnsupportedLayerError:
    """The one error for an input whose shape the prototxt does not state.

    It names the blob, why its shape is unknown, and what to pass: the API's
    ``input_shapes=`` keyword, which the command line shows as its ``--input-shape`` flag.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'layer { name: "d" type: "Data" top: "data" top: "label" '
        ...                   b'data_param { batch_size: 8 } }')
        >>> print(input_shape_error(net.layer("d"), "data", (8, None, None, None)))
        ... # doctest: +NORMALIZE_WHITESPACE
        cannot tell the shape of blob 'data' (top of layer 'd', Data): the database decides
        the image size unless transform_param sets crop_size; pass
        input_shapes={'data': (8, C, H, W)}
    """
    reason = DECIDED_BY.get(layer.type, "its shape is not stated")
    if shape is not None and len(shape) == 4 and shape[1] is None and None not in (
            shape[0], shape[2], shape[3]) and layer.type in ("Data", "AnnotatedData"):
        reason = CHANNELS_DECIDED_BY
    return UnsupportedLayerError(
        f"cannot tell the shape of blob {quote_user_text(top)} (top of layer "
        f"{quote_user_text(layer.name)}, {layer.type}): {reason}; pass "
        f"input_shapes={{{quote_user_text(top)}: {_shown_partial(shape)}}}",
        layer=layer.name)


def _complete(layer: LayerLike, top: str, shape: PartialShape | None,
              readers: Sequence[LayerLike]) -> Shape:
    """``shape`` with its unknown channel axis taken from the weights of a reader."""
    if shape is not None and None in shape and len(shape) == 4 and shape[1] is None \
            and None not in (shape[0], shape[2], shape[3]):
        for reader in readers:
            implied = implied_bottom(reader, batch=1, spatial=8) if reader.blobs else None
            if implied is not None and len(implied) == 4:
                return (int(shape[0] or 1), implied[1], int(shape[2] or 1), int(shape[3] or 1))
    if shape is None or None in shape:
        raise input_shape_error(layer, top, shape)
    return tuple(int(d) for d in shape if d is not None)


def input_shapes_of(layer: LayerLike, readers: Sequence[LayerLike] = ()) -> list[Shape]:
    """The shapes an ``Input`` layer declares, or a data layer's prototxt states, one per top.

    An axis a data layer does not state (the database decides it) is taken from the
    weights of a layer in ``readers`` that reads the top (the channels a convolution's
    kernel expects); otherwise :func:`input_shape_error` is raised.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(bnfuse.example_path("prototxt"))
        >>> input_shapes_of(net.layer("data"))
        [(1, 3, 32, 32)]
    """
    declared = _declared(layer)
    return [_complete(layer, top, shape, [r for r in readers if top in r.bottoms])
            for top, shape in zip(layer.tops, declared, strict=True)]


def input_layer_shapes(
    layers: Sequence[LayerLike], given: Mapping[str, Sequence[int]] | None = None,
    *, required: bool = True,
) -> dict[str, Shape]:
    """The shape of every top of the net's input layers (:func:`is_input_layer`), in order.

    ``given`` overrides any of them (and supplies those the prototxt does not state).
    With ``required=False`` a top whose shape cannot be known is left out instead of
    raising :func:`input_shape_error`. A top declared twice keeps its last shape, at its
    first position.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''
        ... layer { name: "d" type: "Data" top: "data" top: "label" include { phase: TEST }
        ...         transform_param { crop_size: 4 mean_value: 1 mean_value: 2 mean_value: 3 }
        ...         data_param { batch_size: 2 } }
        ... layer { name: "train" type: "Data" top: "data" top: "label"
        ...         include { phase: TRAIN } data_param { batch_size: 64 } }
        ... layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }''')
        >>> input_layer_shapes(net.layers)  # the TEST phase's data layer only
        {'data': (2, 3, 4, 4), 'label': (2,)}
        >>> input_layer_shapes(net.layers, {"data": (1, 3, 8, 8)})
        {'data': (1, 3, 8, 8), 'label': (2,)}
    """
    fixed = as_shapes(given)
    shapes: dict[str, Shape] = {}
    for index, layer in enumerate(layers):
        if is_input_layer(layer):
            shapes.update(_fed_shapes(layer, layers[index + 1:], fixed, required=required))
    return shapes


def _fed_shapes(layer: LayerLike, after: Sequence[LayerLike], given: Mapping[str, Shape],
                *, required: bool) -> dict[str, Shape]:
    """The shapes of one input layer's tops: given, declared, or completed by a reader."""
    shapes: dict[str, Shape] = {}
    for top, shape in zip(layer.tops, _declared(layer), strict=True):
        if top in given:
            shapes[top] = given[top]
            continue
        try:
            shapes[top] = _complete(layer, top, shape, [r for r in after if top in r.bottoms])
        except UnsupportedLayerError:
            if required:
                raise
    return shapes


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
    spec = spec_of(layer.type)
    rule = None if spec is None else spec.shape
    if rule is None:
        raise unsupported_type(layer)
    if not bottom_shapes:
        raise unsupported(layer, "has no bottom")
    shapes = rule(layer, [tuple(int(d) for d in s) for s in bottom_shapes])
    if len(shapes) != len(layer.tops):
        raise unsupported(layer, f"makes {len(shapes)} tops but declares {len(layer.tops)}")
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


def shape_steps(
    net: NetLike, input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> Iterator[tuple[list[Shape], list[Shape]]]:
    """For each layer in order, ``(bottom shapes, top shapes)``: the walk of :func:`infer_shapes`.

    One step per layer, so that every version of a blob that layers rewrite (in place
    or by reusing its name) has its own shape; an input layer's step has no bottoms.
    Raises as :func:`infer_shapes` does, at the layer it cannot handle.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(bnfuse.example_path("prototxt"))
        >>> [tops for _, tops in shape_steps(net, {"data": (2, 3, 8, 8)})][:2]
        [[(2, 3, 8, 8)], [(2, 16, 8, 8)]]
    """
    given = as_shapes(input_shapes)
    shapes: dict[str, Shape] = {}
    layers = list(net.layers)
    for index, layer in enumerate(layers):
        if is_input_layer(layer):
            fed = _fed_shapes(layer, layers[index + 1:], given, required=True)
            shapes.update(fed)
            yield [], [fed[top] for top in layer.tops]
            continue
        bottoms = []
        for b in layer.bottoms:
            if b not in shapes and b in given:
                shapes[b] = given[b]
            if b not in shapes:
                raise ModelMismatchError(
                    f"{where(layer)}: bottom {quote_user_text(b)} is produced by no "
                    "earlier layer and was not given as an input"
                )
            bottoms.append(shapes[b])
        outs = layer_output_shapes(layer, bottoms)
        shapes.update(zip(layer.tops, outs, strict=True))
        yield bottoms, outs


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
    shapes: dict[str, Shape] = {}
    steps = shape_steps(net, input_shapes)
    for layer in net.layers:
        try:
            bottoms, tops = next(steps)
        except UnsupportedLayerError:
            if stop_at_unknown:
                return shapes
            raise
        shapes.update(zip(layer.bottoms, bottoms, strict=False))  # a fragment's inputs
        shapes.update(zip(layer.tops, tops, strict=True))
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
    if spec_of(layer.type) is None:
        raise unsupported_type(layer)
    shapes = []
    for blob in weight_layout(layer, bottom_shapes):
        shape = blob.resolved
        if shape is None:
            raise unsupported(layer, f"the shape of its {blob.role} blob needs the shapes of "
                                     f"all {len(layer.bottoms)} bottoms")
        shapes.append(shape)
    return shapes


__all__ = [
    "as_shapes",
    "infer_shapes",
    "input_layer_shapes",
    "input_shape_error",
    "input_shapes_of",
    "is_input_layer",
    "layer_output_shapes",
    "param_shapes",
    "shape_steps",
    "unsupported_type",
]
