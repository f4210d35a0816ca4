"""The OpenCV backend: ``cv2.dnn.readNetFromCaffe``, an independent second implementation.

What it can compare, and what it cannot:

- OpenCV addresses a layer's output by the **layer name**, not by the blob name,
  and only the layer's first output. For each blob the Caffe net writes, this
  backend asks for the output of the *last* layer that writes it, which is the
  blob's final value in Caffe's sense (an in-place blob holds its final value).
  Blobs whose final writer has several tops (``Slice``) are reported only for the
  first top; blobs of layers OpenCV removes or renames while importing (the
  ``Input`` layer, whose values are the inputs anyway) are not reported.
- OpenCV normally fuses BatchNorm, Scale and activations into convolutions. This
  backend turns that off (``enableFusion(False)``): OpenCV 4.x's own fusion of
  BatchNorm + Scale into a *grouped* Deconvolution is wrong (golden case
  ``deconv_grouped``: max abs error 2.5 against real Caffe with fusion, 5e-7
  without), and a reference must compute each layer as Caffe does. Winograd
  convolutions are off too (``enableWinograd(False)``, where the OpenCV release has
  it): they round differently from Caffe's direct convolution (ResNet-101: 4.6e-3
  relative with Winograd, 9e-4 without), noise that would hide real errors.
- Anything OpenCV refuses (layer types its importer does not know, such as ``Python``
  layers and most fork layers; a shape it cannot handle, such as an input of 40 axes)
  raises ``cv2.error``, which becomes one line in an
  :class:`~bnfuse.errors.UnsupportedLayerError` naming the prototxt, the stage and
  OpenCV's reason. OpenCV's own log lines are silenced while it runs (its log level is
  restored afterwards), so nothing but bnfuse's message reaches stderr.
- OpenCV ignores ``inner_product_param.transpose`` (it reads the weights as
  ``(N, K)`` regardless); nets using it are refused rather than miscomputed.
- OpenCV computes in float32 only.

OpenCV 5 removed ``readNetFromCaffe``; the ``verify`` extra pins ``opencv-python-headless<5``
and this backend refuses 5.x with a clear message.

Example:
    >>> from bnfuse.verification.backends import get_backend
    >>> from bnfuse.verification.backends.opencv_backend import run
    >>> get_backend("opencv") is run  # what verify(..., backend="opencv") calls
    True
    >>> run(("any.prototxt", None), {}, dtype=np.float64)  # checked before OpenCV is needed
    Traceback (most recent call last):
    bnfuse.errors.BnfuseError: the opencv backend computes in float32 only, not float64
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt

from bnfuse._text import escape_user_text, quote_user_text
from bnfuse.errors import BackendUnavailableError, BnfuseError, UnsupportedLayerError
from bnfuse.layertypes.shapes import is_input_layer
from bnfuse.verification.backends import (
    NetOrPaths,
    Progress,
    as_net,
    net_files,
    require_float32,
)

NAME = "opencv"

_INSTALL = 'pip install "bnfuse[verify]" (OpenCV 4.x)'


def import_cv2() -> Any:
    """Import OpenCV, checking that it is a 4.x release with ``readNetFromCaffe``.

    Raises :class:`~bnfuse.errors.BackendUnavailableError` with install advice
    when OpenCV is missing, too new or built without the DNN module.

    Example:
        >>> try:
        ...     cv2 = import_cv2()
        ... except BackendUnavailableError:  # the message says what to install
        ...     cv2 = None  # verify with backend="numpy" instead
        >>> cv2 is None or cv2.__version__.startswith("4.")
        True
    """
    try:
        import cv2
    except ImportError:
        raise BackendUnavailableError(
            f"the opencv backend needs OpenCV: {_INSTALL}") from None
    version = str(getattr(cv2, "__version__", "0"))
    try:
        major = int(version.split(".", maxsplit=1)[0])
    except ValueError:
        major = 0
    if major >= 5:
        raise BackendUnavailableError(
            f"OpenCV {version} removed readNetFromCaffe; the opencv backend needs 4.x: "
            f'pip install "opencv-python-headless<5"')
    dnn = getattr(cv2, "dnn", None)
    if dnn is None or not hasattr(dnn, "readNetFromCaffe"):
        raise BackendUnavailableError(
            f"OpenCV {version} has no dnn.readNetFromCaffe; {_INSTALL}")
    return cv2


def _one_line(exc: BaseException) -> str:
    """OpenCV's reason from a ``cv2.error``: its code, assertion or overload complaint."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    # "OpenCV(4.x) file.cpp:12: error: (-215:Assertion failed) cond in function 'f'",
    # then for wrong arguments "> Overload resolution failed:" and "> - reason" lines.
    head = lines[0]
    match = re.search(r"error: \((-?\d+):([^)]*)\)\s*(.*)", head)
    reason = f"{match.group(2)}: {match.group(3)}".rstrip(": ") if match else head
    bullets = [found.group(1) for line in lines[1:]
               if (found := re.match(r">\s*-\s*(.+)", line)) is not None]
    if bullets:
        reason += f": {bullets[0]}"
    return escape_user_text(reason, 300)


