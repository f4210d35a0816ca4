"""What the guarded writer checks: inputs by identity, destinations by kind, signals, locks.

Every file bnfuse writes goes through :mod:`bnfuse.io.atomic`, which uses this
module to decide whether a destination may be written at all:

- **inputs by identity.** An input is remembered as a :class:`FileId` (device and
  inode, taken with ``fstat`` when it is read), so a destination that is an input
  is refused whatever path names it: the same path, a relative path after a
  ``chdir``, a symlink, a hard link, or the file behind a file object;
- **destinations by kind.** Only a regular file, or a path that does not exist
  yet, may be a destination: folders, devices (``/dev/null``), FIFOs and sockets
  are refused, never replaced, and a symlink loop is a clean error;
- **signals.** While temp files exist, SIGTERM and SIGHUP raise
  :class:`Interrupted` (SIGINT already raises ``KeyboardInterrupt``) so that
  the temp files are removed; see :func:`interruptible` and :func:`deferred_signals`;
- **locks.** Two processes committing the same destination take turns
  (:func:`commit_lock`), so concurrent writers of one pair leave one writer's
  complete pair, never a mix.

Example:
    >>> import os, pathlib, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> model = os.path.join(folder, "in.caffemodel")
    >>> _ = pathlib.Path(model).write_bytes(b"weights")
    >>> link = os.path.join(folder, "link.caffemodel")
    >>> os.symlink(model, link)
    >>> try:
    ...     check_destination(link, inputs=[identify(model)])
    ... except OutputError as exc:
    ...     print(str(exc).split(";")[0].replace(folder + os.sep, ""))
    link.caffemodel: is the input file in.caffemodel
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import CodeType, FrameType

from bnfuse.errors import OutputError

StrPath = str | os.PathLike[str]

#: The signals that end a command by default and that bnfuse turns into a clean exit.
TERMINATING: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
#: Held back around a commit: the terminating signals and the lease-break signal.
_DEFERRED: tuple[signal.Signals, ...] = TERMINATING + tuple(
    getattr(signal, name) for name in ("SIGIO",) if hasattr(signal, name))

#: How long a writer waits for another bnfuse process to finish committing the
#: same destination (a commit is a few renames: milliseconds).
LOCK_TIMEOUT = 60.0


def display_path(path: str) -> str:
    """A path as shown in a message: as given, or as a Python literal when it holds
    control characters (a newline in a file name must not split the one-line message).

    Example:
        >>> display_path("out/model.caffemodel"), display_path("bad\\nname")
        ('out/model.caffemodel', "'bad\\\\nname'")
    """
    if path.isprintable():
        return path
    return repr(path)


# --- identities ----------------------------------------------------------------


@dataclass(frozen=True)
class FileId:
    """A file as the kernel knows it: ``(st_dev, st_ino)``, with the name given by the user.

    Two FileIds are the same file when device and inode agree; ``name`` is only
    for messages.

    Example:
        >>> import os
        >>> a = FileId.of_stat(os.stat("."), "here")
        >>> a.same_file(FileId.of_stat(os.stat(os.getcwd()), "cwd"))
        True
    """

    device: int
    inode: int
    name: str

    @classmethod
    def of_stat(cls, info: os.stat_result, name: str) -> FileId:
        """The identity in a ``stat`` result."""
        return cls(info.st_dev, info.st_ino, name)

    def same_file(self, other: FileId | os.stat_result) -> bool:
        """True when ``other`` (a FileId or a stat result) is this very file."""
        if isinstance(other, FileId):
            return (self.device, self.inode) == (other.device, other.inode)
        return (self.device, self.inode) == (other.st_dev, other.st_ino)


def identify(source: StrPath | int, name: str | None = None) -> FileId | None:
    """The identity of a path (symlinks followed) or an open descriptor; None if absent.

    Example:
        >>> identify("/no/such/file") is None
        True
        >>> identify(".").name
        '.'
    """
    try:
        if isinstance(source, int):
            return FileId.of_stat(os.fstat(source), name or f"<descriptor {source}>")
        shown = os.fspath(source)
        return FileId.of_stat(os.stat(shown), name or shown)
    except (OSError, ValueError):
        return None


def identities(inputs: Iterable[FileId | StrPath | None]) -> list[FileId]:
    """Identities of ``inputs``; paths are stat'ed now (a missing one cannot be a destination).

    Example:
        >>> [found.name for found in identities([".", "/no/such/file", None])]
        ['.']
    """
    ids: list[FileId] = []
    for item in inputs:
        if item is None:
            continue
        found = item if isinstance(item, FileId) else identify(item)
        if found is not None:
            ids.append(found)
    return ids


# --- destinations --------------------------------------------------------------

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str | None:
    """What a non-regular file is ("a folder", "a FIFO (named pipe)", ...); None if regular.

    Example:
        >>> import os
        >>> file_kind(os.stat(".").st_mode)
        'a folder'
    """
    if stat.S_ISREG(mode):
        return None
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "not a regular file"


@dataclass(frozen=True)
class Target:
    """A checked destination: ``shown`` as given, ``path`` with every symlink resolved."""

    shown: str
    path: str

    @property
    def folder(self) -> str:
        """The folder the file (and its temp file) lives in."""
        return os.path.dirname(self.path)

    @property
    def base(self) -> str:
        """The file's own name."""
        return os.path.basename(self.path)


