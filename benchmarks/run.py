"""bnfuse benchmarks: one command, every number the performance issue asks for.

Usage::

    python benchmarks/run.py [--workdir DIR] [--runs 5] [--out results.json]
                             [--smoke] [--no-old-protobuf | --old-protobuf]
                             [--models vgg16_bn,resnet152,...]

What it does, per model (built once with bnfuse's own random-weight generator
and cached in ``--workdir``):

- ``bnfuse fold`` end to end as a user runs it (``python -m bnfuse fold ...
  --quiet`` in a new process: interpreter start, read, fold, write both files);
- ``cp`` of the caffemodel to the same disk (the physical floor), and ``cp``
  followed by ``sync FILE`` (the floor for a writer that fsyncs, as bnfuse does);
- the plain protobuf baseline (:mod:`baseline_protobuf`) on the venv's protobuf
  and on protobuf 3.20.3 (a cached venv under the workdir), and the pycaffe
  baseline where ``import caffe`` works;
- ``bnfuse.load`` alone and ``load`` + ``save`` of the unchanged net, timed inside
  the process (no interpreter start);
- peak resident memory of every one of those processes.

Each measurement is the median of ``--runs`` runs (after one untimed warm-up of
the ``bnfuse`` commands, which also produces the output that is verified). Wall
time on a shared machine is noisy, so the CPU time (user + system) of each
process is reported beside it.

How peak memory is measured: each command runs under a tiny Python wrapper
process whose only child is the command; after ``waitpid`` the wrapper reads
``getrusage(RUSAGE_CHILDREN).ru_maxrss``, which is then exactly the peak RSS of
that one child (a ``RUSAGE_CHILDREN`` delta in a long-lived parent would give
the maximum over every child so far, not this one's). The wrapper also times
the child with ``perf_counter`` around ``fork``/``wait``, so the wrapper's own
start-up is not counted.

Before a time is reported, its result is checked: every folded net is compared
with the original by :func:`bnfuse.verification.compare.verify` (numpy backend; nets
with global pooling at a reduced input size, stated per row), the baselines'
outputs must hold the same weights as bnfuse's, and ``load`` + ``save`` of an
unchanged net must give back the input file byte for byte.

The subprocesses run with the repository on ``PYTHONPATH`` and bytecode cached
under the workdir (``PYTHONPYCACHEPREFIX``), as for an installed package.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import models  # noqa: E402

OLD_PROTOBUF = "3.20.3"
MB = 1024 * 1024

# The wrapper every measured command runs under (see the module docstring).
_WRAPPER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.call(sys.argv[2:], stdout=subprocess.DEVNULL)
seconds = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as f:
    json.dump({"rc": rc, "seconds": seconds, "maxrss_kb": ru.ru_maxrss,
               "cpu_seconds": ru.ru_utime + ru.ru_stime}, f)
"""


@dataclass
class ModelSpec:
    """A benchmark model: how to build it and how to verify its fold."""

    name: str
    build: Callable[[], str]
    #: Input shape for the BatchNorm statistics measurement (None: the prototxt's
    #: own). Weight sizes never depend on it here; verification is at full size.
    reduced_input: tuple[int, ...] | None = None
    note: str = ""
    #: Only the fold and its floors (cp, cp + fsync, the numpy floor): a per-layer
    #: model too large for the baselines to be worth their minutes.
    light: bool = False


def _specs(smoke: bool) -> list[ModelSpec]:
    if smoke:
        return [
            ModelSpec("mobilenet_v2", models.mobilenet_v2),
            ModelSpec("resnet_small", lambda: models.resnet(
                50, stages=(1, 1, 1, 1), width=32, name="ResNet-small")),
        ]
    return [
        ModelSpec("vgg16_bn", models.vgg16_bn),
        ModelSpec("resnet152", lambda: models.resnet(152), (1, 3, 112, 112),
                  "BN statistics measured at 112x112 (global pooling: same weights); "
                  "verified at the full 224x224"),
        ModelSpec("mobilenet_v2", models.mobilenet_v2),
        ModelSpec("inception_resnet_1k", lambda: models.inception_resnet(62)),
        ModelSpec("inception_resnet_4k", lambda: models.inception_resnet(250)),
        ModelSpec("inception_resnet_16k", lambda: models.inception_resnet(1000), light=True),
    ]

#: The models whose in-process fold gives the per-layer cost, by depth.
PER_LAYER_MODELS = ("inception_resnet_1k", "inception_resnet_4k", "inception_resnet_16k")


# --------------------------------------------------------------------------- processes


def _child_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # Bytecode is cached as it would be for an installed package, outside the repository.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    return env


@dataclass
class Sample:
    """One measured run of a command."""

    seconds: float
    cpu_seconds: float
    rss_mb: float
    inner: dict[str, Any] = field(default_factory=dict)


