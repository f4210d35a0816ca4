"""Early writeback: the guarded writer asks the kernel to start writing every N bytes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from bnfuse.io import atomic


def test_writeback_covers_what_was_written_in_order(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(atomic, "_WRITEBACK_EVERY", 100)
    monkeypatch.setattr(atomic, "_start_writeback",
                        lambda: lambda fd, offset, length: calls.append((offset, length)))
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 2)
    with atomic.atomic_write(tmp_path / "out.bin") as out:
        out.write(b"a" * 60)
        out.write(b"b" * 60)  # 120 bytes: the first writeback, of [0, 120)
        with open(src, "rb") as f:
            out.copy_from(f.fileno(), 10, 300)  # 300 more: [120, 420)
        out.write(b"c" * 50)  # under the threshold: left to the final fsync
    assert calls == [(0, 120), (120, 300)]
    assert (tmp_path / "out.bin").read_bytes() == (
        b"a" * 60 + b"b" * 60 + (bytes(range(256)) * 2)[10:310] + b"c" * 50)


def test_without_sync_file_range_the_file_is_still_complete(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic, "_WRITEBACK_EVERY", 10)
    monkeypatch.setattr(atomic, "_start_writeback", lambda: None)
    with atomic.atomic_write(tmp_path / "out.bin") as out:
        for _ in range(5):
            out.write(b"x" * 7)
    assert (tmp_path / "out.bin").read_bytes() == b"x" * 35


def test_the_real_call_is_found_on_linux_and_accepts_a_range(tmp_path: Path) -> None:
    start = atomic._start_writeback()
    assert (start is not None) == sys.platform.startswith("linux")
    if start is not None:
        path = tmp_path / "f.bin"
        path.write_bytes(b"z" * 4096)
        fd = os.open(path, os.O_RDWR)
        try:
            start(fd, 0, 4096)  # a hint: returns, the data is unchanged
        finally:
            os.close(fd)
        assert path.read_bytes() == b"z" * 4096
