"""Tests of bnfuse.io.prototxt: lossless parse/render, edits, syntax errors, speed."""

from __future__ import annotations

import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnfuse.errors import InternalError, PrototxtSchemaError, PrototxtSyntaxError
from bnfuse.io.prototxt import (
    MAX_DEPTH,
    MAX_LITERAL_CHARS,
    Document,
    Identifier,
    ListValue,
    MessageNode,
    ScalarValue,
    decode_text,
    format_float,
    quote_string,
)
from bnfuse.io.textmsg import fill_message
from bnfuse.proto import NetParameter
from tests.conftest import corpus_prototxts, golden_cases, shared_path
from tests.growth import LINEAR_BOUND, growth

# --------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("case", golden_cases())
def test_golden_prototxt_round_trips_byte_for_byte(case: str) -> None:
    for path in sorted(shared_path("golden", case).glob("*.prototxt")):
        data = path.read_bytes()
        doc = Document.from_bytes(data, str(path))
        assert doc.to_bytes() == data
        assert doc.root.fields, path


@pytest.mark.parametrize("name", corpus_prototxts())
def test_corpus_prototxt_round_trips_byte_for_byte(name: str) -> None:
    data = shared_path("corpus", "prototxt", name).read_bytes()
    doc = Document.from_bytes(data, name)
    assert doc.to_bytes() == data
    assert len(doc.root.all("layer")) + len(doc.root.all("layers")) > 10


TRICKY = [
    "",
    "\n\n",
    "# only a comment",
    "a: 1",  # no final newline
    "a:1;b:2,c:3",
    'name: "x" # trailing comment\n  # indented comment\n',
    "layer {\r\n  name: 'a'\r\n  # c\r\n}\r\n",
    "layer\t{\tname:\t'a'\t}\n",
    "p: { a: 1 }\np:{a:1}\np <a:1>\np: <a:1>\n",
    "dim: [1, 3, 224, 224]\ndim:[]\ndim: [ 1 ,2 ]\n",
    "param [{ lr_mult: 1 }, { lr_mult: 2 }]\nparam: [<a: 1>]\n",
    "s: 'a' \"b\"\n   # between\n 'c'\n",
    "s: 'it\\'s' t: \"q\\\"\\n\\t\\x41\\101\\u00e9\\\\\"\n",
    "f: 1e-5 g: -inf h: nan i: 1.5f j: .5 k: 1. l: 0x1F m: 017 n: -7 o: - 3 p: 1E+10\n",
    "b: true c: false d: True e: t f: f g: F\n",
    "e: MAX\n",
    "a {\n}\nb {}\nc { }\n",
    "\ufeffname: 'bom'\n",
    "x: 'é ü 中'  # 非 ASCII\n",
    "a: 1,\nb: 2;\n",
    "nested { a { b { c { d: 1 } } } }",
    'layer {name:"a"type:"B"}',
    "x:-1 y:-.5\n",
    "a: 1\n\n\n# gap\n\nb: 2\n\n",
]


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_inputs_round_trip(text: str) -> None:
    assert Document.parse(text).render() == text


def test_values_decode() -> None:
    doc = Document.parse(TRICKY[13])
    root = doc.root
    got = {f.name: f.value for f in root.fields}
    assert isinstance(got["f"], ScalarValue)
    assert [root.scalar(n).as_float() for n in "fijkp"] == [  # type: ignore[union-attr]
        1e-05,
        1.5,
        0.5,
        1.0,
        1e10,
    ]
    assert root.scalar("g").as_float() == float("-inf")  # type: ignore[union-attr]
    assert root.scalar("g").kind == "number"  # type: ignore[union-attr]
    assert root.scalar("h").kind == "identifier"  # type: ignore[union-attr]
    assert root.scalar("l").as_int() == 31  # type: ignore[union-attr]
    assert root.scalar("m").as_int() == 15  # type: ignore[union-attr]
    assert root.scalar("n").as_int() == -7  # type: ignore[union-attr]
    assert root.scalar("o").as_int() == -3  # type: ignore[union-attr]
    assert root.scalar("o").raw == "- 3"  # type: ignore[union-attr]
    assert root.scalar("o").text() == "-3"  # type: ignore[union-attr]
    with pytest.raises(
        PrototxtSchemaError, match=r"<string>:1:\d+: expected an integer, found '1e-5'"
    ):
        root.scalar("f").as_int()  # type: ignore[union-attr]


def test_strings_decode_with_escapes_and_concatenation() -> None:
    root = Document.parse(TRICKY[11] + TRICKY[12]).root
    assert root.all("s")[0].value.text() == "abc"  # type: ignore[union-attr]
    assert root.scalar("t").as_bytes() == b'q"\n\tAA\xc3\xa9\\'  # type: ignore[union-attr]
    assert root.all("s")[1].value.text() == "it's"  # type: ignore[union-attr]


