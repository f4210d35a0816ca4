"""The folding engine end to end: plan, rewrite, report, save; checked against real Caffe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import corpus_prototxts, golden_cases, real_models, shared_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from modelkit import bn_blobs, caffemodel_bytes, conv_blobs, scale_blobs, write_model

import bnfuse
from bnfuse.io.caffemodel import read_caffemodel
from bnfuse.verification.executor import forward

#: Max difference relative to a blob's max |value| that float32 reordering explains on
#: these small nets (measured: <= 3e-7 on the golden cases, <= 5e-5 on the MobileNets).
GOLDEN_RTOL = 1e-5
REAL_RTOL = 2e-4


def _compare_with_caffe(net: bnfuse.Net, folder: Path, rtol: float) -> list[str]:
    """Run ``net`` on the stored input; compare every blob it still has with Caffe's."""
    blobs = np.load(folder / "blobs.npz")
    outputs = forward(net, {"data": blobs["input:data"]})
    compared = []
    for key in blobs.files:
        if not key.startswith("blob:") or "_split_" in key:
            continue
        name = key[len("blob:"):]
        if name not in outputs:
            continue
        reference = blobs[key]
        assert outputs[name].shape == reference.shape, name
        scale = max(float(np.abs(reference).max()), 1e-12)
        error = float(np.abs(outputs[name] - reference).max()) / scale
        assert error <= rtol, f"blob {name!r}: relative difference {error:.2e} > {rtol:.0e}"
        compared.append(name)
    return compared


@pytest.mark.parametrize("case", golden_cases())
def test_golden_case_folds_like_expected_and_matches_caffe(case: str, tmp_path: Path) -> None:
    folder = shared_path("golden", case)
    expect = json.loads((folder / "expect.json").read_text())
    result = bnfuse.fold(folder / "model.prototxt", folder / "model.caffemodel")
    assert [layer.type for layer in result.net.layers] == expect["types_after"]
    compared = _compare_with_caffe(result.net, folder, GOLDEN_RTOL)
    assert set(expect["outputs"]) <= set(compared)
    # The saved files give the same net back.
    result.save(tmp_path / "f.prototxt", tmp_path / "f.caffemodel")
    reloaded = bnfuse.load(tmp_path / "f.prototxt", tmp_path / "f.caffemodel")
    assert [layer.type for layer in reloaded.layers] == expect["types_after"]
    _compare_with_caffe(reloaded, folder, GOLDEN_RTOL)
    _assert_fixed_point(result, tmp_path / "f.prototxt", tmp_path / "f.caffemodel")


def _assert_fixed_point(result: bnfuse.FoldResult, prototxt: Path, caffemodel: Path) -> None:
    """One run folded everything: the folded pair folds to the same bytes."""
    again = bnfuse.fold(prototxt, caffemodel)
    # What the first run merged is a lone Scale now, reported as kept.
    assert {a.kind for a in again.report.actions} <= {"skipped", "kept"}
    left = [a for a in result.report.actions if a.kind in ("skipped", "kept", "merged_into_scale")]
    assert len(again.report.actions) == len(left)
    again.save(prototxt.with_name("again.prototxt"), caffemodel.with_name("again.caffemodel"))
    assert prototxt.with_name("again.prototxt").read_bytes() == prototxt.read_bytes()
    assert caffemodel.with_name("again.caffemodel").read_bytes() == caffemodel.read_bytes()


@pytest.mark.parametrize("model", real_models())
def test_real_models_fold_in_one_run(model: str, tmp_path: Path) -> None:
    folder = shared_path("corpus", "real", model)
    result = bnfuse.fold(folder / "model.prototxt", folder / "model.caffemodel")
    assert any(a.kind == "folded_into_producer" for a in result.report.actions)
    result.save(tmp_path / "f.prototxt", tmp_path / "f.caffemodel")
    _assert_fixed_point(result, tmp_path / "f.prototxt", tmp_path / "f.caffemodel")


@pytest.mark.parametrize(("case", "words"), [
    ("global_stats_off", "use_global_stats is false"),
    ("branch_conv_output_shared", "is also read by 'sum'"),
    ("preactivation_bn_then_conv_pad1", "pads its input with zeros"),
] if golden_cases() else [])
def test_golden_skip_rules_are_reported(case: str, words: str) -> None:
    folder = shared_path("golden", case)
    report = bnfuse.fold(folder / "model.prototxt", folder / "model.caffemodel").report
    assert any(words in action.reason for action in report.actions), report.actions


