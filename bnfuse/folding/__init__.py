"""Folding BatchNorm-like layers into their neighbours.

The package is split by what each module knows:

- :mod:`bnfuse.folding.arith` -- the arithmetic, on numpy arrays only (per-channel
  affine maps, folding them into weights and biases);
- :mod:`bnfuse.folding.variants` -- what each BatchNorm flavour's blobs mean,
  turned into one per-channel affine map;
- ``bnfuse.folding.planner`` -- which folds are exact on a given graph;
- ``bnfuse.folding.rewrite`` -- applying a plan to a net;
- ``bnfuse.folding.report`` -- telling the user what happened.

Example:
    >>> from bnfuse.folding.arith import Affine
    >>> Affine.identity(2).scale.tolist()
    [1.0, 1.0]
"""