def test_bools() -> None:
    root = Document.parse(TRICKY[14]).root
    assert [root.scalar(n).as_bool() for n in "bcdef"] == [  # type: ignore[union-attr]
        True,
        False,
        True,
        True,
        False,
    ]
    with pytest.raises(
        PrototxtSchemaError, match="<string>:1:39: expected true or false, found 'F'"
    ):
        root.scalar("g").as_bool()  # type: ignore[union-attr]
    with pytest.raises(PrototxtSchemaError, match="expected true or false, found 'MAX'"):
        Document.parse("e: MAX").root.scalar("e").as_bool()  # type: ignore[union-attr]


def test_list_syntax_representation() -> None:
    root = Document.parse(TRICKY[9] + TRICKY[10]).root
    dims = root.all("dim")
    assert all(f.is_list for f in dims)
    assert isinstance(dims[0].value, ListValue)
    assert [v.as_int() for v in root.scalars("dim")] == [1, 3, 224, 224, 1, 2]
    assert dims[1].values == []
    params = root.messages("param")
    assert [p.scalar("lr_mult").as_int() for p in params[:2]] == [1, 2]  # type: ignore[union-attr]
    assert params[2].scalar("a").as_int() == 1  # type: ignore[union-attr]
    assert root.first("param").is_message  # type: ignore[union-attr]
    assert params[2].open == "<"


def test_positions_and_reading_helpers() -> None:
    doc = Document.parse("name: 'n'\nlayer {\n  name: 'a'\n  p { x: 1 }\n}\n")
    layer = doc.root.first("layer")
    assert layer is not None
    assert (layer.line, layer.column, layer.is_message) == (2, 1, True)
    msg = doc.root.message("layer")
    assert isinstance(msg, MessageNode)
    assert (msg.line, msg.column) == (2, 7)
    name = msg.first("name")
    assert name is not None
    assert (name.line, name.column, name.mid) == (3, 3, ": ")
    x = msg.message("p").scalar("x")  # type: ignore[union-attr]
    assert x is not None
    assert (x.line, x.column) == (4, 10)
    assert msg.scalar("missing") is None and msg.message("missing") is None
    with pytest.raises(
        PrototxtSchemaError, match="field 'p' at 4:3 is a message, expected a value"
    ):
        msg.scalar("p")
    with pytest.raises(
        PrototxtSchemaError, match="field 'name' at 1:1 is a value, expected a message"
    ):
        doc.root.message("name")
    assert layer.render() == "layer {\n  name: 'a'\n  p { x: 1 }\n}"


def test_decode_text() -> None:
    assert decode_text(b"a: 1\n") == "a: 1\n"
    bom = b"\xef\xbb\xbfa: 1\n"
    doc = Document.from_bytes(bom)
    assert doc.to_bytes() == bom
    with pytest.raises(PrototxtSyntaxError) as info:
        decode_text(b"a: 1\nb: '\xc3\xa9\xff'\n", "x.prototxt")
    assert str(info.value) == "x.prototxt:2:6: invalid UTF-8 byte 0xff"


# --------------------------------------------------------------------------------------
# Value formatting


def test_format_float_round_trips() -> None:
    assert format_float(1e-05) == "1e-05"
    assert format_float(0.001) == "0.001"
    assert format_float(2.0) == "2.0"
    assert format_float(1e20) == "1e+20"
    assert format_float(float("nan")) == "nan"
    assert format_float(0.999) == "0.999"
    # float32 values print in their shortest float32 form.
    assert format_float(0.9990000128746033, single=True) == "0.999"
    assert format_float(9.999999747378752e-06, single=True) == "1e-05"
    for value in (0.1, 1 / 3, 123456.789, 5e-324, 1.7976931348623157e308):
        text = format_float(value)
        assert float(text) == value
        assert ScalarValue.from_token(text).as_float() == value


def test_quote_string() -> None:
    assert quote_string('a"b\\c\n') == '"a\\"b\\\\c\\n"'
    assert quote_string("it's", "'") == "'it\\'s'"
    assert quote_string("é") == '"é"'
    assert quote_string(b"\x00\xffA'") == '"\\000\\377A\'"'
    for text in ['a"b\\c\n\t\x01', "é中", "'"]:
        assert ScalarValue.from_token(quote_string(text)).text() == text
        assert ScalarValue.from_token(quote_string(text, "'")).text() == text


def test_from_python_and_from_token() -> None:
    assert ScalarValue.from_python(Identifier("INFERENCE")).raw == "INFERENCE"
    assert ScalarValue.from_python(False).raw == "false"
    assert ScalarValue.from_python(-3).raw == "-3"
    assert ScalarValue.from_python(float("inf")).kind == "identifier"
    with pytest.raises(PrototxtSchemaError, match="'1x' is not a valid identifier"):
        ScalarValue.from_python(Identifier("1x"))
    with pytest.raises(PrototxtSyntaxError, match="expected exactly one value"):
        ScalarValue.from_token("1 2")
    with pytest.raises(PrototxtSchemaError, match="cannot write a list"):
        ScalarValue.from_python([1])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Edits

