"""The net as Caffe's TEST phase sees it: layers, typed params and weights.

:func:`load` reads a prototxt (and optionally a caffemodel) the way Caffe's
``Net`` constructor and ``CopyTrainedLayersFrom`` do: old formats are upgraded,
include/exclude rules are applied for the TEST phase (or, asked for, the TRAIN phase of a
train-only file, to make its deploy form from), and weights are matched to
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

import io
import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, overload

import numpy as np
import numpy.typing as npt
from google.protobuf import text_format

from bnfuse._checks import (
    require_bool,
    require_destination,
    require_int,
    require_net,
    require_source,
    require_text,
)
from bnfuse.errors import (
    BnfuseError,
    InternalError,
    ModelMismatchError,
    OutputError,
    PrototxtSchemaError,
    PrototxtSyntaxError,
    ReadOnlyLayerError,
    excerpt,
)
from bnfuse.io import caffemodel as cm
from bnfuse.io.atomic import OutputFile, atomic_outputs
from bnfuse.io.caffemodel._writer import CaffemodelPlan, plan_caffemodel
from bnfuse.io.guard import FileId, check_destinations, display_path, file_kind
from bnfuse.io.pairs import pair_id_for, strip_text_marker, text_marker, with_text_marker
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
    TRAIN,
    LayerParameter,
    NetParameter,
    NetState,
    NetStateRule,
    V1LayerParameter,
)

if TYPE_CHECKING:
    from bnfuse.graph import BlobVersion, Graph
    from bnfuse.layertypes.geometry import ConvGeometry, PoolGeometry
    from bnfuse.layertypes.notices import NetWarning

#: What :func:`load` and :func:`save` accept for a file: a path, the bytes, or a file object.
Source = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]
Destination = str | os.PathLike[str]


#: What each layer attribute is changed with (named in the error for an assignment).
_EDIT_METHOD = {
    "name": "Net.rename_layer",
    "type": "Net.set_type",
    "bottoms": "Net.set_bottom",
    "tops": "Net.set_top",
    "blobs": "Net.set_blobs",
    "param": "Net.set_field / Net.clear_field",
}


def _derive_param(node: MessageNode, source: str,
                  prefix: str = "") -> tuple[LayerParameter, tuple[str, ...]]:
    """A layer's typed parameters from its text (the text is the one source of truth)."""
    param = LayerParameter()
    # Paths carry the prefix for messages; the layer lists its own fields relative to it.
    unknown = [path[len(prefix):] for path in
               fill_message(node, param, source=source, prefix=prefix)]
    if param.type == "BatchNorm" and len(param.param) == 3:
        for spec in param.param:  # Caffe's BatchNorm upgrade: statistics never learn
            spec.lr_mult = 0.0
            spec.decay_mult = 0.0
    return param, tuple(unknown)


class Layer:
    """One layer of a loaded net, read-only: change it through :class:`Net` methods.

    ``param`` holds the fields bnfuse's schema knows; fields of Caffe forks
    (``bn_param``, ``prior_box_param``, ...) are read from ``node``, the layer's
    text, and listed in ``unknown_fields``. ``blobs`` is a tuple of read-only
    arrays (views into the caffemodel until a fold replaces them). Assigning to an
    attribute raises :class:`~bnfuse.errors.ReadOnlyLayerError` naming the method
    that makes the change, so an edit can never be lost on save.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'layer { name: "r" type: "ReLU" bottom: "x" top: "x" }')
        >>> layer = net.layers[0]
        >>> layer.name, layer.bottoms, layer.tops, layer.in_place
        ('r', ('x',), ('x',), True)
        >>> layer.tops = ("y",)
        Traceback (most recent call last):
        ...
        bnfuse.errors.ReadOnlyLayerError: layer 'r' is read-only: use Net.set_top to change tops
    """

    __slots__ = (
        "_blobs",
        "_bottoms",
        "_changed",
        "_name",
        "_node",
        "_param",
        "_param_bytes",
        "_record",
        "_source",
        "_tops",
        "_type",
        "_unknown",
    )

    _name: str
    _type: str
    _bottoms: tuple[str, ...]
    _tops: tuple[str, ...]
    _node: MessageNode | None
    _param: LayerParameter
    _param_bytes: bytes
    _unknown: tuple[str, ...]
    _blobs: tuple[np.ndarray, ...]
    _record: cm.LayerRecord | None
    _source: str
    # True once a Net method changed the layer: its caffemodel record is then re-encoded.
    _changed: bool

    def __init__(self, param: LayerParameter, node: MessageNode | None = None, *,
                 unknown_fields: tuple[str, ...] = (), source: str = "<net>") -> None:
        setter = object.__setattr__
        setter(self, "_node", node)
        setter(self, "_source", source)
        setter(self, "_blobs", ())
        setter(self, "_record", None)
        setter(self, "_changed", False)
        self._adopt(param, unknown_fields)

    def _adopt(self, param: LayerParameter, unknown: tuple[str, ...]) -> None:
        """Take ``param`` as the layer's typed parameters (after load or an edit)."""
        setter = object.__setattr__
        setter(self, "_param", param)
        # A snapshot, so that an edit made on ``param`` itself is caught on save.
        setter(self, "_param_bytes", param.SerializeToString(deterministic=True))
        setter(self, "_unknown", unknown)
        setter(self, "_name", param.name)
        setter(self, "_type", param.type)
        setter(self, "_bottoms", tuple(param.bottom))
        setter(self, "_tops", tuple(param.top))

    def __setattr__(self, name: str, value: object) -> None:
        public = name.lstrip("_")
        method = _EDIT_METHOD.get(public)
        hint = f"use {method} to change {public}" if method else "change it through Net methods"
        raise ReadOnlyLayerError(f"layer {self._name!r} is read-only: {hint}", layer=self._name)

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)

    def __repr__(self) -> str:
        return (f"Layer(name={self._name!r}, type={self._type!r}, bottoms={self._bottoms!r}, "
                f"tops={self._tops!r}, blobs={[tuple(b.shape) for b in self._blobs]!r})")

    @property
    def name(self) -> str:
        """The layer's name."""
        return self._name

    @property
    def type(self) -> str:
        """The V2 type string (``"Convolution"``, ``"BN"``, ...); V1 enums are upgraded."""
        return self._type

    @property
    def bottoms(self) -> tuple[str, ...]:
        """Input blob names."""
        return self._bottoms

    @property
    def tops(self) -> tuple[str, ...]:
        """Output blob names (equal to a bottom when in place)."""
        return self._tops

    @property
    def param(self) -> LayerParameter:
        """Typed fields the schema knows (fork fields are in :attr:`node`). Read only:
        an edit made here instead of through :meth:`Net.set_field` is refused on save."""
        return self._param

    @property
    def blobs(self) -> tuple[np.ndarray, ...]:
        """The weights, read-only arrays; ``()`` when the caffemodel has none for the layer."""
        return self._blobs

    @property
    def node(self) -> MessageNode | None:
        """The layer's text (``None`` for the Input layer made from top-level input fields)."""
        return self._node

    @property
    def unknown_fields(self) -> tuple[str, ...]:
        """Dotted paths of the fields the schema does not know (a fork's fields)."""
        return self._unknown

    @property
    def in_place(self) -> bool:
        """True when the layer writes its output over its input blob."""
        return bool(self._tops) and self._tops == self._bottoms[: len(self._tops)]

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
        block = self._node.message(group) if self._node is not None else None
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
        node = self._node
        if node is None:
            return None
        for name in path[:-1]:
            child = node.message(name)
            if child is None:
                return None
            node = child
        value = node.scalar(path[-1])
        return None if value is None else value.text()


