"""A BatchNorm that cannot fold is merged into a Scale; its caffemodel record is rewritten."""

from __future__ import annotations

DESCRIPTION = ("The producer convolution has no weights (its record's name was deleted), so "
               "the BatchNorm became a Scale; rewriting the BatchNorm's caffemodel record "
               "cleared the fork field 'bn_param' with ClearField, which the schema does not "
               "have: ValueError during save")
FOUND_BY = "fuzz seed 0 input 128 (golden/bn_without_scale_eps; tree: delete field 1)"
FIXED_IN = "bnfuse/net.py _apply_header_edits: clear only fields the schema knows"
EXPECT = "ok"

PROTOTXT = b"""layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1"
        batch_norm_param { eps: 0.001 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
"""


def build() -> tuple[bytes, bytes | None]:
    """Weights for the BatchNorm only; the convolution's record has lost its name."""
    from bnfuse.proto import NetParameter

    net = NetParameter()
    conv = net.layer.add(type="Convolution")  # no name: matches no layer
    for shape in ((2, 2, 3, 3), (2,)):
        blob = conv.blobs.add()
        blob.shape.dim.extend(shape)
        blob.data.extend([0.25] * (18 * 2 if len(shape) == 4 else 2))
    bn = net.layer.add(name="bn1", type="BatchNorm", bottom=["conv1"], top=["conv1"])
    for values in ([0.5, -0.5], [2.0, 3.0], [1.0]):
        blob = bn.blobs.add()
        blob.shape.dim.append(len(values))
        blob.data.extend(values)
    return PROTOTXT, net.SerializeToString()