MULTI = """\
name: "net"
# the conv
layer {
  name: "conv1"
  type: "Convolution"  # a comment that stays
  top: "conv1"
  convolution_param {
    num_output: 8
    pad: 1
  }
}
layer {
  name: "bn1"
  type: "BatchNorm"
  bottom: "conv1"
  top: "conv1"
}
"""

ONE = """\
name: "c"
layer { name: "conv1" type: "Convolution" top: "conv1" convolution_param { num_output: 8 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
"""


def _layer(doc: Document, name: str) -> MessageNode:
    for layer in doc.root.messages("layer"):
        value = layer.scalar("name")
        if value is not None and value.text() == name:
            return layer
    raise AssertionError(name)


def test_set_existing_scalar_multi_line() -> None:
    doc = Document.parse(MULTI)
    conv = _layer(doc, "conv1").message("convolution_param")
    assert conv is not None
    conv.set("num_output", 16)
    _layer(doc, "conv1").set("type", "Deconvolution")
    assert doc.render() == MULTI.replace("num_output: 8", "num_output: 16").replace(
        '"Convolution"', '"Deconvolution"'
    )


def test_set_keeps_quote_style_and_enum_identifiers() -> None:
    doc = Document.parse("layer { name: 'a' pool: MAX bias_term: true }")
    layer = doc.root.message("layer")
    assert layer is not None
    layer.set("name", "it's")
    layer.set("pool", "AVE")
    layer.set("bias_term", False)
    assert doc.render() == "layer { name: 'it\\'s' pool: AVE bias_term: false }"
    layer.set("pool", Identifier("MAX"))
    assert doc.render() == "layer { name: 'it\\'s' pool: MAX bias_term: false }"


def test_set_rejects_ambiguous_and_message_fields() -> None:
    doc = Document.parse(MULTI)
    layer = _layer(doc, "conv1")
    with pytest.raises(
        PrototxtSchemaError, match="field 'convolution_param' at 7:3 holds a message"
    ):
        layer.set("convolution_param", 1)
    layer.add("top", "x")
    with pytest.raises(PrototxtSchemaError, match="field 'top' occurs 2 times"):
        layer.set("top", "y")


def test_set_appends_new_field_multi_line() -> None:
    doc = Document.parse(MULTI)
    _layer(doc, "bn1").set("eps", 1e-05)
    head, _, tail = MULTI.rpartition('  top: "conv1"\n}\n')
    assert doc.render() == head + '  top: "conv1"\n  eps: 1e-05\n}\n' + tail


def test_set_appends_new_field_one_line() -> None:
    doc = Document.parse(ONE)
    _layer(doc, "bn1").set("phase", Identifier("TEST"))
    assert doc.render() == ONE.replace(
        'bottom: "conv1" top: "conv1" }', 'bottom: "conv1" top: "conv1" phase: TEST }'
    )


def test_remove_scalar_multi_line_takes_its_line() -> None:
    doc = Document.parse(MULTI)
    conv = _layer(doc, "conv1")
    conv.message("convolution_param").remove(  # type: ignore[union-attr]
        conv.message("convolution_param").first("pad")  # type: ignore[union-attr, arg-type]
    )
    assert doc.render() == MULTI.replace("    pad: 1\n", "")


def test_remove_scalar_with_trailing_comment_keeps_the_comment() -> None:
    doc = Document.parse(MULTI)
    conv = _layer(doc, "conv1")
    conv.remove(conv.first("type"))  # type: ignore[arg-type]
    assert doc.render() == MULTI.replace('  type: "Convolution"  # a', "  # a")


def test_remove_scalar_one_line_first_middle_last() -> None:
    text = 'layer { name: "a" type: "B" top: "c" }\n'
    for victim, expected in [
        ("name", 'layer { type: "B" top: "c" }\n'),
        ("type", 'layer { name: "a" top: "c" }\n'),
        ("top", 'layer { name: "a" type: "B" }\n'),
    ]:
        doc = Document.parse(text)
        layer = doc.root.message("layer")
        assert layer is not None
        layer.remove(layer.first(victim))  # type: ignore[arg-type]
        assert doc.render() == expected


def test_remove_with_separators() -> None:
    doc = Document.parse("p { a: 1, b: 2, c: 3 }")
    p = doc.root.message("p")
    assert p is not None
    p.remove(p.first("b"))  # type: ignore[arg-type]
    assert doc.render() == "p { a: 1, c: 3 }"
    p.remove(p.first("c"))  # type: ignore[arg-type]
    assert doc.render() == "p { a: 1 }"
    doc = Document.parse("a: 1;\nb: 2;\nc: 3;\n")
    doc.root.remove(doc.root.first("b"))  # type: ignore[arg-type]
    assert doc.render() == "a: 1;\nc: 3;\n"


def test_remove_whole_layer_block_multi_line_keeps_outside_comments() -> None:
    doc = Document.parse(MULTI)
    doc.root.remove(doc.root.all("layer")[0])
    assert doc.render() == 'name: "net"\n# the conv\n' + MULTI.split("}\n}\n", 1)[1]
    doc.root.remove(doc.root.all("layer")[0])
    assert doc.render() == 'name: "net"\n# the conv\n'


