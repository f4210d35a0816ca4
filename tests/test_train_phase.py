"""Train-only files: load(..., phase="TRAIN") and the deploy form made from that phase.

A ``train.prototxt`` whose data layers say ``include { phase: TRAIN }`` has no input in
the TEST phase (Caffe refuses it there: "Unknown bottom blob"); its deploy form is made
from the TRAIN phase's layers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import bnfuse
from bnfuse.cli import main
from bnfuse.deploy import to_deploy
from bnfuse.verification.executor import forward
from tests.modelkit import bn_blobs, conv_blobs, scale_blobs, write_model

TRAIN_ONLY = """name: "t"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { crop_size: 6 } data_param { source: "train_lmdb" batch_size: 32 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "drop" type: "Dropout" bottom: "conv1" top: "conv1" include { phase: TRAIN } }
layer { name: "probe" type: "ReLU" bottom: "conv1" top: "probe" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv1" bottom: "label" top: "loss" }
"""

# What the deploy form must be: the TRAIN phase's layers (the TEST-only probe gone), the
# rules of the kept layers gone, the data layer an Input at the shape asked for.
DEPLOY = """name: "t"
layer {
  name: "data"
  type: "Input"
  top: "data"
  input_param {
    shape {
      dim: 2
      dim: 3
      dim: 6
      dim: 6
    }
  }
}
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "drop" type: "Dropout" bottom: "conv1" top: "conv1" }
"""


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(7)
    return write_model(tmp_path, TRAIN_ONLY, {
        "conv1": conv_blobs(rng, 4, 3), "bn1": bn_blobs(rng, 4), "sc1": scale_blobs(rng, 4)})


def test_the_test_phase_is_refused_with_the_way_out(model: tuple[Path, Path]) -> None:
    with pytest.raises(bnfuse.ModelMismatchError) as caught:
        bnfuse.load(*model)
    message = str(caught.value)
    assert "which no TEST-phase layer produces" in message
    assert "(phase='TRAIN' with deploy=True)" in message


def test_train_phase_view_keeps_the_train_layers(model: tuple[Path, Path]) -> None:
    net = bnfuse.load(*model, phase="TRAIN")
    assert net.phase == "TRAIN"
    assert [layer.name for layer in net.layers] == ["data", "conv1", "bn1", "sc1", "drop",
                                                    "loss"]
    assert [layer.name for layer in net.excluded_layers] == ["probe"]


def test_deploy_form_of_the_train_phase(model: tuple[Path, Path]) -> None:
    net = bnfuse.load(*model, phase="TRAIN")
    changes = [str(change) for change in to_deploy(net, {"data": (2, 3, 6, 6)})]
    assert changes == [
        "removed probe (ReLU): excluded from the TRAIN phase",
        "removed the include/exclude rules of data (Data): the deploy form keeps the TRAIN "
        "phase's layers in every phase",
        "removed the include/exclude rules of drop (Dropout): the deploy form keeps the TRAIN "
        "phase's layers in every phase",
        "removed loss (SoftmaxWithLoss): a loss layer (training only)",
        "made data (Data) an Input layer: data (2, 3, 6, 6); dropped label (no layer reads it)",
    ]
    assert net.phase == "TEST"
    assert net.document.render() == DEPLOY


def test_fold_of_the_train_phase_matches_conv_bn_scale_written_out(
        model: tuple[Path, Path], tmp_path: Path) -> None:
    result = bnfuse.fold(*model, phase="TRAIN", deploy=True, input_shapes={"data": (2, 3, 6, 6)})
    assert [action.kind for action in result.report.actions] == ["folded_into_producer"]
    result.save(tmp_path / "o.prototxt", tmp_path / "o.caffemodel")
    folded = bnfuse.load(tmp_path / "o.prototxt", tmp_path / "o.caffemodel")
    assert [layer.type for layer in folded.layers] == ["Input", "Convolution", "Dropout"]
    # The chain written out in float64: convolution, BVLC BatchNorm (statistics / factor,
    # eps 1e-5), Scale with bias.
    original = bnfuse.load(*model, phase="TRAIN")
    w, b = (np.asarray(x, np.float64) for x in original.layer("conv1").blobs)
    mean, var, factor = (np.asarray(x, np.float64) for x in original.layer("bn1").blobs)
    gamma, beta = (np.asarray(x, np.float64) for x in original.layer("sc1").blobs)
    x = np.random.default_rng(3).standard_normal((2, 3, 6, 6))
    conv = np.zeros((2, 4, 4, 4))
    for i in range(4):
        for j in range(4):
            patch = x[:, :, i:i + 3, j:j + 3]
            conv[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w) + b
    f = 1.0 / factor[0]
    norm = (conv - (mean * f)[:, None, None]) / np.sqrt(var * f + 1e-5)[:, None, None]
    expected = norm * gamma[:, None, None] + beta[:, None, None]
    got = forward(folded, {"data": x}, dtype=np.float64)["conv1"]
    # The folded weights are stored in float32: each is within half an ulp (6e-8
    # relative) of its exact value, and 27 of them add up in each output.
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-6)


def test_a_train_phase_view_is_only_a_deploy_source(model: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    net = bnfuse.load(*model, phase="TRAIN")
    with pytest.raises(bnfuse.BnfuseError, match=r"only its deploy form is folded: pass "
                                                 r"deploy=True"):
        bnfuse.fold_net(net)
    with pytest.raises(bnfuse.BnfuseError, match=r"^save: .* was loaded with phase='TRAIN'"):
        bnfuse.save(net, tmp_path / "x.prototxt", tmp_path / "x.caffemodel")
    with pytest.raises(bnfuse.BnfuseError, match=r"runs TEST-phase nets"):
        forward(net, {"data": np.zeros((1, 3, 6, 6))})
    assert not (tmp_path / "x.prototxt").exists()


def test_phase_argument_is_checked() -> None:
    with pytest.raises(TypeError, match=r"^load: phase must be a str, not int$"):
        bnfuse.load(b"", phase=1)  # type: ignore[arg-type]
    with pytest.raises(bnfuse.BnfuseError, match=r"^load: phase must be 'TEST' or 'TRAIN', "
                                                 r"not 'test'$"):
        bnfuse.load(b"", phase="test")


def test_cli_phase_train_deploy_verify(model: tuple[Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    text, weights = model
    out = tmp_path / "o.prototxt"
    assert main(["fold", str(text), str(weights), "-o", str(out), "-w",
                 str(tmp_path / "o.caffemodel")]) == 1
    assert "(--phase TRAIN with --deploy)" in capsys.readouterr().err
    assert main(["fold", str(text), str(weights), "-o", str(out), "-w",
                 str(tmp_path / "o.caffemodel"), "--phase", "TRAIN"]) == 1
    assert "only its deploy form is folded: pass --deploy" in capsys.readouterr().err
    assert not out.exists()
    assert main(["fold", str(text), str(weights), "-o", str(out), "-w",
                 str(tmp_path / "o.caffemodel"), "--phase", "TRAIN", "--deploy", "--verify",
                 "--input-shape", "data=2,3,6,6"]) == 0
    printed = capsys.readouterr().out
    assert "PASSED (numpy, float32)" in printed
    folded = bnfuse.load(out, tmp_path / "o.caffemodel")
    assert [layer.name for layer in folded.layers] == ["data", "conv1", "drop"]


def test_random_weights_of_a_train_only_file(tmp_path: Path) -> None:
    text = tmp_path / "train.prototxt"
    text.write_text(TRAIN_ONLY)
    weights = tmp_path / "w.caffemodel"
    assert main(["random-weights", str(text), "-w", str(weights), "--phase", "TRAIN",
                 "--input-shape", "data=2,3,6,6", "-q"]) == 0
    net = bnfuse.load(text, weights, phase="TRAIN")
    assert [tuple(blob.shape) for blob in net.layer("conv1").blobs] == [(4, 3, 3, 3), (4,)]
    assert [tuple(blob.shape) for blob in net.layer("bn1").blobs] == [(4,), (4,), (1,)]
    assert main(["fold", str(text), str(weights), "-o", str(tmp_path / "o.prototxt"),
                 "-w", str(tmp_path / "o.caffemodel"), "--phase", "TRAIN", "--deploy",
                 "--verify", "--batch", "2", "-q"]) == 0


def test_inspect_of_a_train_only_file(model: tuple[Path, Path],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    text, weights = model
    assert main(["inspect", str(text), str(weights), "--phase", "TRAIN", "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layers"] == {"Data": 1, "Convolution": 1, "BatchNorm": 1, "Scale": 1,
                                "Dropout": 1, "SoftmaxWithLoss": 1}
    assert [(a["kind"], a["layers"], a["target"]) for a in report["actions"]] == [
        ("folded_into_producer", ["bn1", "sc1"], ["conv1"])]


def test_a_copy_keeps_the_phase(model: tuple[Path, Path]) -> None:
    net = bnfuse.load(*model, phase="TRAIN")
    twin = net.copy()
    assert twin.phase == "TRAIN"
    assert [layer.name for layer in twin.excluded_layers] == ["probe"]
    to_deploy(twin, {"data": (2, 3, 6, 6)})
    assert (twin.phase, net.phase) == ("TEST", "TRAIN")
    assert twin.document.render() == DEPLOY


def test_a_train_phase_view_is_not_exported(model: tuple[Path, Path]) -> None:
    net = bnfuse.load(*model, phase="TRAIN")
    for fold in (True, False):
        with pytest.raises(bnfuse.BnfuseError, match=r"^to_onnx: .* was loaded with "
                                                     r"phase='TRAIN'; export its deploy form"):
            bnfuse.to_onnx(net, fold=fold)
