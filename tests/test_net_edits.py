"""The Net has one source of truth: layers are read-only, edits go through Net methods,
the caffemodel header of a changed layer follows its final parameters, and a fold is all
or nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from modelkit import bn_blobs, conv_blobs, scale_blobs, write_model

import bnfuse
from bnfuse import cli
from bnfuse.errors import BnfuseError, InternalError, ModelMismatchError, ReadOnlyLayerError
from bnfuse.folding import arith
from bnfuse.proto import NetParameter

CHAIN_NET = """name: "chains"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 5 dim: 5 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1"
        scale_param { bias_term: true } }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "bn2" }
layer { name: "conv3" type: "Convolution" bottom: "bn2" top: "conv3"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "bn3" type: "BatchNorm" bottom: "conv3" top: "conv3" }
"""


def _chain_model(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(2)
    return write_model(tmp_path, CHAIN_NET, {
        "conv1": conv_blobs(rng, 4, 3), "bn1": bn_blobs(rng, 4), "scale1": scale_blobs(rng, 4),
        "conv2": conv_blobs(rng, 2, 4), "bn2": bn_blobs(rng, 2),
        "conv3": conv_blobs(rng, 2, 2, k=1), "bn3": bn_blobs(rng, 2),
    })


@pytest.mark.parametrize(("attribute", "method"), [
    ("name", "Net.rename_layer"), ("type", "Net.set_type"), ("bottoms", "Net.set_bottom"),
    ("tops", "Net.set_top"), ("blobs", "Net.set_blobs"),
    ("param", "Net.set_field / Net.clear_field"),
])
def test_assigning_a_layer_attribute_names_the_method(tmp_path: Path, attribute: str,
                                                      method: str) -> None:
    net = bnfuse.load(*_chain_model(tmp_path))
    layer = net.layer("conv1")
    with pytest.raises(ReadOnlyLayerError) as info:
        setattr(layer, attribute, ())
    assert str(info.value) == f"layer 'conv1' is read-only: use {method} to change {attribute}"
    assert isinstance(info.value, AttributeError)  # also what Python code expects
    with pytest.raises(ReadOnlyLayerError, match="change it through Net methods"):
        layer.anything_else = 1  # type: ignore[attr-defined]


def test_layers_and_blobs_cannot_change_behind_the_nets_back(tmp_path: Path) -> None:
    net = bnfuse.load(*_chain_model(tmp_path))
    layer = net.layer("conv1")
    assert isinstance(net.layers, tuple) and isinstance(layer.blobs, tuple)
    with pytest.raises(ValueError, match="read-only"):
        layer.blobs[0][...] = 0.0
    mine = [np.ones((4, 3, 3, 3), np.float32), np.zeros(4, np.float32)]
    net.set_blobs(layer, mine)
    mine[0][...] = 5.0  # the caller's array is theirs: the net holds a copy
    assert float(layer.blobs[0].max()) == 1.0 and mine[0].flags.writeable


def test_an_in_place_param_edit_is_refused_on_save(tmp_path: Path) -> None:
    prototxt, caffemodel = _chain_model(tmp_path)
    net = bnfuse.load(prototxt, caffemodel)
    net.layer("conv2").param.convolution_param.num_output = 7
    with pytest.raises(BnfuseError, match=r"'conv2': its param was changed in place.*set_field"):
        bnfuse.save(net, tmp_path / "o.prototxt", tmp_path / "o.caffemodel")
    assert not (tmp_path / "o.prototxt").exists() and not (tmp_path / "o.caffemodel").exists()


def test_edits_reach_text_param_and_caffemodel_header(tmp_path: Path) -> None:
    prototxt, caffemodel = _chain_model(tmp_path)
    net = bnfuse.load(prototxt, caffemodel)
    conv = net.layer("conv2")
    net.set_top(conv, 0, "renamed")
    net.set_bottom(net.layer("bn2"), 0, "renamed")  # its reader follows (Caffe needs it)
    net.set_field(conv, ("convolution_param", "bias_term"), False)
    net.set_blobs(conv, conv.blobs[:1])
    net.rename_layer(conv, "conv2b")
    assert (conv.name, conv.tops, conv.param.convolution_param.bias_term) == \
        ("conv2b", ("renamed",), False)
    out = tmp_path / "o.prototxt", tmp_path / "o.caffemodel"
    bnfuse.save(net, *out)
    saved = NetParameter()
    saved.ParseFromString(out[1].read_bytes())
    record = next(layer for layer in saved.layer if layer.name == "conv2b")
    # The header is the layer's final parameters, as Caffe's Net::ToProto writes them.
    assert list(record.top) == ["renamed"] and record.type == "Convolution"
    assert not record.convolution_param.bias_term and len(record.blobs) == 1
    reloaded = bnfuse.load(*out)
    assert reloaded.layer("conv2b").tops == ("renamed",)
    np.testing.assert_array_equal(reloaded.layer("conv2b").blobs[0], conv.blobs[0])


def test_a_fold_failing_at_its_nth_chain_leaves_the_net_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prototxt, caffemodel = _chain_model(tmp_path)
    net = bnfuse.load(prototxt, caffemodel)
    before = [(layer.name, layer.type, layer.tops, len(layer.blobs)) for layer in net.layers]
    real = arith.fold_into_convolution
    calls: list[int] = []

    def fail_on_third(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 3:
            raise ModelMismatchError("injected failure in the third chain")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(arith, "fold_into_convolution", fail_on_third)
    with pytest.raises(ModelMismatchError, match="cannot fold bn3 into conv3: injected"):
        bnfuse.fold_net(net)
    assert len(calls) == 3  # chains 1 and 2 were computed, then the third failed
    assert not net.edited
    assert [(layer.name, layer.type, layer.tops, len(layer.blobs))
            for layer in net.layers] == before
    out = tmp_path / "o.prototxt", tmp_path / "o.caffemodel"
    bnfuse.save(net, *out)
    assert out[0].read_bytes() == prototxt.read_bytes()
    assert out[1].read_bytes() == caffemodel.read_bytes()


def test_a_float16_merge_that_overflows_is_skipped_not_written_as_inf() -> None:
    net = bnfuse.load(b"""
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data" }
layer { name: "scale" type: "Scale" bottom: "data" top: "data" scale_param { bias_term: true } }
""")
    f16 = np.float16
    net.set_blobs(net.layer("bn"), [np.zeros(2, f16), np.zeros(2, f16), np.ones(1, f16)])
    # 1000 / sqrt(0 + 1e-5) = 316228 is beyond float16's largest value, 65504.
    net.set_blobs(net.layer("scale"), [np.full(2, 1000.0, f16), np.zeros(2, f16)])
    result = bnfuse.fold_net(net)
    [action] = result.report.actions
    assert action.kind == "skipped" and action.chain == ["bn", "scale"]
    assert "do not fit float16" in action.reason
    assert [layer.type for layer in net.layers] == ["Input", "BatchNorm", "Scale"]
    assert all(np.isfinite(b).all() for layer in net.layers for b in layer.blobs)


def test_an_internal_error_is_reported_as_a_bug(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*args: object) -> int:
        raise InternalError("an invariant failed")

    monkeypatch.setattr(cli, "_cmd_inspect", broken)
    model = str(bnfuse.example_path("prototxt"))
    assert cli.main(["inspect", model]) == cli.EXIT_INTERNAL == 3
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.rstrip().endswith("internal error, please report: an invariant failed")
