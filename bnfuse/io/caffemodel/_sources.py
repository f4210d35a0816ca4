"""Opening a caffemodel: a path (memory-mapped), bytes, or a stream; its lifetime.

:func:`read_caffemodel` opens the source, indexes it (:mod:`._index`) and turns
every problem into one :class:`~bnfuse.errors.CaffemodelError` that names the
file.  :class:`CaffemodelFile` owns the memory map and the descriptor until
:meth:`CaffemodelFile.close`.

A path must name a regular file: a FIFO, a device, a folder or a socket is
refused before a byte is read (a FIFO would block forever, ``/dev/zero`` would
never end).  The file may change under bnfuse (another process truncating or
rewriting it): reading a memory map past a shrunk end kills the process with
SIGBUS, so the bytes bnfuse itself computes with are read with ``pread``
(:meth:`CaffemodelFile.read_blob`, :meth:`CaffemodelFile.read_span`), whose
short reads become a clean error, untouched ranges are copied by the kernel
(which stops at the end of a shrunk file), and :meth:`CaffemodelFile.check_unchanged`
compares size and modification time with those at opening before anything is
committed.

Example:
    >>> from bnfuse.proto import NetParameter
    >>> with read_caffemodel(NetParameter(name="n").SerializeToString(), name="n.caffemodel") as m:
    ...     print(m.source, m.size, m.closed)
    n.caffemodel 3 False
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import stat
import weakref
from types import TracebackType
from typing import IO, TYPE_CHECKING

import numpy as np

from bnfuse.errors import CaffemodelError
from bnfuse.io.caffemodel._index import CORRUPT_HINT, BlobRecord, LayerRecord, build_index
from bnfuse.io.caffemodel._layout import FALLBACK_NET_FIELDS, MAX_CAFFEMODEL_BYTES, StrPath
from bnfuse.io.guard import FileId, display_path, file_kind, unwatch, watch, watched
from bnfuse.io.pairs import PAIR_ID_FIELD, binary_marker_id
from bnfuse.io.wire import Buffer, iter_fields

if TYPE_CHECKING:
    from bnfuse.proto import NetParameter

TEXT_DETAIL = "this looks like a prototxt (text), not a binary caffemodel"
CHANGED_HINT = "nothing was written; run bnfuse again once the file is complete"
TEXT_HINT = "pass the prototxt as the first argument and the .caffemodel as the second"
EMPTY_HINT = "pass the .caffemodel written by Caffe"


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
        identity: the file's device and inode when it is a real file (so that
            no output can replace it), else ``None``.
        pair_id: the bnfuse pair id the file carries (:mod:`bnfuse.io.pairs`), or ``None``.

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
        identity: FileId | None = None,
    ) -> None:
        self.source = source
        self.path = path
        self.identity = identity
        self.pair_id: str | None = None
        self._fd = fd
        self._mapped = mapped
        # A raw descriptor, closed by close() or at garbage collection: unlike a
        # file object it never warns when a caller forgets to close the model.
        self._close_fd = weakref.finalize(self, _close, fd) if fd is not None else None
        self._view: memoryview | None = memoryview(buffer).cast("B")
        self.size = len(self._view)
        #: (size, mtime in ns) when opened, for :meth:`check_unchanged`.
        self._opened: tuple[int, int] | None = None
        #: Address of the first mapped byte, to recognise arrays that are views of it.
        self._base: int | None = None
        if fd is not None:
            info = os.fstat(fd)
            self._opened = (info.st_size, info.st_mtime_ns)
        if mapped is not None:
            probe = np.frombuffer(self._view, np.uint8)
            self._base = int(probe.__array_interface__["data"][0])
            del probe
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

    @property
    def leased(self) -> bool:
        """True while the file is held with a read lease (:func:`bnfuse.io.guard.watch_inputs`):
        reading the memory map is then safe, another process cannot shrink the file
        before bnfuse has stopped."""
        return watched(self._fd) if self._view is not None else False

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

    def check_unchanged(self) -> None:
        """Raise :class:`CaffemodelError` when the file's size or mtime differ from opening.

        Another process truncating or rewriting the file while bnfuse uses it is
        caught here before an output made from it is committed.  A no-op for
        in-memory sources.
        """
        if self._opened is None or self._fd is None:
            return
        try:
            info = os.fstat(self._fd)
        except OSError:
            return
        size, mtime = self._opened
        if (info.st_size, info.st_mtime_ns) != (size, mtime):
            raise self._changed(f"it was {size} bytes when bnfuse opened it, it is "
                                f"{info.st_size} bytes now" if info.st_size != size
                                else "it was modified after bnfuse opened it")

    def _changed(self, detail: str) -> CaffemodelError:
        return CaffemodelError(
            f"{self.source}: the caffemodel changed while bnfuse was reading it ({detail}); "
            f"{CHANGED_HINT}", path=self.source)

    def read_span(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` read with ``pread`` (a real file) or from memory.

        Unlike slicing the memory map, a file that shrank since it was opened
        gives a :class:`CaffemodelError`, never a SIGBUS.

        Example:
            >>> from bnfuse.proto import NetParameter
            >>> read_caffemodel(NetParameter(name="n").SerializeToString()).read_span(2, 3)
            b'n'
        """
        view = self._require_open()
        if self._fd is None:
            return bytes(view[start:end])
        out = bytearray(end - start)
        self._pread_into(memoryview(out), start)
        return bytes(out)

    def _pread_into(self, target: memoryview, offset: int) -> None:
        assert self._fd is not None
        done = 0
        while done < len(target):
            try:
                got = os.preadv(self._fd, [target[done:]], offset + done)
            except OSError as exc:
                raise CaffemodelError(f"{self.source}: cannot read the caffemodel: "
                                      f"{exc.strerror or exc}", path=self.source) from None
            if got == 0:
                raise self._changed(f"it ends at byte {offset + done}, bnfuse read it "
                                    f"as {self.size} bytes")
            done += got

    def read_blob(self, blob: BlobRecord) -> np.ndarray:
        """A private, read-only copy of ``blob``'s values, read with ``pread``.

        What :meth:`BlobRecord.array` returns, but in this process's own memory:
        computing with it can never touch the memory map, so a file truncated
        meanwhile is a :class:`CaffemodelError` here, not a SIGBUS later.
        In-memory sources return :meth:`BlobRecord.array` itself.

        Example:
            >>> import numpy as np, pathlib, tempfile
            >>> from bnfuse.io.caffemodel import NewLayer
            >>> from bnfuse.proto import LayerParameter
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.caffemodel"
            >>> layer = NewLayer(LayerParameter(name="s"), [np.arange(3, dtype="<f4")])
            >>> _ = path.write_bytes(layer.to_bytes())
            >>> with read_caffemodel(path) as model:
            ...     model.read_blob(model.layers[0].blobs[0]).tolist()
            [0.0, 1.0, 2.0]
        """
        self._require_open()
        if self._fd is None:
            return blob.array()
        segments = blob._segments
        itemsize = blob.dtype.itemsize
        if len(segments) == 1 and segments[0].stride == itemsize:
            seg = segments[0]
            values = np.empty(seg.count, blob.dtype)
            self._pread_into(memoryview(values).cast("B"), seg.offset)  # type: ignore[arg-type]
        elif not segments:
            values = np.empty(0, blob.dtype)
        else:
            parts = []
            for seg in segments:
                span = (seg.count - 1) * seg.stride + itemsize if seg.count else 0
                raw = bytearray(span)
                self._pread_into(memoryview(raw), seg.offset)
                parts.append(np.ndarray((seg.count,), blob.dtype, raw, 0, (seg.stride,)))
            values = np.concatenate(parts)
        values = values.reshape(blob.shape)
        values.flags.writeable = False
        return values

    def locate(self, array: np.ndarray) -> int | None:
        """The file offset of ``array``'s bytes when it is a contiguous view of this
        file's memory map (as :meth:`BlobRecord.array` hands out), else None.

        The writer copies such arrays from the file with the kernel instead of
        reading them through the map.
        """
        if self._base is None or self._fd is None or self._view is None:
            return None
        if not array.flags.c_contiguous:
            return None
        address = int(array.__array_interface__["data"][0])
        offset = address - self._base
        if offset >= 0 and offset + array.nbytes <= self.size:
            return offset
        return None

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
        self._base = None

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
                bytes(view[s:e]) for n, s, e in self.top_fields if n in FALLBACK_NET_FIELDS
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