def measure(cmd: Sequence[str], env: dict[str, str], workdir: Path,
            inner_json: Path | None = None, before: Callable[[], None] | None = None) -> Sample:
    """Run ``cmd`` once under the wrapper; fail loudly if it fails."""
    if before is not None:
        before()
    result = workdir / "wrapper.json"
    with contextlib.suppress(FileNotFoundError):
        result.unlink()
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, str(result), *cmd], env=env,
                          stderr=subprocess.PIPE, text=True, check=False)
    data = json.loads(result.read_text()) if result.exists() else {"rc": proc.returncode}
    if proc.returncode != 0 or data.get("rc") != 0:
        raise RuntimeError(f"command failed ({data.get('rc')}): {' '.join(cmd)}\n{proc.stderr}")
    inner = json.loads(inner_json.read_text()) if inner_json is not None else {}
    return Sample(data["seconds"], data["cpu_seconds"], data["maxrss_kb"] / 1024, inner)


@dataclass
class Row:
    """One line of the result table."""

    model: str
    size_mb: float
    layers: int
    measurement: str
    samples: list[Sample]
    verified: bool
    how_verified: str
    #: "wall": process wall time; "inner": time measured inside the process.
    timing: str = "wall"

    @property
    def median_s(self) -> float:
        if self.timing == "inner":
            return statistics.median(s.inner["seconds"] for s in self.samples)
        return statistics.median(s.seconds for s in self.samples)

    @property
    def cpu_s(self) -> float:
        return statistics.median(s.cpu_seconds for s in self.samples)

    @property
    def rss_mb(self) -> float:
        return max(s.rss_mb for s in self.samples)


# --------------------------------------------------------------------------- child actions


def _child(argv: list[str]) -> int:
    """In-process measurements, run by this same file in a child process."""
    import bnfuse
    from bnfuse.net import save

    action, out = argv[0], Path(argv[-1])
    t = time.perf_counter()
    info: dict[str, Any] = {}
    if action == "load":
        net = bnfuse.load(argv[1], argv[2])
        info["layers"] = len(net.layers)
    elif action == "loadsave":
        save(bnfuse.load(argv[1], argv[2]), argv[3], argv[4])
    elif action == "fold":
        fsync_s = [0.0]
        real_fsync = os.fsync

        def timed_fsync(fd: Any) -> None:
            t0 = time.perf_counter()
            real_fsync(fd)
            fsync_s[0] += time.perf_counter() - t0

        os.fsync = timed_fsync  # the writer's final fsyncs: what early writeback shortens
        bnfuse.fold(argv[1], argv[2]).save(argv[3], argv[4])
        os.fsync = real_fsync
        info["fsync_s"] = fsync_s[0]
    elif action == "executor":
        info = _executor_bench(argv[1], argv[2], int(argv[3]))
    else:
        raise SystemExit(f"unknown child action {action}")
    info.setdefault("seconds", time.perf_counter() - t)
    out.write_text(json.dumps(info, default=float))
    return 0


def _executor_bench(prototxt: str, caffemodel: str, runs: int) -> dict[str, Any]:
    """ResNet-50 forward: bnfuse's numpy executor against OpenCV DNN, same files and input."""
    import numpy as np

    import bnfuse
    from bnfuse.layertypes.shapes import input_shapes_of
    from bnfuse.verification.executor import forward

    net = bnfuse.load(prototxt, caffemodel)
    shape = input_shapes_of(net.layers[0])[0]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    times = []
    for _ in range(runs + 1):
        t = time.perf_counter()
        ours = forward(net, {"data": x})["prob"]
        times.append(time.perf_counter() - t)
    result: dict[str, Any] = {"bnfuse_s": statistics.median(times[1:]), "opencv_s": None}
    try:
        import cv2
    except ImportError as exc:
        result["opencv_skipped"] = f"OpenCV is not importable: {exc}"
        return result
    cv_net = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
    times = []
    for _ in range(runs + 1):
        t = time.perf_counter()
        cv_net.setInput(x)
        theirs = cv_net.forward()
        times.append(time.perf_counter() - t)
    result.update(opencv_s=statistics.median(times[1:]), opencv_version=cv2.__version__,
                  opencv_threads=cv2.getNumThreads(),
                  max_abs_diff=float(np.max(np.abs(ours.reshape(theirs.shape) - theirs))))
    return result


# --------------------------------------------------------------------------- building


