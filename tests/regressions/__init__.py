"""Inputs the fuzzer found to crash bnfuse, one module per finding (see ``README.md``)."""

from __future__ import annotations

#: A 2-channel 1x1 convolution followed by an in-place BatchNorm (r007, r008).
CONV_BN_PROTOTXT = b"""layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 2 dim: 2 dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
"""


def conv_bn_caffemodel(mean: list[float], variance: list[float], factor: float) -> bytes:
    """Weights for :data:`CONV_BN_PROTOTXT`: an all-ones conv, then the given BatchNorm blobs."""
    from bnfuse.proto import NetParameter

    net = NetParameter()
    conv = net.layer.add(name="conv", type="Convolution")
    for shape in ((2, 2, 1, 1), (2,)):
        blob = conv.blobs.add()
        blob.shape.dim.extend(shape)
        blob.data.extend([1.0] * (4 if len(shape) == 4 else 2))
    bn = net.layer.add(name="bn", type="BatchNorm")
    for values in (mean, variance, [factor]):
        blob = bn.blobs.add()
        blob.shape.dim.append(len(values))
        blob.data.extend(values)
    return net.SerializeToString()
