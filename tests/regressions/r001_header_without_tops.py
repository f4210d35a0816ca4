"""A caffemodel whose layer records carry no bottom/top, folded with renamed tops."""

from __future__ import annotations

import numpy as np

DESCRIPTION = ("Layer records in the caffemodel without bottom/top (Caffe ignores them); the "
               "fold renamed a top and _apply_header_edits indexed the record's empty 'top' "
               "list: IndexError during save")
FOUND_BY = "fuzz.run seed 0, built/conv_bn_scale seed model, unmutated caffemodel"
FIXED_IN = "bnfuse/net.py _apply_header_edits: skip a bottom/top the record does not have"
EXPECT = "ok"

PROTOTXT = b"""layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "bn" }
layer { name: "sc" type: "Scale" bottom: "bn" top: "sc" scale_param { bias_term: true } }
"""


def build() -> tuple[bytes, bytes | None]:
    """The prototxt above and weights whose records hold only name, type and blobs."""
    from bnfuse.proto import NetParameter

    net = NetParameter()
    blobs = {"conv": [(2, 2, 1, 1), (2,)], "bn": [(2,), (2,), (1,)], "sc": [(2,), (2,)]}
    types = {"conv": "Convolution", "bn": "BatchNorm", "sc": "Scale"}
    for name, shapes in blobs.items():
        layer = net.layer.add(name=name, type=types[name])
        for shape in shapes:
            blob = layer.blobs.add()
            blob.shape.dim.extend(shape)
            blob.data.extend(np.linspace(0.5, 1.5, int(np.prod(shape))).tolist())
    return PROTOTXT, net.SerializeToString()
