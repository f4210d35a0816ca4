"""Inputs that never end or that change: refused or stopped with one clean error.

- A FIFO, a device, a folder or a socket given as a prototxt or a caffemodel is
  refused before a byte is read (a FIFO used to block forever, ``/dev/zero`` to
  be read until memory ran out); file objects of devices too, while pipes stay
  readable streams.
- A caffemodel truncated or rewritten by another process during a fold ends in a
  clean error, never SIGBUS: deterministic cases through the library (the file
  shrinks after load, after the fold, during the write), and the command line
  with another process truncating the file while it runs, with the read lease
  bnfuse takes and without it (another process holding the file open for
  writing prevents the lease).

Everything runs in child processes with a time limit and an address-space limit,
so that the old behaviour (a hang, memory exhaustion, SIGBUS) fails the test
instead of the test run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from bigmodel import write_big_model

import bnfuse

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")

_LIMITED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
"""


def _child(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([sys.executable, "-c", _LIMITED + textwrap.dedent(code), *args],
                              env=ENV, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"bnfuse did not finish within {timeout} s (blocked on the input?)")


_LOAD = """
import bnfuse
try:
    bnfuse.load(sys.argv[1], None if sys.argv[2] == "-" else sys.argv[2])
    print("loaded")
except bnfuse.BnfuseError as exc:
    print(type(exc).__name__, exc)
"""


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, Path]:
    return write_big_model(tmp_path, channels=4, name="small")


def _fifo(folder: Path) -> Path:
    path = folder / "fifo"
    os.mkfifo(path)
    return path


def _socket(folder: Path) -> Path:
    path = folder / "sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()
    return path


SPECIAL = {
    "fifo": (_fifo, "is a FIFO (named pipe), not a regular file"),
    "dev-zero": (lambda folder: Path("/dev/zero"), "is a character device, not a regular file"),
    "dev-null": (lambda folder: Path("/dev/null"), "is a character device, not a regular file"),
    "socket": (_socket, "is a socket, not a regular file"),
}


@pytest.mark.parametrize("kind", list(SPECIAL))
@pytest.mark.parametrize("role", ["prototxt", "caffemodel"])
def test_special_file_input_is_refused_before_reading(small: tuple[Path, Path], tmp_path: Path,
                                                      kind: str, role: str) -> None:
    make, words = SPECIAL[kind]
    special = make(tmp_path)
    prototxt, caffemodel = (special, small[1]) if role == "prototxt" else (small[0], special)
    result = _child(_LOAD, str(prototxt), str(caffemodel))
    assert result.returncode == 0, result.stderr
    kind_name = "BnfuseError" if role == "prototxt" else "CaffemodelError"
    assert result.stdout == (
        f"{kind_name} {special}: {words}; bnfuse reads a {role} from a regular file (or bytes "
        "or a file object through the API)\n")
    cli = subprocess.run([sys.executable, "-m", "bnfuse", "fold", str(prototxt), str(caffemodel),
                          "-o", str(tmp_path / "o.prototxt"), "-w", str(tmp_path / "o.caffemodel")],
                         env=ENV, capture_output=True, text=True, timeout=60, check=False)
    assert cli.returncode == 1
    assert cli.stderr.count("\n") == 1 and words in cli.stderr
    assert not (tmp_path / "o.prototxt").exists()


def test_folder_inputs_are_refused(small: tuple[Path, Path], tmp_path: Path) -> None:
    assert _child(_LOAD, str(tmp_path), "-").stdout == (
        f"BnfuseError {tmp_path}: is a directory, expected a prototxt file\n")
    assert _child(_LOAD, str(small[0]), str(tmp_path)).stdout == (
        f"CaffemodelError {tmp_path}: is a folder; pass the .caffemodel file inside it\n")


