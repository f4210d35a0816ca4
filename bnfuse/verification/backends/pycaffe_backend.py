"""The pycaffe backend: real Caffe, run in a child process.

Caffe reports a bad net by failing a ``CHECK``, which aborts the whole process.
So Caffe never runs in the caller's process: this module writes the net, the
inputs and a JSON request to a temporary folder and launches
``sys.executable -m bnfuse.verification.backends._pycaffe_child``. A child that cannot
``import caffe`` becomes a :class:`~bnfuse.errors.BackendUnavailableError` with
install advice; a child that crashes or aborts becomes a
:class:`~bnfuse.errors.BnfuseError` carrying the last lines Caffe wrote to stderr.

Nets with ``Python`` layers are refused unless ``allow_python_layers=True``:
running them imports and executes the modules they name.

The child gets the caller's environment (so ``PYTHONPATH`` pointing at a pycaffe
build works) with bnfuse's own location appended, so that it can find bnfuse
even when bnfuse is not installed.

Example:
    >>> import bnfuse
    >>> from bnfuse.verification.backends import numpy_backend
    >>> from bnfuse.verification.backends.pycaffe_backend import run
    >>> paths = (bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
    >>> data = {"data": np.random.default_rng(0).standard_normal((1, 3, 32, 32))}
    >>> try:
    ...     blobs = run(paths, data)  # real Caffe, in a child process
    ... except BackendUnavailableError:  # no pycaffe here: use the numpy reference
    ...     blobs = numpy_backend.run(paths, data)
    >>> blobs["prob"].shape
    (1, 10)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import bnfuse
from bnfuse.errors import BackendUnavailableError, BnfuseError, UnsupportedLayerError
from bnfuse.verification.backends import (
    NetOrPaths,
    Progress,
    as_net,
    declared_blobs,
    net_files,
    python_layers,
    require_float32,
)

NAME = "pycaffe"

#: Exit codes agreed with ``_pycaffe_child``.
_EXIT_BAD_REQUEST = 2
_EXIT_NO_CAFFE = 3
_CHILD = "bnfuse.verification.backends._pycaffe_child"
_INSTALL = ("install Caffe with its Python bindings (e.g. `apt install caffe-cpu` or a "
            "source build with `make pycaffe`) and put its python/ folder on PYTHONPATH")
#: How many stderr lines a crash report keeps (Caffe's CHECK message is near the end).
_TAIL = 5


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # bnfuse's parent folder, so `-m bnfuse...` works from a source checkout too.
    root = str(Path(bnfuse.__file__).resolve().parent.parent)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        parts.append(root)
    env["PYTHONPATH"] = os.pathsep.join(parts)
    # Caffe's glog output goes to stderr; keep it (it is what a crash report shows).
    env.setdefault("GLOG_minloglevel", "1")
    return env


def _tail(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return " | ".join(lines[-_TAIL:]) if lines else "(no output on stderr)"


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _launch(args: list[str], timeout: float | None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([sys.executable, "-m", _CHILD, *args], env=_child_env(),
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BnfuseError(f"pycaffe did not finish within {timeout} s") from None


def check_available(timeout: float | None = 120.0) -> None:
    """Check, in a child process, that ``import caffe`` works.

    Raises :class:`~bnfuse.errors.BackendUnavailableError` with install advice
    (and the import error) when it does not.

    Example:
        >>> try:
        ...     check_available()  # starts a Python process: about half a second
        ... except BackendUnavailableError as exc:  # says why and how to install Caffe
        ...     assert "pycaffe" in str(exc)
    """
    done = _launch(["--probe"], timeout)
    if done.returncode == 0:
        return
    if done.returncode == _EXIT_NO_CAFFE:
        raise BackendUnavailableError(
            f"the pycaffe backend needs Caffe's Python module ({_tail(done.stderr)}): {_INSTALL}")
    raise BackendUnavailableError(
        f"checking for pycaffe failed ({_describe_exit(done.returncode)}): {_tail(done.stderr)}")


def run(
    net_or_paths: NetOrPaths,
    inputs: Mapping[str, npt.ArrayLike],
    *,
    dtype: npt.DTypeLike = np.float32,
    progress: Progress | None = None,
    allow_python_layers: bool = False,
    timeout: float | None = None,
) -> dict[str, npt.NDArray[Any]]:
    """Run the net in real Caffe (CPU) in a child process; return every declared blob.

    Blobs Caffe adds by itself (``*_split_*`` copies) are dropped. ``timeout``
    (seconds) bounds the forward pass.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''
        ... layer { name: "data" type: "Input" top: "data"
        ...         input_param { shape { dim: 1 dim: 3 } } }
        ... layer { name: "py" type: "Python" bottom: "data" top: "out"
        ...         python_param { module: "my_layers" layer: "MyLayer" } }
        ... ''')
        >>> run(net, {})  # refused before Caffe is even looked for  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        bnfuse.errors.UnsupportedLayerError: <prototxt bytes>: Python layer 'py' would import ...
    """
    require_float32(NAME, dtype)
    net = as_net(net_or_paths)
    python = python_layers(net)
    if python and not allow_python_layers:
        raise UnsupportedLayerError(
            f"{net.prototxt_source}: Python layer {python[0]!r} would import and run code named "
            "by the prototxt inside Caffe; pass allow_python_layers=True "
            "(--allow-python-layers) if you trust it")
    if progress is not None:
        progress(0, 3, "pycaffe: checking import caffe")
    check_available()
    with tempfile.TemporaryDirectory(prefix="bnfuse-pycaffe-") as tmp:
        folder = Path(tmp)
        inputs_file = folder / "inputs.npz"
        output_file = folder / "output.npz"
        arrays = {name: np.ascontiguousarray(value, dtype=np.float32)
                  for name, value in inputs.items()}
        np.savez(inputs_file, **arrays)  # type: ignore[arg-type]
        with net_files(net_or_paths) as (prototxt, caffemodel):
            request = {"prototxt": str(prototxt),
                       "caffemodel": None if caffemodel is None else str(caffemodel),
                       "inputs": str(inputs_file), "output": str(output_file)}
            request_file = folder / "request.json"
            request_file.write_text(json.dumps(request), encoding="utf-8")
            if progress is not None:
                progress(1, 3, "pycaffe: forward")
            done = _launch([str(request_file)], timeout)
        if done.returncode == _EXIT_NO_CAFFE:
            raise BackendUnavailableError(
                f"the pycaffe backend needs Caffe's Python module ({_tail(done.stderr)}): "
                f"{_INSTALL}")
        if done.returncode != 0 or not output_file.exists():
            raise BnfuseError(
                f"{net.prototxt_source}: Caffe failed running the net "
                f"({_describe_exit(done.returncode)}): {_tail(done.stderr)}")
        with np.load(output_file) as data:
            values = {key[len("blob:"):]: np.array(data[key]) for key in data.files
                      if key.startswith("blob:")}
    keep = set(declared_blobs(net))
    if progress is not None:
        progress(3, 3, "pycaffe: done")
    return {name: value for name, value in values.items() if name in keep}


__all__ = ["NAME", "check_available", "run"]