@pytest.mark.parametrize("case", ["global_stats_off"] if golden_cases() else [])
def test_global_stats_off_is_left_identical_unless_forced(case: str, tmp_path: Path) -> None:
    folder = shared_path("golden", case)
    result = bnfuse.fold(folder / "model.prototxt", folder / "model.caffemodel")
    result.save(tmp_path / "o.prototxt", tmp_path / "o.caffemodel")
    assert (tmp_path / "o.prototxt").read_bytes() == (folder / "model.prototxt").read_bytes()
    assert (tmp_path / "o.caffemodel").read_bytes() == (folder / "model.caffemodel").read_bytes()
    forced = bnfuse.fold(folder / "model.prototxt", folder / "model.caffemodel",
                         force_global_stats=True)
    assert [layer.type for layer in forced.net.layers] == ["Input", "Convolution"]


@pytest.mark.parametrize("model", real_models())
def test_real_mobilenets_fold_completely_and_match_caffe(model: str, tmp_path: Path) -> None:
    folder = shared_path("corpus", "real", model)
    result = bnfuse.fold(folder / "model.prototxt", folder / "model.caffemodel")
    after = result.report.layers_after
    assert after.get("BatchNorm", 0) == 0 and after.get("Scale", 0) == 0
    assert result.report.layers_before["BatchNorm"] == len(result.report.folded)
    result.save(tmp_path / "f.prototxt", tmp_path / "f.caffemodel")
    reloaded = bnfuse.load(tmp_path / "f.prototxt", tmp_path / "f.caffemodel")
    compared = _compare_with_caffe(reloaded, folder, REAL_RTOL)
    assert "prob" in compared


def test_untouched_layers_keep_their_bytes_in_both_files(tmp_path: Path) -> None:
    text = """name: "n"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 2 dim: 6 dim: 6 } } }
layer {
  name: "conv"   # keep this comment
  type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 3 kernel_size: 3 }
}
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param { eps: 0.001 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: 'InnerProduct' bottom: "conv" top: "fc"
        inner_product_param { num_output: 4 } }  # trailing comment
"""
    rng = np.random.default_rng(0)
    weights = {"conv": conv_blobs(rng, 3, 2), "bn": bn_blobs(rng, 3),
               "fc": [rng.normal(size=(4, 48)).astype(np.float32),
                      rng.normal(size=4).astype(np.float32)]}
    prototxt, caffemodel = write_model(tmp_path, text, weights)
    bnfuse.fold(prototxt, caffemodel).save(tmp_path / "o.prototxt", tmp_path / "o.caffemodel")
    expected_text = text.replace(
        'layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param '
        '{ eps: 0.001 } }\n', "")
    # An edited pair ends with the pair id the caffemodel carries too (bnfuse.io.pairs).
    with read_caffemodel(tmp_path / "o.caffemodel") as written:
        pair_id = written.pair_id
    assert pair_id is not None and len(pair_id) == 32
    assert (tmp_path / "o.prototxt").read_text() == expected_text + f"# bnfuse pair {pair_id}\n"
    original = caffemodel.read_bytes()
    output = (tmp_path / "o.caffemodel").read_bytes()
    with read_caffemodel(caffemodel) as a, read_caffemodel(tmp_path / "o.caffemodel") as b:
        fc_a, fc_b = a.find("fc"), b.find("fc")
        assert fc_a is not None and fc_b is not None
        assert output[fc_b.start:fc_b.end] == original[fc_a.start:fc_a.end]
        assert b.find("bn") is None


def test_producer_without_bias_gains_one_and_param_list_stays_consistent(tmp_path: Path) -> None:
    text = """layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 2 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        param { lr_mult: 1 decay_mult: 1 }
        convolution_param { num_output: 3 kernel_size: 3 bias_term: false } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
"""
    rng = np.random.default_rng(1)
    prototxt, caffemodel = write_model(tmp_path, text, {
        "conv": conv_blobs(rng, 3, 2, bias=False), "bn": bn_blobs(rng, 3),
        "sc": scale_blobs(rng, 3)})
    original = bnfuse.load(prototxt, caffemodel)
    result = bnfuse.fold(prototxt, caffemodel)
    conv = result.net.layer("conv")
    assert conv.param.convolution_param.bias_term
    assert len(conv.param.param) == 2 and len(conv.blobs) == 2
    result.save(tmp_path / "o.prototxt", tmp_path / "o.caffemodel")
    saved = (tmp_path / "o.prototxt").read_text()
    assert saved.count("param { lr_mult: 1 decay_mult: 1 }") == 2
    assert "bias_term: true" in saved and "bias_term: false" not in saved
    reloaded = bnfuse.load(tmp_path / "o.prototxt", tmp_path / "o.caffemodel")
    x = {"data": np.random.default_rng(2).normal(size=(1, 2, 5, 5)).astype(np.float32)}
    np.testing.assert_allclose(forward(reloaded, x)["conv"], forward(original, x)["conv"],
                               rtol=1e-5, atol=1e-5)


