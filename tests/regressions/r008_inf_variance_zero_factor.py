"""A BatchNorm with factor 0 and an infinite variance value."""

from __future__ import annotations

DESCRIPTION = ("BatchNorm blobs [mean, var with +inf, factor 0]: Caffe's rule k = 0 for a zero "
               "factor computed inf * 0, and numpy printed 'RuntimeWarning: invalid value "
               "encountered in multiply' (an exception under -W error)")
FOUND_BY = "fuzz.run seed 9 input 1350 (golden/scale_factor_zero; raw: float := 0x7f800000)"
FIXED_IN = "bnfuse/fold/arith.py caffe_batchnorm_stats: the scaling runs under np.errstate"
EXPECT = "ok"

PROTOTXT = b"""layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 2 dim: 2 dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
"""


def build() -> tuple[bytes, bytes | None]:
    """Conv weights, then BatchNorm blobs [0, 0], [1, inf], [0]."""
    from bnfuse.proto import NetParameter

    net = NetParameter()
    conv = net.layer.add(name="conv", type="Convolution")
    for shape in ((2, 2, 1, 1), (2,)):
        blob = conv.blobs.add()
        blob.shape.dim.extend(shape)
        blob.data.extend([1.0] * (4 if len(shape) == 4 else 2))
    bn = net.layer.add(name="bn", type="BatchNorm")
    for values in ([0.0, 0.0], [1.0, float("inf")], [0.0]):
        blob = bn.blobs.add()
        blob.shape.dim.append(len(values))
        blob.data.extend(values)
    return PROTOTXT, net.SerializeToString()
