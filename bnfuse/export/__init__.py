"""Export of Caffe nets to other formats (ONNX), on bnfuse's own reading of Caffe.

:mod:`bnfuse.export._onnx` builds the ONNX graph from a net as it is and imports
neither ``onnx`` at import time nor :mod:`bnfuse.folding` (the ONNX Runtime
verification backend runs nets through it). :func:`bnfuse.to_onnx` is the public
wrapper: it folds first by default.
"""

#: The lowest opset the exporter writes (Softmax on one axis, Split/Clip/Pad by inputs).
MIN_OPSET = 13
#: The highest opset the exporter writes (the newest every supported ``onnx`` release knows).
MAX_OPSET = 21
#: The opset written unless another is asked for. (Here, where importing them loads
#: nothing else: ``bnfuse export --help`` shows them without numpy.)
DEFAULT_OPSET = 17