def build_model(spec: ModelSpec, folder: Path) -> tuple[Path, Path]:
    """Write the model's prototxt and random caffemodel, reusing a cached copy."""
    from bnfuse.net import save
    from bnfuse.verification.randweights import random_weights

    text = spec.build()
    key = hashlib.sha256(f"{text}|{spec.reduced_input}|seed=0".encode()).hexdigest()[:12]
    prototxt, caffemodel = folder / f"{spec.name}.prototxt", folder / f"{spec.name}.caffemodel"
    stamp = folder / f"{spec.name}.key"
    if stamp.exists() and stamp.read_text() == key and caffemodel.exists():
        return prototxt, caffemodel
    prototxt.write_text(text)
    shapes = {"data": spec.reduced_input} if spec.reduced_input else None
    t = time.perf_counter()
    net = random_weights(prototxt, seed=0, input_shapes=shapes)
    save(net, folder / f"{spec.name}.rw.prototxt", caffemodel)
    del net
    stamp.write_text(key)
    print(f"  built {spec.name} in {time.perf_counter() - t:.1f} s", flush=True)
    return prototxt, caffemodel


def old_protobuf_python(workdir: Path) -> tuple[str | None, str]:
    """A Python with protobuf 3.20.3 (a venv cached in the workdir), or None and why not."""
    venv = workdir / f"venv-protobuf-{OLD_PROTOBUF}"
    python = venv / "bin" / "python"
    ok = venv / "ready"
    if not ok.exists():
        print(f"  creating {venv} (pip install protobuf=={OLD_PROTOBUF} numpy)", flush=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q",
                            f"protobuf=={OLD_PROTOBUF}", "numpy"], check=True)
        except (subprocess.CalledProcessError, OSError) as exc:
            return None, f"could not create the protobuf {OLD_PROTOBUF} venv: {exc}"
        ok.write_text("ok")
    return str(python), ""


def caffe_available() -> tuple[bool, str]:
    """Whether ``import caffe`` works in this Python (checked in a child: it may abort)."""
    proc = subprocess.run([sys.executable, "-c", "import caffe"], capture_output=True,
                          text=True, check=False)
    if proc.returncode == 0:
        return True, ""
    last = (proc.stderr.strip().splitlines() or ["import failed"])[-1]
    return False, f"pycaffe is not importable here ({last})"


# --------------------------------------------------------------------------- checks


def _verify_fold(spec: ModelSpec, a: tuple[Path, Path], b: tuple[Path, Path]) -> tuple[bool, str]:

    import bnfuse
    from bnfuse.verification.compare import verify

    folded = bnfuse.load(*b)
    left = sum(1 for layer in folded.layers if layer.type in ("BatchNorm", "Scale"))
    # Always at the prototxt's full input size: at a reduced size ResNet-152's last
    # stage sees 4x4 maps, whose batch statistics give some channels a tiny variance
    # that amplifies float32 rounding past the default tolerance (measured: 1.9e-2
    # at 112x112 against 2.1e-4 at 224x224, same files).
    result = verify(a, b, backend="numpy")
    how = (f"verify() numpy, full-size input: {len(result.blobs)} blobs compared, "
           f"{len(result.failures)} failed; {left} BatchNorm/Scale left")
    return bool(result.passed) and left == 0, how


def _same_weights(x: tuple[Path, Path], y: tuple[Path, Path]) -> tuple[bool, str]:
    """Do two folded nets hold the same weights (a baseline against bnfuse)?"""
    import numpy as np

    import bnfuse

    a, b = bnfuse.load(*x), bnfuse.load(*y)
    names_a = [layer.name for layer in a.layers]
    if names_a != [layer.name for layer in b.layers]:
        return False, "different layers"
    worst = 0.0
    for la, lb in zip(a.layers, b.layers, strict=True):
        if len(la.blobs) != len(lb.blobs):
            return False, f"layer {la.name}: blob count differs"
        for p, q in zip(la.blobs, lb.blobs, strict=True):
            if p.shape != q.shape:
                return False, f"layer {la.name}: shapes differ"
            scale = float(np.max(np.abs(p))) or 1.0
            worst = max(worst, float(np.max(np.abs(p - q))) / scale)
    return worst <= 1e-5, f"same layers and weights as bnfuse's fold (max rel diff {worst:.1e})"


# --------------------------------------------------------------------------- the run


def _median_of(cmd: Sequence[str], env: dict[str, str], workdir: Path, runs: int, *,
               inner: Path | None = None, before: Callable[[], None] | None = None,
               warmup: bool = False) -> list[Sample]:
    if warmup:
        measure(cmd, env, workdir, inner, before)
    return [measure(cmd, env, workdir, inner, before) for _ in range(runs)]


@dataclass
class Timed:
    """A command measured in the interleaved rounds of :func:`_interleaved`."""

    name: str
    cmd: list[str]
    inner: Path | None = None
    before: Callable[[], None] | None = None


def _interleaved(commands: Sequence[Timed], env: dict[str, str], workdir: Path,
                 runs: int) -> dict[str, list[Sample]]:
    """``runs`` rounds, each running every command once: a burst of load from the other
    jobs on a shared machine then hits all of them alike, not one command's runs."""
    samples: dict[str, list[Sample]] = {c.name: [] for c in commands}
    for _ in range(runs):
        for c in commands:
            samples[c.name].append(measure(c.cmd, env, workdir, c.inner, c.before))
    return samples


