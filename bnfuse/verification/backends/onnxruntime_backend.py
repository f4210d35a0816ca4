"""The ONNX Runtime backend: the net exported by bnfuse's ONNX exporter, run in ORT.

An independent runtime now that OpenCV 5 has dropped its Caffe importer: bnfuse writes
the graph (:mod:`bnfuse.export._onnx`, Caffe's arithmetic spelled in ONNX operators),
ONNX Runtime computes it with its own kernels.

- Every Caffe blob's final version is a graph output, so every blob is compared (an
  in-place blob holds its final value, as in Caffe).
- ONNX Runtime's graph optimisations are off: they would fuse BatchNormalization into
  the convolutions and the run would no longer compute each layer as Caffe does.
- The net is exported as it is (no folding): a folded net is compared as folded.
- ONNX Runtime computes in float32 here; a layer the exporter cannot write raises
  :class:`~bnfuse.errors.UnsupportedLayerError` naming every such layer type.

Needs ``onnx`` and ``onnxruntime``: ``pip install "bnfuse[verify]"``.

Example:
    >>> from bnfuse.verification.backends import get_backend
    >>> get_backend("onnxruntime") is run
    True
    >>> run(("any.prototxt", None), {}, dtype=np.float64)  # checked before ORT is needed
    Traceback (most recent call last):
    bnfuse.errors.BnfuseError: the onnxruntime backend computes in float32 only, not float64
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from bnfuse.errors import BackendUnavailableError, BnfuseError
from bnfuse.io.guard import deferred_signals
from bnfuse.verification.backends import (
    NetOrPaths,
    Progress,
    as_net,
    python_layers,
    require_float32,
)

NAME = "onnxruntime"

_INSTALL = 'pip install "bnfuse[verify]" (onnx and onnxruntime)'


def import_onnxruntime() -> Any:
    """Import ``onnxruntime``, or raise :class:`~bnfuse.errors.BackendUnavailableError`.

    Example:
        >>> import_onnxruntime().__name__
        'onnxruntime'
    """
    try:
        # Native threads inherit the signal mask of the thread that makes them: made with
        # the deferred signals blocked, ORT's threads never take a SIGINT/SIGTERM meant
        # for the main thread (which would defeat the deferral around a commit).
        with deferred_signals():
            import onnxruntime
    except ImportError:
        raise BackendUnavailableError(
            f"the onnxruntime backend needs ONNX Runtime: {_INSTALL}") from None
    return onnxruntime


def session(model: Any, *, optimize: bool = False) -> Any:
    """An ONNX Runtime CPU session for ``model`` (graph optimisations off unless asked).

    Example:
        >>> import bnfuse
        >>> from bnfuse.export._onnx import export_graph
        >>> net = bnfuse.load(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
        >>> [i.name for i in session(export_graph(net).model).get_inputs()]
        ['data']
    """
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 3
    try:
        with deferred_signals():  # its thread pool inherits the mask (see above)
            return ort.InferenceSession(model.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types
        raise BnfuseError(f"ONNX Runtime refused the exported model: {exc}") from None


def run(
    net_or_paths: NetOrPaths,
    inputs: Mapping[str, npt.ArrayLike],
    *,
    dtype: npt.DTypeLike = np.float32,
    progress: Progress | None = None,
    allow_python_layers: bool = False,
) -> dict[str, npt.NDArray[Any]]:
    """Export the net to ONNX, run it in ONNX Runtime, return every blob's final value.

    Inputs not given are seeded as the numpy executor seeds them; ``allow_python_layers``
    is accepted for interface symmetry (the exporter writes no Python layer).

    Example:
        >>> import bnfuse
        >>> from bnfuse.verification.backends import numpy_backend
        >>> paths = (bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
        >>> data = {"data": np.random.default_rng(0).standard_normal((1, 3, 32, 32))}
        >>> blobs, reference = run(paths, data), numpy_backend.run(paths, data)
        >>> sorted(blobs) == sorted(reference)
        True
        >>> bool(np.allclose(blobs["prob"], reference["prob"], atol=1e-6))
        True
    """
    from bnfuse.export._onnx import export_graph
    from bnfuse.verification.inputs import input_layer_shapes, seeded_inputs

    del allow_python_layers
    require_float32(NAME, dtype)
    import_onnxruntime()
    net = as_net(net_or_paths)
    if python_layers(net):
        raise BnfuseError(f"{net.prototxt_source}: Python layers cannot run in ONNX Runtime")
    given = {name: np.ascontiguousarray(value, dtype=np.float32)
             for name, value in inputs.items()}
    if progress is not None:
        progress(0, 2, "onnxruntime: export")
    exported = export_graph(net, input_shapes={k: v.shape for k, v in given.items()},
                            every_blob=True)
    missing = {name: shape for name, shape in
               input_layer_shapes(net.layers, {k: v.shape for k, v in given.items()},
                                  required=False).items()
               if name not in given and name in exported.inputs}
    feed = {**given, **seeded_inputs(missing, 0, np.float32)}
    for name in exported.inputs:
        if name not in feed:
            raise BnfuseError(f"no value for input {name!r} of the net")
    sess = session(exported.model)
    if progress is not None:
        progress(1, 2, "onnxruntime: forward")
    names = [o.name for o in sess.get_outputs()]
    try:
        values = sess.run(names, {name: feed[name] for name in exported.inputs})
    except Exception as exc:  # ORT raises its own exception types
        raise BnfuseError(f"ONNX Runtime failed to run the exported model: {exc}") from None
    by_value = dict(zip(names, values, strict=True))
    result: dict[str, npt.NDArray[Any]] = dict(given)
    for blob, value in exported.blob_values.items():
        if value in by_value:
            result[blob] = np.asarray(by_value[value])
        elif value in feed:
            result[blob] = feed[value]
    if progress is not None:
        progress(2, 2, "onnxruntime: done")
    return result


__all__ = ["NAME", "import_onnxruntime", "run", "session"]
