"""The numpy backend: bnfuse's reference executor, always available.

It computes in float32 (like Caffe's CPU layers) or float64, and sees every blob,
including each in-place blob's final value.

Example:
    >>> import bnfuse
    >>> from bnfuse.verification.backends.numpy_backend import run
    >>> net = bnfuse.load(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
    >>> image = np.random.default_rng(0).standard_normal((1, 3, 32, 32))
    >>> blobs = run(net, {"data": image}, dtype=np.float64)
    >>> blobs["conv1"].shape, blobs["prob"].dtype  # conv1: its final (ReLU) value
    ((1, 16, 32, 32), dtype('float64'))
    >>> bool(blobs["conv1"].min() >= 0)
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from bnfuse.verification.backends import NetOrPaths, Progress, as_net

NAME = "numpy"


def run(
    net_or_paths: NetOrPaths,
    inputs: Mapping[str, npt.ArrayLike],
    *,
    dtype: npt.DTypeLike = np.float32,
    progress: Progress | None = None,
    allow_python_layers: bool = False,
) -> dict[str, npt.NDArray[Any]]:
    """Run the net with the numpy executor; return every blob's final value.

    ``allow_python_layers`` is accepted for interface symmetry: the executor never
    imports a Python layer's module, it raises
    :class:`~bnfuse.errors.UnsupportedLayerError` on one.

    Example:
        >>> import bnfuse
        >>> paths = (bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
        >>> x = np.random.default_rng(0).standard_normal((1, 3, 32, 32))
        >>> steps = []
        >>> blobs = run(paths, {"data": x}, progress=lambda done, total, what: steps.append(what))
        >>> blobs["prob"].shape, round(float(blobs["prob"].sum()), 4)
        ((1, 10), 1.0)
        >>> steps[:3], len(steps)  # one progress call per layer
        (['data', 'conv1', 'conv1/bn'], 12)
    """
    from bnfuse.verification.executor import forward

    del allow_python_layers  # nothing to allow: the executor cannot run them anyway
    net = as_net(net_or_paths)
    total = len(net.layers)
    done = 0

    def observer(layer: Any, tops: Mapping[str, Any]) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, layer.name)

    return forward(net, inputs, dtype=dtype, observer=observer)


__all__ = ["NAME", "run"]
