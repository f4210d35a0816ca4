"""Verification: run a net with Caffe's semantics in numpy and compare results.

``bnfuse.verify.shapes`` infers every blob's shape from the prototxt alone;
``bnfuse.verify.executor`` runs the TEST-phase forward pass in numpy, layer by
layer, with the arithmetic of BVLC Caffe's CPU layers.

Example:
    >>> from bnfuse.verify.executor import forward  # doctest: +SKIP
    >>> blobs = forward(net)                        # doctest: +SKIP
"""

from __future__ import annotations