def _frozen(array: npt.ArrayLike, *, copy: bool) -> np.ndarray:
    """A read-only array: a copy of the caller's (so later edits to it cannot leak in), or
    the array itself when bnfuse made it and nobody else holds it."""
    result = np.array(array, copy=True) if copy else np.asarray(array)
    result.flags.writeable = False
    return result


class Net:
    """A loaded Caffe net: its TEST-phase layers, the prototxt text and the weights.

    Build one with :func:`load`; change it only through its methods (``layers`` is a
    read-only sequence and each :class:`Layer` refuses assignment). The text is the
    one source of truth: every edit changes the layer's text and its typed
    parameters are derived from it again, and the caffemodel header of a changed
    layer is derived from those parameters on save.

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
        # Removed layers leave None behind, so removal and lookup stay O(1).
        self._slots: list[Layer | None] = list(layers)
        self._position = {id(layer): i for i, layer in enumerate(layers)}
        self._view: tuple[Layer, ...] | None = tuple(layers)
        self._document = document
        # Layers removed but still in the text: taken out in one pass when the text is
        # next asked for (one by one, finding each in the text would be quadratic).
        self._doomed: list[FieldNode] = []
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
        self._excluded: list[Layer] = []
        self._phase = "TEST"
        #: The input files as the kernel knows them (device, inode), taken when they
        #: were read: no output may replace them, whatever path names them later.
        self._input_files: tuple[FileId, ...] = ()
        self._warnings: tuple[NetWarning, ...] = ()

    @property
    def layers(self) -> tuple[Layer, ...]:
        """The layers of the TEST phase, in order (read-only)."""
        if self._view is None:
            self._view = tuple(layer for layer in self._slots if layer is not None)
        return self._view

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
        if not isinstance(name, str):
            raise TypeError(f"Net.layer: name must be a str, not {type(name).__name__}")
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise BnfuseError(f"{self.prototxt_source}: the net has no layer named {excerpt(name)}")

    def index(self, layer: Layer) -> int:
        """Position of ``layer`` in :attr:`layers` (by identity)."""
        self._check_layer(layer, "index")
        return self.layers.index(layer)

    @property
    def document(self) -> Document:
        """The prototxt's lossless syntax tree, with every edit so far."""
        if self._doomed:
            self._document.root.remove_many(self._doomed)
            self._doomed = []
        return self._document

    # --- the embedder's view: graph, shapes, inputs, outputs ------------------

    def graph(self) -> Graph:
        """The blob graph of the layers as they are now: versioned blobs, producers, readers.

        Each write of a blob name is its own :class:`~bnfuse.graph.BlobVersion`
        (``conv1#0`` from the convolution, ``conv1#1`` after its in-place BatchNorm);
        ``graph.reads[i]`` / ``graph.writes[i]`` are the versions ``net.layers[i]``
        reads and writes, ``graph.readers(v)`` and ``graph.producer(v)`` layer indices.
        Built anew on each call (O(layers)): keep it while the net is not edited.

        Example:
            >>> import bnfuse
            >>> net = bnfuse.load(bnfuse.example_path("prototxt"))
            >>> g = net.graph()
            >>> [str(v) for v in g.versions_of("conv1")]
            ['conv1#0', 'conv1#1', 'conv1#2', 'conv1#3']
            >>> [net.layers[i].name for i in g.readers(g.versions_of("conv1")[0])]
            ['conv1/bn']
        """
        from bnfuse.graph import build_graph

        return build_graph(self.layers)

    @overload
    def shapes(self, input_shapes: Mapping[str, Sequence[int]] | None = None, *,
               versions: Literal[False] = False) -> dict[str, tuple[int, ...]]: ...

    @overload
    def shapes(self, input_shapes: Mapping[str, Sequence[int]] | None = None, *,
               versions: Literal[True]) -> dict[BlobVersion, tuple[int, ...]]: ...

    def shapes(self, input_shapes: Mapping[str, Sequence[int]] | None = None, *,
               versions: bool = False
               ) -> dict[str, tuple[int, ...]] | dict[BlobVersion, tuple[int, ...]]:
        """Every blob's shape, from the prototxt alone (no weights needed), as Caffe's
        ``Reshape`` computes it.

        ``input_shapes`` overrides the shapes the inputs declare (``Input`` layers,
        ``input_dim`` fields, data layers whose prototxt states them) and gives those
        they leave open, by blob name. By default the result maps each blob name to its
        shape after the whole net (in net order); ``versions=True`` maps each
        :class:`~bnfuse.graph.BlobVersion` of :meth:`graph` to its own shape, for a
        name that a later layer writes again with another shape. Raises
        :class:`~bnfuse.errors.UnsupportedLayerError` at a layer whose shape rule bnfuse
        does not know, or whose input shape the prototxt does not state.

        Example:
            >>> import bnfuse
            >>> net = bnfuse.load(bnfuse.example_path("prototxt"))
            >>> net.shapes()["pool1"], net.shapes({"data": (2, 3, 64, 64)})["fc"]
            ((1, 16, 16, 16), (2, 10))
            >>> reused = bnfuse.load(b'''
            ... layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1
            ...         dim: 2 dim: 8 dim: 8 } } }
            ... layer { name: "pool" type: "Pooling" bottom: "x" top: "x"
            ...         pooling_param { pool: MAX kernel_size: 2 stride: 2 } }''')
            >>> {str(v): shape for v, shape in reused.shapes(versions=True).items()}
            {'x#0': (1, 2, 8, 8), 'x#1': (1, 2, 4, 4)}
        """
        from bnfuse._checks import require_input_shapes
        from bnfuse.layertypes.shapes import shape_steps

        given = require_input_shapes(input_shapes, "Net.shapes")
        require_bool(versions, "Net.shapes", "versions")
        if not versions:
            from bnfuse.layertypes.shapes import infer_shapes

            return infer_shapes(self, given)
        graph = self.graph()
        found: dict[BlobVersion, tuple[int, ...]] = {}
        for reads, writes, (bottoms, tops) in zip(graph.reads, graph.writes,
                                                  shape_steps(self, given), strict=False):
            found.update((v, s) for v, s in zip(reads, bottoms, strict=False)
                         if v.producer is None)  # a fragment's given inputs
            found.update(zip(writes, tops, strict=True))
        return found

    @property
    def inputs(self) -> dict[str, tuple[int, ...] | None]:
        """The blobs the net is fed, by name, in order, with the shape they declare.

        The tops of ``Input`` layers (``input``/``input_dim``/``input_shape`` fields
        included, upgraded to an ``Input`` layer) and of data layers (``None`` where
        the prototxt leaves the shape to the data, such as a ``Data`` layer's image
        size), then the blobs read before any layer writes them (a fragment's open
        bottoms: ``None``). These are the names :func:`bnfuse.forward` and
        :func:`bnfuse.verify` accept as inputs.

        Example:
            >>> import bnfuse
            >>> net = bnfuse.load(b'input: "data" input_dim: 1 input_dim: 3 input_dim: 8 '
            ...                   b'input_dim: 8 layer { name: "r" type: "ReLU" '
            ...                   b'bottom: "data" top: "out" }')
            >>> net.inputs, net.outputs
            ({'data': (1, 3, 8, 8)}, ('out',))
        """
        from bnfuse.verification.inputs import net_input_shapes

        return net_input_shapes(self.layers)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The net's outputs, as Caffe's ``net.outputs``: blob names no layer reads after
        their last write, in the order of the layers that wrote them.

        A data layer's label nobody reads is one, as in Caffe. Example: see :attr:`inputs`.
        """
        return tuple(version.name for version in self.graph().outputs())

    def geometry(self, layer: Layer,
                 input_shapes: Mapping[str, Sequence[int]] | None = None
                 ) -> ConvGeometry | PoolGeometry:
        """The resolved window of a convolution or pooling layer, for its input's shape.

        Convolution, Deconvolution and the depthwise types give a
        :class:`~bnfuse.ConvGeometry`, Pooling a :class:`~bnfuse.PoolGeometry`: kernel,
        stride and pad per spatial axis (Caffe's repeated ``kernel_size`` or
        ``kernel_h``/``kernel_w``, a pooling's single ``kernel_size``, global pooling),
        dilation, group, the output size, and the pooling's rounding (``round_mode``, a
        fork's ``ceil_mode: false`` included). The input's shape comes from
        :meth:`shapes` with ``input_shapes``. Any other layer type raises
        :class:`~bnfuse.errors.UnsupportedLayerError`.

        Example:
            >>> import bnfuse
            >>> net = bnfuse.load(bnfuse.example_path("prototxt"))
            >>> conv = net.geometry(net.layer("conv2"))
            >>> conv.kernel, conv.pad, conv.group, conv.output
            ((3, 3), (1, 1), 2, (16, 16))
            >>> pool = net.geometry(net.layer("pool1"), {"data": (1, 3, 31, 31)})
            >>> pool.method_name, pool.kernel, pool.stride, pool.output, pool.ceil
            ('MAX', (2, 2), (2, 2), (16, 16), True)
        """
        from bnfuse._checks import require_input_shapes
        from bnfuse.errors import UnsupportedLayerError
        from bnfuse.layertypes.geometry import conv_geometry, pool_geometry
        from bnfuse.layertypes.shapes import shape_steps

        self._check_layer(layer, "geometry")
        index = self.layers.index(layer)
        if layer.type not in CONV_TYPES | {"Deconvolution", "Pooling"}:
            raise UnsupportedLayerError(
                f"Net.geometry: layer {excerpt(layer.name)} is a {excerpt(layer.type)}; "
                "only convolution and pooling layers have a window geometry",
                layer=layer.name)
        given = require_input_shapes(input_shapes, "Net.geometry")
        for position, (bottoms, _) in enumerate(shape_steps(self, given)):
            if position == index:
                if layer.type == "Pooling":
                    return pool_geometry(layer, bottoms[0])
                return conv_geometry(layer, bottoms[0])
        raise AssertionError("the walk reaches every layer")  # pragma: no cover

    @property
    def warnings(self) -> tuple[NetWarning, ...]:
        """What the loader found that the layers' typed parameters do not say.

        Each :class:`~bnfuse.NetWarning` has a ``kind``: ``fork_field`` (a fork field
        bnfuse honours that changes the computation, such as ``ceil_mode: false``),
        ``unknown_fork_field`` (a fork field bnfuse does not know, which may change what
        the layer computes), ``unknown_enum`` (an enum value only a fork has, kept as
        text) or ``missing_weights`` (a layer that needs weights and has none in the
        caffemodel); and ``layer``, ``field`` and ``message``. Taken at load:
        ``bnfuse inspect`` prints them.

        Example:
            >>> import bnfuse
            >>> net = bnfuse.load(b'''layer { name: "p" type: "Pooling" bottom: "x" top: "y"
            ...   pooling_param { pool: AVE kernel_size: 3 stride: 2 ceil_mode: false } }''')
            >>> [(w.kind, w.layer, w.field) for w in net.warnings]
            [('fork_field', 'p', 'pooling_param.ceil_mode')]
        """
        return self._warnings

    def copy(self) -> Net:
        """An independent deep copy: editing or folding either net leaves the other as it is.

        The text, the layers and their typed parameters are copied; weights are shared
        until one net replaces them (they are read-only arrays, and every edit gives a
        layer new arrays), so a copy costs the text, not the weights. The copy saves to
        the same bytes as the original.

        Example:
            >>> import bnfuse
            >>> net = bnfuse.load(bnfuse.example_path("prototxt"),
            ...                   bnfuse.example_path("caffemodel"))
            >>> folded = bnfuse.fold_net(net.copy()).net
            >>> len(net.layers), len(folded.layers), net.edited, folded.edited
            (12, 8, False, True)
        """
        import copy as deep

        memo: dict[int, Any] = {}
        document = deep.deepcopy(self.document, memo)  # .document: pending removals done

        def twin(layer: Layer) -> Layer:
            new = Layer.__new__(Layer)
            for slot in Layer.__slots__:
                object.__setattr__(new, slot, getattr(layer, slot))
            param = LayerParameter()
            param.CopyFrom(layer._param)
            object.__setattr__(new, "_param", param)
            if layer._node is not None:
                object.__setattr__(new, "_node", memo[id(layer._node)])
            return new

        twin_net = Net(name=self.name, layers=[twin(layer) for layer in self.layers],
                       document=document, prototxt_source=self.prototxt_source,
                       prototxt_path=self.prototxt_path, weights=self.weights,
                       caffemodel_path=self.caffemodel_path,
                       original_text=self._original_text,
                       upgrade_notes=list(self.upgrade_notes))
        twin_net._edited = self._edited
        # Removed layers only say which caffemodel records to leave out on save.
        twin_net._removed = list(self._removed)
        twin_net._excluded = [twin(layer) for layer in self._excluded]
        twin_net._phase = self._phase
        twin_net._input_files = self._input_files
        twin_net._warnings = self._warnings
        return twin_net

    # --- edits -------------------------------------------------------------

    def _check_layer(self, layer: object, method: str) -> None:
        if not isinstance(layer, Layer):
            raise TypeError(f"Net.{method}: layer must be a Layer of this net (from net.layers "
                            f"or net.layer(name)), not {type(layer).__name__}")
        if id(layer) not in self._position:
            raise BnfuseError(f"Net.{method}: layer {excerpt(layer.name)} is not part of "
                              "this net")

    def _text(self, layer: Layer, method: str) -> MessageNode:
        self._check_layer(layer, method)
        node = layer.node
        if node is None:
            raise BnfuseError(
                f"layer {layer.name!r} comes from the net's input fields and cannot be edited")
        return node

    def _rederive(self, layer: Layer) -> None:
        """The text changed: derive the layer's typed parameters from it again."""
        self._edited = True
        node = layer.node
        assert node is not None
        param, unknown = _derive_param(node, self.prototxt_source)
        layer._adopt(param, unknown)
        object.__setattr__(layer, "_changed", True)

    def remove_layer(self, layer: Layer) -> None:
        """Delete a layer from the net, its text and (on save) its caffemodel record."""
        node = self._text(layer, "remove_layer")
        holder = node.parent
        if not isinstance(holder, FieldNode) or holder.parent is not self._document.root:
            raise BnfuseError(f"layer {layer.name!r} is not a top-level 'layer' entry")
        self._doomed.append(holder)
        self._slots[self._position.pop(id(layer))] = None
        self._view = None
        self._removed.append(layer)
        self._edited = True

    @property
    def phase(self) -> str:
        """The phase whose include/exclude rules chose :attr:`layers`: ``"TEST"`` unless
        :func:`load` was asked for ``phase="TRAIN"``. A TRAIN-phase view is only the raw
        material of a deploy form (:func:`bnfuse.deploy.to_deploy`, which makes it a TEST
        net): folding, running or saving one is refused."""
        return self._phase

    @property
    def excluded_layers(self) -> tuple[Layer, ...]:
        """Layers of the file that the net's phase excludes (a train/val net's TRAIN-only
        layers), read-only: they are not part of :attr:`layers`, but their text is in
        the document until :meth:`remove_excluded_layers` removes it."""
        return tuple(self._excluded)

    def remove_excluded_layers(self) -> list[Layer]:
        """Delete the text of every layer the net's phase excludes; return those layers.

        Example:
            >>> import bnfuse
            >>> net = bnfuse.load(b'''layer { name: "t" type: "Data" top: "x"
            ...   include { phase: TRAIN } } layer { name: "v" type: "Input" top: "x" }''')
            >>> [layer.name for layer in net.remove_excluded_layers()], net.document.render()
            (['t'], 'layer { name: "v" type: "Input" top: "x" }')
        """
        removed = list(self._excluded)
        for layer in removed:
            node = layer.node
            holder = node.parent if node is not None else None
            if isinstance(holder, FieldNode) and holder.parent is self.document.root:
                self.document.root.remove(holder)
        self._excluded = []
        if removed:
            self._edited = True
        return removed

    def make_test_phase(self) -> list[Layer]:
        """Make a TRAIN-phase view (``load(..., phase="TRAIN")``) a TEST net with the same
        layers; return the layers whose include/exclude rules were removed.

        The text of the layers the TRAIN phase excludes is deleted
        (:meth:`remove_excluded_layers`), and so are the rules of the kept layers: a
        TEST-phase load of the file then keeps exactly these layers. A TEST net is left
        as it is.

        Example:
            >>> import bnfuse
            >>> net = bnfuse.load(b'''
            ... layer { name: "t" type: "Input" top: "x" include { phase: TRAIN } }
            ... layer { name: "v" type: "ReLU" bottom: "x" top: "x" include { phase: TEST } }
            ... ''', phase="TRAIN")
            >>> [layer.name for layer in net.make_test_phase()], net.phase
            (['t'], 'TEST')
            >>> net.document.render()
            '\\nlayer { name: "t" type: "Input" top: "x" }\\n'
        """
        if self._phase == "TEST":
            return []
        self.remove_excluded_layers()
        cleared = [layer for layer in self.layers
                   if layer.param.include or layer.param.exclude]
        for layer in cleared:
            self.clear_field(layer, "include")
            self.clear_field(layer, "exclude")
        self._phase = "TEST"
        self._edited = True
        return cleared

    def make_input(self, layer: Layer, shapes: Sequence[tuple[str, Sequence[int]]]) -> None:
        """Turn ``layer`` (a data layer, or an Input) into an ``Input`` layer with these
        ``(top, shape)`` pairs: every other field of its text is removed (its name and
        its place stay), so tops not listed are no longer produced.

        Example:
            >>> import bnfuse
            >>> net = bnfuse.load(b'layer { name: "d" type: "Data" top: "data" top: "label" '
            ...                   b'data_param { batch_size: 4 } }')
            >>> net.make_input(net.layer("d"), [("data", (4, 3))])
            >>> print(net.document.render())
            layer { name: "d" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 } } }
        """
        if not shapes:
            raise BnfuseError(f"layer {layer.name!r}: an Input layer needs at least one top")
        if layer.node is None and id(layer) in self._position:
            self._reshape_input_fields(layer, shapes)
            return
        node = self._text(layer, "make_input")
        holder = node.parent
        if not isinstance(holder, FieldNode) or holder.parent is not self.document.root:
            raise BnfuseError(f"layer {layer.name!r} is not a top-level 'layer' entry")
        items: list[tuple[str, NewValue]] = [("name", layer.name), ("type", "Input")]
        items += [("top", top) for top, _ in shapes]
        items.append(("input_param", [("shape", [("dim", int(d)) for d in shape])
                                      for _, shape in shapes]))
        # A new entry in the place of the old one, laid out like the other layers.
        fresh = self.document.root.add("layer", items, after=holder)
        self.document.root.remove(holder)
        assert isinstance(fresh.value, MessageNode)
        object.__setattr__(layer, "_node", fresh.value)
        self._rederive(layer)

    def _reshape_input_fields(self, layer: Layer,
                              shapes: Sequence[tuple[str, Sequence[int]]]) -> None:
        """:meth:`make_input` for the Input layer of top-level ``input`` fields: their
        ``input_dim``/``input_shape`` fields are written anew, one ``input_shape`` each."""
        if [top for top, _ in shapes] != list(layer.tops):
            raise BnfuseError(f"layer {layer.name!r} comes from the net's input fields: "
                              "give a shape for each of its tops, in order")
        root = self.document.root
        for item in [*root.all("input_dim"), *root.all("input_shape")]:
            root.remove(item)
        anchor = root.all("input")[-1]
        for _, shape in reversed(shapes):
            root.add("input_shape", [("dim", int(d)) for d in shape], after=anchor)
        param = LayerParameter()
        param.CopyFrom(layer.param)
        param.input_param.ClearField("shape")
        for _, shape in shapes:
            param.input_param.shape.add().dim.extend(int(d) for d in shape)
        layer._adopt(param, ())
        self._edited = True

    def insert_layer_after(self, anchor: Layer,
                           fields: Sequence[tuple[str, NewValue]]) -> Layer:
        """Add a new top-level ``layer { fields }`` right after ``anchor`` and return it.

        The new layer has no weights until :meth:`set_blobs`; on save it is a new record.
        Each insertion renumbers the layers after it (O(number of layers)): meant for a
        few layers, as :func:`bnfuse.binarize` adds at most one per binary layer.

        Example:
            >>> import bnfuse
            >>> net = bnfuse.load(b'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }')
            >>> s = net.insert_layer_after(net.layer("r"), [
            ...     ("name", "s"), ("type", "Scale"), ("bottom", "y"), ("top", "z")])
            >>> [(layer.name, layer.type) for layer in net.layers]
            [('r', 'ReLU'), ('s', 'Scale')]
        """
        node = self._text(anchor, "insert_layer_after")
        holder = node.parent
        root = self.document.root
        if not isinstance(holder, FieldNode) or holder.parent is not root:
            raise BnfuseError(f"Net.insert_layer_after: layer {excerpt(anchor.name)} is not a "
                              "top-level 'layer' entry")
        added = root.add("layer", list(fields), after=holder).value
        if not isinstance(added, MessageNode):
            raise InternalError("Net.insert_layer_after: the new layer's text is not a message")
        param, unknown = _derive_param(added, self.prototxt_source)
        layer = Layer(param, added, unknown_fields=unknown, source=self.prototxt_source)
        object.__setattr__(layer, "_changed", True)
        self._slots.insert(self._position[id(anchor)] + 1, layer)
        self._position = {id(one): i for i, one in enumerate(self._slots) if one is not None}
        self._view = None
        self._edited = True
        return layer

    def set_top(self, layer: Layer, index: int, blob: str) -> None:
        """Rename the ``index``-th top of ``layer``."""
        self._text(layer, "set_top").all("top")[_slot(layer, "top", index, "set_top")] \
            .set_value(require_text(blob, "Net.set_top", "blob"))
        self._rederive(layer)

    def set_bottom(self, layer: Layer, index: int, blob: str) -> None:
        """Point the ``index``-th bottom of ``layer`` at another blob."""
        self._text(layer, "set_bottom").all("bottom")[
            _slot(layer, "bottom", index, "set_bottom")
        ].set_value(require_text(blob, "Net.set_bottom", "blob"))
        self._rederive(layer)

    def set_type(self, layer: Layer, type_name: str) -> None:
        """Change a layer's type string (e.g. a BatchNorm becoming a Scale)."""
        self._text(layer, "set_type").set("type", require_text(type_name, "Net.set_type",
                                                               "type_name"))
        self._rederive(layer)

    def set_field(self, layer: Layer, path: Sequence[str], value: bool | int | float | str,
                  *, enum: bool = False) -> None:
        """Set a typed param field, e.g. ``("convolution_param", "bias_term"), True``.

        The text changes only where the field is written (or a new line/field is
        added in the style of its neighbours); the typed param follows.
        """
        node = self._text(layer, "set_field")
        if (isinstance(path, (str, bytes)) or not isinstance(path, Sequence) or not path
                or not all(isinstance(name, str) and name for name in path)):
            raise TypeError("Net.set_field: path must be a non-empty sequence of field names "
                            f"such as ('convolution_param', 'bias_term'), not {path!r:.60}")
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, (bool, int, float, str)):
            raise TypeError("Net.set_field: value must be a bool, int, float or str, not "
                            f"{type(value).__name__}")
        for name in path[:-1]:
            child = node.message(name)
            if child is None:
                created = node.add(name, []).value
                assert isinstance(created, MessageNode)
                child = created
            node = child
        node.set(path[-1], Identifier(str(value)) if enum else value)
        self._rederive(layer)

    def clear_field(self, layer: Layer, name: str) -> None:
        """Remove a top-level field of a layer (e.g. ``batch_norm_param``) from text and params."""
        node = self._text(layer, "clear_field")
        for item in list(node.all(require_text(name, "Net.clear_field", "name"))):
            node.remove(item)
        self._rederive(layer)

    def set_param_spec_count(self, layer: Layer, count: int) -> None:
        """Keep at most ``count`` ``param { }`` entries (Caffe rejects more than blobs)."""
        node = self._text(layer, "set_param_spec_count")
        keep = require_int(count, "Net.set_param_spec_count", "count", minimum=0)
        for item in node.all("param")[keep:]:
            node.remove(item)
        self._rederive(layer)

    def add_param_spec(self, layer: Layer, *, like: int) -> None:
        """Append a ``param { }`` entry copying the scalar fields of entry ``like``."""
        node = self._text(layer, "add_param_spec")
        specs = node.all("param")
        position = require_int(like, "Net.add_param_spec", "like")
        if not 0 <= position < len(specs):
            raise BnfuseError(f"Net.add_param_spec: layer {excerpt(layer.name)} has "
                              f"{len(specs)} param entries, no entry {position}")
        model = specs[position].value
        items: list[tuple[str, NewValue]] = []
        if isinstance(model, MessageNode):
            items = [(f.name, f.value) for f in model.fields
                     if f.name != "name" and isinstance(f.value, ScalarValue)]
        node.add("param", items, after=specs[-1])
        self._rederive(layer)

    def set_blobs(self, layer: Layer, blobs: Sequence[npt.ArrayLike]) -> None:
        """Replace a layer's weights (copied, read-only); its record is re-encoded on save."""
        self._check_layer(layer, "set_blobs")
        if isinstance(blobs, (str, bytes, np.ndarray)) or not isinstance(blobs, Sequence):
            raise TypeError("Net.set_blobs: blobs must be a list of arrays, not "
                            f"{type(blobs).__name__}")
        arrays = [_frozen(blob, copy=True) for blob in blobs]
        for i, array in enumerate(arrays):
            if array.dtype.kind not in "fiu" or array.dtype.itemsize > 8:
                raise TypeError(f"Net.set_blobs: blob {i} must hold real numbers, not "
                                f"{array.dtype}")
        self._replace_blobs(layer, arrays)

    def _replace_blobs(self, layer: Layer, blobs: Sequence[np.ndarray]) -> None:
        """:meth:`set_blobs` for arrays bnfuse just computed and hands over (no copy)."""
        if id(layer) not in self._position:
            raise BnfuseError(f"layer {layer.name!r} is not part of this net")
        self._edited = True
        setter = object.__setattr__
        setter(layer, "_blobs", tuple(_frozen(blob, copy=False) for blob in blobs))
        setter(layer, "_changed", True)
        record = layer._record
        if record is not None:
            # The old values were just read to compute the new ones: hand their
            # mapped pages back, so peak memory is the changed bytes once, not twice.
            for old in record.blobs:
                record.file.release(old.start, old.end)

    def _read_weights_privately(self, layers: Sequence[Layer]) -> None:
        """Give ``layers`` private copies of their weights, read with ``pread``.

        For the weights a fold computes with: a view into the caffemodel's memory
        map would kill the process with SIGBUS if another process truncated the
        file meanwhile, a copy read now fails cleanly instead
        (:meth:`~bnfuse.io.caffemodel.CaffemodelFile.read_blob`). Weights that
        are no views (edited, or from bytes) are left as they are, and so are those
        of a file held with a read lease (the command line's), which cannot shrink
        under bnfuse unnoticed.
        """
        for layer in layers:
            record = layer._record
            if (record is None or layer._changed or record.file.fileno() is None
                    or record.file.leased):
                continue
            if len(record.blobs) != len(layer._blobs):
                continue
            copies = tuple(record.file.read_blob(blob).reshape(current.shape)
                           for blob, current in zip(record.blobs, layer._blobs, strict=True))
            object.__setattr__(layer, "_blobs", copies)

    def rename_layer(self, layer: Layer, name: str) -> None:
        """Give a layer a new name (its weights move with it on save)."""
        self._text(layer, "rename_layer").set("name", require_text(name, "Net.rename_layer",
                                                                   "name"))
        self._rederive(layer)

    def check_unchanged_params(self) -> None:
        """Refuse to save when a layer's ``param`` was edited in place (the edit would be
        lost: the text is what is saved). Raises :class:`BnfuseError` naming the layer."""
        for layer in self.layers:
            if layer.param.SerializeToString(deterministic=True) != layer._param_bytes:
                raise BnfuseError(
                    f"layer {layer.name!r}: its param was changed in place, which saving "
                    "would lose; use Net.set_field or Net.clear_field to edit a layer",
                    layer=layer.name)


