"""Two bnfuse processes writing the same output pair at once leave one writer's pair.

Each process writes its own temp files; the renames of a commit happen under an
exclusive lock on the destination folder, so the two commits take turns.  The
first test makes the race certain: writer A is held between its two renames
(a patched ``os.replace``) while writer B saves the same pair; without the lock B
lands both its files inside A's commit and A's second rename then mixes the
pair.  The second test lets two processes save in a loop and checks the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from modelkit import bn_blobs, conv_blobs, scale_blobs, write_model

import bnfuse
from bnfuse.proto import NetParameter

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")

TEXT = """name: "{name}"
layer {{ name: "data" type: "Input" top: "data"
        input_param {{ shape {{ dim: 1 dim: 2 dim: 5 dim: 5 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param {{ num_output: {width} kernel_size: 3 }} }}
layer {{ name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }}
layer {{ name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param {{ bias_term: true }} }}
"""


def _model(folder: Path, name: str, width: int) -> tuple[Path, Path]:
    """A model whose prototxt says ``name`` and whose caffemodel has ``width`` filters."""
    folder.mkdir()
    rng = np.random.default_rng(width)
    return write_model(folder, TEXT.format(name=name, width=width),
                       {"conv": conv_blobs(rng, width, 2), "bn": bn_blobs(rng, width),
                        "sc": scale_blobs(rng, width)}, name=name)


def _writer_of(out: Path) -> str:
    """Which model a pair was written from; fails when the two files disagree."""
    assert sorted(p.name for p in out.iterdir()) == ["m.caffemodel", "m.prototxt"]
    text = (out / "m.prototxt").read_text()
    weights = NetParameter.FromString((out / "m.caffemodel").read_bytes())
    by_text = "A" if 'name: "A"' in text else "B"
    width = {layer.name: len(layer.blobs[1].data) for layer in weights.layer}["conv"]
    by_weights = {3: "A", 5: "B"}[width]
    assert by_text == by_weights, f"a mixed pair: prototxt of {by_text}, weights of {by_weights}"
    bnfuse.load(out / "m.prototxt", out / "m.caffemodel")
    return by_text


_HELD_WRITER = """
    import os, sys, time
    import bnfuse
    src_p, src_c, out_p, out_c, flag = sys.argv[1:6]
    result = bnfuse.fold(src_p, src_c)
    real = os.replace
    held = []
    def replace_and_hold(a, b):
        real(a, b)
        if not held and os.path.dirname(b) == os.path.dirname(out_p):
            held.append(b)
            open(flag, "w").close()   # writer B may go now
            time.sleep(1.5)           # A is between its two renames
    os.replace = replace_and_hold
    result.save(out_p, out_c)
"""

_WAITING_WRITER = """
    import os, sys, time
    import bnfuse
    src_p, src_c, out_p, out_c, flag = sys.argv[1:6]
    result = bnfuse.fold(src_p, src_c)
    while not os.path.exists(flag):
        time.sleep(0.001)
    result.save(out_p, out_c)
"""


def test_a_writer_cannot_land_inside_another_writers_commit(tmp_path: Path) -> None:
    a, b = _model(tmp_path / "a", "A", 3), _model(tmp_path / "b", "B", 5)
    out = tmp_path / "out"
    out.mkdir()
    flag = tmp_path / "a-is-between-its-renames"
    dests = [str(out / "m.prototxt"), str(out / "m.caffemodel"), str(flag)]
    held = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_HELD_WRITER), str(a[0]),
                             str(a[1]), *dests], env=ENV, stderr=subprocess.PIPE, text=True)
    waiting = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_WAITING_WRITER),
                                str(b[0]), str(b[1]), *dests], env=ENV, stderr=subprocess.PIPE,
                               text=True)
    for child in (held, waiting):
        _, stderr = child.communicate(timeout=120)
        assert child.returncode == 0, stderr
    # B had to wait for A's commit: B's pair, complete, is the last one written.
    assert _writer_of(out) == "B"


_LOOP = """
    import sys
    import bnfuse
    src_p, src_c, out_p, out_c, count = sys.argv[1:6]
    result = bnfuse.fold(src_p, src_c)
    for _ in range(int(count)):
        result.save(out_p, out_c)
"""


@pytest.mark.slow
def test_two_processes_saving_in_a_loop_leave_a_consistent_pair(tmp_path: Path) -> None:
    a, b = _model(tmp_path / "a", "A", 3), _model(tmp_path / "b", "B", 5)
    winners = set()
    for round_ in range(6):
        out = tmp_path / f"out{round_}"
        out.mkdir()
        dests = [str(out / "m.prototxt"), str(out / "m.caffemodel")]
        children = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(_LOOP), str(src[0]),
                                      str(src[1]), *dests, "40"], env=ENV,
                                     stderr=subprocess.PIPE, text=True) for src in (a, b)]
        for child in children:
            _, stderr = child.communicate(timeout=300)
            assert child.returncode == 0, stderr
        winners.add(_writer_of(out))
        time.sleep(0.01)
    assert winners <= {"A", "B"}
