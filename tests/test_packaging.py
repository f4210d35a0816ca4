"""The built distributions, and the wheel installed into fresh virtual environments.

The wheel and sdist are built once per session with ``python -m build`` from a copy of the
source tree (so the build leaves nothing behind in the working tree). When the running
environment already has the build backend (setuptools >= 68 and wheel), the build runs
with ``--no-isolation`` and needs no network; otherwise ``build`` makes its isolated
environment with pip, from whatever index pip is configured with.

The install smoke test stands in for the Docker image (no container engine runs in CI):
the wheel alone is installed into a new virtual environment (pip fetches numpy and
protobuf), then the README's quick-start command and ``bnfuse --version`` are run there.
It runs with the current interpreter and with the oldest and newest Python of the
supported range when the machine has them (found on ``PATH`` or under ``pyenv root``),
and is skipped with the reason when it does not.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = "Scripts" if os.name == "nt" else "bin"
#: Directories and files never copied into the build tree (caches, VCS data, outputs).
IGNORED = shutil.ignore_patterns(".git", "__pycache__", "*.py[cod]", "*.egg-info", "build",
                                 "dist", ".venv", "venv", ".pytest_cache", ".mypy_cache",
                                 ".ruff_cache", ".hypothesis", "*.tmp")
QUIET_PIP = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}


def _run(argv: list[str], *, cwd: Path | None = None, timeout: float = 300,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    merged = {**os.environ, **QUIET_PIP, **(env or {})}
    merged.pop("PYTHONPATH", None)  # the installed package, never the source tree
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env=merged, check=False)
    assert result.returncode == 0, (f"{' '.join(argv)} exited {result.returncode}\n"
                                    f"stdout:\n{result.stdout[-3000:]}\n"
                                    f"stderr:\n{result.stderr[-3000:]}")
    return result


def _has_build_backend() -> bool:
    try:
        setuptools_version = importlib.metadata.version("setuptools")
        importlib.metadata.version("wheel")
    except importlib.metadata.PackageNotFoundError:
        return False
    major = int(re.match(r"\d+", setuptools_version).group())  # type: ignore[union-attr]
    return major >= 68


@pytest.fixture(scope="session")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build the sdist and the wheel (from the sdist, as ``python -m build`` does)."""
    try:
        import build  # noqa: F401
    except ImportError:
        pytest.skip("the 'build' package is not installed (it is in the dev extra)")
    work = tmp_path_factory.mktemp("build")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=IGNORED)
    out = work / "dist"
    argv = [sys.executable, "-m", "build", "--outdir", str(out)]
    if _has_build_backend():
        argv.append("--no-isolation")
    _run([*argv, str(source)], timeout=600)
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


# --------------------------------------------------------------------------- contents


def _wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


@pytest.mark.slow
def test_wheel_holds_the_package_and_nothing_else(dists: dict[str, Path]) -> None:
    names = _wheel_names(dists["wheel"])
    for required in ("bnfuse/__init__.py", "bnfuse/__main__.py", "bnfuse/cli.py",
                     "bnfuse/py.typed", "bnfuse/proto/caffe_pb2.py", "bnfuse/proto/caffe_pb2.pyi",
                     "bnfuse/examples/example.prototxt", "bnfuse/examples/example.caffemodel",
                     "bnfuse/verification/backends/_pycaffe_child.py"):
        assert required in names, f"the wheel lacks {required}"
    tops = {name.split("/", 1)[0] for name in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"bnfuse"}, f"unexpected top-level entries: {sorted(tops)}"
    for name in names:
        assert not name.startswith(("tests/", "benchmarks/", "fuzz/", "caffe_proto/", "docs/"))
        assert "__pycache__" not in name and not name.endswith(".pyc")
    # Every source module of the package is in the wheel.
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "bnfuse").rglob("*.py")}
    assert sources <= set(names), sorted(sources - set(names))


@pytest.mark.slow
def test_wheel_metadata(dists: dict[str, Path]) -> None:
    with zipfile.ZipFile(dists["wheel"]) as archive:
        meta_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        entry_name = next(n for n in archive.namelist()
                          if n.endswith(".dist-info/entry_points.txt"))
        metadata = email.parser.Parser().parsestr(archive.read(meta_name).decode("utf-8"))
        entry_points = archive.read(entry_name).decode("utf-8")
    import bnfuse

    assert metadata["Name"] == "bnfuse"
    assert metadata["Version"] == bnfuse.__version__
    assert metadata["Requires-Python"] == ">=3.10"
    requires = metadata.get_all("Requires-Dist") or []
    runtime = sorted(re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0] for r in requires
                     if "extra ==" not in r)
    assert runtime == ["numpy", "protobuf"], requires
    protobuf = next(r for r in requires if r.startswith("protobuf"))
    assert ">=3.20.3" in protobuf and "<8" in protobuf
    assert set(metadata.get_all("Provides-Extra") or []) == {"verify", "onnx", "dev"}
    verify_extra = sorted(r for r in requires if 'extra == "verify"' in r)
    assert [re.split(r"[<>=]", r, maxsplit=1)[0] for r in verify_extra] == [
        "onnx", "onnxruntime", "opencv-python-headless"]
    assert "<1.23" in verify_extra[0] and ">=1.17" in verify_extra[1]
    assert "<5" in verify_extra[2]
    onnx_extra = [r for r in requires if 'extra == "onnx"' in r]
    assert len(onnx_extra) == 1 and onnx_extra[0].startswith("onnx")
    assert ">=1.16" in onnx_extra[0] and "<1.23" in onnx_extra[0]
    assert re.search(r"^bnfuse\s*=\s*bnfuse\.cli:main$", entry_points, flags=re.M)
    description = metadata.get_payload()
    assert isinstance(description, str) and description.lstrip().startswith("# bnfuse")


