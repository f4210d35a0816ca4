"""A BatchNorm with factor 0 and an infinite variance value."""

from __future__ import annotations

from tests.regressions import CONV_BN_PROTOTXT, conv_bn_caffemodel

DESCRIPTION = ("BatchNorm blobs [mean, var with +inf, factor 0]: Caffe's rule k = 0 for a zero "
               "factor computed inf * 0, and numpy printed 'RuntimeWarning: invalid value "
               "encountered in multiply' (an exception under -W error)")
FOUND_BY = "fuzz.run seed 9 input 1350 (golden/scale_factor_zero; raw: float := 0x7f800000)"
FIXED_IN = "bnfuse/folding/arith.py caffe_batchnorm_stats: the scaling runs under np.errstate"
EXPECT = "ok"


def build() -> tuple[bytes, bytes | None]:
    """Conv weights, then BatchNorm blobs [0, 0], [1, inf], [0]."""
    return CONV_BN_PROTOTXT, conv_bn_caffemodel([0.0, 0.0], [1.0, float("inf")], 0.0)