NOT_FOLDABLE = """layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "g" type: "Input" top: "g" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "sc2" type: "Scale" bottom: "conv" bottom: "g" top: "s2" }
layer { name: "conv2" type: "Convolution" bottom: "data" top: "conv2"
        convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv2" top: "b" }
layer { name: "sc_axis" type: "Scale" bottom: "b" top: "b2" scale_param { axis: 2 num_axes: 1 } }
layer { name: "conv3" type: "Convolution" bottom: "data" top: "conv3"
        convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "bn_bad" type: "BatchNorm" bottom: "conv3" top: "conv3" }
"""


def test_unfoldable_layers_are_kept_with_reasons() -> None:
    rng = np.random.default_rng(3)
    bad_stats = bn_blobs(rng, 3)
    bad_stats[1] = np.array([1.0, -5.0, 1.0], np.float32)
    data = caffemodel_bytes({
        "conv": conv_blobs(rng, 3, 3, k=1), "conv2": conv_blobs(rng, 3, 3, k=1),
        "conv3": conv_blobs(rng, 3, 3, k=1), "bn": bn_blobs(rng, 3),
        "sc_axis": [np.ones(4, np.float32)], "bn_bad": bad_stats})
    result = bnfuse.fold(NOT_FOLDABLE.encode(), data)
    reasons = {tuple(a.chain): (a.kind, a.reason) for a in result.report.actions}
    assert reasons[("bn_bad",)][0] == "skipped"
    assert "variance + eps <= 0 in channel 1" in reasons[("bn_bad",)][1]
    # The BatchNorm folds into conv2; the Scale on axis 2 stays, with its reason.
    assert reasons[("bn",)][0] == "folded_into_producer"
    assert reasons[("sc_axis",)] == (
        "skipped",
        "Scale 'sc_axis' works on axis 2 with num_axes 1; only per-channel (axis 1, num_axes 1) "
        "maps fold")
    kept = [layer.name for layer in result.net.layers]
    assert kept == ["data", "g", "conv", "sc2", "conv2", "sc_axis", "conv3", "bn_bad"]
    # A Scale with two bottoms is never a weight; nothing mentions it as folded.
    assert all("sc2" not in a.chain or a.kind == "skipped" for a in result.report.actions)


def test_batchnorm_scale_before_deconvolution_merges_instead_of_folding_forward() -> None:
    text = b"""layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
    layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }
    layer { name: "sc" type: "Scale" bottom: "bn" top: "bn" scale_param { bias_term: true } }
    layer { name: "up" type: "Deconvolution" bottom: "bn" top: "up"
            convolution_param { num_output: 2 kernel_size: 2 stride: 2 } }
    """
    rng = np.random.default_rng(4)
    data = caffemodel_bytes({"bn": bn_blobs(rng, 2), "sc": scale_blobs(rng, 2),
                             "up": [rng.normal(size=(2, 2, 2, 2)).astype(np.float32),
                                    np.zeros(2, np.float32)]})
    original = bnfuse.load(text, data)
    result = bnfuse.fold(text, data)
    action = result.report.actions[0]
    assert action.kind == "merged_into_scale"
    assert "forward folds need every reader to be a Convolution or InnerProduct" in action.reason
    assert [layer.type for layer in result.net.layers] == ["Input", "Scale", "Deconvolution"]
    x = {"data": rng.normal(size=(1, 2, 4, 4)).astype(np.float32)}
    np.testing.assert_allclose(forward(result.net, x)["up"], forward(original, x)["up"],
                               rtol=1e-5, atol=1e-5)


