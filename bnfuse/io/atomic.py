"""Safe outputs: write to a temporary file, then rename it into place.

bnfuse rewrites files that took days of training to produce, so an output is
never written over in place.  :func:`atomic_write` refuses a destination that is
one of the inputs (also through a symlink or a hard link), writes beside the
destination, syncs, and only then renames; any failure, including Ctrl-C,
removes the temporary file and leaves the previous destination untouched.

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
import os
import secrets
from collections.abc import Iterator, Sequence
from typing import BinaryIO, NoReturn

from bnfuse.errors import OutputError

StrPath = str | os.PathLike[str]

#: Chunk size of the user-space copy loop: large enough to amortise syscalls,
#: small enough not to matter for memory.
_CHUNK = 8 << 20

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
    return OutputError(f"{path}: cannot write: {reason}" + (f" ({hint})" if hint else ""))


def _same_file(a: str, b: str) -> bool:
    """True when two paths name one file: same resolved path, or same device and inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        # One of them does not exist (yet): it cannot be the other one.
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def check_not_input(dest: StrPath, inputs: Sequence[StrPath]) -> None:
    """Raise OutputError when ``dest`` is the same file as any of ``inputs``.

    Example:
        >>> check_not_input("out.caffemodel", ["in.caffemodel"])
        >>> try:
        ...     check_not_input("in.caffemodel", ["./in.caffemodel"])
        ... except OutputError as exc:
        ...     print(str(exc).split(";")[0])
        in.caffemodel: is the input file ./in.caffemodel
    """
    target = os.fspath(dest)
    for item in inputs:
        source = os.fspath(item)
        if _same_file(target, source):
            raise OutputError(
                f"{target}: is the input file {source}; writing it would destroy the input, "
                "choose another output path"
            )


def _create_temp(folder: str, base: str) -> tuple[int, str]:
    """Create a new, empty temp file next to the destination and open it for writing."""
    for _ in range(100):
        path = os.path.join(folder, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            # 0o666 lets the umask decide the final permissions, as for a plain open().
            fd = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666
            )
        except FileExistsError:
            continue
        return fd, path
    raise OutputError(f"{os.path.join(folder, base)}: cannot create a temporary file beside it")


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


@contextlib.contextmanager
def atomic_write(dest: StrPath, *, inputs: Sequence[StrPath] = ()) -> Iterator[BinaryIO]:
    """Yield a binary file whose contents replace ``dest`` only if the block succeeds.

    ``dest`` is refused (:class:`~bnfuse.errors.OutputError`) when it is one of
    ``inputs``.  When ``dest`` is a symlink, the file it points to is replaced
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
    shown = os.fspath(dest)
    check_not_input(shown, inputs)
    target = os.path.realpath(shown)
    folder, base = os.path.split(target)
    if os.path.isdir(target):
        raise OutputError(f"{shown}: is a folder; give an output file name")
    try:
        fd, temp = _create_temp(folder, base)
    except OSError as exc:
        raise _output_error(shown, exc) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise _output_error(shown, exc) from exc
        raise
    _fsync_folder(folder)


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


__all__ = ["atomic_write", "check_not_input", "copy_range"]
