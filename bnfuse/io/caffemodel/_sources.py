"""Opening a caffemodel: a path (memory-mapped), bytes, or a stream; its lifetime.

:func:`read_caffemodel` opens the source, indexes it (:mod:`._index`) and turns
every problem into one :class:`~bnfuse.errors.CaffemodelError` that names the
file.  :class:`CaffemodelFile` owns the memory map and the descriptor until
:meth:`CaffemodelFile.close`.

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

from bnfuse.errors import CaffemodelError
from bnfuse.io.caffemodel._index import CORRUPT_HINT, LayerRecord, build_index
from bnfuse.io.caffemodel._layout import FALLBACK_NET_FIELDS, StrPath
from bnfuse.io.wire import Buffer

if TYPE_CHECKING:
    from bnfuse.proto import NetParameter

TEXT_DETAIL = "this looks like a prototxt (text), not a binary caffemodel"
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
        return CaffemodelFile(_read_stream(src, source), source=source, path=stream_path)
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
    return CaffemodelFile(data, source=source, path=path)


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
    except BaseException:
        file.close()
        raise
    return file