def test_remove_layer_one_line_and_last_line_without_newline() -> None:
    doc = Document.parse(ONE)
    doc.root.remove(doc.root.all("layer")[0])
    assert doc.render() == ONE.replace(ONE.splitlines()[1] + "\n", "")
    doc = Document.parse("a: 1\nb: 2")
    doc.root.remove(doc.root.first("b"))  # type: ignore[arg-type]
    assert doc.render() == "a: 1"
    doc.root.remove(doc.root.first("a"))  # type: ignore[arg-type]
    assert doc.render() == ""


def test_remove_crlf() -> None:
    doc = Document.parse("a: 1\r\nb {\r\n  c: 2\r\n}\r\nd: 3\r\n")
    doc.root.remove(doc.root.first("b"))  # type: ignore[arg-type]
    assert doc.render() == "a: 1\r\nd: 3\r\n"


def test_rename_string_values() -> None:
    doc = Document.parse(MULTI)
    bn = _layer(doc, "bn1")
    assert bn.rename("top", "conv1", "bn1") == 1
    assert bn.rename("top", "nothing", "x") == 0
    assert doc.render() == MULTI.replace('  top: "conv1"\n}\n', '  top: "bn1"\n}\n')
    doc = Document.parse("bottom: ['a', \"b\", 'a']")
    assert doc.root.rename("bottom", "a", "z") == 2
    assert doc.render() == "bottom: ['z', \"b\", 'z']"


def test_add_sub_message_multi_line_positions() -> None:
    doc = Document.parse(MULTI)
    bn = _layer(doc, "bn1")
    bn.add("batch_norm_param", [("use_global_stats", True), ("eps", 1e-05)])
    bn.add("phase", Identifier("TEST"), after=bn.first("type"))
    bn.add("comment", "first", before=bn.first("name"))
    expected = MULTI.replace(
        '  name: "bn1"\n  type: "BatchNorm"\n  bottom: "conv1"\n  top: "conv1"\n}\n',
        '  comment: "first"\n  name: "bn1"\n  type: "BatchNorm"\n  phase: TEST\n'
        '  bottom: "conv1"\n  top: "conv1"\n'
        "  batch_norm_param {\n    use_global_stats: true\n    eps: 1e-05\n  }\n}\n",
    )
    assert doc.render() == expected


def test_add_after_field_with_trailing_comment_goes_below_the_comment() -> None:
    doc = Document.parse(MULTI)
    conv = _layer(doc, "conv1")
    conv.add("scale_param", [("bias_term", True)], after=conv.first("type"))
    assert doc.render() == MULTI.replace(
        "# a comment that stays\n",
        "# a comment that stays\n  scale_param {\n    bias_term: true\n  }\n",
    )


def test_add_sub_message_one_line_positions() -> None:
    doc = Document.parse(ONE)
    bn = _layer(doc, "bn1")
    bn.add("batch_norm_param", [("use_global_stats", True)])
    bn.add("phase", Identifier("TEST"), after=bn.first("type"))
    bn.add("comment", "c", before=bn.first("name"))
    assert doc.render().splitlines()[2] == (
        'layer { comment: "c" name: "bn1" type: "BatchNorm" phase: TEST bottom: "conv1" '
        'top: "conv1" batch_norm_param { use_global_stats: true } }'
    )


def test_insert_whole_layer_after_a_layer_multi_line() -> None:
    doc = Document.parse(MULTI)
    conv_field = doc.root.all("layer")[0]
    items: list[tuple[str, object]] = [
        ("name", "conv1/scale"),
        ("type", "Scale"),
        ("bottom", "conv1"),
        ("top", "conv1"),
        ("scale_param", [("bias_term", True), ("filler", [("value", 1.0)])]),
    ]
    doc.root.add("layer", items, after=conv_field)  # type: ignore[arg-type]
    new_block = (
        "layer {\n"
        '  name: "conv1/scale"\n'
        '  type: "Scale"\n'
        '  bottom: "conv1"\n'
        '  top: "conv1"\n'
        "  scale_param {\n"
        "    bias_term: true\n"
        "    filler {\n"
        "      value: 1.0\n"
        "    }\n"
        "  }\n"
        "}\n"
    )
    head, tail = MULTI.split("}\n}\n", 1)
    assert doc.render() == head + "}\n}\n" + new_block + tail
    # The new layer reads back like a parsed one.
    new = _layer(doc, "conv1/scale")
    assert new.message("scale_param").message("filler").scalar("value").as_float() == 1.0  # type: ignore[union-attr]
    assert doc.root.all("layer")[1].line == 0


