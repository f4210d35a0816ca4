"""Folding gives weights beyond float32's range: the chain is skipped with the reason.

At first the error named neither the file nor the layers; now such a chain is not an error
at all: the fold skips it, says why, and folds the rest (the net stays exact).
"""

from __future__ import annotations

DESCRIPTION = ("A bit-flipped BatchNorm variance made the folded convolution weights "
               "overflow float32; the UnsupportedLayerError from the arithmetic named "
               "neither the file nor the layers")
FOUND_BY = "bounded fuzz seed 2024 input 107 (golden/scale_factor_zero; raw: 16 bit flips)"
FIXED_IN = ("bnfuse/folding/rewrite.py prepare: a result that does not fit the dtype skips "
            "its chain with the reason")
EXPECT = "ok"

PROTOTXT = b"""layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 1 dim: 2 dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 1 kernel_size: 1 bias_term: false } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
"""


def build() -> tuple[bytes, bytes | None]:
    """A variance of 1e-38 with eps 1e-5 is fine, but a weight of 3e38 overflows once scaled."""
    from bnfuse.proto import NetParameter

    net = NetParameter()
    conv = net.layer.add(name="conv", type="Convolution").blobs.add()
    conv.shape.dim.extend([1, 1, 1, 1])
    conv.data.append(3e38)
    bn = net.layer.add(name="bn", type="BatchNorm")
    for values in ([0.0], [1e-7], [1.0]):
        blob = bn.blobs.add()
        blob.shape.dim.append(1)
        blob.data.extend(values)
    return PROTOTXT, net.SerializeToString()
