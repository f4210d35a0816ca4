"""bnfuse.net: load and save nets the way Caffe's TEST phase sees them."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from conftest import golden_cases, real_models, shared_path
from modelkit import bn_blobs, caffemodel_bytes, conv_blobs, write_model

import bnfuse
from bnfuse.errors import (
    BnfuseError,
    CaffemodelError,
    ModelMismatchError,
    OutputError,
    PrototxtSchemaError,
    PrototxtSyntaxError,
)
from bnfuse.io.caffemodel import read_caffemodel
from bnfuse.io.upgrade import UpgradeError
from bnfuse.proto import NetParameter

CONV_NET = """name: "t"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 2 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _conv_model(tmp_path: Path) -> tuple[Path, Path, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    conv = conv_blobs(rng, 3, 2)
    prototxt, caffemodel = write_model(tmp_path, CONV_NET, {"conv": conv, "bn": bn_blobs(rng, 3)})
    return prototxt, caffemodel, conv


# --- sources -------------------------------------------------------------------------


def test_load_accepts_paths_bytes_and_file_objects(tmp_path: Path) -> None:
    prototxt, caffemodel, conv = _conv_model(tmp_path)
    by_path = bnfuse.load(prototxt, caffemodel)
    by_str = bnfuse.load(str(prototxt), str(caffemodel))
    by_bytes = bnfuse.load(prototxt.read_bytes(), caffemodel.read_bytes())
    with prototxt.open("rb") as text, caffemodel.open("rb") as weights:
        by_file = bnfuse.load(text, weights)
    by_stream = bnfuse.load(io.BytesIO(prototxt.read_bytes()), io.BytesIO(caffemodel.read_bytes()))
    for net in (by_path, by_str, by_bytes, by_file, by_stream):
        assert [layer.name for layer in net.layers] == ["data", "conv", "bn"]
        np.testing.assert_array_equal(net.layer("conv").blobs[0], conv[0])
        np.testing.assert_array_equal(net.layer("conv").blobs[1], conv[1])


def test_structure_only_load_and_text_only_save(tmp_path: Path) -> None:
    prototxt, _, _ = _conv_model(tmp_path)
    net = bnfuse.load(prototxt)
    assert net.weights is None
    assert all(layer.blobs == () for layer in net.layers)
    out = tmp_path / "copy.prototxt"
    bnfuse.save(net, out)
    assert out.read_bytes() == prototxt.read_bytes()
    with pytest.raises(OutputError, match="no weights to write"):
        bnfuse.save(net, tmp_path / "x.prototxt", tmp_path / "x.caffemodel")


def test_weights_are_read_only_views(tmp_path: Path) -> None:
    prototxt, caffemodel, _ = _conv_model(tmp_path)
    net = bnfuse.load(prototxt, caffemodel)
    weight = net.layer("conv").blobs[0]
    assert not weight.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        weight[0, 0, 0, 0] = 1.0


# --- TEST phase -------------------------------------------------------------------------


def test_include_exclude_rules_follow_caffe_netstate() -> None:
    text = b"""
    layer { name: "train_data" type: "Data" top: "data" include { phase: TRAIN } }
    layer { name: "data" type: "Input" top: "data" include { phase: TEST }
            input_param { shape { dim: 1 dim: 1 } } }
    layer { name: "drop" type: "Dropout" bottom: "data" top: "data" exclude { phase: TEST } }
    layer { name: "staged" type: "ReLU" bottom: "data" top: "data" include { stage: "deploy" } }
    layer { name: "level" type: "ReLU" bottom: "data" top: "data" include { min_level: 1 } }
    layer { name: "not_staged" type: "ReLU" bottom: "data" top: "data"
            include { not_stage: "deploy" } }
    layer { name: "plain" type: "ReLU" bottom: "data" top: "data" }
    """
    assert [layer.name for layer in bnfuse.load(text).layers] == ["data", "not_staged", "plain"]
    staged = b'state { stage: "deploy" level: 2 phase: TRAIN }' + text
    # The file's phase is ignored (bnfuse always runs the TEST phase); stages and level apply.
    assert [layer.name for layer in bnfuse.load(staged).layers] == [
        "data", "staged", "level", "plain"]


def test_include_and_exclude_together_is_an_error() -> None:
    text = b'layer { name: "x" type: "ReLU" include { phase: TEST } exclude { phase: TRAIN } }'
    with pytest.raises(PrototxtSchemaError, match="both include and exclude"):
        bnfuse.load(text)


def test_excluded_layers_pass_through_untouched(tmp_path: Path) -> None:
    text = CONV_NET + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" ' \
                      'include { phase: TRAIN } }\n'
    rng = np.random.default_rng(1)
    prototxt, caffemodel = write_model(tmp_path, text, {"conv": conv_blobs(rng, 3, 2),
                                                        "bn": bn_blobs(rng, 3)})
    result = bnfuse.fold(prototxt, caffemodel)
    out_text, out_model = tmp_path / "o.prototxt", tmp_path / "o.caffemodel"
    result.save(out_text, out_model)
    kept = 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" include { phase: TRAIN } }'
    assert kept in out_text.read_text()


# --- weights matched by name -------------------------------------------------------------


def test_caffemodel_with_training_net_and_extra_layers_loads(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    trained = NetParameter.FromString(caffemodel_bytes(
        {"conv": conv_blobs(rng, 3, 2), "bn": bn_blobs(rng, 3), "unused": [np.ones(4)]}))
    trained.layer.add(name="train_data", type="Data").include.add(phase=0)
    trained.layer[0].phase = 0  # saved from the TRAIN net
    trained.layer[0].convolution_param.num_output = 3
    (tmp_path / "m.caffemodel").write_bytes(trained.SerializeToString())
    net = bnfuse.load(CONV_NET.encode(), tmp_path / "m.caffemodel")
    assert [len(layer.blobs) for layer in net.layers] == [0, 2, 3]


def test_blob_count_mismatch_names_layer_and_counts(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = caffemodel_bytes({"conv": conv_blobs(rng, 3, 2)[:1], "bn": bn_blobs(rng, 3)})
    with pytest.raises(ModelMismatchError, match=r"'conv' \(Convolution\) needs 2 blobs, the "
                                                 r"caffemodel has 1"):
        bnfuse.load(CONV_NET.encode(), data)


def test_blob_shape_mismatch_names_layer_and_both_shapes() -> None:
    rng = np.random.default_rng(4)
    data = caffemodel_bytes({"conv": conv_blobs(rng, 4, 2), "bn": bn_blobs(rng, 3)})
    with pytest.raises(ModelMismatchError, match=r"'conv' \(Convolution\) blob 0 \(weight\) "
                                                 r"should have shape \(3, \?, \.\.\.\), the "
                                                 r"caffemodel has \(4, 2, 3, 3\)"):
        bnfuse.load(CONV_NET.encode(), data)


def test_missing_layer_in_caffemodel_keeps_no_weights() -> None:
    rng = np.random.default_rng(5)
    net = bnfuse.load(CONV_NET.encode(), caffemodel_bytes({"conv": conv_blobs(rng, 3, 2)}))
    assert net.layer("bn").blobs == ()
    actions = bnfuse.fold_net(net).report.actions
    assert [(a.kind, a.reason) for a in actions] == [
        ("skipped", "BatchNorm 'bn' has no weights in the caffemodel")]


def test_legacy_4d_inner_product_weights_take_the_layer_shape() -> None:
    net = NetParameter()
    layer = net.layer.add(name="fc", type="InnerProduct")
    weight = layer.blobs.add(num=1, channels=1, height=3, width=4)
    weight.data.extend(np.arange(12, dtype=np.float32).tolist())
    bias = layer.blobs.add(num=1, channels=1, height=1, width=3)
    bias.data.extend([1.0, 2.0, 3.0])
    text = b'layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y" ' \
           b'inner_product_param { num_output: 3 } }'
    loaded = bnfuse.load(text, net.SerializeToString())
    assert loaded.layers[0].blobs[0].shape == (3, 4)
    assert loaded.layers[0].blobs[1].tolist() == [1.0, 2.0, 3.0]


# --- old formats --------------------------------------------------------------------------


def test_input_fields_become_an_input_layer_but_the_text_keeps_them(tmp_path: Path) -> None:
    text = b'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 4 dim: 4 }\n' \
           b'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }\n'
    net = bnfuse.load(text)
    assert [(layer.name, layer.type, layer.tops) for layer in net.layers] == [
        ("input", "Input", ("data",)), ("r", "ReLU", ("data",))]
    assert list(net.layers[0].param.input_param.shape[0].dim) == [1, 3, 4, 4]
    bnfuse.save(net, tmp_path / "o.prototxt")
    assert (tmp_path / "o.prototxt").read_bytes() == text


def test_bad_input_dim_count_is_reported() -> None:
    with pytest.raises(UpgradeError, match="exactly 4 input_dim values per input"):
        bnfuse.load(b'input: "data" input_dim: 1 input_dim: 3')


def test_v1_net_mixed_with_v2_layers_is_refused() -> None:
    text = b'layers { name: "a" type: RELU } layer { name: "b" type: "ReLU" }'
    with pytest.raises(UpgradeError, match="mixes V1 'layers' and current 'layer'"):
        bnfuse.load(text)


def test_v0_net_is_upgraded_with_padding_merged() -> None:
    text = b"""input: "data" input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4
    layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
    layers { layer { name: "conv1" type: "conv" num_output: 2 kernelsize: 3 biasterm: false }
             bottom: "pad1" top: "conv1" }
    layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 }
             bottom: "conv1" top: "pool1" }
    """
    net = bnfuse.load(text)
    assert [(layer.name, layer.type, layer.bottoms) for layer in net.layers] == [
        ("input", "Input", ()), ("conv1", "Convolution", ("data",)),
        ("pool1", "Pooling", ("conv1",))]
    conv = net.layers[1].param.convolution_param
    assert (list(conv.pad), conv.num_output, list(conv.kernel_size), conv.bias_term) == \
        ([2], 2, [3], False)
    assert net.layers[2].param.pooling_param.pool == 1  # AVE


@pytest.mark.parametrize("case", ["v1_legacy_format"] if golden_cases() else [])
def test_v1_golden_upgrades_and_saves_unchanged_bytes(case: str, tmp_path: Path) -> None:
    folder = shared_path("golden", case)
    net = bnfuse.load(folder / "model.prototxt", folder / "model.caffemodel")
    assert [layer.type for layer in net.layers] == [
        "Input", "Convolution", "ReLU", "InnerProduct", "Softmax"]
    assert [spec.lr_mult for spec in net.layer("conv1").param.param] == [1.0, 2.0]
    assert net.layer("fc").blobs[0].shape == (5, 144)
    bnfuse.save(net, tmp_path / "o.prototxt", tmp_path / "o.caffemodel")
    assert (tmp_path / "o.prototxt").read_bytes() == (folder / "model.prototxt").read_bytes()
    assert (tmp_path / "o.caffemodel").read_bytes() == (folder / "model.caffemodel").read_bytes()
    # Once edited, both files are written in the current format.
    net.rename_layer(net.layer("fc"), "fc_renamed")
    net.set_blobs(net.layer("fc_renamed"), [b * 2 for b in net.layer("fc_renamed").blobs])
    bnfuse.save(net, tmp_path / "e.prototxt", tmp_path / "e.caffemodel")
    text = (tmp_path / "e.prototxt").read_text()
    assert "layers {" not in text and 'type: "InnerProduct"' in text
    with read_caffemodel(tmp_path / "e.caffemodel") as written:
        assert written.version == 2
        names = [record.name for record in written.layers]
        assert names == ["conv1", "relu1", "fc_renamed", "prob"]
    again = bnfuse.load(tmp_path / "e.prototxt", tmp_path / "e.caffemodel")
    np.testing.assert_array_equal(again.layer("fc_renamed").blobs[0],
                                  net.layer("fc_renamed").blobs[0])


# --- golden and real models round trip ------------------------------------------------------


def _all_models() -> list[tuple[str, str]]:
    return [("golden", c) for c in golden_cases()] + [("corpus/real", m) for m in real_models()]


@pytest.mark.parametrize(("where", "case"), _all_models())
def test_every_reference_model_loads_and_saves_byte_identical(where: str, case: str,
                                                              tmp_path: Path) -> None:
    folder = shared_path(*where.split("/"), case)
    net = bnfuse.load(folder / "model.prototxt", folder / "model.caffemodel")
    reference = NetParameter.FromString((folder / "model.caffemodel").read_bytes())
    records = list(reference.layer) or list(reference.layers)
    by_name = {record.name: record for record in records}
    for layer in net.layers:
        if layer.name not in by_name:
            continue
        stored = by_name[layer.name].blobs
        assert len(layer.blobs) == len(stored)
        for array, blob in zip(layer.blobs, stored, strict=True):
            np.testing.assert_array_equal(array.ravel(), np.asarray(blob.data, np.float32))
    bnfuse.save(net, tmp_path / "o.prototxt", tmp_path / "o.caffemodel")
    assert (tmp_path / "o.prototxt").read_bytes() == (folder / "model.prototxt").read_bytes()
    assert (tmp_path / "o.caffemodel").read_bytes() == (folder / "model.caffemodel").read_bytes()


# --- errors ---------------------------------------------------------------------------------


def test_caffemodel_given_as_prototxt(tmp_path: Path) -> None:
    _, caffemodel, _ = _conv_model(tmp_path)
    with pytest.raises(PrototxtSyntaxError, match="looks like a binary caffemodel") as err:
        bnfuse.load(caffemodel)
    assert str(caffemodel) in str(err.value)


def test_prototxt_given_as_caffemodel(tmp_path: Path) -> None:
    prototxt, _, _ = _conv_model(tmp_path)
    with pytest.raises(CaffemodelError, match="looks like a prototxt") as err:
        bnfuse.load(prototxt, prototxt)
    assert str(prototxt) in str(err.value)


@pytest.mark.parametrize("which", ["prototxt", "caffemodel"])
def test_empty_files(tmp_path: Path, which: str) -> None:
    prototxt, caffemodel, _ = _conv_model(tmp_path)
    empty = tmp_path / f"empty.{which}"
    empty.write_bytes(b"")
    args = (empty, caffemodel) if which == "prototxt" else (prototxt, empty)
    with pytest.raises(BnfuseError, match="empty") as err:
        bnfuse.load(*args)
    assert str(empty) in str(err.value)
    assert "\n" not in str(err.value)


def test_truncated_caffemodel(tmp_path: Path) -> None:
    prototxt, caffemodel, _ = _conv_model(tmp_path)
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(caffemodel.read_bytes()[:-7])
    with pytest.raises(CaffemodelError) as err:
        bnfuse.load(prototxt, cut)
    assert str(cut) in str(err.value)


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(BnfuseError, match="no such file"):
        bnfuse.load(tmp_path / "nope.prototxt")


# --- saving -----------------------------------------------------------------------------------


def test_output_that_is_an_input_is_refused_and_inputs_stay_intact(tmp_path: Path) -> None:
    prototxt, caffemodel, _ = _conv_model(tmp_path)
    before = (_sha(prototxt), _sha(caffemodel))
    net = bnfuse.load(prototxt, caffemodel)
    bnfuse.fold_net(net)
    for text_out, model_out in [(prototxt, tmp_path / "o.caffemodel"),
                                (tmp_path / "o.prototxt", caffemodel)]:
        with pytest.raises(OutputError):
            bnfuse.save(net, text_out, model_out)
    link = tmp_path / "link.caffemodel"
    link.symlink_to(caffemodel)
    with pytest.raises(OutputError):
        bnfuse.save(net, tmp_path / "o.prototxt", link)
    assert (_sha(prototxt), _sha(caffemodel)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "link.caffemodel", "model.caffemodel", "model.prototxt"]


def test_same_path_for_both_outputs_is_refused(tmp_path: Path) -> None:
    prototxt, caffemodel, _ = _conv_model(tmp_path)
    net = bnfuse.load(prototxt, caffemodel)
    with pytest.raises(OutputError, match="same file"):
        bnfuse.save(net, tmp_path / "o", tmp_path / "o")


def test_failed_save_leaves_no_partial_output(tmp_path: Path) -> None:
    prototxt, caffemodel, _ = _conv_model(tmp_path)
    net = bnfuse.load(prototxt, caffemodel)
    bnfuse.fold_net(net)
    with pytest.raises(OutputError):
        bnfuse.save(net, tmp_path / "o.prototxt", tmp_path / "missing-dir" / "o.caffemodel")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.caffemodel", "model.prototxt"]


def test_changed_layer_only_is_reencoded(tmp_path: Path) -> None:
    text = CONV_NET + 'layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" ' \
                      'inner_product_param { num_output: 2 } }\n'
    rng = np.random.default_rng(6)
    prototxt, caffemodel = write_model(tmp_path, text, {
        "conv": conv_blobs(rng, 3, 2), "bn": bn_blobs(rng, 3),
        "fc": [rng.normal(size=(2, 27)).astype(np.float32), np.zeros(2, np.float32)]})
    result = bnfuse.fold(prototxt, caffemodel)
    result.save(tmp_path / "o.prototxt", tmp_path / "o.caffemodel")
    source = caffemodel.read_bytes()
    output = (tmp_path / "o.caffemodel").read_bytes()
    with read_caffemodel(caffemodel) as before, read_caffemodel(tmp_path / "o.caffemodel") as after:
        fc_before = before.find("fc")
        fc_after = after.find("fc")
        assert fc_before is not None and fc_after is not None
        assert output[fc_after.start:fc_after.end] == source[fc_before.start:fc_before.end]
        assert [record.name for record in after.layers] == ["conv", "fc"]
    out_text = (tmp_path / "o.prototxt").read_text()
    assert 'layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" ' \
           'inner_product_param { num_output: 2 } }' in out_text


# --- what Caffe loads and what it refuses ----------------------------------------------


def test_a_solver_file_is_refused_as_one() -> None:
    solver = b'net: "train_val.prototxt"\ntest_iter: 1000\nbase_lr: 0.01\nmax_iter: 450000\n'
    with pytest.raises(PrototxtSchemaError) as info:
        bnfuse.load(solver)
    assert str(info.value) == (
        "<prototxt bytes>:1:1: this is a solver file (it sets 'net', 'test_iter', 'base_lr'), "
        "not a net definition; pass the net's prototxt (the file its 'net:' field names)")
    assert (info.value.line, info.value.column) == (1, 1)


def test_an_unknown_top_level_field_is_refused() -> None:
    with pytest.raises(PrototxtSchemaError) as info:
        bnfuse.load(b'layer { name: "r" type: "ReLU" bottom: "x" top: "x" }\nfoo: 1\n')
    assert str(info.value) == (
        "<prototxt bytes>:2:1: field 'foo' is not a field of a Caffe net (NetParameter), so "
        "Caffe refuses the file; is it a net definition?")


@pytest.mark.parametrize(("text", "what"), [
    (b'name: "empty"', "it has no layers and no inputs"),
    (b'layer { name: "d" type: "Data" top: "data" include { phase: TRAIN } }',
     "all 1 of its layers are excluded from the TEST phase"),
])
def test_a_net_without_layers_is_refused(text: bytes, what: str) -> None:
    with pytest.raises(PrototxtSchemaError) as info:
        bnfuse.load(text)
    assert str(info.value) == (f"<prototxt bytes>: is not a net bnfuse can use: {what}; "
                               "expected a Caffe net definition with 'layer { ... }' entries")


def test_a_bottom_only_a_train_layer_produces_is_refused() -> None:
    text = b"""
layer { name: "data" type: "Data" top: "data" include { phase: TRAIN }
        data_param { batch_size: 4 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 2 kernel_size: 1 } }
"""
    with pytest.raises(ModelMismatchError) as info:
        bnfuse.load(text)
    assert str(info.value) == (
        "<prototxt bytes>: layer 'conv1' (Convolution) reads blob 'data', which no TEST-phase "
        "layer produces (only 'data', which the TEST phase excludes): Caffe refuses this net "
        '("Unknown bottom blob"); give the TEST phase its own producer of the blob; for a '
        "train-only net, make its deploy form from the TRAIN phase (phase='TRAIN' with "
        "deploy=True)")
    assert info.value.layer == "conv1"
    # With its own TEST-phase data layer the train/val net loads, the TRAIN one excluded.
    text += (b'layer { name: "val" type: "Data" top: "data" include { phase: TEST } '
             b'data_param { batch_size: 2 } }\n')
    with pytest.raises(ModelMismatchError):
        bnfuse.load(text)  # the TEST producer comes after its reader: still refused
    fixed = text.replace(b'layer { name: "conv1"', b'layer { name: "val2" type: "Data" '
                         b'top: "data" include { phase: TEST } } layer { name: "conv1"')
    assert [layer.name for layer in bnfuse.load(fixed).layers] == ["val2", "conv1", "val"]


def test_fork_enum_values_round_trip_and_are_listed_unknown(tmp_path: Path) -> None:
    text = (b'layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 1 dim: 2 } } }\n'
            b'layer { name: "conv" type: "Convolution" bottom: "d" top: "c"\n'
            b'  convolution_param { num_output: 2 kernel_size: 1 engine: MKL2017 } }\n'
            b'layer { name: "loss_bbox" type: "SmoothL1Loss" bottom: "c" bottom: "d"\n'
            b'  top: "loss" loss_param { normalization: PRE_FIXED pre_fixed_normalizer: 128 } }\n')
    net = bnfuse.load(text)
    conv = net.layer("conv")
    assert conv.unknown_fields == ("convolution_param.engine",)
    assert not conv.param.convolution_param.HasField("engine")  # never the default in silence
    assert conv.text_field("convolution_param", "engine") == "MKL2017"
    # py-R-FCN's loss normalisation: a fork's enum value and a fork field, both kept.
    loss = net.layer("loss_bbox")
    assert loss.unknown_fields == ("loss_param.normalization", "loss_param.pre_fixed_normalizer")
    assert not loss.param.loss_param.HasField("normalization")
    out = tmp_path / "same.prototxt"
    bnfuse.save(net, out)
    assert out.read_bytes() == text
