"""The net as Caffe's TEST phase sees it: layers, typed params and weights.

:func:`load` reads a prototxt (and optionally a caffemodel) the way Caffe's
``Net`` constructor and ``CopyTrainedLayersFrom`` do: old formats are upgraded,
include/exclude rules are applied for the TEST phase, and weights are matched to
layers by name. :func:`save` writes the net back: untouched layers keep their
exact text and their exact caffemodel bytes.

Every edit goes through a :class:`Net` method so the text, the typed params and
the caffemodel header of a layer stay consistent.

Example:
    >>> import bnfuse
    >>> net = bnfuse.load(b'''
    ... layer { name: "data" type: "Input" top: "data"
    ...         input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
    ... layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }
    ... ''')
    >>> [(layer.name, layer.type) for layer in net.layers]
    [('data', 'Input'), ('relu', 'ReLU')]
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from google.protobuf import text_format

from bnfuse.errors import (
    BnfuseError,
    ModelMismatchError,
    OutputError,
    PrototxtSchemaError,
    PrototxtSyntaxError,
)
from bnfuse.io import caffemodel as cm
from bnfuse.io.atomic import atomic_write
from bnfuse.io.prototxt import (
    Document,
    FieldNode,
    Identifier,
    MessageNode,
    NewValue,
    ScalarValue,
    decode_text,
)
from bnfuse.io.textmsg import fill_message
from bnfuse.io.upgrade import UpgradeError, needs_format_upgrade, upgrade_net, upgrade_v1_layer
from bnfuse.layertypes import (  # the type names are defined with the layer registry
    CONV_TYPES,
    DEPTHWISE_TYPES,
    blob_counts,
    legacy_shape,
    weight_mismatch,
)
from bnfuse.proto import (
    TEST,
    LayerParameter,
    NetParameter,
    NetState,
    NetStateRule,
    V1LayerParameter,
)

#: What :func:`load` and :func:`save` accept for a file: a path, the bytes, or a file object.
Source = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]
Destination = str | os.PathLike[str]


@dataclass(eq=False)
class Layer:
    """One layer of a loaded net.

    ``param`` holds the fields bnfuse's schema knows; fields of Caffe forks
    (``bn_param``, ``prior_box_param``, ...) are read from ``node``, the layer's
    text, and listed in ``unknown_fields``. ``blobs`` are read-only views into
    the caffemodel until a fold replaces them.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'layer { name: "r" type: "ReLU" bottom: "x" top: "x" }')
        >>> layer = net.layers[0]
        >>> layer.name, layer.bottoms, layer.tops, layer.in_place
        ('r', ('x',), ('x',), True)
    """

    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    param: LayerParameter
    blobs: list[np.ndarray] = field(default_factory=list)
    node: MessageNode | None = None
    unknown_fields: tuple[str, ...] = ()
    # The caffemodel record the blobs came from (None: no weights in the file).
    _record: cm.LayerRecord | None = field(default=None, repr=False)
    _weights_changed: bool = field(default=False, repr=False)
    # Edits to replay on the caffemodel copy of this layer's header.
    _header_edits: list[tuple[str, tuple[str, ...], Any]] = field(default_factory=list,
                                                                  repr=False)

    @property
    def in_place(self) -> bool:
        """True when the layer writes its output over its input blob."""
        return bool(self.tops) and self.tops == self.bottoms[: len(self.tops)]

    def fields_of(self, group: str) -> dict[str, object]:
        """Fields written in the layer's ``group`` block, fork fields included.

        Scalars map to their text, sub-messages to their node. Used to tell the
        BatchNorm flavours of Caffe forks apart by the fields they write.

        Example:
            >>> import bnfuse
            >>> net = bnfuse.load(b'layer { name: "b" type: "BN" '
            ...                   b'bn_param { bn_mode: INFERENCE var_eps: 1e-9 } }')
            >>> net.layers[0].fields_of("bn_param")
            {'bn_mode': 'INFERENCE', 'var_eps': '1e-9'}
        """
        block = self.node.message(group) if self.node is not None else None
        if block is None:
            return {}
        fields: dict[str, object] = {}
        for item in block.fields:
            value = item.value
            fields[item.name] = value.text() if isinstance(value, ScalarValue) else value
        return fields

    def text_field(self, *path: str) -> str | None:
        """Return the raw text of a (possibly fork-specific) scalar field, or None.

        Example:
            >>> import bnfuse
            >>> net = bnfuse.load(b'layer { name: "b" type: "BN" bn_param { bn_mode: INFERENCE } }')
            >>> net.layers[0].text_field("bn_param", "bn_mode")
            'INFERENCE'
        """
        node = self.node
        if node is None:
            return None
        for name in path[:-1]:
            child = node.message(name)
            if child is None:
                return None
            node = child
        value = node.scalar(path[-1])
        return None if value is None else value.text()


class Net:
    """A loaded Caffe net: its TEST-phase layers, the prototxt text and the weights.

    Build one with :func:`load`; change it only through its methods.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'name: "tiny" layer { name: "r" type: "ReLU" bottom: "x" top: "y" }')
        >>> net.name, len(net), net.layer("r").tops
        ('tiny', 1, ('y',))
    """

    def __init__(
        self,
        *,
        name: str,
        layers: list[Layer],
        document: Document,
        prototxt_source: str,
        prototxt_path: Path | None,
        weights: cm.CaffemodelFile | None,
        caffemodel_path: Path | None,
        original_text: str | None,
        upgrade_notes: list[str],
    ) -> None:
        self.name = name
        self.layers = layers
        self.document = document
        self.prototxt_source = prototxt_source
        self.prototxt_path = prototxt_path
        self.weights = weights
        self.caffemodel_path = caffemodel_path
        #: What Caffe's upgrade did to an old-format net (empty for current nets).
        self.upgrade_notes = upgrade_notes
        # For upgraded nets, the text as read: saved unchanged while nothing is edited.
        self._original_text = original_text
        self._edited = False
        self._removed: list[Layer] = []

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __repr__(self) -> str:
        return f"<Net {self.name!r}: {len(self.layers)} layers from {self.prototxt_source}>"

    @property
    def edited(self) -> bool:
        """True once any layer, field or weight has been changed."""
        return self._edited

    def layer(self, name: str) -> Layer:
        """Return the first layer called ``name``.

        Raises :class:`BnfuseError` when there is none.
        """
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise BnfuseError(f"{self.prototxt_source}: the net has no layer named {name!r}")

    def index(self, layer: Layer) -> int:
        """Position of ``layer`` in :attr:`layers` (by identity)."""
        # Layer is eq=False, so list.index matches by identity, in C: a fold removes
        # layers one by one and a Python scan here was a visible O(n^2) on deep nets.
        try:
            return self.layers.index(layer)
        except ValueError:
            raise BnfuseError(f"layer {layer.name!r} is not part of this net") from None

    # --- edits -------------------------------------------------------------

    def _text(self, layer: Layer) -> MessageNode:
        if layer.node is None:
            raise BnfuseError(
                f"layer {layer.name!r} comes from the net's input fields and cannot be edited")
        self._edited = True
        return layer.node

    def remove_layer(self, layer: Layer) -> None:
        """Delete a layer from the net, its text and (on save) its caffemodel record."""
        node = self._text(layer)
        self.layers.pop(self.index(layer))
        holder = node.parent
        if not isinstance(holder, FieldNode) or holder.parent is not self.document.root:
            raise BnfuseError(f"layer {layer.name!r} is not a top-level 'layer' entry")
        self.document.root.remove(holder)
        self._removed.append(layer)

    def set_top(self, layer: Layer, index: int, blob: str) -> None:
        """Rename the ``index``-th top of ``layer``."""
        self._set_repeated_string(layer, "top", index, blob)
        tops = list(layer.tops)
        tops[index] = blob
        layer.tops = tuple(tops)

    def set_bottom(self, layer: Layer, index: int, blob: str) -> None:
        """Point the ``index``-th bottom of ``layer`` at another blob."""
        self._set_repeated_string(layer, "bottom", index, blob)
        bottoms = list(layer.bottoms)
        bottoms[index] = blob
        layer.bottoms = tuple(bottoms)

    def _set_repeated_string(self, layer: Layer, name: str, index: int, value: str) -> None:
        node = self._text(layer)
        node.all(name)[index].set_value(value)
        getattr(layer.param, name)[index] = value
        layer._header_edits.append(("repeated", (name, str(index)), value))

    def set_type(self, layer: Layer, type_name: str) -> None:
        """Change a layer's type string (e.g. a BatchNorm becoming a Scale)."""
        self._text(layer).set("type", type_name)
        layer.type = type_name
        layer.param.type = type_name
        layer._header_edits.append(("set", ("type",), type_name))

    def set_field(self, layer: Layer, path: Sequence[str], value: bool | int | float | str,
                  *, enum: bool = False) -> None:
        """Set a typed param field, e.g. ``("convolution_param", "bias_term"), True``.

        The text changes only where the field is written (or a new line/field is
        added in the style of its neighbours); the typed param follows.
        """
        node = self._text(layer)
        for name in path[:-1]:
            child = node.message(name)
            if child is None:
                created = node.add(name, []).value
                assert isinstance(created, MessageNode)
                child = created
            node = child
        node.set(path[-1], Identifier(str(value)) if enum else value)
        message: Any = layer.param
        for name in path[:-1]:
            message = getattr(message, name)
        setattr(message, path[-1], value)
        layer._header_edits.append(("set", tuple(path), value))

    def clear_field(self, layer: Layer, name: str) -> None:
        """Remove a top-level field of a layer (e.g. ``batch_norm_param``) from text and params."""
        node = self._text(layer)
        for item in list(node.all(name)):
            node.remove(item)
        if name in layer.param.DESCRIPTOR.fields_by_name:
            layer.param.ClearField(name)
        layer._header_edits.append(("clear", (name,), None))

    def set_param_spec_count(self, layer: Layer, count: int) -> None:
        """Keep at most ``count`` ``param { }`` entries (Caffe rejects more than blobs)."""
        node = self._text(layer)
        specs = node.all("param")
        for item in specs[count:]:
            node.remove(item)
        del layer.param.param[count:]
        layer._header_edits.append(("truncate", ("param",), count))

    def add_param_spec(self, layer: Layer, *, like: int) -> None:
        """Append a ``param { }`` entry copying the scalar fields of entry ``like``."""
        node = self._text(layer)
        specs = node.all("param")
        model = specs[like].value
        items: list[tuple[str, NewValue]] = []
        if isinstance(model, MessageNode):
            items = [(f.name, f.value) for f in model.fields
                     if f.name != "name" and isinstance(f.value, ScalarValue)]
        node.add("param", items, after=specs[-1])
        spec = layer.param.param.add()
        spec.CopyFrom(layer.param.param[like])
        spec.ClearField("name")
        layer._header_edits.append(("add_param", ("param",), like))

    def set_blobs(self, layer: Layer, blobs: Sequence[np.ndarray]) -> None:
        """Replace a layer's weights; the layer's caffemodel record is re-encoded on save."""
        self._edited = True
        layer.blobs = [np.asarray(blob) for blob in blobs]
        layer._weights_changed = True
        record = layer._record
        if record is not None:
            # The old values were just read to compute the new ones: hand their
            # mapped pages back, so peak memory is the changed bytes once, not twice.
            for old in record.blobs:
                record.file.release(old.start, old.end)

    def rename_layer(self, layer: Layer, name: str) -> None:
        """Give a layer a new name (its weights move with it on save)."""
        self._text(layer).set("name", name)
        layer.name = name
        layer.param.name = name
        layer._header_edits.append(("set", ("name",), name))


