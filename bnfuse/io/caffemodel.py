"""Caffemodel bytes: index the layers and blobs of a memory-mapped file, stream a new one.

A caffemodel is a serialized ``NetParameter``.  Parsing it through protobuf
copies every weight into Python lists (seconds to tens of seconds for VGG-16),
and re-serializing it would rewrite fork fields bnfuse does not know.  This
module instead walks the wire format once (:mod:`bnfuse.io.wire`), remembers the
byte span of every layer record and every blob array, and hands out read-only
``numpy`` views straight into the memory map.  Writing streams a new file in
which untouched layer records are copied byte for byte and only new layers are
encoded, so an unchanged net comes out identical to its source.

Example:
    >>> import numpy as np
    >>> from bnfuse.proto import LayerParameter
    >>> import io, os, tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "tiny.caffemodel")
    >>> conv = NewLayer(LayerParameter(name="conv1", type="Convolution"),
    ...                 [np.ones((2, 1, 1, 1), np.float32), np.zeros(2, np.float32)])
    >>> write_caffemodel(out, [conv], source=None)
    >>> with read_caffemodel(out) as model:
    ...     layer = model.layers[0]
    ...     print(layer.name, layer.type, layer.blobs[0].shape, layer.blobs[1].array())
    conv1 Convolution (2, 1, 1, 1) [0. 0.]
"""

from __future__ import annotations

import contextlib
import io
import math
import mmap
import os
import stat
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import IO, TYPE_CHECKING, BinaryIO, Literal, TypeAlias, Union

import numpy as np

from bnfuse.errors import CaffemodelError, OutputError
from bnfuse.io.atomic import atomic_write, copy_range
from bnfuse.io.upgrade import V0_TYPES
from bnfuse.io.upgrade import V1_TYPE_NAMES as V1_TYPE_NAMES_BY_ENUM
from bnfuse.io.wire import (
    WIRETYPE_FIXED32,
    WIRETYPE_FIXED64,
    WIRETYPE_LENGTH_DELIMITED,
    WIRETYPE_VARINT,
    Buffer,
    encode_len_header,
    encode_tag,
    encode_varint,
    iter_fields,
    len_field_size,
    read_field,
    read_varint,
    to_signed64,
)
from bnfuse.proto import V1LayerParameter

if TYPE_CHECKING:
    from bnfuse.proto import LayerParameter, NetParameter

StrPath: TypeAlias = Union[str, "os.PathLike[str]"]

#: The largest message protobuf readers accept (Caffe, OpenCV and pycaffe all
#: parse the whole file as one message).
MAX_CAFFEMODEL_BYTES = 2**31 - 1

# NetParameter field numbers.
_NET_LAYERS_V1 = 2
_NET_LAYER_V2 = 100
# LayerParameter (V2) field numbers.
_V2_NAME, _V2_TYPE, _V2_BLOBS = 1, 2, 7
# V1LayerParameter field numbers; field 1 holds a whole V0LayerParameter.
_V1_V0LAYER, _V1_NAME, _V1_TYPE, _V1_BLOBS = 1, 4, 5, 6
# V0LayerParameter field numbers (type is a string such as "conv").
_V0_NAME, _V0_TYPE, _V0_BLOBS = 1, 2, 50
# BlobProto field numbers.
_B_NUM, _B_CHANNELS, _B_HEIGHT, _B_WIDTH = 1, 2, 3, 4
_B_DATA, _B_SHAPE, _B_DOUBLE_DATA = 5, 7, 8
_B_RAW_TYPE, _B_RAW_DATA = 10, 12
# BlobShape.dim
_SHAPE_DIM = 1

#: One-byte tags of unpacked repeated float (field 5, wire type 5) and double
#: (field 8, wire type 1) elements: runs of them are located with numpy.
_TAG_FLOAT_UNPACKED = (_B_DATA << 3) | WIRETYPE_FIXED32
_TAG_DOUBLE_UNPACKED = (_B_DOUBLE_DATA << 3) | WIRETYPE_FIXED64

#: NVIDIA Caffe's ``Type`` enum (caffe.proto) -> numpy dtype of ``raw_data``.
#: INT, UINT and BOOL are declared there but never used for weights.
RAW_DATA_TYPES: dict[int, np.dtype[np.floating]] = {
    0: np.dtype("<f8"),  # DOUBLE
    1: np.dtype("<f4"),  # FLOAT
    2: np.dtype("<f2"),  # FLOAT16
}
_RAW_TYPE_OF: dict[str, int] = {"f8": 0, "f4": 1, "f2": 2}

#: Caffe's UpgradeV1LayerType keyed by V1 enum number (the names live in bnfuse.io.upgrade).
V1_TYPE_NAMES: dict[int, str] = {
    V1LayerParameter.LayerType.Value(enum_name): type_name
    for enum_name, type_name in V1_TYPE_NAMES_BY_ENUM.items()
}

#: Caffe's UpgradeV0LayerType composed with UpgradeV1LayerType: V0 type string -> V2 type.
V0_TYPE_NAMES: dict[str, str] = {
    v0_type: V1_TYPE_NAMES_BY_ENUM[enum_name] for v0_type, enum_name in V0_TYPES.items()
}

#: Fields kept when a layer header does not parse with bnfuse's schema (a fork
#: reused a number with another type): identity, wiring, learning rates, rules.
_FALLBACK_V2_FIELDS = frozenset({1, 2, 3, 4, 6, 8, 9, 10})
_FALLBACK_V1_FIELDS = frozenset({2, 3, 4, 5, 7, 8, 32, 33, 35, 1001, 1002})
_FALLBACK_NET_FIELDS = frozenset({1, 3, 4, 5, 6, 7, 8})

_CORRUPT_HINT = "the file is truncated or corrupt; copy or download it again"
_TEXT_DETAIL = "this looks like a prototxt (text), not a binary caffemodel"
_TEXT_HINT = "pass the prototxt as the first argument and the .caffemodel as the second"
_EMPTY_HINT = "pass the .caffemodel written by Caffe"

#: Ranges shorter than this are written from the memory map; longer ones are
#: copied by the kernel (copy_file_range), which skips user space entirely.
_KERNEL_COPY_MIN = 1 << 20

BlobEncoding = Literal["data", "double_data", "raw_data", "none"]
BlobFormat = Literal["data", "double_data", "raw_float16", "raw_float32", "raw_float64"]


@dataclass(frozen=True)
class _Segment:
    """Elements of one array stored at ``offset + i * stride`` for ``i < count``."""

    offset: int
    count: int
    stride: int