# --- reading ---------------------------------------------------------------


@dataclass
class _Input:
    data: bytes
    source: str
    path: Path | None
    identity: FileId | None = None


#: The largest prototxt bnfuse reads: real deploy files are under 1 MB, so this
#: only stops a wrong file (a dataset, a disk image) from being read into memory.
_MAX_PROTOTXT_BYTES = 256 << 20


def _too_large(source: str, what: str) -> BnfuseError:
    return BnfuseError(f"{source}: is over {_MAX_PROTOTXT_BYTES >> 20} MiB, far more than any "
                       f"{what}; check the path", path=source)


def _read_fd(fd: int, source: str, what: str) -> bytes:
    """The whole regular file open at ``fd``, checked against its size at opening."""
    size = os.fstat(fd).st_size
    if size > _MAX_PROTOTXT_BYTES:
        raise _too_large(source, what)
    data = bytearray(size)
    view = memoryview(data)
    done = 0
    while done < size:
        got = os.readv(fd, [view[done:]])
        if got == 0:
            raise BnfuseError(f"{source}: the file shrank while bnfuse was reading it "
                              f"({size} bytes at opening, {done} read); try again once it "
                              "is complete", path=source)
        done += got
    return bytes(data)


def _read_stream(src: IO[bytes], source: str, what: str) -> bytes:
    """Read a file object to its end, but never more than :data:`_MAX_PROTOTXT_BYTES`."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk: Any = src.read(min(1 << 20, _MAX_PROTOTXT_BYTES + 1 - total))
        if not chunk:
            break
        if isinstance(chunk, str):  # text-mode handles give str: accept them too
            chunk = chunk.encode("utf-8")
        chunks.append(bytes(chunk))
        total += len(chunk)
        if total > _MAX_PROTOTXT_BYTES:
            raise _too_large(source, what)
    return b"".join(chunks)


def _not_regular(source: str, kind: str, what: str) -> BnfuseError:
    if kind == "a folder":
        return BnfuseError(f"{source}: is a directory, expected a {what} file", path=source)
    return BnfuseError(f"{source}: is {kind}, not a regular file; bnfuse reads a {what} from a "
                       "regular file (or bytes or a file object through the API)", path=source)


def _read_source(src: Source, what: str) -> _Input:
    """The bytes of a prototxt given as bytes, a path or a file object, with the file's
    identity; anything but a regular file (a FIFO, a device, a folder) is refused
    before a byte is read."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _Input(bytes(src), f"<{what} bytes>", None)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        shown = display_path(str(path))
        try:
            # Checked before opening: opening a FIFO for reading waits for a writer.
            kind = file_kind(os.stat(path).st_mode)
            if kind is not None:
                raise _not_regular(shown, kind, what)
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BnfuseError(f"{shown}: no such file", path=shown) from None
        except OSError as exc:
            raise BnfuseError(f"{shown}: cannot read: {exc.strerror or exc}", path=shown) from None
        except ValueError as exc:  # a NUL byte in the path
            raise BnfuseError(f"{shown}: cannot read: {exc}", path=shown) from None
        try:
            info = os.fstat(fd)
            kind = file_kind(info.st_mode)
            if kind is not None:  # it changed between the check and the open
                raise _not_regular(shown, kind, what)
            data = _read_fd(fd, shown, what)
        except OSError as exc:
            raise BnfuseError(f"{shown}: cannot read: {exc.strerror or exc}", path=shown) from None
        finally:
            os.close(fd)
        return _Input(data, shown, path, FileId.of_stat(info, shown))
    if hasattr(src, "read"):
        name = getattr(src, "name", None)
        shown = display_path(str(name)) if name else f"<{what} stream>"
        opened: os.stat_result | None
        try:
            opened = os.fstat(src.fileno())
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            opened = None
        identity = None
        if opened is not None:
            kind = file_kind(opened.st_mode)
            # A pipe or a socket is a stream to read to its end; a device never ends.
            if kind is not None and not (stat.S_ISFIFO(opened.st_mode)
                                         or stat.S_ISSOCK(opened.st_mode)):
                raise _not_regular(shown, kind, what)
            if kind is None:
                identity = FileId.of_stat(opened, shown)
        try:
            data = _read_stream(src, shown, what)
        except (OSError, ValueError) as exc:
            raise BnfuseError(f"{shown}: cannot read: {exc}", path=shown) from None
        stream_path = Path(name) if isinstance(name, str) and os.path.exists(name) else None
        return _Input(data, shown, stream_path, identity)
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
            "Caffe accepts only one kind per layer", path=source, layer=param.name)
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
        object.__setattr__(target, "_blobs", tuple(arrays))
        object.__setattr__(target, "_record", record)
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
    # Current-format layers are filled one by one in load(), so each is parsed once; a V1
    # net (with "layers") is filled whole, since the upgrade needs all of it.
    skip = () if document.root.first("layers") is not None else ("layer",)
    unknown = fill_message(document.root, net_param, source=source, skip=skip)
    _refuse_unknown_top_fields(document, unknown, source)
    if not needs_format_upgrade(net_param):
        return document, net_param, [], None
    try:
        notes = upgrade_net(net_param)
    except UpgradeError as exc:
        raise UpgradeError(f"{source}: {exc}", path=source) from None
    upgraded_text = text_format.MessageToString(net_param)
    return Document.parse(upgraded_text, source=source), net_param, notes, text


