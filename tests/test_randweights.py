"""random_weights(): realistic weights whose BatchNorm statistics are measured, not guessed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bnfuse
from bnfuse.net import load
from bnfuse.verification.executor import forward
from bnfuse.verification.norms import norm_blobs
from bnfuse.verification.randweights import random_weights, write_random_model
from tests.conftest import shared_path

#: Corpus nets made only of layers the numpy executor runs, with the input used: the
#: declared 224x224 (ResNet-50 ends in a 7x7 pooling; the MobileNets are cheap), and
#: 112x112 for DenseNet-121 to keep the test short.
SUPPORTED = {"densenet121": (1, 3, 112, 112), "mobilenet_v1": (1, 3, 224, 224),
             "mobilenet_v2": (1, 3, 224, 224), "resnet50": (1, 3, 224, 224)}

_SMALL = b"""
name: "small"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 4 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 8 kernel_size: 3 bias_term: false } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param { eps: 0.001 } }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "up" type: "Deconvolution" bottom: "conv" top: "up"
        convolution_param { num_output: 6 kernel_size: 4 stride: 2 group: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "up" top: "fc"
        inner_product_param { num_output: 5 } }
layer { name: "bnfc" type: "BatchNorm" bottom: "fc" top: "bnfc" }
"""


def _bn_outputs(net: object, seed: int,
                inputs_shape: tuple[int, ...] | None = None) -> dict[str, np.ndarray]:
    """Every BatchNorm's output on the batch ``executor.forward`` draws with ``seed``."""
    found: dict[str, np.ndarray] = {}

    def observe(layer: object, tops: dict[str, np.ndarray]) -> None:
        if getattr(layer, "type", "") == "BatchNorm":
            found[getattr(layer, "name", "")] = next(iter(tops.values()))

    inputs = None
    if inputs_shape is not None:  # drawn exactly as forward() would, at this shape
        inputs = {"data": np.random.default_rng(seed).standard_normal(inputs_shape)
                  .astype(np.float32)}
    forward(net, inputs, seed=seed, observer=observe)  # type: ignore[arg-type]
    return found


def test_small_net_shapes_and_statistics() -> None:
    net = random_weights(_SMALL, seed=2, factor=0.5)
    shapes = {layer.name: [b.shape for b in layer.blobs] for layer in net.layers}
    assert shapes["conv"] == [(8, 3, 3, 3)]
    assert shapes["bn"] == [(8,), (8,), (1,)]
    assert shapes["up"] == [(8, 3, 4, 4), (6,)]
    assert shapes["fc"] == [(5, 6 * 22 * 22), (5,)]  # deconv: (10 - 1) * 2 + 4 = 22
    assert net.layer("bn").blobs[2].tolist() == [0.5]
    gamma = net.layer("sc").blobs[0]
    assert gamma.min() >= 0.75 and gamma.max() <= 1.25
    # He scaling: std of conv weights is sqrt(2 / fan_in) within sampling error (216 values).
    assert np.std(net.layer("conv").blobs[0]) == pytest.approx(np.sqrt(2 / 27), rel=0.15)
    out = _bn_outputs(net, seed=2)  # the measurement batch
    x = out["bn"].astype(np.float64)
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    var = x.var(axis=(0, 2, 3))
    assert np.all((var > 0.9) & (var < 1.0 + 1e-5))  # var / (var + eps)


def test_batchnorm_blobs_edge_cases() -> None:
    bn = bnfuse.load(b'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" }').layers[0]
    one = norm_blobs(bn, np.ones((1, 3)), 3, factor=2.0)  # one value per channel
    assert one[0].tolist() == [0.0, 0.0, 0.0]              # mean 0: nothing measured
    assert one[1].tolist() == [2.0, 2.0, 2.0]              # variance 1, times the factor
    assert one[2].tolist() == [2.0]
    dead = np.zeros((2, 2, 4, 4))
    dead[:, 1] = np.random.default_rng(0).standard_normal((2, 4, 4))
    _, var, _ = norm_blobs(bn, dead, 2)
    assert var[0] > 0  # a dead channel is floored, not 0
    assert norm_blobs(bn, None, 2)[1].tolist() == [1.0, 1.0]
    x = np.array([[[1.0, 3.0]], [[5.0, 7.0]]])  # (N=2, C=1, W=2): mean 4, variance 5
    assert [b.tolist() for b in norm_blobs(bn, x, 1, factor=0.5)] == [[2.0], [2.5], [0.5]]