# --- reading ---------------------------------------------------------------


@dataclass
class _Input:
    data: bytes
    source: str
    path: Path | None


def _read_source(src: Source, what: str) -> _Input:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _Input(bytes(src), f"<{what} bytes>", None)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        try:
            return _Input(path.read_bytes(), str(path), path)
        except FileNotFoundError:
            raise BnfuseError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise BnfuseError(f"{path}: is a directory, expected a {what} file") from None
        except OSError as exc:
            raise BnfuseError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if hasattr(src, "read"):
        data: Any = src.read()  # text-mode handles give str: accept them too
        if isinstance(data, str):
            data = data.encode("utf-8")
        name = getattr(src, "name", None)
        stream_path = Path(name) if isinstance(name, str) and os.path.exists(name) else None
        return _Input(bytes(data), str(name) if name else f"<{what} stream>", stream_path)
    raise BnfuseError(f"cannot read a {what} from a {type(src).__name__}; "
                      "pass a path, bytes or a binary file object")


def _state_meets_rule(state: NetState, rule: NetStateRule) -> bool:
    # Caffe's Net::StateMeetsRule.
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    if any(stage not in state.stage for stage in rule.stage):
        return False
    return not any(stage in state.stage for stage in rule.not_stage)


def layer_included(param: LayerParameter, state: NetState, source: str = "<net>") -> bool:
    """Apply a layer's include/exclude rules as Caffe's ``Net::FilterNet`` does.

    Example:
        >>> from bnfuse.proto import NetState, NetStateRule, TEST, TRAIN
        >>> layer = LayerParameter(name="d", include=[NetStateRule(phase=TRAIN)])
        >>> layer_included(layer, NetState(phase=TEST))
        False
    """
    if param.include and param.exclude:
        raise PrototxtSchemaError(
            f"{source}: layer {param.name!r} has both include and exclude rules; "
            "Caffe accepts only one kind per layer")
    if param.include:
        return any(_state_meets_rule(state, rule) for rule in param.include)
    return not any(_state_meets_rule(state, rule) for rule in param.exclude)


