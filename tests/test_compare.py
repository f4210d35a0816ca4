"""verify(): the metric, the default tolerances, and verdicts on right and wrong folds.

The wrong folds are the mistakes real conversion scripts make (eps hard-coded to
1e-5, BatchNorm's factor ignored, grouped deconvolution scaled on the wrong
axis), built by hand with numpy on Caffe-made golden nets; each must fail with
``first_divergence`` naming the first blob it corrupts, while the correct fold
of the same net passes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bnfuse.graph import build_graph
from bnfuse.net import Layer, Net, load
from bnfuse.verification.compare import (
    compare_values,
    default_tolerances,
    load_inputs,
    verify,
)
from bnfuse.verification.randweights import random_weights
from tests.conftest import golden_cases, shared_path


def golden(case: str) -> tuple[Path, Path]:
    """The (prototxt, caffemodel) of a golden case (skips when ../shared is absent)."""
    folder = shared_path("golden", case)
    return folder / "model.prototxt", folder / "model.caffemodel"


def fold_bn(
    net: Net,
    producer: str,
    bn: str,
    scale: str | None = None,
    *,
    eps: float | None = None,
    use_factor: bool = True,
    deconv_groups_ignored: bool = False,
) -> Net:
    """Fold BatchNorm (+ Scale) into ``producer`` by hand, optionally making a known mistake."""
    conv, norm = net.layer(producer), net.layer(bn)
    mean, var, factor = (np.asarray(b, dtype=np.float64) for b in norm.blobs)
    k = (0.0 if factor[0] == 0 else 1.0 / factor[0]) if use_factor else 1.0
    eps = float(norm.param.batch_norm_param.eps) if eps is None else eps
    s = 1.0 / np.sqrt(var * k + eps)
    t = -mean * k * s
    last: Layer = norm
    if scale is not None:
        sc = net.layer(scale)
        gamma = np.asarray(sc.blobs[0], dtype=np.float64)
        beta = np.asarray(sc.blobs[1], dtype=np.float64) if len(sc.blobs) > 1 else 0.0
        s, t = s * gamma, t * gamma + beta
        last = sc
    weight = np.asarray(conv.blobs[0], dtype=np.float64)
    if conv.type == "Deconvolution":
        group = int(conv.param.convolution_param.group) or 1
        cin, cout_g = weight.shape[:2]
        if deconv_groups_ignored:  # the classic bug: every group scaled with group 0's factors
            weight = weight * s[:cout_g].reshape(1, cout_g, 1, 1)
        else:
            grouped = weight.reshape(group, cin // group, cout_g, *weight.shape[2:])
            weight = (grouped * s.reshape(group, 1, cout_g, 1, 1)).reshape(weight.shape)
    elif conv.type == "InnerProduct":
        weight = weight * s[:, None]
    else:
        weight = weight * s.reshape(-1, *([1] * (weight.ndim - 1)))
    bias = np.asarray(conv.blobs[1], dtype=np.float64) if len(conv.blobs) > 1 else 0.0
    bias = bias * s + t
    param = "inner_product_param" if conv.type == "InnerProduct" else "convolution_param"
    if len(conv.blobs) < 2:
        net.set_field(conv, (param, "bias_term"), True)
    net.set_blobs(conv, [weight.astype(np.float32), bias.astype(np.float32)])
    # The folded producer publishes the last folded layer's top.
    if last.tops[0] != conv.tops[0]:
        net.set_top(conv, 0, last.tops[0])
    for name in (bn, scale):
        if name is not None:
            net.remove_layer(net.layer(name))
    return net


def fresh(case: str) -> Net:
    return load(*golden(case))


# --------------------------------------------------------------------------- the metric


def test_compare_values_metric() -> None:
    a = np.array([[1.0, -4.0], [2.0, 0.5]])
    b = a + np.array([[0.0, 0.002], [0.0, 0.0]])
    c = compare_values("x", a, b, rtol=1e-3, atol=0.0)
    assert c.max_abs == pytest.approx(0.002, rel=1e-9)
    assert c.max_rel == pytest.approx(0.002 / 4.0, rel=1e-9)  # relative to max |A| = 4
    assert c.passed
    assert not compare_values("x", a, b, rtol=1e-4, atol=0.0).passed


def test_compare_values_shapes_zero_and_nonfinite() -> None:
    shape = compare_values("x", np.zeros((1, 4)), np.zeros((4, 1)), rtol=1, atol=1)
    assert not shape.passed and "shape" in shape.reason and math.isinf(shape.max_rel)
    zeros = compare_values("z", np.zeros(3), np.zeros(3), rtol=1e-3, atol=0.0)
    assert zeros.passed and zeros.max_rel == 0.0
    tiny = compare_values("z", np.zeros(3), np.full(3, 1e-9), rtol=1e-3, atol=1e-7)
    assert tiny.passed and math.isinf(tiny.max_rel)  # atol covers an all-zero reference
    same_nan = compare_values("n", np.array([np.nan, 1.0]), np.array([np.nan, 1.0]),
                              rtol=1e-3, atol=0.0)
    assert same_nan.passed
    one_nan = compare_values("n", np.array([1.0, 1.0]), np.array([np.nan, 1.0]),
                             rtol=1e-3, atol=0.0)
    assert not one_nan.passed and "non-finite" in one_nan.reason


def test_default_tolerances_scale_with_depth() -> None:
    f32 = default_tolerances(np.float32)
    assert f32.for_depth(1) == pytest.approx(2e-4)
    assert f32.for_depth(50) == pytest.approx(2e-3)     # end of ResNet-50: measured 2e-4
    assert f32.for_depth(155) == pytest.approx(6.2e-3)  # end of ResNet-152: measured 4e-3
    assert default_tolerances(np.float64).for_depth(1) == pytest.approx(1e-6)
    explicit = default_tolerances(np.float32, rtol=0.05, atol=0.0)
    assert explicit.for_depth(1000) == 0.05 and explicit.atol == 0.0


# --------------------------------------------------------------------------- golden nets


@pytest.mark.parametrize("case", golden_cases())
def test_net_against_itself_passes(case: str) -> None:
    prototxt, caffemodel = golden(case)
    inputs = shared_path("golden", case, "blobs.npz")
    result = verify((prototxt, caffemodel), (prototxt, caffemodel), inputs=inputs)
    assert result.passed, result.summary()
    assert result.blobs and all(b.max_abs == 0.0 for b in result.blobs)
    assert result.first_divergence is None
    json.dumps(result.to_dict())  # JSON-ready


def test_numpy_matches_real_caffe_reference() -> None:
    """The numpy run of a golden net agrees with real Caffe's blobs within the default rtol."""
    prototxt, caffemodel = golden("conv_bn_scale_renamed_tops")
    reference = np.load(shared_path("golden", "conv_bn_scale_renamed_tops", "blobs.npz"))
    inputs = load_inputs(shared_path("golden", "conv_bn_scale_renamed_tops", "blobs.npz"))
    from bnfuse.verification.executor import forward

    ours = forward(load(prototxt, caffemodel), inputs)
    for key in reference.files:
        if key.startswith("blob:") and "_split_" not in key:
            name = key[len("blob:"):]
            c = compare_values(name, reference[key], ours[name], rtol=2e-4, atol=1e-7)
            assert c.passed, (name, c.max_rel)


