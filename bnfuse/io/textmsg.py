"""Concrete syntax tree -> typed protobuf message, with fork fields kept aside.

:func:`fill_message` reads a :class:`~bnfuse.io.prototxt.MessageNode` into a
protobuf message by the message's descriptor, with the value rules of
protobuf's C++ ``TextFormat`` (what Caffe uses): enums by name or number,
``true``/``t``/``1`` for bools, hex and octal integers with range checks,
``inf``/``nan`` floats, adjacent string literals joined.

Fields the schema does not know -- fork fields such as SegNet's ``bn_param``
or SSD's ``prior_box_param`` -- are not an error: they are skipped and their
dotted paths returned, so the caller can read them from the text tree (which
keeps them byte for byte).  So is an enum field written with a name its enum
does not have (a fork's value: ``PRE_FIXED``, ``engine: MKL2017``): the field is
left unset in the message (never given its default in silence) and its path is
returned with the unknown ones.  An enum *number* that is no value stays an error.
A value that does not fit its field raises
:class:`~bnfuse.errors.PrototxtSchemaError` naming ``file:line:column``, the
field and the value.

Example:
    >>> from google.protobuf import descriptor_pb2
    >>> from bnfuse.io.prototxt import Document
    >>> doc = Document.parse('name: "x" label: LABEL_REPEATED number: 0x10 json_name: "a" "b" x {}')
    >>> msg = descriptor_pb2.FieldDescriptorProto()
    >>> fill_message(doc.root, msg)
    ['x']
    >>> msg.label == msg.LABEL_REPEATED, msg.number, msg.json_name
    (True, 16, 'ab')
"""

from __future__ import annotations

from collections.abc import Collection

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from bnfuse.errors import PrototxtSchemaError, excerpt
from bnfuse.io.prototxt import (
    FieldNode,
    ListValue,
    MessageNode,
    ScalarKind,
    ScalarValue,
)

# How C++ TextFormat reads a literal is the lexer's knowledge; textmsg reads plain
# scalar fields from their text with it, without building their ScalarValue.
from bnfuse.io.prototxt._lexer import literal_bool, literal_float, literal_int, string_bytes

__all__ = ["fill_message", "is_repeated", "type_name"]

_FD = FieldDescriptor

#: Inclusive integer ranges by field type.
_INT_RANGES: dict[int, tuple[int, int]] = {
    _FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    _FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    _FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _FD.TYPE_UINT32: (0, 2**32 - 1),
    _FD.TYPE_FIXED32: (0, 2**32 - 1),
    _FD.TYPE_UINT64: (0, 2**64 - 1),
    _FD.TYPE_FIXED64: (0, 2**64 - 1),
}

_TYPE_NAMES: dict[int, str] = {
    _FD.TYPE_DOUBLE: "double",
    _FD.TYPE_FLOAT: "float",
    _FD.TYPE_INT64: "int64",
    _FD.TYPE_UINT64: "uint64",
    _FD.TYPE_INT32: "int32",
    _FD.TYPE_FIXED64: "fixed64",
    _FD.TYPE_FIXED32: "fixed32",
    _FD.TYPE_BOOL: "bool",
    _FD.TYPE_STRING: "string",
    _FD.TYPE_BYTES: "bytes",
    _FD.TYPE_UINT32: "uint32",
    _FD.TYPE_SFIXED32: "sfixed32",
    _FD.TYPE_SFIXED64: "sfixed64",
    _FD.TYPE_SINT32: "sint32",
    _FD.TYPE_SINT64: "sint64",
}

_MESSAGE_TYPES = (_FD.TYPE_MESSAGE, _FD.TYPE_GROUP)

#: What :func:`_convert` returns for a name that is no value of the field's enum.
_UNKNOWN_ENUM = object()