#: Fields of Caffe's SolverParameter that a net never has: a file setting one is a solver.
_SOLVER_FIELDS = frozenset({
    "base_lr", "lr_policy", "max_iter", "solver_mode", "net", "net_param", "train_net",
    "test_net", "test_iter", "test_interval", "momentum", "weight_decay", "snapshot",
    "snapshot_prefix", "display", "solver_type", "stepsize", "stepvalue", "gamma", "power",
    "iter_size", "average_loss", "test_initialization", "device_id", "regularization_type",
    "clip_gradients", "random_seed", "delta", "momentum2", "rms_decay", "train_state",
})


def _refuse_unknown_top_fields(document: Document, unknown: Sequence[str], source: str) -> None:
    """Refuse top-level fields NetParameter does not have, as Caffe's parser does.

    Fork fields inside layers are kept (they are read from the text); a field at the
    top of the file is no fork's layer field, and a file full of them is usually a
    solver or some other prototxt given in place of the net.
    """
    top = [path for path in unknown if "." not in path and "[" not in path]
    if not top:
        return
    solver = [name for name in top if name in _SOLVER_FIELDS]
    first = document.root.first(solver[0] if solver else top[0])
    line, column = (first.line, first.column) if first is not None else (1, 1)
    if solver:
        shown = ", ".join(repr(name) for name in solver[:3])
        raise PrototxtSchemaError.at(
            source, line, column,
            f"this is a solver file (it sets {shown}), not a net definition; pass the net's "
            "prototxt (the file its 'net:' field names)")
    raise PrototxtSchemaError.at(
        source, line, column,
        f"field {excerpt(top[0])} is not a field of a Caffe net (NetParameter), so Caffe "
        "refuses the file; is it a net definition?")