def bench_model(spec: ModelSpec, args: argparse.Namespace, workdir: Path, env: dict[str, str],
                *, old_python: str | None, caffe_ok: bool) -> list[Row]:
    """Every measurement of one model."""
    print(f"\n== {spec.name}", flush=True)
    prototxt, caffemodel = build_model(spec, workdir / "models")
    out = workdir / "out" / spec.name
    out.mkdir(parents=True, exist_ok=True)
    size_mb = caffemodel.stat().st_size / MB
    py = sys.executable
    runs = args.runs
    src = (prototxt, caffemodel)
    layers = sum(1 for line in prototxt.read_text().splitlines() if line == "layer {")
    rows: list[Row] = []

    def row(name: str, samples: list[Sample], ok: bool, how: str, timing: str = "wall") -> None:
        r = Row(spec.name, size_mb, layers, name, samples, ok, how, timing)
        rows.append(r)
        print(f"  {name:28s} {r.median_s:8.3f} s  cpu {r.cpu_s:7.3f} s  rss {r.rss_mb:7.1f} MB"
              f"  {'verified' if ok else 'NOT VERIFIED'}: {how}", flush=True)

    fold_out = (out / "bnfuse.prototxt", out / "bnfuse.caffemodel")
    fold_cmd = [py, "-m", "bnfuse", "fold", str(prototxt), str(caffemodel),
                "-o", str(fold_out[0]), "-w", str(fold_out[1]), "--quiet"]
    measure(fold_cmd, env, workdir)  # warm-up; its output is what gets verified
    ok, how = _verify_fold(spec, src, fold_out)
    verified_bytes = fold_out[1].read_bytes()
    # The floor's operations, planned once and untimed (benchmarks/floor.py).
    plan_dir = out / "floor-plan"
    subprocess.run([py, str(HERE / "floor.py"), "plan", str(prototxt), str(caffemodel),
                    str(plan_dir)], env=env, check=True, stdout=subprocess.DEVNULL)

    inproc_out = (out / "inproc.prototxt", out / "inproc.caffemodel")
    floor_out = out / "floor.caffemodel"
    copies = (out / "cp.caffemodel", out / "cp_fsync.caffemodel")

    def removing(*paths: Path) -> Callable[[], None]:
        # Every run writes a new file, as cp does: replacing an old one would add
        # the freeing of its blocks to whichever command replaced it.
        def remove() -> None:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return remove

    cp = shutil.which("cp") or "cp"
    timed = [
        Timed("bnfuse fold (CLI)", fold_cmd, before=removing(*fold_out)),
        Timed("bnfuse fold (in-process)",
              [py, __file__, "--child", "fold", str(prototxt), str(caffemodel),
               *map(str, inproc_out), str(out / "inner_fold.json")],
              inner=out / "inner_fold.json", before=removing(*inproc_out)),
        Timed("cp", [cp, str(caffemodel), str(copies[0])], before=removing(copies[0])),
        # sync FILE is fsync(FILE): the floor for a writer that makes its output durable.
        Timed("cp + fsync", ["sh", "-c", 'cp "$1" "$2" && sync "$2"', "sh", str(caffemodel),
                             str(copies[1])], before=removing(copies[1])),
        Timed("floor (numpy)", [py, str(HERE / "floor.py"), "run", str(caffemodel),
                                str(plan_dir), str(floor_out)], before=removing(floor_out)),
    ]
    by_name = _interleaved(timed, env, workdir, runs)
    same_cli = fold_out[1].read_bytes() == verified_bytes
    row("bnfuse fold (CLI)", by_name["bnfuse fold (CLI)"], ok and same_cli,
        how + ("" if same_cli else "; a timed run wrote other bytes!"))
    same = inproc_out[1].read_bytes() == verified_bytes
    row("bnfuse fold (in-process)", by_name["bnfuse fold (in-process)"], same and ok,
        "same caffemodel bytes as the verified CLI fold" if same else "bytes differ!", "inner")
    for name, copy in zip(("cp", "cp + fsync"), copies, strict=True):
        same = filecmp.cmp(caffemodel, copy, shallow=False)
        row(name, by_name[name], same, "identical copy" if same else "copy differs!")
    plan = json.loads((plan_dir / "plan.json").read_text())
    same = floor_out.read_bytes() == verified_bytes
    row("floor (numpy)", by_name["floor (numpy)"], same and ok,
        (f"same bytes as bnfuse's verified fold: {plan['multiplied_bytes'] / MB:.1f} MB "
         f"multiplied, {plan['copied_bytes'] / MB:.1f} MB copied") if same
        else "bytes differ from bnfuse's fold!")
    removing(*copies, floor_out)()
    if spec.light:
        _drop_outputs(out, args)
        return rows

    baseline = HERE / "baseline_protobuf.py"
    pythons = [("protobuf baseline (venv)", py)]
    if old_python is not None and size_mb <= args.old_protobuf_max_mb:
        pythons.append((f"protobuf baseline ({OLD_PROTOBUF})", old_python))
    elif old_python is not None:
        # Protobuf 3.20.3 has no compiled module for Python >= 3.11: its pure-Python
        # parser reads about 0.5 MB/s here, i.e. many minutes per run on big models.
        print(f"  skipped protobuf {OLD_PROTOBUF} baseline: {size_mb:.0f} MB is over "
              f"--old-protobuf-max-mb {args.old_protobuf_max_mb:g}", flush=True)
    for label, python in pythons:
        tag = "old" if python != py else "new"
        bout = (out / f"pb_{tag}.prototxt", out / f"pb_{tag}.caffemodel")
        timings = out / f"pb_{tag}.json"
        cmd = [python, str(baseline), str(prototxt), str(caffemodel), *map(str, bout),
               "--timings", str(timings)]
        samples = _median_of(cmd, env, workdir, runs, inner=timings)
        ok, how = _same_weights(fold_out, bout)
        version = samples[0].inner.get("protobuf", "?")
        row(f"{label} [{version}]" if tag == "new" else label, samples, ok, how)
    if caffe_ok:
        bout = (out / "pycaffe.prototxt", out / "pycaffe.caffemodel")
        cmd = [py, str(HERE / "baseline_pycaffe.py"), str(prototxt), str(caffemodel),
               *map(str, bout)]
        samples = _median_of(cmd, env, workdir, runs)
        ok, how = _same_weights(fold_out, bout)
        row("pycaffe baseline", samples, ok, how)

    inner = out / "inner.json"
    samples = _median_of([py, __file__, "--child", "load", str(prototxt), str(caffemodel),
                          str(inner)], env, workdir, runs, inner=inner)
    row("bnfuse.load (in-process)", samples, samples[0].inner.get("layers") == layers,
        f"{samples[0].inner.get('layers')} layers loaded", "inner")
    same_out = (out / "same.prototxt", out / "same.caffemodel")
    samples = _median_of([py, __file__, "--child", "loadsave", str(prototxt), str(caffemodel),
                          *map(str, same_out), str(inner)], env, workdir, runs, inner=inner)
    identical = filecmp.cmp(caffemodel, same_out[1], shallow=False)
    row("bnfuse load+save unchanged", samples, identical,
        "output caffemodel identical to the input" if identical else "output differs!", "inner")
    _drop_outputs(out, args)
    return rows


