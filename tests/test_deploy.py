"""Train/val nets to deploy: bnfuse.deploy, fold(deploy=True) and fold --deploy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import bnfuse
from bnfuse.cli import main
from bnfuse.deploy import feed_at, to_deploy
from bnfuse.errors import BnfuseError, UnsupportedLayerError
from bnfuse.layertypes.shapes import infer_shapes
from bnfuse.net import save_weights
from bnfuse.verification.executor import forward
from bnfuse.verification.randweights import random_weights

TRAIN_VAL = """name: "tv"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { crop_size: 8 mirror: true mean_value: 1 mean_value: 2 mean_value: 3 }
        data_param { source: "train_lmdb" batch_size: 64 } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { crop_size: 8 mean_value: 1 mean_value: 2 mean_value: 3 }
        data_param { source: "val_lmdb" batch_size: 2 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1"
        batch_norm_param { use_global_stats: true } }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
        inner_product_param { num_output: 5 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "top1" type: "Accuracy" bottom: "fc" bottom: "label" top: "top1"
        include { phase: TEST } }
layer { name: "mute" type: "Silence" bottom: "top1" include { phase: TRAIN } }
"""


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, Path]:
    text = tmp_path / "train_val.prototxt"
    text.write_text(TRAIN_VAL)
    weights = tmp_path / "snapshot.caffemodel"
    save_weights(random_weights(text, seed=4), weights)
    return text, weights


DEPLOY_TEXT = """name: "tv"
layer {
  name: "data"
  type: "Input"
  top: "data"
  input_param {
    shape {
      dim: 2
      dim: 3
      dim: 8
      dim: 8
    }
  }
}
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1"
        batch_norm_param { use_global_stats: true } }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
        inner_product_param { num_output: 5 } }
"""


def test_to_deploy_writes_what_a_deploy_file_says(model: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    net = bnfuse.load(*model)
    changes = [str(change) for change in to_deploy(net)]
    assert changes == [
        "removed data (Data): excluded from the TEST phase",
        "removed mute (Silence): excluded from the TEST phase",
        "removed loss (SoftmaxWithLoss): a loss layer (training only)",
        "removed top1 (Accuracy): measures accuracy against the labels (training only)",
        "made data (Data) an Input layer: data (2, 3, 8, 8); dropped label (no layer reads it)",
    ]
    bnfuse.save(net, tmp_path / "deploy.prototxt")
    # The kept layers' text is untouched; the new Input is laid out one field a line.
    assert (tmp_path / "deploy.prototxt").read_text() == DEPLOY_TEXT
    # The deploy net computes what the train/val net computes.
    train_val = bnfuse.load(*model)
    train_val.remove_layer(train_val.layer("loss"))
    train_val.remove_layer(train_val.layer("top1"))
    data = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(forward(net, {"data": data})["fc"],
                                  forward(train_val, {"data": data})["fc"])


def test_fold_deploy_reports_and_folds(model: tuple[Path, Path]) -> None:
    result = bnfuse.fold(*model, deploy=True, input_shapes={"data": (1, 3, 8, 8)})
    assert [(c.layer, c.action) for c in result.report.deploy] == [
        ("data", "removed"), ("mute", "removed"), ("loss", "removed"), ("top1", "removed"),
        ("data", "made_input")]
    assert result.report.to_dict()["deploy"][4] == {
        "layer": "data", "type": "Data", "action": "made_input",
        "detail": "data (1, 3, 8, 8); dropped label (no layer reads it)"}
    assert [layer.type for layer in result.net.layers] == [
        "Input", "Convolution", "ReLU", "InnerProduct"]
    assert infer_shapes(result.net)["fc"] == (1, 5)
    with pytest.raises(BnfuseError, match="pass deploy=True with them"):
        bnfuse.fold(*model, input_shapes={"data": (1, 3, 8, 8)})


def test_a_label_a_kept_layer_reads_stays_an_input() -> None:
    net = bnfuse.load(b"""
layer { name: "d" type: "MemoryData" top: "data" top: "label"
        memory_data_param { batch_size: 2 channels: 1 height: 3 width: 3 } }
