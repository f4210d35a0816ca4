"""Every input in ``tests/regressions/`` goes through the fuzz oracle with its expected outcome."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # the fuzz package lives at the project root
    sys.path.insert(0, str(_ROOT))

from fuzz.corpus_seeds import Seed  # noqa: E402
from fuzz.engine import FuzzInput, run_input  # noqa: E402

_CASES = sorted(p.stem for p in (_ROOT / "tests" / "regressions").glob("r[0-9]*.py"))


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"tests.regressions.{name}")


def test_there_are_regressions() -> None:
    """The folder is found (a wrong glob would make the parametrized test vanish silently)."""
    assert len(_CASES) >= 4


@pytest.mark.parametrize("name", _CASES)
def test_regression(name: str, tmp_path: Path) -> None:
    """The input is small, and load/save/fold/save/inspect end as the module expects."""
    case = _module(name)
    for attribute in ("DESCRIPTION", "FOUND_BY", "FIXED_IN", "EXPECT"):
        assert isinstance(getattr(case, attribute), str), attribute
    prototxt, caffemodel = case.build()
    assert len(prototxt) + len(caffemodel or b"") < 4096
    seed = Seed(name, prototxt, caffemodel)
    item = FuzzInput(0, seed.name, case.DESCRIPTION, seed.prototxt, seed.caffemodel)
    outcome = run_input(item, tmp_path, time_limit=30, trace_memory=True, cli=True)
    assert not outcome.is_finding, outcome.detail
    if case.EXPECT == "ok":
        assert outcome.kind == "ok", outcome.detail
    else:
        assert outcome.kind == "error" and case.EXPECT in outcome.detail.split(","), outcome