def _close(fd: int) -> None:
    """Close a caffemodel's descriptor, giving up its lease first."""
    unwatch(fd)
    os.close(fd)


def _read_pair_id(file: CaffemodelFile) -> str | None:
    """The id of the last :data:`~bnfuse.io.pairs.PAIR_ID_FIELD` field, or None."""
    view = file._require_open()
    found = None
    for number, start, end in file.top_fields:
        if number != PAIR_ID_FIELD:
            continue
        for field in iter_fields(view, start, end):
            found = binary_marker_id(bytes(view[field.value_start:field.value_end]))
    return found


def looks_like_text(view: memoryview) -> bool:
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


def _naming_the_file(error: CaffemodelError, file: CaffemodelFile) -> CaffemodelError:
    """The error raised while indexing ``file``, rebuilt from its fields with the file's name."""
    if error.path is not None or error.offset is None or error.detail is None:
        return error
    if error.hint is not None:  # found by the indexer, which knows what to suggest
        return CaffemodelError.at(
            error.offset, error.detail, path=file.source, hint=error.hint, layer=error.layer
        )
    # A wire-level failure (bnfuse.io.wire knows nothing of the file): text, or damage.
    if looks_like_text(file._require_open()):
        return CaffemodelError.at(0, TEXT_DETAIL, path=file.source, hint=TEXT_HINT)
    return CaffemodelError.at(
        error.offset,
        f"{error.detail} (the file is {file.size} bytes)",
        path=file.source,
        hint=CORRUPT_HINT,
    )


