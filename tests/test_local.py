"""verify_local(): check only what a fold changed, in nets the executor cannot run whole."""

from __future__ import annotations

import numpy as np
import pytest

from bnfuse.errors import UnsupportedLayerError
from bnfuse.net import Net
from bnfuse.verification.compare import verify
from bnfuse.verification.local import changed_layers, known_shapes, verify_local
from bnfuse.verification.randweights import random_weights
from tests.conftest import shared_path
from tests.test_compare import fold_bn, fresh, golden


def fold_all(net: Net, **mistake: object) -> Net:
    """Fold every Convolution -> BatchNorm -> Scale chain by hand (optionally wrongly)."""
    producers = {}
    for layer in net.layers:
        if layer.type == "Convolution":
            producers[layer.tops[0]] = layer.name
    chains = []
    layers = list(net.layers)
    for i, layer in enumerate(layers[:-1]):
        after = layers[i + 1]
        if (layer.type == "BatchNorm" and after.type == "Scale"
                and after.bottoms[0] == layer.tops[0] and layer.bottoms[0] in producers
                and layers[i - 1].name == producers[layer.bottoms[0]]):
            chains.append((producers[layer.bottoms[0]], layer.name, after.name))
    for conv, bn, scale in chains:
        fold_bn(net, conv, bn, scale, **mistake)  # type: ignore[arg-type]
    return net


def test_golden_fold_checked_locally() -> None:
    case = "bn_without_scale_eps"
    right = fold_bn(fresh(case), "conv1", "bn1")
    assert changed_layers(fresh(case), right) == ["conv1", "bn1"]
    result = verify_local(golden(case), right)
    assert result.passed, result.summary()
    assert [b.name for b in result.blobs] == ["conv1"]
    wrong = verify_local(golden(case), fold_bn(fresh(case), "conv1", "bn1", eps=1e-5))
    assert not wrong.passed and wrong.first_divergence == "conv1"


def test_nothing_changed() -> None:
    result = verify_local(golden("conv_bn_scale_inplace"), fresh("conv_bn_scale_inplace"))
    assert result.passed and result.blobs == []


def test_renamed_tops_region_includes_the_relu_between_folds() -> None:
    case = "conv_bn_scale_renamed_tops"
    folded = fold_bn(fresh(case), "conv1", "conv1/bn", "conv1/scale")
    # conv2 changed too (pretend), so relu1 between the two is run as part of the region.
    result = verify_local(golden(case), folded, changed=["conv1", "conv1/bn", "conv1/scale",
                                                         "conv2"])
    assert result.passed, result.summary()
    assert [b.name for b in result.blobs] == ["conv1/scale", "conv2"]


@pytest.mark.slow
def test_ssd_fold_verified_locally() -> None:
    prototxt = shared_path("corpus", "prototxt", "mobilenet_ssd_deploy.prototxt")
    # The declared 300x300 input: smaller inputs leave the last extra layers 1x1 maps,
    # whose one-value statistics make ill-conditioned BatchNorms that amplify rounding.
    shapes = {"data": (1, 3, 300, 300)}
    original = random_weights(prototxt, seed=0, input_shapes=shapes)
    folded = fold_all(random_weights(prototxt, seed=0, input_shapes=shapes))
    assert sum(layer.type == "BatchNorm" for layer in folded.layers) == 0
    # The numpy executor runs SSD's layers now: the whole net verifies, DetectionOutput too.
    whole = verify(original, folded, rtol=1e-2)
    assert whole.passed and whole.scope == "net", whole.summary()
    assert "detection_out" in [blob.name for blob in whole.blobs]
    # The extra layers end in 1x1 maps: batch-1 statistics there are measured on a
    # handful of values, and such ill-conditioned BatchNorms amplify float32 rounding to
    # ~3e-3 (FOLDING.md: "a tiny var + eps amplifies rounding"). Hence rtol 1e-2 here;
    # the wrong fold below is still 100x beyond it.
    result = verify_local(original, folded, input_shapes=shapes, rtol=1e-2)
    assert result.passed, result.summary()
    assert len(result.blobs) >= 35  # every folded chain's output was compared
    wrong = verify_local(original,
                         fold_all(random_weights(prototxt, seed=0, input_shapes=shapes),
                                  use_factor=False),
                         input_shapes=shapes, rtol=1e-2)
    assert not wrong.passed
    assert wrong.first_divergence == result.blobs[0].name
    assert max(b.max_rel for b in wrong.failures) > 1.0


