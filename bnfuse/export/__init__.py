"""Export of Caffe nets to other formats (ONNX), on bnfuse's own reading of Caffe.

:mod:`bnfuse.export._onnx` builds the ONNX graph from a net as it is and imports
neither ``onnx`` at import time nor :mod:`bnfuse.folding` (the ONNX Runtime
verification backend runs nets through it). :func:`bnfuse.to_onnx` is the public
wrapper: it folds first by default.
"""