def _refuse_orphan_bottoms(layers: Sequence[Layer], excluded: Sequence[Layer],
                           source: str, phase: str) -> None:
    """Refuse a bottom that no layer of the phase before it produces, as Caffe does.

    Caffe's ``Net::Init`` stops at such a bottom with "Unknown bottom blob"; bnfuse
    would otherwise see a net input there and plan, shape and blame the wrong layer.
    A net that declares no input at all (no ``Input``, no data layer) is a fragment:
    bnfuse loads those, their unproduced bottoms being the inputs.
    """
    from bnfuse.layertypes.datalayers import is_data_layer
    from bnfuse.layertypes.shapes import is_input_layer

    made_by_excluded: dict[str, Layer] = {}
    for other in excluded:
        for top in other.tops:
            made_by_excluded.setdefault(top, other)
    declares_inputs = any(is_input_layer(layer) for layer in layers)
    produced: set[str] = set()
    for layer in layers:
        for name in layer.bottoms:
            if name in produced:
                continue
            maker = made_by_excluded.get(name)
            if maker is not None:
                # A train-only file (its data layers are TRAIN-only) is still foldable:
                # its deploy form is made from the TRAIN phase's layers.
                hint = (f"; for a train-only net, make its deploy form from the {_other(phase)} "
                        f"phase (phase={_other(phase)!r} with deploy=True)"
                        if is_data_layer(maker) else "")
                raise ModelMismatchError(
                    f"{source}: layer {excerpt(layer.name)} ({layer.type}) reads blob "
                    f"{excerpt(name)}, which no {phase}-phase layer produces (only "
                    f"{excerpt(maker.name)}, which the {phase} phase excludes): Caffe refuses "
                    f"this net (\"Unknown bottom blob\"); give the {phase} phase its own "
                    f"producer of the blob{hint}", path=source, layer=layer.name)
            if declares_inputs:
                raise ModelMismatchError(
                    f"{source}: layer {excerpt(layer.name)} ({layer.type}) reads blob "
                    f"{excerpt(name)}, which no layer before it produces and no input "
                    "declares: Caffe refuses this net (\"Unknown bottom blob\")",
                    path=source, layer=layer.name)
        produced.update(layer.tops)


