"""Writing a caffemodel: copy untouched records byte for byte, encode new layers.

:func:`plan_caffemodel` plans the output as pieces (bytes, array payloads,
ranges of a source file) and checks the size; :meth:`CaffemodelPlan.write_to`
streams them into an output of the guarded writer (:mod:`bnfuse.io.atomic`),
and :func:`write_caffemodel` does both for one file.  Bytes of a source file
(untouched records, and arrays that are still views of it) are copied by the
kernel or read with ``pread``, never through the memory map, so a source that
shrinks meanwhile ends in a clean error instead of a SIGBUS.

Example:
    >>> import numpy as np
    >>> from bnfuse.proto import LayerParameter
    >>> layer = NewLayer(LayerParameter(name="a"), [np.ones(2, np.float32)])
    >>> caffemodel_size([layer], source=None) == len(layer.to_bytes())
    True
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, TypeAlias

import numpy as np

from bnfuse.errors import OutputError, excerpt
from bnfuse.io.atomic import InputSpec, OutputFile, atomic_write
from bnfuse.io.caffemodel._index import BlobRecord, LayerRecord
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
    MAX_CAFFEMODEL_BYTES,
    NET_LAYER_V2,
    NET_LAYERS_V1,
    RAW_TYPE_OF,
    SHAPE_DIM,
    V1_BLOBS,
    V2_BLOBS,
    BlobFormat,
    StrPath,
)
from bnfuse.io.pairs import PAIR_ID_FIELD, binary_marker
from bnfuse.io.wire import WIRETYPE_VARINT, encode_len_header, encode_tag, encode_varint

if TYPE_CHECKING:
    from bnfuse.io.caffemodel._sources import CaffemodelFile
    from bnfuse.proto import LayerParameter, V1LayerParameter

#: Ranges shorter than this are read with pread and written; longer ones are
#: copied by the kernel (copy_file_range), which skips user space entirely.
_KERNEL_COPY_MIN = 1 << 20


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
        >>> from bnfuse.io.caffemodel import read_caffemodel
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
            f"layer {excerpt(layer)} blob {index}: cannot store an array of dtype {array.dtype} "
            "in a caffemodel; weights are floating point"
        )
    storage, legacy = _resolve_format(array, fmt)
    dtype = _FORMAT_DTYPES[storage]
    head = bytearray()
    if legacy:
        dims4 = (1,) * (4 - array.ndim) + tuple(array.shape)
        for number, value in zip((B_NUM, B_CHANNELS, B_HEIGHT, B_WIDTH), dims4, strict=True):
            head += encode_tag(number, WIRETYPE_VARINT) + encode_varint(int(value))
    payload = _ArrayPiece(array, dtype)
    nbytes = payload.size
    pieces: list[_Piece] = []
    shape_field = b""
    if not legacy:
        packed = b"".join(encode_varint(int(d)) for d in array.shape)
        # An empty packed field is not written by protobuf; keep that byte layout.
        dims_field = encode_len_header(SHAPE_DIM, len(packed)) + packed if packed else b""
        shape_field = encode_len_header(B_SHAPE, len(dims_field)) + dims_field
    if storage == "data":
        if nbytes:
            head += encode_len_header(B_DATA, nbytes)
            pieces += [bytes(head), payload]
            head = bytearray()
        head += shape_field
    elif storage == "double_data":
        head += shape_field
        if nbytes:
            head += encode_len_header(B_DOUBLE_DATA, nbytes)
            pieces += [bytes(head), payload]
            head = bytearray()
    else:
        head += shape_field
        head += encode_tag(B_RAW_TYPE, WIRETYPE_VARINT)
        head += encode_varint(RAW_TYPE_OF[f"f{dtype.itemsize}"])
        head += encode_len_header(B_RAW_DATA, nbytes)
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
        raise OutputError(
            f"layer {excerpt(name)}: blob_offset {split} is outside the header bytes"
        )
    formats = list(layer.formats) if layer.formats is not None else []
    if len(formats) > len(layer.blobs):
        raise OutputError(
            f"layer {excerpt(name)}: {len(formats)} formats given for {len(layer.blobs)} blobs"
        )
    formats += [None] * (len(layer.blobs) - len(formats))
    blob_field = V2_BLOBS if version == 2 else V1_BLOBS
    body: list[_Piece] = [header_bytes[:split]]
    for index, (array, fmt) in enumerate(zip(layer.blobs, formats, strict=True)):
        blob = _blob_pieces(name, index, array, fmt)
        body.append(encode_len_header(blob_field, sum(_piece_size(p) for p in blob)))
        body += blob
    body.append(header_bytes[split:])
    record_field = NET_LAYER_V2 if version == 2 else NET_LAYERS_V1
    total = sum(_piece_size(p) for p in body)
    return [encode_len_header(record_field, total), *body]


def _plan(
    entries: Iterable[LayerRecord | NewLayer],
    source: CaffemodelFile | None,
    pair_id: str | None = None,
) -> list[_Piece]:
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
        if entries == source.layers and pair_id == source.pair_id:
            # Unchanged net: every top-level field in its original order, so the
            # output is the source byte for byte even if layers were interleaved.
            spans = [(s, e) for _, s, e in source.top_fields]
            spans += [(r.start, r.end) for r in source.layers]
            pieces = [_CopyPiece(source, s, e) for s, e in sorted(spans)]
            return _merge(pieces)
        # A pair id vouches for one pair only: the source's is never copied.
        before = [f for f in source.top_fields[: source.layer_slot] if f[0] != PAIR_ID_FIELD]
        after = [f for f in source.top_fields[source.layer_slot :] if f[0] != PAIR_ID_FIELD]
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
    if pair_id is not None:
        pieces.append(binary_marker(pair_id))
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


@dataclass(frozen=True)
class CaffemodelPlan:
    """A caffemodel ready to be written: its pieces, its exact size, its source files.

    Made by :func:`plan_caffemodel`; :meth:`write_to` streams it into an output of
    :func:`bnfuse.io.atomic.atomic_outputs`.
    """

    pieces: list[_Piece]
    size: int
    #: The caffemodels whose bytes are copied: no output may replace them, and
    #: each must still be as it was opened when the output is committed.
    files: tuple[CaffemodelFile, ...]

    def protected(self) -> list[InputSpec]:
        """The identities (or paths) of the source files, for the writer's ``inputs``."""
        return [f.identity if f.identity is not None else f.path for f in self.files]

    def check_sources(self) -> None:
        """Raise CaffemodelError if a source file changed since it was opened."""
        for file in self.files:
            file.check_unchanged()

    def write_to(self, out: OutputFile) -> None:
        """Stream every piece into ``out``; the source files are never read through a map.

        Ranges of a real source file, and arrays that are views of one, are
        copied by the kernel (long ones) or read with ``pread`` (short ones).
        """
        self.check_sources()
        for piece in self.pieces:
            if isinstance(piece, bytes):
                out.write(piece)
            elif isinstance(piece, _ArrayPiece):
                self._write_array(out, piece)
            else:
                self._copy(out, piece.file, piece.start, piece.size)
        written = out.size()
        if written != self.size:
            self.check_sources()
            raise OutputError(
                f"{out.shown}: wrote {written} bytes instead of the planned {self.size}; "
                "was an input changed while bnfuse was running?", path=out.shown
            )

    def _write_array(self, out: OutputFile, piece: _ArrayPiece) -> None:
        array = piece.array
        if isinstance(array, np.ndarray) and array.dtype == piece.dtype:
            for file in self.files:
                offset = file.locate(array)
                if offset is not None:
                    self._copy(out, file, offset, piece.size)
                    return
        out.write(_array_bytes(piece))

    @staticmethod
    def _copy(out: OutputFile, file: CaffemodelFile, start: int, size: int) -> None:
        src_fd = file.fileno()
        if src_fd is None:
            out.write(file._require_open()[start : start + size])
        elif size >= _KERNEL_COPY_MIN:
            try:
                out.copy_from(src_fd, start, size)
            except OutputError:
                file.check_unchanged()  # the usual cause, said with the input's name
                raise
        else:
            out.write(file.read_span(start, start + size))


