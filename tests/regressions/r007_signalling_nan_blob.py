"""A BatchNorm variance holding a signalling NaN (one flipped bit of a float)."""

from __future__ import annotations

import struct

from tests.regressions import CONV_BN_PROTOTXT, conv_bn_caffemodel

DESCRIPTION = ("A float32 signalling NaN (0x7f800001) in a BatchNorm blob: casting it to "
               "float64 in the fold arithmetic made numpy emit 'RuntimeWarning: invalid value "
               "encountered in cast' on the user's stderr (an exception under -W error)")
FOUND_BY = "fuzz.run seed 8, long run at 10 min (a bit flip in a golden caffemodel)"
FIXED_IN = "bnfuse/folding/arith.py _vector: the cast runs under np.errstate(invalid='ignore')"
EXPECT = "ok"


def build() -> tuple[bytes, bytes | None]:
    """Conv weights, then a BatchNorm whose variance is [sNaN, 1]."""
    data = bytearray(conv_bn_caffemodel([0.0, 0.0], [1.0, 1.0], 1.0))
    # Replace the first variance value (1.0f) with the signalling NaN's bit pattern.
    one = struct.pack("<f", 1.0)
    variance_at = data.index(one + one, data.index(b"BatchNorm"))
    data[variance_at : variance_at + 4] = struct.pack("<I", 0x7F800001)
    return CONV_BN_PROTOTXT, bytes(data)
