"""Shape inference and Caffe's weight blob shapes, checked against hand-computed values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import shared_path
from google.protobuf import text_format

from bnfuse import proto
from bnfuse.errors import UnsupportedLayerError
from bnfuse.layertypes import SPECS
from bnfuse.layertypes.geometry import pooled_size
from bnfuse.layertypes.shapes import infer_shapes, param_shapes


@dataclass
class Layer:
    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    param: Any
    blobs: list[Any] = field(default_factory=list)


@dataclass
class Net:
    layers: list[Layer]


def layer(text: str) -> Layer:
    p = text_format.Parse(text, proto.LayerParameter())
    return Layer(p.name, p.type, tuple(p.bottom), tuple(p.top), p)


def net_from_prototxt(text: str) -> Net:
    """Layers of a deploy prototxt; top-level ``input``/``input_dim`` become an Input layer."""
    param = text_format.Parse(text, proto.NetParameter())
    layers = []
    if param.input:
        inp = proto.LayerParameter(name="input", type="Input", top=list(param.input))
        for i in range(len(param.input)):
            dims = (
                param.input_dim[4 * i : 4 * i + 4] if param.input_dim else param.input_shape[i].dim
            )
            inp.input_param.shape.add().dim.extend(dims)
        layers.append(Layer("input", "Input", (), tuple(param.input), inp))
    layers += [Layer(lp.name, lp.type, tuple(lp.bottom), tuple(lp.top), lp) for lp in param.layer]
    return Net(layers)


def test_every_shape_rule_has_an_implementation() -> None:
    shaped = {t for t, spec in SPECS.items() if spec.shape is not None}
    assert shaped == {t for t, spec in SPECS.items() if spec.forward is not None}


@pytest.mark.parametrize(
    ("text", "bottoms", "expected"),
    [
        (
            "type: 'Convolution' convolution_param { num_output: 64 kernel_size: 7 stride: 2"
            " pad: 3 }",
            [(1, 3, 224, 224)],
            (1, 64, 112, 112),
        ),
        (
            "type: 'Convolution' convolution_param { num_output: 8 kernel_size: 3 dilation: 2"
            " pad: 2 stride: 2 group: 2 }",
            [(1, 4, 15, 15)],
            (1, 8, 8, 8),
        ),
        (
            "type: 'Convolution' convolution_param { num_output: 2 kernel_h: 3 kernel_w: 1"
            " stride_h: 2 stride_w: 1 }",
            [(1, 1, 9, 4)],
            (1, 2, 4, 4),
        ),
        (
            "type: 'Convolution' convolution_param { num_output: 2 kernel_size: 3 axis: 2 }",
            [(2, 3, 4, 10)],
            (2, 3, 2, 8),
        ),
        (
            "type: 'Deconvolution' convolution_param { num_output: 6 kernel_size: 4 stride: 2"
            " pad: 1 group: 2 }",
            [(1, 4, 7, 7)],
            (1, 6, 14, 14),
        ),
        (
            "type: 'InnerProduct' inner_product_param { num_output: 10 axis: 2 }",
            [(2, 3, 4, 5)],
            (2, 3, 10),
        ),
        (
            "type: 'Pooling' pooling_param { pool: MAX kernel_size: 3 stride: 2 }",
            [(1, 64, 112, 112)],
            (1, 64, 56, 56),
        ),
        (
            "type: 'Pooling' pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }",
            [(1, 64, 112, 112)],
            (1, 64, 57, 57),
        ),
        (
            "type: 'Pooling' pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode:"
            " FLOOR }",
            [(1, 8, 6, 6)],
            (1, 8, 2, 2),
        ),
        (
            "type: 'Pooling' pooling_param { pool: AVE global_pooling: true }",
            [(1, 2048, 7, 7)],
            (1, 2048, 1, 1),
        ),
        ("type: 'Flatten' flatten_param { axis: 2 }", [(2, 3, 4, 5)], (2, 3, 20)),
        ("type: 'Reshape' reshape_param { shape { dim: 0 dim: -1 } }", [(2, 3, 4, 5)], (2, 60)),
        (
            "type: 'Reshape' reshape_param { shape { dim: 2 dim: -1 } axis: 1 num_axes: 2 }",
            [(2, 3, 4, 5)],
            (2, 2, 6, 5),
        ),
        (
            "type: 'Crop' crop_param { axis: 2 offset: 3 }",
            [(1, 3, 20, 20), (1, 1, 9, 8)],
            (1, 3, 9, 8),
        ),
        ("type: 'Concat' concat_param { axis: 1 }", [(1, 3, 4, 4), (1, 5, 4, 4)], (1, 8, 4, 4)),
        ("type: 'Scale' scale_param { axis: 0 }", [(2, 3, 4), (2, 3)], (2, 3, 4)),
    ],
)
def test_output_shapes(
    text: str, bottoms: list[tuple[int, ...]], expected: tuple[int, ...]
) -> None:
    names = [f"b{i}" for i in range(len(bottoms))]
    lay = layer(f"name: 'l' top: 'y' {' '.join(f'bottom: {n!r}' for n in names)} {text}")
    assert infer_shapes(Net([lay]), dict(zip(names, bottoms, strict=True)))["y"] == expected


def test_slice_shapes() -> None:
    lay = layer(
        "name: 's' type: 'Slice' bottom: 'x' top: 'a' top: 'b' slice_param { axis: -1"
        " slice_point: 3 }"
    )
    shapes = infer_shapes(Net([lay]), {"x": (2, 3, 10)})
    assert (shapes["a"], shapes["b"]) == ((2, 3, 3), (2, 3, 7))


def test_pooled_size_rules() -> None:
    assert pooled_size(112, 3, 2, 0, 0) == 56  # ceil(109 / 2) + 1
    assert pooled_size(7, 3, 2, 0, 0) == 3
    assert pooled_size(6, 3, 2, 0, 0) == 3  # ceil keeps a partial window
    assert pooled_size(6, 3, 2, 0, 1) == 2  # floor drops it
    assert pooled_size(5, 2, 2, 1, 0) == 3  # the 4th window would start in the padding


@pytest.mark.parametrize(
    ("text", "bottoms", "expected"),
    [
        (
            "type: 'Convolution' convolution_param { num_output: 64 kernel_size: 7 }",
            [(1, 3, 9, 9)],
            [(64, 3, 7, 7), (64,)],
        ),
        (
            "type: 'Convolution' convolution_param { num_output: 8 kernel_size: 3 group: 2"
            " bias_term: false }",
            [(1, 4, 9, 9)],
            [(8, 2, 3, 3)],
        ),
        (
            "type: 'DepthwiseConvolution' convolution_param { num_output: 6 kernel_size: 3 }",
            [(1, 6, 9, 9)],
            [(6, 1, 3, 3), (6,)],
        ),
        (
            "type: 'Deconvolution' convolution_param { num_output: 6 kernel_size: 4 group: 2"
            " bias_term: false }",
            [(1, 4, 7, 7)],
            [(4, 3, 4, 4)],
        ),
        (
            "type: 'Convolution' convolution_param { num_output: 2 kernel_size: 3 kernel_size:"
            " 1 kernel_size: 2 }",
            [(1, 5, 4, 4, 4)],
            [(2, 5, 3, 1, 2), (2,)],
        ),
        (
            "type: 'InnerProduct' inner_product_param { num_output: 10 }",
            [(2, 3, 4, 5)],
            [(10, 60), (10,)],
        ),
        (
            "type: 'InnerProduct' inner_product_param { num_output: 10 transpose: true"
            " bias_term: false }",
            [(2, 60)],
            [(60, 10)],
        ),
        ("type: 'BatchNorm'", [(1, 32, 5, 5)], [(32,), (32,), (1,)]),
        ("type: 'Scale' scale_param { bias_term: true }", [(1, 32, 5, 5)], [(32,), (32,)]),
        ("type: 'Scale' scale_param { axis: 2 num_axes: -1 }", [(1, 32, 5, 4)], [(5, 4)]),
        ("type: 'Scale' scale_param { bias_term: true }", [(1, 32, 5, 5), (32,)], [(32,)]),
        ("type: 'Bias'", [(1, 32, 5, 5)], [(32,)]),
        ("type: 'PReLU'", [(1, 32, 5, 5)], [(32,)]),
        ("type: 'PReLU' prelu_param { channel_shared: true }", [(1, 32, 5, 5)], [()]),
        ("type: 'ReLU'", [(1, 32, 5, 5)], []),
    ],
)
def test_param_shapes(
    text: str, bottoms: list[tuple[int, ...]], expected: list[tuple[int, ...]]
) -> None:
    names = " ".join(f"bottom: 'b{i}'" for i in range(len(bottoms)))
    assert param_shapes(layer(f"name: 'l' top: 'y' {names} {text}"), bottoms) == expected


def test_unknown_type_raises_or_stops() -> None:
    layers = [
        layer("name: 'r' type: 'ReLU' bottom: 'x' top: 'a'"),
        layer("name: 'pb' type: 'Proposal' bottom: 'a' top: 'p'"),
        layer("name: 'r2' type: 'ReLU' bottom: 'p' top: 'q'"),
    ]
    with pytest.raises(UnsupportedLayerError, match=r"'pb'.*'Proposal'"):
        infer_shapes(Net(layers), {"x": (1, 2)})
    assert infer_shapes(Net(layers), {"x": (1, 2)}, stop_at_unknown=True) == {
        "x": (1, 2),
        "a": (1, 2),
    }
    with pytest.raises(UnsupportedLayerError, match=r"'pb'.*'Proposal'"):
        param_shapes(layers[1], [(1, 2)])


def test_bad_configuration_is_unsupported_not_a_crash() -> None:
    conv = layer(
        "name: 'c' type: 'Convolution' bottom: 'x' top: 'y' convolution_param { num_output: 3"
        " kernel_size: 3 group: 2 }"
    )
    with pytest.raises(UnsupportedLayerError, match=r"'c'.*group 2"):
        infer_shapes(Net([conv]), {"x": (1, 4, 8, 8)})
    pool = layer(
        "name: 'p' type: 'Pooling' bottom: 'x' top: 'y' pooling_param { kernel_size: 3"
        " global_pooling: true }"
    )
    with pytest.raises(UnsupportedLayerError, match="'p'"):
        infer_shapes(Net([pool]), {"x": (1, 4, 8, 8)})


@pytest.mark.parametrize(
    ("name", "blob", "expected"),
    [
        ("resnet50.prototxt", "fc1000", (1, 1000)),
        ("resnet50.prototxt", "res5c", (1, 2048, 7, 7)),
        ("mobilenet_v1.prototxt", "pool6", (1, 1024, 1, 1)),
        ("mobilenet_v2.prototxt", "prob", (1, 1000, 1, 1)),
    ],
)
def test_corpus_shapes(name: str, blob: str, expected: tuple[int, ...]) -> None:
    net = net_from_prototxt(shared_path("corpus", "prototxt", name).read_text())
    assert infer_shapes(net, stop_at_unknown=True)[blob] == expected


def test_corpus_se_resnet_shapes_through_axpy() -> None:
    # SE-ResNet-50's squeeze-excitation blocks end in SENet's fork layer "Axpy"
    # (a * x + y): the registry shapes it like its x bottom.
    net = net_from_prototxt(shared_path("corpus", "prototxt", "se_resnet50.prototxt").read_text())
    shapes = infer_shapes(net)
    first_axpy = next(lay for lay in net.layers if lay.type == "Axpy")
    assert shapes[first_axpy.tops[0]] == shapes[first_axpy.bottoms[1]] == (1, 256, 56, 56)
    assert shapes["prob"] == (1, 1000)


