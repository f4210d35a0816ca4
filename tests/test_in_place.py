"""Caffe refuses Split, Flatten and Reshape in place; so does bnfuse, naming the layer.

Found by the 30-minute fuzz run (seed 31, input 4340): a ReLU turned into an in-place
Flatten changed a blob's shape under the layers that had read it before, and random
weights then crashed reshaping a BatchNorm's statistics.
"""

from __future__ import annotations

import pytest

import bnfuse
from bnfuse.errors import UnsupportedLayerError
from bnfuse.layertypes.shapes import infer_shapes
from bnfuse.verification.randweights import random_weights

NET = """input: "data" input_shape {{ dim: 1 dim: 2 dim: 4 dim: 4 }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "c"
        convolution_param {{ num_output: 2 kernel_size: 1 }} }}
layer {{ name: "bn" type: "BatchNorm" bottom: "c" top: "c" }}
layer {{ name: "odd" type: "{kind}" bottom: "c" top: "c" {param} }}
layer {{ name: "conv2" type: "Convolution" bottom: "c" top: "d"
        convolution_param {{ num_output: 2 kernel_size: 1 }} }}
"""
CASES = [("Flatten", ""), ("Reshape", "reshape_param { shape { dim: 0 dim: -1 } }"),
         ("Split", "")]


@pytest.mark.parametrize(("kind", "param"), CASES, ids=[k for k, _ in CASES])
def test_in_place_reshaping_layers_are_refused(kind: str, param: str) -> None:
    net = bnfuse.load(NET.format(kind=kind, param=param).encode())
    with pytest.raises(UnsupportedLayerError) as info:
        infer_shapes(net)
    assert str(info.value) == (f"layer 'odd' (type '{kind}'): Caffe's {kind} does not allow "
                               "in-place computation (top 'c' is also its bottom)")


def test_random_weights_blames_the_in_place_layer() -> None:
    net = bnfuse.load(NET.format(kind="Flatten", param="").encode())
    with pytest.raises(UnsupportedLayerError) as info:
        random_weights(net, seed=0)
    # The BatchNorm before the Flatten saw its (1, 2, 4, 4) input; what reads the
    # Flatten's output is what cannot be shaped.
    assert str(info.value).startswith("layer 'conv2' (Convolution): its input shape depends "
                                      "on layer 'odd' (Flatten)")
    filled = random_weights(net, seed=0, unmeasurable="unit")
    assert [b.shape for b in filled.layer("bn").blobs] == [(2,), (2,), (1,)]