@pytest.mark.slow
def test_sdist_contents(dists: dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for required in ("pyproject.toml", "README.md", "CHANGELOG.md", "PKG-INFO",
                     "bnfuse/proto/caffe_pb2.py", "bnfuse/proto/caffe_pb2.pyi", "bnfuse/py.typed",
                     "bnfuse/examples/example.prototxt", "bnfuse/examples/example.caffemodel",
                     "caffe_proto/caffe.proto", "caffe_proto/generate.py",
                     "docs/math.md", "tests/conftest.py", "tests/test_docs.py"):
        assert required in names, f"the sdist lacks {required}"
    for name in names:
        assert not name.startswith(("benchmarks/", "fuzz/", ".git/", ".ci/"))
        assert "__pycache__" not in name


def test_import_loads_no_optional_backend() -> None:
    # In the dev environment OpenCV and ONNX are installed: importing bnfuse loads neither.
    code = ("import sys, bnfuse, bnfuse.cli, bnfuse.verification.compare; "
            "assert not {'cv2', 'caffe', 'onnx', 'onnxruntime'} & set(sys.modules), "
            "sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# --------------------------------------------------------------------------- install smoke


def _quick_start_command() -> list[str]:
    """The README quick-start command after ``pip install . &&``, as argv."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Quick start\n", 1)[1]
    match = re.search(r"^```sh\n(.*?)\n```", section, flags=re.S | re.M)
    assert match, "README.md: no sh block in the quick start"
    install, _, command = match.group(1).strip().partition(" && ")
    assert install == "pip install .", install
    return shlex.split(command)


def _install_smoke(python: str, wheel: Path, work: Path) -> None:
    venv = work / "venv"
    _run([python, "-m", "venv", str(venv)], timeout=120)
    vpython = str(venv / BIN / "python")
    _run([vpython, "-m", "pip", "install", "--quiet", "--no-compile", str(wheel)], timeout=600)
    # The package comes from the venv, and importing it loads no optional backend.
    where = _run([vpython, "-c", "import sys, bnfuse; assert 'cv2' not in sys.modules; "
                  "print(bnfuse.__file__); print(bnfuse.example_path())"], cwd=work).stdout
    package_file, example = (Path(line) for line in where.split())
    assert Path(os.path.commonpath([package_file, venv])) == venv, package_file
    # The README quick start, on the example installed with the wheel, in a temp dir.
    models = work / "models"
    (models / "bnfuse" / "examples").mkdir(parents=True)
    for path in example.parent.glob("example.*"):
        shutil.copyfile(path, models / "bnfuse" / "examples" / path.name)
    argv = _quick_start_command()
    script = str(venv / BIN / argv[0])
    done = _run([script, *argv[1:]], cwd=models, timeout=300)
    assert "PASSED" in done.stdout, done.stdout
    for name in ("example_inference.prototxt", "example_inference.caffemodel"):
        assert (models / "bnfuse" / "examples" / name).stat().st_size > 0
    import bnfuse

    version = _run([script, "--version"], cwd=models).stdout.strip()
    assert version == f"bnfuse {bnfuse.__version__}"


@pytest.mark.slow
def test_wheel_installs_and_runs_in_a_fresh_venv(dists: dict[str, Path], tmp_path: Path) -> None:
    _install_smoke(sys.executable, dists["wheel"], tmp_path)


def _supported_versions() -> list[tuple[int, int]]:
    """The ``Programming Language :: Python :: 3.X`` classifiers of pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    found = re.findall(r'"Programming Language :: Python :: (\d+)\.(\d+)"', text)
    versions = sorted((int(a), int(b)) for a, b in found)
    assert versions, "pyproject.toml lists no Python version classifiers"
    return versions


def _candidates(version: tuple[int, int]) -> Iterator[str]:
    name = f"python{version[0]}.{version[1]}"
    if sys.version_info[:2] == version:
        yield sys.executable
    on_path = shutil.which(name)
    if on_path:
        yield on_path  # may be a pyenv shim that refuses to run: checked by the caller
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            root = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=30,
                                  check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            root = ""
        if root:
            for install in sorted(Path(root, "versions").glob(f"{version[0]}.{version[1]}.*"),
                                  reverse=True):
                yield str(install / BIN / name)


def find_interpreter(version: tuple[int, int]) -> str | None:
    """A working interpreter of ``version`` with the venv module, or None."""
    probe = "import sys, venv, ensurepip; print('%d.%d' % sys.version_info[:2])"
    for candidate in _candidates(version):
        try:
            result = subprocess.run([candidate, "-c", probe], capture_output=True, text=True,
                                    timeout=60, check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        if result.returncode == 0 and result.stdout.strip() == f"{version[0]}.{version[1]}":
            return candidate
    return None


@pytest.mark.slow
@pytest.mark.parametrize("which", ["oldest", "newest"])
def test_wheel_on_oldest_and_newest_supported_python(dists: dict[str, Path], tmp_path: Path,
                                                     which: str) -> None:
    versions = _supported_versions()
    version = versions[0] if which == "oldest" else versions[-1]
    python = find_interpreter(version)
    if python is None:
        pytest.skip(f"no working python{version[0]}.{version[1]} (with venv and ensurepip) "
                    "on PATH or under `pyenv root`; the install smoke test on the "
                    f"{which} supported Python needs one")
    _install_smoke(python, dists["wheel"], tmp_path)
