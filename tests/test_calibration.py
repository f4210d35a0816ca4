"""Calibrated tolerances: the noise of a one-ulp weight change, measured on the net itself.

The deep net here reproduces the false alarm of a 152-layer net with random weights: a
plain chain of 50 convolutions, each with BatchNorm, Scale and ReLU, amplifies rounding so
much that a correct fold differs from the original by several times the depth-scaled
default tolerance; moving the original's weights by one ulp moves its blobs as far.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import bnfuse
from bnfuse.net import Net
from bnfuse.verification.calibrate import one_ulp, perturbed
from bnfuse.verification.compare import (
    NOISE_CEILING,
    NOISE_MULTIPLE,
    Noise,
    Tolerances,
    compare_runs,
    verify,
)
from bnfuse.verification.executor import forward
from bnfuse.verification.randweights import random_weights

BLOCKS = 25  # 50 convolutions: deep enough that rounding is amplified


def _chain(blocks: int = BLOCKS, channels: int = 8, size: int = 8) -> bytes:
    lines = [f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 '
             f'dim: {channels} dim: {size} dim: {size} }} }} }}']
    bottom = "data"
    for i in range(2 * blocks):
        name = f"c{i}"
        lines += [
            f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
            f'convolution_param {{ num_output: {channels} kernel_size: 3 pad: 1 }} }}',
            f'layer {{ name: "{name}/bn" type: "BatchNorm" bottom: "{name}" top: "{name}" }}',
            f'layer {{ name: "{name}/sc" type: "Scale" bottom: "{name}" top: "{name}" '
            'scale_param { bias_term: true } }',
            f'layer {{ name: "{name}/relu" type: "ReLU" bottom: "{name}" top: "{name}" }}',
        ]
        bottom = name
    return "\n".join(lines).encode()


CHAIN = _chain()
LAST = f"c{2 * BLOCKS - 1}"


@pytest.fixture(scope="module")
def original() -> Net:
    return random_weights(CHAIN, seed=0)


def _folded(edit: Callable[[Net], None] | None = None) -> Net:
    net = random_weights(CHAIN, seed=0)
    if edit is not None:
        edit(net)
    return bnfuse.fold_net(net).net


def test_correct_fold_of_a_deep_net_no_longer_fails(original: Net) -> None:
    folded = _folded()
    uncalibrated = verify(original, folded, calibrate=False)
    assert not uncalibrated.passed  # the false alarm of the issue
    worst = max(uncalibrated.blobs, key=lambda blob: blob.max_rel)
    assert worst.name == LAST and worst.rtol == pytest.approx(2e-4 * 50 / 5)  # depth 50
    assert 3 * worst.rtol < worst.max_rel < 1e-2  # measured: 6.6e-3 against 2e-3

    calibrated = verify(original, folded)
    assert calibrated.passed and calibrated.tolerances.calibrated
    last = next(blob for blob in calibrated.blobs if blob.name == LAST)
    assert last.noise is not None and last.noise.rel is not None
    assert 1e-3 < last.noise.rel < 1e-2  # one ulp moves the original as far as the fold
    assert last.max_rel == worst.max_rel and last.floor == worst.rtol
    assert last.rtol == pytest.approx(NOISE_MULTIPLE * last.noise.rel)
    summary = calibrated.summary()
    assert summary.startswith(f"PASSED (numpy, float32): {2 * BLOCKS} blobs compared, ")
    assert f"in '{LAST}' (tolerance {last.rtol:.1e}, noise {last.noise.rel:.1e})" in summary
    payload = json.loads(json.dumps(calibrated.to_dict()))
    assert payload["tolerances"]["calibrated"] is True
    entry = next(blob for blob in payload["blobs"] if blob["name"] == LAST)
    assert entry["noise"]["rel"] == last.noise.rel and entry["floor"] == last.floor


def _scale_weight(layer: str, factor: float) -> Callable[[Net], None]:
    def edit(folded: Net) -> None:
        target = folded.layer(layer)
        folded.set_blobs(target, [target.blobs[0] * np.float32(factor), *target.blobs[1:]])
    return edit


@pytest.mark.parametrize(("layer", "factor"), [("c0", 1.001), ("c24", 1.005), ("c48", 1.05)])
def test_a_scaled_weight_still_fails(original: Net, layer: str, factor: float) -> None:
    folded = _folded()
    _scale_weight(layer, factor)(folded)
    result = verify(original, folded)
    assert not result.passed and result.first_divergence == layer
    first = result.failures[0]
    assert first.noise is not None and first.noise.rel is not None
    assert first.rtol == max(first.floor, NOISE_MULTIPLE * first.noise.rel)
    assert first.max_rel > 2 * first.rtol  # measured: 5x to 6x


def test_a_wrong_eps_still_fails(original: Net) -> None:
    # The fold is made from a net whose first BatchNorm says eps 2e-5 instead of 1e-5.
    folded = _folded(lambda net: net.set_field(net.layer("c0/bn"), ["batch_norm_param", "eps"],
                                               2e-5))
    result = verify(original, folded)
    assert not result.passed
    assert result.failures[0].max_rel > result.failures[0].rtol


def test_shallow_net_keeps_the_default_tolerance() -> None:
    paths = bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel")
    folded = bnfuse.fold(*paths).net
    result = verify(paths, folded)
    assert result.passed
    for blob in result.blobs:
        assert blob.noise is not None and blob.noise.rel is not None
        assert blob.noise.rel < 2e-6, blob.name  # float32 rounding, far below the floor
        assert blob.rtol == blob.floor == pytest.approx(2e-4), blob.name


def test_explicit_rtol_is_not_calibrated(original: Net) -> None:
    result = verify(original, original, rtol=1e-3)
    assert not result.tolerances.calibrated
    assert all(blob.noise is None and blob.rtol == 1e-3 for blob in result.blobs)


def test_tolerance_rule() -> None:
    tol = Tolerances(2e-4, 1e-7, True, "float32", calibrated=True)
    assert tol.with_noise(2e-4, None) == 2e-4
    assert tol.with_noise(2e-4, 1e-6) == 2e-4  # the floor
    assert tol.with_noise(2e-4, 1e-3) == pytest.approx(4e-3)
    assert NOISE_CEILING == 0.05
    assert not tol.too_noisy(2e-4, 0.0125) and tol.too_noisy(2e-4, 0.0126)
    assert not tol.too_noisy(0.08, 0.019)  # a floor above the ceiling still judges
    assert tol.too_noisy(2e-4, math.inf) and tol.too_noisy(2e-4, math.nan)
    assert not tol.too_noisy(2e-4, None)
    plain = Tolerances(2e-4, 1e-7, True, "float32")
    assert plain.with_noise(2e-4, 1e-3) == 2e-4 and not plain.too_noisy(2e-4, 1.0)


def test_chaotic_blobs_are_not_judged_and_the_rest_are() -> None:
    # 80 convolutions on 4x4 maps: from about the 45th, one ulp of the weights moves a
    # blob by more than 1.25% (4 x noise > 0.05), and by about 100% at the end.
    text = _chain(blocks=40, size=4)
    original = random_weights(text, seed=0)
    result = verify(original, bnfuse.fold_net(random_weights(text, seed=0)).net)
    assert result.passed
    unjudged = [name for name, why in result.not_compared if why.startswith("too sensitive")]
    judged = [blob.name for blob in result.blobs]
    assert len(unjudged) + len(judged) == 80 and 30 <= len(judged) <= 60
    assert judged[:30] == [f"c{i}" for i in range(30)]  # the blobs before the chaos
    assert min(int(name[1:]) for name in unjudged) >= 30
    assert all(blob.rtol <= NOISE_CEILING for blob in result.blobs)
    assert f"not judged: {len(unjudged)} blobs too sensitive to rounding" in result.summary()
    # A wrong fold before the chaos still fails.
    wrong = bnfuse.fold_net(random_weights(text, seed=0)).net
    _scale_weight("c10", 1.002)(wrong)
    failed = verify(original, wrong)
    assert not failed.passed and failed.first_divergence == "c10"


def test_one_ulp_moves_every_nonzero_value_by_exactly_one_ulp() -> None:
    values = np.array([1.0, -3.5, 0.0, np.inf, 1e-30, 7.0], np.float32)
    moved = one_ulp(values, np.random.default_rng(4))
    steps = np.abs(moved.view(np.int32).astype(np.int64) - values.view(np.int32))
    assert moved.dtype == np.float32
    assert steps.tolist() == [1, 1, 0, 0, 1, 1]
    half = np.array([1.0, 2.0], np.float16)
    assert np.abs(one_ulp(half, np.random.default_rng(0)) - half).max() <= np.float16(2 ** -9)


def test_perturbed_net_keeps_the_original(original: Net) -> None:
    before = [np.array(blob) for blob in original.layer("c0").blobs]
    held = original.layer("c0").blobs
    view = perturbed(original, seed=3)
    assert [layer.name for layer in view.layers] == [layer.name for layer in original.layers]
    assert all(np.array_equal(b, a) for a, b in zip(before, original.layer("c0").blobs,
                                                     strict=True))
    assert original.layer("c0").blobs is held
    moved = forward(view, seed=0)[LAST]
    assert moved.shape == (1, 8, 8, 8) and not np.array_equal(moved, forward(original)[LAST])


# --------------------------------------------------------------------------- index tops

SEGNET_LIKE = b'''
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 4 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" top: "mask"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
'''


def test_index_tops_are_compared_exactly_and_apart() -> None:
    original = random_weights(SEGNET_LIKE, seed=0)
    result = verify(original, bnfuse.fold_net(random_weights(SEGNET_LIKE, seed=0)).net)
    assert result.passed
    kinds = {blob.name: blob.kind for blob in result.blobs}
    assert kinds == {"conv": "values", "pool": "values", "mask": "indices"}
    mask = next(blob for blob in result.blobs if blob.name == "mask")
    assert (mask.differing, mask.allowed) == (0, 0)
    assert mask.to_dict()["max_abs"] is None and mask.to_dict()["max_rel"] is None
    assert "indices: 1 blobs compared exactly, 0 of 64 elements differ" in result.summary()
    assert result.summary().startswith("PASSED (numpy, float32): 2 blobs compared")


def test_a_flipped_index_fails_unless_the_noise_flips_one_too() -> None:
    net = random_weights(SEGNET_LIKE, seed=0)
    values = forward(net, seed=0)
    flipped = dict(values, mask=values["mask"].copy())
    flipped["mask"][0, 0, 0, 0] = 480.0  # an index far away, as a float: max_abs 480
    tolerances = Tolerances(2e-4, 1e-7, True, "float32", calibrated=True)
    result = compare_runs(net.layers, net.layers, values, flipped, tolerances=tolerances,
                          backend="numpy", skip=["data"])
    assert not result.passed and result.first_divergence == "mask"
    assert result.failures[0].reason == "1 indices differ"
    assert "1 of 64 indices differ (allowed 0)" in result.summary()
    noisy = {"mask": Noise(count=1)}  # a one-ulp change flipped one window's maximum
    result = compare_runs(net.layers, net.layers, values, flipped, tolerances=tolerances,
                          backend="numpy", skip=["data"], noise=noisy)
    mask = next(blob for blob in result.blobs if blob.name == "mask")
    assert result.passed and (mask.differing, mask.allowed) == (1, NOISE_MULTIPLE * 1)


def test_cli_prints_the_error_and_the_noise(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    from bnfuse.cli import main

    model = [str(bnfuse.example_path("prototxt")), str(bnfuse.example_path("caffemodel"))]
    folded = [str(tmp_path / "f.prototxt"), str(tmp_path / "f.caffemodel")]
    bnfuse.fold(*model).save(*folded)
    report = tmp_path / "verify.json"
    assert main(["verify", *model, *folded, "--json", str(report)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("PASSED (numpy, float32): 5 blobs compared, largest relative ")
    assert ", noise " in first and first.endswith(")")
    payload = json.loads(report.read_text())
    assert payload["tolerances"]["calibrated"] is True
    assert payload["tolerances"]["noise_multiple"] == NOISE_MULTIPLE
    assert all(0 < blob["noise"]["rel"] < 2e-6 and blob["kind"] == "values"
               for blob in payload["blobs"])
