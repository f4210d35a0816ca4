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

from collections.abc import Mapping, Sequence

from bnfuse._text import quote_user_text
from bnfuse.errors import ModelMismatchError, UnsupportedLayerError
from bnfuse.layertypes import spec_of, weight_layout
from bnfuse.layertypes._base import LayerLike, NetLike, Shape, unsupported, where
from bnfuse.layertypes.geometry import check_blob_shape


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
        raise unsupported(layer, f"{len(declared)} input shapes for {n} tops (need 1 or {n})")
    return declared




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
                        f"{where(layer)}: bottom {quote_user_text(b)} is produced by no "
                        "earlier layer and was not given as an input"
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
    "infer_shapes",
    "input_shapes_of",
    "layer_output_shapes",
    "param_shapes",
    "unsupported_type",
]