class BlobRecord:
    """One ``BlobProto`` of a layer, located in the file but not decoded.

    ``shape`` follows Caffe's ``Blob::FromProto``: the legacy
    ``num/channels/height/width`` fields when any of them is present
    (``legacy_shape`` is then true), else ``shape.dim``.  ``encoding`` says which
    field holds the values (``"data"``, ``"double_data"``, ``"raw_data"`` or
    ``"none"``) and ``dtype`` their element type.

    Example:
        >>> import numpy as np
        >>> from bnfuse.proto import LayerParameter
        >>> layer = NewLayer(LayerParameter(name="s", type="Scale"), [np.arange(3, dtype="<f4")])
        >>> blob = read_caffemodel(layer.to_bytes()).layers[0].blobs[0]
        >>> blob.shape, blob.encoding, blob.array().tolist()
        ((3,), 'data', [0.0, 1.0, 2.0])
    """

    __slots__ = (
        "_file",
        "_segments",
        "count",
        "dtype",
        "encoding",
        "end",
        "index",
        "layer",
        "legacy_shape",
        "shape",
        "start",
    )

    def __init__(
        self,
        file: CaffemodelFile,
        *,
        layer: str,
        index: int,
        start: int,
        end: int,
        shape: tuple[int, ...],
        legacy_shape: bool,
        dtype: np.dtype[np.floating],
        encoding: BlobEncoding,
        segments: tuple[_Segment, ...],
    ) -> None:
        self._file = file
        #: Name of the layer holding this blob, for messages.
        self.layer = layer
        #: Position among the layer's blobs.
        self.index = index
        #: Byte span of the whole blob field (tag included) in the file.
        self.start = start
        self.end = end
        self.shape = shape
        self.legacy_shape = legacy_shape
        self.dtype = dtype
        self.encoding = encoding
        self._segments = segments
        #: Number of values (the product of ``shape``).
        self.count = math.prod(shape)

    def array(self) -> np.ndarray:
        """The blob's values as a read-only array of ``shape``.

        Packed ``data``/``double_data`` and ``raw_data`` are zero-copy views into
        the file's memory map; unpacked or split arrays are gathered into a copy.

        Example:
            >>> import numpy as np
            >>> from bnfuse.proto import LayerParameter
            >>> raw = NewLayer(LayerParameter(name="b"), [np.eye(2, dtype=np.float64)]).to_bytes()
            >>> read_caffemodel(raw).layers[0].blobs[0].array()
            array([[1., 0.],
                   [0., 1.]])
        """
        view = self._file._require_open()
        segments = self._segments
        if not segments:
            values = np.empty(0, self.dtype)
        elif len(segments) == 1 and segments[0].stride == self.dtype.itemsize:
            seg = segments[0]
            values = np.frombuffer(view, self.dtype, seg.count, seg.offset)
        else:
            values = np.concatenate(
                [np.ndarray((s.count,), self.dtype, view, s.offset, (s.stride,)) for s in segments]
            )
        values = values.reshape(self.shape)
        # Views of a bytearray source would be writable; weights read from a
        # file are never edited in place.
        values.flags.writeable = False
        return values

    def __repr__(self) -> str:
        return (
            f"BlobRecord(layer={self.layer!r}, index={self.index}, shape={self.shape}, "
            f"dtype={self.dtype.name}, encoding={self.encoding!r})"
        )


@dataclass(frozen=True)
class _Part:
    """A non-blob field of a layer record; ``inner`` is set for a V0 layer nested in a V1 one."""

    number: int
    start: int
    end: int
    inner: tuple[_Part, ...] | None = None


class LayerRecord:
    """One layer record (``layer`` or V1 ``layers`` field) of a caffemodel.

    ``type`` is the V2 type string even for V1/V0 records (converted as Caffe's
    upgrade does).  ``start:end`` is the whole record, tag included, so a writer
    can copy it verbatim.

    Example:
        >>> import numpy as np
        >>> from bnfuse.proto import LayerParameter
        >>> data = NewLayer(LayerParameter(name="fc", type="InnerProduct", bottom=["x"]),
        ...                 [np.zeros((4, 3), np.float32)]).to_bytes()
        >>> rec = read_caffemodel(data).layers[0]
        >>> rec.name, rec.type, rec.version, (rec.start, rec.end) == (0, len(data))
        ('fc', 'InnerProduct', 2, True)
        >>> list(rec.header().bottom)
        ['x']
    """

    __slots__ = (
        "_file",
        "_header",
        "_parts",
        "blobs",
        "end",
        "header_fallback",
        "name",
        "start",
        "type",
        "version",
    )

    def __init__(
        self,
        file: CaffemodelFile,
        *,
        name: str,
        type: str,
        version: int,
        start: int,
        end: int,
        parts: tuple[_Part, ...],
    ) -> None:
        self._file = file
        self.name = name
        self.type = type
        #: 2 for a ``layer`` (LayerParameter) record, 1 for a V1 ``layers`` record (V0 inside too).
        self.version = version
        self.start = start
        self.end = end
        self.blobs: list[BlobRecord] = []
        self._parts = parts
        self._header: LayerParameter | V1LayerParameter | None = None
        #: True when header() had to fall back to the basic fields (a fork's field clashed).
        self.header_fallback = False

    @property
    def file(self) -> CaffemodelFile:
        """The caffemodel this record belongs to."""
        return self._file

    @property
    def is_v0(self) -> bool:
        """True for a 2013-format record: a V0LayerParameter nested in a V1 record."""
        return any(p.inner is not None for p in self._parts)

    def header_bytes(self) -> bytes:
        """The record's non-blob fields, exactly as stored (V0 nesting rebuilt without blobs).

        Example:
            >>> from bnfuse.proto import LayerParameter
            >>> import numpy as np
            >>> hdr = LayerParameter(name="x", type="ReLU")
            >>> rec = read_caffemodel(NewLayer(hdr, [np.ones(1, np.float32)]).to_bytes()).layers[0]
            >>> rec.header_bytes() == hdr.SerializeToString()
            True
        """
        view = self._file._require_open()
        return b"".join(_part_bytes(view, p) for p in self._parts)

    def header(self) -> LayerParameter | V1LayerParameter:
        """The record's non-blob fields decoded with bnfuse's schema: a new message per call.

        A ``LayerParameter`` for version 2, a ``V1LayerParameter`` for version 1;
        the caller may edit it freely.
        Fields the schema does not know are kept as unknown fields.  When a fork
        reused a field number with another type so that the header does not
        parse, only name/type/bottom/top/param/include/exclude/phase are decoded
        and ``header_fallback`` is set: a fork's params never stop a load.

        Example:
            >>> from bnfuse.proto import LayerParameter, TRAIN
            >>> import numpy as np
            >>> hdr = LayerParameter(name="d", type="Data", top=["data"], phase=TRAIN)
            >>> rec = read_caffemodel(NewLayer(hdr, []).to_bytes()).layers[0]
            >>> rec.header().phase == TRAIN
            True
        """
        from google.protobuf.message import DecodeError

        from bnfuse.proto import LayerParameter, V1LayerParameter

        cls: type[LayerParameter] | type[V1LayerParameter]
        cls = LayerParameter if self.version == 2 else V1LayerParameter
        if self._header is not None:
            # A copy: callers edit headers (fold rewrites), the cache must stay pristine.
            fresh = cls()
            fresh.CopyFrom(self._header)  # type: ignore[arg-type]
            return fresh
        view = self._file._require_open()
        header: LayerParameter | V1LayerParameter
        try:
            header = cls.FromString(self.header_bytes())
        except (DecodeError, ValueError, RuntimeError):
            self.header_fallback = True
            keep = _FALLBACK_V2_FIELDS if self.version == 2 else _FALLBACK_V1_FIELDS
            data = b"".join(_part_bytes(view, p) for p in self._parts if p.number in keep)
            try:
                header = cls.FromString(data)
            except (DecodeError, ValueError, RuntimeError):
                header = cls(name=self.name)
                if isinstance(header, LayerParameter):
                    header.type = self.type
        self._header = header
        fresh = cls()
        fresh.CopyFrom(header)  # type: ignore[arg-type]
        return fresh

    def arrays(self) -> list[np.ndarray]:
        """Every blob's :meth:`BlobRecord.array`, in order.

        Example:
            >>> from bnfuse.proto import LayerParameter
            >>> import numpy as np
            >>> rec = read_caffemodel(
            ...     NewLayer(LayerParameter(name="a"), [np.ones(2, np.float32)]).to_bytes()
            ... ).layers[0]
            >>> [a.tolist() for a in rec.arrays()]
            [[1.0, 1.0]]
        """
        return [blob.array() for blob in self.blobs]

    def __repr__(self) -> str:
        return (
            f"LayerRecord(name={self.name!r}, type={self.type!r}, version={self.version}, "
            f"blobs={len(self.blobs)}, span=({self.start}, {self.end}))"
        )


