"""Tests of bnfuse.io.textmsg: text tree -> typed LayerParameter / NetParameter."""

from __future__ import annotations

import math

import pytest
from google.protobuf import text_format

from bnfuse.errors import PrototxtSchemaError
from bnfuse.io.prototxt import Document, MessageNode
from bnfuse.io.textmsg import fill_message, is_repeated, type_name
from bnfuse.proto import LayerParameter, NetParameter
from tests.conftest import corpus_prototxts, shared_path

LAYER_FIELDS = LayerParameter.DESCRIPTOR.fields_by_name


def _layer(text: str) -> tuple[LayerParameter, list[str]]:
    doc = Document.parse(text, source="t.prototxt")
    message = LayerParameter()
    return message, fill_message(doc.root, message)


def _corpus_layer(file: str, name: str) -> MessageNode:
    text = shared_path("corpus", "prototxt", file).read_text("utf-8")
    for layer in Document.parse(text, file).root.messages("layer"):
        value = layer.scalar("name")
        if value is not None and value.text() == name:
            return layer
    raise AssertionError(name)


def test_fills_a_real_convolution_layer() -> None:
    node = _corpus_layer("mobilenet_ssd_deploy.prototxt", "conv0")
    message = LayerParameter()
    assert fill_message(node, message) == []
    assert (message.name, message.type, list(message.bottom), list(message.top)) == (
        "conv0",
        "Convolution",
        ["data"],
        ["conv0"],
    )
    conv = message.convolution_param
    assert (conv.num_output, conv.bias_term, list(conv.pad), list(conv.kernel_size)) == (
        32,
        False,
        [1],
        [3],
    )
    assert list(conv.stride) == [2]
    assert conv.weight_filler.type == "msra"
    assert [round(p.lr_mult, 6) for p in message.param] == [0.1]


def test_lists_fork_fields_instead_of_failing() -> None:
    prior = _corpus_layer("mobilenet_ssd_deploy.prototxt", "conv11_mbox_priorbox")
    message = LayerParameter()
    assert fill_message(prior, message) == ["prior_box_param"]
    assert message.type == "PriorBox"

    bn = _corpus_layer("enet_deploy.prototxt", "bn0_1")
    message = LayerParameter()
    assert fill_message(bn, message) == ["bn_param"]
    assert message.type == "BN"
    # The fork field stays readable from the text tree.
    assert bn.message("bn_param").scalar("bn_mode").text() == "INFERENCE"  # type: ignore[union-attr]


def test_nested_unknown_fields_have_dotted_indexed_paths() -> None:
    text = shared_path("corpus", "prototxt", "densenet121.prototxt").read_text("utf-8")
    unknown = fill_message(Document.parse(text).root, NetParameter())
    assert len(unknown) == 1
    assert unknown[0].startswith("layer[") and unknown[0].endswith("].pooling_param.ceil_mode")


@pytest.mark.parametrize("name", corpus_prototxts())
def test_corpus_nets_match_protobuf_text_format(name: str) -> None:
    text = shared_path("corpus", "prototxt", name).read_text("utf-8")
    ours = NetParameter()
    unknown = fill_message(Document.parse(text, name).root, ours)
    if unknown:
        # protobuf's own parser drops unknown fields; compare with that.
        reference = text_format.Parse(text, NetParameter(), allow_unknown_field=True)
    else:
        reference = text_format.Parse(text, NetParameter())
    assert ours == reference
    assert len(ours.layer) > 10


def test_value_rules_follow_cpp_text_format() -> None:
    message, unknown = _layer(
        'name: "a" "b" type: \'T\' include { phase: 1 } propagate_down: 1 propagate_down: t '
        "loss_weight: [1, -inf, 2.5f] pooling_param { pool: AVE kernel_size: 0x3 stride: 02 } "
        "batch_norm_param { eps: 1e-5 use_global_stats: False } "
        "param [{ lr_mult: 1 }, { name: 'w' }]"
    )
    assert unknown == []
    assert message.name == "ab" and message.type == "T"
    assert message.include[0].phase == 1
    assert list(message.propagate_down) == [True, True]
    assert list(message.loss_weight) == [1.0, -math.inf, 2.5]
    assert (message.pooling_param.pool, message.pooling_param.kernel_size) == (1, 3)
    assert message.pooling_param.stride == 2
    assert message.batch_norm_param.eps == pytest.approx(1e-5)
    assert message.batch_norm_param.HasField("use_global_stats")
    assert not message.batch_norm_param.use_global_stats
    assert [p.lr_mult for p in message.param] == [1.0, 1.0] and message.param[1].name == "w"


