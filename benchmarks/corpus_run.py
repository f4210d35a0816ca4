"""Run the bnfuse CLI over a folder of Caffe prototxts, as a user would, and sort the outcomes.

For each ``*.prototxt`` under the folder (by default only those with a BatchNorm-like layer:
``BatchNorm``, ``BN``, ``CuDNNBatchNorm``) it runs, each command in its own process with a
timeout and an address-space limit:

1. ``bnfuse inspect P``;
2. ``bnfuse random-weights P -w W`` (weights for the net, since only prototxts are gathered);
3. ``bnfuse fold P W -o F.prototxt -w F.caffemodel --verify --json R.json`` (with ``--deploy``
   for train/val nets when the checkout under test has that flag);

a train-only file, whose TEST-phase refusal says to use ``--phase TRAIN --deploy``, runs
the three steps again with ``--phase TRAIN``, and a step refused for its memory budget at
the file's batch size runs again, with the later steps, at ``--batch 1``;
4. ``bnfuse fold F.prototxt F.caffemodel -o G.prototxt -w G.caffemodel`` and a byte comparison
   of F and G: folding a folded net again must change nothing.

Each file gets one outcome: ``folded+verified end to end``, ``verified locally only``,
``one-line refusal``, ``traceback``, ``timeout``, ``killed`` or ``verify FAIL``; the second
fold is reported apart (``identical``, ``changed bytes``, or why it did not run). Refusals and
local-only reasons are grouped by their first line with names and numbers blanked out.

Run from a checkout, against any tree (its ``bnfuse`` is put on ``PYTHONPATH``)::

    python benchmarks/corpus_run.py NETS_DIR --tree . --out corpus.json --md corpus.md
    python benchmarks/corpus_run.py NETS_DIR --sample 100 --timeout 60 --mem-gb 4
    python benchmarks/corpus_run.py NETS_DIR --out corpus.json --md corpus.md --summarise

``--all`` also runs files without BatchNorm-like layers; ``--unique`` skips files whose bytes
equal an earlier file's. Files run in a fixed shuffled order, so a run stopped early (the JSON
is rewritten after every file; ``--summarise`` makes the table from it) or ``--sample N`` is a
fair sample. Run it with ``nice``: it runs one command at a time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

BN_RE = re.compile(rb'type:\s*"?(BatchNorm|BN|CuDNNBatchNorm)"?\s')
# Layer types that only a train/val net has: its inputs come from a data source.
DATA_RE = re.compile(
    rb'type:\s*"?(Data|ImageData|AnnotatedData|HDF5Data|WindowData|VideoData|MemoryData|'
    rb'DummyData|Python|SegData|ImageSegData|DenseImageData|MultiLabelData)"?\s'
    rb"|phase:\s*TRAIN"
)

# What bnfuse's refusal of a train-only file's TEST phase says to do.
TRAIN_ONLY_HINT = "(--phase TRAIN with --deploy)"
# ... and of a memory budget a file's own batch exceeds.
SMALLER_INPUTS_HINT = "declare smaller inputs (--batch"

E2E = "folded+verified end to end"
LOCAL = "verified locally only"
REFUSAL = "one-line refusal"
TRACEBACK = "traceback"
TIMEOUT = "timeout"
KILLED = "killed"
FAIL = "verify FAIL"
BUGS = (TRACEBACK, TIMEOUT, KILLED, FAIL)


def first_error_line(stderr: str) -> str:
    """The line a user reads first: the last ``error:``/``internal error`` line, else the last.

    >>> first_error_line("wrote x\\nerror: layer 'a' (Interp) is unsupported\\n  more\\n")
    "layer 'a' (Interp) is unsupported"
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(("error:", "internal error")):
            return line.removeprefix("error:").strip()
    return lines[-1] if lines else ""


def normalise(line: str) -> str:
    """Blank quoted names, paths and numbers so that messages group by what stops them.

    >>> normalise("layer 'conv1/bn' (BatchNorm): bottom 'data' of shape (1, 3, 224, 224)")
    "layer '_' (BatchNorm): bottom '_' of shape (N, N, N, N)"
    >>> normalise("the model's outputs differ (first at blob 'fc7')")
    "the model's outputs differ (first at blob '_')"
    """
    line = re.sub(r"(?<!\w)'[^']*'", "'_'", line)
    line = re.sub(r'"[^"]*"', '"_"', line)
    line = re.sub(r"(?<![\w.])/\S+", "PATH", line)
    line = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", line)
    return re.sub(r"^PATH:? ", "", line)[:160]


