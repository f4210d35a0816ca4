"""Run a net and get its blobs: :func:`forward`, the public face of bnfuse's executor.

The numpy executor (:mod:`bnfuse.verification.executor`) computes Caffe's TEST-phase
forward pass with the arithmetic of BVLC Caffe's CPU layers, and the fork layers bnfuse
knows; :func:`forward` runs it and keeps the blobs asked for, by name (the value the
name holds after the pass) or by :class:`~bnfuse.graph.BlobVersion` (one version of a
blob that in-place layers rewrite, from :meth:`bnfuse.Net.graph`).

Example:
    >>> import bnfuse
    >>> net = bnfuse.load(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
    >>> sorted(forward(net, blobs=["prob", "pool1"]))
    ['pool1', 'prob']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from bnfuse._checks import require_net, require_seed
from bnfuse.errors import BnfuseError, excerpt
from bnfuse.graph import BlobVersion, build_graph
from bnfuse.net import Net
from bnfuse.verification import executor

__all__ = ["forward"]

Array = npt.NDArray[Any]


def _wanted(net: Net, blobs: Iterable[str | BlobVersion]) -> dict[BlobVersion, str]:
    """The versions asked for, each with the key it is returned under."""
    if isinstance(blobs, (str, bytes)) or not isinstance(blobs, Iterable):
        raise TypeError("forward: blobs must be a list of blob names or BlobVersions, not "
                        f"{type(blobs).__name__}")
    graph = build_graph(net.layers)
    wanted: dict[BlobVersion, str] = {}
    for blob in blobs:
        if isinstance(blob, BlobVersion):
            if blob not in graph.versions_of(blob.name):
                raise BnfuseError(f"forward: blob version {excerpt(str(blob))} is not one of "
                                  "this net's (Net.graph() lists them)")
            wanted[blob] = str(blob)
        elif isinstance(blob, str):
            if not graph.versions_of(blob):
                raise BnfuseError(f"forward: the net has no blob named {excerpt(blob)}")
            wanted[graph.final_version(blob)] = blob
        else:
            raise TypeError("forward: each of blobs must be a blob name (str) or a "
                            f"BlobVersion, not {type(blob).__name__}")
    return wanted


def forward(
    net: Net,
    inputs: Mapping[str, npt.ArrayLike] | None = None,
    *,
    dtype: npt.DTypeLike = np.float32,
    blobs: Iterable[str | BlobVersion] | None = None,
    seed: int = 0,
) -> dict[str, Array]:
    """Run ``net``'s TEST-phase forward pass in numpy and return its blobs by name.

    ``inputs`` maps input blob names (the keys of :attr:`bnfuse.Net.inputs`) to arrays;
    an input not given is seeded standard-normal data from
    ``numpy.random.default_rng(seed)`` at its declared shape, drawn in the order the
    net declares its inputs (the data :func:`bnfuse.verify` feeds). A name that is no
    input of the net is refused (:class:`~bnfuse.errors.ModelMismatchError`), so a typo
    never becomes random data. Everything is computed in ``dtype``, ``numpy.float32``
    as Caffe does or ``numpy.float64``, with the weights cast to it.

    With ``blobs=None`` every blob name is returned with the value it holds after the
    pass (an in-place blob its final version, as Caffe's ``net.blobs``); the inputs
    are in it. ``blobs`` keeps only the blobs listed: a name gives the final value, a
    :class:`~bnfuse.graph.BlobVersion` the value of that version, returned under
    ``str(version)`` (``"conv1#0"``: the convolution's output before its in-place
    BatchNorm). Arrays may share memory (an identity layer's top is its bottom): treat
    them as read-only or copy them.

    Layers the executor cannot run raise :class:`~bnfuse.errors.UnsupportedLayerError`
    naming the layer (a ``Python`` layer's module is never imported); missing weights
    raise :class:`~bnfuse.errors.ModelMismatchError`.

    Example:
        >>> import bnfuse, numpy as np
        >>> net = bnfuse.load(b'''
        ... layer { name: "data" type: "Input" top: "data"
        ...         input_param { shape { dim: 1 dim: 3 } } }
        ... layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }
        ... layer { name: "sum" type: "Eltwise" bottom: "data" bottom: "data" top: "sum" }
        ... ''')
        >>> x = np.array([[-1.0, 0.5, 2.0]], np.float32)
        >>> out = bnfuse.forward(net, {"data": x})
        >>> out["data"].tolist(), out["sum"].tolist()
        ([[0.0, 0.5, 2.0]], [[0.0, 1.0, 4.0]])
        >>> before_relu = net.graph().versions_of("data")[0]
        >>> kept = bnfuse.forward(net, {"data": x}, blobs=["sum", before_relu])
        >>> sorted(kept), kept["data#0"].tolist()
        (['data#0', 'sum'], [[-1.0, 0.5, 2.0]])
        >>> bnfuse.forward(net, dtype=np.float64)["sum"].dtype  # seeded random input
        dtype('float64')
    """
    require_net(net, "forward")
    if inputs is not None and not isinstance(inputs, Mapping):
        raise TypeError("forward: inputs must be a mapping of blob name to array or None, "
                        f"not {type(inputs).__name__}")
    seed = require_seed(seed, "forward")
    if blobs is None:
        return executor.forward(net, inputs, dtype=dtype, seed=seed)
    wanted = _wanted(net, blobs)
    graph = build_graph(net.layers)
    found: dict[str, Array] = {}
    for index, (_, tops) in enumerate(executor.forward_steps(net, inputs, dtype=dtype,
                                                             seed=seed)):
        for version in graph.writes[index]:
            key = wanted.get(version)
            if key is not None:
                found[key] = tops[version.name]
    for version, key in wanted.items():
        # A fragment's open bottom: no layer writes it, the caller gave it.
        if version.producer is None and inputs is not None and version.name in inputs:
            found[key] = np.asarray(inputs[version.name], dtype=np.dtype(dtype))
    missing = [key for key in wanted.values() if key not in found]
    if missing:  # a blob no layer writes and no input gives: the executor refused it first
        raise BnfuseError(f"forward: no value for {excerpt(missing[0])}")
    return {key: found[key] for key in wanted.values()}