def _expected_blob_count(layer: Layer) -> tuple[int, ...] | None:
    """Blob counts Caffe accepts for a layer, or None when bnfuse does not know the type."""
    return blob_counts(layer)


# Blobs stored with Caffe's legacy 4-D dims are given the axes the layer expects.
def _legacy_shape(layer: Layer, count: int, index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return legacy_shape(layer, index, shape, blob_count=count)


def _check_shapes(layer: Layer, source: str) -> None:
    """Check weight shapes that the params alone determine (the rest need bottom shapes)."""
    problem = weight_mismatch(layer)
    if problem is not None:
        raise ModelMismatchError(f"{source}: layer {layer.name!r} ({layer.type}) {problem}")


def _attach_weights(layers: list[Layer], weights: cm.CaffemodelFile, source: str) -> None:
    """Copy weights by layer name as Caffe's ``CopyTrainedLayersFrom`` does."""
    first_by_name: dict[str, Layer] = {}
    for layer in layers:
        first_by_name.setdefault(layer.name, layer)
    for record in weights.layers:
        target = first_by_name.get(record.name)
        if target is None:
            continue  # source layers with no match are ignored, as in Caffe
        counts = _expected_blob_count(target)
        if counts is not None and len(record.blobs) not in counts:
            raise ModelMismatchError(
                f"{source}: layer {record.name!r} ({target.type}) needs "
                f"{' or '.join(map(str, counts))} blobs, the caffemodel has {len(record.blobs)}")
        arrays = []
        for j, blob in enumerate(record.blobs):
            array = blob.array()
            if blob.legacy_shape:
                shape = _legacy_shape(target, len(record.blobs), j, tuple(array.shape))
                array = array.reshape(shape)
            arrays.append(array)
        # Later records of the same name overwrite earlier ones, as in Caffe.
        target.blobs = arrays
        target._record = record
    for layer in layers:
        if layer._record is not None:
            _check_shapes(layer, source)


def _looks_binary(data: bytes) -> bool:
    # A caffemodel starts with a protobuf tag (field 1 name, 2 layers or 100 layer) and is full
    # of NUL bytes; text prototxts never contain NUL.
    return b"\x00" in data[:4096]


def _parse_prototxt(
    data: bytes, source: str
) -> tuple[Document, NetParameter, list[str], str | None]:
    if not data.strip():
        raise PrototxtSyntaxError(source, 1, 1, "the prototxt is empty; expected a net definition "
                                  "with 'layer { ... }' entries")
    if _looks_binary(data):
        raise PrototxtSyntaxError(source, 1, 1, "this looks like a binary caffemodel, not a "
                                  "prototxt; pass the .prototxt first and the .caffemodel second")
    text = decode_text(data, source)
    document = Document.parse(text, source=source)
    net_param = NetParameter()
    fill_message(document.root, net_param, source=source)
    if not needs_format_upgrade(net_param):
        return document, net_param, [], None
    try:
        notes = upgrade_net(net_param)
    except UpgradeError as exc:
        raise UpgradeError(f"{source}: {exc}") from None
    upgraded_text = text_format.MessageToString(net_param)
    return Document.parse(upgraded_text, source=source), net_param, notes, text


def _input_layer(net_param: NetParameter, source: str) -> LayerParameter | None:
    """The Input layer Caffe makes from top-level input fields (the text keeps the fields)."""
    if not net_param.input:
        return None
    probe = NetParameter()
    probe.input.extend(net_param.input)
    probe.input_dim.extend(net_param.input_dim)
    probe.input_shape.extend(net_param.input_shape)
    try:
        upgrade_net(probe)
    except UpgradeError as exc:
        raise UpgradeError(f"{source}: {exc}") from None
    return probe.layer[0] if probe.layer else None


def load(prototxt: Source, caffemodel: Source | None = None) -> Net:
    """Read a Caffe net: the prototxt, and the weights when a caffemodel is given.

    Accepts paths, bytes or binary file objects. Old formats (V0, V1, ``input``
    fields) are upgraded as Caffe does; layers are filtered for the TEST phase;
    weights are matched by layer name. Raises a :class:`BnfuseError` subclass
    naming the file and the place on any problem.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'input: "data" input_dim: 1 input_dim: 3 input_dim: 4 '
        ...                   b'input_dim: 4 layer { name: "r" type: "ReLU" bottom: "data" '
        ...                   b'top: "data" }')
        >>> [(layer.type, layer.tops) for layer in net.layers]
        [('Input', ('data',)), ('ReLU', ('data',))]
    """
    text_input = _read_source(prototxt, "prototxt")
    document, net_param, notes, original_text = _parse_prototxt(text_input.data,
                                                                text_input.source)
    state = NetState()
    state.CopyFrom(net_param.state)
    state.phase = TEST  # type: ignore[assignment]  # inference: never the file's phase
    layers: list[Layer] = []
    input_layer = _input_layer(net_param, text_input.source)
    if input_layer is not None:
        layers.append(Layer(name=input_layer.name, type=input_layer.type, bottoms=(),
                            tops=tuple(input_layer.top), param=input_layer))
    for node in document.root.messages("layer"):
        param = LayerParameter()
        unknown = fill_message(node, param, source=text_input.source)
        if not layer_included(param, state, text_input.source):
            continue
        if param.type == "BatchNorm" and len(param.param) == 3:
            for spec in param.param:  # Caffe's BatchNorm upgrade; text untouched
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0
        layers.append(Layer(name=param.name, type=param.type, bottoms=tuple(param.bottom),
                            tops=tuple(param.top), param=param, node=node,
                            unknown_fields=tuple(unknown)))
    weights = None
    caffemodel_path = None
    if caffemodel is not None:
        if isinstance(caffemodel, (str, os.PathLike)):
            caffemodel_path = Path(caffemodel)
        weights = cm.read_caffemodel(caffemodel)
        _attach_weights(layers, weights, weights.source)
    return Net(name=net_param.name, layers=layers, document=document,
               prototxt_source=text_input.source, prototxt_path=text_input.path,
               weights=weights, caffemodel_path=caffemodel_path,
               original_text=original_text, upgrade_notes=notes)


# --- writing ---------------------------------------------------------------


def _apply_header_edits(header: LayerParameter, layer: Layer) -> LayerParameter:
    for kind, path, value in layer._header_edits:
        if kind == "repeated":
            # The caffemodel's copy of bottom/top may be shorter than the prototxt's (or
            # absent); Caffe ignores it, so there is nothing to rename there.
            if int(path[1]) < len(getattr(header, path[0])):
                getattr(header, path[0])[int(path[1])] = value
        elif kind == "clear":
            # A fork field (bn_param, ...) is not in the schema: nothing typed to clear.
            if path[0] in header.DESCRIPTOR.fields_by_name:
                header.ClearField(path[0])
        elif kind == "truncate":
            del header.param[int(value):]
        elif kind == "add_param":
            if len(header.param) > int(value):
                spec = header.param.add()
                spec.CopyFrom(header.param[int(value)])
                spec.ClearField("name")
        else:
            message: Any = header
            for name in path[:-1]:
                message = getattr(message, name)
            setattr(message, path[-1], value)
    del header.blobs[:]
    return header


def _record_header(record: cm.LayerRecord) -> LayerParameter:
    header = record.header()
    if isinstance(header, V1LayerParameter):
        header = upgrade_v1_layer(header)
    return header


def _caffemodel_entries(net: Net) -> list[cm.LayerRecord | cm.NewLayer]:
    source = net.weights
    active = {id(layer._record): layer for layer in net.layers if layer._record is not None}
    removed = {id(layer._record) for layer in net._removed if layer._record is not None}
    # An upgraded V1 file cannot mix old and new layer records: write all of it anew.
    rewrite_all = source is not None and source.version == 1 and net.edited
    entries: list[cm.LayerRecord | cm.NewLayer] = []
    placed: set[int] = set()
    if source is not None:
        for record in source.layers:
            if id(record) in removed:
                continue
            layer = active.get(id(record))
            if layer is not None:
                placed.add(id(layer))
            if layer is not None and (layer._weights_changed or layer._header_edits
                                      or rewrite_all):
                header = _apply_header_edits(_record_header(record), layer)
                entries.append(cm.NewLayer(header=header, blobs=list(layer.blobs)))
            elif rewrite_all:
                header = _record_header(record)
                del header.blobs[:]
                entries.append(cm.NewLayer(header=header,
                                           blobs=[blob.array() for blob in record.blobs]))
            else:
                entries.append(record)
    for layer in net.layers:
        if id(layer) in placed or not layer.blobs:
            continue
        header = LayerParameter()
        header.CopyFrom(layer.param)
        del header.blobs[:]
        entries.append(cm.NewLayer(header=header, blobs=list(layer.blobs)))
    return entries


def _destination(dest: Destination, what: str) -> Path:
    if not isinstance(dest, (str, os.PathLike)):
        raise BnfuseError(f"the {what} output must be a path, not a {type(dest).__name__}")
    return Path(dest)


def save(net: Net, prototxt: Destination, caffemodel: Destination | None = None) -> None:
    """Write ``net`` as a prototxt and, when a path is given, a caffemodel.

    Unchanged layers keep their exact text and caffemodel bytes; an unedited net
    is written back byte for byte. Both files are written to temporary files
    and renamed into place only when complete; an output that is one of the
    net's input files is refused.

    Example:
        >>> import bnfuse, tempfile, pathlib
        >>> text = b'layer { name: "r"  type: "ReLU" bottom: "x" top: "x" }  # kept\\n'
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "out.prototxt"
        >>> bnfuse.save(bnfuse.load(text), out)
        >>> out.read_bytes() == text
        True
    """
    text_path = _destination(prototxt, "prototxt")
    model_path = None if caffemodel is None else _destination(caffemodel, "caffemodel")
    inputs = [p for p in (net.prototxt_path, net.caffemodel_path) if p is not None]
    if model_path is not None and _same_target(text_path, model_path):
        raise OutputError(f"{text_path}: the prototxt and caffemodel outputs are the same file")
    if net._original_text is not None and not net.edited:
        text = net._original_text
    else:
        text = net.document.render()
    payload = text.encode("utf-8")
    with atomic_write(text_path, inputs=inputs) as text_file:
        text_file.write(payload)
        if model_path is not None:
            save_weights(net, model_path)


def save_weights(net: Net, caffemodel: Destination) -> None:
    """Write only the caffemodel of ``net`` (same rules as :func:`save`).

    Example:
        >>> import bnfuse, tempfile, pathlib
        >>> net = bnfuse.load(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "copy.caffemodel"
        >>> save_weights(net, out)
        >>> out.read_bytes() == bnfuse.example_path("caffemodel").read_bytes()
        True
    """
    model_path = _destination(caffemodel, "caffemodel")
    inputs = [p for p in (net.prototxt_path, net.caffemodel_path) if p is not None]
    if net.weights is None and not any(layer.blobs for layer in net.layers):
        raise OutputError(
            f"{model_path}: the net has no weights to write; load it with a caffemodel")
    cm.write_caffemodel(model_path, _caffemodel_entries(net), source=net.weights, inputs=inputs)


def _same_target(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def to_net_parameter(net: Net) -> NetParameter:
    """The net as one typed ``NetParameter`` (TEST-phase layers, weights included).

    Handy for handing the model to code that expects protobuf messages; fork
    fields the schema does not know are not in it.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'layer { name: "r" type: "ReLU" bottom: "x" top: "x" }')
        >>> [layer.name for layer in to_net_parameter(net).layer]
        ['r']
    """
    result = NetParameter(name=net.name)
    for layer in net.layers:
        entry = result.layer.add()
        entry.CopyFrom(layer.param)
        del entry.blobs[:]
        for array in layer.blobs:
            blob = entry.blobs.add()
            blob.shape.dim.extend(int(d) for d in array.shape)
            if array.dtype == np.float64:
                blob.double_data.extend(np.asarray(array, dtype=np.float64).ravel().tolist())
            else:
                blob.data.extend(np.asarray(array, dtype=np.float32).ravel().tolist())
    return result


__all__ = [
    "CONV_TYPES",
    "DEPTHWISE_TYPES",
    "Layer",
    "Net",
    "Source",
    "layer_included",
    "load",
    "save",
    "save_weights",
    "to_net_parameter",
]
