"""One reading of every BatchNorm dialect, whichever command asks.

``bnfuse.layertypes.batchnorm.detect`` is the only place that decides a dialect. These
tests take layers that the old code read three different ways and check that inspect,
random-weights, fold and verify now agree, that the executor runs the reading the fold
assumed (checked against the dialect's formula written out here), and that the verifier
and the folds do not import each other.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from modelkit import conv_blobs, write_model

import bnfuse
from bnfuse.cli import main
from bnfuse.layertypes.batchnorm import DIALECTS, NORM_TYPES, detect
from bnfuse.verification.executor import forward

PACKAGE = Path(bnfuse.__file__).resolve().parent

# A BVLC-layout BatchNorm (3 blobs, factor 2) whose text carries NVIDIA's scale_filler,
# followed by a zero-padded Convolution: the old planner folded it as NVIDIA's layout
# while the executor ran BVLC's, so verify failed on bnfuse's own output.
SCALE_FILLER_NET = """name: "scale_filler"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn"
        batch_norm_param { scale_filler { type: "constant" value: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "bn" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 } }
"""

# A BN whose bn_param has only the older PSPNet revision's fields: inspect called it
# PSPNet, random-weights wrote SegNet's 2 blobs and fold then said "bn_mode is LEARN".
LEGACY_BN_NET = """name: "legacy_bn"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BN" bottom: "conv1" top: "conv1"
        bn_param { axis: 1 decay: 0.9 } }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" }
