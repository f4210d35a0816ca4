"""Shapes of data layers from what the prototxt states, and data layers fed as inputs."""

from __future__ import annotations

import numpy as np
import pytest

import bnfuse
from bnfuse.errors import UnsupportedLayerError
from bnfuse.layertypes.datalayers import data_shapes
from bnfuse.layertypes.shapes import infer_shapes, input_layer_shapes
from bnfuse.verification.executor import forward, forward_steps
from bnfuse.verification.randweights import random_weights

CONV = """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
"""


def _one(layer_text: str) -> tuple[tuple[int | None, ...] | None, ...]:
    net = bnfuse.load(layer_text.encode() + CONV.encode())
    return tuple(data_shapes(net.layers[0]))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('layer { name: "d" type: "Data" top: "data" top: "label" '
         "transform_param { crop_size: 227 } data_param { batch_size: 50 } }",
         ((50, None, 227, 227), (50,))),
        ('layer { name: "d" type: "Data" top: "data" '
         "transform_param { crop_size: 8 mean_value: 104 mean_value: 117 mean_value: 123 } "
         "data_param { batch_size: 2 } }",
         ((2, 3, 8, 8),)),
        ('layer { name: "d" type: "Data" top: "data" transform_param { force_gray: true } '
         "data_param { batch_size: 4 } }",
         ((4, 1, None, None),)),
        ('layer { name: "d" type: "ImageData" top: "data" top: "label" '
         "image_data_param { batch_size: 5 new_height: 32 new_width: 48 is_color: false } }",
         ((5, 1, 32, 48), (5,))),
        ('layer { name: "d" type: "ImageData" top: "data" top: "label" '
         "transform_param { crop_size: 28 } image_data_param { new_height: 32 new_width: 48 } }",
         ((1, 3, 28, 28), (1,))),  # batch_size defaults to 1; the crop wins
        ('layer { name: "d" type: "WindowData" top: "data" top: "label" '
         "transform_param { crop_size: 227 } window_data_param { batch_size: 128 } }",
         ((128, 3, 227, 227), (128,))),
        ('layer { name: "d" type: "MemoryData" top: "data" top: "label" '
         "memory_data_param { batch_size: 3 channels: 2 height: 6 width: 7 } }",
         ((3, 2, 6, 7), (3, 1, 1, 1))),
        ('layer { name: "d" type: "HDF5Data" top: "data" top: "label" '
         "hdf5_data_param { source: 'f.txt' batch_size: 9 } }",
         ((9, None, None, None), (9, None, None, None))),
        ('layer { name: "d" type: "DummyData" top: "data" top: "label" '
         "dummy_data_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } shape { dim: 2 } } }",
         ((2, 3, 5, 5), (2,))),
        ('layer { name: "d" type: "DummyData" top: "data" top: "label" '
         "dummy_data_param { num: 2 channels: 3 channels: 1 height: 5 width: 5 } }",
         ((2, 3, 5, 5), (2, 1, 5, 5))),  # legacy dims: one for all tops, or one per top
        ('layer { name: "d" type: "AnnotatedData" top: "data" top: "label" '
         "transform_param { resize_param { height: 300 width: 300 } } "
         "data_param { batch_size: 8 } }",
         ((8, None, 300, 300), None)),  # SSD's boxes: the label's shape varies
        ('layer { name: "d" type: "VideoData" top: "data" top: "label" '
         "transform_param { crop_size: 224 } "
         "video_data_param { batch_size: 4 new_length: 5 modality: FLOW } }",
         ((4, 10, 224, 224), (4,))),  # TSN: 5 flow frames of (x, y) on the channel axis
    ],
)
def test_stated_shapes(text: str, expected: tuple[tuple[int | None, ...] | None, ...]) -> None:
    assert _one(text) == expected


TRAIN_VAL = b"""
name: "tv"
layer { name: "train" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { crop_size: 8 mirror: true } data_param { batch_size: 64 } }
layer { name: "val" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { crop_size: 8 } data_param { batch_size: 2 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "label" top: "loss" }
"""


def test_unknown_channels_name_the_blob_and_what_to_pass() -> None:
    net = bnfuse.load(TRAIN_VAL)
    with pytest.raises(UnsupportedLayerError) as info:
        input_layer_shapes(net.layers)
    assert str(info.value) == (
        "cannot tell the shape of blob 'data' (top of layer 'val', Data): the stored images "
        "decide the channels (transform_param's force_color or force_gray, or one mean_value "
        "per channel, would state them); pass input_shapes={'data': (2, C, 8, 8)}")
    assert info.value.layer == "val"
    # What the prototxt leaves open is given; what it states is the TEST phase's.
    assert input_layer_shapes(net.layers, {"data": (2, 3, 8, 8)}) == {
        "data": (2, 3, 8, 8), "label": (2,)}
    assert input_layer_shapes(net.layers, required=False) == {"label": (2,)}


def test_channels_come_from_the_weights_of_the_reader() -> None:
    net = bnfuse.load(TRAIN_VAL)
    net.set_blobs(net.layer("conv"), [np.zeros((4, 5, 3, 3)), np.zeros(4)])
    shapes = infer_shapes(net, stop_at_unknown=True)
    assert shapes["data"] == (2, 5, 8, 8)
    assert shapes["conv"] == (2, 4, 6, 6)


def test_the_executor_feeds_data_layers_like_inputs() -> None:
    net = random_weights(TRAIN_VAL, seed=3, input_shapes={"data": (2, 3, 8, 8)},
                         unmeasurable="unit")
    values = {layer.name: tops for layer, tops in forward_steps(
        _without_loss(net), {"data": np.ones((2, 3, 8, 8), np.float32)})}
    assert values["val"]["data"].shape == (2, 3, 8, 8)
    assert float(values["val"]["data"].min()) == 1.0
    # The label the TEST data layer states is drawn like any input nobody gave.
    expected = np.random.default_rng(0).standard_normal((2,)).astype(np.float32)
    np.testing.assert_array_equal(values["val"]["label"], expected)


def _without_loss(net: bnfuse.Net) -> bnfuse.Net:
    net.remove_layer(net.layer("loss"))
    return net


def test_random_weights_names_the_input_shape_it_needs() -> None:
    with pytest.raises(UnsupportedLayerError, match=r"blob 'data' \(top of layer 'val', Data\)"):
        random_weights(TRAIN_VAL, seed=0)
    net = random_weights(TRAIN_VAL, seed=0, input_shapes={"data": (2, 3, 8, 8)})
    assert [b.shape for b in net.layer("conv").blobs] == [(4, 3, 3, 3), (4,)]
    # Measured on the batch drawn for the TEST data layer: mean 0 after the BatchNorm.
    out = forward(_without_loss(net), seed=0)["conv"]
    assert float(abs(out.mean(axis=(0, 2, 3))).max()) < 1e-4


def test_random_weights_that_can_shape_nothing_asks_for_the_shape() -> None:
    text = b"""
layer { name: "h5" type: "HDF5Data" top: "data" top: "label"
        hdf5_data_param { source: "list.txt" batch_size: 10 } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 2 } }
"""
    with pytest.raises(UnsupportedLayerError) as info:
        random_weights(text, unmeasurable="unit")
    assert str(info.value) == (
        "cannot tell the shape of blob 'data' (top of layer 'h5', HDF5Data): the HDF5 files "
        "decide every shape; pass input_shapes={'data': (10, C, H, W)}")
    net = random_weights(text, unmeasurable="unit", input_shapes={"data": (10, 6)})
    assert net.layer("fc").blobs[0].shape == (2, 6)
