"""Protobuf wire primitives on bytes, memoryviews and memory maps.

A caffemodel is one protobuf message that can be hundreds of megabytes long,
almost all of it packed float arrays.  Decoding it through the generated
classes copies every float into a Python list; these helpers instead walk the
wire format and report *where* each field lives, so that the caller can wrap
the array bytes with ``numpy.frombuffer`` or copy them verbatim.

Nothing here allocates memory proportional to a length read from the input:
every length is checked against the bytes that remain before it is used, so a
corrupt length such as 2**40 fails with a :class:`~bnfuse.errors.CaffemodelError`
naming the byte offset instead of exhausting memory.

Example:
    >>> data = encode_tag(1, WIRETYPE_VARINT) + encode_varint(300)
    >>> [(f.number, f.wire_type) for f in iter_fields(data)]
    [(1, 0)]
    >>> read_varint(data, 1)
    (300, 3)
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from typing import NamedTuple, NoReturn, TypeAlias

from bnfuse.errors import CaffemodelError

#: Anything the readers accept: they only index and slice it.
Buffer: TypeAlias = "bytes | bytearray | memoryview | mmap.mmap"

WIRETYPE_VARINT = 0
WIRETYPE_FIXED64 = 1
WIRETYPE_LENGTH_DELIMITED = 2
WIRETYPE_START_GROUP = 3
WIRETYPE_END_GROUP = 4
WIRETYPE_FIXED32 = 5

#: A 64-bit varint never needs more than ten 7-bit groups.
MAX_VARINT_BYTES = 10
#: Largest field number protobuf allows (2**29 - 1).
MAX_FIELD_NUMBER = (1 << 29) - 1

_UINT64 = 1 << 64


class Field(NamedTuple):
    """One field of a message, located but not decoded.

    ``value_start:value_end`` is the payload: the varint bytes for wire type 0,
    the 8 or 4 raw bytes for types 1 and 5, and the bytes after the length
    prefix for type 2.  ``field_start`` is where the tag begins, so
    ``buf[field_start:value_end]`` is the whole field, ready to copy verbatim.

    Example:
        >>> f = next(iter_fields(encode_len_header(2, 3) + b"abc"))
        >>> f.number, f.wire_type, f.value_start, f.value_end, f.field_start
        (2, 2, 2, 5, 0)
    """

    number: int
    wire_type: int
    value_start: int
    value_end: int
    field_start: int


def _fail(offset: int, detail: str) -> NoReturn:
    """Raise the one error this module raises, at ``offset``.

    These helpers do not know the file they read: the caller that does (the
    caffemodel reader) builds its own error from ``offset`` and ``detail``.
    """
    raise CaffemodelError.at(offset, detail)


def read_varint(buf: Buffer, pos: int, end: int | None = None) -> tuple[int, int]:
    """Decode the unsigned varint at ``pos``; return ``(value, position after it)``.

    ``end`` bounds the read (default: the end of ``buf``).  A varint that runs
    past ``end``, is longer than ten bytes or does not fit in 64 bits raises
    :class:`~bnfuse.errors.CaffemodelError`.

    Example:
        >>> read_varint(b"\\x96\\x01", 0)
        (150, 2)
    """
    limit = len(buf) if end is None else end
    result = 0
    shift = 0
    start = pos
    while True:
        if pos >= limit:
            _fail(start, "the data ends inside a varint (the file is truncated)")
        byte = buf[pos]
        pos += 1
        if pos - start == MAX_VARINT_BYTES and byte > 1:
            # The tenth group may only carry bit 63; anything more overflows.
            _fail(start, "varint does not fit in 64 bits")
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if pos - start >= MAX_VARINT_BYTES:
            _fail(start, "varint is longer than 10 bytes")


def to_signed64(value: int) -> int:
    """Reinterpret an unsigned 64-bit varint value as two's complement (int32/int64 fields).

    Example:
        >>> to_signed64(2**64 - 1)
        -1
    """
    return value - _UINT64 if value >= 1 << 63 else value


def read_field(buf: Buffer, pos: int, end: int) -> Field:
    """Locate the field whose tag starts at ``pos``; nothing past ``end`` is read.

    Groups (wire types 3 and 4) are rejected: Caffe's schema has none, and
    skipping them would need nested bookkeeping for no real file.

    Example:
        >>> read_field(b"\\x08\\x05", 0, 2)
        Field(number=1, wire_type=0, value_start=1, value_end=2, field_start=0)
    """
    tag, value_start = read_varint(buf, pos, end)
    number = tag >> 3
    wire_type = tag & 7
    if number == 0 or number > MAX_FIELD_NUMBER:
        _fail(pos, f"invalid field number {number}")
    if wire_type == WIRETYPE_VARINT:
        _, value_end = read_varint(buf, value_start, end)
    elif wire_type == WIRETYPE_FIXED64:
        value_end = value_start + 8
        if value_end > end:
            _fail(pos, f"field {number} needs 8 bytes, only {end - value_start} remain")
    elif wire_type == WIRETYPE_FIXED32:
        value_end = value_start + 4
        if value_end > end:
            _fail(pos, f"field {number} needs 4 bytes, only {end - value_start} remain")
    elif wire_type == WIRETYPE_LENGTH_DELIMITED:
        length, value_start = read_varint(buf, value_start, end)
        # Checked before anything is sliced or allocated from the claimed length.
        if length > end - value_start:
            _fail(
                pos,
                f"field {number} claims {length} bytes, only {end - value_start} remain",
            )
        value_end = value_start + length
    elif wire_type in (WIRETYPE_START_GROUP, WIRETYPE_END_GROUP):
        _fail(pos, f"field {number} uses wire type {wire_type} (group), which Caffe never writes")
    else:
        _fail(pos, f"field {number} has invalid wire type {wire_type}")
    return Field(number, wire_type, value_start, value_end, pos)


def iter_fields(buf: Buffer, start: int = 0, end: int | None = None) -> Iterator[Field]:
    """Yield every field of the message occupying ``buf[start:end]``, in order, without copying.

    Example:
        >>> msg = encode_len_header(1, 2) + b"hi" + encode_tag(2, 0) + encode_varint(7)
        >>> [(f.number, f.value_start, f.value_end) for f in iter_fields(msg)]
        [(1, 2, 4), (2, 5, 6)]
    """
    limit = len(buf) if end is None else end
    if limit > len(buf):
        _fail(len(buf), f"message claims to end at byte {limit}, past the end of the data")
    pos = start
    while pos < limit:
        field = read_field(buf, pos, limit)
        yield field
        pos = field.value_end


def encode_varint(value: int) -> bytes:
    """Encode an unsigned varint; negative numbers are written as 64-bit two's complement.

    Example:
        >>> encode_varint(300)
        b'\\xac\\x02'
        >>> len(encode_varint(-1))
        10
    """
    if value < 0:
        value += _UINT64
    if not 0 <= value < _UINT64:
        raise CaffemodelError(f"cannot encode {value} as a 64-bit varint")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_tag(number: int, wire_type: int) -> bytes:
    """Encode a field tag.

    Example:
        >>> encode_tag(100, WIRETYPE_LENGTH_DELIMITED)
        b'\\xa2\\x06'
    """
    return encode_varint((number << 3) | wire_type)


def encode_len_header(number: int, length: int) -> bytes:
    """Encode the tag and length prefix of a length-delimited field of ``length`` payload bytes.

    Example:
        >>> encode_len_header(5, 16)
        b'*\\x10'
    """
    return encode_tag(number, WIRETYPE_LENGTH_DELIMITED) + encode_varint(length)


__all__ = [
    "MAX_VARINT_BYTES",
    "WIRETYPE_END_GROUP",
    "WIRETYPE_FIXED32",
    "WIRETYPE_FIXED64",
    "WIRETYPE_LENGTH_DELIMITED",
    "WIRETYPE_START_GROUP",
    "WIRETYPE_VARINT",
    "Buffer",
    "Field",
    "encode_len_header",
    "encode_tag",
    "encode_varint",
    "iter_fields",
    "read_field",
    "read_varint",
    "to_signed64",
]
