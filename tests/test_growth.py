"""Every stage of a fold is linear in the net's size: n against 8n, as a ratio of CPU time.

The ratios come from :func:`growth.growth` (best of 3, interleaved, collector paused):
linear code measures about 8 and quadratic code 64, and the tests assert below 24. The
tokenizer's own growth test (a long line of quotes) is in ``test_prototxt.py`` and the
memory estimate's (an exact count of shape-rule calls) in ``test_bounds.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from growth import LINEAR_BOUND, growth
from modelkit import caffemodel_bytes

import bnfuse
from bnfuse.io.prototxt import Document


def _chains(n: int) -> tuple[bytes, bytes]:
    """n Convolution + BatchNorm + Scale + ReLU chains, one after the other."""
    text = ['input: "c0" input_shape { dim: 1 dim: 2 dim: 2 dim: 2 }\n']
    weights: dict[str, list[np.ndarray]] = {}
    for i in range(n):
        text.append(
            f'layer {{ name: "conv{i}" type: "Convolution" bottom: "c{i}" top: "c{i + 1}"\n'
            f'  convolution_param {{ num_output: 2 kernel_size: 1 }} }}\n'
            f'layer {{ name: "bn{i}" type: "BatchNorm" bottom: "c{i + 1}" top: "c{i + 1}" }}\n'
            f'layer {{ name: "sc{i}" type: "Scale" bottom: "c{i + 1}" top: "c{i + 1}"\n'
            f'  scale_param {{ bias_term: true }} }}\n'
            f'layer {{ name: "relu{i}" type: "ReLU" bottom: "c{i + 1}" top: "c{i + 1}" }}\n')
        weights[f"conv{i}"] = [np.full((2, 2, 1, 1), 0.5, np.float32), np.zeros(2, np.float32)]
        weights[f"bn{i}"] = [np.zeros(2, np.float32), np.ones(2, np.float32),
                             np.ones(1, np.float32)]
        weights[f"sc{i}"] = [np.ones(2, np.float32), np.zeros(2, np.float32)]
    return "".join(text).encode(), caffemodel_bytes(weights)


def _pool(make: Callable[[int], object], sizes: tuple[int, int], repeats: int = 3
          ) -> dict[int, list[object]]:
    """Inputs built before timing: one per run, since the measured stage consumes it."""
    return {size: [make(size) for _ in range(repeats)] for size in sizes}


def test_parsing_is_linear() -> None:
    blocks = {size: _chains(size)[0].decode() for size in (300, 2400)}

    def parse(size: int) -> None:
        # The input and its shape, then the layers.
        assert len(Document.parse(blocks[size]).root.fields) == 4 * size + 2

    assert growth(parse, 300) < LINEAR_BOUND


def test_loading_is_linear() -> None:
    models = {size: _chains(size) for size in (60, 480)}

    def load(size: int) -> None:
        assert len(bnfuse.load(*models[size]).layers) == 4 * size + 1  # and the Input layer

    assert growth(load, 60) < LINEAR_BOUND


def test_folding_and_rendering_are_linear() -> None:
    models = {size: _chains(size) for size in (60, 480)}
    nets = _pool(lambda size: bnfuse.load(*models[size]), (60, 480))

    def fold(size: int) -> None:
        net = nets[size].pop()
        assert isinstance(net, bnfuse.Net)
        report = bnfuse.fold_net(net).report
        assert len(report.actions) == size and len(net.layers) == 2 * size + 1
        net.document.render()

    assert growth(fold, 60) < LINEAR_BOUND


def test_removing_layers_is_linear() -> None:
    def relus(size: int) -> bnfuse.Net:
        text = 'input: "x" input_shape { dim: 1 dim: 2 }\n' + "".join(
            f'layer {{ name: "r{i}" type: "ReLU" bottom: "x" top: "x" }}\n' for i in range(size))
        return bnfuse.load(text.encode())

    nets = _pool(relus, (800, 6400))

    def remove_every_other(size: int) -> None:
        net = nets[size].pop()
        assert isinstance(net, bnfuse.Net)
        for layer in net.layers[1::2]:
            net.remove_layer(layer)
        assert net.document.render().count("layer {") == size // 2

    # One by one, each removal used to search the text for its layer: 48,000 layers
    # took 24 s, 84 times the 6,000-layer figure.
    assert growth(remove_every_other, 800) < LINEAR_BOUND