"""


def _inspect_json(tmp_path: Path, *files: Path) -> dict[str, object]:
    report = tmp_path / "inspect.json"
    assert main(["inspect", *map(str, files), "--json", str(report), "--quiet"]) == 0
    result: dict[str, object] = json.loads(report.read_text())
    return result


def _action(report: dict[str, object], layer: str) -> dict[str, object]:
    actions = report["actions"]
    assert isinstance(actions, list)
    found = [a for a in actions if layer in a["layers"]]
    assert len(found) == 1, actions
    action: dict[str, object] = found[0]
    return action


def _scale_filler_model(tmp_path: Path) -> tuple[Path, Path, list[np.ndarray]]:
    rng = np.random.default_rng(5)
    mean, var = rng.normal(size=3), rng.uniform(0.5, 2.0, 3)
    factor = 2.0
    bn = [(mean * factor).astype(np.float32), (var * factor).astype(np.float32),
          np.array([factor], np.float32)]
    prototxt, caffemodel = write_model(tmp_path, SCALE_FILLER_NET,
                                       {"bn": bn, "conv": conv_blobs(rng, 4, 3)})
    return prototxt, caffemodel, bn


def test_scale_filler_with_three_blobs_is_read_as_bvlc_everywhere(tmp_path: Path) -> None:
    prototxt, caffemodel, bn = _scale_filler_model(tmp_path)
    net = bnfuse.load(prototxt, caffemodel)
    x = np.random.default_rng(0).normal(size=(2, 3, 6, 6)).astype(np.float32)
    # The executor runs BVLC's formula: statistics divided by the factor.
    y = forward(net, {"data": x}, dtype=np.float64)["bn"]
    mean, var = bn[0] / 2.0, bn[1] / 2.0
    eps = float(np.float32(1e-5))
    want = (x - mean.reshape(1, 3, 1, 1)) / np.sqrt(var.reshape(1, 3, 1, 1) + eps)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
    # inspect with the caffemodel plans the fold the fold then makes.
    planned = _action(_inspect_json(tmp_path, prototxt, caffemodel), "bn")
    assert planned["kind"] == "folded_forward" and planned["target"] == ["conv"]
    result = bnfuse.fold(prototxt, caffemodel)
    assert [(a.kind, a.chain) for a in result.report.actions] == [("folded_forward", ["bn"])]
    out = tmp_path / "out.prototxt", tmp_path / "out.caffemodel"
    result.save(*out)
    check = bnfuse.verify((prototxt, caffemodel), out, inputs={"data": x})
    assert check.passed, check.summary()


def test_scale_filler_without_weights_means_nvidia_scale_bias(tmp_path: Path) -> None:
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(SCALE_FILLER_NET)
    weights = tmp_path / "random.caffemodel"
    assert main(["random-weights", str(prototxt), "-w", str(weights), "--quiet"]) == 0
    net = bnfuse.load(prototxt, weights)
    # NVIDIA Caffe creates 5 blobs for a BatchNorm with scale_filler: so does random-weights,
    assert [b.shape for b in net.layer("bn").blobs] == [(3,), (3,), (1,), (3,), (3,)]
    # and inspect without weights reads the same layout; with them the fold agrees.
    structural = _action(_inspect_json(tmp_path, prototxt), "bn")
    weighted = _action(_inspect_json(tmp_path, prototxt, weights), "bn")
    assert structural["kind"] == weighted["kind"] == "folded_forward"
    result = bnfuse.fold(prototxt, weights)
    out = tmp_path / "out.prototxt", tmp_path / "out.caffemodel"
    result.save(*out)
    assert bnfuse.verify((prototxt, weights), out).passed


def test_legacy_pspnet_fields_give_one_reading(tmp_path: Path) -> None:
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(LEGACY_BN_NET)
    reason = "moving_average is not true: this BN normalises with the batch statistics"
    structural = _action(_inspect_json(tmp_path, prototxt), "bn1")
    assert (structural["kind"], structural["reason"]) == ("skipped", reason)
    weights = tmp_path / "random.caffemodel"
    # bn1's output cannot be computed (batch statistics), so bn2 gets unit statistics.
    assert main(["random-weights", str(prototxt), "-w", str(weights), "--quiet",
                 "--fill-unmeasurable"]) == 0
    net = bnfuse.load(prototxt, weights)
    assert [b.shape for b in net.layer("bn1").blobs] == [(1, 4, 1, 1)] * 4  # PSPNet's layout
    weighted = _action(_inspect_json(tmp_path, prototxt, weights), "bn1")
    assert (weighted["kind"], weighted["reason"]) == ("skipped", reason)
    result = bnfuse.fold(prototxt, weights)
    assert [(a.kind, a.chain) for a in result.report.actions] == [
        ("skipped", ["bn1"]), ("folded_into_producer", ["bn2"])]
    assert result.report.actions[0].reason == reason
    out = tmp_path / "out.prototxt", tmp_path / "out.caffemodel"
    result.save(*out)
    # The executor refuses a BN that normalises with batch statistics of an unestablished
    # formula, so the whole-net run falls back to checking the folded region.
    check = bnfuse.verify((prototxt, weights), out, fallback="local")
    assert check.passed and check.scope == "local", check.summary()


@pytest.mark.parametrize(
    ("layer_type", "fields"),
    [
        ("BatchNorm", {}),
        ("BatchNorm", {"eps": "0.001"}),
        ("BatchNorm", {"scale_bias": "true"}),
        ("BatchNorm", {"scale_bias": "false", "eps": "1e-8"}),
        ("BatchNorm", {"scale_filler": None}),
        ("BatchNorm", {"bias_filler": None, "use_global_stats": "false"}),
        ("BatchNorm", {"use_global_stats": "false"}),
        ("CuDNNBatchNorm", {}),
        ("BN", {}),
        ("BN", {"bn_mode": "INFERENCE"}),
        ("BN", {"scale_filler": None, "shift_filler": None}),
        ("BN", {"slope_filler": None}),
        ("BN", {"eps": "1e-4", "frozen": "true"}),
        ("BN", {"axis": "1", "decay": "0.9"}),
        ("BN", {"moving_average": "true", "var_eps": "1e-9"}),
    ],
)
def test_the_layout_written_without_weights_reads_back_the_same(
    layer_type: str, fields: dict[str, object]
) -> None:
    # What random-weights writes (the structural reading) must be read back as the same
    # dialect once it is a caffemodel: otherwise a random model would change its meaning.
    structural = detect(layer_type, fields, None)
    assert structural.name in DIALECTS and structural.name != "unknown"
    assert detect(layer_type, fields, len(structural.roles)) == structural


def test_fields_are_read_with_the_text_parsers_literal_rules() -> None:
    # protobuf's text format accepts a float suffix and these spellings of booleans.
    assert detect("BatchNorm", {"eps": "1e-3f"}, 3).eps == float(np.float32(1e-3))
    assert detect("BN", {"moving_average": "True", "var_eps": "1e-9F"}, 4).foldable
    assert not detect("BatchNorm", {"use_global_stats": "f"}, 3).foldable
    with pytest.raises(bnfuse.ModelMismatchError, match="expected a number, got 'abc'"):
        detect("BatchNorm", {"eps": "abc"}, 3)


def test_nvidia_ignores_use_global_stats_in_test() -> None:
    # NVIDIA Caffe's TEST branch always uses blobs[0] and blobs[1]; BVLC's honours the flag.
    nvidia = detect("BatchNorm", {"use_global_stats": "false"}, 5)
    assert (nvidia.name, nvidia.statistics, nvidia.foldable) == ("nvidia", "stored", True)
    assert nvidia.note is not None and "ignored" in nvidia.note
    bvlc = detect("BatchNorm", {"use_global_stats": "false"}, 3)
    assert (bvlc.name, bvlc.statistics, bvlc.foldable) == ("bvlc", "batch", False)


def test_only_the_dialect_module_reads_norm_fields() -> None:
    # The old code decided dialects in four places; the field names that tell them apart
    # may appear in code only in the one module that decides.
    markers = ("scale_bias", "slope_filler", "moving_average", "bn_mode")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "batchnorm.py" and path.parent.name == "layertypes":
            continue
        if "proto" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    node.value in markers:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value}")
    assert offenders == []


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize(("package", "forbidden"), [
    ("verification", "bnfuse.folding"),
    ("folding", "bnfuse.verification"),
    ("layertypes", "bnfuse.folding"),
    ("layertypes", "bnfuse.verification"),
    ("layertypes", "bnfuse.net"),
])
def test_verifier_and_folds_never_import_each_other(package: str, forbidden: str) -> None:
    sources = sorted((PACKAGE / package).rglob("*.py"))
    assert sources, f"no sources found under bnfuse/{package}"
    bad = [f"{path.relative_to(PACKAGE)} imports {name}" for path in sources
           for name in _imports(path) if name == forbidden or name.startswith(forbidden + ".")]
    assert bad == []


def test_norm_types_are_the_dialect_types() -> None:
    assert {"BatchNorm", "BN", "CuDNNBatchNorm"} == NORM_TYPES
