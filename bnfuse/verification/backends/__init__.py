"""Verification backends: run a net and return every blob's final value.

Every backend module exposes the same small interface::

    run(net_or_paths, inputs, *, dtype=np.float32, progress=None, **options)
        -> dict[str, numpy.ndarray]

``net_or_paths`` is a loaded :class:`bnfuse.net.Net` or a ``(prototxt, caffemodel)``
pair of paths (``caffemodel`` may be None); ``inputs`` maps input blob names to
arrays. The result maps blob names to their value after the forward pass (an
in-place blob holds its final value, as in Caffe's ``net.blobs``). A backend
returns only the blobs it can observe: OpenCV, for instance, cannot show the
outputs of layers it does not keep.

- ``numpy``: bnfuse's own reference executor (always available).
- ``opencv``: ``cv2.dnn.readNetFromCaffe`` (OpenCV 4.x, ``pip install "bnfuse[verify]"``).
- ``onnxruntime``: the net exported by bnfuse's ONNX exporter, run in ONNX Runtime
  (``pip install "bnfuse[verify]"``).
- ``pycaffe``: real Caffe, run in a child process so that a failed ``CHECK`` in
  Caffe cannot take the caller down with it.

This module imports no backend library: OpenCV and Caffe are imported only when a
backend actually runs, and ``_pycaffe_child`` must stay importable without the rest
of bnfuse's machinery being touched.

Example:
    >>> from bnfuse.verification.backends import BACKENDS, get_backend
    >>> BACKENDS
    ('numpy', 'opencv', 'onnxruntime', 'pycaffe')
    >>> callable(get_backend("numpy"))
    True
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Union

import numpy as np
import numpy.typing as npt

from bnfuse.errors import BnfuseError

if TYPE_CHECKING:
    from bnfuse.net import Net

#: A net given to a backend: a loaded Net, or ``(prototxt, caffemodel-or-None)`` paths.
NetOrPaths = Union[
    "Net", tuple[str | os.PathLike[str], str | os.PathLike[str] | None]]

#: ``progress(done, total, what)``: how far a long run has got (the CLI draws it).
Progress = Callable[[int, int, str], None]

from bnfuse.verification import BACKENDS  # noqa: E402 -- the one list, importable alone


class BackendRun(Protocol):
    """The signature every backend's ``run`` function has.

    Example:
        >>> run: BackendRun = get_backend("numpy")
    """

    def __call__(
        self,
        net_or_paths: NetOrPaths,
        inputs: Mapping[str, npt.ArrayLike],
        *,
        dtype: npt.DTypeLike = np.float32,
        progress: Progress | None = None,
        allow_python_layers: bool = False,
    ) -> dict[str, npt.NDArray[Any]]:
        """Run the net on ``inputs`` and return blob name -> final value."""


def get_backend(name: str) -> BackendRun:
    """Return the ``run`` function of the backend called ``name``.

    The backend's module is imported here, not the library behind it (OpenCV,
    Caffe), which is imported only when ``run`` is called.

    Example:
        >>> get_backend("opencv").__module__
        'bnfuse.verification.backends.opencv_backend'
    """
    if name == "numpy":
        from bnfuse.verification.backends import numpy_backend

        return numpy_backend.run
    if name == "opencv":
        from bnfuse.verification.backends import opencv_backend

        return opencv_backend.run
    if name == "onnxruntime":
        from bnfuse.verification.backends import onnxruntime_backend

        return onnxruntime_backend.run
    if name == "pycaffe":
        from bnfuse.verification.backends import pycaffe_backend

        return pycaffe_backend.run
    raise BnfuseError(f"unknown verification backend {name!r}; choose one of {', '.join(BACKENDS)}")


def as_net(net_or_paths: NetOrPaths) -> Net:
    """Load ``(prototxt, caffemodel)`` paths into a Net; a Net is returned as it is.

    Example:
        >>> import bnfuse
        >>> net = as_net((bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel")))
        >>> len(net.layers), as_net(net) is net
        (12, True)
    """
    from bnfuse.net import Net, load

    if isinstance(net_or_paths, Net):
        return net_or_paths
    if isinstance(net_or_paths, tuple) and len(net_or_paths) == 2:
        prototxt, caffemodel = net_or_paths
        return load(prototxt, caffemodel)
    raise BnfuseError(
        "expected a loaded Net or a (prototxt, caffemodel) pair, "
        f"not {type(net_or_paths).__name__}")


@contextmanager
def net_files(net_or_paths: NetOrPaths) -> Iterator[tuple[Path, Path | None]]:
    """Yield ``(prototxt, caffemodel)`` files holding the net, for backends that read files.

    Paths are passed through unchanged; an unedited Net read from files yields those
    files; any other Net (edited, or read from bytes) is saved to a temporary folder
    that is removed afterwards.

    Example:
        >>> import bnfuse
        >>> paths = bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel")
        >>> with net_files(bnfuse.load(*paths)) as (prototxt, caffemodel):
        ...     print(prototxt.name, caffemodel.name)  # unedited: its own files
        example.prototxt example.caffemodel
        >>> with net_files(bnfuse.fold(*paths).net) as (prototxt, caffemodel):
        ...     print(prototxt.name, caffemodel.name, prototxt.exists())  # edited: saved
        net.prototxt net.caffemodel True
        >>> prototxt.exists()  # the temporary folder is gone
        False
    """
    from bnfuse.net import Net, save

    if not isinstance(net_or_paths, Net):
        prototxt, caffemodel = net_or_paths
        yield Path(prototxt), (None if caffemodel is None else Path(caffemodel))
        return
    net = net_or_paths
    has_weights = any(layer.blobs for layer in net.layers)
    if (not net.edited and net.prototxt_path is not None
            and (net.caffemodel_path is not None or not has_weights)):
        yield net.prototxt_path, net.caffemodel_path
        return
    with tempfile.TemporaryDirectory(prefix="bnfuse-verify-") as tmp:
        prototxt_out = Path(tmp) / "net.prototxt"
        caffemodel_out = Path(tmp) / "net.caffemodel" if has_weights else None
        save(net, prototxt_out, caffemodel_out)
        yield prototxt_out, caffemodel_out


def declared_blobs(net: Net) -> list[str]:
    """Every blob name the net's layers write, in order of first appearance.

    Backends use it to drop blobs the user never declared (Caffe's automatic
    ``*_split_*`` copies).

    Example:
        >>> import bnfuse
        >>> declared_blobs(bnfuse.load(bnfuse.example_path("prototxt")))
        ['data', 'conv1', 'pool1', 'conv2', 'conv2/bn', 'conv2/scale', 'fc', 'prob']
    """
    seen: dict[str, None] = {}
    for layer in net.layers:
        for name in layer.tops:
            seen.setdefault(name, None)
    return list(seen)


def python_layers(net: Net) -> list[str]:
    """Names of the net's ``Python`` layers (their code would run inside the backend).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''
        ... layer { name: "data" type: "Input" top: "data"
        ...         input_param { shape { dim: 1 dim: 3 } } }
        ... layer { name: "rpn-data" type: "Python" bottom: "data" top: "rpn"
        ...         python_param { module: "rpn.anchor_target_layer" } }
        ... ''')
        >>> python_layers(net)
        ['rpn-data']
    """
    return [layer.name for layer in net.layers if layer.type == "Python"]


def require_float32(backend: str, dtype: npt.DTypeLike) -> None:
    """Refuse a working dtype other than float32 for a runtime that has no other.

    Example:
        >>> require_float32("opencv", np.float64)
        Traceback (most recent call last):
        ...
        bnfuse.errors.BnfuseError: the opencv backend computes in float32 only, not float64
    """
    if np.dtype(dtype) != np.dtype(np.float32):
        raise BnfuseError(f"the {backend} backend computes in float32 only, not {np.dtype(dtype)}")


__all__ = [
    "BACKENDS",
    "BackendRun",
    "NetOrPaths",
    "Progress",
    "as_net",
    "declared_blobs",
    "get_backend",
    "net_files",
    "python_layers",
    "require_float32",
]