def test_correct_fold_passes_in_place() -> None:
    result = verify(golden("conv_bn_scale_inplace"),
                    fold_bn(fresh("conv_bn_scale_inplace"), "conv1", "bn1", "sc1"))
    assert result.passed, result.summary()
    assert [b.name for b in result.blobs] == ["conv1"]
    assert result.blobs[0].max_rel < 1e-5  # float32 reordering only


def test_wrong_eps_fails_at_first_blob() -> None:
    case = "bn_without_scale_eps"  # the prototxt says eps 0.001
    inputs = shared_path("golden", case, "blobs.npz")
    right = verify(golden(case), fold_bn(fresh(case), "conv1", "bn1"), inputs=inputs)
    assert right.passed, right.summary()
    wrong = verify(golden(case), fold_bn(fresh(case), "conv1", "bn1", eps=1e-5), inputs=inputs)
    assert not wrong.passed
    assert wrong.first_divergence == "conv1"
    # The eps mistake is small here (variances near 0.3): 1.7e-3 against 3e-7 for the right fold.
    assert wrong.blobs[0].max_rel > 1e-3
    assert right.blobs[0].max_rel < 1e-5
    assert "FAILED" in wrong.summary() and "conv1" in wrong.summary()


def test_ignored_factor_fails() -> None:
    case = "conv_bn_scale_inplace"  # factor 440.6
    wrong = verify(golden(case), fold_bn(fresh(case), "conv1", "bn1", "sc1", use_factor=False))
    assert not wrong.passed
    assert wrong.first_divergence == "conv1"
    assert wrong.blobs[0].max_rel > 0.1


def test_grouped_deconvolution_wrong_axis_fails() -> None:
    case = "deconv_grouped"
    right = verify(golden(case), fold_bn(fresh(case), "up", "up/bn", "up/scale"))
    assert right.passed, right.summary()
    wrong = verify(golden(case), fold_bn(fresh(case), "up", "up/bn", "up/scale",
                                         deconv_groups_ignored=True))
    assert not wrong.passed and wrong.first_divergence == "up"


