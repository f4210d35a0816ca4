"""Child-process side of the pycaffe backend: run one net in real Caffe, write every blob.

Launched as ``python -m bnfuse.verification.backends._pycaffe_child REQUEST.json`` by
:mod:`bnfuse.verification.backends.pycaffe_backend`. Caffe aborts the whole process on a
failed ``CHECK``, so it runs here, where an abort costs only this process.

The request is a JSON object::

    {"prototxt": "...", "caffemodel": "..." or null,
     "inputs": "in.npz", "output": "out.npz"}

``inputs`` holds one array per input blob (keyed by blob name); ``output`` receives
one array per blob of ``net.blobs`` after ``net.forward()``, keyed ``blob:<name>``.

``--probe`` only checks that ``import caffe`` works. Exit codes: 0 success,
3 caffe cannot be imported (the last stderr line says why), 2 bad request,
anything else (or a signal) a failure inside Caffe.

This module itself imports nothing from bnfuse beyond the package ``__init__`` files
(which stay light): the child should do as little as possible besides calling Caffe.

Example:
    $ python -m bnfuse.verification.backends._pycaffe_child --probe && echo caffe works
"""

from __future__ import annotations

import json
import sys
from typing import Any

EXIT_BAD_REQUEST = 2
EXIT_NO_CAFFE = 3


def _import_caffe() -> Any:
    try:
        import caffe
    except Exception as exc:  # ImportError, or a broken build raising anything at import
        print(f"import caffe failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(EXIT_NO_CAFFE)
    return caffe


def _run(request: dict[str, Any]) -> None:
    import numpy as np

    caffe = _import_caffe()
    caffe.set_mode_cpu()
    prototxt = str(request["prototxt"])
    caffemodel = request.get("caffemodel")
    if caffemodel:
        net = caffe.Net(prototxt, str(caffemodel), caffe.TEST)
    else:
        net = caffe.Net(prototxt, caffe.TEST)
    with np.load(request["inputs"]) as data:
        inputs = {name: np.asarray(data[name], dtype=np.float32) for name in data.files}
    for name, value in inputs.items():
        if name not in net.blobs:
            print(f"input blob {name!r} is not a blob of the net", file=sys.stderr)
            sys.exit(EXIT_BAD_REQUEST)
        net.blobs[name].reshape(*value.shape)
    if hasattr(net, "reshape"):
        net.reshape()  # propagate the input shapes before data is written
    for name, value in inputs.items():
        net.blobs[name].data[...] = value
    net.forward()
    result = {f"blob:{name}": np.array(blob.data, copy=True) for name, blob in net.blobs.items()}
    np.savez(request["output"], **result)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``--probe`` or a request file; returns the exit code.

    Example:
        >>> main([])  # the usage goes to stderr
        2
        >>> main(["no-such-request.json"])  # unreadable request
        2
        >>> try:
        ...     code = main(["--probe"])  # 0 when caffe imports
        ... except SystemExit as exc:  # otherwise exits, saying why on stderr
        ...     code = exc.code
        >>> code in (0, EXIT_NO_CAFFE)
        True
    """
    args = sys.argv[1:] if argv is None else argv
    if args == ["--probe"]:
        _import_caffe()
        return 0
    if len(args) != 1:
        print("usage: python -m bnfuse.verification.backends._pycaffe_child "
              "(--probe | REQUEST.json)", file=sys.stderr)
        return EXIT_BAD_REQUEST
    try:
        with open(args[0], encoding="utf-8") as handle:
            request = json.load(handle)
    except (OSError, ValueError) as exc:
        print(f"cannot read request {args[0]}: {exc}", file=sys.stderr)
        return EXIT_BAD_REQUEST
    _run(request)
    return 0


if __name__ == "__main__":
    sys.exit(main())