def _not_regular(source: str, kind: str) -> CaffemodelError:
    if kind == "a folder":
        return CaffemodelError(
            f"{source}: is a folder; pass the .caffemodel file inside it", path=source)
    return CaffemodelError(
        f"{source}: is {kind}, not a regular file; bnfuse reads a caffemodel from a regular "
        "file (or bytes or a file object through the API)", path=source)


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
        source = name or display_path(path)
        try:
            # Checked before opening: opening a FIFO for reading waits for a writer.
            kind = file_kind(os.stat(path).st_mode)
            if kind is not None:
                raise _not_regular(source, kind)
            # O_NONBLOCK: should the path become a FIFO after the check, open still
            # returns and the check below refuses it.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
                         | getattr(os, "O_BINARY", 0))
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise CaffemodelError(
                f"{source}: cannot open the caffemodel: {reason}; check the path",
                path=source,
            ) from None
        return _from_fd(fd, source, path)
    if hasattr(src, "read"):
        raw_name = getattr(src, "name", None)
        stream_path = raw_name if isinstance(raw_name, str) and os.path.isfile(raw_name) else None
        source = name or (display_path(raw_name) if isinstance(raw_name, str) else "<stream>")
        info: os.stat_result | None = None
        try:
            own_fd = src.fileno()
            info = os.fstat(own_fd)
            regular = stat.S_ISREG(info.st_mode) and src.tell() == 0
        except (OSError, ValueError, io.UnsupportedOperation, AttributeError):
            regular = False
        if info is not None:
            kind = file_kind(info.st_mode)
            # A pipe or a socket is a stream to read to its end; a device never ends.
            if kind is not None and not (stat.S_ISFIFO(info.st_mode)
                                         or stat.S_ISSOCK(info.st_mode)):
                raise _not_regular(source, kind)
        if regular:
            # A private descriptor: the caller may close their file whenever they like.
            return _from_fd(os.dup(own_fd), source, stream_path)
        identity = (FileId.of_stat(info, source)
                    if info is not None and stat.S_ISREG(info.st_mode) else None)
        return CaffemodelFile(_read_stream(src, source), source=source, path=stream_path,
                              identity=identity)
    raise CaffemodelError(
        f"cannot read a caffemodel from a {type(src).__name__}; pass a path, bytes or a binary file"
    )