def is_repeated(field: FieldDescriptor) -> bool:
    """Whether a field is repeated, on every supported protobuf runtime.

    Newer runtimes deprecate ``label`` in favour of ``is_repeated``.

    Example:
        >>> from google.protobuf import descriptor_pb2
        >>> is_repeated(descriptor_pb2.DescriptorProto.DESCRIPTOR.fields_by_name["field"])
        True
    """
    flag = getattr(field, "is_repeated", None)
    if isinstance(flag, bool):
        return flag
    return bool(field.label == _FD.LABEL_REPEATED)


def type_name(field: FieldDescriptor) -> str:
    """The type of a field as a ``.proto`` file spells it (``uint32``, ``Phase``, ...).

    Example:
        >>> from google.protobuf import descriptor_pb2
        >>> type_name(descriptor_pb2.FieldDescriptorProto.DESCRIPTOR.fields_by_name["type"])
        'Type'
    """
    if field.type in _MESSAGE_TYPES:
        return str(field.message_type.name)
    if field.type == _FD.TYPE_ENUM:
        return str(field.enum_type.name)
    return _TYPE_NAMES.get(field.type, "value")


def fill_message(node: MessageNode, message: Message, *, source: str | None = None,
                 skip: Collection[str] = (), prefix: str = "") -> list[str]:
    """Fill ``message`` from the text tree ``node``; return the unknown fields' paths.

    Top-level fields named in ``skip`` are left out (the net loader fills each ``layer``
    on its own, so that a layer is parsed once); ``prefix`` starts every path (such as
    ``layer[3].``), so messages name the field as it stands in the whole file.

    Repeated fields append (so filling an empty message gives the parsed
    value), singular fields may appear once, as in C++ ``TextFormat``.  Paths
    are dotted, with the index of repeated messages: ``layer[3].bn_param``;
    each path is listed once, in file order.  ``source`` names the file in
    error messages (default: the name the text was parsed with).

    Example:
        >>> from google.protobuf import descriptor_pb2
        >>> from bnfuse.io.prototxt import Document
        >>> doc = Document.parse("field { name: 'a' number: 3e9 }", source="m.prototxt")
        >>> fill_message(doc.root, descriptor_pb2.DescriptorProto())
        Traceback (most recent call last):
        ...
        bnfuse.errors.PrototxtSchemaError: m.prototxt:1:27: field 'field[0].number' (int32) ...
    """
    unknown: dict[str, None] = {}
    _fill(node, message, prefix, source, unknown, skip=frozenset(skip))
    return list(unknown)


def _shown(path: str) -> str:
    """A field path quoted for a message (names in a file can be any length)."""
    return excerpt(path, 160)


def _fail(
    where: FieldNode | ScalarValue | MessageNode | ListValue, source: str | None, message: str
) -> PrototxtSchemaError:
    name = source if source is not None else where.source
    return PrototxtSchemaError.at(name, where.line, where.column, message)


