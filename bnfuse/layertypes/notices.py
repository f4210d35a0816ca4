"""What a loaded net does differently from what its schema fields say: ``Net.warnings``.

A converter that reads only the typed parameters of a layer (``layer.param``) misses
what the text adds, and a layer without weights only fails when it runs. The loader
records these once, as :class:`NetWarning`:

- ``fork_field``: a fork field bnfuse honours that changes the layer's computation
  (``pooling_param.ceil_mode: false`` rounds the output size down, where BVLC's schema
  reads the default ceil);
- ``unknown_fork_field``: a fork field bnfuse does not know on a layer type it knows
  (:func:`bnfuse.layertypes._forks.refused_fork_fields`): it may change what the layer
  computes, so bnfuse's executor does not run the layer;
- ``unknown_enum``: an enum field written with a name its enum does not have (a fork's
  ``engine: PRE_FIXED``), kept in the text; ``layer.param`` leaves the field unset;
- ``missing_weights``: a layer that needs weights (:func:`bnfuse.layertypes.has_weights`)
  and has none in the caffemodel.

Example:
    >>> import bnfuse
    >>> net = bnfuse.load(b'''
    ... layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1
    ...         dim: 5 dim: 5 } } }
    ... layer { name: "pool" type: "Pooling" bottom: "x" top: "y"
    ...         pooling_param { pool: MAX kernel_size: 2 stride: 2 ceil_mode: false } }''')
    >>> [(w.kind, w.layer, w.field) for w in net_warnings(net.layers, weights_loaded=False)]
    [('fork_field', 'pool', 'pooling_param.ceil_mode')]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from bnfuse._text import quote_user_text
from bnfuse.errors import BnfuseError
from bnfuse.layertypes import has_weights, spec_of
from bnfuse.layertypes._base import LayerLike
from bnfuse.layertypes._forks import pool_round_mode, refused_fork_fields
from bnfuse.layertypes.geometry import ROUND_CEIL
from bnfuse.proto import LayerParameter

__all__ = ["WARNING_KINDS", "NetWarning", "layers_without_weights", "net_warnings"]

#: Every :attr:`NetWarning.kind`, in the order :func:`net_warnings` checks a layer.
WARNING_KINDS = ("fork_field", "unknown_fork_field", "unknown_enum", "missing_weights")


@dataclass(frozen=True)
class NetWarning:
    """One thing about a layer that its typed parameters do not say.

    ``kind`` is one of :data:`WARNING_KINDS`; ``layer`` the layer's name; ``field`` the
    dotted path of the field concerned (``None`` for missing weights); ``message`` the
    sentence ``bnfuse inspect`` prints (also ``str(warning)``).

    Example:
        >>> w = NetWarning("missing_weights", "conv1", None, "layer 'conv1' ...")
        >>> w.to_dict()["kind"], str(w)
        ('missing_weights', "layer 'conv1' ...")
    """

    kind: str
    layer: str
    field: str | None
    message: str

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, str | None]:
        """A JSON-ready view (what ``bnfuse inspect --json`` writes).

        Example:
            >>> NetWarning("unknown_enum", "p", "pooling_param.engine", "...").to_dict()
            {'kind': 'unknown_enum', 'layer': 'p', 'field': 'pooling_param.engine', \
'message': '...'}
        """
        return {"kind": self.kind, "layer": self.layer, "field": self.field,
                "message": self.message}


_INDEX = re.compile(r"\[\d+\]")


def _schema_field(path: str) -> FieldDescriptor | None:
    """The schema's field at a dotted path of a layer (indices ignored), or None."""
    descriptor: Descriptor | None = LayerParameter.DESCRIPTOR
    field: FieldDescriptor | None = None
    for name in _INDEX.sub("", path).split("."):
        if descriptor is None:
            return None
        field = descriptor.fields_by_name.get(name)
        if field is None:
            return None
        descriptor = field.message_type
    return field