def blocker(line: str) -> str:
    """The layer type a message says stops the run, else its normalised form.

    >>> blocker("x.prototxt: layer 'c' (Convolution): its input shape depends on layer 'd' (Data)")
    'layer type Data'
    >>> blocker("layer 'proposal' has type 'Python', which the executor does not implement")
    'layer type Python'
    """
    found = re.search(r"depends on layer '[^']*' \((\w+)\)|has type '(\w+)'", line)
    if found:
        return f"layer type {found.group(1) or found.group(2)}"
    return re.sub(r"^PATH:? ", "", normalise(line))


def classify(returncode: int | None, stderr: str) -> tuple[str, str]:
    """Sort one command's end into (outcome, first line); ``returncode`` None means timed out.

    >>> classify(0, "")
    ('ok', '')
    >>> classify(1, "error: verification failed: the folded model's outputs differ")
    ('verify FAIL', "verification failed: the folded model's outputs differ")
    >>> classify(3, "Traceback (most recent call last):\\nKeyError: 'x'\\n")
    ('traceback', "KeyError: 'x'")
    >>> classify(1, "error: layer 'p' (Python) cannot run\\n")
    ('one-line refusal', "layer 'p' (Python) cannot run")
    >>> classify(None, ""), classify(-9, "")[0]
    (('timeout', ''), 'killed')
    """
    line = first_error_line(stderr)
    if returncode is None:
        return TIMEOUT, line
    if returncode == 0:
        return "ok", line
    if "Traceback (most recent call last)" in stderr or "internal error" in stderr:
        return TRACEBACK, line
    if returncode < 0 or "MemoryError" in stderr:
        return KILLED, line
    if line.startswith("verification failed"):
        return FAIL, line
    return REFUSAL, line


def _limit_memory(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_cli(tree: Path, args: list[str], timeout: float, mem: int) -> tuple[int | None, str, float]:
    """Run ``python -m bnfuse ARGS`` with ``tree`` first on the path; (rc or None, stderr, s)."""
    env = dict(os.environ, PYTHONPATH=str(tree), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "bnfuse", *args], env=env, timeout=timeout,
                              capture_output=True, text=True, errors="replace",
                              preexec_fn=lambda: _limit_memory(mem), check=False)
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode("utf-8", "replace") if isinstance(exc.stderr, bytes) else ""
        return None, err, time.monotonic() - start
    return done.returncode, done.stderr, time.monotonic() - start