def _refuse_train_view(net: Net, func: str) -> None:
    """A TRAIN-phase view keeps the file's include rules, so it would not load back as
    the same net: only its deploy form (a TEST net) is written or run."""
    if net.phase != "TEST":
        raise BnfuseError(
            f"{func}: {net.prototxt_source} was loaded with phase={net.phase!r}; make its "
            "deploy form first (deploy=True, or bnfuse.deploy.to_deploy(net))")


def _other(phase: str) -> str:
    return "TRAIN" if phase == "TEST" else "TEST"


def _phase_of(phase: object, func: str) -> Any:
    """The schema's enum value of a phase given as ``"TEST"`` or ``"TRAIN"``."""
    if not isinstance(phase, str):
        raise TypeError(f"{func}: phase must be a str, not {type(phase).__name__}")
    if phase not in ("TEST", "TRAIN"):
        raise BnfuseError(f"{func}: phase must be 'TEST' or 'TRAIN', not {excerpt(phase)}")
    return TEST if phase == "TEST" else TRAIN


def _input_layer(net_param: NetParameter,
                 source: str) -> tuple[LayerParameter | None, list[str]]:
    """The Input layer Caffe makes from top-level input fields (the text keeps the fields),
    with the upgrade's notes."""
    if not net_param.input:
        return None, []
    probe = NetParameter()
    probe.input.extend(net_param.input)
    probe.input_dim.extend(net_param.input_dim)
    probe.input_shape.extend(net_param.input_shape)
    try:
        notes = upgrade_net(probe)
    except UpgradeError as exc:
        raise UpgradeError(f"{source}: {exc}", path=source) from None
    return (probe.layer[0] if probe.layer else None), notes


