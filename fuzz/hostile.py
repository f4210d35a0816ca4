"""Hostile scenarios: everything around the files bnfuse reads, not the bytes inside them.

:mod:`fuzz.engine` mutates what bnfuse reads.  This module mutates the world
around a run, the way an adversarial campaign did:

- **output paths** (in process, through the API and ``bnfuse.cli.main``): an
  output that is an input named another way (the same path, a dotted spelling, a
  relative path after a ``chdir``, a symlink, a chain of symlinks, a hard link, a
  file object's descriptor), or that is no regular file (a device node, a FIFO,
  a socket, a folder, a symlink loop, a dangling or folder symlink, a NUL byte, a
  trailing separator, a path under a file, a name too long), given as ``-o``,
  ``-w``, ``--json``, ``random-weights -w`` or to ``save``/``save_weights``;
- **special inputs**: a FIFO (with or without a writer), ``/dev/zero``,
  ``/dev/null``, ``/dev/urandom``, a folder, a socket, a symlink to a FIFO, file
  objects of devices and of pipes;
- **signals at random points**: ``bnfuse fold`` as a subprocess on a model of
  random size, SIGINT, SIGTERM, SIGHUP or SIGKILL after a random delay or a
  random time after its first temp file appears;
- **inputs changing under bnfuse**: the caffemodel truncated, rewritten in place
  or replaced while the subprocess runs;
- **concurrent writers**: two subprocesses writing one output pair;
- **API misuse**: a public call with one argument of a wrong kind, which must end in
  success, a one-line ``BnfuseError`` or bnfuse's own ``TypeError`` (naming the function).

The oracle (:func:`run_scenario`) allows success or one clean line (a
``BnfuseError``; exit 1 with ``error: ...``; ``128 + N`` after signal N) and
checks what must hold whatever happened: inputs byte-identical (unless the
scenario changes them itself), every special file still what it was, no temp
file left (except after SIGKILL), and the destination pair as it was or the
complete new pair, never a silent mix.  Scenario ``index`` of run ``seed`` is
made by ``random.Random(f"hostile:{seed}:{index}")``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuzz.corpus_seeds import Seed
from fuzz.engine import FuzzInput, Outcome, deadline, generate

ROOT = Path(__file__).resolve().parent.parent
TEMP = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")
PAIR_LINE = re.compile(rb"\n# bnfuse pair ([0-9a-f]{32})\n\Z")

KINDS = ("output", "input", "signal", "change", "concurrent", "api")
WEIGHTS = (6, 3, 4, 3, 1, 4)


class FindingError(Exception):
    """An invariant did not hold; the message says which."""


# --------------------------------------------------------------------------- helpers


def _snapshot(paths: list[Path]) -> dict[str, object]:
    """Kind, inode and (regular files) content hash and mtime of each path."""
    state: dict[str, object] = {}
    for path in paths:
        try:
            info = os.lstat(path)
        except OSError:
            state[str(path)] = None
            continue
        if stat.S_ISREG(info.st_mode):
            state[str(path)] = ("file", info.st_ino, info.st_mtime_ns,
                                hashlib.sha256(path.read_bytes()).hexdigest())
        else:
            state[str(path)] = (stat.S_IFMT(info.st_mode), info.st_ino)
    return state


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _temps(*folders: Path) -> list[str]:
    return [p.name for folder in folders if folder.is_dir() for p in folder.iterdir()
            if TEMP.match(p.name)]


def _one_line(text: str, what: str) -> None:
    lines = text.strip().splitlines()
    if len(lines) != 1 or not lines[0].startswith("error: ") or "Traceback" in text:
        raise FindingError(f"{what}: not one error line: {text[-400:]!r}")


def _make_special(kind: str, path: Path) -> Path:
    """A non-regular file of ``kind`` at ``path`` (a FIFO where a device needs root)."""
    if kind == "device":
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
            return path
        except (PermissionError, OSError):
            kind = "fifo"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()
    elif kind == "dir":
        path.mkdir()
    return path


def _call(label: str, action: Callable[[], object]) -> str:
    """Run an API call: 'ok', or the error class; anything else is a finding."""
    from bnfuse.errors import BnfuseError

    try:
        action()
    except BnfuseError as exc:
        if "\n" in str(exc):
            raise FindingError(
                f"{label}: {type(exc).__name__} over several lines: {exc!s:.300}") from None
        return type(exc).__name__
    return "ok"


def _cli(*args: str) -> tuple[int, str]:
    from bnfuse.cli import main

    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        code = main(list(args))
    return code, sink.getvalue()


# --------------------------------------------------------------------------- models


def _blob(array: np.ndarray) -> object:
    """A BlobProto of ``array``: packed float32 bytes parsed by protobuf (fast for big arrays)."""
    from bnfuse.io.wire import encode_len_header
    from bnfuse.proto import BlobProto

    values = np.ascontiguousarray(array, dtype="<f4")
    payload = values.tobytes()
    blob = BlobProto.FromString(encode_len_header(5, len(payload)) + payload)
    blob.shape.dim.extend(int(d) for d in values.shape)
    return blob


_MEDIUM = """name: "medium"
layer {{ name: "data" type: "Input" top: "data"
        input_param {{ shape {{ dim: 1 dim: {c} dim: 4 dim: 4 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param {{ num_output: {c} kernel_size: 3 pad: 1 }} }}
layer {{ name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }}
layer {{ name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param {{ bias_term: true }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param {{ num_output: {c} kernel_size: 3 pad: 1 }} }}
"""


def medium_model(channels: int, seed: int = 0) -> Seed:
    """Conv + BatchNorm + Scale + conv, ``channels`` wide (512: about 19 MB)."""
    from bnfuse.proto import NetParameter

    rng = np.random.default_rng(seed)
    c = channels
    net = NetParameter(name="medium")
    for name, kind, arrays in (
        ("conv1", "Convolution", [rng.normal(0, 0.05, (c, c, 3, 3)), rng.normal(size=c)]),
        ("bn1", "BatchNorm", [rng.normal(size=c), rng.uniform(0.5, 2, c), np.array([0.9])]),
        ("sc1", "Scale", [rng.uniform(0.5, 1.5, c), rng.normal(size=c)]),
        ("conv2", "Convolution", [rng.normal(0, 0.05, (c, c, 3, 3)), rng.normal(size=c)]),
    ):
        layer = net.layer.add(name=name, type=kind)
        for array in arrays:
            layer.blobs.add().CopyFrom(_blob(array))  # type: ignore[arg-type]
    return Seed(f"medium{c}", _MEDIUM.format(c=c).encode(), net.SerializeToString())


_MEDIUM_CACHE: dict[int, Seed] = {}


def _medium(rng: random.Random) -> Seed:
    channels = rng.choice([64, 160, 320, 512, 720])
    if channels not in _MEDIUM_CACHE:
        _MEDIUM_CACHE[channels] = medium_model(channels)
    return _MEDIUM_CACHE[channels]


# --------------------------------------------------------------------------- scenario: outputs

ALIASES = ("same", "dotted", "parent-dotted", "chdir-relative", "symlink", "symlink-chain",
           "hardlink")
SPECIALS = ("device", "fifo", "socket", "dir", "loop", "dangling", "dir-symlink", "nul",
            "trailing-sep", "under-a-file", "too-long", "dev-stdout")


def _alias(kind: str, victim: Path, scratch: Path) -> str:
    if kind == "same":
        return str(victim)
    if kind == "dotted":
        return str(victim.parent / "." / victim.name)
    if kind == "parent-dotted":
        return str(victim.parent / ".." / victim.parent.name / victim.name)
    if kind == "chdir-relative":
        return os.path.relpath(victim, scratch)
    if kind == "symlink":
        (scratch / "link").symlink_to(victim)
        return str(scratch / "link")
    if kind == "symlink-chain":
        (scratch / "l1").symlink_to(victim)
        (scratch / "l2").symlink_to(scratch / "l1")
        return str(scratch / "l2")
    os.link(victim, scratch / "hard")
    return str(scratch / "hard")


def _special_path(kind: str, scratch: Path, model: Path) -> str:
    if kind in ("device", "fifo", "socket", "dir"):
        return str(_make_special(kind, scratch / f"special-{kind}"))
    if kind == "loop":
        (scratch / "loop").symlink_to("loop")
        return str(scratch / "loop")
    if kind == "dangling":
        (scratch / "dangling").symlink_to(scratch / "nowhere.bin")
        return str(scratch / "dangling")
    if kind == "dir-symlink":
        (scratch / "adir").mkdir()
        (scratch / "dirlink").symlink_to(scratch / "adir")
        return str(scratch / "dirlink")
    if kind == "nul":
        return str(scratch / "a\x00b")
    if kind == "trailing-sep":
        return str(scratch / "out") + os.sep
    if kind == "under-a-file":
        return str(model / "x.bin")
    if kind == "too-long":
        return str(scratch / ("x" * 300))
    return "/dev/stdout"


def _scenario_output(rng: random.Random, seeds: list[Seed], run_seed: int, index: int,
                     work: Path) -> tuple[FuzzInput, str, str]:
    item = generate(seeds, run_seed, index, heavy=False)
    case, scratch = work / "case", work / "scratch"
    case.mkdir()
    scratch.mkdir()
    prototxt, caffemodel = case / "model.prototxt", case / "model.caffemodel"
    prototxt.write_bytes(item.prototxt)
    with_weights = item.caffemodel is not None
    if with_weights:
        caffemodel.write_bytes(item.caffemodel or b"")
    aliasing = rng.random() < 0.5
    inputs = [prototxt] + ([caffemodel] if with_weights else [])
    victim = prototxt
    if aliasing:
        mode = rng.choice(ALIASES)
        victim = rng.choice(inputs)
        bad = _alias(mode, victim, scratch)
    else:
        mode = rng.choice(SPECIALS)
        bad = _special_path(mode, scratch, prototxt)
    slot = rng.choice(["prototxt", "caffemodel", "json", "weights-only", "random-weights"])
    call = rng.choice(["api", "cli"])
    what = f"output {'alias' if aliasing else 'special'} {mode} as {slot} via {call}"
    watched = [*inputs, *(Path(p) for p in (bad,) if "\x00" not in p)]
    special_nodes = [Path(bad)] if not aliasing and mode in ("device", "fifo", "socket",
                                                             "dir") else []
    before = _snapshot(watched)
    outs = {"prototxt": str(scratch / "o.prototxt"), "caffemodel": str(scratch / "o.caffemodel")}
    old_cwd = os.getcwd()
    result = ""
    try:
        os.chdir(scratch if mode == "chdir-relative" else case)
        if call == "api":
            result = _api_output(slot, bad, prototxt, caffemodel if with_weights else None,
                                 outs=outs, chdir_relative=mode == "chdir-relative", case=case,
                                 scratch=scratch)
        else:
            result = _cli_output(slot, bad, prototxt, caffemodel if with_weights else None,
                                 outs)
    finally:
        os.chdir(old_cwd)
    after = _snapshot(watched)
    # random-weights reads only the prototxt: its -w may name the old caffemodel.
    protected = [prototxt] if slot == "random-weights" and call == "cli" else inputs
    for path in protected + special_nodes:
        if after[str(path)] != before[str(path)]:
            raise FindingError(f"{what}: {path.name} was changed ({before[str(path)]} -> "
                          f"{after[str(path)]})")
    if aliasing and result == "ok" and victim in protected:
        raise FindingError(f"{what}: writing over an input was not refused")
    leftovers = _temps(case, scratch, *(Path(p) for p in (bad,) if _is_dir(p)))
    if leftovers:
        raise FindingError(f"{what}: temp files left: {leftovers}")
    return item, what, result


def _api_output(slot: str, bad: str, prototxt: Path, caffemodel: Path | None, *,
                outs: dict[str, str], chdir_relative: bool, case: Path, scratch: Path) -> str:
    import bnfuse
    from bnfuse.net import save_weights

    if chdir_relative:
        # Loaded by relative names in the inputs' folder; saved after moving away.
        os.chdir(case)
        net_holder: list[bnfuse.Net] = []
        status = _call("load", lambda: net_holder.append(
            bnfuse.load(prototxt.name, caffemodel.name if caffemodel else None)))
        os.chdir(scratch)
        if status != "ok":
            return status
        net = net_holder[0]
    else:
        loaded: list[bnfuse.Net] = []
        status = _call("load", lambda: loaded.append(bnfuse.load(prototxt, caffemodel)))
        if status != "ok":
            return status
        net = loaded[0]
    status = _call("fold", lambda: bnfuse.fold_net(net))
    if status != "ok":
        return status
    if slot in ("weights-only", "random-weights"):
        return _call("save_weights", lambda: save_weights(net, bad))
    text = bad if slot == "prototxt" else outs["prototxt"]
    model = bad if slot in ("caffemodel", "json") else outs["caffemodel"]
    if caffemodel is None and model == bad:
        return "unused (no caffemodel to write)"
    return _call("save", lambda: bnfuse.save(net, text, model if caffemodel else None))


def _cli_output(slot: str, bad: str, prototxt: Path, caffemodel: Path | None,
                outs: dict[str, str]) -> str:
    if "\x00" in bad:
        return "skipped (argv cannot hold NUL)"
    if slot == "random-weights":
        args = ["random-weights", str(prototxt), "-w", bad, "--fill-unmeasurable", "-q"]
    elif caffemodel is None:
        args = ["inspect", str(prototxt), "--json", bad, "-q"]
    else:
        args = ["fold", str(prototxt), str(caffemodel), "-q",
                "-o", bad if slot == "prototxt" else outs["prototxt"],
                "-w", bad if slot in ("caffemodel", "weights-only") else outs["caffemodel"]]
        if slot == "json":
            args += ["--json", bad]
    code, text = _cli(*args)
    if code not in (0, 1):
        raise FindingError(f"cli {' '.join(args[:1])} exited {code}: {text[-400:]!r}")
    if code == 1:
        _one_line(text, f"cli {args[0]}")
        return "exit 1"
    return "ok"


# --------------------------------------------------------------------------- scenario: inputs

INPUT_KINDS = ("fifo", "fifo-with-writer", "dev-zero", "dev-null", "dev-urandom", "dir", "socket",
               "symlink-to-fifo", "zero-file-object", "pipe-file-object", "empty")


def _scenario_input(rng: random.Random, seeds: list[Seed], work: Path) -> tuple[FuzzInput, str,
                                                                                 str]:
    import bnfuse

    seed = rng.choice([s for s in seeds if s.caffemodel is not None] or seeds)
    item = FuzzInput(-1, seed.name, "", seed.prototxt, seed.caffemodel)
    case = work / "case"
    case.mkdir()
    prototxt, caffemodel = case / "model.prototxt", case / "model.caffemodel"
    prototxt.write_bytes(seed.prototxt)
    caffemodel.write_bytes(seed.caffemodel or b"")
    kind = rng.choice(INPUT_KINDS)
    role = rng.choice(["prototxt", "caffemodel"])
    call = rng.choice(["load", "cli fold", "cli inspect"])
    what = f"input {kind} as {role} via {call}"
    good = prototxt if role == "prototxt" else caffemodel
    opened: list[object] = []
    source: object
    writer: threading.Thread | None = None
    if kind in ("fifo", "fifo-with-writer", "symlink-to-fifo"):
        fifo = case / "fifo"
        os.mkfifo(fifo)
        source = fifo
        if kind == "symlink-to-fifo":
            (case / "link").symlink_to(fifo)
            source = case / "link"
        if kind == "fifo-with-writer":
            data = good.read_bytes()

            def feed() -> None:
                with contextlib.suppress(OSError):
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                    with os.fdopen(fd, "wb") as sink:
                        sink.write(data[:4096])

            writer = threading.Thread(target=feed, daemon=True)
    elif kind.startswith("dev-"):
        source = Path("/dev/" + kind[4:])
    elif kind in ("dir", "socket"):
        source = _make_special(kind, case / f"special-{kind}")
    elif kind == "empty":
        (case / "empty").write_bytes(b"")
        source = case / "empty"
    elif kind == "zero-file-object":
        handle = open("/dev/zero", "rb")  # noqa: SIM115
        opened.append(handle)
        source = handle
        call = "load"
    else:
        r, w = os.pipe()
        data = good.read_bytes()

        def feed_pipe() -> None:
            with os.fdopen(w, "wb") as sink, contextlib.suppress(BrokenPipeError):
                sink.write(data)

        writer = threading.Thread(target=feed_pipe, daemon=True)
        handle = os.fdopen(r, "rb")
        opened.append(handle)
        source = handle
        call = "load"
    if writer is not None:
        writer.start()
    before = _snapshot([prototxt, caffemodel])
    try:
        if call == "load":
            args = (source, caffemodel) if role == "prototxt" else (prototxt, source)
            result = _call("load", lambda: bnfuse.load(*args))  # type: ignore[arg-type]
        else:
            paths = [str(source), str(caffemodel)] if role == "prototxt" else [
                str(prototxt), str(source)]
            args_cli = (["fold", *paths, "-o", str(case / "o.prototxt"), "-w",
                         str(case / "o.caffemodel"), "-q"] if call == "cli fold"
                        else ["inspect", *paths, "-q"])
            code, text = _cli(*args_cli)
            if code not in (0, 1):
                raise FindingError(f"{what}: exit {code}: {text[-300:]!r}")
            if code == 1:
                _one_line(text, what)
            result = f"exit {code}"
    finally:
        for handle in opened:
            with contextlib.suppress(OSError):
                handle.close()  # type: ignore[attr-defined]
    if kind not in ("pipe-file-object", "empty") and result in ("ok", "exit 0"):
        raise FindingError(f"{what}: a non-regular input was accepted")
    if _snapshot([prototxt, caffemodel]) != before:
        raise FindingError(f"{what}: an input was changed")
    if _temps(case):
        raise FindingError(f"{what}: temp files left")
    return item, what, result


# --------------------------------------------------------------------------- subprocess scenarios


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")


def _fold_args(prototxt: Path, caffemodel: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "bnfuse", "fold", str(prototxt), str(caffemodel), "-o",
            str(out / "m.prototxt"), "-w", str(out / "m.caffemodel"), "-q"]


@dataclass
class _Pair:
    """The old content of the destination pair (None: absent) and a reference new pair."""

    old: dict[str, bytes | None]
    new: dict[str, bytes]


def _blank(name: str, data: bytes) -> bytes:
    if name.endswith(".prototxt"):
        return re.sub(rb"(# bnfuse pair )[0-9a-f]{32}", rb"\g<1>" + b"0" * 32, data)
    return data[:-32] + b"0" * 32 if re.fullmatch(rb"[0-9a-f]{32}", data[-32:]) else data


def _reference(prototxt: Path, caffemodel: Path, work: Path) -> dict[str, bytes]:
    import bnfuse

    ref = work / "reference"
    ref.mkdir()
    bnfuse.fold(prototxt, caffemodel).save(ref / "m.prototxt", ref / "m.caffemodel")
    return {name: _blank(name, (ref / name).read_bytes()) for name in ("m.prototxt",
                                                                      "m.caffemodel")}


def _prepare_out(rng: random.Random, out: Path, prototxt: Path,
                 caffemodel: Path) -> dict[str, bytes | None]:
    """The destination folder before the run: empty, two junk files, or a previous
    fold of the same model (a marked pair, so a cut pair must be detected)."""
    import bnfuse

    out.mkdir()
    choice = rng.random()
    if choice < 0.3:
        return {"m.prototxt": None, "m.caffemodel": None}
    if choice < 0.6:
        (out / "m.prototxt").write_bytes(b"old prototxt\n")
        (out / "m.caffemodel").write_bytes(b"old caffemodel")
    else:
        bnfuse.fold(prototxt, caffemodel).save(out / "m.prototxt", out / "m.caffemodel")
    return {name: (out / name).read_bytes() for name in ("m.prototxt", "m.caffemodel")}


def _check_pair(out: Path, pair: _Pair, *, killed: bool, what: str) -> str:
    """'old', 'new' or (after SIGKILL only) 'cut'; a finding for anything else."""
    import bnfuse
    from bnfuse.errors import ModelMismatchError

    names = {p.name for p in out.iterdir() if not (killed and TEMP.match(p.name))}
    if not killed and _temps(out):
        raise FindingError(f"{what}: temp files left: {_temps(out)}")
    expected = {n for n, c in pair.old.items() if c is not None}
    states = {}
    for name in ("m.prototxt", "m.caffemodel"):
        path = out / name
        data = path.read_bytes() if path.is_file() else None
        if data == pair.old[name]:
            states[name] = "old"
        elif data is not None and _blank(name, data) == pair.new[name]:
            states[name] = "new"
        else:
            raise FindingError(f"{what}: {name} is neither the old file nor the complete new one")
    if names - {"m.prototxt", "m.caffemodel"} - expected:
        raise FindingError(f"{what}: unexpected files {sorted(names)}")
    if len(set(states.values())) == 1:
        if states["m.prototxt"] == "new":
            bnfuse.load(out / "m.prototxt", out / "m.caffemodel")
        return states["m.prototxt"]
    if not killed:
        raise FindingError(f"{what}: a mixed pair {states} without SIGKILL")
    # SIGKILL between the two renames: the one documented window.  Over a marked
    # pair the next load must say so.
    if PAIR_LINE.search(pair.old["m.prototxt"] or b""):
        try:
            bnfuse.load(out / "m.prototxt", out / "m.caffemodel")
        except ModelMismatchError:
            return "cut, detected"
        raise FindingError(f"{what}: a pair cut between its renames loaded silently")
    return "cut"


def _medium_case(rng: random.Random, work: Path) -> tuple[Seed, Path, Path]:
    """A model of random size written as ``work/case/m.prototxt`` and ``m.caffemodel``."""
    seed = _medium(rng)
    case = work / "case"
    case.mkdir()
    prototxt, caffemodel = case / "m.prototxt", case / "m.caffemodel"
    prototxt.write_bytes(seed.prototxt)
    caffemodel.write_bytes(seed.caffemodel or b"")
    return seed, prototxt, caffemodel


def _scenario_signal(rng: random.Random, work: Path) -> tuple[FuzzInput, str, str]:
    seed, prototxt, caffemodel = _medium_case(rng, work)
    pair = _Pair({}, _reference(prototxt, caffemodel, work))
    out = work / "out"
    pair.old = _prepare_out(rng, out, prototxt, caffemodel)
    signum = rng.choice([signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGTERM,
                         signal.SIGKILL])
    at_temp = rng.random() < 0.6
    delay = rng.uniform(0, 0.03) if at_temp else rng.uniform(0, 1.2)
    what = (f"signal {signum.name} {'after the first temp file +' if at_temp else 'after'} "
            f"{delay * 1000:.0f} ms, {seed.name}")
    item = FuzzInput(-1, seed.name, what, b"", None)
    before = _snapshot([prototxt, caffemodel])
    child = subprocess.Popen(_fold_args(prototxt, caffemodel, out), env=_env(),
                             stderr=subprocess.PIPE, text=True)
    if at_temp:
        limit = time.monotonic() + 30
        while child.poll() is None and time.monotonic() < limit and not _temps(out):
            time.sleep(0.0003)
    time.sleep(delay)
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signum)
    try:
        _, stderr = child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        child.kill()
        raise FindingError(f"{what}: did not exit within 60 s") from None
    code = child.returncode
    killed = signum == signal.SIGKILL
    if code == 0:
        if stderr:
            raise FindingError(f"{what}: exit 0 with stderr {stderr[-300:]!r}")
    elif killed and code == -signal.SIGKILL:
        pass
    elif code == -signum and (not stderr or stderr.rstrip().endswith("KeyboardInterrupt")):
        # Before bnfuse's handlers exist (Python importing numpy and bnfuse: the
        # default action, for SIGINT Python's KeyboardInterrupt traceback) or after they
        # are gone (shutdown, all written).  Either way nothing may have been harmed.
        state = _check_pair(out, pair, killed=False, what=what)
        if stderr and state != "old":
            raise FindingError(f"{what}: a traceback after writing: {stderr[-300:]!r}")
        if _snapshot([prototxt, caffemodel]) != before:
            raise FindingError(f"{what}: an input was changed")
        return item, what, f"exit {code} outside bnfuse's work, {state}"
    elif code == 128 + signum:
        if stderr != f"error: interrupted by {signum.name}\n":
            raise FindingError(f"{what}: exit {code} with stderr {stderr[-300:]!r}")
    else:
        raise FindingError(f"{what}: exit {code}, stderr {stderr[-300:]!r}")
    state = _check_pair(out, pair, killed=killed and code != 0, what=what)
    if _snapshot([prototxt, caffemodel]) != before:
        raise FindingError(f"{what}: an input was changed")
    return item, what, f"exit {code}, {state}"


def _scenario_change(rng: random.Random, work: Path) -> tuple[FuzzInput, str, str]:
    seed, prototxt, caffemodel = _medium_case(rng, work)
    out = work / "out"
    old = _prepare_out(rng, out, prototxt, caffemodel)
    change = rng.choice(["truncate", "truncate-zero", "rewrite", "replace", "append"])
    hold_open = rng.random() < 0.3  # a writer holding the file prevents bnfuse's lease
    # Without the lease a truncation during the few milliseconds of indexing can still
    # be a SIGBUS (documented): held-open runs change the file once writing began.
    at_temp = hold_open or rng.random() < 0.5
    delay = rng.uniform(0, 0.02) if at_temp else rng.uniform(0, 0.8)
    what = (f"{change} the caffemodel {'after the first temp file +' if at_temp else 'after'} "
            f"{delay * 1000:.0f} ms{' (held open)' if hold_open else ''}, {seed.name}")
    item = FuzzInput(-1, seed.name, what, b"", None)
    size = caffemodel.stat().st_size
    keeper = open(caffemodel, "r+b") if hold_open else None  # noqa: SIM115

    def do_change() -> None:
        if change == "truncate":
            os.truncate(caffemodel, rng.randrange(1, size))
        elif change == "truncate-zero":
            os.truncate(caffemodel, 0)
        elif change == "rewrite":
            with open(caffemodel, "r+b") as f:
                f.seek(rng.randrange(size))
                f.write(os.urandom(rng.randint(1, 4096)))
        elif change == "append":
            with open(caffemodel, "ab") as f:
                f.write(b"\x00" * 100)
        else:
            replacement = caffemodel.with_name("new.caffemodel")
            replacement.write_bytes(b"\n\x03new")
            os.replace(replacement, caffemodel)

    try:
        child = subprocess.Popen(_fold_args(prototxt, caffemodel, out), env=_env(),
                                 stderr=subprocess.PIPE, text=True)
        if at_temp:
            limit = time.monotonic() + 30
            while child.poll() is None and time.monotonic() < limit and not _temps(out):
                time.sleep(0.0003)
        time.sleep(delay)
        cutter = threading.Thread(target=do_change, daemon=True)
        cutter.start()
        try:
            _, stderr = child.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            child.kill()
            raise FindingError(f"{what}: did not exit within 90 s") from None
        cutter.join(timeout=60)
    finally:
        if keeper is not None:
            keeper.close()
    code = child.returncode
    if code not in (0, 1):
        raise FindingError(f"{what}: exit {code} (a signal?), stderr {stderr[-300:]!r}")
    if code == 1:
        _one_line(stderr, what)
    if _temps(out):
        raise FindingError(f"{what}: temp files left: {_temps(out)}")
    names = sorted(p.name for p in out.iterdir())
    if names != ["m.caffemodel", "m.prototxt"] and names != sorted(
            n for n, c in old.items() if c is not None):
        raise FindingError(f"{what}: outputs {names}")
    text, weights = ((out / n).read_bytes() if (out / n).exists() else None
                     for n in ("m.prototxt", "m.caffemodel"))
    if {"m.prototxt": text, "m.caffemodel": weights} != old:
        import bnfuse

        try:
            bnfuse.load(out / "m.prototxt", out / "m.caffemodel")
        except Exception as exc:
            raise FindingError(f"{what}: a written pair does not load: {exc!s:.300}") from None
    return item, what, f"exit {code}"


def _scenario_concurrent(rng: random.Random, work: Path) -> tuple[FuzzInput, str, str]:
    import bnfuse
    from bnfuse.proto import NetParameter

    models = []
    for name, channels in (("a", rng.choice([8, 64, 160])), ("b", rng.choice([12, 96, 200]))):
        seed = medium_model(channels, seed=channels)
        folder = work / name
        folder.mkdir()
        (folder / "m.prototxt").write_bytes(seed.prototxt.replace(b'"medium"',
                                                                  f'"{name}"'.encode()))
        (folder / "m.caffemodel").write_bytes(seed.caffemodel or b"")
        models.append((name, channels, folder))
    out = work / "out"
    out.mkdir()
    stagger = rng.uniform(0, 0.3)
    what = f"two writers {models[0][1]}/{models[1][1]} channels, {stagger * 1000:.0f} ms apart"
    item = FuzzInput(-1, "medium", what, b"", None)
    children = []
    for i, (_, _, folder) in enumerate(models):
        if i:
            time.sleep(stagger)
        children.append(subprocess.Popen(
            _fold_args(folder / "m.prototxt", folder / "m.caffemodel", out), env=_env(),
            stderr=subprocess.PIPE, text=True))
    for child in children:
        _, stderr = child.communicate(timeout=120)
        if child.returncode != 0:
            raise FindingError(f"{what}: a writer exited {child.returncode}: {stderr[-300:]!r}")
    if _temps(out):
        raise FindingError(f"{what}: temp files left")
    text = (out / "m.prototxt").read_bytes()
    weights = NetParameter.FromString((out / "m.caffemodel").read_bytes())
    by_text = "a" if b'name: "a"' in text else "b"
    width = len(weights.layer[0].blobs[1].data)
    by_weights = {models[0][1]: "a", models[1][1]: "b"}.get(width)
    if by_text != by_weights:
        raise FindingError(f"{what}: a mixed pair (prototxt {by_text}, weights {by_weights})")
    bnfuse.load(out / "m.prototxt", out / "m.caffemodel")
    return item, what, f"pair of {by_text}"


# --------------------------------------------------------------------------- scenario: API misuse


def _hostile_values(work: Path) -> list[tuple[str, object]]:
    """Values of every wrong kind a caller could pass in place of a right one."""
    closed = open(work / "closed.bin", "wb")  # noqa: SIM115 - closed on purpose
    closed.close()
    folder = work / "a-folder"
    folder.mkdir(exist_ok=True)
    return [
        ("None", None), ("0", 0), ("-1", -1), ("2**70", 2**70), ("1.5", 1.5),
        ("nan", float("nan")), ("inf", float("inf")), ("True", True), ("''", ""),
        ("NUL path", "x\x00y"), ("junk bytes", b"\xff\x00junk"), ("bytearray", bytearray(3)),
        ("[]", []), ("{}", {}), ("object()", object()), ("array", np.arange(3.0)),
        ("float32", np.float32(1)), ("closed file", closed), ("folder", str(folder)),
        ("missing path", str(work / "missing.prototxt")), ("Ellipsis", ...),
        ("generator", (i for i in range(2))), ("tuple of 3", ("a", "b", "c")),
        ("nested dict", {"data": {"x": 1}}), ("big list", [0] * 70),
    ]


def _api_calls(work: Path, prototxt: Path, caffemodel: Path
               ) -> list[tuple[str, Callable[[dict[str, object]], object], dict[str, object]]]:
    """Public entry points with right arguments; the scenario spoils one of them."""
    import bnfuse
    from bnfuse.verification.randweights import random_weights

    def net() -> bnfuse.Net:
        return bnfuse.load(prototxt, caffemodel)

    out_p, out_c = str(work / "o.prototxt"), str(work / "o.caffemodel")
    layer_name = "conv1"
    return [
        ("load", lambda a: bnfuse.load(a["prototxt"], a["caffemodel"]),  # type: ignore[arg-type]
         {"prototxt": prototxt, "caffemodel": caffemodel}),
        ("save", lambda a: bnfuse.save(a["net"], a["prototxt"], a["caffemodel"]),  # type: ignore[arg-type]
         {"net": net(), "prototxt": out_p, "caffemodel": out_c}),
        ("fold", lambda a: bnfuse.fold(a["prototxt"], a["caffemodel"],  # type: ignore[arg-type]
                                       forward=a["forward"],  # type: ignore[arg-type]
                                       merge_unfoldable=a["merge_unfoldable"],  # type: ignore[arg-type]
                                       force_global_stats=a["force_global_stats"]),  # type: ignore[arg-type]
         {"prototxt": prototxt, "caffemodel": caffemodel, "forward": True,
          "merge_unfoldable": True, "force_global_stats": False}),
        ("fold_net", lambda a: bnfuse.fold_net(a["net"], forward=a["forward"]),  # type: ignore[arg-type]
         {"net": net(), "forward": True}),
        ("verify", lambda a: bnfuse.verify(a["a"], a["b"], **{  # type: ignore[arg-type]
            k: v for k, v in a.items() if k not in ("a", "b")}),
         {"a": (prototxt, caffemodel), "b": net(), "inputs": None, "backend": "numpy",
          "rtol": None, "atol": None, "seed": 0, "top_k": 5, "dtype": np.float32,
          "allow_python_layers": False, "progress": None, "fallback": "none",
          "max_memory": 1 << 28}),
        ("random_weights", lambda a: random_weights(a["prototxt_or_net"], **{  # type: ignore[arg-type]
            k: v for k, v in a.items() if k != "prototxt_or_net"}),
         {"prototxt_or_net": prototxt, "seed": 0, "factor": None, "input_shapes": None,
          "unmeasurable": "error", "max_memory": 1 << 28}),
        ("example_path", lambda a: bnfuse.example_path(a["kind"]), {"kind": "prototxt"}),  # type: ignore[arg-type]
        ("Net.layer", lambda a: a["net"].layer(a["name"]),  # type: ignore[attr-defined]
         {"net": net(), "name": layer_name}),
        ("Net.remove_layer", lambda a: a["net"].remove_layer(a["layer"]),  # type: ignore[attr-defined]
         {"net": (n := net()), "layer": n.layer(layer_name)}),
        ("Net.set_top", lambda a: a["net"].set_top(a["layer"], a["index"], a["blob"]),  # type: ignore[attr-defined]
         {"net": (m := net()), "layer": m.layer(layer_name), "index": 0, "blob": "renamed"}),
        ("FoldResult.save", lambda a: a["result"].save(a["prototxt"], a["caffemodel"]),  # type: ignore[attr-defined]
         {"result": bnfuse.fold(prototxt, caffemodel), "prototxt": out_p, "caffemodel": out_c}),
    ]


def _scenario_api(rng: random.Random, work: Path) -> tuple[FuzzInput, str, str]:
    """One public call with one argument replaced by a value of a wrong kind.

    It may succeed (the value happens to be acceptable), or end in a one-line
    ``BnfuseError``, or in a ``TypeError`` from bnfuse's own checks (its message
    starts with the function's name); anything else is a finding.
    """
    from bnfuse.errors import BnfuseError

    prototxt, caffemodel = work / "model.prototxt", work / "model.caffemodel"
    seed = medium_model(4)
    prototxt.write_bytes(seed.prototxt)
    caffemodel.write_bytes(seed.caffemodel or b"")
    name, call, args = rng.choice(_api_calls(work, prototxt, caffemodel))
    # A method's receiver is the caller's own object: only its arguments are spoiled.
    receiver = {"Net": "net", "FoldResult": "result"}.get(name.split(".")[0])
    arg = rng.choice(sorted(k for k in args if k != receiver))
    label, value = rng.choice(_hostile_values(work))
    args = {**args, arg: value}
    what = f"api {name}({arg}={label})"
    before = _snapshot([prototxt, caffemodel])
    try:
        call(args)
        result = "ok"
    except TypeError as exc:
        func = name.split(".")[-1]
        if not str(exc).startswith((f"{name}:", f"{func}:", f"{func}(")) or "\n" in str(exc):
            raise FindingError(f"{what}: a TypeError not from bnfuse's checks: {exc!s:.300}"
                               ) from None
        result = "TypeError"
    except BnfuseError as exc:
        if "\n" in str(exc):
            raise FindingError(f"{what}: {type(exc).__name__} over several lines") from None
        result = type(exc).__name__
    if _snapshot([prototxt, caffemodel]) != before:
        raise FindingError(f"{what}: an input file changed")
    if _temps(work):
        raise FindingError(f"{what}: temp files left")
    return FuzzInput(0, seed.name, what, b"", None), what, result


# --------------------------------------------------------------------------- the oracle


def run_scenario(seeds: list[Seed], run_seed: int, index: int, workdir: Path, *,
                 time_limit: float = 30.0) -> tuple[FuzzInput, Outcome]:
    """Build and run hostile scenario ``index`` of run ``run_seed``; judge it."""
    rng = random.Random(f"hostile:{run_seed}:{index}")
    kind = rng.choices(KINDS, WEIGHTS)[0]
    work = workdir / f"hostile-{index}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    start = time.perf_counter()
    item = FuzzInput(index, "-", kind, b"", None)
    try:
        with deadline(time_limit + (90 if kind in ("signal", "change", "concurrent") else 0),
                        FindingError):
            if kind == "output":
                item, what, result = _scenario_output(rng, seeds, run_seed, index, work)
            elif kind == "input":
                item, what, result = _scenario_input(rng, seeds, work)
            elif kind == "signal":
                item, what, result = _scenario_signal(rng, work)
            elif kind == "change":
                item, what, result = _scenario_change(rng, work)
            elif kind == "api":
                item, what, result = _scenario_api(rng, work)
            else:
                item, what, result = _scenario_concurrent(rng, work)
        item = FuzzInput(index, item.seed_name, f"hostile {what}", item.prototxt,
                         item.caffemodel)
        outcome = Outcome("error" if "Error" in result or result.startswith("exit 1")
                          else "ok", f"hostile {kind}: {result}", time.perf_counter() - start)
    except FindingError as exc:
        outcome = Outcome("crash", f"hostile {kind}: {exc}", time.perf_counter() - start)
    except Exception as exc:  # anything escaping is a finding too
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        outcome = Outcome("crash", f"hostile {kind}: {type(exc).__name__}: {exc}"[:400] + "\n"
                          + "".join(tb[-6:]), time.perf_counter() - start)
    finally:
        _remove(work)
    if item.index != index:
        item = FuzzInput(index, item.seed_name, item.description, item.prototxt,
                         item.caffemodel)
    return item, outcome


def _remove(work: Path) -> None:
    """Remove a scenario's folder, special files included (never following a symlink)."""
    shutil.rmtree(work, ignore_errors=True)


__all__ = ["KINDS", "medium_model", "run_scenario"]