@pytest.mark.slow
def test_se_net_fold_verified_locally() -> None:
    prototxt = shared_path("corpus", "prototxt", "se_resnet50.prototxt")
    original = random_weights(prototxt, seed=1, unmeasurable="unit")
    shapes = known_shapes(original)
    assert "conv2_1" in shapes  # walked past the Axpy layer
    folded = fold_all(random_weights(prototxt, seed=1, unmeasurable="unit"))
    result = verify_local(original, folded)
    assert result.passed, result.summary()
    # Every folded chain's output is compared (and the unchanged layers between them).
    compared = {b.name for b in result.blobs}
    assert {layer.tops[0] for layer in original.layers if layer.type == "Scale"} <= compared
    wrong = fold_all(random_weights(prototxt, seed=1, unmeasurable="unit"), eps=0.5)
    bad = verify_local(original, wrong)
    assert not bad.passed and bad.first_divergence == result.blobs[0].name
    assert all(b.max_rel > 1e-3 for b in bad.failures)


def test_region_input_shape_from_weights() -> None:
    """A region input whose shape inference cannot reach is shaped from the conv's weights."""
    text = b"""
    layer { name: "data" type: "Input" top: "data"
            input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
    layer { name: "odd" type: "MysteryLayer" bottom: "data" top: "m" }
    layer { name: "conv" type: "Convolution" bottom: "m" top: "c"
            convolution_param { num_output: 4 kernel_size: 3 } }
    layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }
    """
    from bnfuse.net import load

    def build() -> Net:
        net = load(text)
        rng = np.random.default_rng(0)
        net.set_blobs(net.layer("conv"), [rng.standard_normal((4, 5, 3, 3)).astype(np.float32),
                                          np.zeros(4, np.float32)])
        net.set_blobs(net.layer("bn"), [rng.standard_normal(4).astype(np.float32),
                                        rng.uniform(0.5, 2, 4).astype(np.float32),
                                        np.ones(1, np.float32)])
        return net

    result = verify_local(build(), fold_bn(build(), "conv", "bn"))
    assert result.passed, result.summary()
    assert "1 region inputs" in result.notes[0]


SHUFFLE = b"""
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 4 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "reorg" type: "Reorg" bottom: "conv" top: "reorg"
        reorg_param { stride: 2 } }
"""


def _shuffle_pair() -> tuple[Net, Net]:
    import bnfuse

    original = random_weights(SHUFFLE, seed=3, unmeasurable="unit")
    folded = bnfuse.fold_net(random_weights(SHUFFLE, seed=3, unmeasurable="unit")).net
    assert [layer.name for layer in folded.layers] == ["data", "conv", "reorg"]
    return original, folded


def test_verify_falls_back_to_the_local_check_when_asked() -> None:
    original, folded = _shuffle_pair()
    with pytest.raises(UnsupportedLayerError, match="'reorg' has type 'Reorg'"):
        verify(original, folded)  # fallback="none" by default
    result = verify(original, folded, fallback="local", seed=4)
    assert result.passed, result.summary()
    assert result.scope == "local" and result.backend == "numpy (local)"
    assert result.scope_reason.startswith("layer 'reorg' has type 'Reorg'")
    assert [blob.name for blob in result.blobs] == ["conv"]
    lines = result.summary().splitlines()
    assert lines[1] == (f"note: {result.scope_reason}; comparing the changed layers locally "
                        "instead")
    payload = result.to_dict()
    assert payload["scope"] == "local" and payload["scope_reason"] == result.scope_reason
    # It is the local check itself, with the same seed: only the reason is added.
    direct = verify_local(original, folded, seed=4)
    assert direct.scope == "local" and direct.scope_reason == ""
    assert dict(payload, scope_reason="") == direct.to_dict()


def test_local_fallback_only_replaces_a_numpy_run_on_seeded_inputs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    original, folded = _shuffle_pair()
    data = {"data": np.ones((1, 4, 6, 6), np.float32)}
    with pytest.raises(UnsupportedLayerError, match="Reorg"):
        verify(original, folded, inputs=data, fallback="local")  # given inputs are not random

    def other_backend(net: object, inputs: object, **options: object) -> object:
        raise UnsupportedLayerError("the other runtime cannot run layer 'reorg'")

    monkeypatch.setattr("bnfuse.verification.compare.get_backend", lambda name: other_backend)
    with pytest.raises(UnsupportedLayerError, match="other runtime"):
        verify(original, folded, backend="opencv", fallback="local")


def test_fallback_is_unused_when_the_whole_net_runs_and_must_be_known() -> None:
    import bnfuse
    from bnfuse.errors import BnfuseError

    paths = bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel")
    result = verify(paths, paths, fallback="local")
    assert result.passed and result.scope == "net" and result.scope_reason == ""
    assert result.backend == "numpy"
    with pytest.raises(BnfuseError, match="unknown verification fallback 'global'; choose one "
                                          "of none, local"):
        verify(paths, paths, fallback="global")