def test_renamed_tops_first_divergence_and_only_in_a() -> None:
    case = "conv_bn_scale_renamed_tops"
    right = verify(golden(case), fold_bn(fresh(case), "conv1", "conv1/bn", "conv1/scale"))
    assert right.passed, right.summary()
    assert [b.name for b in right.blobs] == ["conv1/scale", "conv2"]
    assert right.only_in_a == ["conv1", "conv1/bn"]
    wrong = verify(golden(case), fold_bn(fresh(case), "conv1", "conv1/bn", "conv1/scale",
                                         use_factor=False))
    assert wrong.first_divergence == "conv1/scale"
    assert [b.name for b in wrong.failures] == ["conv1/scale", "conv2"]


def test_inner_product_fold() -> None:
    case = "innerproduct_bn"
    assert verify(golden(case), fold_bn(fresh(case), "fc", "fc/bn", "fc/scale")).passed
    wrong = verify(golden(case), fold_bn(fresh(case), "fc", "fc/bn", "fc/scale", eps=1.0))
    assert wrong.first_divergence == "fc"


# --------------------------------------------------------------------------- forward folds

_POOL_BN_CONV = b"""
name: "fwd"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 4 dim: 8 dim: 8 } } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "pool" top: "pool" }
layer { name: "sc" type: "Scale" bottom: "pool" top: "pool" scale_param { bias_term: true } }
layer { name: "conv" type: "Convolution" bottom: "pool" top: "conv"
        convolution_param { num_output: 5 kernel_size: 3 } }
"""


def _forward_fold(net: Net) -> Net:
    """Fold the in-place BatchNorm + Scale on ``pool`` into the next (pad 0) convolution."""
    bn, sc, conv = net.layer("bn"), net.layer("sc"), net.layer("conv")
    mean, var, factor = (np.asarray(b, dtype=np.float64) for b in bn.blobs)
    k = 1.0 / factor[0]
    s = 1.0 / np.sqrt(var * k + float(bn.param.batch_norm_param.eps))
    t = -mean * k * s
    gamma, beta = (np.asarray(b, dtype=np.float64) for b in sc.blobs)
    s, t = s * gamma, t * gamma + beta
    w, b = (np.asarray(x, dtype=np.float64) for x in conv.blobs)
    new_b = b + np.einsum("oikl,i->o", w, t)
    new_w = w * s[None, :, None, None]
    net.set_blobs(conv, [new_w.astype(np.float32), new_b.astype(np.float32)])
    net.remove_layer(bn)
    net.remove_layer(sc)
    return net


def test_forward_fold_moves_normalisation_past_a_blob() -> None:
    """An in-place blob that ends normalised before and raw after is listed, not failed."""
    original = random_weights(_POOL_BN_CONV, seed=3)
    folded = _forward_fold(random_weights(_POOL_BN_CONV, seed=3))
    result = verify(original, folded, seed=1)
    assert result.passed, result.summary()
    assert [b.name for b in result.blobs] == ["conv"]
    assert [name for name, _ in result.not_compared] == ["pool"]
    assert "'sc'" in result.not_compared[0][1]


# --------------------------------------------------------------------------- options


def test_inputs_mapping_npz_and_seed() -> None:
    prototxt, caffemodel = golden("conv_bn_scale_inplace")
    npz = shared_path("golden", "conv_bn_scale_inplace", "blobs.npz")
    from_file = load_inputs(npz)
    assert set(from_file) == {"data"}
    by_map = verify((prototxt, caffemodel), (prototxt, caffemodel), inputs=from_file)
    assert by_map.passed
    wrong = fold_bn(fresh("conv_bn_scale_inplace"), "conv1", "bn1", "sc1", use_factor=False)
    first = verify((prototxt, caffemodel), wrong, seed=7)
    again = verify((prototxt, caffemodel), wrong, seed=7)
    other = verify((prototxt, caffemodel), wrong, seed=8)
    assert first.blobs[0].max_abs == again.blobs[0].max_abs  # seeded: reproducible
    assert first.blobs[0].max_abs != other.blobs[0].max_abs


TWO_INPUTS = b"""
layer { name: "in" type: "Input" top: "image" top: "bias"
        input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 }
                      shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "image" top: "c"
        convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }
layer { name: "sum" type: "Eltwise" bottom: "c" bottom: "bias" top: "out" }
"""


