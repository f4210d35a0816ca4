"""Bounded fuzzing in the normal suite: 10,000 mutated models must fail cleanly or work.

The generator is the deterministic one of ``fuzz/engine.py`` (the long run,
``python -m fuzz.run --minutes N``, uses the same code with heavier
mutations).  Inputs are split across two child processes, one per core of the
reference machine; each child loads, saves, folds and saves every input from
a path (and runs ``bnfuse inspect`` on every 50th).  Allowed outcomes are
success or a :class:`bnfuse.BnfuseError` whose one-line message names the
file; anything else, or an input over the per-input time limit, fails the test
with the input's seed, index and mutation so that
``python -m fuzz.run --replay SEED:INDEX`` rebuilds it.

A small hypothesis layer checks the same property on unstructured bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SHARED_DIR
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bnfuse
from bnfuse.io.caffemodel import read_caffemodel

#: The project root: the children run ``python -m fuzz.run`` from there.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: Total inputs of the bounded run (override with BNFUSE_FUZZ_INPUTS for a quick local run).
INPUTS = int(os.environ.get("BNFUSE_FUZZ_INPUTS", "10000"))
#: The run seed: fixed, so a failure is reproducible and the suite deterministic.
RUN_SEED = 2024
#: Child processes (the reference machine has two cores).
JOBS = 2


def test_bounded_fuzz_run() -> None:
    """10,000 mutated caffemodels and prototxts: success or a clean BnfuseError, nothing else."""
    shared = ["--shared-dir", str(SHARED_DIR)] if (SHARED_DIR / "golden").is_dir() else []
    per_job = -(-INPUTS // JOBS)
    began = time.perf_counter()
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "fuzz.run", "--batch", f"{j}:{JOBS}:{per_job}",
             "--seed", str(RUN_SEED), "--no-fsync", "--time-limit", "20", *shared],
            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for j in range(JOBS)
    ]
    summaries = []
    for child in children:
        out, err = child.communicate(timeout=1800)
        assert child.returncode == 0, err[-3000:]
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    seconds = time.perf_counter() - began
    inputs = sum(s["inputs"] for s in summaries)
    outcomes: dict[str, int] = {}
    errors: dict[str, int] = {}
    for summary in summaries:
        for key, value in summary["outcomes"].items():
            outcomes[key] = outcomes.get(key, 0) + value
        for key, value in summary["errors"].items():
            errors[key] = errors.get(key, 0) + value
    findings = [f for s in summaries for f in s["findings"]]
    print(f"\nbounded fuzz run: {inputs} inputs in {seconds:.1f} s "
          f"({inputs / seconds:.0f}/s); outcomes {outcomes}; errors {errors}")
    assert not findings, "\n\n".join(
        f"input {f['index']} (replay: python -m fuzz.run --replay {RUN_SEED}:{f['index']} "
        f"--light {' '.join(shared)}) "
        f"seed {f['seed']}; {f['mutation']}\n{f['kind']}: {f['detail']}" for f in findings[:5])
    assert inputs >= INPUTS
    # The mix must really exercise both readers and reach the fold: a generator that
    # only produced syntax errors would pass the assertions above vacuously.
    assert outcomes.get("ok", 0) > INPUTS // 20
    for name in ("CaffemodelError", "PrototxtSyntaxError", "PrototxtSchemaError"):
        assert errors.get(name, 0) > 0, f"no input produced a {name}: {errors}"


# --- hypothesis layer: unstructured bytes --------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_any_bytes_as_caffemodel(data: bytes) -> None:
    """Arbitrary bytes are indexed or refused with a CaffemodelError, never anything else."""
    try:
        with read_caffemodel(data, name="fuzz.caffemodel") as model:
            for layer in model.layers:
                for blob in layer.blobs:
                    blob.array()
    except bnfuse.CaffemodelError as exc:
        assert str(exc).startswith("fuzz.caffemodel: ")


_PROTOTXT_CHARS = list('layer{}:"name type 0123456789.-e_#\n\\\'[]<>,;')


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.one_of(st.sampled_from(_PROTOTXT_CHARS), st.characters()),
               max_size=200))
def test_any_text_as_prototxt(text: str) -> None:
    """Arbitrary text is loaded or refused with a BnfuseError, never anything else."""
    try:
        net = bnfuse.load(text.encode("utf-8", "surrogatepass"))
        bnfuse.fold_net(net)
    except bnfuse.BnfuseError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize("claim", [2**31, 2**40, 2**63])
def test_huge_length_claim_is_refused_before_allocation(tmp_path: Path, claim: int) -> None:
    """A length prefix claiming 2**40 bytes fails at once, with a small traced peak."""
    import tracemalloc

    from bnfuse.io.wire import encode_tag, encode_varint

    path = tmp_path / "huge.caffemodel"
    path.write_bytes(encode_tag(100, 2) + encode_varint(claim) + b"\x0a\x01a")
    tracemalloc.start()
    try:
        with pytest.raises(bnfuse.CaffemodelError, match=f"claims {claim} bytes") as info:
            bnfuse.load(b'layer { name: "a" type: "ReLU" }', path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value)
    assert peak < 4 << 20, f"peak {peak} bytes for a {path.stat().st_size}-byte file"


@pytest.mark.parametrize("depth", [101, 100_000])
def test_deep_nesting_is_a_clean_syntax_error(tmp_path: Path, depth: int) -> None:
    """Nesting past 100 levels stops with a PrototxtSyntaxError naming the file, no recursion."""
    path = tmp_path / "deep.prototxt"
    path.write_bytes(b"layer { " + b"a { " * depth + b"} " * (depth + 1))
    with pytest.raises(bnfuse.PrototxtSyntaxError, match="nesting deeper than 100 levels") as info:
        bnfuse.load(path)
    assert str(info.value).startswith(f"{path}:1:")
