"""The syntax tree of a prototxt: nodes, reading them, and rendering them back to text.

The edit methods of the nodes (:meth:`MessageNode.set`, ``add``, ``remove``,
``rename`` and :meth:`FieldNode.set_value`) are documented here and
implemented in :mod:`bnfuse.io.prototxt._edits`, which builds on this module.

A field with one scalar value keeps the value's text in the field itself and
makes its :class:`ScalarValue` the first time ``value`` is read: a parsed net
holds one object less per scalar field (most of its fields), which the parser
and the garbage collector would otherwise both pay for.

Example:
    >>> from bnfuse.io.prototxt import Document
    >>> field = Document.parse("num_output: 64").root.first("num_output")
    >>> field.raw_scalar(), field.value.as_int(), field.value is field.value
    (('64', 'number'), 64, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeAlias, Union

from bnfuse.errors import PrototxtSchemaError, excerpt
from bnfuse.io.prototxt._lexer import (
    EOF,
    FALSE_WORDS,
    IDENT_RE,
    MAX_LITERAL_CHARS,
    TRUE_WORDS,
    VALUE_START,
    Lines,
    ScalarKind,
    Tokens,
    describe,
    format_float,
    literal_bool,
    literal_float,
    literal_int,
    quote_string,
    scan_value,
    split_sign,
    string_bytes,
)


@dataclass(frozen=True)
class Identifier:
    """A value to be written as a bare identifier (an enum name), not a quoted string.

    Example:
        >>> ScalarValue.from_python(Identifier("MAX")).raw
        'MAX'
    """

    name: str


#: What the edit methods accept as a value: a Python scalar, an enum identifier,
#: a ready token, or an ordered list of ``(name, value)`` items for a message.
NewValue: TypeAlias = Union[
    str,
    int,
    float,
    bool,
    bytes,
    Identifier,
    "ScalarValue",
    Sequence[tuple[str, "NewValue"]],
]

#: A value for one scalar field.
NewScalar: TypeAlias = Union[str, int, float, bool, bytes, Identifier, "ScalarValue"]


class _Positioned:
    """Where a node was in the parsed text: ``line`` and ``column`` (0, 0 for new nodes)."""

    __slots__ = ("_lines", "_pos")

    def __init__(self, pos: int = -1, lines: Lines | None = None) -> None:
        self._pos = pos
        self._lines = lines

    @property
    def line(self) -> int:
        """1-based line in the parsed text; 0 for a node made by an edit."""
        return self._lines.where(self._pos)[0] if self._lines is not None else 0

    @property
    def column(self) -> int:
        """1-based column (characters) in the parsed text; 0 for a node made by an edit."""
        return self._lines.where(self._pos)[1] if self._lines is not None else 0

    @property
    def source(self) -> str:
        """The name of the parsed text (``"<new>"`` for a node made by an edit)."""
        return self._lines.source if self._lines is not None else "<new>"


def place(node: _Positioned) -> dict[str, Any]:
    """The ``path``/``line``/``column`` fields of an error about ``node`` (none for new nodes)."""
    if node._lines is None:
        return {}
    line, column = node._lines.where(node._pos)
    return {"path": node._lines.source, "line": line, "column": column}


class ScalarValue(_Positioned):
    """One value token as written, with decoding helpers.

    ``raw`` is the exact text: a string literal with its quotes and escapes
    (several adjacent literals, with what separates them, count as one value),
    an identifier (enum name, ``true``, ``inf``), or a number (``-`` included).
    ``kind`` is ``"string"``, ``"identifier"`` or ``"number"``; note that
    ``inf``/``nan`` are identifiers while ``-inf`` is a number, and
    :meth:`as_float` reads all of them.

    Example:
        >>> v = ScalarValue.from_token("'a' \\"b\\"")
        >>> v.kind, v.text()
        ('string', 'ab')
        >>> ScalarValue.from_token("0x10").as_int(), ScalarValue.from_token("1e-5f").as_float()
        (16, 1e-05)
    """

    __slots__ = ("kind", "parent", "raw")

    def __init__(
        self, raw: str, kind: ScalarKind, pos: int = -1, lines: Lines | None = None
    ) -> None:
        self.raw = raw
        self.kind: ScalarKind = kind
        self._pos = pos
        self._lines = lines
        #: The field, or the list, this value belongs to.
        self.parent: FieldNode | ListValue | None = None

    def __repr__(self) -> str:
        return f"ScalarValue({self.raw!r}, {self.kind!r})"

    # -- construction ----------------------------------------------------------------

    @classmethod
    def from_token(cls, raw: str) -> ScalarValue:
        """A value from token text, checked to be exactly one valid value.

        Example:
            >>> ScalarValue.from_token("-3").kind
            'number'
        """
        tokens = Tokens(raw, "<value>")
        kinds = tokens.kinds
        i = 1 if kinds[0] == "w" else 0
        if kinds[i] not in VALUE_START:
            tokens.fail(
                tokens.starts[i], f"expected a value, found {describe(kinds[i], tokens.texts[i])}"
            )
        kind, end = scan_value(tokens, i)
        after = end + 1 if kinds[end] == "w" else end
        if kinds[after] != EOF or i != 0:
            tokens.fail(tokens.starts[after], "expected exactly one value")
        return cls(raw[: tokens.starts[end]], kind)

    @classmethod
    def from_python(cls, value: NewScalar) -> ScalarValue:
        """The token for a Python value: ``str``/``bytes`` quoted, ``bool`` as ``true``/``false``,
        ``float`` in shortest round-trip form, :class:`Identifier` bare; a
        :class:`ScalarValue` is copied once checked to be one valid value (:meth:`from_token`).

        Example:
            >>> [ScalarValue.from_python(v).raw for v in ("x", 3, 1e-05, True)]
            ['"x"', '3', '1e-05', 'true']
        """
        if isinstance(value, ScalarValue):
            return cls.from_token(value.raw)
        if isinstance(value, Identifier):
            if not IDENT_RE.match(value.name):
                raise PrototxtSchemaError(f"{excerpt(value.name)} is not a valid identifier")
            return cls(value.name, "identifier")
        if isinstance(value, bool):
            return cls("true" if value else "false", "identifier")
        if isinstance(value, int):
            return cls(_int_text(value), "number")
        if isinstance(value, float):
            text = format_float(value)
            return cls(text, "identifier" if text in ("inf", "nan") else "number")
        if isinstance(value, (str, bytes)):
            return cls(quote_string(value), "string")
        raise PrototxtSchemaError(
            f"cannot write a {type(value).__name__} as a prototxt value: {excerpt(repr(value))}"
        )

    # -- decoding ----------------------------------------------------------------------

    def _fail(self, message: str) -> NoReturn:
        raise PrototxtSchemaError.at(self.source, self.line, self.column, message)

    def quote_char(self) -> str:
        """The quote character a string value was written with (``"`` otherwise).

        Example:
            >>> ScalarValue.from_token("'x'").quote_char()
            "'"
        """
        return self.raw[0] if self.kind == "string" else '"'

    def as_bytes(self) -> bytes:
        """The bytes of a string value, escapes decoded, adjacent literals joined.

        Example:
            >>> ScalarValue.from_token('"\\\\x41\\\\101"').as_bytes()
            b'AA'
        """
        if self.kind != "string":
            self._fail(f"expected a string, found {excerpt(self.raw)}")
        return string_bytes(self.raw)

    def text(self) -> str:
        """The decoded text of a string, the name of an identifier, a number as written.

        Example:
            >>> ScalarValue.from_token('"conv1"').text(), ScalarValue.from_token("MAX").text()
            ('conv1', 'MAX')
        """
        if self.kind == "string":
            try:
                return self.as_bytes().decode("utf-8")
            except UnicodeDecodeError:
                self._fail(f"string {excerpt(self.raw)} is not valid UTF-8")
        if self.kind == "number" and self.raw.startswith("-"):
            return "-" + split_sign(self.raw)[1]
        return self.raw

    def int_or_none(self) -> int | None:
        """The integer this value spells (decimal, ``0x`` hex, leading-zero octal), else None.

        Example:
            >>> [ScalarValue.from_token(t).int_or_none() for t in ("010", "0x1F", "1.5")]
            [8, 31, None]
        """
        return literal_int(self.raw, self.kind)

    def float_or_none(self) -> float | None:
        """The float this value spells as C++ reads a float field, else None.

        Decimal integers, floats with an optional ``f`` suffix, and
        ``inf``/``infinity``/``nan`` in any case are floats; hex and octal are not.

        Example:
            >>> [ScalarValue.from_token(t).float_or_none() for t in ("-INF", "5", "1.5f", "0x1")]
            [-inf, 5.0, 1.5, None]
        """
        return literal_float(self.raw, self.kind)

    def as_int(self) -> int:
        """The integer value; raises :class:`~bnfuse.errors.PrototxtSchemaError` otherwise.

        Example:
            >>> ScalarValue.from_token("-7").as_int()
            -7
        """
        value = self.int_or_none()
        if value is None:
            self._fail(f"expected an integer, found {excerpt(self.raw)}")
        return value

    def as_float(self) -> float:
        """The float value; raises :class:`~bnfuse.errors.PrototxtSchemaError` otherwise.

        Example:
            >>> ScalarValue.from_token("2").as_float()
            2.0
        """
        value = self.float_or_none()
        if value is None:
            self._fail(f"expected a number, found {excerpt(self.raw)}")
        return value

    def as_bool(self) -> bool:
        """``true``/``True``/``t``/``1`` or ``false``/``False``/``f``/``0``, as C++ accepts.

        Example:
            >>> ScalarValue.from_token("True").as_bool(), ScalarValue.from_token("0").as_bool()
            (True, False)
        """
        value = literal_bool(self.raw, self.kind)
        if value is None:
            self._fail(f"expected true or false, found {excerpt(self.raw)}")
        return value


def _int_text(value: int) -> str:
    """Decimal text of a new integer value, refused beyond MAX_LITERAL_CHARS."""
    try:
        text = str(value)
    except ValueError:  # beyond Python's own limit on int -> str conversion
        text = ""
    if not text or len(text) > MAX_LITERAL_CHARS:
        raise PrototxtSchemaError(
            f"an integer of {value.bit_length()} bits is too long for a prototxt value "
            f"(at most {MAX_LITERAL_CHARS} characters)"
        )
    return text


def scalar_like(value: NewScalar, like: ScalarValue) -> ScalarValue:
    """A token for ``value`` that replaces ``like``, in ``like``'s style.

    Example:
        >>> scalar_like("AVE", ScalarValue("MAX", "identifier")).raw
        'AVE'
        >>> scalar_like("b", ScalarValue("'a'", "string")).raw
        "'b'"
    """
    if isinstance(value, str):
        if like.kind == "identifier" and IDENT_RE.match(value) and like.raw not in _BOOL_WORDS:
            return ScalarValue(value, "identifier")
        if like.kind == "string":
            return ScalarValue(quote_string(value, like.quote_char()), "string")
    return ScalarValue.from_python(value)


_BOOL_WORDS = TRUE_WORDS | FALSE_WORDS


class ListValue(_Positioned):
    """List syntax: ``dim: [1, 3, 224, 224]`` or ``param [{ lr_mult: 1 }, { lr_mult: 2 }]``.

    ``items`` holds the elements and, as ``str``, the text between them
    (commas included); the brackets are implied.

    Example:
        >>> from bnfuse.io.prototxt import Document
        >>> f = Document.parse("dim: [1, 3]").root.first("dim")
        >>> [v.as_int() for v in f.values], f.value.items
        ([1, 3], [ScalarValue('1', 'number'), ', ', ScalarValue('3', 'number')])
    """

    __slots__ = ("items", "parent")

    def __init__(self, pos: int = -1, lines: Lines | None = None) -> None:
        self.items: list[str | ScalarValue | MessageNode] = []
        self._pos = pos
        self._lines = lines
        self.parent: FieldNode | None = None

    def __repr__(self) -> str:
        return f"ListValue({len(self.values)} values)"

    @property
    def values(self) -> list[ScalarValue | MessageNode]:
        """The elements, in order."""
        return [v for v in self.items if not isinstance(v, str)]


class FieldNode(_Positioned):
    """One field occurrence: ``name``, ``mid`` (text up to the value) and ``value``.

    Example:
        >>> from bnfuse.io.prototxt import Document
        >>> f = Document.parse("num_output: 64").root.first("num_output")
        >>> f.name, f.mid, f.value.as_int(), (f.line, f.column), f.is_message
        ('num_output', ': ', 64, (1, 1), False)
    """

    # _raw, _kind and _value_pos hold a parsed scalar value until ``value`` is
    # first read (then _value holds it); they are unset for other fields.  The
    # parser fills these slots itself (bypassing __init__) for such fields.
    __slots__ = ("_kind", "_raw", "_value", "_value_pos", "mid", "name", "parent")
    _raw: str
    _kind: ScalarKind
    _value_pos: int

    def __init__(
        self,
        name: str,
        mid: str,
        value: ScalarValue | MessageNode | ListValue,
        pos: int = -1,
        lines: Lines | None = None,
    ) -> None:
        self.name = name
        self.mid = mid
        self._value: ScalarValue | MessageNode | ListValue | None = value
        self._pos = pos
        self._lines = lines
        value.parent = self
        #: The message this field belongs to; None once removed.
        self.parent: MessageNode | None = None

    def __repr__(self) -> str:
        return f"FieldNode({self.name!r} at {self.line}:{self.column})"

    @property
    def value(self) -> ScalarValue | MessageNode | ListValue:
        """The value: a :class:`ScalarValue`, a :class:`MessageNode` or a :class:`ListValue`."""
        value = self._value
        if value is None:
            value = ScalarValue(self._raw, self._kind, self._value_pos, self._lines)
            value.parent = self
            self._value = value
        return value

    @value.setter
    def value(self, value: ScalarValue | MessageNode | ListValue) -> None:
        self._value = value

    def raw_scalar(self) -> tuple[str, ScalarKind] | None:
        """``(raw, kind)`` of the value when it is one scalar, else None (no node is built).

        Example:
            >>> from bnfuse.io.prototxt import Document
            >>> root = Document.parse("a: -1 b { } c: [1]").root
            >>> [f.raw_scalar() for f in root.fields]
            [('-1', 'number'), None, None]
        """
        value = self._value
        if value is None:
            return self._raw, self._kind
        if isinstance(value, ScalarValue):
            return value.raw, value.kind
        return None

    @property
    def is_message(self) -> bool:
        """True for a message value, or a list of messages."""
        value = self._value
        if isinstance(value, ListValue):
            return any(isinstance(v, MessageNode) for v in value.items)
        return isinstance(value, MessageNode)

    @property
    def is_list(self) -> bool:
        """True when written with list syntax ``[...]``."""
        return isinstance(self._value, ListValue)

    @property
    def values(self) -> list[ScalarValue | MessageNode]:
        """The value as a list: one element, or every element of list syntax."""
        value = self.value
        return value.values if isinstance(value, ListValue) else [value]

    def render(self) -> str:
        """The exact text of this field, from its name to the end of its value.

        Example:
            >>> from bnfuse.io.prototxt import Document
            >>> Document.parse("p <a:1>").root.first("p").render()
            'p <a:1>'
        """
        out: list[str] = []
        _render_field(self, out)
        return "".join(out)

    def set_value(self, value: NewScalar) -> None:
        """Replace this field's single value, keeping the quote style of a string.

        A ``str`` becomes a bare identifier when the current value is an
        identifier (an enum such as ``pool: MAX``), and is quoted otherwise.

        Example:
            >>> from bnfuse.io.prototxt import Document
            >>> doc = Document.parse("top: 'a'  # out\\npool: MAX\\n")
            >>> doc.root.first("top").set_value("a_fused")
            >>> doc.root.first("pool").set_value("AVE")
            >>> doc.render()
            "top: 'a_fused'  # out\\npool: AVE\\n"
        """
        from bnfuse.io.prototxt import _edits

        _edits.set_value(self, value)


class MessageNode(_Positioned):
    """A message: its fields in order, with the text between them kept in ``items``.

    Reading: :meth:`all`, :meth:`first`, :meth:`scalar`, :meth:`scalars`,
    :meth:`message`, :meth:`messages`.  Editing: :meth:`set`, :meth:`add`,
    :meth:`remove`, :meth:`rename` and :meth:`FieldNode.set_value`.

    Example:
        >>> from bnfuse.io.prototxt import Document
        >>> m = Document.parse("a: 1 b { c: 'x' } a: 2").root
        >>> [f.name for f in m.fields], [v.as_int() for v in m.scalars("a")]
        (['a', 'b', 'a'], [1, 2])
        >>> m.message("b").scalar("c").text()
        'x'
    """

    __slots__ = ("_style", "close", "items", "open", "parent")

    def __init__(
        self, open: str = "", close: str = "", pos: int = -1, lines: Lines | None = None
    ) -> None:
        self.items: list[str | FieldNode] = []
        self.open = open
        self.close = close
        self._pos = pos
        self._lines = lines
        self.parent: FieldNode | ListValue | None = None
        # Only the root uses it: (newline, indent unit), detected on first edit.
        self._style: tuple[str, str] | None = None

    def __repr__(self) -> str:
        return f"MessageNode({len(self.fields)} fields at {self.line}:{self.column})"

    # -- reading -----------------------------------------------------------------------

    @property
    def fields(self) -> list[FieldNode]:
        """Every field, in order."""
        return [f for f in self.items if f.__class__ is not str]  # type: ignore[misc]

    def all(self, name: str) -> list[FieldNode]:
        """Every field called ``name``, in order.

        Example:
            >>> from bnfuse.io.prototxt import Document
            >>> [f.value.text() for f in Document.parse("top: 'a' top: 'b'").root.all("top")]
            ['a', 'b']
        """
        return [f for f in self.items if not isinstance(f, str) and f.name == name]

    def first(self, name: str) -> FieldNode | None:
        """The first field called ``name``, or None.

        Example:
            >>> from bnfuse.io.prototxt import Document
            >>> Document.parse("a: 1").root.first("b") is None
            True
        """
        for f in self.items:
            if not isinstance(f, str) and f.name == name:
                return f
        return None

    def scalars(self, name: str) -> list[ScalarValue]:
        """Every value of the fields called ``name``, list syntax flattened.

        Example:
            >>> from bnfuse.io.prototxt import Document
            >>> [v.as_int() for v in Document.parse("dim: 1 dim: [2, 3]").root.scalars("dim")]
            [1, 2, 3]
        """
        out: list[ScalarValue] = []
        for f in self.all(name):
            for v in f.values:
                if isinstance(v, MessageNode):
                    not_a(f, "a value", "a message")
                out.append(v)
        return out

    def scalar(self, name: str) -> ScalarValue | None:
        """The first value of field ``name``, or None when absent.

        Raises :class:`~bnfuse.errors.PrototxtSchemaError` when the field is a message.

        Example:
            >>> from bnfuse.io.prototxt import Document
            >>> Document.parse("eps: 1e-5").root.scalar("eps").as_float()
            1e-05
        """
        f = self.first(name)
        if f is None:
            return None
        v = f.values[0] if f.values else None
        if isinstance(v, MessageNode):
            not_a(f, "a value", "a message")
        return v

    def messages(self, name: str) -> list[MessageNode]:
        """Every message value of the fields called ``name``, list syntax flattened.

        Example:
            >>> from bnfuse.io.prototxt import Document
            >>> len(Document.parse("layer {} layer {}").root.messages("layer"))
            2
        """
        out: list[MessageNode] = []
        for f in self.all(name):
            for v in f.values:
                if isinstance(v, ScalarValue):
                    not_a(f, "a message", "a value")
                out.append(v)
        return out

    def message(self, name: str) -> MessageNode | None:
        """The first message value of field ``name``, or None when absent.

        Example:
            >>> from bnfuse.io.prototxt import Document
            >>> Document.parse("p { a: 1 }").root.message("p").scalar("a").raw
            '1'
        """
        f = self.first(name)
        if f is None:
            return None
        v = f.values[0] if f.values else None
        if isinstance(v, ScalarValue):
            not_a(f, "a message", "a value")
        return v

    def render(self) -> str:
        """The exact text of this message, brackets included.

        Example:
            >>> from bnfuse.io.prototxt import Document
            >>> Document.parse("p { a: 1 }").root.message("p").render()
            '{ a: 1 }'
        """
        out: list[str] = []
        _render_message(self, out)
        return "".join(out)

    @property
    def is_root(self) -> bool:
        """True for the message that is the whole document."""
        return self.parent is None and self.open == ""

    # -- editing (implemented in _edits) -----------------------------------------------

    def set(self, name: str, value: NewScalar) -> FieldNode:
        """Set field ``name`` to ``value``: replace the value token if the field exists,
        else append ``name: value`` in the style of the siblings.

        Example:
            >>> from bnfuse.io.prototxt import Document
            >>> doc = Document.parse("layer {\\n  name: 'bn'\\n}\\n")
            >>> layer = doc.root.message("layer")
            >>> _ = layer.set("name", "bn2"); _ = layer.set("eps", 1e-05)
            >>> print(doc.render(), end="")
            layer {
              name: 'bn2'
              eps: 1e-05
            }
        """
        from bnfuse.io.prototxt import _edits

        return _edits.set_field(self, name, value)

    def rename(self, name: str, old: str, new: str) -> int:
        """Change every string value ``old`` of fields ``name`` to ``new``; return how many.

        Example:
            >>> from bnfuse.io.prototxt import Document
            >>> doc = Document.parse('top: "conv1" bottom: "conv1"')
            >>> doc.root.rename("top", "conv1", "conv1_bn"), doc.render()
            (1, 'top: "conv1_bn" bottom: "conv1"')
        """
        from bnfuse.io.prototxt import _edits

        return _edits.rename(self, name, old, new)

    def remove(self, field: FieldNode) -> None:
        """Remove ``field`` (a value or a whole message block) from this message.

        A field alone on its lines takes those lines with it (no blank line
        is left); otherwise it takes its own separator and adjacent spaces.
        Comments on other lines are kept.

        Example:
            >>> from bnfuse.io.prototxt import Document
            >>> doc = Document.parse("a: 1\\n# keep\\nb {\\n  c: 2\\n}\\nd: 3\\n")
            >>> doc.root.remove(doc.root.first("b"))
            >>> doc.render()
            'a: 1\\n# keep\\nd: 3\\n'
        """
        from bnfuse.io.prototxt import _edits

        _edits.remove(self, field)

    def remove_many(self, fields: Sequence[FieldNode]) -> None:
        """Remove several fields in one pass over this message (linear in its size).

        The text is the same as :meth:`remove` of each field in their order of
        appearance.

        Example:
            >>> from bnfuse.io.prototxt import Document
            >>> doc = Document.parse("a: 1\\nb: 2\\nc: 3\\n")
            >>> doc.root.remove_many([doc.root.first("a"), doc.root.first("c")])
            >>> doc.render()
            'b: 2\\n'
        """
        from bnfuse.io.prototxt import _edits

        _edits.remove_many(self, fields)

    def add(
        self,
        name: str,
        value: NewValue,
        *,
        after: FieldNode | None = None,
        before: FieldNode | None = None,
    ) -> FieldNode:
        """Add a new field after/before a sibling (default: at the end) and return it.

        ``value`` is a scalar (see :meth:`ScalarValue.from_python`) or an
        ordered list of ``(name, value)`` items for a sub-message, nested
        freely.  Layout follows the siblings: same indentation and indent
        unit, same line ending, one line or several as the message (and the
        sibling messages) are written.

        Example:
            >>> from bnfuse.io.prototxt import Document
            >>> doc = Document.parse("layer {\\n  name: 'sc'\\n  type: 'Scale'\\n}\\n")
            >>> layer = doc.root.message("layer")
            >>> _ = layer.add("scale_param", [("bias_term", True)])
            >>> print(doc.render(), end="")
            layer {
              name: 'sc'
              type: 'Scale'
              scale_param {
                bias_term: true
              }
            }
        """
        from bnfuse.io.prototxt import _edits

        return _edits.add(self, name, value, after=after, before=before)


def not_a(field: FieldNode, wanted: str, found: str) -> NoReturn:
    """Raise the error for a field read as the wrong sort of value."""
    raise PrototxtSchemaError(
        f"field {excerpt(field.name)} at {field.line}:{field.column} is {found}, expected {wanted}",
        **place(field),
    )


# --------------------------------------------------------------------------------------
# Rendering


def _render_field(field: FieldNode, out: list[str]) -> None:
    out.append(field.name)
    out.append(field.mid)
    value = field._value
    if value is None:
        out.append(field._raw)
    elif isinstance(value, ScalarValue):
        out.append(value.raw)
    elif isinstance(value, MessageNode):
        _render_message(value, out)
    else:
        out.append("[")
        for item in value.items:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, ScalarValue):
                out.append(item.raw)
            else:
                _render_message(item, out)
        out.append("]")


def _render_message(message: MessageNode, out: list[str]) -> None:
    out.append(message.open)
    for item in message.items:
        if isinstance(item, str):
            out.append(item)
        else:
            _render_field(item, out)
    out.append(message.close)