def _drop_outputs(out: Path, args: argparse.Namespace) -> None:
    if not args.keep_outputs:
        for path in out.iterdir():
            if path.suffix == ".caffemodel":
                path.unlink()


#: What ``import bnfuse`` must leave unimported: optional backends never, and numpy,
#: protobuf and the schema module until a command needs them (lazy imports).
_LAZY_MODULES = ("cv2", "caffe", "numpy", "google.protobuf", "bnfuse.proto")


def startup(env: dict[str, str], workdir: Path, runs: int) -> dict[str, Any]:
    """Start-up cost over a bare interpreter (``--help``, ``import bnfuse``), interleaved,
    and which of :data:`_LAZY_MODULES` ``import bnfuse`` loads."""
    py = sys.executable
    commands = [Timed("bare", [py, "-c", "pass"]), Timed("help", [py, "-m", "bnfuse", "--help"]),
                Timed("import", [py, "-c", "import bnfuse"])]
    for c in commands:  # warm-up: bytecode caches and the page cache
        measure(c.cmd, env, workdir)
    samples = _interleaved(commands, env, workdir, max(runs, 5))
    inner = workdir / "imports.json"
    subprocess.run([py, "-c", "import sys, json, bnfuse; json.dump(sorted(m for m in "
                    f"{_LAZY_MODULES!r} if m in sys.modules), open(sys.argv[1], 'w'))",
                    str(inner)], env=env, check=True)
    loaded = json.loads(inner.read_text())

    def median(name: str, key: str = "seconds") -> float:
        return statistics.median(getattr(s, key) for s in samples[name])

    return {"help_s": median("help"), "help_cpu_s": median("help", "cpu_seconds"),
            "import_s": median("import"), "python_start_s": median("bare"),
            "help_over_bare_s": median("help") - median("bare"),
            "import_over_bare_s": median("import") - median("bare"),
            "optional_modules_imported": [m for m in loaded if m in ("cv2", "caffe")],
            "heavy_modules_imported": [m for m in loaded if m not in ("cv2", "caffe")]}


