"""Outputs survive kill -9, a full disk and a model too large for protobuf.

bnfuse writes every output to a temporary file beside the destination,
flushes and fsyncs it, and only then renames it over the destination
(``bnfuse/io/atomic.py``).  These tests check the promise from outside:

- a child process saving a few-MB model in a loop is SIGKILLed at random
  moments many times; the destination always holds the previous complete file
  (byte-identical to a known good one: a fold's pair id is the hash of its text,
  so every save writes the same bytes) or nothing, a pair cut between its two renames is refused by
  ``bnfuse.load``, and the only leftovers are temp files named
  ``.<destination name>.<12 hex digits>.tmp``;
- a write that hits the file-size limit (RLIMIT_FSIZE with SIGXFSZ ignored, so
  ``write`` fails with EFBIG as on a full disk) ends in a clean OutputError and
  leaves neither a partial destination nor a temp file;
- a caffemodel over 2 GiB is refused before anything is written.

bnfuse does not delete stale temp files on the next write: a file of that
pattern may belong to another bnfuse process writing the same folder at that
very moment, and deleting it would break that write.  They are documented in
``docs/bad-inputs.md`` as safe to delete when no bnfuse is running.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import bnfuse
from bnfuse.proto import NetParameter

ROOT = Path(__file__).resolve().parent.parent
#: The temp-file naming of bnfuse.io.atomic: ``.<name>.<12 hex>.tmp`` beside the destination.
TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}\.tmp$")

PROTOTXT = b"""name: "big"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 256 dim: 4 dim: 4 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 512 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 256 kernel_size: 1 } }
"""


def _write_model(folder: Path) -> tuple[Path, Path]:
    """A ~5 MB model (conv 512x256x3x3 + BatchNorm + Scale + conv) built with bnfuse's schema."""
    rng = np.random.default_rng(0)
    net = NetParameter(name="big")

    def add(name: str, kind: str, *arrays: np.ndarray) -> None:
        layer = net.layer.add(name=name, type=kind)
        for array in arrays:
            blob = layer.blobs.add()
            blob.shape.dim.extend(array.shape)
            blob.data.extend(array.astype(np.float32).ravel().tolist())

    add("conv1", "Convolution", rng.normal(size=(512, 256, 3, 3)), rng.normal(size=512))
    add("bn1", "BatchNorm", rng.normal(size=512), rng.uniform(0.5, 2, 512), np.array([0.9]))
    add("sc1", "Scale", rng.normal(size=512), rng.normal(size=512))
    add("conv2", "Convolution", rng.normal(size=(256, 512, 1, 1)), rng.normal(size=256))
    prototxt, caffemodel = folder / "in.prototxt", folder / "in.caffemodel"
    prototxt.write_bytes(PROTOTXT)
    caffemodel.write_bytes(net.SerializeToString())
    return prototxt, caffemodel


_SAVE_LOOP = """
    import sys, bnfuse
    src_p, src_c, out_p, out_c = sys.argv[1:5]
    while True:
        bnfuse.fold(src_p, src_c).save(out_p, out_c)
        print("saved", flush=True)
"""


@pytest.mark.slow
def test_sigkill_during_save_never_leaves_a_partial_file(tmp_path: Path) -> None:
    """40 SIGKILLs at random moments: the outputs are the good files, or absent."""
    src_p, src_c = _write_model(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    good_dir = tmp_path / "good"
    good_dir.mkdir()
    bnfuse.fold(src_p, src_c).save(good_dir / "m.prototxt", good_dir / "m.caffemodel")
    good = {name: (good_dir / name).read_bytes() for name in ("m.prototxt", "m.caffemodel")}
    assert len(good["m.caffemodel"]) > 4 << 20
    rng = random.Random(7)
    saves_seen = 0
    kills_mid_write = 0
    for kill in range(40):
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_SAVE_LOOP), str(src_p), str(src_c),
             str(out / "m.prototxt"), str(out / "m.caffemodel")],
            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, text=True)
        # Timed from the first complete save, not from the start: on a loaded machine
        # start-up alone can outlast any fixed delay, and every kill would land in it.
        assert child.stdout is not None
        assert child.stdout.readline() == "saved\n"
        if kill % 2:
            time.sleep(rng.uniform(0.0, 0.5))  # anywhere in the next saves
        else:  # just after the next save's first temp file appears: inside a write
            give_up = time.monotonic() + 10
            while (not any(TEMP_PATTERN.match(p.name) for p in out.iterdir())
                   and time.monotonic() < give_up):
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.02))
        before = {p.name for p in out.iterdir()}
        child.send_signal(signal.SIGKILL)
        stdout, _ = child.communicate()
        saves_seen += 1 + stdout.count("saved")
        kills_mid_write += any(TEMP_PATTERN.match(n) for n in before)
        for name, content in good.items():
            path = out / name
            if path.exists():
                assert path.read_bytes() == content, f"{name} is not the last complete file"

        if all((out / name).exists() for name in good):
            # A kill between the two renames leaves two saves' files: load says so.
            try:
                bnfuse.load(out / "m.prototxt", out / "m.caffemodel")
            except bnfuse.ModelMismatchError as exc:
                assert "was not written together with" in str(exc)
        for leftover in out.iterdir():
            if leftover.name in good:
                continue
            match = TEMP_PATTERN.match(leftover.name)
            assert match and match["name"] in good, f"unexpected file {leftover.name}"
    print(f"\n{saves_seen} complete saves, {len(list(out.iterdir())) - 2} temp files left "
          f"by 40 kills")
    assert saves_seen > 0, "the child never completed a save: kills all landed at start-up"
    assert kills_mid_write > 0, "no kill landed during a write: the test proved nothing"
    # The stale temp files are bnfuse's alone, and the next save still works beside them.
    bnfuse.fold(src_p, src_c).save(out / "m.prototxt", out / "m.caffemodel")
    assert (out / "m.caffemodel").read_bytes() == good["m.caffemodel"]


