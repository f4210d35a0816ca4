"""``import bnfuse`` and ``bnfuse --help`` load no numpy, protobuf or schema module.

Behaviour, not timing: each check runs a fresh interpreter and reads its
``sys.modules``. The public names still resolve, to the objects of the modules that
define them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bnfuse

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("numpy", "google.protobuf", "bnfuse.proto", "bnfuse.net", "bnfuse.folding")


def loaded_after(code: str) -> list[str]:
    """The modules of HEAVY that a fresh interpreter holds after running ``code``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=env, timeout=60, check=True)
    loaded: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return loaded


def test_import_bnfuse_loads_no_heavy_module() -> None:
    assert loaded_after("import bnfuse; bnfuse.example_path('caffemodel')") == []


def test_help_loads_no_heavy_module() -> None:
    code = ("import contextlib, io, bnfuse.cli\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    code = bnfuse.cli.main(['--help'])\n"
            "assert code == 0 and 'COMMAND' in out.getvalue(), out.getvalue()")
    assert loaded_after(code) == []


def test_first_use_of_a_public_name_imports_its_module() -> None:
    assert loaded_after("import bnfuse; bnfuse.load") == [
        "numpy", "google.protobuf", "bnfuse.proto", "bnfuse.net"]


def test_public_names_resolve_to_their_defining_modules() -> None:
    from bnfuse.folding.api import fold
    from bnfuse.net import Net
    from bnfuse.verification.compare import verify

    assert bnfuse.fold is fold and bnfuse.Net is Net and bnfuse.verify is verify
    assert set(bnfuse.__all__) <= set(dir(bnfuse))
    for name in bnfuse.__all__:
        assert getattr(bnfuse, name) is not None, name
    with pytest.raises(AttributeError, match="module 'bnfuse' has no attribute 'nope'"):
        bnfuse.nope  # noqa: B018