@contextmanager
def _opencv_step(cv2: Any, source: str, stage: str) -> Iterator[None]:
    """Run one step of OpenCV quietly; a ``cv2.error`` becomes one line naming the file."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    level = None
    if logging is not None and hasattr(logging, "getLogLevel"):
        level = logging.getLogLevel()
        logging.setLogLevel(getattr(logging, "LOG_LEVEL_SILENT", 0))
    try:
        yield
    except cv2.error as exc:
        raise UnsupportedLayerError(f"{source}: OpenCV {stage}: {_one_line(exc)}; verify "
                                    "this net with the numpy backend", path=source) from None
    finally:
        if level is not None and logging is not None:
            logging.setLogLevel(level)


def run(
    net_or_paths: NetOrPaths,
    inputs: Mapping[str, npt.ArrayLike],
    *,
    dtype: npt.DTypeLike = np.float32,
    progress: Progress | None = None,
    allow_python_layers: bool = False,
) -> dict[str, npt.NDArray[Any]]:
    """Run the net with OpenCV's DNN module; return the final value of every observable blob.

    ``allow_python_layers`` is accepted for interface symmetry; OpenCV cannot run
    Python layers in any case.

    Example:
        >>> import bnfuse
        >>> from bnfuse.verification.backends import numpy_backend
        >>> paths = (bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
        >>> data = {"data": np.random.default_rng(0).standard_normal((1, 3, 32, 32))}
        >>> reference = numpy_backend.run(paths, data)
        >>> try:
        ...     blobs = run(paths, data)
        ... except BackendUnavailableError:  # no OpenCV 4.x here: use the reference
        ...     blobs = reference
        >>> sorted(blobs) == sorted(reference)
        True
        >>> bool(np.allclose(blobs["prob"], reference["prob"], atol=1e-5))
        True
    """
    from bnfuse.layertypes.shapes import infer_shapes

    del allow_python_layers
    require_float32(NAME, dtype)
    cv2 = import_cv2()
    net = as_net(net_or_paths)
    for layer in net.layers:
        if layer.type == "InnerProduct" and layer.param.inner_product_param.transpose:
            raise BnfuseError(
                f"{net.prototxt_source}: layer {layer.name!r} uses InnerProduct transpose: true, "
                "which OpenCV ignores; verify this net with the numpy backend")
    given = {name: np.ascontiguousarray(value, dtype=np.float32)
             for name, value in inputs.items()}
    # The last writer of each blob holds its final value; ask OpenCV for that layer.
    final_writer: dict[str, tuple[str, int]] = {}
    for layer in net.layers:
        if is_input_layer(layer):
            continue
        for index, top in enumerate(layer.tops):
            final_writer[top] = (layer.name, index)
    if progress is not None:
        progress(0, 2, "opencv: import")
    source = escape_user_text(net.prototxt_source)
    with net_files(net_or_paths) as (prototxt, caffemodel), \
            _opencv_step(cv2, source, "cannot import the net"):
        files = [str(prototxt)] + ([] if caffemodel is None else [str(caffemodel)])
        cvnet = cv2.dnn.readNetFromCaffe(*files)
    known = set(cvnet.getLayerNames())
    wanted = [(blob, layer) for blob, (layer, index) in final_writer.items()
              if index == 0 and layer in known and blob not in given]
    with _opencv_step(cv2, source, "cannot configure the net"):
        _configure(cv2, cvnet)
    for name, value in given.items():
        with _opencv_step(cv2, source, f"refuses input {quote_user_text(name)}"):
            cvnet.setInput(value, name)
    if progress is not None:
        progress(1, 2, "opencv: forward")
    with _opencv_step(cv2, source, "forward pass failed"):
        outputs = cvnet.forward([layer for _, layer in wanted]) if wanted else []
    # OpenCV sometimes drops Caffe's trailing singleton axes (InnerProduct gives (N, C));
    # give such values Caffe's shape so a shape difference means a real difference.
    try:
        expected = infer_shapes(net, {k: v.shape for k, v in given.items()},
                                stop_at_unknown=True)
    except BnfuseError:
        expected = {}
    result: dict[str, npt.NDArray[Any]] = dict(given)
    for (blob, _), value in zip(wanted, outputs, strict=True):
        array = np.array(value, dtype=np.float32)
        shape = expected.get(blob)
        if shape is not None and array.shape != shape and array.size == int(np.prod(shape)):
            array = array.reshape(shape)
        result[blob] = array
    if progress is not None:
        progress(2, 2, "opencv: done")
    return result


def _configure(cv2: Any, cvnet: Any) -> None:
    """Compute each layer as Caffe does: no fusion, no Winograd, the plain CPU path."""
    # Fusion miscomputes some nets, Winograd rounds differently (module docstring).
    cvnet.enableFusion(False)
    if hasattr(cvnet, "enableWinograd"):
        cvnet.enableWinograd(False)
    cvnet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cvnet.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)


__all__ = ["NAME", "import_cv2", "run"]
