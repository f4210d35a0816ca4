"""Atomic outputs: collisions with inputs refused, failures leave nothing behind, range copies."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from bnfuse.errors import OutputError
from bnfuse.io.atomic import atomic_write, check_not_input, copy_range


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_writes_and_replaces(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"old")
    with atomic_write(dest) as f:
        f.write(b"new contents")
        # Until the block ends the old file is still there.
        assert dest.read_bytes() == b"old"
    assert dest.read_bytes() == b"new contents"
    assert _listing(tmp_path) == ["out.bin"]


def test_new_file_permissions_follow_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "a.bin") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_keeps_previous_dest_and_removes_temp(tmp_path: Path, error: BaseException) -> None:
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"previous")
    with pytest.raises(type(error)), atomic_write(dest) as f:
        f.write(b"partial" * 1000)
        raise error
    assert dest.read_bytes() == b"previous"
    assert _listing(tmp_path) == ["out.bin"]


def test_disk_full_becomes_output_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"previous")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError) as info, atomic_write(dest) as f:
        f.write(b"data")
    assert str(info.value) == (
        f"{dest}: cannot write: No space left on device "
        "(no space left on the device; free some space or write elsewhere)"
    )
    assert dest.read_bytes() == b"previous"
    assert _listing(tmp_path) == ["out.bin"]


def test_missing_folder(tmp_path: Path) -> None:
    dest = tmp_path / "nope" / "out.bin"
    with pytest.raises(OutputError, match="destination folder does not exist"), atomic_write(dest):
        pass
    assert not (tmp_path / "nope").exists()


def test_dest_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="is a folder"), atomic_write(tmp_path):
        pass


def test_refuses_same_path(tmp_path: Path) -> None:
    src = tmp_path / "in.caffemodel"
    src.write_bytes(b"weights")
    with pytest.raises(OutputError) as info, atomic_write(src, inputs=[src]):
        pass
    assert str(info.value) == (
        f"{src}: is the input file {src}; writing it would destroy the input, "
        "choose another output path"
    )
    assert src.read_bytes() == b"weights"
    assert _listing(tmp_path) == ["in.caffemodel"]


def test_refuses_relative_and_dotted_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    src = tmp_path / "in.caffemodel"
    src.write_bytes(b"weights")
    monkeypatch.chdir(tmp_path / "sub")
    with pytest.raises(OutputError, match="is the input file"):
        check_not_input("../in.caffemodel", [str(src)])


def test_refuses_symlink_to_input(tmp_path: Path) -> None:
    src = tmp_path / "in.caffemodel"
    src.write_bytes(b"weights")
    link = tmp_path / "link.caffemodel"
    link.symlink_to(src)
    with pytest.raises(OutputError, match="is the input file"), atomic_write(link, inputs=[src]):
        pass
    # And the other way round: the input given through the link.
    with pytest.raises(OutputError, match="is the input file"), atomic_write(src, inputs=[link]):
        pass
    assert src.read_bytes() == b"weights"
    assert link.is_symlink()


def test_refuses_hard_link_to_input(tmp_path: Path) -> None:
    src = tmp_path / "in.caffemodel"
    src.write_bytes(b"weights")
    hard = tmp_path / "hard.caffemodel"
    os.link(src, hard)
    with pytest.raises(OutputError, match="is the input file"), atomic_write(hard, inputs=[src]):
        pass
    assert src.read_bytes() == hard.read_bytes() == b"weights"


def test_missing_input_is_not_a_collision(tmp_path: Path) -> None:
    check_not_input(tmp_path / "out", [tmp_path / "absent"])


def test_writes_through_symlinked_dest(tmp_path: Path) -> None:
    target = tmp_path / "real.bin"
    target.write_bytes(b"old")
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    with atomic_write(link) as f:
        f.write(b"new")
    assert link.is_symlink()
    assert target.read_bytes() == b"new"


def _files(tmp_path: Path, payload: bytes) -> tuple[int, int, Path]:
    src = tmp_path / "src.bin"
    src.write_bytes(payload)
    dst = tmp_path / "dst.bin"
    src_fd = os.open(src, os.O_RDONLY)
    dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    return src_fd, dst_fd, dst


PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, every byte value


def _copy_and_check(tmp_path: Path) -> None:
    src_fd, dst_fd, dst = _files(tmp_path, PAYLOAD)
    try:
        os.write(dst_fd, b"head")
        copy_range(src_fd, dst_fd, 1000, 500_000)
        os.write(dst_fd, b"tail")
        # The source's own position is never moved.
        assert os.lseek(src_fd, 0, os.SEEK_CUR) == 0
    finally:
        os.close(src_fd)
        os.close(dst_fd)
    assert dst.read_bytes() == b"head" + PAYLOAD[1000:501_000] + b"tail"


def test_copy_range_default(tmp_path: Path) -> None:
    _copy_and_check(tmp_path)


def test_copy_range_falls_back_to_sendfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def cross_device(*args: object) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", cross_device, raising=False)
    _copy_and_check(tmp_path)


def test_copy_range_falls_back_to_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(*args: object) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(os, "copy_file_range", unsupported, raising=False)
    monkeypatch.setattr(os, "sendfile", unsupported, raising=False)
    _copy_and_check(tmp_path)


def test_copy_range_source_too_short(tmp_path: Path) -> None:
    src_fd, dst_fd, _ = _files(tmp_path, b"0123456789")
    try:
        with pytest.raises(OutputError, match="the input ended at byte 10 with 5 bytes still"):
            copy_range(src_fd, dst_fd, 5, 10)
    finally:
        os.close(src_fd)
        os.close(dst_fd)


def test_copy_range_zero_length(tmp_path: Path) -> None:
    src_fd, dst_fd, dst = _files(tmp_path, b"abc")
    try:
        copy_range(src_fd, dst_fd, 0, 0)
    finally:
        os.close(src_fd)
        os.close(dst_fd)
    assert dst.read_bytes() == b""


# --- the guard's commit lock and held-back signals ----------------------------------


def test_commit_lock_holds_the_destination_folder(tmp_path: Path) -> None:
    import fcntl

    from bnfuse.io.guard import Target, commit_lock

    target = Target("out.bin", str(tmp_path / "out.bin"))
    other = os.open(tmp_path, os.O_RDONLY)
    try:
        with commit_lock([target]), pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after the block
    finally:
        os.close(other)
    assert _listing(tmp_path) == []  # a folder lock leaves no file behind


def test_commit_lock_falls_back_to_a_lock_file(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a folder cannot be locked (NFS: flock needs a writable descriptor)."""
    import fcntl
    import stat as stat_module

    from bnfuse.io.guard import Target, commit_lock

    real = fcntl.flock

    def no_folder_locks(fd: int, operation: int) -> None:
        if stat_module.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EBADF, "Bad file descriptor")
        real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", no_folder_locks)
    with commit_lock([Target("out.bin", str(tmp_path / "out.bin"))]):
        lock = tmp_path / ".bnfuse.lock"
        other = os.open(lock, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                real(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
    assert _listing(tmp_path) == [".bnfuse.lock"]


def test_deferred_signals_are_delivered_after_the_block() -> None:
    import signal

    from bnfuse.io.guard import deferred_signals

    seen: list[str] = []

    def record(signum: int, frame: object) -> None:
        seen.append("handler")

    previous = signal.signal(signal.SIGTERM, record)
    try:
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            seen.append("still inside")
        seen.append("after")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == ["still inside", "handler", "after"]


def test_atomic_outputs_commit_together_or_not_at_all(tmp_path: Path) -> None:
    from bnfuse.io.atomic import atomic_outputs

    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"old a")
    with pytest.raises(RuntimeError), atomic_outputs([a, b]) as (fa, fb):
        fa.write(b"new a")
        fb.write(b"new b")
        raise RuntimeError("the second file could not be finished")
    assert a.read_bytes() == b"old a" and not b.exists()
    assert _listing(tmp_path) == ["a.bin"]
    with atomic_outputs([a, b]) as (fa, fb):
        fa.write(b"new a")
        fb.write(b"new b")
    assert (a.read_bytes(), b.read_bytes()) == (b"new a", b"new b")
    with pytest.raises(OutputError, match="the output 1 and output 2 outputs are the same"):
        atomic_outputs([a, tmp_path / "." / "a.bin"]).__enter__()
