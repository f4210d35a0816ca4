"""Protobuf wire primitives: varints, tags, field spans, and clean failures on bad bytes."""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bnfuse.errors import CaffemodelError
from bnfuse.io.wire import (
    Field,
    encode_len_header,
    encode_tag,
    encode_varint,
    iter_fields,
    read_field,
    read_varint,
    to_signed64,
)
from bnfuse.proto import BlobProto, BlobShape, NetParameter


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (2**63, b"\x80" * 9 + b"\x01"),
        (2**64 - 1, b"\xff" * 9 + b"\x01"),
    ],
)
def test_varint_known_encodings(value: int, encoded: bytes) -> None:
    assert encode_varint(value) == encoded
    assert read_varint(encoded, 0) == (value, len(encoded))


def test_negative_varint_is_ten_bytes_twos_complement() -> None:
    assert encode_varint(-1) == b"\xff" * 9 + b"\x01"
    value, end = read_varint(encode_varint(-5), 0)
    assert (to_signed64(value), end) == (-5, 10)


def test_varint_matches_protobuf_int64() -> None:
    # BlobShape.dim is a packed int64: protobuf's own bytes must decode identically.
    dims = [0, 1, 300, 2**40, -7]
    data = BlobShape(dim=dims).SerializeToString()
    (field,) = list(iter_fields(data))
    pos, got = field.value_start, []
    while pos < field.value_end:
        value, pos = read_varint(data, pos, field.value_end)
        got.append(to_signed64(value))
    assert got == dims


def test_truncated_varint() -> None:
    with pytest.raises(CaffemodelError, match=r"^byte 3: the data ends inside a varint"):
        read_varint(b"abc\x80\x80", 3)


def test_varint_bounded_by_end() -> None:
    with pytest.raises(CaffemodelError, match="ends inside a varint"):
        read_varint(b"\x80\x01", 0, 1)


def test_varint_overflow() -> None:
    with pytest.raises(CaffemodelError, match=r"^byte 0: varint does not fit in 64 bits"):
        read_varint(b"\xff" * 9 + b"\x02", 0)
    with pytest.raises(CaffemodelError, match="byte 0: varint does not fit in 64 bits"):
        read_varint(b"\xff" * 11, 0)


def test_encode_varint_rejects_too_large() -> None:
    with pytest.raises(CaffemodelError, match="cannot encode"):
        encode_varint(2**64)


def test_tags_and_headers() -> None:
    assert encode_tag(100, 2) == b"\xa2\x06"
    assert encode_tag(5, 5) == b"\x2d"
    assert encode_len_header(7, 300) == b"\x3a\xac\x02"


def test_iter_fields_every_wire_type() -> None:
    msg = (
        encode_tag(1, 0)
        + encode_varint(150)  # varint: bytes 1..3
        + encode_tag(2, 1)
        + struct.pack("<d", 1.5)  # fixed64: bytes 4..12
        + encode_len_header(3, 2)
        + b"hi"  # length-delimited: bytes 14..16
        + encode_tag(4, 5)
        + struct.pack("<f", 2.0)  # fixed32: bytes 17..21
    )
    assert list(iter_fields(msg)) == [
        Field(1, 0, 1, 3, 0),
        Field(2, 1, 4, 12, 3),
        Field(3, 2, 14, 16, 12),
        Field(4, 5, 17, 21, 16),
    ]


def test_iter_fields_matches_protobuf_serialization() -> None:
    blob = BlobProto(num=2, channels=3, data=[1.0, 2.0], double_data=[3.0])
    blob.shape.dim.extend([2, 3])
    data = blob.SerializeToString()
    fields = list(iter_fields(data))
    assert [f.number for f in fields] == [1, 2, 5, 7, 8]
    data_field = fields[2]
    assert data[data_field.value_start : data_field.value_end] == struct.pack("<2f", 1.0, 2.0)
    # Concatenated whole-field spans rebuild the message exactly.
    assert b"".join(data[f.field_start : f.value_end] for f in fields) == data


def test_iter_fields_sub_span() -> None:
    inner = NetParameter(name="n").SerializeToString()
    outer = b"\x00\x00" + inner + b"\x00"
    assert list(iter_fields(outer, 2, 2 + len(inner))) == [Field(1, 2, 4, 5, 2)]


def test_iter_fields_end_past_buffer() -> None:
    with pytest.raises(CaffemodelError, match="past the end"):
        list(iter_fields(b"\x08\x01", 0, 10))


def test_huge_length_is_refused_before_allocation() -> None:
    data = encode_tag(7, 2) + encode_varint(2**40) + b"\x00" * 20
    with pytest.raises(
        CaffemodelError, match=r"^byte 0: field 7 claims 1099511627776 bytes, only 20 remain$"
    ):
        list(iter_fields(data))


def test_fixed_width_truncated() -> None:
    with pytest.raises(CaffemodelError, match="field 2 needs 8 bytes, only 3 remain"):
        read_field(encode_tag(2, 1) + b"abc", 0, 4)
    with pytest.raises(CaffemodelError, match="field 4 needs 4 bytes, only 1 remain"):
        read_field(encode_tag(4, 5) + b"a", 0, 2)


@pytest.mark.parametrize("wire_type", [3, 4])
def test_groups_rejected(wire_type: int) -> None:
    with pytest.raises(CaffemodelError, match=rf"byte 0: field 9 uses wire type {wire_type}"):
        list(iter_fields(encode_tag(9, wire_type)))


@pytest.mark.parametrize("wire_type", [6, 7])
def test_invalid_wire_type(wire_type: int) -> None:
    with pytest.raises(CaffemodelError, match=rf"field 9 has invalid wire type {wire_type}"):
        list(iter_fields(encode_tag(9, wire_type)))


def test_field_number_zero() -> None:
    with pytest.raises(CaffemodelError, match="byte 0: invalid field number 0"):
        list(iter_fields(b"\x02\x00"))


def test_works_on_memoryview_and_mmap(tmp_path: Path) -> None:
    data = NetParameter(name="abc", input=["data"]).SerializeToString()
    expected = list(iter_fields(data))
    assert list(iter_fields(memoryview(data))) == expected
    path = tmp_path / "m.bin"
    path.write_bytes(data)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        assert list(iter_fields(mm)) == expected


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_varint_round_trip(value: int) -> None:
    encoded = encode_varint(value)
    assert read_varint(b"\x00" + encoded, 1) == (value, 1 + len(encoded))


@given(st.binary(max_size=64))
def test_garbage_only_raises_caffemodel_error(data: bytes) -> None:
    try:
        fields = list(iter_fields(data))
    except CaffemodelError as exc:
        assert str(exc).startswith("byte ")
    else:
        # Whatever parsed must tile the input exactly.
        assert b"".join(data[f.field_start : f.value_end] for f in fields) == data