def run_file(path: Path, tree: Path, timeout: float, mem: int, has_deploy: bool) -> dict[str, Any]:
    """Run the four steps on one prototxt and return its record."""
    data = path.read_bytes()
    rec: dict[str, Any] = {"file": str(path), "trainval": bool(DATA_RE.search(data)),
                           "steps": {}, "refold": "not run"}
    if rec["trainval"]:
        rec["deploy"] = "used" if has_deploy else "no --deploy"
    with tempfile.TemporaryDirectory(prefix="bnfuse-corpus-") as tmp:
        t = Path(tmp)

        batch: list[str] = []

        def step(name: str, args: list[str]) -> tuple[str, str]:
            rc, err, secs = run_cli(tree, [*args, *batch], timeout, mem)
            kind, line = classify(rc, err)
            if kind == REFUSAL and SMALLER_INPUTS_HINT in line and not batch and name != "inspect":
                # Over the memory budget at the file's own batch: a user takes the way out
                # the message names, and so do the later steps.
                batch[:] = ["--batch", "1"]
                rec["batch"] = 1
                rc, err, secs = run_cli(tree, [*args, *batch], timeout, mem)
                kind, line = classify(rc, err)
            rec["steps"][name] = {"rc": rc, "kind": kind, "line": line, "seconds": round(secs, 2)}
            if kind != "ok":
                rec.update(outcome=kind, stage=name, line=line, cls=f"{name}: {normalise(line)}")
            return kind, line

        inspect = ["inspect", str(path), "--json", str(t / "inspect.json")]
        phase: list[str] = []
        kind, line = step("inspect", inspect)
        if kind != "ok" and TRAIN_ONLY_HINT in line:
            # A train-only file: bnfuse names the way out, and a user takes it.
            phase = ["--phase", "TRAIN"]
            rec["phase"] = "TRAIN"
            for stale in ("outcome", "stage", "line", "cls"):
                rec.pop(stale, None)
            kind, _ = step("inspect", [*inspect, *phase])
        if kind != "ok":
            return rec
        weights = t / "w.caffemodel"
        if step("random-weights", ["random-weights", str(path), "-w", str(weights), *phase,
                                   "-q"])[0] != "ok":
            return rec
        fold = ["fold", str(path), str(weights), "-o", str(t / "f.prototxt"),
                "-w", str(t / "f.caffemodel"), "--verify", "--json", str(t / "r.json"), *phase]
        if (rec["trainval"] or phase) and has_deploy:
            fold.append("--deploy")
        kind, _ = step("fold", fold)
        if (t / "r.json").exists():
            payload = json.loads((t / "r.json").read_text())
            report = payload.get("report") or {}
            rec["left"] = {k: v for k, v in (report.get("layers_after") or {}).items()
                           if k in ("BatchNorm", "BN", "CuDNNBatchNorm", "Scale")}
            rec["actions"] = dict(Counter(a["kind"] for a in report.get("actions", [])))
            verdict = payload.get("verify") or {}
            rec["scope"] = verdict.get("scope")
            rec["first_divergence"] = verdict.get("first_divergence")
            if verdict.get("scope") == "local":
                reason = str(verdict.get("scope_reason", "")).splitlines()[0:1]
                rec["local_reason"] = reason[0] if reason else ""
        if kind != "ok":
            return rec
        if rec.get("scope") == "local":
            rec.update(outcome=LOCAL, line=rec["local_reason"],
                       cls=f"local: {normalise(rec['local_reason'])}")
        else:
            rec["outcome"] = E2E
        # Fold the folded net again: every byte must stay.
        again = ["fold", str(t / "f.prototxt"), str(t / "f.caffemodel"), "-o",
                 str(t / "g.prototxt"), "-w", str(t / "g.caffemodel"), "-q"]
        rc, err, _ = run_cli(tree, again, timeout, mem)
        kind2, line2 = classify(rc, err)
        if kind2 != "ok":
            rec["refold"] = f"{kind2}: {line2}"
        else:
            same = all((t / f"f.{ext}").read_bytes() == (t / f"g.{ext}").read_bytes()
                       for ext in ("prototxt", "caffemodel"))
            rec["refold"] = "identical" if same else "changed bytes"
    return rec