def test_seeded() -> None:
    a, b = random_weights(_SMALL, seed=4), random_weights(_SMALL, seed=4)
    c = random_weights(_SMALL, seed=5)
    assert np.array_equal(a.layer("fc").blobs[0], b.layer("fc").blobs[0])
    assert not np.array_equal(a.layer("fc").blobs[0], c.layer("fc").blobs[0])
    factors = {float(a.layer(n).blobs[2][0]) for n in ("bn", "bnfc")}
    assert all(0.999 * 0.5 <= f <= 0.999 * 2 for f in factors) and len(factors) == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SUPPORTED))
def test_corpus_net_is_normalised(name: str) -> None:
    """Every BatchNorm of a real architecture normalises its input; outputs stay finite.

    Same batch as the measurement: per-channel |mean| < 1e-4 and variance in
    [0.99, 1 + 1e-4] for every channel of every BatchNorm. A fresh batch: the median
    per-channel variance of each BatchNorm lies in [0.5, 3] and the mean |mean| is
    below 1: statistics measured on one image (7x7 deep maps) move on another
    image, but nothing explodes or vanishes with depth (that would be orders of
    magnitude).
    """
    shapes = {"data": SUPPORTED[name]}
    net = random_weights(shared_path("corpus", "prototxt", f"{name}.prototxt"), seed=0,
                         input_shapes=shapes)
    same = _bn_outputs(net, seed=0, inputs_shape=SUPPORTED[name])
    assert len(same) == sum(layer.type == "BatchNorm" for layer in net.layers) > 0
    for layer, value in same.items():
        x = value.astype(np.float64)
        assert np.abs(x.mean(axis=(0, 2, 3))).max() < 1e-4, layer
        var = x.var(axis=(0, 2, 3))
        assert var.min() > 0.99 and var.max() < 1 + 1e-4, layer
    fresh = np.random.default_rng(1).standard_normal(SUPPORTED[name]).astype(np.float32)
    blobs = forward(net, {"data": fresh})
    assert all(np.isfinite(v).all() for v in blobs.values())
    for layer, value in _bn_outputs(net, seed=1, inputs_shape=SUPPORTED[name]).items():
        x = value.astype(np.float64)
        assert 0.5 < np.median(x.var(axis=(0, 2, 3))) < 3.0, layer
        assert np.abs(x.mean(axis=(0, 2, 3))).mean() < 1.0, layer


def test_corpus_supported_list_is_right() -> None:
    from bnfuse.layertypes import executable

    for name in SUPPORTED:
        net = load(shared_path("corpus", "prototxt", f"{name}.prototxt"))
        assert all(executable(layer.type) for layer in net.layers), name


def test_se_resnet_is_measured_through_axpy() -> None:
    # SENet's Axpy runs in the executor: every BatchNorm after one is measured.
    prototxt = shared_path("corpus", "prototxt", "se_resnet50.prototxt")
    net = random_weights(prototxt)
    convs = [layer for layer in net.layers if layer.type == "Convolution"]
    assert convs and all(layer.blobs for layer in convs)
    late = net.layers[-5:]
    assert any(layer.type == "InnerProduct" and layer.blobs for layer in late)


def test_ssd_measures_backbone_and_skips_heads() -> None:
    net = random_weights(shared_path("corpus", "prototxt", "mobilenet_ssd_deploy.prototxt"),
                         input_shapes={"data": (1, 3, 160, 160)})
    bns = [layer for layer in net.layers if layer.type == "BatchNorm"]
    assert bns and all(len(layer.blobs) == 3 for layer in bns)
    assert all(layer.blobs for layer in net.layers if layer.type == "Convolution")


def test_write_random_model(tmp_path: Path) -> None:
    source = tmp_path / "small.prototxt"
    source.write_bytes(_SMALL)
    net = write_random_model(source, tmp_path / "out.prototxt", tmp_path / "out.caffemodel",
                             seed=1)
    again = load(tmp_path / "out.prototxt", tmp_path / "out.caffemodel")
    for layer in net.layers:
        for x, y in zip(layer.blobs, again.layer(layer.name).blobs, strict=True):
            np.testing.assert_array_equal(x, y)
