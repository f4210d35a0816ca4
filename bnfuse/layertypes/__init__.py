"""What bnfuse knows about Caffe layer types, written once for every part of bnfuse.

This package is neutral ground: the loader (:mod:`bnfuse.net`), the folds
(:mod:`bnfuse.folding`) and the verifier (:mod:`bnfuse.verification`) all ask it, and it
imports none of them.

- :mod:`bnfuse.layertypes.batchnorm`: the one decision of what a BatchNorm-like layer is
  (its dialect: blob roles, eps, TEST-phase meaning, foldability).
"""