def test_empty_message_is_present() -> None:
    message, _ = _layer("scale_param { }")
    assert message.HasField("scale_param")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            'convolution_param { num_output: "ten" }',
            "t.prototxt:1:33: field 'convolution_param.num_output' (uint32) cannot hold "
            "'\"ten\"': expected an integer",
        ),
        (
            "pooling_param { pool: 7 }",
            "t.prototxt:1:23: field 'pooling_param.pool' (PoolMethod) cannot hold '7': "
            "not a value of enum PoolMethod (MAX, AVE, STOCHASTIC)",
        ),
        (
            "convolution_param { num_output: -1 }",
            "t.prototxt:1:33: field 'convolution_param.num_output' (uint32) cannot hold '-1': "
            "out of range [0, 4294967295]",
        ),
        (
            "convolution_param { axis: 3000000000 }",
            "field 'convolution_param.axis' (int32) cannot hold '3000000000': out of range",
        ),
        (
            "name: foo",
            "t.prototxt:1:7: field 'name' (string) cannot hold 'foo': expected a quoted string",
        ),
        ("loss_weight: 0x10", "field 'loss_weight' (float) cannot hold '0x10': expected a decimal"),
        (
            "propagate_down: 2",
            "field 'propagate_down' (bool) cannot hold '2': expected true or false",
        ),
        (
            "include { phase: 7 }",
            "field 'include[0].phase' (Phase) cannot hold '7': not a value of enum Phase",
        ),
        (
            'name: "a" name: "b"',
            "t.prototxt:1:11: field 'name' is set more than once, but it is not repeated",
        ),
        ("name: ['a']", "t.prototxt:1:1: field 'name' is not repeated, so it cannot take a list"),
        (
            "scale_param: 3",
            "t.prototxt:1:14: field 'scale_param' is a message (ScaleParameter), expected",
        ),
        ("top { }", "t.prototxt:1:5: field 'top' is a string, not a message"),
        (
            "name: '\\xff'",
            "field 'name' (string) cannot hold \"'\\\\xff'\": the string is not valid UTF-8",
        ),
    ],
)
def test_values_that_do_not_fit_raise_schema_errors(text: str, words: str) -> None:
    with pytest.raises(PrototxtSchemaError) as info:
        _layer(text)
    assert words in str(info.value)


def test_source_override_names_the_file() -> None:
    doc = Document.parse("name: 1")
    with pytest.raises(PrototxtSchemaError, match=r"^deploy\.prototxt:1:7: field 'name'") as info:
        fill_message(doc.root, LayerParameter(), source="deploy.prototxt")
    assert (info.value.path, info.value.line, info.value.column) == ("deploy.prototxt", 1, 7)
    assert info.value.detail == "field 'name' (string) cannot hold '1': expected a quoted string"


def test_schema_errors_of_values_carry_file_line_and_column() -> None:
    doc = Document.parse("a: 1\nname: 'x'\n  type:  7\n", source="n.prototxt")
    with pytest.raises(PrototxtSchemaError) as info:
        fill_message(doc.root, LayerParameter())
    assert (info.value.path, info.value.line, info.value.column) == ("n.prototxt", 3, 10)
    with pytest.raises(PrototxtSchemaError) as info:
        doc.root.scalar("name").as_int()  # type: ignore[union-attr]
    assert str(info.value) == "n.prototxt:2:7: expected an integer, found \"'x'\""
    assert (info.value.path, info.value.line, info.value.column) == ("n.prototxt", 2, 7)


def test_descriptor_helpers() -> None:
    assert is_repeated(LAYER_FIELDS["top"]) and not is_repeated(LAYER_FIELDS["name"])
    assert type_name(LAYER_FIELDS["phase"]) == "Phase"
    assert type_name(LAYER_FIELDS["loss_weight"]) == "float"


def test_a_fork_enum_value_is_unknown_never_the_default() -> None:
    # A fork's names (MEDIAN pooling, intel/caffe's MKL2017 engine) are kept as text:
    # the field stays unset in the typed message and is listed as unknown.
    message, unknown = _layer("pooling_param { pool: MEDIAN kernel_size: 2 engine: MKL2017 }")
    assert unknown == ["pooling_param.pool", "pooling_param.engine"]
    assert not message.pooling_param.HasField("pool")
    assert not message.pooling_param.HasField("engine")
    assert message.pooling_param.kernel_size == 2
