"""The long fuzz run: mutate real models for N minutes and report every finding.

Usage (from the project root)::

    python -m fuzz.run --minutes 30 [--jobs 2] [--seed 1] [--out fuzz-findings]

Each job is a child process running the deterministic generator of
:mod:`fuzz.engine` on its own stride of input numbers (job ``j`` of ``n``
tries inputs ``j, j+n, j+2n, ...``) with tracemalloc on, a per-input time
limit (SIGALRM) and an address-space limit, so that a runaway allocation
becomes a ``MemoryError`` finding instead of taking the machine down.  The
parent watches the children: one that says nothing for ``--hang-seconds``
(a hang that SIGALRM cannot interrupt, e.g. inside C code) is killed, its
current input recorded as a hang, and restarted after that input.

Every ``--hostile-every``-th input (default: every 4th) is a hostile scenario
of :mod:`fuzz.hostile` instead: output paths that alias inputs or are no regular
files, special files as inputs, signals at random points of a ``bnfuse fold``
subprocess, a caffemodel changing under it, two concurrent writers.

Every finding is written to ``--out`` as ``<kind>-<run seed>-<index>.*`` (the
prototxt, the caffemodel and a JSON description with the traceback), and is
reproducible from the run seed and the index alone::

    python -m fuzz.run --replay 1:12345
    python -m fuzz.run --replay 1:12347 --hostile     # a hostile scenario
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Runnable as ``python fuzz/run.py`` too: the project root must be importable.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from fuzz.corpus_seeds import Seed, all_seeds, builtin_seeds, shared_seeds  # noqa: E402
from fuzz.engine import FuzzInput, generate, run_batch, run_input  # noqa: E402
from fuzz.hostile import run_scenario  # noqa: E402

#: Address-space ceiling of a worker: far above any legitimate use by these
#: small inputs, far below what would hurt the machine.
_WORKER_ADDRESS_SPACE = 6 << 30


def _seeds(include_large: bool) -> list[Seed]:
    return all_seeds(include_large=include_large)


def _signature(detail: str) -> str:
    """Deduplication key of a crash: exception line plus the innermost bnfuse frame."""
    lines = detail.splitlines()
    frames = [line.strip() for line in lines if line.strip().startswith('File "')]
    return (lines[0].split(":")[0] if lines else "") + " @ " + (frames[-1] if frames else "")


def _save_finding(out: Path, run_seed: int, item: FuzzInput, kind: str, detail: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{kind}-{run_seed}-{item.index}"
    stem.with_suffix(".prototxt").write_bytes(item.prototxt)
    if item.caffemodel is not None:
        stem.with_suffix(".caffemodel").write_bytes(item.caffemodel)
    stem.with_suffix(".json").write_text(json.dumps(
        {"kind": kind, "run_seed": run_seed, "index": item.index, "seed": item.seed_name,
         "mutation": item.description, "detail": detail}, indent=2) + "\n")


def _worker(args: argparse.Namespace) -> int:
    """Child process: try inputs, print one line per input to stdout for the parent."""
    resource.setrlimit(resource.RLIMIT_AS, (_WORKER_ADDRESS_SPACE, _WORKER_ADDRESS_SPACE))
    seeds = _seeds(args.large)
    deadline = time.monotonic() + args.minutes * 60
    index = args.start
    with tempfile.TemporaryDirectory(prefix="bnfuse-fuzz-") as folder:
        work = Path(folder)
        while time.monotonic() < deadline:
            print(f"S {index}", flush=True)
            hostile = _is_hostile(args, index)
            if hostile:
                item, outcome = run_scenario(seeds, args.seed, index, work,
                                             time_limit=args.time_limit)
            else:
                item = generate(seeds, args.seed, index)
                outcome = run_input(item, work, time_limit=args.time_limit,
                                    trace_memory=not args.no_memory
                                    and index % args.memory_every == 0,
                                    cli=index % 10 == 0)
            if outcome.is_finding:
                _save_finding(Path(args.out), args.seed, item, outcome.kind, outcome.detail)
            print("R " + json.dumps({"i": index, "kind": outcome.kind, "detail": outcome.detail,
                                     "seed": item.seed_name, "mutation": item.description,
                                     "peak": outcome.peak_bytes,
                                     "hostile": outcome.detail.split(":")[0] if hostile
                                     else None}), flush=True)
            index += args.stride
    return 0


def _is_hostile(args: argparse.Namespace, index: int) -> bool:
    """Whether input ``index`` is a hostile scenario (every ``--hostile-every``-th)."""
    every = int(args.hostile_every)
    return every > 0 and index % every == every - 1


def _spawn(args: argparse.Namespace, start: int, minutes: float) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "fuzz.run", "--worker", "--start", str(start),
               "--stride", str(args.jobs), "--seed", str(args.seed), "--minutes", str(minutes),
               "--time-limit", str(args.time_limit), "--out", args.out]
    command += ["--large"] if args.large else []
    command += ["--no-memory"] if args.no_memory else []
    command += ["--memory-every", str(args.memory_every)]
    command += ["--hostile-every", str(args.hostile_every)]
    return subprocess.Popen(command, cwd=_ROOT, stdout=subprocess.PIPE, text=True, bufsize=1)


def _parent(args: argparse.Namespace) -> int:
    started = time.monotonic()
    deadline = started + args.minutes * 60
    jobs = {j: _spawn(args, j, args.minutes) for j in range(args.jobs)}
    current: dict[int, int] = dict.fromkeys(jobs, -1)
    last_seen = dict.fromkeys(jobs, time.monotonic())
    tried = 0
    kinds: dict[str, int] = {}
    hostile: dict[str, dict[str, int]] = {}
    findings: dict[str, dict[str, object]] = {}
    next_report = started + args.report_seconds
    while jobs:
        streams = {proc.stdout.fileno(): j for j, proc in jobs.items() if proc.stdout}
        ready, _, _ = select.select(list(streams), [], [], 1.0)
        now = time.monotonic()
        for fd in ready:
            j = streams[fd]
            proc = jobs[j]
            line = proc.stdout.readline() if proc.stdout else ""
            if not line:
                proc.wait()
                del jobs[j]
                continue
            last_seen[j] = now
            if line.startswith("S "):
                current[j] = int(line.split()[1])
                continue
            record = json.loads(line[2:])
            tried += 1
            kinds[record["kind"]] = kinds.get(record["kind"], 0) + 1
            if record.get("hostile"):
                per = hostile.setdefault(record["hostile"], {})
                per[record["kind"]] = per.get(record["kind"], 0) + 1
            if record["kind"] in ("crash", "timeout", "memory"):
                key = record["kind"] + ": " + _signature(record["detail"])
                entry = findings.setdefault(key, {"count": 0, "first": record})
                entry["count"] = int(entry["count"]) + 1  # type: ignore[call-overload]
                if entry["count"] == 1:
                    print(f"FINDING #{len(findings)} at input {record['i']} ({record['seed']}; "
                          f"{record['mutation']}): {record['detail'][:600]}", flush=True)
        for j, proc in list(jobs.items()):
            if now - last_seen[j] > args.hang_seconds:
                # A hang SIGALRM could not break: record it, restart after that input.
                proc.kill()
                proc.wait()
                index = current[j]
                item = (FuzzInput(index, "-", "hostile scenario", b"", None)
                        if _is_hostile(args, index) else generate(_seeds(args.large), args.seed,
                                                                  index))
                _save_finding(Path(args.out), args.seed, item, "hang", "worker killed")
                key = f"hang: input {index}"
                findings[key] = {"count": 1, "first": {"i": index, "seed": item.seed_name,
                                                       "mutation": item.description}}
                print(f"FINDING hang at input {index}", flush=True)
                tried += 1
                remaining = (deadline - now) / 60
                del jobs[j]
                if remaining > 0.05:
                    jobs[j] = _spawn(args, index + args.jobs, remaining)
                    last_seen[j] = now
        if now >= next_report:
            elapsed = now - started
            print(f"[{elapsed / 60:5.1f} min] {tried} inputs, {tried / elapsed:.1f}/s, "
                  f"outcomes {kinds}, hostile {hostile}, unique findings {len(findings)}",
                  flush=True)
            next_report += args.report_seconds
    elapsed = time.monotonic() - started
    summary = {"minutes": round(elapsed / 60, 2), "inputs": tried,
               "inputs_per_second": round(tried / elapsed, 1), "outcomes": kinds,
               "hostile": hostile, "unique_findings": len(findings),
               "findings": {k: {"count": v["count"], "first": v["first"]}
                            for k, v in findings.items()}}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"summary-{args.seed}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in
                      ("minutes", "inputs", "inputs_per_second", "outcomes", "hostile",
                       "unique_findings")}),
          flush=True)
    return 1 if findings else 0


def _replay(args: argparse.Namespace) -> int:
    """Rebuild one input from ``seed:index`` and run it in this process, verbosely."""
    run_seed, index = (int(x) for x in args.replay.split(":"))
    if args.hostile:
        with tempfile.TemporaryDirectory() as folder:
            item, outcome = run_scenario(_seeds(args.large), run_seed, index, Path(folder),
                                         time_limit=args.time_limit)
        print(item.description)
        print(f"{outcome.kind} in {outcome.seconds:.3f} s")
        print(outcome.detail)
        return 1 if outcome.is_finding else 0
    if args.light:  # an input of the bounded test
        item = generate(_batch_seeds(args), run_seed, index, heavy=False)
    else:
        item = generate(_seeds(args.large), run_seed, index)
    print(f"seed {item.seed_name}; mutation {item.description}")
    with tempfile.TemporaryDirectory() as folder:
        outcome = run_input(item, Path(folder), time_limit=args.time_limit, trace_memory=True,
                            cli=True)
    print(f"{outcome.kind} in {outcome.seconds:.3f} s, peak {outcome.peak_bytes} bytes")
    print(outcome.detail)
    return 1 if outcome.is_finding else 0


def _batch_seeds(args: argparse.Namespace) -> list[Seed]:
    """The bounded run's seeds: built-in ones plus ../shared's small ones."""
    seeds = builtin_seeds()
    if args.shared_dir:
        seeds += shared_seeds(root=Path(args.shared_dir))
    return [s for s in seeds
            if len(s.prototxt) <= args.max_seed_bytes
            and len(s.caffemodel or b"") <= args.max_seed_bytes]


def _batch(args: argparse.Namespace) -> int:
    """One slice of the bounded test: run it, print a JSON summary on stdout."""
    if args.no_fsync:
        # Durability is not what the fuzz oracle checks, and fsync dominates small saves.
        os.fsync = lambda fd: None
    seeds = _batch_seeds(args)
    start, stride, count = (int(x) for x in args.batch.split(":"))
    with tempfile.TemporaryDirectory(prefix="bnfuse-fuzz-") as folder:
        summary = run_batch(seeds, args.seed, start, stride, count, heavy=False,
                            workdir=Path(folder), time_limit=args.time_limit)
    summary["seeds"] = len(seeds)
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run the parent, a worker, or a replay."""
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to run")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--seed", type=int, default=1, help="run seed (inputs are reproducible)")
    parser.add_argument("--out", default="fuzz-findings", help="folder for findings and summary")
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds per input")
    parser.add_argument("--hang-seconds", type=float, default=120.0,
                        help="kill a worker silent this long")
    parser.add_argument("--report-seconds", type=float, default=60.0)
    parser.add_argument("--large", action="store_true",
                        help="also mutate the multi-megabyte real caffemodels of ../shared")
    parser.add_argument("--no-memory", action="store_true", help="skip tracemalloc (faster)")
    parser.add_argument("--memory-every", type=int, default=4,
                        help="trace allocations (tracemalloc, ~3x slower) on every Nth input")
    parser.add_argument("--hostile-every", type=int, default=4,
                        help="make every Nth input a hostile scenario of fuzz/hostile.py "
                             "(output paths, special inputs, signals, changing inputs, "
                             "concurrent writers); 0: none")
    parser.add_argument("--replay", metavar="SEED:INDEX", help="run one input and explain it")
    parser.add_argument("--hostile", action="store_true",
                        help="with --replay: the input is a hostile scenario")
    parser.add_argument("--batch", metavar="START:STRIDE:COUNT",
                        help="run one slice of inputs (light mutations) and print JSON")
    parser.add_argument("--light", action="store_true",
                        help="with --replay: an input of the bounded test (its seeds, light "
                             "mutations; give --shared-dir as the test did)")
    parser.add_argument("--shared-dir", help="with --batch: the ../shared folder, if any")
    parser.add_argument("--max-seed-bytes", type=int, default=64 << 10,
                        help="with --batch: skip seeds with a larger file")
    parser.add_argument("--no-fsync", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stride", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.replay:
        return _replay(args)
    if args.batch:
        return _batch(args)
    if args.worker:
        return _worker(args)
    return _parent(args)


if __name__ == "__main__":
    sys.exit(main())
