"""A Scale whose bias blob has 5 values but whose scale blob has 1."""

from __future__ import annotations

DESCRIPTION = ("Scale blobs of different sizes (a damaged caffemodel): the planner let the "
               "arithmetic's ModelMismatchError escape from fold and from 'bnfuse inspect' "
               "without the file name; it is now a skipped chain with the reason in the report")
FOUND_BY = "bounded fuzz seed 2024 input 9950 (golden/innerproduct_transpose_bn; garbage)"
FIXED_IN = "bnfuse/folding/planner.py _scale_affine: blob problems become a skip with the reason"
EXPECT = "ok"

PROTOTXT = b"""layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 5 } }
layer { name: "sc" type: "Scale" bottom: "ip" top: "ip" scale_param { bias_term: true } }
"""


def build() -> tuple[bytes, bytes | None]:
    """InnerProduct 5x5 + bias, then a Scale with blobs of shapes (1,) and (5,)."""
    from bnfuse.proto import NetParameter

    net = NetParameter()
    ip = net.layer.add(name="ip", type="InnerProduct")
    for shape in ((5, 5), (5,)):
        blob = ip.blobs.add()
        blob.shape.dim.extend(shape)
        blob.data.extend([0.5] * (25 if len(shape) == 2 else 5))
    sc = net.layer.add(name="sc", type="Scale")
    for size in (1, 5):
        blob = sc.blobs.add()
        blob.shape.dim.append(size)
        blob.data.extend([2.0] * size)
    return PROTOTXT, net.SerializeToString()