def executor_bench(smoke: bool, args: argparse.Namespace, workdir: Path,
                   env: dict[str, str]) -> dict[str, Any]:
    """Forward time of the numpy executor against OpenCV DNN on ResNet-50 (224x224, batch 1)."""
    if smoke:
        spec = ModelSpec("resnet_small", lambda: models.resnet(
            50, stages=(1, 1, 1, 1), width=32, name="ResNet-small"))
    else:
        spec = ModelSpec("resnet50", lambda: models.resnet(50))
    print(f"\n== executor: {spec.name}", flush=True)
    prototxt, caffemodel = build_model(spec, workdir / "models")
    inner = workdir / "executor.json"
    subprocess.run([sys.executable, __file__, "--child", "executor", str(prototxt),
                    str(caffemodel), str(args.runs), str(inner)], env=env, check=True)
    result = json.loads(inner.read_text())
    result["model"] = spec.name
    if result.get("opencv_s"):
        result["bnfuse_over_opencv"] = result["bnfuse_s"] / result["opencv_s"]
        # Same input, same weights: the outputs must agree (probabilities, max 1).
        result["verified"] = result["max_abs_diff"] < 1e-3
    opencv = result.get("opencv_s")
    print(f"  bnfuse executor {result['bnfuse_s']:.3f} s, "
          + (f"OpenCV {opencv:.3f} s" if opencv else f"OpenCV: {result.get('opencv_skipped')}"),
          flush=True)
    return result


# --------------------------------------------------------------------------- report


def _goal(name: str, passed: bool | None, detail: str) -> dict[str, Any]:
    state = "n/a" if passed is None else ("PASS" if passed else "FAIL")
    return {"goal": name, "result": state, "detail": detail}


#: The issue's targets: (model, label, fold CLI / (cp + fsync), peak RSS / file).
SIZE_GOALS = (("resnet152", "ResNet-152", 1.8, 0.3), ("vgg16_bn", "VGG-16-BN", 1.2, 0.3))
#: The 4,008-layer net end to end (CLI), in seconds.
DEEP_CLI_GOAL_S = 0.35
#: In-process fold cost per layer, in microseconds, and how flat it must be (16k vs 1k).
PER_LAYER_GOAL_US = 50.0
PER_LAYER_FLAT = 1.5
#: ``--help`` and ``import bnfuse`` over a bare interpreter, in seconds.
STARTUP_GOAL_S = 0.060


def per_layer_us(row: Row) -> float:
    """The in-process fold's time per layer of the prototxt, in microseconds."""
    return row.median_s / row.layers * 1e6


