"""The layer registry: each type's weight layout, and everything derived from it.

Expected shapes are written out by hand from Caffe's layer sources (``LayerSetUp`` /
``Reshape`` of each layer), never computed by bnfuse.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from modelkit import caffemodel_bytes

import bnfuse
from bnfuse import layertypes
from bnfuse.errors import ModelMismatchError, UnsupportedLayerError
from bnfuse.graph import build_graph
from bnfuse.layertypes import (
    SPECS,
    Blob,
    accumulates,
    blob_counts,
    has_weights,
    implied_bottom,
    weight_layout,
)
from bnfuse.layertypes.shapes import param_shapes
from bnfuse.net import Layer, Net
from bnfuse.proto import NetParameter
from bnfuse.verification import layers as forward_module
from bnfuse.verification.executor import forward
from bnfuse.verification.randweights import random_weights

PACKAGE = Path(layertypes.__file__).parent


def one(text: str) -> Layer:
    """The only layer of a one-layer prototxt."""
    (layer,) = bnfuse.load(text.encode()).layers
    return layer


def layout(layer: Layer, bottoms: Sequence[Sequence[int]] | None = None,
           count: int | None = None) -> list[tuple[str, tuple[int | None, ...], bool]]:
    return [(b.role, b.shape, b.rank_known)
            for b in weight_layout(layer, bottoms, blob_count=count)]


# --------------------------------------------------------------------------- layouts


def test_convolution_with_group_and_dilation() -> None:
    conv = one('layer { name: "c" type: "Convolution" bottom: "x" top: "y" '
               'convolution_param { num_output: 8 kernel_size: 3 dilation: 2 group: 2 } }')
    # Caffe: weight (num_output, channels / group, *kernel), bias (num_output,).
    assert param_shapes(conv, [(1, 4, 15, 15)]) == [(8, 2, 3, 3), (8,)]
    # Without the bottom the channels are unknown, and so is the number of kernel axes.
    assert layout(conv) == [("weight", (8, None), False), ("bias", (8,), True)]


def test_convolution_with_kernel_h_w_knows_its_rank() -> None:
    conv = one('layer { name: "c" type: "Convolution" bottom: "x" top: "y" '
               'convolution_param { num_output: 4 kernel_h: 3 kernel_w: 1 bias_term: false } }')
    assert layout(conv) == [("weight", (4, None, 3, 1), True)]
    assert param_shapes(conv, [(2, 6, 9, 9)]) == [(4, 6, 3, 1)]


def test_depthwise_convolution_has_one_input_channel_per_group() -> None:
    conv = one('layer { name: "d" type: "ConvolutionDepthwise" bottom: "x" top: "y" '
               'convolution_param { num_output: 6 kernel_size: 3 } }')
    assert param_shapes(conv, [(1, 6, 8, 8)]) == [(6, 1, 3, 3), (6,)]
    assert layout(conv)[0] == ("weight", (6, 1), False)


def test_deconvolution_with_group() -> None:
    deconv = one('layer { name: "up" type: "Deconvolution" bottom: "x" top: "y" '
                 'convolution_param { num_output: 6 kernel_size: 4 stride: 2 group: 2 } }')
    # Caffe: weight (channels, num_output / group, *kernel).
    assert param_shapes(deconv, [(1, 4, 5, 5)]) == [(4, 3, 4, 4), (6,)]
    assert layout(deconv) == [("weight", (None, 3), False), ("bias", (6,), True)]


@pytest.mark.parametrize(("params", "expected"), [
    ("num_output: 10", [(10, 60), (10,)]),                         # K = 3 * 4 * 5 from axis 1
    ("num_output: 10 axis: 2", [(10, 20), (10,)]),                 # K = 4 * 5
    ("num_output: 10 axis: 2 transpose: true", [(20, 10), (10,)]),
    ("num_output: 10 axis: -1 bias_term: false", [(10, 5)]),
])
def test_inner_product_axis_and_transpose(params: str, expected: list[tuple[int, ...]]) -> None:
    ip = one(f'layer {{ name: "fc" type: "InnerProduct" bottom: "x" top: "y" '
             f'inner_product_param {{ {params} }} }}')
    assert param_shapes(ip, [(2, 3, 4, 5)]) == expected


def test_inner_product_without_bottoms_knows_num_output() -> None:
    ip = one('layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y" '
             'inner_product_param { num_output: 7 transpose: true } }')
    assert layout(ip) == [("weight", (None, 7), True), ("bias", (7,), True)]


@pytest.mark.parametrize(("text", "bottoms", "expected"), [
    ('bottom: "x"', [(2, 8, 5, 5)], [("scale", (8,))]),
    ('bottom: "x" scale_param { bias_term: true }', [(2, 8, 5, 5)],
     [("scale", (8,)), ("shift", (8,))]),
    ('bottom: "x" scale_param { axis: 0 num_axes: 2 }', [(2, 8, 5, 5)], [("scale", (2, 8))]),
    ('bottom: "x" scale_param { num_axes: -1 }', [(2, 8, 5, 5)], [("scale", (8, 5, 5))]),
    # Two bottoms: bottom 1 is the factor, so only the bias is a weight blob.
    ('bottom: "x" bottom: "f"', [(2, 8, 5, 5), (8,)], []),
    ('bottom: "x" bottom: "f" scale_param { bias_term: true }', [(2, 8, 5, 5), (8, 5)],
     [("shift", (8, 5))]),
])
def test_scale_with_one_and_two_bottoms(text: str, bottoms: list[tuple[int, ...]],
                                        expected: list[tuple[str, tuple[int, ...]]]) -> None:
    scale = one(f'layer {{ name: "s" type: "Scale" {text} top: "y" }}')
    assert [(b.role, b.resolved) for b in weight_layout(scale, bottoms)] == expected


def test_scale_without_bottoms() -> None:
    assert layout(one('layer { name: "s" type: "Scale" bottom: "x" top: "x" '
                      'scale_param { bias_term: true } }')) == [
        ("scale", (None,), True), ("shift", (None,), True)]
    # num_axes -1: up to the bottom's last axis, however many there are.
    assert layout(one('layer { name: "s" type: "Scale" bottom: "x" top: "x" '
                      'scale_param { num_axes: -1 } }')) == [("scale", (), False)]


def test_bias_layer() -> None:
    bias = one('layer { name: "b" type: "Bias" bottom: "x" top: "x" }')
    assert param_shapes(bias, [(1, 3, 4, 4)]) == [(3,)]
    assert layout(bias) == [("shift", (None,), True)]
    two = one('layer { name: "b" type: "Bias" bottom: "x" bottom: "y" top: "z" }')
    assert param_shapes(two, [(1, 3, 4, 4), (3,)]) == []


def test_prelu_channel_shared_is_one_scalar() -> None:
    shared = one('layer { name: "p" type: "PReLU" bottom: "x" top: "x" '
                 'prelu_param { channel_shared: true } }')
    per_channel = one('layer { name: "p" type: "PReLU" bottom: "x" top: "x" }')
    assert param_shapes(shared, [(1, 5, 3, 3)]) == [()]
    assert param_shapes(per_channel, [(1, 5, 3, 3)]) == [(5,)]
    assert layout(shared) == [("slope", (), True)]
    assert layout(per_channel) == [("slope", (None,), True)]


@pytest.mark.parametrize(("text", "count", "expected"), [
    # BVLC: mean·f, variance·f, the factor f.
    ('type: "BatchNorm"', 3,
     [("mean", (4,)), ("variance", (4,)), ("factor", (1,))]),
    # BVLC text with NVIDIA's scale_filler but 3 blobs: BVLC's layout (issue 10, case 1).
    ('type: "BatchNorm" batch_norm_param { scale_filler { type: "constant" } }', 3,
     [("mean", (4,)), ("variance", (4,)), ("factor", (1,))]),
    # NVIDIA with scale_bias: 5 blobs, without weights decided by the field.
    ('type: "BatchNorm" batch_norm_param { scale_bias: true }', None,
     [("mean", (4,)), ("variance", (4,)), ("correction", (1,)), ("scale", (4,)),
      ("shift", (4,))]),
    # NVIDIA text without scale and bias: its 3-blob layout.
    ('type: "BatchNorm" batch_norm_param { scale_bias: false }', None,
     [("mean", (4,)), ("variance", (4,)), ("correction", (1,))]),
    ('type: "CuDNNBatchNorm"', 4,
     [("scale", (1, 4, 1, 1)), ("shift", (1, 4, 1, 1)), ("mean", (1, 4, 1, 1)),
      ("variance", (1, 4, 1, 1))]),
    ('type: "BN" bn_param { bn_mode: INFERENCE }', None,
     [("scale", (1, 4, 1, 1)), ("shift", (1, 4, 1, 1))]),
    # PSPNet (released): slope, bias, mean, variance.
    ('type: "BN" bn_param { slope_filler { type: "constant" } }', 4,
     [("scale", (1, 4, 1, 1)), ("shift", (1, 4, 1, 1)), ("mean", (1, 4, 1, 1)),
      ("variance", (1, 4, 1, 1))]),
    # The BN with axis and decay: the older PSPNet, 4 blobs, not SegNet's 2.
    ('type: "BN" bn_param { axis: 1 decay: 0.9 }', None,
     [("scale", (1, 4, 1, 1)), ("shift", (1, 4, 1, 1)), ("mean", (1, 4, 1, 1)),
      ("variance", (1, 4, 1, 1))]),
])
def test_batchnorm_dialects(text: str, count: int | None,
                            expected: list[tuple[str, tuple[int, ...]]]) -> None:
    layer = one(f'layer {{ name: "n" {text} bottom: "x" top: "x" }}')
    blobs = weight_layout(layer, [(2, 4, 3, 3)], blob_count=count)
    assert [(b.role, b.resolved) for b in blobs] == expected
    # Without the bottom, exactly the channel axes are unknown.
    unknown = weight_layout(layer, blob_count=count)
    assert [b.shape for b in unknown] == [
        tuple(None if d == 4 else d for d in shape) for _, shape in expected]


def test_weightless_and_unknown_types() -> None:
    assert layout(one('layer { name: "r" type: "ReLU" bottom: "x" top: "x" }')) == []
    bnll = one('layer { name: "b" type: "BNLL" bottom: "x" top: "x" }')
    # The loader knew BNLL has no blobs while param_shapes refused it: it has none.
    assert layout(bnll) == [] and param_shapes(bnll, [(1, 2)]) == [] and blob_counts(bnll) == (0,)
    prior = one('layer { name: "p" type: "Proposal" bottom: "x" top: "y" }')
    with pytest.raises(UnsupportedLayerError, match="does not know the weight layout"):
        weight_layout(prior)
    assert blob_counts(prior) is None
    assert not has_weights(prior)


# --------------------------------------------------------------------------- derived facts

WEIGHTED = """
layer { name: "conv" type: "Convolution" bottom: "x" top: "a"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "dw" type: "DepthwiseConvolution" bottom: "a" top: "b"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "up" type: "Deconvolution" bottom: "b" top: "c"
        convolution_param { num_output: 2 kernel_size: 2 stride: 2 } }
layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }
layer { name: "sc" type: "Scale" bottom: "c" top: "c" }
layer { name: "sc2" type: "Scale" bottom: "c" bottom: "f" top: "d" }
layer { name: "bias" type: "Bias" bottom: "d" top: "d" }
layer { name: "prelu" type: "PReLU" bottom: "d" top: "d" }
layer { name: "fork" type: "BN" bottom: "d" top: "d" }
layer { name: "relu" type: "ReLU" bottom: "d" top: "d" }
layer { name: "fc" type: "InnerProduct" bottom: "d" top: "e"
        inner_product_param { num_output: 3 } }
"""


def test_has_weights_and_accumulates() -> None:
    net = bnfuse.load(WEIGHTED.encode())
    assert [layer.name for layer in net.layers if has_weights(layer)] == [
        "conv", "dw", "up", "bn", "sc", "bias", "prelu", "fork", "fc"]
    # Only the layers that sum products with a weight matrix, as the verifier counts depth.
    assert [layer.name for layer in net.layers if accumulates(layer)] == [
        "conv", "dw", "up", "fc"]
    graph = build_graph(net.layers)
    depths = {version.name: depth for version, depth in graph.depths(accumulates).items()}
    assert (depths["a"], depths["b"], depths["c"], depths["d"], depths["e"]) == (1, 2, 3, 3, 4)


def test_blob_counts_from_params() -> None:
    net = bnfuse.load(WEIGHTED.encode())
    assert {layer.name: blob_counts(layer) for layer in net.layers} == {
        "conv": (2,), "dw": (2,), "up": (2,), "bn": (3, 5), "sc": (1,), "sc2": (0,),
        "bias": (1,), "prelu": (1,), "fork": (2, 4), "relu": (0,), "fc": (2,)}


def _layer_with(text: str, *blobs: np.ndarray) -> Layer:
    net = bnfuse.load(text.encode())
    (layer,) = net.layers
    net.set_blobs(layer, list(blobs))
    return layer


@pytest.mark.parametrize(("text", "blobs", "expected"), [
    ('type: "Convolution" convolution_param { num_output: 6 kernel_size: 3 group: 3 }',
     [(6, 2, 3, 3), (6,)], (2, 6, 8, 8)),
    ('type: "Deconvolution" convolution_param { num_output: 6 kernel_size: 4 group: 2 }',
     [(4, 3, 4, 4), (6,)], (2, 4, 8, 8)),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 bias_term: false }',
     [(2, 5, 3, 3, 3)], (2, 5, 8, 8, 8)),  # a 3-D convolution
    ('type: "InnerProduct" inner_product_param { num_output: 3 }', [(3, 7), (3,)], (2, 7)),
    # The inner product's K trades channels against spatial size: no spatial axes implied.
    ('type: "InnerProduct" inner_product_param { num_output: 3 }', [(3, 128), (3,)], (2, 128)),
    ('type: "InnerProduct" inner_product_param { num_output: 3 transpose: true }',
     [(128, 3), (3,)], (2, 128)),
    ('type: "BatchNorm"', [(5,), (5,), (1,)], (2, 5, 8, 8)),
    ('type: "CuDNNBatchNorm"', [(1, 5, 1, 1)] * 4, (2, 5, 8, 8)),
    ('type: "Scale"', [(5,)], (2, 5, 8, 8)),
    ('type: "PReLU"', [(5,)], (2, 5, 8, 8)),
    ('type: "PReLU" prelu_param { channel_shared: true }', [()], (2, 1, 8, 8)),
])
def test_implied_bottom(text: str, blobs: list[tuple[int, ...]],
                        expected: tuple[int, ...]) -> None:
    layer = _layer_with(f'layer {{ name: "l" {text} bottom: "x" top: "y" }}',
                        *(np.zeros(s, np.float32) for s in blobs))
    assert implied_bottom(layer, batch=2, spatial=8) == expected


def test_implied_bottom_is_none_when_bottom_zero_is_not_determined() -> None:
    scale = _layer_with('layer { name: "s" type: "Scale" bottom: "x" bottom: "f" top: "y" '
                        'scale_param { bias_term: true } }', np.zeros(5, np.float32))
    assert implied_bottom(scale, batch=2, spatial=8) is None
    # A factor over channels and height: the height is the blob's, not a free choice.
    two_axes = _layer_with('layer { name: "s" type: "Scale" bottom: "x" top: "y" '
                           'scale_param { num_axes: 2 } }', np.zeros((5, 7), np.float32))
    assert implied_bottom(two_axes, batch=2, spatial=8) is None
    bare = one('layer { name: "c" type: "Convolution" bottom: "x" top: "y" '
               'convolution_param { num_output: 2 kernel_size: 3 } }')
    assert implied_bottom(bare, batch=2, spatial=8) is None  # no weights loaded


# --------------------------------------------------------------------------- load checks

BN_NET = 'layer {{ name: "bn" type: "{kind}" bottom: "x" top: "x" {params} }}'


@pytest.mark.parametrize(("kind", "params", "count", "message"), [
    ("BatchNorm", "", 4, r"layer 'bn' \(BatchNorm\) needs 3 or 5 blobs, the caffemodel has 4"),
    # SegNet's and PSPNet's BN: 2 or 4 blobs; no fork creates 3 (not checked before).
    ("BN", "", 3, r"layer 'bn' \(BN\) needs 2 or 4 blobs, the caffemodel has 3"),
    ("CuDNNBatchNorm", "", 2,
     r"layer 'bn' \(CuDNNBatchNorm\) needs 4 blobs, the caffemodel has 2"),
    ("Scale", "", 2, r"layer 'bn' \(Scale\) needs 1 blobs, the caffemodel has 2"),
    ("PReLU", "", 0, r"layer 'bn' \(PReLU\) needs 1 blobs, the caffemodel has 0"),
    ("ReLU", "", 1, r"layer 'bn' \(ReLU\) needs 0 blobs, the caffemodel has 1"),
])
def test_blob_count_mismatch_at_load(kind: str, params: str, count: int, message: str) -> None:
    model = caffemodel_bytes({"bn": [np.ones(3, np.float32)] * count})
    with pytest.raises(ModelMismatchError, match=message):
        bnfuse.load(BN_NET.format(kind=kind, params=params).encode(), model)


def test_unknown_types_and_unreadable_fields_load_unchecked() -> None:
    """Only what bnfuse can read is checked: the fold reports an unreadable field later."""
    from bnfuse.layertypes.batchnorm import detect_layer

    text = b"""layer { name: "p" type: "Proposal" bottom: "x" top: "y" }
    layer { name: "bn" type: "BN" bottom: "x" top: "x" bn_param { moving_average: 2 } }"""
    model = caffemodel_bytes({"p": [np.ones((2, 3))], "bn": [np.ones(3)] * 4})
    net = bnfuse.load(text, model)
    assert [b.shape for b in net.layer("bn").blobs] == [(3,)] * 4
    with pytest.raises(ModelMismatchError, match="moving_average: expected true or false"):
        detect_layer(net.layer("bn"))


def test_bn_with_fields_contradicting_its_count_loads_and_reports_why() -> None:
    """A count some dialect has loads; the fields' contradiction is the dialect's reason."""
    from bnfuse.layertypes.batchnorm import detect_layer

    text = BN_NET.format(kind="BN", params="bn_param { bn_mode: INFERENCE }")
    net = bnfuse.load(text.encode(), caffemodel_bytes({"bn": [np.ones((1, 3, 1, 1))] * 4}))
    assert detect_layer(net.layers[0]).reason == (
        "bn_param sets SegNet's bn_mode, but the caffemodel has PSPNet's 4 blobs "
        "(scale, shift, mean, variance)")


@pytest.mark.parametrize(("layer", "blobs", "message"), [
    ('type: "InnerProduct" inner_product_param { num_output: 3 }', [(4, 5), (3,)],
     r"'l' \(InnerProduct\) blob 0 \(weight\) should have shape \(3, \?\), the caffemodel "
     r"has \(4, 5\)"),
    ('type: "InnerProduct" inner_product_param { num_output: 3 transpose: true }',
     [(3, 5), (3,)], r"blob 0 \(weight\) should have shape \(\?, 3\), the caffemodel has "
                     r"\(3, 5\)"),
    ('type: "Deconvolution" convolution_param { num_output: 6 group: 2 kernel_size: 2 }',
     [(4, 2, 2, 2), (6,)], r"'l' \(Deconvolution\) blob 0 \(weight\) should have shape "
                           r"\(\?, 3, \.\.\.\), the caffemodel has \(4, 2, 2, 2\)"),
    # The depthwise bias was not checked before; Caffe checks every blob's shape.
    ('type: "ConvolutionDepthwise" convolution_param { num_output: 4 kernel_size: 3 }',
     [(4, 1, 3, 3), (5,)], r"blob 1 \(bias\) should have shape \(4,\), the caffemodel has "
                           r"\(5,\)"),
    # BatchNorm blobs were not checked at load (only by the executor, later).
    ('type: "BatchNorm"', [(3,), (3,), (2,)],
     r"'l' \(BatchNorm\) blob 2 \(factor\) should have shape \(1,\), the caffemodel has "
     r"\(2,\)"),
    ('type: "PReLU" prelu_param { channel_shared: true }', [(3,)],
     r"blob 0 \(slope\) should have shape \(\), the caffemodel has \(3,\)"),
])
def test_weight_shape_mismatch_at_load(layer: str, blobs: list[tuple[int, ...]],
                                       message: str) -> None:
    model = caffemodel_bytes({"l": [np.zeros(s, np.float32) for s in blobs]})
    with pytest.raises(ModelMismatchError, match=message):
        bnfuse.load(f'layer {{ name: "l" {layer} bottom: "x" top: "y" }}'.encode(), model)


def _legacy_model(blobs: Mapping[str, Sequence[tuple[tuple[int, int, int, int], int]]]) -> bytes:
    """A caffemodel whose blobs use the legacy num/channels/height/width dims."""
    net = NetParameter()
    for name, items in blobs.items():
        layer = net.layer.add(name=name)
        for (num, channels, height, width), start in items:
            blob = layer.blobs.add(num=num, channels=channels, height=height, width=width)
            blob.data.extend(float(v) for v in range(start, start + num * channels * height
                                                     * width))
    return net.SerializeToString()


LEGACY_NET = """
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" }
layer { name: "prelu" type: "PReLU" bottom: "conv" top: "conv"
        prelu_param { channel_shared: true } }