def _slot(layer: Layer, field: str, index: object, method: str) -> int:
    """``index`` as a position among the layer's ``field`` entries (tops or bottoms)."""
    position = require_int(index, f"Net.{method}", "index")
    count = len(layer.tops if field == "top" else layer.bottoms)
    if not 0 <= position < count:
        raise BnfuseError(f"Net.{method}: layer {excerpt(layer.name)} has {count} {field}s, "
                          f"no {field} {position}")
    return position


def load(prototxt: Source, caffemodel: Source | None = None, *,
         require_weights: bool = False, phase: str = "TEST") -> Net:
    """Read a Caffe net: the prototxt, and the weights when a caffemodel is given.

    Accepts paths, bytes or binary file objects. Old formats (V0, V1, ``input``
    fields) are upgraded as Caffe does (``net.upgrade_notes`` says what changed);
    layers are filtered for the TEST phase; weights are matched by layer name. What
    the typed parameters do not say is in ``net.warnings``. With
    ``require_weights=True`` a layer that needs weights and has none (no record in
    the caffemodel, or no caffemodel) raises
    :class:`~bnfuse.errors.ModelMismatchError` naming the layers. Raises a
    :class:`BnfuseError` subclass naming the file and the place on any problem.

    ``phase="TRAIN"`` filters the layers for the TRAIN phase instead: for a train-only
    file (``train.prototxt`` whose data layers say ``include { phase: TRAIN }``), whose
    TEST phase has no input. Such a net is only made into its deploy form
    (``fold(..., phase="TRAIN", deploy=True)``, :func:`bnfuse.deploy.to_deploy`).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'input: "data" input_dim: 1 input_dim: 3 input_dim: 4 '
        ...                   b'input_dim: 4 layer { name: "r" type: "ReLU" bottom: "data" '
        ...                   b'top: "data" }')
        >>> [(layer.type, layer.tops) for layer in net.layers], net.upgrade_notes
        ([('Input', ('data',)), ('ReLU', ('data',))], ['input fields became an Input layer'])
        >>> try:
        ...     bnfuse.load(b'layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y" '
        ...                 b'inner_product_param { num_output: 2 } }', require_weights=True)
        ... except bnfuse.ModelMismatchError as exc:
        ...     print(str(exc).split(": ", 1)[1])
        1 layer needs weights and has none (no caffemodel given): 'fc' (InnerProduct)
    """
    require_source(prototxt, "load", "prototxt")
    require_source(caffemodel, "load", "caffemodel", optional=True)
    require_bool(require_weights, "load", "require_weights")
    phase_value = _phase_of(phase, "load")
    text_input = _read_source(prototxt, "prototxt")
    document, net_param, notes, original_text = _parse_prototxt(text_input.data,
                                                                text_input.source)
    state = NetState()
    state.CopyFrom(net_param.state)
    # Inference: never the file's own phase (a solver's), TEST unless asked otherwise.
    state.phase = phase_value
    layers: list[Layer] = []
    input_layer, input_notes = _input_layer(net_param, text_input.source)
    notes = [*notes, *input_notes]
    if input_layer is not None:
        layers.append(Layer(input_layer, source=text_input.source))
    excluded: list[Layer] = []
    for i, node in enumerate(document.root.messages("layer")):
        param, unknown = _derive_param(node, text_input.source, f"layer[{i}].")
        kept = layer_included(param, state, text_input.source)
        (layers if kept else excluded).append(
            Layer(param, node, unknown_fields=unknown, source=text_input.source))
    if not layers:
        what = (f"all {len(excluded)} of its layers are excluded from the {phase} phase"
                if excluded else "it has no layers and no inputs")
        raise PrototxtSchemaError(
            f"{text_input.source}: is not a net bnfuse can use: {what}; expected a Caffe "
            "net definition with 'layer { ... }' entries", path=text_input.source)
    _refuse_orphan_bottoms(layers, excluded, text_input.source, phase)
    weights = None
    caffemodel_path = None
    if caffemodel is not None:
        if isinstance(caffemodel, (str, os.PathLike)):
            caffemodel_path = Path(caffemodel)
        weights = cm.read_caffemodel(caffemodel)
        _check_pair(text_input, weights)
        _attach_weights(layers, weights, weights.source)
    net = Net(name=net_param.name, layers=layers, document=document,
              prototxt_source=text_input.source, prototxt_path=text_input.path,
              weights=weights, caffemodel_path=caffemodel_path,
              original_text=original_text, upgrade_notes=notes)
    net._excluded = excluded
    net._phase = phase
    net._input_files = tuple(i for i in (text_input.identity,
                                         weights.identity if weights is not None else None)
                             if i is not None)
    _take_warnings(net, require_weights)
    return net