def test_insert_whole_layer_one_line_and_four_space_indent() -> None:
    doc = Document.parse(ONE)
    doc.root.add(
        "layer",
        [("name", "s"), ("type", "Scale"), ("scale_param", [("bias_term", True)])],
        after=doc.root.all("layer")[0],
    )
    lines = doc.render().splitlines()
    assert lines[2] == 'layer { name: "s" type: "Scale" scale_param { bias_term: true } }'
    assert lines[1] == ONE.splitlines()[1] and lines[3] == ONE.splitlines()[2]

    text = "layer {\n    name: 'a'\n    p {\n        x: 1\n    }\n}\n"
    doc = Document.parse(text)
    doc.root.add("layer", [("name", "b"), ("q", [("y", 2)])])
    assert doc.render() == text + 'layer {\n    name: "b"\n    q {\n        y: 2\n    }\n}\n'


def test_add_keeps_crlf_and_handles_empty_messages() -> None:
    doc = Document.parse("layer {\r\n  name: 'a'\r\n}\r\n")
    layer = doc.root.message("layer")
    assert layer is not None
    layer.add("p", [("x", 1)])
    assert doc.render() == "layer {\r\n  name: 'a'\r\n  p {\r\n    x: 1\r\n  }\r\n}\r\n"

    doc = Document.parse("a {}\nb {\n}\n")
    doc.root.message("a").add("x", 1)  # type: ignore[union-attr]
    doc.root.message("b").add("y", 2)  # type: ignore[union-attr]
    assert doc.render() == "a { x: 1 }\nb {\n  y: 2\n}\n"

    doc = Document.parse("")
    doc.root.add("name", "n")
    doc.root.add("layer", [("name", "a")])
    assert doc.render() == 'name: "n"\nlayer {\n  name: "a"\n}\n'


def test_add_rejects_bad_arguments() -> None:
    doc = Document.parse(MULTI)
    conv = _layer(doc, "conv1")
    bn_name = _layer(doc, "bn1").first("name")
    with pytest.raises(PrototxtSchemaError, match="is not in this message"):
        conv.add("x", 1, after=bn_name)
    with pytest.raises(PrototxtSchemaError, match="'bad name' is not a valid field name"):
        conv.add("bad name", 1)
    with pytest.raises(PrototxtSchemaError, match="not both"):
        conv.add("x", 1, after=conv.first("name"), before=conv.first("name"))


def test_hand_made_values_are_checked_before_they_are_written() -> None:
    doc = Document.parse(MULTI)
    conv = _layer(doc, "conv1")
    before = doc.render()
    for raw in ("1 b: 2", "'open", "1 2", ""):
        with pytest.raises(PrototxtSyntaxError):
            conv.add("x", ScalarValue(raw, "number"))
        with pytest.raises(PrototxtSyntaxError):
            conv.first("name").set_value(ScalarValue(raw, "string"))  # type: ignore[union-attr]
    assert doc.render() == before
    assert conv.add("x", ScalarValue("-inf", "identifier")).value.kind == "number"  # type: ignore[union-attr]


def test_an_edit_that_writes_bad_text_is_an_internal_error() -> None:
    from bnfuse.io.prototxt._parser import parse_fragment

    assert parse_fragment("a: 1").render() == "a: 1"
    with pytest.raises(InternalError, match="an edit wrote 2 fields instead of one"):
        parse_fragment("a: 1 b: 2")
    with pytest.raises(InternalError, match="an edit wrote text that does not parse"):
        parse_fragment("a: {")


def test_edits_round_trip_through_parse() -> None:
    doc = Document.parse(MULTI)
    _layer(doc, "bn1").add("batch_norm_param", [("eps", 1e-3)])
    again = Document.parse(doc.render())
    assert again.render() == doc.render()


# --------------------------------------------------------------------------------------
# The SSD corpus file: a one-layer edit leaves every other byte alone


def test_mobilenet_ssd_edit_one_conv_and_remove_one_layer() -> None:
    text = shared_path("corpus", "prototxt", "mobilenet_ssd_deploy.prototxt").read_text("utf-8")
    doc = Document.parse(text, "mobilenet_ssd_deploy.prototxt")
    prior_before = [
        f.render() for layer in doc.root.messages("layer") for f in layer.all("prior_box_param")
    ]
    assert len(prior_before) == 6

    layers = doc.root.all("layer")
    conv_field = next(f for f in layers if f.value.scalar("name").text() == "conv0")  # type: ignore[union-attr]
    conv_param = conv_field.value.message("convolution_param")  # type: ignore[union-attr]
    num_output = conv_param.first("num_output")  # type: ignore[union-attr]
    assert num_output is not None
    old_value = num_output.render()
    num_output.set_value(33)

    victim = next(f for f in layers if f.value.scalar("name").text() == "conv0/bn")  # type: ignore[union-attr]
    victim_text = victim.render()
    doc.root.remove(victim)
    out = doc.render()

    # Exactly two spans changed: the num_output value and the removed layer's lines.
    edit_at = text.index(old_value)
    assert out[:edit_at] == text[:edit_at]
    assert out[edit_at : edit_at + len("num_output: 33")] == "num_output: 33"
    rest_old = text[edit_at + len(old_value) :]
    rest_new = out[edit_at + len("num_output: 33") :]
    cut = rest_old.index(victim_text)
    assert rest_new[:cut] == rest_old[:cut]
    assert rest_new[cut:] == rest_old[cut + len(victim_text) + 1 :]  # its line break too
    prior_after = [
        f.render()
        for layer in Document.parse(out).root.messages("layer")
        for f in layer.all("prior_box_param")
    ]
    assert prior_after == prior_before
    for block in prior_before:
        assert block in out