def _fill(
    node: MessageNode,
    message: Message,
    prefix: str,
    source: str | None,
    unknown: dict[str, None],
    *,
    skip: frozenset[str] = frozenset(),
) -> None:
    by_name = message.DESCRIPTOR.fields_by_name
    seen: set[str] = set()
    for field in node.fields:
        if field.name in skip:
            continue
        path = prefix + field.name
        fd = by_name.get(field.name)
        if fd is None:
            unknown[path] = None
            continue
        repeated = is_repeated(fd)
        if not repeated:
            if field.name in seen:
                raise _fail(
                    field,
                    source,
                    f"field {_shown(path)} is set more than once, but it is not repeated",
                )
            if field.is_list:
                raise _fail(
                    field,
                    source,
                    f"field {_shown(path)} is not repeated, so it cannot take a list [...]",
                )
        seen.add(field.name)
        if fd.type in _MESSAGE_TYPES:
            for value in field.values:
                if not isinstance(value, MessageNode):
                    raise _fail(
                        value,
                        source,
                        f"field {_shown(path)} is a message ({type_name(fd)}), "
                        f"expected '{{ ... }}', found {excerpt(value.raw)}",
                    )
                if repeated:
                    container = getattr(message, field.name)
                    sub = container.add()
                    sub_prefix = f"{path}[{len(container) - 1}]."
                else:
                    sub = getattr(message, field.name)
                    # An empty "name {}" still marks the field as present.
                    sub.SetInParent()
                    sub_prefix = path + "."
                _fill(value, sub, sub_prefix, source, unknown)
            continue
        token = field.raw_scalar()
        if token is not None:
            # A plain scalar field is read from its text: no ScalarValue is built for it.
            converted = [_convert(fd, token[0], token[1], field, path, source)]
        else:
            converted = [
                _convert(fd, v.raw, v.kind, v, path, source)
                for v in _scalar_elements(field, fd, path, source)
            ]
        values = [v for v in converted if v is not _UNKNOWN_ENUM]
        if len(values) != len(converted):
            # A fork's enum value (PRE_FIXED, MKL2017): kept in the text like a fork field,
            # reported as unknown, and never replaced by the field's default in silence.
            unknown[path] = None
            if not values:
                continue
        if repeated:
            getattr(message, field.name).extend(values)
        else:
            setattr(message, field.name, values[0])


def _scalar_elements(
    field: FieldNode, fd: FieldDescriptor, path: str, source: str | None
) -> list[ScalarValue]:
    """The elements of a list (or a message) written where ``fd`` wants scalars."""
    out: list[ScalarValue] = []
    for value in field.values:
        if isinstance(value, MessageNode):
            raise _fail(value, source, f"field {_shown(path)} is a {type_name(fd)}, not a message")
        out.append(value)
    return out


def _convert(  # noqa: PLR0917 - private helper, one call site
    fd: FieldDescriptor,
    raw: str,
    kind: ScalarKind,
    where: FieldNode | ScalarValue,
    path: str,
    source: str | None,
) -> object:
    """The Python value of one token for field ``fd``, by C++ TextFormat's rules
    (:data:`_UNKNOWN_ENUM` for a name that is not a value of the field's enum)."""
    field_type = fd.type

    def bad(why: str) -> PrototxtSchemaError:
        # Only now is the value's node built (for its line and column).
        value = where.value if isinstance(where, FieldNode) else where
        return _fail(
            value,
            source,
            f"field {_shown(path)} ({type_name(fd)}) cannot hold {excerpt(raw)}: {why}",
        )

    if field_type in _INT_RANGES:
        number = literal_int(raw, kind)
        if number is None:
            raise bad("expected an integer")
        low, high = _INT_RANGES[field_type]
        if not low <= number <= high:
            raise bad(f"out of range [{low}, {high}]")
        return number
    if field_type in (_FD.TYPE_FLOAT, _FD.TYPE_DOUBLE):
        real = literal_float(raw, kind)
        if real is None:
            raise bad("expected a decimal number, inf or nan")
        return real
    if field_type == _FD.TYPE_BOOL:
        truth = literal_bool(raw, kind)
        if truth is None:
            raise bad("expected true or false")
        return truth
    if field_type == _FD.TYPE_ENUM:
        enum = fd.enum_type
        if kind == "identifier":
            entry = enum.values_by_name.get(raw)
            if entry is None:
                return _UNKNOWN_ENUM
        else:
            number = literal_int(raw, kind)
            entry = enum.values_by_number.get(number) if number is not None else None
        if entry is None:
            names = ", ".join(v.name for v in enum.values)
            raise bad(f"not a value of enum {enum.name} ({names})")
        return int(entry.number)
    if field_type in (_FD.TYPE_STRING, _FD.TYPE_BYTES):
        if kind != "string":
            raise bad("expected a quoted string")
        data = string_bytes(raw)
        if field_type == _FD.TYPE_BYTES:
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise bad("the string is not valid UTF-8") from None
    raise bad("unsupported field type")