def _text_of(layer: LayerLike, path: str) -> str | None:
    """The quoted text of the scalar at a dotted path without indices, or None."""
    text_field = getattr(layer, "text_field", None)
    if "[" in path or not callable(text_field):
        return None
    text = text_field(*path.split("."))
    return None if text is None else quote_user_text(text, 40)


def _who(layer: LayerLike) -> str:
    return f"layer {quote_user_text(layer.name)} ({layer.type})"


def _rounding(layer: LayerLike) -> NetWarning | None:
    """A ``ceil_mode`` that rounds otherwise than the schema's ``round_mode`` says."""
    path = "pooling_param.ceil_mode"
    if layer.type != "Pooling" or path not in getattr(layer, "unknown_fields", ()):
        return None
    try:
        mode = pool_round_mode(layer)
    except BnfuseError as exc:
        return NetWarning("fork_field", layer.name, path, f"{_who(layer)}: {exc}")
    if mode == int(layer.param.pooling_param.round_mode):
        return None
    how = "up (ceil)" if mode == ROUND_CEIL else "down (floor)"
    return NetWarning(
        "fork_field", layer.name, path,
        f"{_who(layer)}: fork field {path} makes the pooled size round {how}; bnfuse "
        "honours it (PoolGeometry.round_mode), but a reader of BVLC Caffe's schema "
        "drops the field and gets another output size")


def layers_without_weights(layers: Sequence[LayerLike]) -> list[LayerLike]:
    """The layers that need weights (:func:`~bnfuse.layertypes.has_weights`) and have none.

    A layer whose configuration bnfuse cannot read is left out (its error comes when it
    is used).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "ip" type: "InnerProduct" bottom: "x"
        ...   top: "y" inner_product_param { num_output: 2 } }
        ... layer { name: "r" type: "ReLU" bottom: "y" top: "y" }''')
        >>> [layer.name for layer in layers_without_weights(net.layers)]
        ['ip']
    """
    found = []
    for layer in layers:
        if layer.blobs:
            continue
        try:
            if has_weights(layer):
                found.append(layer)
        except BnfuseError:
            continue
    return found


def net_warnings(layers: Sequence[LayerLike], *, weights_loaded: bool) -> list[NetWarning]:
    """Every :class:`NetWarning` of ``layers``, layer by layer in net order.

    ``missing_weights`` is only said when ``weights_loaded`` (a net read without a
    caffemodel has no weights anywhere, and says so with ``net.weights is None``).

    Example: see the module docstring.
    """
    missing = {id(layer) for layer in layers_without_weights(layers)} if weights_loaded \
        else set()
    found: list[NetWarning] = []
    for layer in layers:
        unknown = tuple(getattr(layer, "unknown_fields", ()))
        if unknown:
            rounding = _rounding(layer)
            if rounding is not None:
                found.append(rounding)
            enums = {path: _schema_field(path) for path in unknown}
            if spec_of(layer.type) is not None:
                for path in refused_fork_fields(layer):
                    if enums.get(path) is not None:
                        continue  # said below, as an enum value
                    found.append(NetWarning(
                        "unknown_fork_field", layer.name, path,
                        f"{_who(layer)}: fork field {path} is not one bnfuse knows; it may "
                        "change what the layer computes, so bnfuse's executor does not run "
                        "the layer"))
            for path, field in enums.items():
                if field is None or field.enum_type is None:
                    continue
                text = _text_of(layer, path)
                shown = f"{path} is {text}" if text is not None else f"{path} is written"
                found.append(NetWarning(
                    "unknown_enum", layer.name, path,
                    f"{_who(layer)}: {shown}, a name that is no value of Caffe's enum "
                    f"{field.enum_type.name} (a fork's); the text keeps it and layer.param "
                    "leaves the field unset"))
        if id(layer) in missing:
            found.append(NetWarning(
                "missing_weights", layer.name, None,
                f"{_who(layer)} has no weights in the caffemodel: Caffe would run it with "
                "its fillers' initial values, bnfuse's executor refuses it"))
    return found