# --------------------------------------------------------------------------------------
# Syntax errors


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        (
            "name: 'a'\nlayer {\n  name: 'b'\n",
            4,
            1,
            "unexpected end of file: expected '}' to close 'layer' opened at 2:1",
        ),
        ("a:", 1, 3, "unexpected end of file: expected a value after ':'"),
        ("a: }", 1, 4, "expected a value after ':', found '}'"),
        ("a 1", 1, 3, "expected ':' or '{' after field name 'a', found '1'"),
        ("}", 1, 1, "unexpected '}' with no open message"),
        ("layer {\n  a: 1\n>", 3, 1, "expected '}' to close 'layer' opened at 1:1, found '>'"),
        ("a: 'abc\n'", 1, 4, "unterminated string literal (strings cannot span lines)"),
        ('a: "x\\d"', 1, 6, "invalid escape sequence '\\\\d' in string"),
        ("a: 1.2.3", 1, 4, "invalid number '1.2.3'"),
        ("a: 3x", 1, 4, "invalid number '3x'"),
        ("a: 09", 1, 4, "numbers with a leading zero must be octal integers: '09'"),
        ("a: 1\n@", 2, 1, "unexpected character '@'"),
        ("a: -x", 1, 5, "expected a number after '-', found 'x'"),
        ("5: 1", 1, 1, "expected a field name, found '5'"),
        ("[ext]: 1", 1, 1, "expected a field name, found '[' (extension fields are not supported)"),
        ("a: 1,, b: 2", 1, 6, "expected a field name, found ','"),
        ("d: [1 2]", 1, 7, "expected ',' or ']' in the list of 'd', found '2'"),
        ("d: [1,]", 1, 7, "expected a value in the list of 'd', found ']'"),
        ("d: [1, {}]", 1, 8, "expected a value in the list of 'd', found '{'"),
        (
            "p [1]",
            1,
            4,
            "expected '{' in the list of 'p' (a list without ':' holds messages), found '1'",
        ),
        (
            "d: [1,\n",
            2,
            1,
            "unexpected end of file: expected ']' to close the list of 'd' opened at 1:1",
        ),
        ("a: b: c", 1, 5, "expected a field name, found ':'"),
    ],
)
def test_syntax_errors_name_place_and_expectation(
    text: str, line: int, column: int, message: str
) -> None:
    with pytest.raises(PrototxtSyntaxError) as info:
        Document.parse(text, source="net.prototxt")
    err = info.value
    assert (err.source, err.line, err.column, err.detail) == ("net.prototxt", line, column, message)
    assert str(err) == f"net.prototxt:{line}:{column}: {message}"
    assert (err.path, err.layer) == ("net.prototxt", None)


def test_columns_count_characters_after_crlf_and_tabs() -> None:
    with pytest.raises(PrototxtSyntaxError) as info:
        Document.parse("a: 1\r\n\tb: é c", source="x")
    assert (info.value.line, info.value.column) == (2, 5)


def test_nesting_limit_is_a_clean_syntax_error() -> None:
    ok = "a { " * MAX_DEPTH + "}" * MAX_DEPTH
    assert Document.parse(ok).render() == ok
    deep = "a { " * (MAX_DEPTH + 1) + "}" * (MAX_DEPTH + 1)
    with pytest.raises(PrototxtSyntaxError) as info:
        Document.parse(deep, source="deep")
    assert (info.value.line, info.value.column) == (1, 4 * MAX_DEPTH + 3)
    assert info.value.detail == f"nesting deeper than {MAX_DEPTH} levels"
    very_deep = "a { " * 100_000
    with pytest.raises(PrototxtSyntaxError, match="nesting deeper than 100 levels"):
        Document.parse(very_deep)
    lists = "a: [{ " * 60
    with pytest.raises(
        PrototxtSyntaxError, match=r"^<string>:1:304: nesting deeper than 100 levels$"
    ):
        Document.parse(lists)
    with pytest.raises(
        PrototxtSyntaxError, match="expected ',' or ']' in the list of 'a', found ':'"
    ):
        Document.parse("a: [a: [1]]")


