"""The benchmark's smoke run works end to end and checks what it reports.

``benchmarks/run.py --smoke`` builds two small models, folds them with the CLI,
runs the baselines and the executor comparison once, and writes JSON. This test
runs it in a child process (as CI does) and checks the JSON: every row has
finite numbers and a verified result, and the goals were evaluated. It does
not check the speed goals themselves: a shared CI machine makes one run's
timing meaningless, so the smoke run only reports PASS/FAIL.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"

#: Every measurement the smoke run must report for each model (pycaffe and the
#: protobuf 3.20.3 baseline are optional: skipped where unavailable or not asked).
EXPECTED = {
    "bnfuse fold (CLI)",
    "bnfuse fold (in-process)",
    "cp",
    "cp + fsync",
    "floor (numpy)",
    "bnfuse.load (in-process)",
    "bnfuse load+save unchanged",
}


@pytest.mark.slow
def test_smoke_benchmark_reports_verified_finite_rows(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--workdir", str(tmp_path / "work"),
         "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())

    rows = result["rows"]
    models = {row["model"] for row in rows}
    assert models == {"mobilenet_v2", "resnet_small"}
    for model in models:
        names = {row["measurement"] for row in rows if row["model"] == model}
        assert names >= EXPECTED, f"{model}: missing {EXPECTED - names}"
        assert any(n.startswith("protobuf baseline (venv)") for n in names)
    for row in rows:
        where = f"{row['model']} / {row['measurement']}"
        assert row["verified"] is True, f"{where}: {row['how_verified']}"
        for key in ("size_mb", "median_s", "cpu_s", "peak_rss_mb", "rss_over_size"):
            value = row[key]
            assert isinstance(value, (int, float)) and math.isfinite(value), f"{where}: {key}"
            assert value > 0, f"{where}: {key} = {value}"
        assert row["layers"] > 0

    # The folded nets must have lost every BatchNorm/Scale, and the fold must beat
    # nothing in particular here: only that each goal was evaluated.
    fold = [r for r in rows if r["measurement"] == "bnfuse fold (CLI)"]
    assert all("0 BatchNorm/Scale left" in r["how_verified"] for r in fold)
    assert {g["result"] for g in result["goals"]} <= {"PASS", "FAIL", "n/a"}
    goal_names = " | ".join(g["goal"] for g in result["goals"])
    assert "import bnfuse does not import cv2/caffe" in goal_names
    assert "--help" in goal_names
    # The numpy floor rewrote each fold's output by itself: its bytes are bnfuse's.
    floors = [g for g in result["goals"] if g["goal"].endswith("the float64-once fold")]
    assert len(floors) == 2 and {g["result"] for g in floors} == {"PASS"}, floors
    fsyncs = [r["fsync_s"] for r in rows if r["measurement"] == "bnfuse fold (in-process)"]
    assert all(isinstance(f, float) and f > 0 for f in fsyncs), fsyncs
    for key in ("import_s", "help_over_bare_s", "import_over_bare_s"):
        assert math.isfinite(result["startup"][key]), key
    assert math.isfinite(result["startup"]["help_s"])
    executor = result["executor"]
    assert math.isfinite(executor["bnfuse_s"])
    if executor.get("opencv_s") is not None:
        assert executor["verified"] is True, executor
    skipped = {s["what"] for s in result["skipped"]}
    assert "protobuf 3.20.3 baseline" in skipped  # the smoke run does not build the venv