def goals(rows: list[Row], start: dict[str, Any]) -> list[dict[str, Any]]:
    """Check the issue's targets; never raises (the smoke run only reports)."""
    by = {(r.model, r.measurement): r for r in rows}
    out = []
    for model, label, cp_limit, rss_limit in SIZE_GOALS:
        fold, cp = by.get((model, "bnfuse fold (CLI)")), by.get((model, "cp + fsync"))
        if fold is None or cp is None:
            out.append(_goal(f"{label}: fold CLI <= {cp_limit}x cp + fsync", None,
                             "model not in this run"))
            out.append(_goal(f"{label}: peak RSS <= {rss_limit}x file", None,
                             "model not in this run"))
            continue
        ratio = fold.median_s / cp.median_s
        floor = by.get((model, "floor (numpy)"))
        floor_note = (f"; the numpy floor is {floor.median_s / cp.median_s:.2f}x"
                      if floor is not None else "")
        out.append(_goal(f"{label}: fold CLI <= {cp_limit}x cp + fsync", ratio <= cp_limit,
                         f"{fold.median_s:.3f} s / {cp.median_s:.3f} s = {ratio:.2f}x"
                         + floor_note))
        rss = fold.rss_mb / fold.size_mb
        out.append(_goal(f"{label}: peak RSS <= {rss_limit}x file", rss <= rss_limit,
                         f"{fold.rss_mb:.0f} MB / {fold.size_mb:.0f} MB = {rss:.2f}x"))
    deep = by.get(("inception_resnet_4k", "bnfuse fold (CLI)"))
    out.append(_goal(f"4,008-layer net: fold CLI <= {DEEP_CLI_GOAL_S} s", None if deep is None
                     else deep.median_s <= DEEP_CLI_GOAL_S,
                     "model not in this run" if deep is None else f"{deep.median_s:.3f} s"))
    per = [by.get((m, "bnfuse fold (in-process)")) for m in PER_LAYER_MODELS]
    present = [r for r in per if r is not None]
    for r in present:
        out.append(_goal(f"{r.layers} layers: in-process fold <= {PER_LAYER_GOAL_US:g} us/layer",
                         per_layer_us(r) <= PER_LAYER_GOAL_US,
                         f"{r.median_s:.3f} s / {r.layers} layers = {per_layer_us(r):.1f} us"))
    if len(present) >= 2:
        low, high = present[0], present[-1]
        out.append(_goal(f"per-layer cost flat with depth ({high.layers} vs {low.layers} layers "
                         f"<= {PER_LAYER_FLAT}x)",
                         per_layer_us(high) <= PER_LAYER_FLAT * per_layer_us(low),
                         f"{per_layer_us(low):.1f} -> {per_layer_us(high):.1f} us/layer"))
    for model in dict.fromkeys(r.model for r in rows):
        fold = by[(model, "bnfuse fold (CLI)")]
        floor = by.get((model, "floor (numpy)"))
        if floor is not None:
            out.append(_goal(f"{model}: output bytes identical to the float64-once fold",
                             floor.verified, floor.how_verified))
        new = next((r for (m, k), r in by.items() if m == model
                    and k.startswith("protobuf baseline (venv)")), None)
        old = by.get((model, f"protobuf baseline ({OLD_PROTOBUF})"))
        if old is not None:
            x = old.median_s / fold.median_s
            out.append(_goal(f"{model}: >= 10x faster than protobuf {OLD_PROTOBUF}", x >= 10,
                             f"{old.median_s:.2f} s / {fold.median_s:.2f} s = {x:.1f}x"))
        elif new is not None:
            out.append(_goal(f"{model}: >= 10x faster than protobuf {OLD_PROTOBUF}", None,
                             f"protobuf {OLD_PROTOBUF} baseline not run on this model (not "
                             "requested, or over --old-protobuf-max-mb)"))
        if new is not None:
            x = new.median_s / fold.median_s
            out.append(_goal(f"{model}: faster than the newest protobuf", x > 1,
                             f"{new.median_s:.2f} s / {fold.median_s:.2f} s = {x:.1f}x"))
    mods = start["optional_modules_imported"]
    out.append(_goal("import bnfuse does not import cv2/caffe", not mods,
                     f"imported: {mods or 'none'}"))
    heavy = start["heavy_modules_imported"]
    out.append(_goal("import bnfuse leaves numpy, protobuf and bnfuse.proto unimported",
                     not heavy, f"imported: {heavy or 'none'}"))
    for key, what in (("help", "python -m bnfuse --help"), ("import", "import bnfuse")):
        over = start[f"{key}_over_bare_s"]
        out.append(_goal(f"{what} <= {STARTUP_GOAL_S * 1e3:.0f} ms over a bare interpreter",
                         over <= STARTUP_GOAL_S,
                         f"{start[f'{key}_s'] * 1e3:.0f} ms - {start['python_start_s'] * 1e3:.0f}"
                         f" ms = {over * 1e3:.0f} ms"))
    return out