@pytest.mark.parametrize(
    "line",
    [
        'a: "' + '\\"' * 20,  # a string of escaped quotes that never closes
        "a: '" + "\\'" * 20,
        '"\\' * 20,  # a quote at every other character, none of them closing a string
        "a: '" + "x\"" * 20,
    ],
    ids=["escaped-double", "escaped-single", "quote-backslash", "other-quotes"],
)
def test_unterminated_strings_are_split_in_linear_time(line: str) -> None:
    # Each unterminated literal used to be retried from each of its quotes: quadratic,
    # a 1 MB line took hours. Linear: 8 times the text costs about 8 times the time, not
    # 64. (Sizes stay small so that quadratic code fails in seconds; past ~500 kB the
    # regex engine's own memory makes even linear scanning grow faster than the text.)
    prefix, unit = line[: line.index(line[-2:])], line[-2:]

    def parse(repeat: int) -> None:
        with pytest.raises(PrototxtSyntaxError) as info:
            Document.parse(prefix + unit * repeat + "\n", source="long.prototxt")
        assert info.value.detail == "unterminated string literal (strings cannot span lines)"

    assert growth(parse, 8_000, repeats=9) < LINEAR_BOUND
    # A line of 1 MB fails cleanly (quadratic code would run for hours here).
    with pytest.raises(PrototxtSyntaxError, match=r"^m\.prototxt:1:\d: unterminated string"):
        Document.parse(prefix + unit * 500_000 + "\n", source="m.prototxt")


def test_a_long_terminated_string_of_escapes_reads_back() -> None:
    text = 'a: "' + '\\"' * 100_000 + '"\n'
    doc = Document.parse(text)
    assert doc.render() == text
    assert doc.root.scalar("a").as_bytes() == b'"' * 100_000  # type: ignore[union-attr]


def test_number_literals_longer_than_the_limit_are_syntax_errors() -> None:
    assert MAX_LITERAL_CHARS == 1000
    fits = "a: " + "1" * MAX_LITERAL_CHARS
    assert Document.parse(fits).root.scalar("a").as_int() == int("1" * MAX_LITERAL_CHARS)  # type: ignore[union-attr]
    digits = "7" * 5000  # past Python's own 4300-digit limit of int()
    with pytest.raises(PrototxtSyntaxError) as info:
        Document.parse(f"layer {{\n  b: -{digits}\n}}\n", source="big.prototxt")
    error = info.value
    assert (error.path, error.line, error.column) == ("big.prototxt", 2, 7)
    assert error.detail == (
        "number literal of 5000 characters, longer than the 1000 allowed: "
        "'7777777777777777777777777777777777777...'"
    )
    with pytest.raises(PrototxtSyntaxError, match="number literal of 1001 characters"):
        Document.parse("a: [1, " + "2" * (MAX_LITERAL_CHARS + 1) + "]")


def test_values_made_by_hand_never_reach_int_limits() -> None:
    with pytest.raises(PrototxtSchemaError, match="an integer of 16610 bits is too long"):
        ScalarValue.from_python(10**5000)
    with pytest.raises(PrototxtSchemaError, match=r"^<new>:0:0: expected an integer, found '99"):
        ScalarValue("9" * 5000, "number").as_int()


@pytest.mark.parametrize(
    "text",
    [
        "n" * 100_000 + " 5",  # a name followed by neither ':' nor '{'
        "layer { " + "n" * 100_000 + ": ",  # end of file after a long name
        "a: 1" + "x" * 100_000,  # a number glued to a long word
        "a: 0" + "9" * 900,  # a long non-octal number with a leading zero
        "p { " + "q" * 100_000 + " { a: 1 ] }",  # the wrong bracket in a long-named message
        "d: [1, 2 " + "z" * 100_000 + "]",
        "a: '" + "x" * 100_000 + "\\q'",  # an invalid escape at the end of a long string
    ],
)
def test_syntax_errors_quote_little_of_the_text(text: str) -> None:
    with pytest.raises(PrototxtSyntaxError) as info:
        Document.parse(text, source="n.prototxt")
    assert len(str(info.value)) < 200, str(info.value)


def test_reading_errors_quote_little_of_the_text() -> None:
    doc = Document.parse("a: '" + "x" * 100_000 + "'\n" + "m" * 100_000 + " { }\n")
    with pytest.raises(PrototxtSchemaError) as info:
        doc.root.scalar("a").as_int()  # type: ignore[union-attr]
    assert len(str(info.value)) < 100
    with pytest.raises(PrototxtSchemaError) as info:
        doc.root.scalar("m" * 100_000)
    assert len(str(info.value)) < 100


# --------------------------------------------------------------------------------------
# Plain scalar fields hold their text until read


def test_scalar_fields_build_their_value_when_first_read() -> None:

    text = "layer { name: 'c' type: \"Convolution\" p { n: 64 b: true e: -1e-5 } }\n" * 200

    def scalar_values() -> int:
        gc.collect()
        # type(), not isinstance(): pure-Python protobuf leaves dead weakref proxies in
        # gc.get_objects(), and isinstance() on one raises ReferenceError.
        return sum(type(o) is ScalarValue for o in gc.get_objects())

    before = scalar_values()
    doc = Document.parse(text)
    assert doc.render() == text
    fill_message(doc.root, NetParameter())  # bnfuse.load reads every field this way
    assert scalar_values() == before
    layer = doc.root.messages("layer")[0]
    field = layer.first("name")
    assert field is not None
    assert field.raw_scalar() == ("'c'", "string")
    value = field.value
    assert value is field.value  # built once, then kept
    assert isinstance(value, ScalarValue) and value.parent is field
    assert (value.raw, value.kind, value.text()) == ("'c'", "string", "c")
    assert (value.line, value.column) == (1, 15)
    e = layer.message("p").first("e")  # type: ignore[union-attr]
    assert e is not None and e.raw_scalar() == ("-1e-5", "number")
    assert e.value.as_float() == -1e-5  # type: ignore[union-attr]
    field.set_value("c2")
    assert field.raw_scalar() == ("'c2'", "string")
    assert doc.render().startswith("layer { name: 'c2' type:")


