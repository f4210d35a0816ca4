"""``bnfuse.to_onnx``: fold a Caffe net (by default) and export it as an ONNX model.

This is the only exporter module that imports :mod:`bnfuse.folding` (inside
:func:`to_onnx`); the graph builder :mod:`bnfuse.export._onnx` does not, so the ONNX
Runtime verification backend can use it while staying independent of the folds.

Example:
    >>> import bnfuse, tempfile, pathlib
    >>> paths = bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel")
    >>> model = bnfuse.to_onnx(paths)  # folded first: no BatchNormalization left
    >>> sorted({node.op_type for node in model.graph.node})
    ['Conv', 'Flatten', 'Gemm', 'MaxPool', 'Relu', 'Softmax']
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "example.onnx"
    >>> _ = bnfuse.to_onnx(paths, out, fold=False, opset=13)
    >>> import onnx
    >>> onnx.load(out).opset_import[0].version
    13
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bnfuse._checks import require_destination, require_net_or_paths
from bnfuse.errors import BnfuseError, OutputError
from bnfuse.export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from bnfuse.export._onnx import export_graph
from bnfuse.io.atomic import StrPath, atomic_write
from bnfuse.net import Net
from bnfuse.verification.backends import NetOrPaths
from bnfuse.verification.compare import Inputs, VerifyResult

#: Protobuf cannot serialise a message of 2 GiB or more (ONNX's external data is not used).
_MAX_MODEL_BYTES = 2**31 - 1


def to_onnx(
    net: NetOrPaths,
    path: StrPath | None = None,
    *,
    fold: bool = True,
    opset: int = DEFAULT_OPSET,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> Any:
    """The net as an ``onnx.ModelProto`` (float32), folded first unless ``fold=False``.

    ``net`` is a loaded :class:`~bnfuse.net.Net` (left unchanged: a copy is folded) or
    a ``(prototxt, caffemodel)`` pair of paths. ``opset`` is one of
    ``MIN_OPSET``..``MAX_OPSET`` (13 to 21). ``input_shapes`` overrides the shapes the
    input layers declare. When ``path`` is given the model is also written there,
    through bnfuse's guarded writer (never over one of the net's own files).

    The model passes ``onnx.checker.check_model(model, full_check=True)``; the final
    version of each Caffe blob keeps its name (see :mod:`bnfuse.export._onnx`). Layer
    types that cannot be exported are named together in one
    :class:`~bnfuse.errors.UnsupportedLayerError`; without ``onnx`` installed,
    :class:`~bnfuse.errors.BackendUnavailableError` says what to install.

    Example: see the module docstring.
    """
    require_net_or_paths(net, "to_onnx", "net")
    require_destination(path, "to_onnx", "path", optional=True)
    if not isinstance(fold, bool):
        raise TypeError(f"to_onnx: fold must be a bool, not {type(fold).__name__}")
    if not isinstance(opset, int) or isinstance(opset, bool):
        raise TypeError(f"to_onnx: opset must be an int, not {type(opset).__name__}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise BnfuseError(f"to_onnx: opset {opset} is not supported: bnfuse writes opsets "
                          f"{MIN_OPSET} to {MAX_OPSET}")
    from bnfuse.verification.backends import as_net

    loaded = as_net(net)
    _refuse_train_view(loaded)
    sources = [p for p in (loaded.prototxt_path, loaded.caffemodel_path) if p is not None]
    if fold:
        from bnfuse.folding.api import fold_net

        # Folding works in place: fold a copy, never the caller's Net.
        loaded = fold_net(loaded.copy() if loaded is net else loaded).net
    model = export_graph(loaded, opset=opset, input_shapes=input_shapes).model
    if path is not None:
        save_onnx(model, path, inputs=sources)
    return model


def _refuse_train_view(net: Net) -> None:
    # Its layers still carry their TRAIN-only rules, and its data layers feed nothing.
    if net.phase != "TEST":
        raise BnfuseError(f"to_onnx: {net.prototxt_source} was loaded with phase={net.phase!r}; "
                          "export its deploy form (bnfuse.deploy.to_deploy(net) first)")


def verify_onnx(
    net: NetOrPaths,
    model: Any,
    *,
    exported: NetOrPaths | None = None,
    inputs: Inputs | None = None,
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
) -> VerifyResult:
    """Compare an ONNX model run in ONNX Runtime with bnfuse's executor on ``net``.

    ``net`` is the reference (the Caffe net as loaded); ``exported`` is the net the model
    was written from (the folded one; default ``net``), whose layers say which blobs
    moved. Every output of the model named like a blob of ``net`` is compared with the
    tolerance :func:`bnfuse.verify` uses: calibrated on ``net``'s own noise unless
    ``rtol`` is given. Inputs are seeded from ``seed`` unless given.

    Example:
        >>> import bnfuse
        >>> paths = bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel")
        >>> result = verify_onnx(paths, bnfuse.to_onnx(paths))
        >>> result.passed, result.backend, [blob.name for blob in result.blobs]
        (True, 'onnxruntime', ['prob'])
    """
    from dataclasses import replace

    import numpy as np

    from bnfuse.verification._given import resolve_inputs
    from bnfuse.verification.backends import as_net
    from bnfuse.verification.backends.numpy_backend import run as run_numpy
    from bnfuse.verification.backends.onnxruntime_backend import session
    from bnfuse.verification.calibrate import measure_noise
    from bnfuse.verification.compare import compare_runs, default_tolerances

    reference = as_net(net)
    written = reference if exported is None else as_net(exported)
    given = resolve_inputs(reference, inputs, seed, np.float32)
    values_a = run_numpy(reference, given)
    tolerances = replace(default_tolerances(np.float32, rtol, atol), calibrated=rtol is None)
    noise = (measure_noise(reference, given, dtype=np.float32, seed=seed, baseline=values_a)
             if tolerances.calibrated else None)
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    feed = {i.name: np.ascontiguousarray(given[i.name], dtype=np.float32)
            for i in sess.get_inputs()}
    values_b = dict(zip(names, sess.run(names, feed), strict=True))
    # The model shows its outputs only: compare those (the inputs are fed identically).
    values_a = {name: value for name, value in values_a.items()
                if name in values_b or name in given}
    return compare_runs(reference.layers, written.layers, values_a, values_b,
                        tolerances=tolerances, backend="onnxruntime", skip=list(given),
                        noise=noise)


def save_onnx(model: Any, path: StrPath, *, inputs: Sequence[StrPath] = ()) -> None:
    """Write an ONNX model to ``path`` through bnfuse's guarded writer (atomic replace).

    ``inputs`` are files that must not be overwritten (the net's own files).

    Example:
        >>> import bnfuse, tempfile, pathlib
        >>> model = bnfuse.to_onnx((bnfuse.example_path("prototxt"),
        ...                         bnfuse.example_path("caffemodel")))
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "m.onnx"
        >>> save_onnx(model, out)
        >>> out.stat().st_size == model.ByteSize()
        True
    """
    size = int(model.ByteSize())
    if size > _MAX_MODEL_BYTES:
        raise OutputError(f"{path}: the ONNX model would be {size} bytes; protobuf cannot "
                          "write a message of 2 GiB or more")
    with atomic_write(path, inputs=inputs) as out:
        out.write(model.SerializeToString())


__all__ = ["MAX_OPSET", "MIN_OPSET", "save_onnx", "to_onnx", "verify_onnx"]
