"""A net that declares its inputs must produce every blob it reads, as Caffe requires."""

from __future__ import annotations

import pytest

import bnfuse
from bnfuse.errors import ModelMismatchError

INPUT = 'input: "data" input_shape { dim: 1 dim: 3 dim: 4 dim: 4 }\n'


def test_a_misspelt_bottom_is_caffes_unknown_bottom_blob() -> None:
    text = INPUT + 'layer { name: "r" type: "ReLU" bottom: "dta" top: "y" }'
    with pytest.raises(ModelMismatchError) as info:
        bnfuse.load(text.encode())
    assert str(info.value) == ("<prototxt bytes>: layer 'r' (ReLU) reads blob 'dta', which "
                               "no layer before it produces and no input declares: Caffe "
                               "refuses this net (\"Unknown bottom blob\")")
    assert info.value.layer == "r"


def test_a_blob_produced_only_later_is_refused_too() -> None:
    text = INPUT + ('layer { name: "a" type: "ReLU" bottom: "late" top: "y" }\n'
                    'layer { name: "b" type: "ReLU" bottom: "data" top: "late" }')
    with pytest.raises(ModelMismatchError, match=r"layer 'a' \(ReLU\) reads blob 'late'"):
        bnfuse.load(text.encode())


def test_a_fragment_without_inputs_still_loads() -> None:
    # No Input and no data layer: its unproduced bottoms are its inputs (bnfuse's own
    # examples and tests load such fragments).
    net = bnfuse.load(b'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }')
    assert [layer.name for layer in net.layers] == ["r"]