def _refuse_kind(shown: str, kind: str) -> OutputError:
    if kind == "a folder":
        return OutputError(f"{shown}: is a folder; give an output file name", path=shown)
    return OutputError(
        f"{shown}: is {kind}, not a regular file; bnfuse writes only regular files and never "
        "replaces anything else: give a file path",
        path=shown,
    )


def _refuse_protected(shown: str, mode: int) -> OutputError:
    return OutputError(
        f"{shown}: is write-protected (mode {stat.S_IMODE(mode):04o}); bnfuse does not replace "
        "a file nobody may write: make it writable first or choose another path", path=shown)


def _refuse_input(shown: str, source: FileId) -> OutputError:
    return OutputError(
        f"{shown}: is the input file {display_path(source.name)}; writing it would destroy the "
        "input, choose another output path",
        path=shown,
    )


def _stat_or_none(shown: str, path: str) -> os.stat_result | None:
    """``stat`` following symlinks; None when nothing is there (a dangling link counts)."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputError(
                f"{shown}: is a symlink loop (a link that leads back to itself); "
                "give a file path", path=shown) from None
        if exc.errno == errno.ENOTDIR:
            raise OutputError(
                f"{shown}: cannot write: a parent of the destination is not a folder",
                path=shown) from None
        if exc.errno == errno.ENAMETOOLONG:
            raise OutputError(f"{shown}: cannot write: the path is too long", path=shown) from None
        # EACCES on a parent and the like: the temp-file creation reports it with a hint.
        return None


def _standard_stream(info: os.stat_result) -> str | None:
    """"input"/"output"/"error" when ``info`` is the file behind one of the standard
    streams (``/dev/stdout`` with stdout redirected to a file, say), else None."""
    for fd, label in ((1, "output"), (2, "error"), (0, "input")):
        try:
            own = os.fstat(fd)
        except OSError:
            continue
        if (own.st_dev, own.st_ino) == (info.st_dev, info.st_ino):
            return label
    return None


def check_destination(
    dest: StrPath, *, inputs: Iterable[FileId | StrPath | None] = ()
) -> Target:
    """Check that ``dest`` may be written; return it with its symlinks resolved.

    Raises :class:`~bnfuse.errors.OutputError` when ``dest`` is one of ``inputs``
    (compared by device and inode), is not a regular file (a folder, a device, a
    FIFO, a socket), is write-protected (no write permission for anyone: the
    rename would replace it without asking), is the file behind a standard
    stream (``/dev/stdout`` redirected to a file), is a symlink loop, holds a NUL
    byte, or names no file (an empty path, or one ending in a separator).
    Nothing is created.

    Example:
        >>> try:
        ...     check_destination("/dev/null")
        ... except OutputError as exc:
        ...     print(str(exc).split(";")[0])
        /dev/null: is a character device, not a regular file
    """
    raw = os.fsdecode(os.fspath(dest))
    shown = display_path(raw)
    if "\x00" in raw:
        raise OutputError(f"{shown}: the output path contains a NUL byte", path=shown)
    if not raw or raw.endswith(os.sep) or (os.altsep and raw.endswith(os.altsep)):
        info = _stat_or_none(shown, raw) if raw else None
        if info is not None and stat.S_ISDIR(info.st_mode):
            raise _refuse_kind(shown, "a folder")
        raise OutputError(f"{shown or repr(raw)}: is not a file name; give an output file name",
                          path=shown)
    info = _stat_or_none(shown, raw)
    if info is not None:
        kind = file_kind(info.st_mode)
        if kind is not None:
            raise _refuse_kind(shown, kind)
        if not info.st_mode & 0o222:
            # chmod a-w is how trained weights are protected; the rename would not ask.
            raise _refuse_protected(shown, info.st_mode)
        for source in identities(inputs):
            if source.same_file(info):
                raise _refuse_input(shown, source)
        stream = _standard_stream(info)
        if stream is not None:
            raise OutputError(
                f"{shown}: is this process's standard {stream}; bnfuse writes standard output "
                "only when asked with '-' (as in --json -)", path=shown)
    # Resolved only now: the kernel's own stat above follows /proc's magic links
    # (/dev/stdout -> pipe) that realpath cannot.
    path = os.path.realpath(raw)
    if os.path.basename(path) in ("", ".", ".."):
        raise _refuse_kind(shown, "a folder")
    return Target(shown, path)


def check_destinations(
    dests: Sequence[StrPath], *, inputs: Iterable[FileId | StrPath | None] = (),
    labels: Sequence[str] | None = None,
) -> list[Target]:
    """:func:`check_destination` for each, and refuse two destinations that are one file.

    ``labels`` name the outputs in the message (default "output 1", "output 2"...).

    Example:
        >>> try:
        ...     check_destinations(["a.bin", "./a.bin"], labels=["prototxt", "caffemodel"])
        ... except OutputError as exc:
        ...     print(exc)
        ./a.bin: the prototxt and caffemodel outputs are the same file
    """
    ids = identities(inputs)
    targets = [check_destination(d, inputs=ids) for d in dests]
    names = list(labels) if labels is not None else [f"output {i + 1}" for i in range(len(dests))]
    for i, a in enumerate(targets):
        for j in range(i):
            b = targets[j]
            same = a.path == b.path
            if not same:
                first, second = _stat_or_none(a.shown, a.path), _stat_or_none(b.shown, b.path)
                same = first is not None and second is not None and (
                    (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino))
            if same:
                raise OutputError(
                    f"{a.shown}: the {names[j]} and {names[i]} outputs are the same file",
                    path=a.shown)
    return targets


def recheck(target: Target, inputs: Iterable[FileId]) -> None:
    """Check ``target`` again just before its rename (it may have changed since)."""
    info = _stat_or_none(target.shown, target.path)
    if info is None:
        return
    kind = file_kind(info.st_mode)
    if kind is not None:
        raise _refuse_kind(target.shown, kind)
    if not info.st_mode & 0o222:
        raise _refuse_protected(target.shown, info.st_mode)
    for source in inputs:
        if source.same_file(info):
            raise _refuse_input(target.shown, source)


# --- signals -------------------------------------------------------------------


class Interrupted(BaseException):
    """A terminating signal (SIGINT, SIGTERM, SIGHUP) arrived while bnfuse was working.

    Not an ``Exception``: like ``KeyboardInterrupt`` it passes every ``except
    Exception`` and runs every ``finally`` on its way out, so temp files are
    removed.  ``signum`` is the signal; the command line exits with ``128 + signum``.

    Example:
        >>> import signal
        >>> Interrupted(signal.SIGTERM).signum == signal.SIGTERM, str(Interrupted(signal.SIGTERM))
        (True, 'interrupted by SIGTERM')
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"interrupted by {signal_name(signum)}")


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, and so on.

    Example:
        >>> signal_name(2)
        'SIGINT'
    """
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


#: Signals whose handler ran inside bnfuse's own handler bookkeeping (see
#: :func:`_raise_interrupted`): delivered again once that bookkeeping is done.
_pending: list[int] = []
#: The code of that bookkeeping, filled in below the functions it names.
_SHIELDED: set[CodeType] = set()


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    # Python runs a handler at any bytecode boundary, and within signal.signal and
    # pthread_sigmask themselves: raised while the handlers are being put in or taken
    # out, the exception would escape the code meant to handle it. There it is only
    # recorded, and the bookkeeping delivers it again when it is done.
    while frame is not None:
        if frame.f_code in _SHIELDED:
            _pending.append(signum)
            return
        frame = frame.f_back
    raise Interrupted(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install_handlers() -> Callable[[], None]:
    """Make SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted`; return the undo.

    For a program that owns the process (the ``bnfuse`` command): every such
    signal then ends in the program's own clean exit.  A no-op outside the main
    thread, where Python cannot set handlers.

    Example:
        >>> import signal
        >>> before = signal.getsignal(signal.SIGTERM)
        >>> restore = install_handlers()
        >>> signal.getsignal(signal.SIGTERM) is before
        False
        >>> restore(); signal.getsignal(signal.SIGTERM) is before
        True
    """
    if not _main_thread():
        return lambda: None
    previous = {signum: signal.signal(signum, _raise_interrupted) for signum in TERMINATING}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


class interruptible:  # noqa: N801 -- used like a function: ``with interruptible():``
    """Inside: SIGTERM and SIGHUP raise :class:`Interrupted` where they would have killed.

    Only signals whose handler is the default (kill the process) are taken
    over: a handler the caller installed is left alone.  On the way out the
    previous handlers come back; if one of the taken-over signals arrived, it is
    delivered again with its default action once the ``with`` block has cleaned
    up, so the process still ends as it would have, minus the temp files. That
    holds wherever the signal lands, on the way in and out included.
    SIGINT needs nothing: Python already turns it into ``KeyboardInterrupt``.

    Example:
        >>> with interruptible():
        ...     pass
    """

    def __init__(self) -> None:
        self._taken: dict[int, object] = {}

    def __enter__(self) -> None:
        if not _main_thread():
            return
        for signum in TERMINATING:
            if signum != signal.SIGINT and signal.getsignal(signum) == signal.SIG_DFL:
                self._taken[signum] = signal.SIG_DFL
                signal.signal(signum, _raise_interrupted)
        if any(signum in self._taken for signum in _pending):
            self._end(None)  # arrived on the way in: nothing to clean up yet

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        ours = exc.signum if isinstance(exc, Interrupted) and exc.signum in self._taken else None
        self._end(ours)

    def _end(self, signum: int | None) -> None:
        """Put the previous handlers back; then end the process by ``signum``, or by a
        taken-over signal that arrived meanwhile, with its default action."""
        taken = set(self._taken)
        _restore(self._taken)
        late = [s for s in _pending if s in taken]
        _pending[:] = [s for s in _pending if s not in taken]
        if signum is None and late:
            signum = late[0]
        if signum is not None:
            # The default action, now that the cleanup is done: the process ends by
            # the signal, exactly as without bnfuse's handler.
            os.kill(os.getpid(), signum)


def _restore(taken: dict[int, object]) -> None:
    """Put the previous handlers back, the signals blocked meanwhile.

    A signal that arrives while blocked stays pending and, once unblocked, takes its
    default action; one already on its way runs the handler (which only records it,
    see :func:`_raise_interrupted`) before its default comes back, rather than being
    dropped: Python runs no handler for a default it finds when it gets to it.
    """
    mask = getattr(signal, "pthread_sigmask", None)
    previous = mask(signal.SIG_BLOCK, list(taken)) if mask is not None and taken else None
    for signum, handler in taken.items():
        signal.signal(signum, handler)  # type: ignore[arg-type]
    taken.clear()
    if mask is not None and previous is not None:
        mask(signal.SIG_SETMASK, previous)


_SHIELDED.update(f.__code__ for f in (interruptible.__enter__, interruptible.__exit__,
                                      interruptible._end, _restore))


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold back SIGINT, SIGTERM, SIGHUP and SIGIO inside (delivered when the block ends).

    Used around the renames of a commit and the removal of temp files, so a
    signal cannot cut a pair in half or leave a temp file behind.  A no-op where
    ``pthread_sigmask`` does not exist.

    Example:
        >>> with deferred_signals():
        ...     pass
    """
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None:
        yield
        return
    # Python runs a pending handler inside pthread_sigmask, after the mask changed: the
    # mask is read first (a handler raising there changed nothing) and blocked inside
    # the try, so that an Interrupted raised as the signals get blocked still unblocks
    # them (else the default action that ends the process stays pending for ever).
    previous = mask(signal.SIG_BLOCK, ())
    try:
        mask(signal.SIG_BLOCK, _DEFERRED)
        yield
    finally:
        mask(signal.SIG_SETMASK, previous)


# --- inputs that change ---------------------------------------------------------


class InputChanged(BaseException):
    """Another process opened an input for writing (or truncated it) while bnfuse read it.

    Raised only inside :func:`watch_inputs`, where the inputs bnfuse maps are held
    with a read lease: the other process's ``open``/``truncate`` waits (up to the
    kernel's lease-break time, 45 s by default) while bnfuse stops cleanly, so the
    memory map is never read after the file shrinks (which would be a SIGBUS).
    ``name`` is the input concerned.

    Example:
        >>> str(InputChanged("m.caffemodel"))
        'm.caffemodel: another process is changing this input while bnfuse reads it'
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"{display_path(name)}: another process is changing this input "
                         "while bnfuse reads it")


_F_SETLEASE = getattr(fcntl, "F_SETLEASE", None)
_F_GETLEASE = getattr(fcntl, "F_GETLEASE", None)
_LEASE_SIGNAL = getattr(signal, "SIGIO", None)
#: Descriptors held with a lease, by descriptor, while :func:`watch_inputs` is active.
_watched: dict[int, str] = {}
#: Whether :func:`watch_inputs` is active (a one-element list: module state without ``global``).
_watching = [False]


def _lease_broken(signum: int, frame: FrameType | None) -> None:
    for fd, name in list(_watched.items()):
        try:
            state = fcntl.fcntl(fd, _F_GETLEASE) if _F_GETLEASE is not None else None
        except OSError:
            _watched.pop(fd, None)
            continue
        # While a break is pending the lease reads as the type it is being broken to.
        if state == fcntl.F_UNLCK:
            raise InputChanged(name)
    if _watched:
        # SIGIO from a lease whose break already completed: still one of ours.
        raise InputChanged(next(iter(_watched.values())))


def watch(fd: int, name: str) -> None:
    """Hold a read lease on ``fd`` while :func:`watch_inputs` is active (else a no-op).

    Best effort: a file open for writing elsewhere, owned by another user (without
    CAP_LEASE) or on a file system without leases is simply not watched; the size
    checks of the caffemodel reader still apply.
    """
    if not _watching[0] or _F_SETLEASE is None:
        return
    try:
        fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_RDLCK)
    except OSError:
        return
    _watched[fd] = name


def watched(fd: int | None) -> bool:
    """True while ``fd`` is held with a lease by :func:`watch` (its file cannot shrink
    unnoticed: another process's open for writing waits while bnfuse stops)."""
    return fd is not None and fd in _watched


def unwatch(fd: int) -> None:
    """Give up the lease on ``fd`` (before it is closed)."""
    if _watched.pop(fd, None) is not None and _F_SETLEASE is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_UNLCK)


@contextlib.contextmanager
def watch_inputs() -> Iterator[None]:
    """Inside: caffemodels opened by bnfuse are held with a read lease (Linux).

    For a program that owns the process (the ``bnfuse`` command): if another
    process then opens such a file for writing or truncates it, that process
    waits and this one raises :class:`InputChanged` where it is, so its temp
    files are removed and it exits with one line instead of dying of SIGBUS.
    A no-op outside the main thread and where leases do not exist.

    Example:
        >>> with watch_inputs():
        ...     pass
    """
    if _F_SETLEASE is None or _LEASE_SIGNAL is None or not _main_thread() or _watching[0]:
        yield
        return
    previous = signal.signal(_LEASE_SIGNAL, _lease_broken)
    _watching[0] = True
    try:
        yield
    finally:
        _watching[0] = False
        for fd in list(_watched):
            unwatch(fd)
        signal.signal(_LEASE_SIGNAL, previous)


# --- locks ---------------------------------------------------------------------

#: errno values meaning "this file system cannot lock": the commit goes on without.
_NO_LOCKS = frozenset({errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF})


def _flock(fd: int, shown: str, deadline: float) -> bool:
    """Take an exclusive flock on ``fd``, waiting until ``deadline``; False if unsupported."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise OutputError(
                    f"{shown}: another process has been writing this output for over "
                    f"{LOCK_TIMEOUT:.0f} s; try again when it is done", path=shown) from None
            time.sleep(0.01)
        except OSError as exc:
            if exc.errno in _NO_LOCKS:
                return False
            raise


def _lock_folder(folder: str, shown: str, deadline: float) -> int | None:
    """Lock a folder itself (no file is created); fall back to a lock file inside it."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    except OSError:
        return _lock_file(os.path.join(folder, ".bnfuse.lock"), shown, deadline)
    if _flock_kept(fd, shown, deadline):
        return fd
    # Network file systems emulate flock with write locks, which a folder opened
    # read-only cannot take: use a lock file there.
    return _lock_file(os.path.join(folder, ".bnfuse.lock"), shown, deadline)


def _lock_file(path: str, shown: str, deadline: float) -> int | None:
    """Lock ``path`` (created if needed, and left in place); None when there are no locks."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        return None
    return fd if _flock_kept(fd, shown, deadline) else None


def _flock_kept(fd: int, shown: str, deadline: float) -> bool:
    """:func:`_flock` on ``fd``; closes ``fd`` unless the lock was taken."""
    try:
        if _flock(fd, shown, deadline):
            return True
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return False


@contextlib.contextmanager
def commit_lock(targets: Sequence[Target]) -> Iterator[None]:
    """Hold an exclusive lock on the folder of every target while their renames run.

    Two bnfuse processes committing into one folder take turns, so each
    process's renames happen together: the files end as one writer's complete
    set.  Folders are locked in a fixed order (device, inode) so two writers never
    wait for each other in a circle.  On a file system without locks the commit
    goes on unlocked.

    Example:
        >>> import tempfile, os
        >>> target = Target("x", os.path.join(tempfile.mkdtemp(), "x"))
        >>> with commit_lock([target]):
        ...     pass
    """
    folders: dict[tuple[int, int], tuple[str, str]] = {}
    for target in targets:
        try:
            info = os.stat(target.folder)
        except OSError:
            continue
        folders.setdefault((info.st_dev, info.st_ino), (target.folder, target.shown))
    deadline = time.monotonic() + LOCK_TIMEOUT
    held: list[int] = []
    try:
        for key in sorted(folders):
            folder, shown = folders[key]
            fd = _lock_folder(folder, shown, deadline)
            if fd is not None:
                held.append(fd)
        yield
    finally:
        for fd in reversed(held):
            os.close(fd)  # closing releases the flock


__all__ = [
    "TERMINATING",
    "FileId",
    "InputChanged",
    "Interrupted",
    "Target",
    "check_destination",
    "check_destinations",
    "commit_lock",
    "deferred_signals",
    "display_path",
    "file_kind",
    "identify",
    "identities",
    "install_handlers",
    "interruptible",
    "recheck",
    "signal_name",
    "unwatch",
    "watch",
    "watch_inputs",
    "watched",
]
