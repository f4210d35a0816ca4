"""SENet's Axpy and ShuffleNet's ShuffleChannel, against loops written from the forks.

Semantics read from hujie-frank/SENet ``src/caffe/layers/axpy_layer.cpp`` (top = a * x + y,
``a`` one value per item and channel) and farmingyard/ShuffleNet
``src/caffe/layers/shuffle_channel_layer.cpp`` (output channel ``j * g + i`` is input
channel ``i * C/g + j``).
"""

from __future__ import annotations

import numpy as np
import pytest

import bnfuse
from bnfuse.errors import UnsupportedLayerError
from bnfuse.verification.executor import forward


def _net(text: str) -> bnfuse.Net:
    return bnfuse.load(text.encode())


@pytest.mark.parametrize(("channels", "group"), [(6, 2), (6, 3), (8, 4), (5, 1)])
def test_shuffle_channel_moves_channels_as_the_fork_does(channels: int, group: int) -> None:
    net = _net(f"""input: "x" input_shape {{ dim: 2 dim: {channels} dim: 3 dim: 2 }}
layer {{ name: "s" type: "ShuffleChannel" bottom: "x" top: "y"
        shuffle_channel_param {{ group: {group} }} }}""")
    x = np.random.default_rng(0).normal(size=(2, channels, 3, 2)).astype(np.float32)
    y = forward(net, {"x": x})["y"]
    expected = np.empty_like(x)
    per = channels // group
    for n in range(2):
        for i in range(group):
            for j in range(per):
                expected[n, j * group + i] = x[n, i * per + j]
    assert np.array_equal(y, expected)  # a permutation: exact


def test_shuffle_channel_group_must_divide_the_channels() -> None:
    net = _net("""input: "x" input_shape { dim: 1 dim: 6 dim: 2 dim: 2 }
layer { name: "s" type: "ShuffleChannel" bottom: "x" top: "y"
        shuffle_channel_param { group: 4 } }""")
    with pytest.raises(UnsupportedLayerError, match="group 4 does not divide the 6 channels"):
        forward(net)


@pytest.mark.parametrize("a_shape", [(2, 3), (2, 3, 1, 1)])
def test_axpy_is_a_times_x_plus_y(a_shape: tuple[int, ...]) -> None:
    dims = " ".join(f"dim: {d}" for d in a_shape)
    net = _net(f"""input: "a" input_shape {{ {dims} }}
input: "x" input_shape {{ dim: 2 dim: 3 dim: 4 dim: 4 }}
input: "y" input_shape {{ dim: 2 dim: 3 dim: 4 dim: 4 }}
layer {{ name: "f" type: "Axpy" bottom: "a" bottom: "x" bottom: "y" top: "z" }}""")
    rng = np.random.default_rng(1)
    a = rng.normal(size=a_shape).astype(np.float32)
    x, y = (rng.normal(size=(2, 3, 4, 4)).astype(np.float32) for _ in range(2))
    z = forward(net, {"a": a, "x": x, "y": y})["z"]
    expected = np.empty_like(x)
    flat_a = a.reshape(2, 3)
    for n in range(2):
        for c in range(3):
            for h in range(4):
                for w in range(4):
                    expected[n, c, h, w] = np.float32(flat_a[n, c] * x[n, c, h, w]) + y[n, c, h, w]
    # float32 products and sums in the same order as the loop: within one rounding.
    np.testing.assert_allclose(z, expected, rtol=1e-6, atol=1e-7)


def test_axpy_refuses_mismatched_bottoms() -> None:
    net = _net("""input: "a" input_shape { dim: 1 dim: 3 dim: 2 dim: 1 }
input: "x" input_shape { dim: 1 dim: 3 dim: 4 dim: 4 }
layer { name: "f" type: "Axpy" bottom: "a" bottom: "x" bottom: "x" top: "z" }""")
    with pytest.raises(UnsupportedLayerError, match="needs a of shape"):
        forward(net)