def test_forward_fold_into_inner_product_expands_over_spatial_positions() -> None:
    text = b"""layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
    layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
            pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
    layer { name: "bn" type: "BatchNorm" bottom: "pool" top: "pool" }
    layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
            inner_product_param { num_output: 5 bias_term: false } }
    """
    rng = np.random.default_rng(5)
    data = caffemodel_bytes({"bn": bn_blobs(rng, 3),
                             "fc": [rng.normal(size=(5, 12)).astype(np.float32)]})
    original = bnfuse.load(text, data)
    result = bnfuse.fold(text, data)
    assert [a.kind for a in result.report.actions] == ["folded_forward"]
    assert [layer.type for layer in result.net.layers] == ["Input", "Pooling", "InnerProduct"]
    x = {"data": rng.normal(size=(2, 3, 4, 4)).astype(np.float32)}
    np.testing.assert_allclose(forward(result.net, x)["fc"], forward(original, x)["fc"],
                               rtol=1e-5, atol=1e-5)


def test_options_turn_off_forward_folds_and_merging() -> None:
    text = b"""layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
    layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data" }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 2 kernel_size: 1 } }
    """
    rng = np.random.default_rng(6)
    data = caffemodel_bytes({"bn": bn_blobs(rng, 2), "conv": conv_blobs(rng, 2, 2, k=1)})
    assert [a.kind for a in bnfuse.fold(text, data).report.actions] == ["folded_forward"]
    assert [a.kind for a in bnfuse.fold(text, data, forward=False).report.actions] == \
        ["merged_into_scale"]
    skipped = bnfuse.fold(text, data, forward=False, merge_unfoldable=False).report.actions
    assert [a.kind for a in skipped] == ["skipped"]
    assert "merging into one Scale is turned off" in skipped[0].reason


def test_report_counts_layers_and_parameters() -> None:
    result = bnfuse.fold(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
    report = result.report
    assert report.layers_before == {"Input": 1, "Convolution": 2, "BatchNorm": 2, "Scale": 2,
                                    "ReLU": 2, "Pooling": 1, "InnerProduct": 1, "Softmax": 1}
    assert report.layers_after == {"Input": 1, "Convolution": 2, "ReLU": 2, "Pooling": 1,
                                   "InnerProduct": 1, "Softmax": 1}
    # conv1 (16x3x3x3, no bias) + conv2 (32x8x3x3 + 32) + fc (10x8192 + 10) + 2 x (BN 2C+1,
    # Scale 2C) before; conv1 gains a 16-value bias after.
    before = 16 * 27 + 32 * 72 + 32 + 10 * 8192 + 10 + (2 * 16 + 1 + 2 * 16) + (2 * 32 + 1 + 2 * 32)
    assert report.parameters_before == before
    assert report.parameters_after == 16 * 27 + 16 + 32 * 72 + 32 + 10 * 8192 + 10
    payload = report.to_dict()
    assert payload["actions"][0] == {"kind": "folded_into_producer",
                                     "layers": ["conv1/bn", "conv1/scale"], "target": ["conv1"],
                                     "reason": ""}


# --- corpus: real architectures with realistic random weights --------------------------------

RUNNABLE = {"resnet50.prototxt", "mobilenet_v1.prototxt", "mobilenet_v2.prototxt",
            "densenet121.prototxt"}


def _corpus_batchnorms(net: bnfuse.Net) -> set[str]:
    return {layer.name for layer in net.layers if layer.type in ("BatchNorm", "BN")}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNNABLE & set(corpus_prototxts())))
def test_corpus_architectures_fold_and_verify(name: str, tmp_path: Path) -> None:
    from bnfuse.net import save_weights
    from bnfuse.verification.compare import verify
    from bnfuse.verification.randweights import random_weights

    prototxt = shared_path("corpus", "prototxt", name)
    shapes = {"data": (1, 3, 224, 224)}
    net = random_weights(prototxt, seed=0, input_shapes=shapes)
    save_weights(net, tmp_path / "w.caffemodel")
    result = bnfuse.fold(prototxt, tmp_path / "w.caffemodel")
    batchnorms = _corpus_batchnorms(bnfuse.load(prototxt))
    covered = {n for a in result.report.actions for n in a.chain}
    assert batchnorms <= covered
    assert result.report.layers_after.get("BatchNorm", 0) == 0
    result.save(tmp_path / "f.prototxt", tmp_path / "f.caffemodel")
    inputs = {"data": np.random.default_rng(1).normal(size=shapes["data"]).astype(np.float32)}
    checked = verify((prototxt, tmp_path / "w.caffemodel"),
                     (tmp_path / "f.prototxt", tmp_path / "f.caffemodel"), inputs=inputs)
    assert checked.passed, checked.summary()


