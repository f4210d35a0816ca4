"""A BatchNorm over 4 channels followed by a Scale whose blobs hold 2."""

from __future__ import annotations

DESCRIPTION = ("BatchNorm and Scale blobs of different widths (a record copied into the "
               "wrong layer): composing their affine maps raised a ModelMismatchError "
               "without the file name out of fold and 'bnfuse inspect'")
FOUND_BY = "fuzz.run seed 9 input 26961 (example; tree: copy a field elsewhere x2)"
FIXED_IN = ("bnfuse/folding/planner.py _Planner._plan_chain: a failed compose skips the chain "
            "with the reason (fixed concurrently in commit 3108838)")
EXPECT = "ok"

PROTOTXT = b"""layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 4 dim: 2 dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
"""


def build() -> tuple[bytes, bytes | None]:
    """Conv 4x4x1x1, BatchNorm over 4 channels, Scale blobs of 2 values."""
    from bnfuse.proto import NetParameter

    net = NetParameter()
    blobs = {"conv": ("Convolution", [[0.5] * 16, [0.0] * 4], [(4, 4, 1, 1), (4,)]),
             "bn": ("BatchNorm", [[0.0] * 4, [1.0] * 4, [1.0]], [(4,), (4,), (1,)]),
             "sc": ("Scale", [[2.0] * 2, [1.0] * 2], [(2,), (2,)])}
    for name, (kind, values, shapes) in blobs.items():
        layer = net.layer.add(name=name, type=kind)
        for data, shape in zip(values, shapes, strict=True):
            blob = layer.blobs.add()
            blob.shape.dim.extend(shape)
            blob.data.extend(data)
    return PROTOTXT, net.SerializeToString()
