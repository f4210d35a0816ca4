"""A BatchNorm variance holding a signalling NaN (one flipped bit of a float)."""

from __future__ import annotations

import struct

DESCRIPTION = ("A float32 signalling NaN (0x7f800001) in a BatchNorm blob: casting it to "
               "float64 in the fold arithmetic made numpy emit 'RuntimeWarning: invalid value "
               "encountered in cast' on the user's stderr (an exception under -W error)")
FOUND_BY = "fuzz.run seed 8, long run at 10 min (a bit flip in a golden caffemodel)"
FIXED_IN = "bnfuse/fold/arith.py _vector: the cast runs under np.errstate(invalid='ignore')"
EXPECT = "ok"

PROTOTXT = b"""layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 2 dim: 2 dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
"""


def build() -> tuple[bytes, bytes | None]:
    """Conv weights, then a BatchNorm whose variance is [sNaN, 1]."""
    from bnfuse.proto import NetParameter

    net = NetParameter()
    conv = net.layer.add(name="conv", type="Convolution")
    for shape in ((2, 2, 1, 1), (2,)):
        blob = conv.blobs.add()
        blob.shape.dim.extend(shape)
        blob.data.extend([1.0] * (4 if len(shape) == 4 else 2))
    bn = net.layer.add(name="bn", type="BatchNorm")
    for values in ([0.0, 0.0], [1.0, 1.0], [1.0]):
        blob = bn.blobs.add()
        blob.shape.dim.append(len(values))
        blob.data.extend(values)
    data = bytearray(net.SerializeToString())
    # Replace the first variance value (1.0f) with the signalling NaN's bit pattern.
    one = struct.pack("<f", 1.0)
    variance_at = data.index(one + one, data.index(b"BatchNorm"))
    data[variance_at : variance_at + 4] = struct.pack("<I", 0x7F800001)
    return PROTOTXT, bytes(data)