def _part_size(part: _Part) -> int:
    if part.inner is None:
        return part.end - part.start
    return len_field_size(part.number, sum(_part_size(p) for p in part.inner))


def _part_bytes(view: memoryview, part: _Part) -> bytes:
    if part.inner is None:
        return bytes(view[part.start : part.end])
    inner = b"".join(_part_bytes(view, p) for p in part.inner)
    return encode_len_header(part.number, len(inner)) + inner


class CaffemodelFile:
    """An indexed caffemodel: layer records, blob spans and top-level fields.

    Use as a context manager (or call :meth:`close`).  Arrays handed out by
    :meth:`BlobRecord.array` keep the memory map alive, so they stay valid
    after ``close()``.

    Attributes:
        source: the name used in messages (the path, or ``<bytes>``).
        path: the file's path when it came from the file system, else ``None``.
        size: the number of bytes.
        version: 1 for V1 ``layers`` records (V0 inside too), 2 for ``layer`` records.
        layers: every layer record, in file order.
        top_fields: ``(field number, start, end)`` of every top-level field that
            is not a layer record, in file order.

    Example:
        >>> from bnfuse.proto import NetParameter
        >>> net = NetParameter(name="tiny", input=["data"], input_dim=[1, 3, 8, 8])
        >>> with read_caffemodel(net.SerializeToString()) as model:
        ...     print(model.version, model.layers, model.net_header().name)
        2 [] tiny
    """

    def __init__(
        self,
        buffer: Buffer,
        *,
        source: str,
        path: str | None = None,
        fd: int | None = None,
        mapped: mmap.mmap | None = None,
    ) -> None:
        self.source = source
        self.path = path
        self._fd = fd
        self._mapped = mapped
        # A raw descriptor, closed by close() or at garbage collection: unlike a
        # file object it never warns when a caller forgets to close the model.
        self._close_fd = weakref.finalize(self, os.close, fd) if fd is not None else None
        self._view: memoryview | None = memoryview(buffer).cast("B")
        self.size = len(self._view)
        self.version = 2
        self.layers: list[LayerRecord] = []
        self.top_fields: list[tuple[int, int, int]] = []
        #: How many entries of ``top_fields`` precede the first layer record.
        self.layer_slot = 0

    # -- lifetime -----------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._view is None

    def _require_open(self) -> memoryview:
        if self._view is None:
            raise CaffemodelError(
                f"{self.source}: the caffemodel was closed; read it again", path=self.source
            )
        return self._view

    def fileno(self) -> int | None:
        """The open file descriptor when the caffemodel is a real file (for kernel copies)."""
        return None if self._view is None else self._fd

    def release(self, start: int, end: int) -> None:
        """Drop the memory-mapped pages of bytes ``[start, end)`` from this process's RSS.

        A fold reads every weight it replaces once; without this, those pages
        stay resident next to the new arrays (about twice the changed bytes).
        The map is read-only and file-backed, so ``MADV_DONTNEED`` only unmaps the
        pages: they stay in the page cache and any array still viewing them reads
        them back on its next access, with the same values. A no-op for
        in-memory sources and where ``madvise`` is unavailable.
        """
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if self._mapped is None or self._view is None or advice is None or end <= start:
            return
        page = mmap.PAGESIZE
        lo = start // page * page
        hi = min(-(-end // page) * page, self.size)
        with contextlib.suppress(OSError, ValueError):
            self._mapped.madvise(advice, lo, hi - lo)

    def close(self) -> None:
        """Release the memory map and the file; arrays already handed out stay valid."""
        view, self._view = self._view, None
        if view is None:
            return
        # Arrays still pointing into the map keep it alive: it is unmapped when
        # the last of them is garbage-collected, so nothing is closed under them.
        with contextlib.suppress(BufferError):
            view.release()
        if self._mapped is not None:
            with contextlib.suppress(BufferError):
                self._mapped.close()
            self._mapped = None
        if self._close_fd is not None:
            self._close_fd()
        self._fd = None

    def __enter__(self) -> CaffemodelFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- queries ------------------------------------------------------------
    def find(self, name: str) -> LayerRecord | None:
        """The first layer record called ``name`` (Caffe matches weights by name), or None.

        Example:
            >>> from bnfuse.proto import NetParameter
            >>> read_caffemodel(NetParameter(name="n").SerializeToString()).find("conv1") is None
            True
        """
        for record in self.layers:
            if record.name == name:
                return record
        return None

    def net_header_bytes(self) -> bytes:
        """Every top-level non-layer field, byte for byte, in file order.

        Example:
            >>> from bnfuse.proto import NetParameter
            >>> data = NetParameter(name="n", input=["data"]).SerializeToString()
            >>> read_caffemodel(data).net_header_bytes() == data
            True
        """
        view = self._require_open()
        return b"".join(bytes(view[s:e]) for _, s, e in self.top_fields)

    def net_header(self) -> NetParameter:
        """The top-level non-layer fields (name, input, input_dim, state...) as a NetParameter.

        Example:
            >>> from bnfuse.proto import NetParameter
            >>> data = NetParameter(name="n", input_dim=[1, 3, 4, 4]).SerializeToString()
            >>> list(read_caffemodel(data).net_header().input_dim)
            [1, 3, 4, 4]
        """
        from google.protobuf.message import DecodeError

        from bnfuse.proto import NetParameter

        try:
            return NetParameter.FromString(self.net_header_bytes())
        except (DecodeError, ValueError, RuntimeError):
            view = self._require_open()
            data = b"".join(
                bytes(view[s:e]) for n, s, e in self.top_fields if n in _FALLBACK_NET_FIELDS
            )
            try:
                return NetParameter.FromString(data)
            except (DecodeError, ValueError, RuntimeError):
                return NetParameter()

    def __repr__(self) -> str:
        return (
            f"CaffemodelFile(source={self.source!r}, version={self.version}, "
            f"layers={len(self.layers)}, size={self.size})"
        )


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def _decode_text(view: memoryview, start: int, end: int) -> str:
    return bytes(view[start:end]).decode("utf-8", errors="replace")


def _looks_like_text(view: memoryview) -> bool:
    """True when the file starts like a prototxt: printable text, then a word or a comment."""
    head = bytes(view[:512])
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the 512-byte window is still text.
        if exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")
    stripped = text.lstrip()
    if not stripped or not (stripped[0].isalpha() or stripped[0] in "#_"):
        return False
    return all(ch.isprintable() or ch in "\t\n\r" for ch in text)


def _unpacked_run(view: memoryview, pos: int, end: int, tag: int, stride: int) -> int:
    """How many consecutive one-byte-tagged fixed-size elements start at ``pos``."""
    n_max = (end - pos) // stride
    tags = np.frombuffer(view, np.uint8, n_max * stride, pos)[::stride]
    mismatch = np.flatnonzero(tags != tag)
    return int(mismatch[0]) if mismatch.size else n_max


def _int32(value: int) -> int:
    """Protobuf int32 semantics: the low 32 bits, signed."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _scan_shape(view: memoryview, start: int, end: int, dims: list[int]) -> None:
    """Append the dims of the BlobShape at ``view[start:end]`` (packed or not)."""
    for field in iter_fields(view, start, end):
        if field.number != _SHAPE_DIM:
            continue
        if field.wire_type == WIRETYPE_LENGTH_DELIMITED:
            pos = field.value_start
            while pos < field.value_end:
                value, pos = read_varint(view, pos, field.value_end)
                dims.append(to_signed64(value))
        elif field.wire_type == WIRETYPE_VARINT:
            dims.append(to_signed64(read_varint(view, field.value_start, field.value_end)[0]))


def _scan_blob(
    file: CaffemodelFile, layer: str, index: int, span: tuple[int, int, int]
) -> BlobRecord:
    """Index one BlobProto; ``span`` is (field start, payload start, payload end)."""
    field_start, start, end = span
    view = file._require_open()
    legacy: list[int] = [0, 0, 0, 0]
    has_legacy = False
    dims: list[int] = []
    data: list[_Segment] = []
    doubles: list[_Segment] = []
    raw: tuple[int, int] | None = None
    raw_type = 0  # proto2 default of NVIDIA's Type enum: its first value, DOUBLE
    # repr: a corrupt name may hold newlines or terminal escapes; messages stay one safe line.
    where = f"layer {layer!r} blob {index}"

    pos = start
    while pos < end:
        field = read_field(view, pos, end)
        number, wire = field.number, field.wire_type
        vs, ve = field.value_start, field.value_end
        # Fields with an unexpected wire type are skipped, as protobuf keeps them
        # as unknown fields instead of failing.
        if number in (_B_NUM, _B_CHANNELS, _B_HEIGHT, _B_WIDTH) and wire == WIRETYPE_VARINT:
            legacy[number - 1] = _int32(read_varint(view, vs, ve)[0])
            has_legacy = True
        elif number == _B_DATA and wire == WIRETYPE_LENGTH_DELIMITED:
            if (ve - vs) % 4:
                raise _corrupt(
                    pos,
                    f"{where}: packed float data of {ve - vs} bytes "
                    "is not a whole number of floats",
                    layer=layer,
                )
            data.append(_Segment(vs, (ve - vs) // 4, 4))
        elif number == _B_DATA and wire == WIRETYPE_FIXED32:
            # A run of canonical one-byte tags is located in one numpy pass; a
            # padded (multi-byte) tag starts no run and is taken on its own.
            count = _unpacked_run(view, pos, end, _TAG_FLOAT_UNPACKED, 5)
            if count:
                data.append(_Segment(pos + 1, count, 5))
                pos += 5 * count
                continue
            data.append(_Segment(vs, 1, 4))
        elif number == _B_DOUBLE_DATA and wire == WIRETYPE_LENGTH_DELIMITED:
            if (ve - vs) % 8:
                raise _corrupt(
                    pos,
                    f"{where}: packed double data of {ve - vs} bytes "
                    "is not a whole number of doubles",
                    layer=layer,
                )
            doubles.append(_Segment(vs, (ve - vs) // 8, 8))
        elif number == _B_DOUBLE_DATA and wire == WIRETYPE_FIXED64:
            count = _unpacked_run(view, pos, end, _TAG_DOUBLE_UNPACKED, 9)
            if count:
                doubles.append(_Segment(pos + 1, count, 9))
                pos += 9 * count
                continue
            doubles.append(_Segment(vs, 1, 8))
        elif number == _B_SHAPE and wire == WIRETYPE_LENGTH_DELIMITED:
            # Repeated occurrences of a message field merge: their dims concatenate.
            _scan_shape(view, vs, ve, dims)
        elif number == _B_RAW_TYPE and wire == WIRETYPE_VARINT:
            raw_type = to_signed64(read_varint(view, vs, ve)[0])
        elif number == _B_RAW_DATA and wire == WIRETYPE_LENGTH_DELIMITED:
            raw = (vs, ve)  # optional bytes: the last occurrence wins
        pos = ve

    # Caffe's Blob::FromProto prefers the legacy 4-D fields when any is present.
    shape = tuple(legacy) if has_legacy else tuple(dims)
    if any(d < 0 for d in shape):
        raise _corrupt(field_start, f"{where}: negative dimension in shape {shape}", layer=layer)
    if len(shape) > 32:
        # Caffe's kMaxBlobAxes; numpy itself stops at 64 axes with a ValueError.
        raise _corrupt(
            field_start, f"{where}: shape has {len(shape)} axes, Caffe allows 32", layer=layer
        )

    n_data = sum(s.count for s in data)
    n_double = sum(s.count for s in doubles)
    dtype: np.dtype[np.floating]
    encoding: BlobEncoding
    segments: tuple[_Segment, ...]
    if raw is not None and (raw[1] > raw[0] or (n_data == 0 and n_double == 0)):
        if raw_type not in RAW_DATA_TYPES:
            raise _corrupt(
                field_start,
                f"{where}: raw_data_type {raw_type} is not a float type (DOUBLE, FLOAT, FLOAT16)",
                layer=layer,
                hint="bnfuse reads only float weights",
            )
        dtype = RAW_DATA_TYPES[raw_type]
        nbytes = raw[1] - raw[0]
        if nbytes % dtype.itemsize:
            raise _corrupt(
                field_start,
                f"{where}: raw_data of {nbytes} bytes is not a whole number of {dtype.name} values",
                layer=layer,
            )
        encoding, segments = (
            "raw_data",
            (_Segment(raw[0], nbytes // dtype.itemsize, dtype.itemsize),),
        )
    elif n_double:
        # Caffe reads double_data whenever it is not empty, and data otherwise.
        dtype, encoding, segments = np.dtype("<f8"), "double_data", tuple(doubles)
    elif n_data:
        dtype, encoding, segments = np.dtype("<f4"), "data", tuple(data)
    else:
        dtype, encoding, segments = np.dtype("<f4"), "none", ()
    stored = sum(s.count for s in segments)
    count = math.prod(shape)
    if stored != count:
        if encoding == "none":
            detail = f"{where}: shape {shape} needs {count} values but the blob stores none"
        else:
            detail = f"{where}: shape {shape} needs {count} values but the blob stores {stored}"
        raise _corrupt(field_start, detail, layer=layer)
    # Empty segments carry no bytes; dropping them keeps the single-view fast path.
    segments = tuple(s for s in segments if s.count)
    return BlobRecord(
        file,
        layer=layer,
        index=index,
        start=field_start,
        end=end,
        shape=shape,
        legacy_shape=has_legacy,
        dtype=dtype,
        encoding=encoding,
        segments=segments,
    )


def _scan_layer(
    file: CaffemodelFile, version: int, field_start: int, start: int, end: int
) -> LayerRecord:
    """Index one layer record whose payload is ``view[start:end]``."""
    view = file._require_open()
    name_field, type_field, blob_field = (
        (_V2_NAME, _V2_TYPE, _V2_BLOBS) if version == 2 else (_V1_NAME, _V1_TYPE, _V1_BLOBS)
    )
    name = ""
    type_name = ""
    v0_type: str | None = None
    parts: list[_Part] = []
    blob_spans: list[tuple[int, int, int]] = []
    for field in iter_fields(view, start, end):
        number, wire = field.number, field.wire_type
        if number == blob_field and wire == WIRETYPE_LENGTH_DELIMITED:
            blob_spans.append((field.field_start, field.value_start, field.value_end))
            continue
        if version == 1 and number == _V1_V0LAYER and wire == WIRETYPE_LENGTH_DELIMITED:
            inner: list[_Part] = []
            for sub in iter_fields(view, field.value_start, field.value_end):
                if sub.number == _V0_BLOBS and sub.wire_type == WIRETYPE_LENGTH_DELIMITED:
                    blob_spans.append((sub.field_start, sub.value_start, sub.value_end))
                    continue
                if sub.wire_type == WIRETYPE_LENGTH_DELIMITED:
                    if sub.number == _V0_NAME and not name:
                        name = _decode_text(view, sub.value_start, sub.value_end)
                    elif sub.number == _V0_TYPE:
                        v0_type = _decode_text(view, sub.value_start, sub.value_end)
                inner.append(_Part(sub.number, sub.field_start, sub.value_end))
            parts.append(_Part(number, field.field_start, field.value_end, tuple(inner)))
            continue
        parts.append(_Part(number, field.field_start, field.value_end))
        if number == name_field and wire == WIRETYPE_LENGTH_DELIMITED:
            name = _decode_text(view, field.value_start, field.value_end)
        elif number == type_field:
            if version == 2 and wire == WIRETYPE_LENGTH_DELIMITED:
                type_name = _decode_text(view, field.value_start, field.value_end)
            elif version == 1 and wire == WIRETYPE_VARINT:
                code = to_signed64(read_varint(view, field.value_start, field.value_end)[0])
                # A fork's own enum value: keep something recognisable rather than fail.
                type_name = V1_TYPE_NAMES.get(code, f"V1LayerType{code}")
    if v0_type is not None and not type_name:
        type_name = V0_TYPE_NAMES.get(v0_type, v0_type)
    record = LayerRecord(
        file,
        name=name,
        type=type_name,
        version=version,
        start=field_start,
        end=end,
        parts=tuple(parts),
    )
    record.blobs = [_scan_blob(file, name, i, span) for i, span in enumerate(blob_spans)]
    return record


def _corrupt(
    offset: int, detail: str, *, layer: str | None = None, hint: str = _CORRUPT_HINT
) -> CaffemodelError:
    """A problem the indexer found at ``offset``; read_caffemodel adds the file's name."""
    return CaffemodelError.at(offset, detail, layer=layer, hint=hint)


def _naming_the_file(error: CaffemodelError, file: CaffemodelFile) -> CaffemodelError:
    """The error raised while indexing ``file``, rebuilt from its fields with the file's name."""
    if error.path is not None or error.offset is None or error.detail is None:
        return error
    if error.hint is not None:  # found by the indexer, which knows what to suggest
        return CaffemodelError.at(
            error.offset, error.detail, path=file.source, hint=error.hint, layer=error.layer
        )
    # A wire-level failure (bnfuse.io.wire knows nothing of the file): text, or damage.
    if _looks_like_text(file._require_open()):
        return CaffemodelError.at(0, _TEXT_DETAIL, path=file.source, hint=_TEXT_HINT)
    return CaffemodelError.at(
        error.offset,
        f"{error.detail} (the file is {file.size} bytes)",
        path=file.source,
        hint=_CORRUPT_HINT,
    )


def _index(file: CaffemodelFile) -> None:
    """Fill ``file.layers`` and ``file.top_fields`` by walking the top-level message."""
    view = file._require_open()
    if file.size == 0:
        raise _corrupt(0, "the file is empty", hint=_EMPTY_HINT)
    seen_v1 = seen_v2 = False
    for field in iter_fields(view):
        if field.wire_type == WIRETYPE_LENGTH_DELIMITED and field.number in (
            _NET_LAYER_V2,
            _NET_LAYERS_V1,
        ):
            version = 2 if field.number == _NET_LAYER_V2 else 1
            if version == 2:
                seen_v2 = True
            else:
                seen_v1 = True
            if seen_v1 and seen_v2:
                raise _corrupt(
                    field.field_start,
                    "the net mixes V1 'layers' and V2 'layer' records, which Caffe refuses",
                    hint="re-save the model with one format",
                )
            if not file.layers:
                file.layer_slot = len(file.top_fields)
            file.layers.append(
                _scan_layer(file, version, field.field_start, field.value_start, field.value_end)
            )
        else:
            file.top_fields.append((field.number, field.field_start, field.value_end))
    file.version = 1 if seen_v1 else 2
    if not file.layers:
        file.layer_slot = len(file.top_fields)


def _open_source(
    src: StrPath | bytes | bytearray | memoryview | IO[bytes], name: str | None
) -> CaffemodelFile:
    """Map or read ``src``; raise CaffemodelError for anything that cannot be opened."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        try:
            return CaffemodelFile(src, source=name or "<bytes>")
        except (TypeError, ValueError) as exc:
            source = name or "<bytes>"
            raise CaffemodelError(f"{source}: cannot read the buffer: {exc}", path=source) from None
    if isinstance(src, (str, os.PathLike)):
        path = os.fsdecode(os.fspath(src))
        source = name or path
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as exc:
            raise CaffemodelError(
                f"{source}: cannot open the caffemodel: {exc.strerror or exc}; check the path",
                path=source,
            ) from None
        return _from_fd(fd, source, path)
    if hasattr(src, "read"):
        raw_name = getattr(src, "name", None)
        stream_path = raw_name if isinstance(raw_name, str) and os.path.isfile(raw_name) else None
        source = name or stream_path or "<stream>"
        try:
            own_fd = src.fileno()
            regular = stat.S_ISREG(os.fstat(own_fd).st_mode) and src.tell() == 0
        except (OSError, ValueError, io.UnsupportedOperation):
            regular = False
        if regular:
            # A private descriptor: the caller may close their file whenever they like.
            return _from_fd(os.dup(own_fd), source, stream_path)
        return _from_data(_read_stream(src, source), source, stream_path)
    raise CaffemodelError(
        f"cannot read a caffemodel from a {type(src).__name__}; pass a path, bytes or a binary file"
    )


def _read_stream(stream: IO[bytes], source: str) -> bytes:
    try:
        data = stream.read()
    except (OSError, ValueError) as exc:
        raise CaffemodelError(f"{source}: cannot read the caffemodel: {exc}", path=source) from None
    if not isinstance(data, (bytes, bytearray)):
        raise CaffemodelError(
            f"{source}: the file object returned text; open it in binary mode", path=source
        )
    return bytes(data)


def _from_data(data: bytes, source: str, path: str | None) -> CaffemodelFile:
    if not data:
        raise CaffemodelError.at(0, "the file is empty", path=source, hint=_EMPTY_HINT)
    return CaffemodelFile(data, source=source, path=path)


def _from_fd(fd: int, source: str, path: str | None) -> CaffemodelFile:
    """Memory-map the regular file open at ``fd`` (taking ownership of it), else read it."""
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise CaffemodelError(
                f"{source}: is a folder; pass the .caffemodel file inside it", path=source
            )
        mapped: mmap.mmap | None = None
        if stat.S_ISREG(info.st_mode) and info.st_size > 0:
            try:
                mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                mapped = None  # a file system without mmap support: read it instead
        if mapped is not None:
            return CaffemodelFile(mapped, source=source, path=path, fd=fd, mapped=mapped)
        with open(fd, "rb", closefd=False) as stream:
            data = _read_stream(stream, source)
    except OSError as exc:
        os.close(fd)
        raise CaffemodelError(
            f"{source}: cannot read the caffemodel: {exc.strerror or exc}", path=source
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return _from_data(data, source, path)


def read_caffemodel(
    src: StrPath | bytes | bytearray | memoryview | IO[bytes], *, name: str | None = None
) -> CaffemodelFile:
    """Index a caffemodel without decoding its weights.

    ``src`` is a path (memory-mapped read-only), bytes-like data, or a binary
    file object (memory-mapped when it is a regular file at position 0, read
    otherwise).  ``name`` overrides the name used in messages.  Every problem
    (missing file, empty, truncated, a prototxt by mistake, garbage, a blob
    whose size does not match its shape) raises
    :class:`~bnfuse.errors.CaffemodelError` with one line naming the file, the
    byte offset and a fix.

    Example:
        >>> try:
        ...     read_caffemodel(b'name: "LeNet"\\nlayer {', name="lenet.caffemodel")
        ... except CaffemodelError as exc:
        ...     print(str(exc).split(",")[0])
        lenet.caffemodel: byte 0: this looks like a prototxt (text)
    """
    file = _open_source(src, name)
    try:
        try:
            _index(file)
        except CaffemodelError as exc:
            raise _naming_the_file(exc, file) from None
        except (ValueError, IndexError, OverflowError, TypeError, BufferError) as exc:
            raise CaffemodelError(
                f"{file.source}: cannot index the caffemodel: {exc}; {_CORRUPT_HINT}",
                path=file.source,
            ) from None
        if not file.layers and _looks_like_text(file._require_open()):
            raise CaffemodelError.at(0, _TEXT_DETAIL, path=file.source, hint=_TEXT_HINT)
    except BaseException:
        file.close()
        raise
    return file


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------

_FORMAT_DTYPES: dict[str, np.dtype[np.floating]] = {
    "data": np.dtype("<f4"),
    "double_data": np.dtype("<f8"),
    "raw_float16": np.dtype("<f2"),
    "raw_float32": np.dtype("<f4"),
    "raw_float64": np.dtype("<f8"),
}


@dataclass(frozen=True)
class NewLayer:
    """A layer record to encode: a header without blobs, plus the blob arrays.

    ``header`` is a ``LayerParameter`` (written as a ``layer`` record) or a
    ``V1LayerParameter`` (a V1 ``layers`` record); any ``blobs`` it holds are
    ignored.  It may also be raw header bytes, with ``version`` saying which
    kind and ``blob_offset`` where in them the blobs go (default: the end).

    ``formats[i]`` picks how blob ``i`` is stored: ``"data"`` (packed float32,
    what BVLC Caffe writes), ``"double_data"``, ``"raw_float16"``,
    ``"raw_float32"``, ``"raw_float64"`` (NVIDIA Caffe's ``raw_data``), a
    :class:`BlobRecord` to copy its encoding and legacy 4-D shape style, or
    ``None`` to follow the array's dtype (float64 -> ``double_data``, float16 ->
    ``raw_float16``, anything else -> ``data``).

    Example:
        >>> import numpy as np
        >>> from bnfuse.proto import LayerParameter
        >>> layer = NewLayer(LayerParameter(name="bn", type="BatchNorm"),
        ...                  [np.zeros(4, np.float16)], formats=["raw_float16"])
        >>> read_caffemodel(layer.to_bytes()).layers[0].blobs[0].dtype
        dtype('float16')
    """

    header: LayerParameter | V1LayerParameter | bytes
    blobs: Sequence[np.ndarray]
    formats: Sequence[BlobFormat | BlobRecord | None] | None = None
    version: int | None = None
    blob_offset: int | None = None
    name: str | None = None

    def layer_version(self) -> int:
        """2 for a ``layer`` record, 1 for a V1 ``layers`` record."""
        if isinstance(self.header, (bytes, bytearray)):
            return self.version or 2
        from bnfuse.proto import V1LayerParameter

        return 1 if isinstance(self.header, V1LayerParameter) else 2

    def display_name(self) -> str:
        """The layer name for messages."""
        if self.name is not None:
            return self.name
        if isinstance(self.header, (bytes, bytearray)):
            return "<new layer>"
        return self.header.name

    def to_bytes(self) -> bytes:
        """The encoded record (tag included), as :func:`write_caffemodel` would write it.

        Example:
            >>> from bnfuse.proto import NetParameter, LayerParameter
            >>> import numpy as np
            >>> data = NewLayer(LayerParameter(name="a"), [np.ones(2, np.float32)]).to_bytes()
            >>> list(NetParameter.FromString(data).layer[0].blobs[0].data)
            [1.0, 1.0]
        """
        out = io.BytesIO()
        for piece in _layer_pieces(self):
            _write_piece_buffered(out, piece)
        return out.getvalue()


@dataclass(frozen=True)
class _ArrayPiece:
    """Array bytes written straight from the array at write time (converted then)."""

    array: np.ndarray
    dtype: np.dtype[np.floating]

    @property
    def size(self) -> int:
        return int(self.array.size) * self.dtype.itemsize


@dataclass(frozen=True)
class _CopyPiece:
    """A byte range copied from a source caffemodel."""

    file: CaffemodelFile
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


_Piece: TypeAlias = bytes | _ArrayPiece | _CopyPiece


def _piece_size(piece: _Piece) -> int:
    return len(piece) if isinstance(piece, bytes) else piece.size


def _resolve_format(array: np.ndarray, fmt: BlobFormat | BlobRecord | None) -> tuple[str, bool]:
    """(storage format, write legacy 4-D dims) for one blob."""
    if isinstance(fmt, BlobRecord):
        legacy = fmt.legacy_shape and array.ndim <= 4
        if fmt.encoding == "raw_data":
            return {"f2": "raw_float16", "f4": "raw_float32", "f8": "raw_float64"}[
                f"f{fmt.dtype.itemsize}"
            ], legacy
        if fmt.encoding == "double_data":
            return "double_data", legacy
        return "data", legacy
    if fmt is None:
        if array.dtype == np.float64:
            return "double_data", False
        if array.dtype == np.float16:
            return "raw_float16", False
        return "data", False
    if fmt not in _FORMAT_DTYPES:
        raise OutputError(f"unknown blob format {fmt!r}; use one of {sorted(_FORMAT_DTYPES)}")
    return fmt, False


def _blob_pieces(
    layer: str, index: int, array: np.ndarray, fmt: BlobFormat | BlobRecord | None
) -> list[_Piece]:
    """The BlobProto payload of one array, fields in field-number order as Caffe writes them."""
    array = np.asarray(array)
    if array.dtype.kind not in "fiub":
        raise OutputError(
            f"layer '{layer}' blob {index}: cannot store an array of dtype {array.dtype} "
            "in a caffemodel; weights are floating point"
        )
    storage, legacy = _resolve_format(array, fmt)
    dtype = _FORMAT_DTYPES[storage]
    head = bytearray()
    if legacy:
        dims4 = (1,) * (4 - array.ndim) + tuple(array.shape)
        for number, value in zip((_B_NUM, _B_CHANNELS, _B_HEIGHT, _B_WIDTH), dims4, strict=True):
            head += encode_tag(number, WIRETYPE_VARINT) + encode_varint(int(value))
    payload = _ArrayPiece(array, dtype)
    nbytes = payload.size
    pieces: list[_Piece] = []
    shape_field = b""
    if not legacy:
        packed = b"".join(encode_varint(int(d)) for d in array.shape)
        # An empty packed field is not written by protobuf; keep that byte layout.
        dims_field = encode_len_header(_SHAPE_DIM, len(packed)) + packed if packed else b""
        shape_field = encode_len_header(_B_SHAPE, len(dims_field)) + dims_field
    if storage == "data":
        if nbytes:
            head += encode_len_header(_B_DATA, nbytes)
            pieces += [bytes(head), payload]
            head = bytearray()
        head += shape_field
    elif storage == "double_data":
        head += shape_field
        if nbytes:
            head += encode_len_header(_B_DOUBLE_DATA, nbytes)
            pieces += [bytes(head), payload]
            head = bytearray()
    else:
        head += shape_field
        head += encode_tag(_B_RAW_TYPE, WIRETYPE_VARINT)
        head += encode_varint(_RAW_TYPE_OF[f"f{dtype.itemsize}"])
        head += encode_len_header(_B_RAW_DATA, nbytes)
        pieces += [bytes(head), payload]
        head = bytearray()
    if head:
        pieces.append(bytes(head))
    return pieces


def _layer_pieces(layer: NewLayer) -> list[_Piece]:
    """The whole record of a new layer: tag, length, header bytes and blobs."""
    version = layer.layer_version()
    name = layer.display_name()
    header = layer.header
    if isinstance(header, (bytes, bytearray)):
        header_bytes = bytes(header)
    else:
        if len(header.blobs):
            header = type(header).FromString(header.SerializeToString())
            header.ClearField("blobs")
        header_bytes = header.SerializeToString()
    split = len(header_bytes) if layer.blob_offset is None else layer.blob_offset
    if not 0 <= split <= len(header_bytes):
        raise OutputError(f"layer '{name}': blob_offset {split} is outside the header bytes")
    formats = list(layer.formats) if layer.formats is not None else []
    if len(formats) > len(layer.blobs):
        raise OutputError(
            f"layer '{name}': {len(formats)} formats given for {len(layer.blobs)} blobs"
        )
    formats += [None] * (len(layer.blobs) - len(formats))
    blob_field = _V2_BLOBS if version == 2 else _V1_BLOBS
    body: list[_Piece] = [header_bytes[:split]]
    for index, (array, fmt) in enumerate(zip(layer.blobs, formats, strict=True)):
        blob = _blob_pieces(name, index, array, fmt)
        body.append(encode_len_header(blob_field, sum(_piece_size(p) for p in blob)))
        body += blob
    body.append(header_bytes[split:])
    record_field = _NET_LAYER_V2 if version == 2 else _NET_LAYERS_V1
    total = sum(_piece_size(p) for p in body)
    return [encode_len_header(record_field, total), *body]


def _plan(entries: Iterable[LayerRecord | NewLayer], source: CaffemodelFile | None) -> list[_Piece]:
    """Every piece of the output, in order, with adjacent source ranges merged."""
    entries = list(entries)
    for entry in entries:
        if not isinstance(entry, (LayerRecord, NewLayer)):
            raise OutputError(
                f"cannot write a {type(entry).__name__} as a layer; "
                "pass LayerRecord or NewLayer entries"
            )
    versions = {e.version if isinstance(e, LayerRecord) else e.layer_version() for e in entries}
    if len(versions) > 1:
        raise OutputError(
            "the layers to write mix V1 'layers' and V2 'layer' records, which Caffe refuses; "
            "upgrade the V1 layers first"
        )
    pieces: list[_Piece] = []
    if source is not None:
        source._require_open()
        if entries == source.layers:
            # Unchanged net: every top-level field in its original order, so the
            # output is the source byte for byte even if layers were interleaved.
            spans = [(s, e) for _, s, e in source.top_fields]
            spans += [(r.start, r.end) for r in source.layers]
            pieces = [_CopyPiece(source, s, e) for s, e in sorted(spans)]
            return _merge(pieces)
        before = source.top_fields[: source.layer_slot]
        after = source.top_fields[source.layer_slot :]
        pieces += [_CopyPiece(source, s, e) for _, s, e in before]
    else:
        after = []
    for entry in entries:
        if isinstance(entry, LayerRecord):
            entry.file._require_open()
            pieces.append(_CopyPiece(entry.file, entry.start, entry.end))
        else:
            pieces += _layer_pieces(entry)
    if source is not None:
        pieces += [_CopyPiece(source, s, e) for _, s, e in after]
    return _merge(pieces)


def _merge(pieces: list[_Piece]) -> list[_Piece]:
    merged: list[_Piece] = []
    for piece in pieces:
        last = merged[-1] if merged else None
        if (
            isinstance(piece, _CopyPiece)
            and isinstance(last, _CopyPiece)
            and last.file is piece.file
            and last.end == piece.start
        ):
            merged[-1] = _CopyPiece(last.file, last.start, piece.end)
        elif isinstance(piece, bytes) and isinstance(last, bytes):
            merged[-1] = last + piece
        elif not (isinstance(piece, bytes) and not piece):
            merged.append(piece)
    return merged


def caffemodel_size(
    entries: Iterable[LayerRecord | NewLayer], *, source: CaffemodelFile | None
) -> int:
    """The exact size :func:`write_caffemodel` would write, computed without writing.

    Example:
        >>> import numpy as np
        >>> from bnfuse.proto import LayerParameter
        >>> layer = NewLayer(LayerParameter(name="a"), [np.ones(2, np.float32)])
        >>> caffemodel_size([layer], source=None) == len(layer.to_bytes())
        True
    """
    return sum(_piece_size(p) for p in _plan(entries, source))


def _array_bytes(piece: _ArrayPiece) -> memoryview:
    """The array's bytes in the stored dtype, without a copy when it already matches."""
    values = np.ascontiguousarray(piece.array, dtype=piece.dtype)
    return memoryview(values).cast("B")  # type: ignore[arg-type]


def _write_piece_buffered(out: BinaryIO, piece: _Piece) -> None:
    if isinstance(piece, bytes):
        out.write(piece)
    elif isinstance(piece, _ArrayPiece):
        out.write(_array_bytes(piece))
    else:
        out.write(piece.file._require_open()[piece.start : piece.end])


def write_caffemodel(
    dest: StrPath,
    entries: Iterable[LayerRecord | NewLayer],
    *,
    source: CaffemodelFile | None,
    inputs: Sequence[StrPath] = (),
) -> None:
    """Stream a new caffemodel to ``dest`` (atomically).

    The output holds ``source``'s top-level non-layer fields (name, input,
    input_dim, ...) byte for byte, then ``entries`` where the source's first
    layer record was: a :class:`LayerRecord` is copied verbatim (by the kernel
    when both files are real), a :class:`NewLayer` is encoded with its arrays
    written straight from memory.  Writing ``source.layers`` unchanged gives a
    byte-identical file.  The size is computed first: over 2 GiB - 1 byte
    raises :class:`~bnfuse.errors.OutputError` before anything is created.
    ``dest`` may not be ``source``, any entry's file or any of ``inputs``.

    Example:
        >>> import pathlib, tempfile
        >>> from bnfuse.proto import NetParameter
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "in.caffemodel").write_bytes(NetParameter(name="n").SerializeToString())
        >>> with read_caffemodel(folder / "in.caffemodel") as model:
        ...     write_caffemodel(folder / "out.caffemodel", model.layers, source=model)
        >>> (folder / "out.caffemodel").read_bytes() == (folder / "in.caffemodel").read_bytes()
        True
    """
    shown = os.fspath(dest)
    pieces = _plan(entries, source)
    total = sum(_piece_size(p) for p in pieces)
    if total > MAX_CAFFEMODEL_BYTES:
        raise OutputError(
            f"{shown}: the caffemodel would be {total} bytes, over protobuf's 2 GiB limit "
            f"({MAX_CAFFEMODEL_BYTES} bytes); no protobuf reader (Caffe, pycaffe, OpenCV) "
            "can load a message that large"
        )
    protect: list[StrPath] = list(inputs)
    for piece in pieces:
        if isinstance(piece, _CopyPiece) and piece.file.path is not None:
            protect.append(piece.file.path)
    if source is not None and source.path is not None:
        protect.append(source.path)
    with atomic_write(dest, inputs=protect) as out:
        for piece in pieces:
            src_fd = piece.file.fileno() if isinstance(piece, _CopyPiece) else None
            if (
                isinstance(piece, _CopyPiece)
                and src_fd is not None
                and (piece.size >= _KERNEL_COPY_MIN)
            ):
                # The kernel writes at the descriptor's position: flush what is buffered first.
                out.flush()
                copy_range(src_fd, out.fileno(), piece.start, piece.size)
            else:
                _write_piece_buffered(out, piece)
        out.flush()
        written = os.fstat(out.fileno()).st_size
        if written != total:
            raise OutputError(
                f"{shown}: wrote {written} bytes instead of the planned {total}; "
                "was an input changed while bnfuse was running?"
            )


__all__ = [
    "MAX_CAFFEMODEL_BYTES",
    "RAW_DATA_TYPES",
    "V0_TYPE_NAMES",
    "V1_TYPE_NAMES",
    "BlobFormat",
    "BlobRecord",
    "CaffemodelFile",
    "LayerRecord",
    "NewLayer",
    "caffemodel_size",
    "read_caffemodel",
    "write_caffemodel",
]
