"""Verification: run a net with Caffe's semantics in numpy and compare results.

``bnfuse.verification.executor`` runs the TEST-phase forward pass in numpy, layer by
layer, with the arithmetic of BVLC Caffe's CPU layers; the shapes it checks every layer
against come from ``bnfuse.layertypes.shapes``, which infers every blob's shape from the
prototxt alone. ``bnfuse.verification.inputs`` draws the seeded random inputs that every
check feeds; ``bnfuse.verification.compare`` (``verify``) compares two whole nets and
``bnfuse.verification.local`` only the layers that differ. Questions about the blob graph
(outputs, writers, depths) are answered by :mod:`bnfuse.graph`.

Example:
    >>> import bnfuse
    >>> from bnfuse.verification.executor import forward
    >>> from bnfuse.layertypes.shapes import infer_shapes
    >>> net = bnfuse.load(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
    >>> infer_shapes(net)["pool1"]
    (1, 16, 16, 16)
    >>> blobs = forward(net)  # "data" is seeded standard-normal noise
    >>> blobs["pool1"].shape
    (1, 16, 16, 16)
"""

from __future__ import annotations

#: Backend names accepted by :func:`bnfuse.verification.compare.verify`. Kept here, where
#: importing it loads nothing else: ``bnfuse --help`` lists them without numpy.
BACKENDS = ("numpy", "opencv", "onnxruntime", "pycaffe")
