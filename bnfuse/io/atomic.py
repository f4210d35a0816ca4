"""The one guarded writer: every file bnfuse writes goes through :func:`atomic_outputs`.

bnfuse rewrites files that took days of training to produce, so an output is
never written over in place.  :func:`atomic_outputs` takes one or more
destinations and:

1. checks each (:mod:`bnfuse.io.guard`): not an input (by device and inode), not
   a folder, device, FIFO or socket, not a symlink loop, not the same file as
   another destination;
2. writes each to a temp file beside it, ``.<name>.<12 hex digits>.tmp``;
3. when every file is complete, flushes and fsyncs them all, then renames them
   into place together: under a lock on their folders (a concurrent bnfuse
   waits), with SIGINT/SIGTERM/SIGHUP held back until the last rename, and with
   the first files put back if a later rename fails.

Any error or signal before the renames removes every temp file and leaves every
destination as it was.  Only a crash of the machine or a SIGKILL between two
renames can leave some destinations new and others old (bnfuse marks pairs so
that the next load notices, see :mod:`bnfuse.io.pairs`).  :func:`atomic_write`
is the one-file form.

:func:`copy_range` moves large unchanged byte ranges (a caffemodel's untouched
layers) from one file to another inside the kernel when it can.

Example:
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> out = os.path.join(folder, "out.bin")
    >>> with atomic_write(out) as f:
    ...     _ = f.write(b"weights")
    >>> with open(out, "rb") as f:
    ...     f.read()
    b'weights'
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import secrets
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NoReturn

from bnfuse.errors import OutputError
from bnfuse.io.guard import (
    FileId,
    Target,
    check_destinations,
    commit_lock,
    deferred_signals,
    display_path,
    identify,
    identities,
    interruptible,
    recheck,
)

StrPath = str | os.PathLike[str]
#: What an ``inputs`` argument holds: identities taken when the inputs were read, or paths.
InputSpec = FileId | StrPath | None

#: Chunk size of the user-space copy loop: large enough to amortise syscalls,
#: small enough not to matter for memory.
_CHUNK = 8 << 20

#: Early writeback: every this many bytes written, the kernel is asked to start writing
#: them to disk (``sync_file_range``), so the final fsync has little left to wait for.
#: Measured on ResNet-152 / VGG-16-BN here: see benchmarks/README.md.
_WRITEBACK_EVERY = 16 << 20

#: errno values that mean "this kernel or file system cannot do that copy here";
#: the next, simpler method is tried instead.
_COPY_UNSUPPORTED = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF}
)

_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere",
    errno.EFBIG: "the file system cannot hold a file this large; write elsewhere",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.ENOENT: "the destination folder does not exist; create it first",
    errno.ENOTDIR: "a parent of the destination is not a folder",
    errno.EISDIR: "the destination is a folder; give a file name",
}


def _output_error(path: str, exc: OSError) -> OutputError:
    """Turn an OSError into the one-line OutputError the CLI prints."""
    reason = exc.strerror or str(exc)
    hint = _HINTS.get(exc.errno or 0)
    return OutputError(f"{path}: cannot write: {reason}" + (f" ({hint})" if hint else ""),
                       path=path)


def check_not_input(dest: StrPath, inputs: Sequence[StrPath]) -> None:
    """Raise OutputError when ``dest`` is the same file as any of ``inputs``.

    Same resolved path, or same device and inode (a symlink or a hard link).

    Example:
        >>> check_not_input("out.caffemodel", ["in.caffemodel"])
        >>> try:
        ...     check_not_input("in.caffemodel", ["./in.caffemodel"])
        ... except OutputError as exc:
        ...     print(str(exc).split(";")[0])
        in.caffemodel: is the input file ./in.caffemodel
    """
    target = os.fspath(dest)
    found = identify(target)
    for item in inputs:
        source = os.fspath(item)
        other = identify(source)
        same = os.path.realpath(target) == os.path.realpath(source) or (
            found is not None and other is not None and found.same_file(other))
        if same:
            raise OutputError(
                f"{display_path(target)}: is the input file {display_path(source)}; writing it "
                "would destroy the input, choose another output path", path=target)


def _create_temp(folder: str, base: str) -> tuple[int, str]:
    """Create a new, empty temp file next to the destination and open it for writing."""
    for _ in range(100):
        path = os.path.join(folder, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            # 0o666 lets the umask decide the final permissions, as for a plain open().
            fd = os.open(
                path,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_BINARY", 0),
                0o666,
            )
        except FileExistsError:
            continue
        return fd, path
    raise OutputError(f"{os.path.join(folder, base)}: cannot create a temporary file beside it")


@functools.cache
def _start_writeback() -> Callable[[int, int, int], None] | None:
    """Linux's ``sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)``, or None.

    Python's os module does not expose it, so it is called through ctypes; where
    there is no such call (another platform, a libc without it) writeback is left
    to the final fsync alone. Loaded on the first file large enough to need it.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    write = 2  # SYNC_FILE_RANGE_WRITE: start writing the dirty pages, do not wait

    def start(fd: int, offset: int, length: int) -> None:
        # Only a hint: a failure here is ignored, the final fsync reports real errors.
        func(fd, offset, length, write)

    return start


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable; not every platform can open a folder, so best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class OutputFile:
    """One output being written: a temp file beside its destination.

    ``write`` buffers; :meth:`copy_from` has the kernel copy a byte range of
    another file into it.  Every failure is an :class:`~bnfuse.errors.OutputError`
    naming the destination (``shown``), never a bare ``OSError``.

    Example:
        >>> import os, tempfile
        >>> out = os.path.join(tempfile.mkdtemp(), "o.bin")
        >>> with atomic_write(out) as f:
        ...     f.shown == out, f.write(b"abc")
        (True, 3)
    """

    def __init__(self, target: Target, fd: int, temp: str) -> None:
        self.target = target
        self.shown = target.shown
        self.temp = temp
        self._file = os.fdopen(fd, "wb")
        #: Bytes given to the file since writeback was last started, and where it ended.
        self._unsynced = 0
        self._synced_to = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; return the number of bytes."""
        try:
            written = self._file.write(data)
        except OSError as exc:
            raise _output_error(self.shown, exc) from exc
        self._written(written)
        return written

    def _written(self, count: int) -> None:
        self._unsynced += count
        if self._unsynced < _WRITEBACK_EVERY:
            return
        start = _start_writeback()
        if start is None:
            return
        self.flush()
        end = os.lseek(self.fileno(), 0, os.SEEK_CUR)
        start(self.fileno(), self._synced_to, end - self._synced_to)
        self._synced_to, self._unsynced = end, 0

    def flush(self) -> None:
        """Hand the buffered bytes to the kernel."""
        try:
            self._file.flush()
        except OSError as exc:
            raise _output_error(self.shown, exc) from exc

    def fileno(self) -> int:
        """The temp file's descriptor."""
        return self._file.fileno()

    def size(self) -> int:
        """Bytes written so far (buffered ones included)."""
        self.flush()
        return os.fstat(self.fileno()).st_size

    def copy_from(self, src_fd: int, offset: int, length: int) -> None:
        """Append ``length`` bytes at ``offset`` of ``src_fd`` (:func:`copy_range`)."""
        # The kernel writes at the descriptor's position: flush what is buffered first.
        self.flush()
        try:
            copy_range(src_fd, self.fileno(), offset, length)
        except OSError as exc:
            raise _output_error(self.shown, exc) from exc
        self._written(length)

    def _finish(self) -> None:
        """Flush, fsync and close: the temp file is complete on disk."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as exc:
            raise _output_error(self.shown, exc) from exc

    def _discard(self) -> None:
        """Close and remove the temp file (after a failure)."""
        with contextlib.suppress(OSError, ValueError):
            self._file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.temp)


#: Marks a destination that did not exist before the commit (nothing to put back).
_ABSENT = "absent"


def _backup(target: Target) -> str | None:
    """A hard link to the current destination, to put it back if a later rename fails.

    ``_ABSENT`` when there is no destination yet, None when the link cannot be made
    (then that file cannot be put back).
    """
    if not os.path.lexists(target.path):
        return _ABSENT
    for _ in range(100):
        path = os.path.join(target.folder, f".{target.base}.{secrets.token_hex(6)}.tmp")
        try:
            os.link(target.path, path)
        except FileExistsError:
            continue
        except OSError:
            return None
        return path
    return None


def _rename_all(files: Sequence[OutputFile]) -> None:
    """Rename every temp file over its destination; on a failure put the earlier ones back."""
    backups: list[str | None] = []
    done = 0
    try:
        for i, item in enumerate(files):
            # Only files renamed before another one may need putting back.
            backups.append(_backup(item.target) if i < len(files) - 1 else None)
            os.replace(item.temp, item.target.path)
            done += 1
    except OSError as exc:
        for item, backup in zip(reversed(files[:done]), reversed(backups[:done]), strict=True):
            with contextlib.suppress(OSError):
                if backup == _ABSENT:
                    os.unlink(item.target.path)
                elif backup is not None:
                    os.replace(backup, item.target.path)
        raise _output_error(files[done].shown, exc) from None
    finally:
        for backup in backups:
            if backup is not None and backup != _ABSENT:
                with contextlib.suppress(OSError):
                    os.unlink(backup)


@contextlib.contextmanager
def atomic_outputs(
    dests: Sequence[StrPath],
    *,
    inputs: Iterable[InputSpec] = (),
    labels: Sequence[str] | None = None,
    before_commit: Callable[[], None] | None = None,
) -> Iterator[list[OutputFile]]:
    """Yield one :class:`OutputFile` per destination; all replace their destinations
    together, and only if the block succeeds.

    ``inputs`` are the files that must not be written (identities from
    :func:`bnfuse.io.guard.identify`, or paths); ``labels`` name the outputs in
    the message when two are one file; ``before_commit`` runs once every file is
    complete, before any rename (a last check that the inputs did not change).
    A destination that is a symlink keeps its link: the file it points to is
    replaced.

    Example:
        >>> import os, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> a, b = os.path.join(folder, "a.prototxt"), os.path.join(folder, "a.caffemodel")
        >>> with atomic_outputs([a, b]) as (text, model):
        ...     _ = text.write(b"name: 'a'\\n"); _ = model.write(b"\\n\\x01a")
        >>> sorted(os.listdir(folder))
        ['a.caffemodel', 'a.prototxt']
    """
    ids = identities(inputs)
    targets = check_destinations(dests, inputs=ids, labels=labels)
    with interruptible():
        files: list[OutputFile] = []
        committed = False
        try:
            for target in targets:
                # A signal between creating a temp file and recording it would leave
                # it behind: held back until it is recorded.
                with deferred_signals():
                    try:
                        fd, temp = _create_temp(target.folder, target.base)
                    except OSError as exc:
                        raise _output_error(target.shown, exc) from None
                    files.append(OutputFile(target, fd, temp))
            yield files
            for item in files:
                item._finish()
            if before_commit is not None:
                before_commit()
            with commit_lock(targets), deferred_signals():
                for target in targets:
                    recheck(target, ids)
                _rename_all(files)
                committed = True
                for folder in dict.fromkeys(t.folder for t in targets):
                    _fsync_folder(folder)
        except BaseException as exc:
            if not committed:
                with deferred_signals():
                    for item in files:
                        item._discard()
            if isinstance(exc, OSError):
                raise _output_error(targets[0].shown, exc) from exc
            raise


@contextlib.contextmanager
def atomic_write(dest: StrPath, *, inputs: Iterable[InputSpec] = ()) -> Iterator[OutputFile]:
    """Yield a file whose contents replace ``dest`` only if the block succeeds.

    The one-file form of :func:`atomic_outputs`: ``dest`` is refused
    (:class:`~bnfuse.errors.OutputError`) when it is one of ``inputs`` or not a
    regular file; when ``dest`` is a symlink, the file it points to is replaced
    and the link is kept.  OSErrors (disk full, permission denied, ...) become
    OutputError naming ``dest``; any exception removes the temporary file.

    Example:
        >>> import os, tempfile
        >>> out = os.path.join(tempfile.mkdtemp(), "a.bin")
        >>> with atomic_write(out, inputs=["model.caffemodel"]) as f:
        ...     _ = f.write(b"\\x00")
        >>> os.path.getsize(out)
        1
    """
    with atomic_outputs([dest], inputs=inputs) as files:
        yield files[0]


def _copy_loop(src_fd: int, dst_fd: int, offset: int, length: int) -> None:
    """Portable copy through user space, with pread so the source position is untouched."""
    while length > 0:
        chunk = os.pread(src_fd, min(length, _CHUNK), offset)
        if not chunk:
            _source_ended(offset, length)
        view = memoryview(chunk)
        while view:
            written = os.write(dst_fd, view)
            view = view[written:]
        offset += len(chunk)
        length -= len(chunk)


def _source_ended(offset: int, length: int) -> NoReturn:
    raise OutputError(
        f"the input ended at byte {offset} with {length} bytes still to copy; "
        "was it changed while bnfuse was running?"
    )


def copy_range(src_fd: int, dst_fd: int, offset: int, length: int) -> None:
    """Copy ``length`` bytes at ``offset`` of ``src_fd`` to the current position of ``dst_fd``.

    Uses ``os.copy_file_range`` (in-kernel, possibly a reflink), then
    ``os.sendfile``, then a buffered loop, falling back whenever the kernel or
    file system says the faster call is unsupported for these files.  The
    source's own file position is not moved; the destination's advances.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryFile() as src, tempfile.TemporaryFile() as dst:
        ...     _ = src.write(b"0123456789"); src.flush()
        ...     copy_range(src.fileno(), dst.fileno(), 2, 5)
        ...     _ = dst.seek(0)
        ...     dst.read()
        b'23456'
    """
    if length <= 0:
        return
    copy_file_range = getattr(os, "copy_file_range", None)
    if copy_file_range is not None:
        try:
            while length > 0:
                done = copy_file_range(src_fd, dst_fd, min(length, 1 << 30), offset)
                if done == 0:
                    _source_ended(offset, length)
                offset += done
                length -= done
            return
        except OSError as exc:
            if exc.errno not in _COPY_UNSUPPORTED:
                raise
    sendfile = getattr(os, "sendfile", None)
    if sendfile is not None:
        try:
            while length > 0:
                done = sendfile(dst_fd, src_fd, offset, min(length, 1 << 30))
                if done == 0:
                    _source_ended(offset, length)
                offset += done
                length -= done
            return
        except OSError as exc:
            if exc.errno not in _COPY_UNSUPPORTED:
                raise
    _copy_loop(src_fd, dst_fd, offset, length)


__all__ = ["OutputFile", "atomic_outputs", "atomic_write", "check_not_input", "copy_range"]