def table(rows: list[Row]) -> str:
    """The printed table: one line per (model, measurement)."""
    header = ("model", "MB", "layers", "measurement", "median s", "cpu s", "x cp", "x cp+fsync",
              "x floor", "x pb-new", "x pb-3.20", "RSS MB", "RSS/size", "us/layer", "ok")
    by = {(r.model, r.measurement): r for r in rows}
    lines = []
    for r in rows:
        new = next((x for (m, k), x in by.items() if m == r.model
                    and k.startswith("protobuf baseline (venv)")), None)

        def ratio(base: Row | None, r: Row = r) -> str:
            return f"{r.median_s / base.median_s:.2f}" if base else "-"

        lines.append((r.model, f"{r.size_mb:.1f}", str(r.layers), r.measurement,
                      f"{r.median_s:.3f}", f"{r.cpu_s:.3f}", ratio(by.get((r.model, "cp"))),
                      ratio(by.get((r.model, "cp + fsync"))),
                      ratio(by.get((r.model, "floor (numpy)"))), ratio(new),
                      ratio(by.get((r.model, f"protobuf baseline ({OLD_PROTOBUF})"))),
                      f"{r.rss_mb:.0f}", f"{r.rss_mb / r.size_mb:.2f}",
                      f"{per_layer_us(r):.1f}" if r.measurement == "bnfuse fold (in-process)"
                      else "-", "yes" if r.verified else "NO"))
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) if i in (0, 3) else c.rjust(w)
                      for i, (c, w) in enumerate(zip(row, widths, strict=True)))
            for row in [header, *lines]]
    return "\n".join(text)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; print the table and the goals; write the JSON."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    parser = argparse.ArgumentParser(description="bnfuse benchmarks (see benchmarks/README.md)")
    parser.add_argument("--workdir", help="where models, venvs and outputs are kept "
                        "(default: a new temporary folder)")
    parser.add_argument("--runs", type=int, default=None,
                        help="runs per measurement, the median is reported (default 5; 1 "
                        "with --smoke)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--smoke", action="store_true",
                        help="small models, 1 run, no old-protobuf venv unless asked (CI)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--old-protobuf", dest="old_protobuf", action="store_true", default=None,
                       help=f"also run the baseline on protobuf {OLD_PROTOBUF} (default unless "
                       "--smoke)")
    group.add_argument("--no-old-protobuf", dest="old_protobuf", action="store_false")
    parser.add_argument("--old-protobuf-max-mb", type=float, default=64.0,
                        help=f"run the protobuf {OLD_PROTOBUF} baseline only on caffemodels up to "
                        "this size (its pure-Python parser needs ~30 s per 14 MB here)")
    parser.add_argument("--models", help="comma-separated subset of the models to run")
    parser.add_argument("--no-executor", action="store_true",
                        help="skip the executor-vs-OpenCV benchmark")
    parser.add_argument("--keep-outputs", action="store_true",
                        help="keep the folded caffemodels in the workdir")
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.smoke else 5
    if args.old_protobuf is None:
        args.old_protobuf = not args.smoke
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bnfuse-bench-"))
    workdir = workdir.resolve()
    (workdir / "models").mkdir(parents=True, exist_ok=True)
    env = _child_env(workdir)
    started = time.perf_counter()
    print(f"workdir: {workdir}; runs: {args.runs}; load average: {os.getloadavg()}", flush=True)

    skipped: list[dict[str, str]] = []
    old_python = None
    if args.old_protobuf:
        old_python, why = old_protobuf_python(workdir)
        if old_python is None:
            skipped.append({"what": f"protobuf {OLD_PROTOBUF} baseline", "why": why})
    else:
        skipped.append({"what": f"protobuf {OLD_PROTOBUF} baseline",
                        "why": "not requested (--no-old-protobuf, or --smoke)"})
    caffe_ok, why = caffe_available()
    if not caffe_ok:
        skipped.append({"what": "pycaffe baseline", "why": why})
    for item in skipped:
        print(f"skipped: {item['what']}: {item['why']}", flush=True)

    specs = _specs(args.smoke)
    if args.models:
        wanted = set(args.models.split(","))
        specs = [s for s in specs if s.name in wanted]
    rows: list[Row] = []
    for spec in specs:
        rows.extend(bench_model(spec, args, workdir, env, old_python=old_python,
                                caffe_ok=caffe_ok))
    start = startup(env, workdir, args.runs)
    executor = None
    if not args.no_executor:
        executor = executor_bench(args.smoke, args, workdir, env)
        if executor.get("opencv_skipped"):
            skipped.append({"what": "OpenCV executor comparison",
                            "why": executor["opencv_skipped"]})
    checks = goals(rows, start)

    print("\n" + table(rows))
    print(f"\nstart-up: python -m bnfuse --help {start['help_s']:.3f} s, import bnfuse "
          f"{start['import_s']:.3f} s (bare interpreter {start['python_start_s']:.3f} s)")
    for r in rows:
        if r.measurement == "bnfuse fold (in-process)" and r.samples[0].inner.get("fsync_s"):
            fsync = statistics.median(s.inner["fsync_s"] for s in r.samples)
            print(f"final fsync inside the in-process fold, {r.model}: {fsync * 1e3:.1f} ms")
    if executor:
        opencv = executor.get("opencv_s")
        print(f"executor ({executor['model']}, batch 1): bnfuse {executor['bnfuse_s']:.3f} s, "
              + (f"OpenCV {opencv:.3f} s" if opencv else "OpenCV skipped"))
    print("\ngoals:")
    for check in checks:
        print(f"  {check['result']:4s}  {check['goal']}: {check['detail']}")
    for item in skipped:
        print(f"skipped: {item['what']}: {item['why']}")

    payload = {
        "meta": {"python": platform.python_version(), "platform": platform.platform(),
                 "cpus": os.cpu_count(), "runs": args.runs, "smoke": args.smoke,
                 "load_average_end": os.getloadavg(),
                 "total_seconds": time.perf_counter() - started},
        "rows": [{"model": r.model, "size_mb": r.size_mb, "layers": r.layers,
                  "measurement": r.measurement, "timing": r.timing,
                  "median_s": _finite(r.median_s), "cpu_s": _finite(r.cpu_s),
                  "runs_s": [s.inner.get("seconds", s.seconds) if r.timing == "inner"
                             else s.seconds for s in r.samples],
                  "peak_rss_mb": _finite(r.rss_mb), "rss_over_size": _finite(r.rss_mb / r.size_mb),
                  "verified": r.verified, "how_verified": r.how_verified,
                  "phases": r.samples[0].inner.get("phases"),
                  "fsync_s": (statistics.median(s.inner["fsync_s"] for s in r.samples)
                              if r.samples[0].inner.get("fsync_s") is not None else None)}
                 for r in rows],
        "startup": start,
        "executor": executor,
        "goals": checks,
        "skipped": skipped,
        "notes": {s.name: s.note for s in specs if s.note},
    }
    if args.out:
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