def _read_stream(stream: IO[bytes], source: str) -> bytes:
    """Read a stream to its end, but never more than a caffemodel can hold."""
    chunks: list[bytes] = []
    total = 0
    try:
        while True:
            chunk = stream.read(min(8 << 20, MAX_CAFFEMODEL_BYTES + 1 - total))
            if not chunk:
                break
            if not isinstance(chunk, (bytes, bytearray)):
                raise CaffemodelError(
                    f"{source}: the file object returned text; open it in binary mode",
                    path=source)
            chunks.append(bytes(chunk))
            total += len(chunk)
            if total > MAX_CAFFEMODEL_BYTES:
                raise CaffemodelError(
                    f"{source}: the stream holds more than {MAX_CAFFEMODEL_BYTES} bytes, the "
                    "2 GiB limit of a protobuf message; it is no caffemodel", path=source)
    except (OSError, ValueError) as exc:
        raise CaffemodelError(f"{source}: cannot read the caffemodel: {exc}", path=source) from None
    return b"".join(chunks)


def _from_fd(fd: int, source: str, path: str | None) -> CaffemodelFile:
    """Memory-map the regular file open at ``fd`` (taking ownership of it), else read it."""
    try:
        info = os.fstat(fd)
        kind = file_kind(info.st_mode)
        if kind is not None:
            raise _not_regular(source, kind)
        identity = FileId.of_stat(info, source)
        mapped: mmap.mmap | None = None
        if info.st_size > 0:
            try:
                mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                mapped = None  # a file system without mmap support: read it instead
        if mapped is not None:
            # Taken before the first read of the map: another process opening the
            # file for writing now waits while the command stops cleanly.
            watch(fd, source)
            return CaffemodelFile(mapped, source=source, path=path, fd=fd, mapped=mapped,
                                  identity=identity)
        with open(fd, "rb", closefd=False) as stream:
            data = _read_stream(stream, source)
    except OSError as exc:
        _close(fd)
        raise CaffemodelError(
            f"{source}: cannot read the caffemodel: {exc.strerror or exc}", path=source
        ) from None
    except BaseException:
        _close(fd)
        raise
    os.close(fd)
    return CaffemodelFile(data, source=source, path=path, identity=identity)


def read_caffemodel(
    src: StrPath | bytes | bytearray | memoryview | IO[bytes], *, name: str | None = None
) -> CaffemodelFile:
    """Index a caffemodel without decoding its weights.

    ``src`` is a path to a regular file (memory-mapped read-only), bytes-like
    data, or a binary file object (memory-mapped when it is a regular file at
    position 0, read otherwise, up to 2 GiB).  A FIFO, device, folder or socket
    is refused before anything is read.  ``name`` overrides the name used in
    messages.  Every problem
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
        if file.size == 0:
            raise CaffemodelError.at(0, "the file is empty", path=file.source, hint=EMPTY_HINT)
        try:
            build_index(file)
        except CaffemodelError as exc:
            raise _naming_the_file(exc, file) from None
        except (ValueError, IndexError, OverflowError, TypeError, BufferError) as exc:
            raise CaffemodelError(
                f"{file.source}: cannot index the caffemodel: {exc}; {CORRUPT_HINT}",
                path=file.source,
            ) from None
        if not file.layers and looks_like_text(file._require_open()):
            raise CaffemodelError.at(0, TEXT_DETAIL, path=file.source, hint=TEXT_HINT)
        file.pair_id = _read_pair_id(file)
        # A file that shrank while it was indexed could still index (at a record
        # boundary): the size at opening is what the index describes.
        file.check_unchanged()
    except BaseException:
        file.close()
        raise
    return file