def summary(records: list[dict[str, Any]], skipped: dict[str, int], seconds: float) -> str:
    """The markdown table of outcomes, second folds and the most frequent stopping classes."""
    n = len(records)
    lines = [f"# corpus run: {n} files in {seconds / 60:.1f} min", ""]
    lines += [f"skipped: {', '.join(f'{k} {v}' for k, v in skipped.items()) or 'none'}", ""]
    lines += ["| outcome | files | % |", "|---|---:|---:|"]
    for name, count in Counter(r["outcome"] for r in records).most_common():
        lines.append(f"| {name} | {count} | {100 * count / max(n, 1):.1f} |")
    tv = [r for r in records if r["trainval"]]
    lines += ["", f"train/val files: {len(tv)}; end to end: "
              f"{sum(r['outcome'] == E2E for r in tv)}; "
              f"{Counter(r.get('deploy') for r in tv).most_common()}"]
    left = sum(1 for r in records
               if r["outcome"] in (E2E, LOCAL) and any(r.get("left", {}).values()))
    lines += [f"verified files that still have BatchNorm/Scale layers: {left}", ""]
    lines += ["| second fold | files |", "|---|---:|"]
    for name, count in Counter(r["refold"] if r["refold"] in ("identical", "changed bytes",
                                                              "not run")
                               else r["refold"].split(":")[0] for r in records).most_common():
        lines.append(f"| {name} | {count} |")
    lines += ["", "## What stops files (refusals and local-only reasons)", "",
              "| class | files | examples |", "|---|---:|---|"]
    classes: dict[str, list[str]] = {}
    for r in records:
        if r["outcome"] in (REFUSAL, LOCAL):
            classes.setdefault(r["cls"], []).append(r["file"])
    for cls, files in sorted(classes.items(), key=lambda kv: -len(kv[1])):
        examples = ", ".join(f"`{Path(f).parent.name}/{Path(f).name}`" for f in files[:2])
        lines.append(f"| {cls.replace('|', '/')} | {len(files)} | {examples} |")
    lines += ["", "## What stops files, by the layer type or problem named", "",
              "| blocker | files | stage |", "|---|---:|---|"]
    blockers: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["outcome"] in (REFUSAL, LOCAL):
            blockers.setdefault(blocker(r["line"]), []).append(r)
    for name, recs in sorted(blockers.items(), key=lambda kv: -len(kv[1])):
        stages = Counter(r.get("stage", "local") for r in recs).most_common()
        lines.append(f"| {name.replace('|', '/')} | {len(recs)} | "
                     f"{', '.join(f'{k} {v}' for k, v in stages)} |")
    bugs = [r for r in records if r["outcome"] in BUGS
            or (r["refold"] not in ("identical", "not run", f"{REFUSAL}: ")
            and not r["refold"].startswith(REFUSAL))]
    lines += ["", "## Bugs (traceback, timeout, killed, verify FAIL, second fold)", ""]
    lines += [f"- {r['outcome']} / refold {r['refold']}: `{r['file']}`: {r.get('line', '')}"
              for r in bugs] or ["none"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run every selected file and write the JSON and markdown summaries."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="checkout whose bnfuse is run (default: this one)")
    parser.add_argument("--out", type=Path, default=Path("corpus.json"))
    parser.add_argument("--md", type=Path, default=Path("corpus.md"))
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per command")
    parser.add_argument("--mem-gb", type=float, default=4.0, help="address-space limit")
    parser.add_argument("--sample", type=int, default=0, help="run N files spread evenly")
    parser.add_argument("--all", action="store_true", help="also files without BatchNorm")
    parser.add_argument("--unique", action="store_true", help="skip byte-identical repeats")
    parser.add_argument("--summarise", action="store_true",
                        help="only rewrite --md from the records already in --out")
    args = parser.parse_args(argv)
    if args.summarise:
        old = json.loads(args.out.read_text())
        args.md.write_text(summary(old["records"], old["skipped"], old.get("seconds", 0.0)))
        print(args.md.read_text())
        return 0

    files, skipped, seen = [], Counter[str](), set()
    for path in sorted(args.folder.rglob("*.prototxt")):
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if not args.all and not BN_RE.search(data):
            skipped["no BatchNorm-like layer"] += 1
        elif args.unique and digest in seen:
            skipped["duplicate bytes"] += 1
        else:
            files.append(path)
        seen.add(digest)
    # A fixed shuffle (by the hash of the path): a run stopped early is still a fair sample.
    files.sort(key=lambda p: hashlib.sha256(str(p).encode()).hexdigest())
    if args.sample and args.sample < len(files):
        skipped["not in the sample"] += len(files) - args.sample
        files = files[:args.sample]
    mem = int(args.mem_gb * 2**30)
    # The flag exists or not in the tree under test; its help text says which.
    help_out = subprocess.run([sys.executable, "-m", "bnfuse", "fold", "--help"], check=False,
                              capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(args.tree)))
    has_deploy = "--deploy" in help_out.stdout
    start = time.monotonic()
    records = []
    for i, path in enumerate(files, 1):
        began = time.monotonic()
        rec = run_file(path.resolve(), args.tree, args.timeout, mem, has_deploy)
        rec["seconds"] = round(time.monotonic() - began, 1)
        records.append(rec)
        print(f"[{i}/{len(files)}] {rec['outcome']}: {path} {rec.get('line', '')[:100]}",
              flush=True)
        args.out.write_text(json.dumps({"tree": str(args.tree), "has_deploy": has_deploy,
                                        "skipped": skipped, "records": records,
                                        "seconds": time.monotonic() - start}, indent=1))
    args.md.write_text(summary(records, dict(skipped), time.monotonic() - start))
    print(args.md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