layer { name: "cat" type: "Concat" bottom: "data" bottom: "label" top: "both"
        concat_param { axis: 1 } }""")
    assert [str(c) for c in to_deploy(net)] == [
        "made d (MemoryData) an Input layer: data (2, 1, 3, 3), label (2, 1, 1, 1)"]
    assert net.layers[0].tops == ("data", "label")


def test_a_shape_nobody_states_is_named_with_the_flag(model: tuple[Path, Path],
                                                      capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path) -> None:
    text = tmp_path / "nocrop.prototxt"
    text.write_text(TRAIN_VAL.replace("crop_size: 8 mean_value: 1 mean_value: 2 mean_value: 3 }\n"
                                      "        data_param { source: \"val_lmdb\"",
                                      "}\n        data_param { source: \"val_lmdb\""))
    with pytest.raises(UnsupportedLayerError, match=r"input_shapes=\{'data': \(2, C, H, W\)\}"):
        bnfuse.fold(text, model[1], deploy=True)
    assert main(["fold", str(text), str(model[1]), "--deploy", "--dry-run"]) == 1
    assert capsys.readouterr().err == (
        "error: cannot tell the shape of blob 'data' (top of layer 'data', Data): the database "
        "decides the image size unless transform_param sets crop_size; pass "
        "--input-shape data=2,C,H,W\n")
    assert main(["fold", str(text), str(model[1]), "--deploy", "--dry-run",
                 "--input-shape", "data=1,3,8,8"]) == 0
    assert "made data (Data) an Input layer: data (1, 3, 8, 8)" in capsys.readouterr().out


def test_cli_fold_deploy_verify(model: tuple[Path, Path], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out_text, out_model = tmp_path / "deploy.prototxt", tmp_path / "deploy.caffemodel"
    report = tmp_path / "report.json"
    code = main(["fold", *map(str, model), "--deploy", "--verify", "--batch", "3",
                 "-o", str(out_text), "-w", str(out_model), "--json", str(report)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "deploy form:\n  removed data (Data): excluded from the TEST phase\n" in printed
    assert "PASSED (numpy, float32)" in printed
    payload = json.loads(report.read_text())
    assert payload["verify"]["scope"] == "net"  # the whole net ran, not a local check
    assert len(payload["report"]["deploy"]) == 5
    folded = bnfuse.load(out_text, out_model)
    assert infer_shapes(folded)["fc"] == (3, 5)
    assert [layer.name for layer in folded.layers] == ["data", "conv1", "relu1", "fc"]


def test_feed_at_reshapes_inputs_and_data_layers(model: tuple[Path, Path]) -> None:
    net = bnfuse.load(*model)
    feed_at(net, {"data": (4, 3, 10, 10)})
    assert (net.layers[0].type, net.layers[0].tops) == ("Input", ("data", "label"))
    shapes = infer_shapes(net, stop_at_unknown=True)
    assert (shapes["label"], shapes["fc"]) == ((2,), (4, 5))


def test_batch_statistics_become_stored_statistics_in_deploy() -> None:
    net = bnfuse.load(TRAIN_VAL.replace("use_global_stats: true", "use_global_stats: false")
                      .encode())
    changes = to_deploy(net)
    assert str(changes[-2]) == (
        "set use_global_stats: true in bn1 (BatchNorm): use_global_stats: false is a training "
        "setting; a deploy net normalises with the stored statistics")
    assert net.layer("bn1").param.batch_norm_param.use_global_stats is True
    assert net.layer("bn1").text_field("batch_norm_param", "use_global_stats") == "true"


def test_a_python_data_layer_becomes_an_input_at_the_shape_given() -> None:
    text = b"""
layer { name: "input-data" type: "Python" top: "data" top: "labels"
        python_param { module: "roi_data_layer.layer" layer: "RoIDataLayer" } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "labels" top: "loss" }
"""
    with pytest.raises(UnsupportedLayerError) as info:
        to_deploy(bnfuse.load(text))
    assert str(info.value) == (
        "cannot tell the shape of blob 'data' (top of layer 'input-data', Python): a Python data "
        "layer's module decides its shapes; pass input_shapes={'data': (N, C, H, W)}")
    net = bnfuse.load(text)
    assert [str(c) for c in to_deploy(net, {"data": (1, 3, 6, 6)})] == [
        "removed loss (SoftmaxWithLoss): a loss layer (training only)",
        "made input-data (Python) an Input layer: data (1, 3, 6, 6); dropped labels (no layer "
        "reads it)"]
    assert infer_shapes(net)["conv"] == (1, 2, 6, 6)


def test_feed_at_rewrites_top_level_input_fields(tmp_path: Path) -> None:
    net = bnfuse.load(b'input: "data"\ninput_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4\n'
                      b'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')
    feed_at(net, {"data": (2, 3, 5, 5)})
    out = tmp_path / "fed.prototxt"
    bnfuse.save(net, out)
    assert out.read_bytes() == (b'input: "data"\ninput_shape { dim: 2 dim: 3 dim: 5 dim: 5 }\n'
                                b'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')
    assert infer_shapes(net)["r"] == infer_shapes(bnfuse.load(out))["r"] == (2, 3, 5, 5)


def test_an_ssd_test_net_loses_its_evaluation_and_its_label() -> None:
    # The SSD fork's test nets end in DetectionEvaluate (mAP against the labels); its
    # AnnotatedData label has a shape only the database knows. The deploy form needs
    # neither (found by the corpus run on eric612/MobileNet-YOLO's pelee test net).
    net = bnfuse.load(b"""
layer { name: "data" type: "AnnotatedData" top: "data" top: "label"
        include { phase: TEST }
        transform_param { mean_value: 127 mean_value: 127 mean_value: 127
                          resize_param { height: 8 width: 8 } }
        data_param { batch_size: 1 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "eval" type: "DetectionEvaluate" bottom: "conv" bottom: "label"
        top: "map" }""")
    assert [str(c) for c in to_deploy(net)] == [
        "removed eval (DetectionEvaluate): evaluates detections against the labels "
        "(training only)",
        "made data (AnnotatedData) an Input layer: data (1, 3, 8, 8); dropped label (no "
        "layer reads it)"]
    assert [(layer.type, layer.tops) for layer in net.layers] == [
        ("Input", ("data",)), ("Convolution", ("conv",))]


def test_a_layer_whose_tops_are_losses_is_removed_whatever_its_type() -> None:
    # A fork's detection loss (YOLOv3's "Yolov3") is a loss by its loss_weight, not its name;
    # a layer with one zero loss_weight top is kept.
    net = bnfuse.load(b"""
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } shape { dim: 1 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "yolo" type: "Yolov3" bottom: "conv" bottom: "label" top: "det_loss"
        loss_weight: 1 }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "r" loss_weight: 0 }
""")
    changes = [str(change) for change in to_deploy(net)]
    assert changes == ["removed yolo (Yolov3): its tops are losses (loss_weight; training only)"]
    assert [layer.name for layer in net.layers] == ["data", "conv", "relu"]