_DISK_FULL = """
    import os, resource, signal, sys
    import bnfuse
    from bnfuse.cli import main
    # Ignore SIGXFSZ so that a write past the limit fails with EFBIG, as a full disk fails
    # with ENOSPC, instead of killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = int(sys.argv[5])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    src_p, src_c, out_p, out_c = sys.argv[1:5]
    for label, action in (
        ("save", lambda: bnfuse.save(bnfuse.load(src_p, src_c), out_p, out_c)),
        ("fold", lambda: bnfuse.fold(src_p, src_c).save(out_p, out_c)),
    ):
        try:
            action()
            print(label, "no error")
        except bnfuse.OutputError as exc:
            print(label, "OutputError", exc)
    sys.exit(main(["fold", src_p, src_c, "-o", out_p, "-w", out_c, "-q"]))
"""


@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "over-existing"])
def test_disk_full_gives_output_error_and_no_partial_file(tmp_path: Path, existing: bool) -> None:
    """A write failing with EFBIG half-way: OutputError, no partial file, old file intact."""
    src_p, src_c = _write_model(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    out_p, out_c = out / "m.prototxt", out / "m.caffemodel"
    if existing:
        out_p.write_bytes(b"previous prototxt\n")
        out_c.write_bytes(b"previous caffemodel")
    limit = 1 << 20  # the prototxt fits, the caffemodel (about 5 MB) does not
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_DISK_FULL), str(src_p), str(src_c), str(out_p),
         str(out_c), str(limit)], env=env, capture_output=True, text=True, timeout=300, check=False)
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout + result.stderr
    for line in lines:
        assert " OutputError " in line, line
        assert f"{out_c}: cannot write: File too large" in line, line
        assert "write elsewhere" in line
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {out_c}: cannot write: File too large"), result.stderr
    assert "Traceback" not in result.stderr
    if existing:
        assert out_p.read_bytes() == b"previous prototxt\n"
        assert out_c.read_bytes() == b"previous caffemodel"
        assert sorted(p.name for p in out.iterdir()) == ["m.caffemodel", "m.prototxt"]
    else:
        assert list(out.iterdir()) == []


def test_caffemodel_over_2_gib_is_refused_before_writing(tmp_path: Path) -> None:
    """A net whose weights would make a 2.4 GB caffemodel: OutputError, nothing written.

    The weights are a broadcast view (a few bytes of memory), so nothing near
    2 GiB is ever allocated or written.
    """
    src_p, src_c = _write_model(tmp_path)
    net = bnfuse.load(src_p, src_c)
    conv = net.layer("conv2")
    huge = np.broadcast_to(np.float32(0.5), (600_000_000, 1, 1, 1))
    net.set_blobs(conv, [huge, conv.blobs[1]])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(bnfuse.OutputError) as info:
        bnfuse.save(net, out / "m.prototxt", out / "m.caffemodel")
    message = str(info.value)
    assert message.startswith(f"{out / 'm.caffemodel'}: the caffemodel would be ")
    assert "over protobuf's 2 GiB limit" in message
    assert "no protobuf reader (Caffe, pycaffe, OpenCV) can load a message that large" in message
    assert list(out.iterdir()) == []