# --------------------------------------------------------------------------------------
# No global side effects


@pytest.mark.parametrize("enabled", [True, False])
def test_parsing_leaves_the_garbage_collector_as_it_was(enabled: bool) -> None:

    text = "layer { name: 'a' p { q: [1, 2] } }\n" * 2000
    before_thresholds = gc.get_threshold()
    was_enabled = gc.isenabled()
    seen: list[bool] = []

    def watch(phase: str, info: dict[str, int]) -> None:
        seen.append(gc.isenabled())

    (gc.enable if enabled else gc.disable)()
    gc.callbacks.append(watch)
    try:
        doc = Document.parse(text)
        collections = len(seen)  # before an assertion's own allocations add any
        assert gc.isenabled() is enabled
        assert gc.get_threshold() == before_thresholds
        # Enabled, the collector runs during the parse (2000 layers make far more objects
        # than the first generation's threshold): it was not switched off meanwhile.
        assert (collections > 0) is enabled
        assert doc.render() == text
        with pytest.raises(PrototxtSyntaxError):
            Document.parse(text + "}")
        assert gc.isenabled() is enabled
        assert gc.get_threshold() == before_thresholds
    finally:
        gc.callbacks.remove(watch)
        (gc.enable if was_enabled else gc.disable)()


# --------------------------------------------------------------------------------------
# Speed


def test_forty_thousand_lines_parse_in_linear_time() -> None:
    block = (
        "layer {\n"
        '  name: "conv{i}"\n'
        '  type: "Convolution"\n'
        '  bottom: "data"\n'
        '  top: "conv{i}"\n'
        "  # a comment\n"
        "  convolution_param { num_output: 64 kernel_size: 3 pad: 1 }\n"
        "  param { lr_mult: 1.0 decay_mult: 1 }\n"
        "}\n"
    )
    small = "".join(block.replace("{i}", str(i)) for i in range(600))
    big = "".join(block.replace("{i}", str(i)) for i in range(4800))  # 43 200 lines
    assert big.count("\n") == 43_200

    texts = {600: small, 4800: big}

    def parse(size: int) -> None:
        assert Document.parse(texts[size]).render() == texts[size]

    assert growth(parse, 600) < LINEAR_BOUND


@pytest.mark.parametrize(
    ("text", "index", "expected"),
    [
        ("layer{}layer{}", 0, "layer{}"),
        ("layer{}layer{}", 1, "layer{}"),
        ("a:1 b:2", 1, "a:1"),
        ("a:1 b:2\n", 1, "a:1\n"),
        ("a: 1;b: 2", 1, "a: 1"),
        ("a:1,b:2", 1, "a:1"),
    ],
)
def test_remove_a_field_with_nothing_after_it(text: str, index: int, expected: str) -> None:
    # Found by the benchmark's random removals: a last field with no separator after it.
    doc = Document.parse(text)
    doc.root.remove(doc.root.fields[index])
    assert doc.render() == expected


_PIECES = st.sampled_from(["a: 1", "b { c: 2 }", "layer {\n  name: 'x'\n}", "d: [1, 2]",
                           "e: 'two words'"])
_GAPS = st.sampled_from([" ", "\n", ", ", "; ", "\n\n", "  # note\n", "\r\n", "\t", ",\n"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_PIECES, _GAPS), min_size=1, max_size=8), st.data())
def test_removing_many_fields_in_one_pass_is_removing_them_one_by_one(
        parts: list[tuple[str, str]], data: st.DataObject) -> None:
    text = "".join(piece + gap for piece, gap in parts)
    if data.draw(st.booleans()):
        text = text.rstrip(" \t,;\r\n")  # no final newline, no trailing separator
    doomed = sorted(data.draw(st.sets(st.integers(0, len(parts) - 1), min_size=1)))
    one_by_one, at_once = Document.parse(text), Document.parse(text)
    for field in [one_by_one.root.fields[i] for i in doomed]:
        one_by_one.root.remove(field)
    # Given in any order: removed in their order of appearance.
    at_once.root.remove_many([at_once.root.fields[i] for i in reversed(doomed)])
    assert at_once.render() == one_by_one.render()
    assert at_once.render() == Document.parse(at_once.render()).render()


def test_removing_fields_that_are_not_there_changes_nothing() -> None:
    doc, other = Document.parse("a: 1\nb: 2\n"), Document.parse("c: 3\n")
    with pytest.raises(PrototxtSchemaError, match=r"^1 of the fields to remove are not in "
                                                  r"this message$"):
        doc.root.remove_many([doc.root.fields[0], other.root.fields[0]])
    assert doc.render() == "a: 1\nb: 2\n"
