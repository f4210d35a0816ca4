"""Finding the layer records and blob arrays in a caffemodel's bytes, without decoding them.

The top-level message is walked once (:func:`build_index`); every layer record
and every blob remembers its byte span, and a blob hands out its values as a
``numpy`` view into the bytes (:meth:`BlobRecord.array`).

Example:
    >>> import numpy as np
    >>> from bnfuse.io.caffemodel import NewLayer, read_caffemodel
    >>> from bnfuse.proto import LayerParameter
    >>> data = NewLayer(LayerParameter(name="s", type="Scale"), [np.ones(3, np.float32)]).to_bytes()
    >>> record = read_caffemodel(data).layers[0]
    >>> record.name, [(b.index, b.shape, b.encoding) for b in record.blobs]
    ('s', [(0, (3,), 'data')])
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bnfuse.errors import CaffemodelError, excerpt
from bnfuse.io.caffemodel._layout import (
    B_CHANNELS,
    B_DATA,
    B_DOUBLE_DATA,
    B_HEIGHT,
    B_NUM,
    B_RAW_DATA,
    B_RAW_TYPE,
    B_SHAPE,
    B_WIDTH,
    FALLBACK_V1_FIELDS,
    FALLBACK_V2_FIELDS,
    NET_LAYER_V2,
    NET_LAYERS_V1,
    RAW_DATA_TYPES,
    SHAPE_DIM,
    TAG_DOUBLE_UNPACKED,
    TAG_FLOAT_UNPACKED,
    V0_BLOBS,
    V0_NAME,
    V0_TYPE,
    V0_TYPE_NAMES,
    V1_BLOBS,
    V1_NAME,
    V1_TYPE,
    V1_TYPE_NAMES,
    V1_V0LAYER,
    V2_BLOBS,
    V2_NAME,
    V2_TYPE,
    BlobEncoding,
)
from bnfuse.io.wire import (
    WIRETYPE_FIXED32,
    WIRETYPE_FIXED64,
    WIRETYPE_LENGTH_DELIMITED,
    WIRETYPE_VARINT,
    encode_len_header,
    iter_fields,
    read_field,
    read_varint,
    to_signed64,
)

if TYPE_CHECKING:
    from bnfuse.io.caffemodel._sources import CaffemodelFile
    from bnfuse.proto import LayerParameter, V1LayerParameter

CORRUPT_HINT = "the file is truncated or corrupt; copy or download it again"


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
        >>> from bnfuse.io.caffemodel import NewLayer, read_caffemodel
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
            >>> from bnfuse.io.caffemodel import NewLayer, read_caffemodel
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
        >>> from bnfuse.io.caffemodel import NewLayer, read_caffemodel
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
            >>> from bnfuse.io.caffemodel import NewLayer, read_caffemodel
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
            >>> from bnfuse.io.caffemodel import NewLayer, read_caffemodel
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
            keep = FALLBACK_V2_FIELDS if self.version == 2 else FALLBACK_V1_FIELDS
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
            >>> from bnfuse.io.caffemodel import NewLayer, read_caffemodel
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


def _part_bytes(view: memoryview, part: _Part) -> bytes:
    if part.inner is None:
        return bytes(view[part.start : part.end])
    inner = b"".join(_part_bytes(view, p) for p in part.inner)
    return encode_len_header(part.number, len(inner)) + inner


# --------------------------------------------------------------------------
# Scanning
# --------------------------------------------------------------------------


def _text_at(view: memoryview, start: int, end: int) -> str:
    """A name or type from the file; bytes that are not UTF-8 are replaced (it is only shown)."""
    return bytes(view[start:end]).decode("utf-8", errors="replace")


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
        if field.number != SHAPE_DIM:
            continue
        if field.wire_type == WIRETYPE_LENGTH_DELIMITED:
            pos = field.value_start
            while pos < field.value_end:
                value, pos = read_varint(view, pos, field.value_end)
                dims.append(to_signed64(value))
        elif field.wire_type == WIRETYPE_VARINT:
            dims.append(to_signed64(read_varint(view, field.value_start, field.value_end)[0]))


@dataclass
class _BlobFields:
    """What the fields of one BlobProto say, before they are checked against each other."""

    legacy: list[int] = dataclasses.field(default_factory=lambda: [0, 0, 0, 0])
    has_legacy: bool = False
    dims: list[int] = dataclasses.field(default_factory=list)
    data: list[_Segment] = dataclasses.field(default_factory=list)
    doubles: list[_Segment] = dataclasses.field(default_factory=list)
    raw: tuple[int, int] | None = None
    raw_type: int = 0  # proto2 default of NVIDIA's Type enum: its first value, DOUBLE
    #: Field 10 as bytes: packed-bit weights (one bit per value), not NVIDIA's varint.
    packed_bits: tuple[int, int] | None = None


def _scan_blob(
    file: CaffemodelFile, layer: str, index: int, span: tuple[int, int, int]
) -> BlobRecord:
    """Index one BlobProto; ``span`` is (field start, payload start, payload end)."""
    field_start, start, end = span
    # excerpt (a repr): a corrupt name may be huge or hold newlines or terminal escapes.
    where = f"layer {excerpt(layer)} blob {index}"
    fields = _read_blob_fields(file._require_open(), start, end, where, layer)

    # Caffe's Blob::FromProto prefers the legacy 4-D fields when any is present.
    shape = tuple(fields.legacy) if fields.has_legacy else tuple(fields.dims)
    if any(d < 0 for d in shape):
        raise _corrupt(field_start, f"{where}: negative dimension in shape {shape}", layer=layer)
    if len(shape) > 32:
        # Caffe's kMaxBlobAxes; numpy itself stops at 64 axes with a ValueError.
        raise _corrupt(
            field_start, f"{where}: shape has {len(shape)} axes, Caffe allows 32", layer=layer
        )
    dtype, encoding, segments = _blob_values(fields, field_start, where, layer)
    stored = sum(s.count for s in segments)
    count = math.prod(shape)
    if fields.packed_bits is not None and stored == 0:
        nbytes = fields.packed_bits[1] - fields.packed_bits[0]
        raise _corrupt(
            field_start,
            f"{where}: the values are packed-bit weights ({nbytes} bytes in BlobProto field 10 "
            f"for {count} values, one bit each, as the binarized models of "
            "labiybafakh/caffe-Binarized-Weight-Networks store them), not float data",
            layer=layer,
            hint="bnfuse does not read packed-bit blobs: no published source states their bit "
                 "order; export the float weights from the fork that wrote them",
        )
    if stored != count:
        what = "none" if encoding == "none" else str(stored)
        raise _corrupt(
            field_start,
            f"{where}: shape {shape} needs {count} values but the blob stores {what}",
            layer=layer,
        )
    return BlobRecord(
        file,
        layer=layer,
        index=index,
        start=field_start,
        end=end,
        shape=shape,
        legacy_shape=fields.has_legacy,
        dtype=dtype,
        encoding=encoding,
        # Empty segments carry no bytes; dropping them keeps the single-view fast path.
        segments=tuple(s for s in segments if s.count),
    )


def _read_blob_fields(
    view: memoryview, start: int, end: int, where: str, layer: str
) -> _BlobFields:
    """Read the shape fields and locate the value arrays of the BlobProto at ``view[start:end]``."""
    fields = _BlobFields()
    pos = start
    while pos < end:
        f = read_field(view, pos, end)
        number, wire = f.number, f.wire_type
        vs, ve = f.value_start, f.value_end
        # Fields with an unexpected wire type are skipped, as protobuf keeps them
        # as unknown fields instead of failing.
        if number in (B_NUM, B_CHANNELS, B_HEIGHT, B_WIDTH) and wire == WIRETYPE_VARINT:
            fields.legacy[number - 1] = _int32(read_varint(view, vs, ve)[0])
            fields.has_legacy = True
        elif number in (B_DATA, B_DOUBLE_DATA) and wire == WIRETYPE_LENGTH_DELIMITED:
            size, kind = (4, "float") if number == B_DATA else (8, "double")
            if (ve - vs) % size:
                raise _corrupt(
                    pos,
                    f"{where}: packed {kind} data of {ve - vs} bytes "
                    f"is not a whole number of {kind}s",
                    layer=layer,
                )
            segments = fields.data if number == B_DATA else fields.doubles
            segments.append(_Segment(vs, (ve - vs) // size, size))
        elif (number, wire) in ((B_DATA, WIRETYPE_FIXED32), (B_DOUBLE_DATA, WIRETYPE_FIXED64)):
            size, tag = (4, TAG_FLOAT_UNPACKED) if number == B_DATA else (8, TAG_DOUBLE_UNPACKED)
            segments = fields.data if number == B_DATA else fields.doubles
            # A run of canonical one-byte tags is located in one numpy pass; a
            # padded (multi-byte) tag starts no run and is taken on its own.
            count = _unpacked_run(view, pos, end, tag, size + 1)
            if count:
                segments.append(_Segment(pos + 1, count, size + 1))
                pos += (size + 1) * count
                continue
            segments.append(_Segment(vs, 1, size))
        elif number == B_SHAPE and wire == WIRETYPE_LENGTH_DELIMITED:
            # Repeated occurrences of a message field merge: their dims concatenate.
            _scan_shape(view, vs, ve, fields.dims)
        elif number == B_RAW_TYPE and wire == WIRETYPE_VARINT:
            fields.raw_type = to_signed64(read_varint(view, vs, ve)[0])
        elif number == B_RAW_TYPE and wire == WIRETYPE_LENGTH_DELIMITED:
            fields.packed_bits = (vs, ve)
        elif number == B_RAW_DATA and wire == WIRETYPE_LENGTH_DELIMITED:
            fields.raw = (vs, ve)  # optional bytes: the last occurrence wins
        pos = ve
    return fields


def _blob_values(
    fields: _BlobFields, field_start: int, where: str, layer: str
) -> tuple[np.dtype[np.floating], BlobEncoding, tuple[_Segment, ...]]:
    """Which field holds the values, as Caffe decides: (dtype, encoding, where they are)."""
    n_data = sum(s.count for s in fields.data)
    n_double = sum(s.count for s in fields.doubles)
    raw = fields.raw
    if raw is not None and (raw[1] > raw[0] or (n_data == 0 and n_double == 0)):
        if fields.raw_type not in RAW_DATA_TYPES:
            raise _corrupt(
                field_start,
                f"{where}: raw_data_type {fields.raw_type} is not a float type "
                "(DOUBLE, FLOAT, FLOAT16)",
                layer=layer,
                hint="bnfuse reads only float weights",
            )
        dtype = RAW_DATA_TYPES[fields.raw_type]
        nbytes = raw[1] - raw[0]
        if nbytes % dtype.itemsize:
            raise _corrupt(
                field_start,
                f"{where}: raw_data of {nbytes} bytes is not a whole number of {dtype.name} values",
                layer=layer,
            )
        return dtype, "raw_data", (_Segment(raw[0], nbytes // dtype.itemsize, dtype.itemsize),)
    if n_double:
        # Caffe reads double_data whenever it is not empty, and data otherwise.
        return np.dtype("<f8"), "double_data", tuple(fields.doubles)
    if n_data:
        return np.dtype("<f4"), "data", tuple(fields.data)
    return np.dtype("<f4"), "none", ()


def _scan_layer(
    file: CaffemodelFile, version: int, field_start: int, start: int, end: int
) -> LayerRecord:
    """Index one layer record whose payload is ``view[start:end]``."""
    view = file._require_open()
    name_field, type_field, blob_field = (
        (V2_NAME, V2_TYPE, V2_BLOBS) if version == 2 else (V1_NAME, V1_TYPE, V1_BLOBS)
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
        if version == 1 and number == V1_V0LAYER and wire == WIRETYPE_LENGTH_DELIMITED:
            inner: list[_Part] = []
            for sub in iter_fields(view, field.value_start, field.value_end):
                if sub.number == V0_BLOBS and sub.wire_type == WIRETYPE_LENGTH_DELIMITED:
                    blob_spans.append((sub.field_start, sub.value_start, sub.value_end))
                    continue
                if sub.wire_type == WIRETYPE_LENGTH_DELIMITED:
                    if sub.number == V0_NAME and not name:
                        name = _text_at(view, sub.value_start, sub.value_end)
                    elif sub.number == V0_TYPE:
                        v0_type = _text_at(view, sub.value_start, sub.value_end)
                inner.append(_Part(sub.number, sub.field_start, sub.value_end))
            parts.append(_Part(number, field.field_start, field.value_end, tuple(inner)))
            continue
        parts.append(_Part(number, field.field_start, field.value_end))
        if number == name_field and wire == WIRETYPE_LENGTH_DELIMITED:
            name = _text_at(view, field.value_start, field.value_end)
        elif number == type_field:
            if version == 2 and wire == WIRETYPE_LENGTH_DELIMITED:
                type_name = _text_at(view, field.value_start, field.value_end)
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
    offset: int, detail: str, *, layer: str | None = None, hint: str = CORRUPT_HINT
) -> CaffemodelError:
    """A problem the indexer found at ``offset``; read_caffemodel adds the file's name."""
    return CaffemodelError.at(offset, detail, layer=layer, hint=hint)


def build_index(file: CaffemodelFile) -> None:
    """Fill ``file.layers`` and ``file.top_fields`` by walking the top-level message."""
    view = file._require_open()
    seen_v1 = seen_v2 = False
    for field in iter_fields(view):
        if field.wire_type == WIRETYPE_LENGTH_DELIMITED and field.number in (
            NET_LAYER_V2,
            NET_LAYERS_V1,
        ):
            version = 2 if field.number == NET_LAYER_V2 else 1
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