def test_device_file_objects_are_refused_and_pipes_are_read(small: tuple[Path, Path]) -> None:
    code = """
    import os, threading
    import bnfuse
    prototxt, caffemodel = sys.argv[1], sys.argv[2]
    for role in ("prototxt", "caffemodel"):
        with open("/dev/zero", "rb") as zero:
            try:
                bnfuse.load(zero if role == "prototxt" else prototxt,
                            zero if role == "caffemodel" else None)
                print(role, "loaded")
            except bnfuse.BnfuseError as exc:
                print(role, type(exc).__name__, exc)
    # A pipe is a stream: read to its end.
    data = open(caffemodel, "rb").read()
    r, w = os.pipe()
    def feed():
        with os.fdopen(w, "wb") as sink:
            sink.write(data)
    threading.Thread(target=feed).start()
    with os.fdopen(r, "rb") as stream:
        net = bnfuse.load(prototxt, stream)
    print("pipe", net.layer("conv1").blobs[0].shape)
    """
    result = _child(code, str(small[0]), str(small[1]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "prototxt BnfuseError /dev/zero: is a character device, not a regular file; bnfuse "
        "reads a prototxt from a regular file (or bytes or a file object through the API)",
        "caffemodel CaffemodelError /dev/zero: is a character device, not a regular file; "
        "bnfuse reads a caffemodel from a regular file (or bytes or a file object through the "
        "API)",
        "pipe (4, 4, 3, 3)",
    ]


# --- a caffemodel that changes during a fold ----------------------------------------------

_CHANGES = """
import os, sys
import bnfuse
from bnfuse.io import atomic
prototxt, caffemodel, out, when = sys.argv[1:5]
size = os.path.getsize(caffemodel)

def change():
    if when.startswith("rewrite"):
        with open(caffemodel, "r+b") as f:  # same size, other bytes: another training run
            f.seek(size // 2)
            f.write(b"\\xff" * 64)
        os.utime(caffemodel, ns=(1, 1))
    else:
        os.truncate(caffemodel, size // 3)

try:
    net = bnfuse.load(prototxt, caffemodel)
    if when in ("after-load", "rewrite-after-load"):
        change()
    result = bnfuse.fold_net(net)
    if when == "after-fold":
        change()
    if when == "during-write":
        real = atomic.OutputFile.copy_from
        def shrink_then_copy(self, *args):
            change()
            return real(self, *args)
        atomic.OutputFile.copy_from = shrink_then_copy
    result.save(os.path.join(out, "o.prototxt"), os.path.join(out, "o.caffemodel"))
    print("saved")
except bnfuse.BnfuseError as exc:
    print(type(exc).__name__, exc)
"""


@pytest.mark.parametrize("when", ["after-load", "after-fold", "during-write",
                                  "rewrite-after-load"])
def test_caffemodel_changed_during_a_fold_is_a_clean_error(tmp_path: Path, when: str) -> None:
    prototxt, caffemodel = write_big_model(tmp_path, channels=240)
    out = tmp_path / "out"
    out.mkdir()
    result = _child(_CHANGES, str(prototxt), str(caffemodel), str(out), when)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-500:]}"
    line = result.stdout.strip()
    assert line.startswith(f"CaffemodelError {caffemodel}: the caffemodel changed while bnfuse "
                           "was reading it ("), line
    assert line.endswith("); nothing was written; run bnfuse again once the file is complete")
    assert list(out.iterdir()) == []


def _run_cli_and_truncate(big: tuple[Path, Path], out: Path, *, delay: float | None,
                          hold_open: bool) -> tuple[int, str]:
    """Run ``bnfuse fold`` and truncate its caffemodel from another process meanwhile:
    after ``delay`` seconds, or (None) as soon as a temp file of the outputs appears."""
    prototxt, caffemodel = big
    keeper = open(caffemodel, "r+b") if hold_open else None  # noqa: SIM115
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "bnfuse", "fold", str(prototxt), str(caffemodel), "-o",
             str(out / "m.prototxt"), "-w", str(out / "m.caffemodel"), "-q"],
            env=ENV, stderr=subprocess.PIPE, text=True)
        if delay is not None:
            time.sleep(delay)
        else:
            deadline = time.monotonic() + 60
            while (child.poll() is None and time.monotonic() < deadline
                   and not any(n.endswith(".tmp") for n in os.listdir(out))):
                time.sleep(0.0002)
        # With bnfuse holding a lease, this waits until bnfuse let go of the file.
        cutter = threading.Thread(target=os.truncate, args=(caffemodel, 1000))
        cutter.start()
        _, stderr = child.communicate(timeout=120)
        cutter.join(timeout=60)
    finally:
        if keeper is not None:
            keeper.close()
    return child.returncode, stderr


@pytest.mark.slow
@pytest.mark.parametrize("hold_open", [False, True], ids=["with-lease", "without-lease"])
def test_cli_caffemodel_truncated_by_another_process(tmp_path: Path, hold_open: bool) -> None:
    """Never SIGBUS (exit -7): success (the fold was done first) or one error line; the
    outputs are as they were or a complete pair, and no temp file is left."""
    timings: list[float | None] = [None, 0.05, 0.15, 0.3] if not hold_open else [None] * 3
    seen_errors = 0
    for i, delay in enumerate(timings):
        big = write_big_model(tmp_path, channels=900, name=f"big{i}")
        out = tmp_path / f"out{i}"
        out.mkdir()
        code, stderr = _run_cli_and_truncate(big, out, delay=delay, hold_open=hold_open)
        assert code in (0, 1), f"exit {code}: {stderr[-400:]}"
        names = sorted(p.name for p in out.iterdir())
        if code == 1:
            seen_errors += 1
            assert stderr.count("\n") == 1, stderr
            assert stderr.startswith(f"error: {big[1]}: "), stderr
        # Nothing, or the complete pair (committed before the change was noticed).
        assert names in ([], ["m.caffemodel", "m.prototxt"]), names
        if names:
            bnfuse.load(out / "m.prototxt", out / "m.caffemodel")
    assert seen_errors >= 1, "every fold finished before the truncation: the test proved nothing"