@pytest.mark.parametrize("name", sorted(set(corpus_prototxts()) - RUNNABLE))
def test_fork_prototxts_keep_every_fork_field_when_folded(name: str, tmp_path: Path) -> None:
    """SSD, ENet (SegNet BN, Python layers) and SE-ResNet (Axpy): plan on structure."""
    from bnfuse.folding.planner import plan

    prototxt = shared_path("corpus", "prototxt", name)
    net = bnfuse.load(prototxt)
    actions = plan(net, structural=True)
    covered = {n for a in actions for n in a.chain}
    assert _corpus_batchnorms(net) <= covered
    # Removing every planned chain's first layer keeps every fork block's text intact.
    text = prototxt.read_text()
    for layer in list(net.layers):
        if layer.type == "BatchNorm":
            net.remove_layer(layer)
    bnfuse.save(net, tmp_path / "o.prototxt")
    out = (tmp_path / "o.prototxt").read_text()
    for fork_field in ("prior_box_param", "detection_output_param", "bn_param",
                       "upsample_param", "python_param"):
        if layer_count := text.count(fork_field):
            removed = sum(1 for layer in bnfuse.load(prototxt).layers
                          if layer.type == "BatchNorm" and layer.node is not None
                          and fork_field in layer.node.render())
            assert out.count(fork_field) == layer_count - removed


# --- property: any conv + BN + Scale folds to the same outputs --------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    groups=st.sampled_from([1, 2, 4]),
    per_group_in=st.integers(1, 3),
    per_group_out=st.integers(1, 3),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    pad=st.integers(0, 2),
    deconv=st.booleans(),
    bias=st.booleans(),
    with_scale=st.booleans(),
    eps=st.sampled_from([1e-5, 1e-3, 0.1]),
    factor=st.sampled_from([0.0, 0.5, 1.0, 999.0]),
    seed=st.integers(0, 2**16),
)
def test_property_conv_batchnorm_scale_folds_exactly(
    groups: int, per_group_in: int, per_group_out: int, kernel: int, stride: int,
    dilation: int, pad: int, deconv: bool, bias: bool, with_scale: bool, eps: float,
    factor: float, seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    cin, cout = groups * per_group_in, groups * per_group_out
    kind = "Deconvolution" if deconv else "Convolution"
    text = f"""layer {{ name: "data" type: "Input" top: "data"
        input_param {{ shape {{ dim: 2 dim: {cin} dim: 7 dim: 6 }} }} }}
    layer {{ name: "conv" type: "{kind}" bottom: "data" top: "conv"
        convolution_param {{ num_output: {cout} kernel_size: {kernel} stride: {stride}
        dilation: {dilation} pad: {pad} group: {groups} bias_term: {str(bias).lower()} }} }}
    layer {{ name: "bn" type: "BatchNorm" bottom: "conv" top: "bn"
        batch_norm_param {{ eps: {eps} }} }}
    """
    weight_shape = (cin, per_group_out, kernel, kernel) if deconv else \
        (cout, per_group_in, kernel, kernel)
    conv = [rng.normal(size=weight_shape).astype(np.float32)]
    if bias:
        conv.append(rng.normal(size=cout).astype(np.float32))
    stats = bn_blobs(rng, cout, factor=factor if factor else 1.0)
    if factor == 0.0:
        stats[2] = np.zeros(1, np.float32)
    weights = {"conv": conv, "bn": stats}
    if with_scale:
        text += """layer { name: "sc" type: "Scale" bottom: "bn" top: "out"
            scale_param { bias_term: true } }"""
        weights["sc"] = scale_blobs(rng, cout)
    data = caffemodel_bytes(weights)
    original = bnfuse.load(text.encode(), data)
    result = bnfuse.fold(text.encode(), data)
    assert [layer.type for layer in result.net.layers] == ["Input", kind]
    x = {"data": rng.normal(size=(2, cin, 7, 6))}
    want = forward(original, x, dtype=np.float64)
    got = forward(result.net, x, dtype=np.float64)
    last = "out" if with_scale else "bn"
    scale = max(float(np.abs(want[last]).max()), 1e-12)
    # Weights are stored in float32 after a float64 fold: one float32 rounding per weight.
    assert float(np.abs(got[last] - want[last]).max()) / scale < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["enet_deploy.prototxt"] if "enet_deploy.prototxt"
                         in corpus_prototxts() else [])