layer { name: "segnet" type: "BN" bottom: "conv" top: "conv" bn_param { bn_mode: INFERENCE } }
"""


def test_legacy_4d_blobs_take_the_layout_axes() -> None:
    model = _legacy_model({
        "conv": [((3, 2, 3, 3), 0), ((1, 1, 1, 3), 0)],
        "bn": [((1, 1, 1, 3), 0), ((1, 1, 1, 3), 1), ((1, 1, 1, 1), 1)],
        "scale": [((1, 1, 1, 3), 1)],
        "prelu": [((1, 1, 1, 1), 0)],
        "segnet": [((1, 3, 1, 1), 1), ((1, 3, 1, 1), 0)],
    })
    net = bnfuse.load(LEGACY_NET.encode(), model)
    shapes = {layer.name: [b.shape for b in layer.blobs] for layer in net.layers}
    assert shapes == {
        "data": [],
        "conv": [(3, 2, 3, 3), (3,)],
        "bn": [(3,), (3,), (1,)],
        "scale": [(3,)],          # was kept 4-D (1, 1, 1, 3) before
        "prelu": [()],            # channel_shared is 0-D in Caffe; was squeezed to (1,)
        "segnet": [(1, 3, 1, 1), (1, 3, 1, 1)],
    }
    assert net.layer("bn").blobs[1].tolist() == [1.0, 2.0, 3.0]
    # The 0-D slope is what the executor expects: the old (1,) was refused there.
    out = forward(net, {"data": np.ones((1, 2, 4, 4), np.float32)})
    assert out["conv"].shape == (1, 3, 4, 4)


# --------------------------------------------------------------------------- random weights


def test_random_weights_refuses_an_unshapeable_fork_batchnorm() -> None:
    """A BN is weighted like BatchNorm: error mode names it instead of leaving it empty."""
    text = b"""
    layer { name: "data" type: "Input" top: "data"
            input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
    layer { name: "odd" type: "MysteryLayer" bottom: "data" top: "m" }
    layer { name: "bn" type: "BN" bottom: "m" top: "m" bn_param { bn_mode: INFERENCE } }
    """
    with pytest.raises(UnsupportedLayerError, match=r"layer 'bn' \(BN\): its input shape "
                                                    r"depends on layer 'odd' \(MysteryLayer\)"):
        random_weights(text)
    net = random_weights(text, unmeasurable="unit")
    assert net.layer("bn").blobs == ()


def test_random_weights_follow_the_roles() -> None:
    net = random_weights(b"""
    layer { name: "data" type: "Input" top: "data"
            input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 4 kernel_size: 3 } }
    layer { name: "scale" type: "Scale" bottom: "conv" top: "conv"
            scale_param { bias_term: true } }
    layer { name: "prelu" type: "PReLU" bottom: "conv" top: "conv" }
    """, seed=3)
    weight, bias = net.layer("conv").blobs
    assert weight.shape == (4, 3, 3, 3) and bias.shape == (4,)
    assert 0.1 < float(weight.std()) / np.sqrt(2 / 27) < 2.0  # He scale, fan-in 3·3·3
    gamma, beta = net.layer("scale").blobs
    assert ((gamma >= 0.75) & (gamma <= 1.25)).all() and not ((beta >= 0.75).all())
    (slope,) = net.layer("prelu").blobs
    assert ((slope >= 0.1) & (slope <= 0.3)).all()


# --------------------------------------------------------------------------- one table


def _forward_functions() -> set[str]:
    """Functions of bnfuse.verification.layers shaped like a forward: (layer, bottoms, dtype)."""
    return {name for name, value in vars(forward_module).items()
            if inspect.isfunction(value) and value.__module__ == forward_module.__name__
            and list(inspect.signature(value).parameters) == ["layer", "bottoms", "dtype"]}


def test_every_forward_name_resolves_and_has_a_shape_rule() -> None:
    named = {spec.forward for spec in SPECS.values() if spec.forward is not None}
    for layer_type, spec in SPECS.items():
        if spec.forward is not None:
            assert spec.shape is not None, layer_type
            assert callable(getattr(forward_module, spec.forward)), layer_type
    # ... and every forward function of the verifier is named by the registry.
    assert _forward_functions() == named


def test_forward_of_uses_the_registry() -> None:
    relu = one('layer { name: "r" type: "ReLU" bottom: "x" top: "x" }')
    assert forward_module.forward_of(relu) is forward_module._relu
    with pytest.raises(UnsupportedLayerError, match="'BNLL', which the numpy reference"):
        forward_module.forward_of(one('layer { name: "b" type: "BNLL" bottom: "x" top: "x" }'))


def test_no_second_table_of_layer_types() -> None:
    import bnfuse.net
    import bnfuse.verification.compare
    import bnfuse.verification.executor
    import bnfuse.verification.local
    import bnfuse.verification.randweights
    from bnfuse.layertypes.batchnorm import NORM_TYPES

    modules = [forward_module, bnfuse.verification.executor, bnfuse.verification.compare,
               bnfuse.verification.local, bnfuse.verification.randweights, bnfuse.net]
    # The canonical type sets may be imported anywhere; a second set may not be written.
    canonical = (SPECS, layertypes.CONV_TYPES, layertypes.DEPTHWISE_TYPES, NORM_TYPES)
    for module in modules:
        for name, value in vars(module).items():
            if any(value is known for known in canonical):
                continue
            if isinstance(value, Mapping):
                assert not set(value) & set(SPECS), f"{module.__name__}.{name}"
            if isinstance(value, frozenset):
                assert not value & set(SPECS), f"{module.__name__}.{name}"
    assert not (PACKAGE.parent / "verification" / "shapes.py").exists()


def test_conv_type_names_are_the_registry_ones() -> None:
    assert bnfuse.net.CONV_TYPES is layertypes.CONV_TYPES
    assert bnfuse.net.DEPTHWISE_TYPES is layertypes.DEPTHWISE_TYPES


def test_layertypes_imports_no_loader_folding_or_verification() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                assert not name.startswith(("bnfuse.folding", "bnfuse.verification",
                                            "bnfuse.net")), f"{path.name}: {name}"


def test_blob_text() -> None:
    assert str(Blob("weight", (64, None, 3, 3))) == "weight (64, ?, 3, 3)"
    assert Blob("shift", (None,)).fits((12,)) and not Blob("shift", (None,)).fits((1, 12))
    assert Blob("weight", (8, None), rank_known=False).fits((8, 2, 3, 3, 3))


def test_a_net_saved_with_set_blobs_reloads_checked(tmp_path: Path) -> None:
    """Weights written by bnfuse itself pass the load checks; a wrong one is named."""
    text = b"""layer { name: "data" type: "Input" top: "data"
            input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }
    layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
            inner_product_param { num_output: 2 } }"""
    net: Net = bnfuse.load(text)
    net.set_blobs(net.layer("fc"), [np.ones((2, 18), np.float32), np.zeros(2, np.float32)])
    bnfuse.save(net, tmp_path / "a.prototxt", tmp_path / "a.caffemodel")
    loaded = bnfuse.load(tmp_path / "a.prototxt", tmp_path / "a.caffemodel")
    assert [b.shape for b in loaded.layer("fc").blobs] == [(2, 18), (2,)]
    net.set_blobs(net.layer("fc"), [np.ones((2, 18), np.float32), np.zeros(3, np.float32)])
    bnfuse.save(net, tmp_path / "b.prototxt", tmp_path / "b.caffemodel")
    with pytest.raises(ModelMismatchError, match=r"b\.caffemodel: layer 'fc' \(InnerProduct\) "
                                                 r"blob 1 \(bias\) should have shape \(2,\)"):
        bnfuse.load(tmp_path / "b.prototxt", tmp_path / "b.caffemodel")