def plan_caffemodel(
    entries: Iterable[LayerRecord | NewLayer],
    *,
    source: CaffemodelFile | None,
    pair_id: str | None = None,
    dest: str = "the caffemodel",
) -> CaffemodelPlan:
    """Plan a caffemodel (see :func:`write_caffemodel`) without creating any file.

    ``pair_id`` is written as the :mod:`bnfuse.io.pairs` marker field (any the
    source holds is dropped); with the source's own id and its layers unchanged
    the plan is the source byte for byte.  Over 2 GiB - 1 byte raises
    :class:`~bnfuse.errors.OutputError` naming ``dest``.

    Example:
        >>> import numpy as np
        >>> from bnfuse.proto import LayerParameter, NetParameter
        >>> layer = NewLayer(LayerParameter(name="a"), [np.ones(2, np.float32)])
        >>> plan = plan_caffemodel([layer], source=None, pair_id="0" * 32)
        >>> plan.size - len(layer.to_bytes())  # the marker field: tag, length, 32 digits
        38
    """
    pieces = _plan(entries, source, pair_id)
    total = sum(_piece_size(p) for p in pieces)
    if total > MAX_CAFFEMODEL_BYTES:
        raise OutputError(
            f"{dest}: the caffemodel would be {total} bytes, over protobuf's 2 GiB limit "
            f"({MAX_CAFFEMODEL_BYTES} bytes); no protobuf reader (Caffe, pycaffe, OpenCV) "
            "can load a message that large", path=dest
        )
    files: dict[int, CaffemodelFile] = {}
    if source is not None:
        files[id(source)] = source
    for piece in pieces:
        if isinstance(piece, _CopyPiece):
            files.setdefault(id(piece.file), piece.file)
    return CaffemodelPlan(pieces, total, tuple(files.values()))


def write_caffemodel(
    dest: StrPath,
    entries: Iterable[LayerRecord | NewLayer],
    *,
    source: CaffemodelFile | None,
    inputs: Sequence[InputSpec] = (),
    pair_id: str | None = None,
) -> None:
    """Stream a new caffemodel to ``dest`` (atomically).

    The output holds ``source``'s top-level non-layer fields (name, input,
    input_dim, ...) byte for byte, then ``entries`` where the source's first
    layer record was: a :class:`LayerRecord` is copied verbatim (by the kernel
    when both files are real), a :class:`NewLayer` is encoded with its arrays
    written straight from memory.  Writing ``source.layers`` unchanged gives a
    byte-identical file.  The size is computed first: over 2 GiB - 1 byte
    raises :class:`~bnfuse.errors.OutputError` before anything is created.
    ``dest`` may not be ``source``, any entry's file or any of ``inputs``; a
    source that changes while it is copied is a
    :class:`~bnfuse.errors.CaffemodelError` and nothing is written.

    Example:
        >>> from bnfuse.io.caffemodel import read_caffemodel
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
    plan = plan_caffemodel(entries, source=source, pair_id=pair_id, dest=shown)
    with atomic_write(dest, inputs=[*inputs, *plan.protected()]) as out:
        plan.write_to(out)
        plan.check_sources()