def test_segnet_style_bn_folds_and_verifies_locally(name: str, tmp_path: Path) -> None:
    """ENet: SegNet "BN" (INFERENCE), Python dropout layers, pooling masks, Upsample."""
    from bnfuse.net import save_weights
    from bnfuse.verification.local import verify_local
    from bnfuse.verification.randweights import random_weights

    prototxt = shared_path("corpus", "prototxt", name)
    net = random_weights(prototxt, seed=0, unmeasurable="unit",
                         input_shapes={"data": (1, 3, 128, 128)})
    save_weights(net, tmp_path / "w.caffemodel")
    result = bnfuse.fold(prototxt, tmp_path / "w.caffemodel")
    folded = [a for a in result.report.actions if a.kind == "folded_into_producer"]
    # Every BN the generator could reach (all 86, now that SegNet's Upsample is shaped
    # and run) is folded or merged; any other says why.
    assert len(folded) == 85
    for action in result.report.skipped:
        assert action.reason == f"BN {action.chain[0]!r} has no weights in the caffemodel"
    result.save(tmp_path / "f.prototxt", tmp_path / "f.caffemodel")
    before, after = prototxt.read_text(), (tmp_path / "f.prototxt").read_text()
    for fork_field in ("python_param", "upsample_param"):
        assert after.count(fork_field) == before.count(fork_field)
    assert after.count("bn_param") == before.count("bn_param") - 86
    checked = verify_local((prototxt, tmp_path / "w.caffemodel"),
                           (tmp_path / "f.prototxt", tmp_path / "f.caffemodel"))
    assert checked.passed, checked.summary()
    assert len(checked.blobs) > 100


def test_batchnorm_and_scale_of_different_widths_are_skipped_with_the_reason() -> None:
    text = b"""layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 3 kernel_size: 1 } }
    layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
    layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" }
    """
    rng = np.random.default_rng(8)
    data = caffemodel_bytes({"conv": conv_blobs(rng, 3, 3, k=1), "bn": bn_blobs(rng, 3),
                             "sc": [np.ones(4, np.float32)]})
    result = bnfuse.fold(text, data)
    assert [(a.kind, a.reason) for a in result.report.actions] == [
        ("skipped", "bn + sc: cannot compose affine maps over 3 and 4 channels")]
    assert [layer.name for layer in result.net.layers] == ["data", "conv", "bn", "sc"]


# A BatchNorm on the data folded forward into conv1, and conv1's own BatchNorm after it:
# the shape of cvjena's AlexNet_cvgj deploy net. One run must fold both.
DATA_BN_NET = """name: "data_bn"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }
layer { name: "data/bn" type: "BatchNorm" bottom: "data" top: "data/bn" }
layer { name: "data/scale" type: "Scale" bottom: "data/bn" top: "data/bn"
        scale_param { bias_term: true } }
layer { name: "conv1" type: "Convolution" bottom: "data/bn" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2 } }
layer { name: "conv1/bn" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "conv1/scale" type: "Scale" bottom: "conv1" top: "conv1"
        scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
"""


def test_one_run_folds_forward_and_then_into_the_same_producer(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    prototxt, caffemodel = write_model(tmp_path, DATA_BN_NET, {
        "data/bn": bn_blobs(rng, 3), "data/scale": scale_blobs(rng, 3),
        "conv1": conv_blobs(rng, 4, 3), "conv1/bn": bn_blobs(rng, 4),
        "conv1/scale": scale_blobs(rng, 4),
    })
    result = bnfuse.fold(prototxt, caffemodel)
    assert [(a.kind, a.chain, a.target) for a in result.report.actions] == [
        ("folded_forward", ["data/bn", "data/scale"], ["conv1"]),
        ("folded_into_producer", ["conv1/bn", "conv1/scale"], ["conv1"]),
    ]
    assert [layer.type for layer in result.net.layers] == ["Input", "Convolution", "ReLU"]
    out = tmp_path / "once.prototxt", tmp_path / "once.caffemodel"
    result.save(*out)
    assert bnfuse.verify((prototxt, caffemodel), out).passed
    # The fixed point: folding the folded model again finds nothing and changes no byte.
    again = bnfuse.fold(*out)
    assert again.report.actions == []
    twice = tmp_path / "twice.prototxt", tmp_path / "twice.caffemodel"
    again.save(*twice)
    assert twice[0].read_bytes() == out[0].read_bytes()
    assert twice[1].read_bytes() == out[1].read_bytes()