def test_every_path_draws_the_same_seeded_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The executor, verify() and the local check feed identical arrays for one seed."""
    import bnfuse
    from bnfuse.verification import executor
    from bnfuse.verification.backends import numpy_backend
    from bnfuse.verification.local import verify_local

    rng = np.random.default_rng(11)  # the draws, written out: image first, then bias
    expected = {"image": rng.standard_normal((1, 2, 4, 4)).astype(np.float32),
                "bias": rng.standard_normal((1, 2, 4, 4)).astype(np.float32)}
    original = random_weights(TWO_INPUTS, seed=0)
    folded = bnfuse.fold_net(random_weights(TWO_INPUTS, seed=0)).net
    assert [layer.name for layer in folded.layers] == ["in", "conv", "sum"]

    by_executor = executor.forward(original, seed=11)

    fed_to_backend: list[dict[str, np.ndarray]] = []

    def recording_backend(net: object, inputs: dict[str, np.ndarray], **options: object) -> object:
        fed_to_backend.append(dict(inputs))
        return numpy_backend.run(net, inputs, **options)  # type: ignore[arg-type]

    monkeypatch.setattr("bnfuse.verification.compare.get_backend", lambda name: recording_backend)
    assert verify(original, folded, seed=11).passed

    fed_to_region: list[dict[str, np.ndarray]] = []
    real_forward = executor.forward

    def recording_forward(net: object, inputs: dict[str, np.ndarray], **options: object) -> object:
        fed_to_region.append(dict(inputs))
        return real_forward(net, inputs, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(executor, "forward", recording_forward)
    local = verify_local(original, folded, changed=["conv", "bn", "sum"], seed=11)
    assert local.passed and "2 region inputs" in local.notes[0]

    assert len(fed_to_backend) == 2 and len(fed_to_region) == 2  # nets a and b, each path
    for path, values in [("executor", by_executor), *(("verify", fed) for fed in fed_to_backend),
                         *(("local", fed) for fed in fed_to_region)]:
        for name, want in expected.items():
            got = values[name]
            assert got.dtype == np.float32, (path, name)
            assert np.array_equal(got, want), (path, name)


def test_progress_reports_every_layer() -> None:
    calls: list[tuple[int, int, str]] = []
    prototxt, caffemodel = golden("conv_bn_scale_inplace")
    verify((prototxt, caffemodel), (prototxt, caffemodel),
           progress=lambda done, total, what: calls.append((done, total, what)))
    total = calls[-1][1]
    # net a's five layers, the noise run of net a, net b's five, then the comparison
    assert total == 5 + 5 + 5 + 1
    assert calls[-1][0] == total
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert any(what.startswith("b: ") for _, _, what in calls)
    assert (10, total, "noise") in calls
    uncalibrated: list[tuple[int, int, str]] = []
    verify((prototxt, caffemodel), (prototxt, caffemodel), calibrate=False,
           progress=lambda done, total, what: uncalibrated.append((done, total, what)))
    assert uncalibrated[-1] == (11, 11, "compared")  # two nets of five layers, the comparison


def test_top_k_on_class_scores() -> None:
    prototxt, caffemodel = golden("v1_legacy_format")  # ends in Softmax "prob"
    result = verify((prototxt, caffemodel), (prototxt, caffemodel), top_k=3)
    assert [(t.name, t.k, t.top1, t.overlap) for t in result.topk] == [("prob", 3, 1.0, 1.0)]
    assert [v.name for v in build_graph(load(prototxt).layers).outputs()] == ["prob"]


def test_missing_output_fails() -> None:
    prototxt, caffemodel = golden("conv_bn_scale_renamed_tops")
    cut = fresh("conv_bn_scale_renamed_tops")
    cut.remove_layer(cut.layer("conv2"))
    result = verify((prototxt, caffemodel), cut)
    assert not result.passed
    assert "conv2" in result.missing_outputs
    assert result.first_divergence is None  # nothing compared differs; an output vanished


def test_float64_tolerance_covers_float32_weight_storage_only() -> None:
    case = "conv_bn_scale_inplace"
    result = verify(golden(case), fold_bn(fresh(case), "conv1", "bn1", "sc1"),
                    dtype=np.float64)
    # The folded weights were stored as float32, so float64 sees their rounding (~1e-7)...
    assert result.passed, result.summary()
    assert result.tolerances.rtol == pytest.approx(1e-6)
    assert 1e-9 < max(b.max_rel for b in result.blobs) < 1e-6
    # ...and nothing bigger: an explicit tighter tolerance catches that rounding.
    tight = verify(golden(case), fold_bn(fresh(case), "conv1", "bn1", "sc1"),
                   dtype=np.float64, rtol=1e-9)
    assert not tight.passed


def test_unknown_backend() -> None:
    from bnfuse.errors import BnfuseError

    prototxt, caffemodel = golden("conv_bn_scale_inplace")
    with pytest.raises(BnfuseError, match="unknown verification backend"):
        verify((prototxt, caffemodel), (prototxt, caffemodel), backend="tensorrt")


def test_float64_extremes_give_an_infinite_difference_without_a_warning() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy RuntimeWarning would reach stderr
        c = compare_values("x", np.array([1e308, 1.0]), np.array([-1e308, 1.0]), rtol=1e-6,
                           atol=0.0)
    assert (c.passed, c.max_abs, c.max_rel) == (False, math.inf, math.inf)
    assert c.reason == "values differ beyond tolerance"