def _take_warnings(net: Net, require_weights: bool) -> None:
    """Fill ``net.warnings``; refuse layers without weights when they are required."""
    from bnfuse.layertypes.notices import layers_without_weights, net_warnings

    if require_weights:
        missing = layers_without_weights(net.layers)
        if missing:
            where = (f"in {net.weights.source}" if net.weights is not None
                     else "(no caffemodel given)")
            shown = ", ".join(f"{excerpt(layer.name)} ({layer.type})" for layer in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            count = f"{len(missing)} layer{'s' if len(missing) > 1 else ''}"
            raise ModelMismatchError(
                f"{net.prototxt_source}: {count} need{'' if len(missing) > 1 else 's'} "
                f"weights and ha{'ve' if len(missing) > 1 else 's'} none {where}: "
                f"{shown}{more}", path=net.prototxt_source, layer=missing[0].name)
    net._warnings = tuple(net_warnings(net.layers, weights_loaded=net.weights is not None))


def _check_pair(text: _Input, weights: cm.CaffemodelFile) -> None:
    """Refuse a prototxt and a caffemodel that bnfuse wrote in two different saves."""
    ours, theirs = text_marker(text.data), weights.pair_id
    if ours is not None and theirs is not None and ours != theirs:
        raise ModelMismatchError(
            f"{text.source}: was not written together with {weights.source} (bnfuse pair ids "
            f"{ours} and {theirs}): a save was cut between its two renames, or the files come "
            "from different saves; write the pair again (or delete the '# bnfuse pair' line to "
            "load them anyway)", path=text.source)


# --- writing ---------------------------------------------------------------


def _header_of(layer: Layer) -> LayerParameter:
    """The caffemodel header of a changed layer: its final parameters, as Caffe's
    ``Net::ToProto`` writes them, without blobs (the writer adds them)."""
    header = LayerParameter()
    header.CopyFrom(layer.param)
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
            if layer is not None and (layer._changed or rewrite_all):
                entries.append(cm.NewLayer(header=_header_of(layer), blobs=list(layer.blobs)))
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
        entries.append(cm.NewLayer(header=_header_of(layer), blobs=list(layer.blobs)))
    return entries


def _destination(dest: Destination, what: str) -> str:
    """The output path as given (as a string: ``Path`` would drop a trailing separator,
    turning ``out/`` into a file named ``out``)."""
    if not isinstance(dest, (str, os.PathLike)):
        raise BnfuseError(f"the {what} output must be a path, not a {type(dest).__name__}")
    return os.fsdecode(os.fspath(dest))


def _inputs_of(net: Net) -> list[FileId | Path]:
    """What no output of ``net`` may replace: its input files by identity (and by path,
    for a net whose identities were not taken, e.g. one built by hand)."""
    found: list[FileId | Path] = list(net._input_files)
    if not found:
        found = [p for p in (net.prototxt_path, net.caffemodel_path) if p is not None]
    if net.weights is not None and net.weights.identity is not None:
        found.append(net.weights.identity)
    return found


def _text_payload(net: Net, pair_id: str | None, rendered: str | None = None) -> bytes:
    """The prototxt to write: the text as read for an unedited net, else rendered,
    with the pair marker of this save (an edited text loses the one it was read with)."""
    if not net.edited:
        text = net._original_text if net._original_text is not None else net.document.render()
        return text.encode("utf-8")
    text = net.document.render() if rendered is None else rendered
    text = with_text_marker(text, pair_id) if pair_id is not None else strip_text_marker(text)
    return text.encode("utf-8")


def _weights_plan(net: Net, dest: str, pair_id: str | None) -> CaffemodelPlan:
    """The caffemodel of ``net``, planned (size checked) before any file is created."""
    if net.weights is None and not any(layer.blobs for layer in net.layers):
        raise OutputError(
            f"{dest}: the net has no weights to write; load it with a caffemodel", path=dest)
    if not net.edited and net.weights is not None:
        pair_id = net.weights.pair_id  # unedited: the source byte for byte, id included
    return plan_caffemodel(_caffemodel_entries(net), source=net.weights, pair_id=pair_id,
                           dest=dest)


def save(
    net: Net,
    prototxt: Destination,
    caffemodel: Destination | None = None,
    *,
    check: Callable[[str, str], None] | None = None,
) -> None:
    """Write ``net`` as a prototxt and, when a path is given, a caffemodel.

    Unchanged layers keep their exact text and caffemodel bytes; an unedited net
    is written back byte for byte. Both files are written to temporary files,
    and renamed into place together only when both are complete: after an error
    or a signal (SIGINT, SIGTERM, SIGHUP) both destinations are as they were.
    An edited net's pair carries one new pair id (a last comment line of the
    prototxt, an unknown-to-Caffe field of the caffemodel) that :func:`load`
    checks. An output that is one of the net's input files (by device and inode,
    whatever path names it), a folder, a device, a FIFO or a socket is refused
    with :class:`~bnfuse.errors.OutputError` before anything is written.

    ``check(prototxt_temp, caffemodel_temp)``, when given with a caffemodel, is
    called with the paths of the two complete temporary files before either
    replaces its destination: whatever it raises leaves both destinations as they
    were (``bnfuse fold --verify`` verifies the files it is about to commit).

    Example:
        >>> import bnfuse, tempfile, pathlib
        >>> text = b'layer { name: "r"  type: "ReLU" bottom: "x" top: "x" }  # kept\\n'
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "out.prototxt"
        >>> bnfuse.save(bnfuse.load(text), out)
        >>> out.read_bytes() == text
        True
    """
    require_net(net, "save")
    _refuse_train_view(net, "save")
    require_destination(prototxt, "save", "prototxt")
    require_destination(caffemodel, "save", "caffemodel", optional=True)
    text_path = _destination(prototxt, "prototxt")
    model_path = None if caffemodel is None else _destination(caffemodel, "caffemodel")
    inputs = _inputs_of(net)
    dests: list[Destination] = [text_path] if model_path is None else [text_path, model_path]
    check_destinations(dests, inputs=inputs, labels=["prototxt", "caffemodel"])
    net.check_unchanged_params()
    # An edited net is rendered once; its pair id is the hash of that text, so the same
    # fold writes the same bytes every time.
    rendered = net.document.render() if net.edited else None
    pair_id = pair_id_for(rendered) if model_path is not None and rendered is not None else None
    payload = _text_payload(net, pair_id, rendered)
    if model_path is None:
        if check is not None:
            raise TypeError("save(check=...) needs a caffemodel destination")
        with atomic_outputs([text_path], inputs=inputs) as (text_file,):
            text_file.write(payload)
        return
    plan = _weights_plan(net, display_path(model_path), pair_id)
    temps: list[OutputFile] = []

    def before_commit() -> None:
        plan.check_sources()
        if check is not None:
            check(temps[0].temp, temps[1].temp)

    with atomic_outputs(dests, inputs=[*inputs, *plan.protected()],
                        labels=["prototxt", "caffemodel"],
                        before_commit=before_commit) as files:
        temps.extend(files)
        text_file, model_file = files
        text_file.write(payload)
        plan.write_to(model_file)


def save_weights(net: Net, caffemodel: Destination) -> None:
    """Write only the caffemodel of ``net`` (same rules as :func:`save`).

    A caffemodel written alone carries no pair id (an edited net's drops the one
    it was read with): no prototxt was committed with it.

    Example:
        >>> import bnfuse, tempfile, pathlib
        >>> net = bnfuse.load(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "copy.caffemodel"
        >>> save_weights(net, out)
        >>> out.read_bytes() == bnfuse.example_path("caffemodel").read_bytes()
        True
    """
    require_net(net, "save_weights")
    _refuse_train_view(net, "save_weights")
    require_destination(caffemodel, "save_weights", "caffemodel")
    model_path = _destination(caffemodel, "caffemodel")
    inputs = _inputs_of(net)
    check_destinations([model_path], inputs=inputs)
    net.check_unchanged_params()
    plan = _weights_plan(net, display_path(model_path), None)
    with atomic_outputs([model_path], inputs=[*inputs, *plan.protected()],
                        before_commit=plan.check_sources) as (model_file,):
        plan.write_to(model_file)


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
]
