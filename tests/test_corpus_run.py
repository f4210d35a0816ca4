"""The corpus runner sorts command endings and groups refusals as its summary reports them.

Only the pure parts run here (fixed strings and records, no child process), so the test is
quick; the runner itself is exercised by running it on a folder of nets.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("corpus_run", ROOT / "benchmarks/corpus_run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _load()


def test_classify_sorts_each_ending_into_its_outcome() -> None:
    fail = ("PASSED? no\nerror: verification failed: the folded model's outputs differ "
            "(first at blob 'prob'); nothing was written\n")
    assert run.classify(1, fail) == (
        "verify FAIL",
        "verification failed: the folded model's outputs differ (first at blob 'prob'); "
        "nothing was written")
    bug = ("Traceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 'a'\n"
           "internal error, please report: KeyError: 'a'\n")
    assert run.classify(3, bug) == ("traceback", "internal error, please report: KeyError: 'a'")
    assert run.classify(1, "error: layer 'p' (Python) cannot run\n") == (
        "one-line refusal", "layer 'p' (Python) cannot run")
    assert run.classify(None, "") == ("timeout", "")
    assert run.classify(-9, "")[0] == "killed"
    assert run.classify(1, "error: x\nMemoryError\n")[0] == "killed"
    assert run.classify(0, "wrote a\n") == ("ok", "wrote a")


def test_normalise_groups_messages_that_differ_only_in_names_and_numbers() -> None:
    a = run.normalise("layer 'conv1' (Convolution): input 'data' of shape (1, 3, 224, 224)")
    b = run.normalise("layer 'res2a' (Convolution): input 'x' of shape (2, 64, 56, 56)")
    assert a == b == "layer '_' (Convolution): input '_' of shape (N, N, N, N)"
    assert run.normalise("cannot read /tmp/a b.prototxt") == "cannot read PATH b.prototxt"
    assert run.normalise("/g/x.prototxt: the net has no weights") == "the net has no weights"


def test_blocker_names_the_layer_type_that_stops_the_run() -> None:
    shape = ("/g/a.prototxt: layer 'conv1' (Convolution): its input shape depends on layer "
             "'data' (ImageData), which the numpy executor does not support")
    assert run.blocker(shape) == "layer type ImageData"
    assert run.blocker("layer 'p' has type 'Python', which the numpy reference executor "
                       "does not implement") == "layer type Python"
    assert run.blocker("/g/a.prototxt: the net has no weights to write") == (
        "the net has no weights to write")


def test_summary_counts_outcomes_and_lists_every_bug() -> None:
    records = [
        {"file": "/g/r/a.prototxt", "trainval": False, "outcome": run.E2E, "refold": "identical"},
        {"file": "/g/r/b.prototxt", "trainval": False, "outcome": run.E2E,
         "refold": "changed bytes"},
        {"file": "/g/r/c.prototxt", "trainval": True, "deploy": "no --deploy",
         "outcome": run.REFUSAL, "refold": "not run", "stage": "random-weights",
         "line": "layer 'c' (Convolution): its input shape depends on layer 'i' (Interp)",
         "cls": "random-weights: layer '_' (Interp)"},
        {"file": "/g/r/d.prototxt", "trainval": False, "outcome": run.TIMEOUT,
         "refold": "not run", "line": ""},
    ]
    text = run.summary(records, {"duplicate bytes": 2}, 60.0)
    assert "| folded+verified end to end | 2 | 50.0 |" in text
    assert "| random-weights: layer '_' (Interp) | 1 | `r/c.prototxt` |" in text
    assert "- folded+verified end to end / refold changed bytes: `/g/r/b.prototxt`" in text
    assert "- timeout / refold not run: `/g/r/d.prototxt`" in text
    assert "a.prototxt`:" not in text
    assert "skipped: duplicate bytes 2" in text
    assert "| layer type Interp | 1 | random-weights 1 |" in text
