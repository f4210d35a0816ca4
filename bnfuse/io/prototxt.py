"""Lossless prototxt text: parse to a concrete syntax tree, edit, render.

A prototxt is protobuf *text format* as protobuf's C++ ``TextFormat`` parser
(the one Caffe calls) accepts it.  This module parses it without a schema into
a tree that keeps every character: comments, blank lines, indentation, quoting
style, ``,``/``;`` separators, ``name: {`` versus ``name {``, ``< >`` brackets,
list syntax and adjacent string literals.  :meth:`Document.render` of an
unchanged parse returns the input string exactly, and every edit method
changes only the text it concerns, so a fold rewrites a few layers of a
50 000-line net and a ``diff`` shows just those layers.

The tree:

* :class:`Document` owns the root :class:`MessageNode` (the whole file).
* :class:`MessageNode` keeps ``items``: the :class:`FieldNode` children in file
  order with the text between them (whitespace, comments, separators) as plain
  ``str`` items.  Its ``open``/``close`` are ``"{"``/``"}"``, ``"<"``/``">"``,
  or empty for the root.
* :class:`FieldNode` is one ``name: value`` / ``name { ... }`` occurrence; ``mid``
  keeps the text between the name and the value (``": "``, ``" "``, ``":"``).
* A field's ``value`` is a :class:`ScalarValue` (one token, or adjacent string
  literals, or ``-`` and a number), a :class:`MessageNode`, or a
  :class:`ListValue` for list syntax ``dim: [1, 3, 224, 224]`` (whose
  ``values`` are all scalars or all messages).  :attr:`FieldNode.values` gives
  the elements uniformly: one for a plain field, all of them for a list, so a
  repeated field reads the same whichever way it was written.

Positions (``line``, ``column``) are 1-based, columns count characters, and
refer to the parsed text; nodes created by edits have line and column 0.

Example:
    >>> doc = Document.parse('layer { name: "a" type: "BatchNorm" }\\n', source="net.prototxt")
    >>> layer = doc.root.message("layer")
    >>> layer.scalar("type").text()
    'BatchNorm'
    >>> _ = layer.set("type", "BN")
    >>> _ = layer.add("bn_param", [("bn_mode", Identifier("INFERENCE"))], after=layer.first("type"))
    >>> doc.render()
    'layer { name: "a" type: "BN" bn_param { bn_mode: INFERENCE } }\\n'
"""

from __future__ import annotations

import math
import re
import struct
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from operator import itemgetter
from typing import Any, Literal, NoReturn, TypeAlias, Union

from bnfuse.errors import PrototxtSchemaError, PrototxtSyntaxError

__all__ = [
    "MAX_DEPTH",
    "Document",
    "FieldNode",
    "Identifier",
    "ListValue",
    "MessageNode",
    "NewValue",
    "ScalarKind",
    "ScalarValue",
    "decode_text",
    "format_float",
    "quote_string",
]

#: Deepest nesting of messages and lists accepted; deeper input is rejected
#: with a syntax error instead of exhausting the stack of a later consumer.
MAX_DEPTH = 100

ScalarKind: TypeAlias = Literal["string", "identifier", "number"]


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

# --------------------------------------------------------------------------------------
# Tokens

# Every character belongs to exactly one token, so token starts are the running
# sum of token lengths and ``findall`` (all in C) does the whole split.  The kind
# of a token follows from its first character (see _KIND); whitespace and
# comments are one "trivia" token because nothing ever needs them apart.
_TOKEN_RE = re.compile(
    r"(?:[ \t\r\n\v\f]+|#[^\n]*)+"
    r"|[A-Za-z_][A-Za-z0-9_]*"
    r"|0[xX][0-9A-Fa-f]+|(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[fF]?"
    r"|\"(?:[^\"\\\n]|\\[^\n])*\"|'(?:[^'\\\n]|\\[^\n])*'"
    r"|[\s\S]"
)
_KIND: dict[str, str] = {
    **dict.fromkeys(" \t\r\n\v\f#", "w"),
    **dict.fromkeys("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_", "i"),
    **dict.fromkeys("0123456789.", "n"),
    **dict.fromkeys("\"'", "s"),
    **{c: c for c in "{}<>:[],;-"},
}
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ESCAPE_RE = re.compile(
    r"\\(?:([abfnrtv\\?'\"])|([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|u([0-9A-Fa-f]{4})"
    r"|U([0-9A-Fa-f]{8})|([\s\S]?))"
)
_SIMPLE_ESCAPES = {
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "n": b"\n",
    "r": b"\r",
    "t": b"\t",
    "v": b"\v",
    "\\": b"\\",
    "?": b"?",
    "'": b"'",
    '"': b'"',
}
_INF_NAN = frozenset({"inf", "infinity", "nan"})
_TRUE = frozenset({"true", "True", "t"})
_FALSE = frozenset({"false", "False", "f"})
_OPEN_TO_CLOSE = {"{": "}", "<": ">"}
_VALUE_START = frozenset({"s", "n", "i", "-"})
_HSPACE = " \t"


def _describe(kind: str | None, text: str) -> str:
    """How an error message names a token."""
    if kind == "":
        return "end of file"
    shown = text if len(text) <= 24 else text[:21] + "..."
    return repr(shown) if "'" not in shown else f'"{shown}"'


class _Lines:
    """Maps character offsets of one text to 1-based (line, column), on demand.

    Nodes keep an offset and a reference to this table instead of computing
    their line at parse time: most positions are never asked for.
    """

    __slots__ = ("line_starts", "source")

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.line_starts = [0, *(m.end() for m in re.finditer("\n", text))]

    def where(self, pos: int) -> tuple[int, int]:
        index = bisect_right(self.line_starts, pos) - 1
        return index + 1, pos - self.line_starts[index] + 1


def _where(lines: _Lines | None, pos: int) -> tuple[int, int]:
    """Position of a node; (0, 0) for nodes made by edits."""
    return lines.where(pos) if lines is not None else (0, 0)


class _Tokens:
    """The token stream of a text as parallel lists (faster than token objects)."""

    __slots__ = ("kinds", "lines", "source", "starts", "text", "texts")

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        texts: list[str] = _TOKEN_RE.findall(text)
        kinds: list[str | None] = list(map(_KIND.get, map(itemgetter(0), texts)))
        # A byte-order mark is whitespace to us: decode_text keeps it, so the
        # round trip of a BOM file is exact.
        if texts and texts[0] == "\ufeff":
            if len(texts) > 1 and kinds[1] == "w":
                texts[0:2] = [texts[0] + texts[1]]
                del kinds[1]
            kinds[0] = "w"
        starts = list(accumulate(map(len, texts), initial=0))
        # Sentinels: end-of-file tokens, so lookahead never runs off the end.
        texts += ["", "", ""]
        kinds += ["", "", ""]
        starts += [len(text), len(text)]
        self.kinds = kinds
        self.texts = texts
        self.starts = starts
        self.lines = _Lines(text, source)

    def fail(self, pos: int, message: str) -> NoReturn:
        line, column = self.lines.where(pos)
        raise PrototxtSyntaxError(self.source, line, column, message)

    def fail_at(self, i: int, message: str) -> NoReturn:
        """Fail at token ``i``, naming a lexical problem there first if it has one."""
        kind = self.kinds[i]
        text = self.texts[i]
        if kind is None or (kind == "n" and text == "."):
            self.fail(self.starts[i], f"unexpected character {text!r}")
        if kind == "s" and len(text) == 1:
            self.fail(self.starts[i], "unterminated string literal (strings cannot span lines)")
        self.fail(self.starts[i], message)

    def check_escapes(self, tok: str, start: int) -> None:
        for m in _ESCAPE_RE.finditer(tok, 1, len(tok) - 1):
            if m.group(6) is not None:
                self.fail(start + m.start(), f"invalid escape sequence {m.group()!r} in string")


def _unescape(body: str) -> bytes:
    """Bytes of a string literal's contents (without quotes), C++ escape rules."""
    if "\\" not in body:
        return body.encode("utf-8")
    out = bytearray()
    pos = 0
    pending_high: int | None = None
    for m in _ESCAPE_RE.finditer(body):
        out += body[pos : m.start()].encode("utf-8", "surrogatepass")
        pos = m.end()
        simple, octal, hexa, u4, u8, _bad = m.groups()
        if simple is not None:
            out += _SIMPLE_ESCAPES[simple]
        elif octal is not None:
            out.append(int(octal, 8) & 0xFF)
        elif hexa is not None:
            out.append(int(hexa, 16))
        else:
            code = int(u4 or u8 or "0", 16)
            # A \uD83D\uDE00 pair is one character, as in C++.
            if 0xD800 <= code < 0xDC00:
                pending_high = code
                continue
            if 0xDC00 <= code < 0xE000 and pending_high is not None:
                code = 0x10000 + ((pending_high - 0xD800) << 10) + (code - 0xDC00)
            pending_high = None
            out += chr(min(code, 0x10FFFF)).encode("utf-8", "surrogatepass")
    out += body[pos:].encode("utf-8", "surrogatepass")
    return bytes(out)


def decode_text(data: bytes, source: str = "<bytes>") -> str:
    """Decode prototxt bytes as UTF-8; a byte-order mark is kept as leading whitespace.

    Raises :class:`~bnfuse.errors.PrototxtSyntaxError` at the first invalid byte.

    Example:
        >>> decode_text(b'\\xef\\xbb\\xbfname: "x"\\n') == '\\ufeffname: "x"\\n'
        True
        >>> decode_text(b'name: "\\xff"', "a.prototxt")
        Traceback (most recent call last):
        ...
        bnfuse.errors.PrototxtSyntaxError: a.prototxt:1:8: invalid UTF-8 byte 0xff
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        column = len(data[line_start : exc.start].decode("utf-8", "replace")) + 1
        raise PrototxtSyntaxError(
            source, line, column, f"invalid UTF-8 byte 0x{data[exc.start]:02x}"
        ) from None


# --------------------------------------------------------------------------------------
# Value formatting


def quote_string(value: str | bytes, quote: str = '"') -> str:
    """A string literal for ``value`` that C++ TextFormat reads back exactly.

    Non-ASCII text stays readable UTF-8; quotes, backslashes and control
    characters are escaped.  ``bytes`` that are not printable ASCII become octal escapes.

    Example:
        >>> quote_string('conv1/bn "x"')
        '"conv1/bn \\\\"x\\\\""'
        >>> quote_string("it's", "'")
        "'it\\\\'s'"
    """
    if isinstance(value, bytes):
        parts = []
        for b in value:
            c = chr(b)
            if c in ("\\", quote):
                parts.append("\\" + c)
            elif 0x20 <= b < 0x7F:
                parts.append(c)
            else:
                parts.append(f"\\{b:03o}")
        return quote + "".join(parts) + quote
    out = []
    for c in value:
        if c in ("\\", quote):
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\{ord(c):03o}")
        else:
            out.append(c)
    return quote + "".join(out) + quote


def format_float(value: float, *, single: bool = False) -> str:
    """The shortest text that reads back as the same double (or, with ``single``, float32).

    Always shows it is a float (``1.0``, not ``1``); infinities and NaN are
    ``inf``, ``-inf`` and ``nan``, which C++ TextFormat accepts.

    Example:
        >>> format_float(1e-05), format_float(1.0), format_float(float("-inf"))
        ('1e-05', '1.0', '-inf')
        >>> format_float(0.10000000149011612, single=True)
        '0.1'
    """
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = repr(float(value))
    if single:
        target = struct.unpack("<f", struct.pack("<f", value))[0]
        for digits in range(1, 10):
            candidate = f"{value:.{digits}g}"
            if struct.unpack("<f", struct.pack("<f", float(candidate)))[0] == target:
                text = candidate
                break
    if not any(c in text for c in ".en"):
        text += ".0"
    return text


# --------------------------------------------------------------------------------------
# Nodes


class _Positioned:
    """Where a node was in the parsed text: ``line`` and ``column`` (0, 0 for new nodes)."""

    __slots__ = ("_lines", "_pos")

    def __init__(self, pos: int = -1, lines: _Lines | None = None) -> None:
        self._pos = pos
        self._lines = lines

    @property
    def line(self) -> int:
        """1-based line in the parsed text; 0 for a node made by an edit."""
        return _where(self._lines, self._pos)[0]

    @property
    def column(self) -> int:
        """1-based column (characters) in the parsed text; 0 for a node made by an edit."""
        return _where(self._lines, self._pos)[1]

    @property
    def source(self) -> str:
        """The name of the parsed text (``"<new>"`` for a node made by an edit)."""
        return self._lines.source if self._lines is not None else "<new>"


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
        self, raw: str, kind: ScalarKind, pos: int = -1, lines: _Lines | None = None
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
        tokens = _Tokens(raw, "<value>")
        kinds = tokens.kinds
        i = 1 if kinds[0] == "w" else 0
        if kinds[i] not in _VALUE_START:
            tokens.fail(tokens.starts[i], f"expected a value, found {_describe(kinds[i], '')}")
        value, j = _read_scalar(tokens, i, None)
        if kinds[j] == "w":
            j += 1
        if kinds[j] != "" or i != 0:
            tokens.fail(tokens.starts[j], "expected exactly one value")
        value._lines = None
        return value

    @classmethod
    def from_python(
        cls, value: str | int | float | bool | bytes | Identifier | ScalarValue
    ) -> ScalarValue:
        """The token for a Python value: ``str``/``bytes`` quoted, ``bool`` as ``true``/``false``,
        ``float`` in shortest round-trip form, :class:`Identifier` bare.

        Example:
            >>> [ScalarValue.from_python(v).raw for v in ("x", 3, 1e-05, True)]
            ['"x"', '3', '1e-05', 'true']
        """
        if isinstance(value, ScalarValue):
            return cls(value.raw, value.kind)
        if isinstance(value, Identifier):
            if not _IDENT_RE.match(value.name):
                raise PrototxtSchemaError(f"{value.name!r} is not a valid identifier")
            return cls(value.name, "identifier")
        if isinstance(value, bool):
            return cls("true" if value else "false", "identifier")
        if isinstance(value, int):
            return cls(str(value), "number")
        if isinstance(value, float):
            text = format_float(value)
            return cls(text, "identifier" if text in ("inf", "nan") else "number")
        if isinstance(value, (str, bytes)):
            return cls(quote_string(value), "string")
        raise PrototxtSchemaError(
            f"cannot write a {type(value).__name__} as a prototxt value: {value!r}"
        )

    # -- decoding ----------------------------------------------------------------------

    def _fail(self, message: str) -> NoReturn:
        raise PrototxtSchemaError.at(self.source, self.line, self.column, message)

    def _parts(self) -> list[str]:
        """The string literals of a (possibly concatenated) string value, quotes included."""
        return [t for t in _TOKEN_RE.findall(self.raw) if t[0] in "\"'"]

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
            self._fail(f"expected a string, found {self.raw!r}")
        if len(self.raw) >= 2 and "\\" not in self.raw and self.raw[-1] == self.raw[0]:
            body = self.raw[1:-1]
            if self.raw[0] not in body:
                return body.encode("utf-8")
        return b"".join(_unescape(p[1:-1]) for p in self._parts())

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
                self._fail(f"string {self.raw!r} is not valid UTF-8")
        if self.kind == "number" and self.raw.startswith("-"):
            return "-" + str(_TOKEN_RE.findall(self.raw)[-1])
        return self.raw

    def _sign_and_body(self) -> tuple[bool, str]:
        if self.raw.startswith("-"):
            return True, _TOKEN_RE.findall(self.raw)[-1]
        return False, self.raw

    def int_or_none(self) -> int | None:
        """The integer this value spells (decimal, ``0x`` hex, leading-zero octal), else None.

        Example:
            >>> [ScalarValue.from_token(t).int_or_none() for t in ("010", "0x1F", "1.5")]
            [8, 31, None]
        """
        if self.kind != "number":
            return None
        negative, body = self._sign_and_body()
        if body[:2] in ("0x", "0X"):
            value = int(body[2:], 16)
        elif not body.isdigit():
            return None
        elif len(body) > 1 and body[0] == "0":
            value = int(body, 8)
        else:
            value = int(body)
        return -value if negative else value

    def float_or_none(self) -> float | None:
        """The float this value spells as C++ reads a float field, else None.

        Decimal integers, floats with an optional ``f`` suffix, and
        ``inf``/``infinity``/``nan`` in any case are floats; hex and octal are not.

        Example:
            >>> [ScalarValue.from_token(t).float_or_none() for t in ("-INF", "5", "1.5f", "0x1")]
            [-inf, 5.0, 1.5, None]
        """
        if self.kind == "string":
            return None
        negative, body = self._sign_and_body()
        if self.kind == "identifier" or body.lower() in _INF_NAN:
            low = body.lower()
            if low not in _INF_NAN:
                return None
            value = math.nan if low == "nan" else math.inf
        elif body[:2] in ("0x", "0X") or (len(body) > 1 and body[0] == "0" and body.isdigit()):
            return None
        else:
            value = float(body.rstrip("fF"))
        return -value if negative else value

    def as_int(self) -> int:
        """The integer value; raises :class:`~bnfuse.errors.PrototxtSchemaError` otherwise.

        Example:
            >>> ScalarValue.from_token("-7").as_int()
            -7
        """
        value = self.int_or_none()
        if value is None:
            self._fail(f"expected an integer, found {self.raw!r}")
        return value

    def as_float(self) -> float:
        """The float value; raises :class:`~bnfuse.errors.PrototxtSchemaError` otherwise.

        Example:
            >>> ScalarValue.from_token("2").as_float()
            2.0
        """
        value = self.float_or_none()
        if value is None:
            self._fail(f"expected a number, found {self.raw!r}")
        return value

    def as_bool(self) -> bool:
        """``true``/``True``/``t``/``1`` or ``false``/``False``/``f``/``0``, as C++ accepts.

        Example:
            >>> ScalarValue.from_token("True").as_bool(), ScalarValue.from_token("0").as_bool()
            (True, False)
        """
        if self.kind == "identifier" and self.raw in _TRUE:
            return True
        if self.kind == "identifier" and self.raw in _FALSE:
            return False
        number = self.int_or_none()
        if number in (0, 1):
            return bool(number)
        self._fail(f"expected true or false, found {self.raw!r}")


class ListValue(_Positioned):
    """List syntax: ``dim: [1, 3, 224, 224]`` or ``param [{ lr_mult: 1 }, { lr_mult: 2 }]``.

    ``items`` holds the elements and, as ``str``, the text between them
    (commas included); the brackets are implied.

    Example:
        >>> f = Document.parse("dim: [1, 3]").root.first("dim")
        >>> [v.as_int() for v in f.values], f.value.items
        ([1, 3], [ScalarValue('1', 'number'), ', ', ScalarValue('3', 'number')])
    """

    __slots__ = ("items", "parent")

    def __init__(self, pos: int = -1, lines: _Lines | None = None) -> None:
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
        >>> f = Document.parse("num_output: 64").root.first("num_output")
        >>> f.name, f.mid, f.value.as_int(), (f.line, f.column), f.is_message
        ('num_output', ': ', 64, (1, 1), False)
    """

    __slots__ = ("mid", "name", "parent", "value")

    def __init__(
        self,
        name: str,
        mid: str,
        value: ScalarValue | MessageNode | ListValue,
        pos: int = -1,
        lines: _Lines | None = None,
    ) -> None:
        self.name = name
        self.mid = mid
        self.value = value
        self._pos = pos
        self._lines = lines
        value.parent = self
        #: The message this field belongs to; None once removed.
        self.parent: MessageNode | None = None

    def __repr__(self) -> str:
        return f"FieldNode({self.name!r} at {self.line}:{self.column})"

    @property
    def is_message(self) -> bool:
        """True for a message value, or a list of messages."""
        value = self.value
        if isinstance(value, ListValue):
            return any(isinstance(v, MessageNode) for v in value.items)
        return isinstance(value, MessageNode)

    @property
    def is_list(self) -> bool:
        """True when written with list syntax ``[...]``."""
        return isinstance(self.value, ListValue)

    @property
    def values(self) -> list[ScalarValue | MessageNode]:
        """The value as a list: one element, or every element of list syntax."""
        value = self.value
        return value.values if isinstance(value, ListValue) else [value]

    def render(self) -> str:
        """The exact text of this field, from its name to the end of its value.

        Example:
            >>> Document.parse("p <a:1>").root.first("p").render()
            'p <a:1>'
        """
        out: list[str] = []
        _render_field(self, out)
        return "".join(out)

    def set_value(self, value: str | int | float | bool | bytes | Identifier | ScalarValue) -> None:
        """Replace this field's single value, keeping the quote style of a string.

        A ``str`` becomes a bare identifier when the current value is an
        identifier (an enum such as ``pool: MAX``), and is quoted otherwise.

        Example:
            >>> doc = Document.parse("top: 'a'  # out\\npool: MAX\\n")
            >>> doc.root.first("top").set_value("a_fused")
            >>> doc.root.first("pool").set_value("AVE")
            >>> doc.render()
            "top: 'a_fused'  # out\\npool: AVE\\n"
        """
        old = self.value
        if not isinstance(old, ScalarValue):
            what = "a list" if isinstance(old, ListValue) else "a message"
            raise PrototxtSchemaError(
                f"field '{self.name}' at {self.line}:{self.column} holds {what}, not one value"
            )
        new = _scalar_like(value, old)
        new.parent = self
        self.value = new


class MessageNode(_Positioned):
    """A message: its fields in order, with the text between them kept in ``items``.

    Reading: :meth:`all`, :meth:`first`, :meth:`scalar`, :meth:`scalars`,
    :meth:`message`, :meth:`messages`.  Editing: :meth:`set`, :meth:`add`,
    :meth:`remove`, :meth:`rename` and :meth:`FieldNode.set_value`.

    Example:
        >>> m = Document.parse("a: 1 b { c: 'x' } a: 2").root
        >>> [f.name for f in m.fields], [v.as_int() for v in m.scalars("a")]
        (['a', 'b', 'a'], [1, 2])
        >>> m.message("b").scalar("c").text()
        'x'
    """

    __slots__ = ("_style", "close", "items", "open", "parent")

    def __init__(
        self, open: str = "", close: str = "", pos: int = -1, lines: _Lines | None = None
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
        return [f for f in self.items if not isinstance(f, str)]

    def all(self, name: str) -> list[FieldNode]:
        """Every field called ``name``, in order.

        Example:
            >>> [f.value.text() for f in Document.parse("top: 'a' top: 'b'").root.all("top")]
            ['a', 'b']
        """
        return [f for f in self.items if not isinstance(f, str) and f.name == name]

    def first(self, name: str) -> FieldNode | None:
        """The first field called ``name``, or None.

        Example:
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
            >>> [v.as_int() for v in Document.parse("dim: 1 dim: [2, 3]").root.scalars("dim")]
            [1, 2, 3]
        """
        out: list[ScalarValue] = []
        for f in self.all(name):
            for v in f.values:
                if isinstance(v, MessageNode):
                    _not_a(f, "a value", "a message")
                out.append(v)
        return out

    def scalar(self, name: str) -> ScalarValue | None:
        """The first value of field ``name``, or None when absent.

        Raises :class:`~bnfuse.errors.PrototxtSchemaError` when the field is a message.

        Example:
            >>> Document.parse("eps: 1e-5").root.scalar("eps").as_float()
            1e-05
        """
        f = self.first(name)
        if f is None:
            return None
        v = f.values[0] if f.values else None
        if isinstance(v, MessageNode):
            _not_a(f, "a value", "a message")
        return v

    def messages(self, name: str) -> list[MessageNode]:
        """Every message value of the fields called ``name``, list syntax flattened.

        Example:
            >>> len(Document.parse("layer {} layer {}").root.messages("layer"))
            2
        """
        out: list[MessageNode] = []
        for f in self.all(name):
            for v in f.values:
                if isinstance(v, ScalarValue):
                    _not_a(f, "a message", "a value")
                out.append(v)
        return out

    def message(self, name: str) -> MessageNode | None:
        """The first message value of field ``name``, or None when absent.

        Example:
            >>> Document.parse("p { a: 1 }").root.message("p").scalar("a").raw
            '1'
        """
        f = self.first(name)
        if f is None:
            return None
        v = f.values[0] if f.values else None
        if isinstance(v, ScalarValue):
            _not_a(f, "a message", "a value")
        return v

    def render(self) -> str:
        """The exact text of this message, brackets included.

        Example:
            >>> Document.parse("p { a: 1 }").root.message("p").render()
            '{ a: 1 }'
        """
        out: list[str] = []
        _render_message(self, out)
        return "".join(out)

    # -- editing -----------------------------------------------------------------------

    def set(
        self, name: str, value: str | int | float | bool | bytes | Identifier | ScalarValue
    ) -> FieldNode:
        """Set field ``name`` to ``value``: replace the value token if the field exists,
        else append ``name: value`` in the style of the siblings.

        Example:
            >>> doc = Document.parse("layer {\\n  name: 'bn'\\n}\\n")
            >>> layer = doc.root.message("layer")
            >>> _ = layer.set("name", "bn2"); _ = layer.set("eps", 1e-05)
            >>> print(doc.render(), end="")
            layer {
              name: 'bn2'
              eps: 1e-05
            }
        """
        found = self.all(name)
        if len(found) > 1:
            raise PrototxtSchemaError(
                f"field '{name}' occurs {len(found)} times in the message at "
                f"{self.line}:{self.column}; set one occurrence with FieldNode.set_value()"
            )
        if found:
            found[0].set_value(value)
            return found[0]
        return self.add(name, value)

    def rename(self, name: str, old: str, new: str) -> int:
        """Change every string value ``old`` of fields ``name`` to ``new``; return how many.

        Example:
            >>> doc = Document.parse('top: "conv1" bottom: "conv1"')
            >>> doc.root.rename("top", "conv1", "conv1_bn"), doc.render()
            (1, 'top: "conv1_bn" bottom: "conv1"')
        """
        count = 0
        for f in self.all(name):
            container = f.value
            for v in f.values:
                if isinstance(v, ScalarValue) and v.kind == "string" and v.text() == old:
                    replacement = _scalar_like(new, v)
                    if isinstance(container, ListValue):
                        container.items[_index(container.items, v)] = replacement
                        replacement.parent = container
                    else:
                        f.value = replacement
                        replacement.parent = f
                    count += 1
        return count

    def remove(self, field: FieldNode) -> None:
        """Remove ``field`` (a value or a whole message block) from this message.

        A field alone on its lines takes those lines with it (no blank line
        is left); otherwise it takes its own separator and adjacent spaces.
        Comments on other lines are kept.

        Example:
            >>> doc = Document.parse("a: 1\\n# keep\\nb {\\n  c: 2\\n}\\nd: 3\\n")
            >>> doc.root.remove(doc.root.first("b"))
            >>> doc.render()
            'a: 1\\n# keep\\nd: 3\\n'
        """
        items = self.items
        idx = _index(items, field)
        prev = items[idx - 1] if idx > 0 and isinstance(items[idx - 1], str) else None
        nxt = items[idx + 1] if idx + 1 < len(items) and isinstance(items[idx + 1], str) else None
        assert prev is None or isinstance(prev, str)
        assert nxt is None or isinstance(nxt, str)
        is_root = self.parent is None and self.open == ""
        first_item = idx == 0 or (idx == 1 and prev is not None)
        last_item = idx == len(items) - 1 or (idx == len(items) - 2 and nxt is not None)

        # Does the field start its line, and end it (up to an optional separator)?
        tail = ""
        if prev is None:
            starts_line = idx == 0 and is_root
        else:
            cut = prev.rfind("\n") + 1
            tail = prev[cut:]
            starts_line = (cut > 0 or (first_item and is_root)) and not tail.strip(_HSPACE)
        after = _LINE_END_RE.match(nxt or "")
        assert after is not None
        at_eof = last_item and is_root
        ends_line = bool(after.group(1)) or (at_eof and after.end() == len(nxt or ""))

        new_prev, new_nxt = prev, nxt
        if starts_line and ends_line:
            new_prev = prev[: len(prev) - len(tail)] if prev is not None else None
            if after.group(1):
                new_nxt = (nxt or "")[after.end() :]
            else:
                # The last line of a file without a final newline: drop the line
                # break before it instead, keeping "no final newline".
                new_nxt = ""
                if new_prev is not None:
                    new_prev = re.sub(r"\r?\n\Z", "", new_prev)
        else:
            # Take the field's own separator; else the one before it (so the
            # last field of "{ a: 1, b: 2 }" leaves no dangling comma); else spaces.
            own = _OWN_SEP_RE.match(nxt or "")
            assert own is not None
            prev_sep = _PREV_SEP_RE.search(prev) if prev is not None else None
            if "," in own.group() or ";" in own.group():
                new_nxt = (nxt or "")[own.end() :]
            elif prev is not None and prev_sep is not None and prev_sep.group(1):
                new_prev = prev[: prev_sep.start()]
            elif own.end() > 0:
                new_nxt = (nxt or "")[own.end() :]
            elif prev is not None and prev_sep is not None:
                new_prev = prev[: prev_sep.start()]
        lo = idx - 1 if prev is not None else idx
        hi = idx + 2 if nxt is not None else idx + 1
        replacement = [s for s in (new_prev, new_nxt) if s]
        items[lo:hi] = replacement
        # Items are kept normalized, so only the edited window (and its two
        # neighbours) can need merging; normalizing the whole list on every
        # removal made removing n layers from an n-layer net O(n^2).
        window_lo, window_hi = max(lo - 1, 0), lo + len(replacement) + 1
        window = items[window_lo:window_hi]
        _normalize(window)
        items[window_lo:window_hi] = window
        field.parent = None

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
        if after is not None and before is not None:
            raise PrototxtSchemaError("give either after= or before=, not both")
        anchor = after if after is not None else before
        if anchor is not None and anchor.parent is not self:
            raise PrototxtSchemaError(
                f"field '{anchor.name}' at {anchor.line}:{anchor.column} is not in this message"
            )
        siblings = self.fields
        newline, unit = _document_style(self)
        multiline = self._is_multiline()
        is_message = not isinstance(value, (str, bytes, int, float, Identifier, ScalarValue))

        # The new message's own layout copies a sibling message's.
        inner_multiline = multiline
        if is_message and multiline:
            model = _model_message(siblings, anchor, name)
            if model is not None:
                inner_multiline = model._is_multiline()
        scalar_mid = _model_mid(siblings)
        indent = self._child_indent(anchor, unit) if multiline else ""
        text = _format_field(name, value, indent, unit, newline, inner_multiline, scalar_mid)
        node = _parse_fragment(text)
        node.parent = self

        items = self.items
        if after is None and before is None and siblings:
            after = siblings[-1]
        if multiline:
            self._insert_multiline(node, indent, newline, after, before)
        else:
            gap = _one_line_gap(items)
            if after is not None:
                idx = _index(items, after)
                items[idx + 1 : idx + 1] = [gap, node]
            elif before is not None:
                idx = _index(items, before)
                items[idx:idx] = [node, gap]
            else:
                items[:] = [" ", node, " "] if self.open else [node]
        _normalize(items)
        return node

    # -- layout helpers ----------------------------------------------------------------

    def _is_multiline(self) -> bool:
        if self.parent is None and self.open == "":
            return True
        return any(isinstance(s, str) and "\n" in s for s in self.items)

    def _child_indent(self, anchor: FieldNode | None, unit: str) -> str:
        for f in ([anchor] if anchor is not None else []) + self.fields[::-1]:
            indent = _indent_of(f)
            if indent is not None:
                return indent
        if self.parent is None and self.open == "":
            return ""
        # An empty multi-line message: one unit deeper than its closing bracket.
        last = self.items[-1] if self.items and isinstance(self.items[-1], str) else ""
        closing = last[last.rfind("\n") + 1 :]
        return (closing if not closing.strip(_HSPACE) else "") + unit

    def _insert_multiline(
        self,
        node: FieldNode,
        indent: str,
        newline: str,
        after: FieldNode | None,
        before: FieldNode | None,
    ) -> None:
        items = self.items
        if after is not None:
            idx = _index(items, after)
            trail = items[idx + 1] if idx + 1 < len(items) else None
            if isinstance(trail, str) and "\n" in trail:
                # After the end of the sibling's line, so a trailing comment stays with it.
                cut = trail.index("\n") + 1
                items[idx + 1 : idx + 2] = [trail[:cut] + indent, node, newline + trail[cut:]]
            else:
                items[idx + 1 : idx + 1] = [newline + indent, node]
            return
        if before is not None:
            idx = _index(items, before)
            lead = items[idx - 1] if idx > 0 else None
            if isinstance(lead, str) and _indent_of(before) is not None:
                cut = lead.rfind("\n") + 1
                items[idx - 1 : idx] = [lead[:cut] + indent, node, newline + lead[cut:]]
            elif idx == 0:
                items[0:0] = [node, newline]
            else:
                items[idx:idx] = [node, newline + indent]
            return
        # No fields yet: only text (whitespace, comments) inside.
        text = "".join(s for s in items if isinstance(s, str))
        if "\n" in text:
            cut = text.rfind("\n") + 1
            items[:] = [text[:cut] + indent, node, newline + text[cut:]]
        elif self.open:
            items[:] = [newline + indent, node, newline]
        else:
            items[:] = [text + newline if text else "", node, newline]


_LINE_END_RE = re.compile(r"[ \t]*(?:[,;][ \t]*)?(\r?\n)?")
_OWN_SEP_RE = re.compile(r"[ \t]*[,;][ \t]*|[ \t]*")
_PREV_SEP_RE = re.compile(r"([ \t]*[,;])?[ \t]*\Z")


def _not_a(field: FieldNode, wanted: str, found: str) -> NoReturn:
    raise PrototxtSchemaError(
        f"field '{field.name}' at {field.line}:{field.column} is {found}, expected {wanted}"
    )


def _index(items: Sequence[object], node: object) -> int:
    """Position of ``node`` in ``items`` by identity (nodes never compare equal)."""
    # list.index checks identity first and runs in C: nodes define no __eq__, so it
    # finds exactly the same position as a Python identity loop, ~30x faster.
    try:
        return items.index(node)
    except ValueError:
        raise PrototxtSchemaError(f"{node!r} is not in this message") from None


def _normalize(items: list[str | FieldNode]) -> None:
    """Merge adjacent text items and drop empty ones, which edits may leave behind."""
    out: list[str | FieldNode] = []
    for item in items:
        if isinstance(item, str):
            if not item:
                continue
            if out and isinstance(out[-1], str):
                out[-1] = out[-1] + item
                continue
        out.append(item)
    items[:] = out


def _indent_of(field: FieldNode) -> str | None:
    """The indentation before ``field`` if it starts its line, else None."""
    parent = field.parent
    if parent is None:
        return None
    items = parent.items
    idx = _index(items, field)
    if idx == 0:
        return "" if parent.parent is None and parent.open == "" else None
    prev = items[idx - 1]
    if not isinstance(prev, str):
        return None
    cut = prev.rfind("\n") + 1
    tail = prev[cut:]
    if tail.strip(_HSPACE):
        return None
    if cut == 0 and not (idx == 1 and parent.parent is None and parent.open == ""):
        return None
    return tail


def _root_of(message: MessageNode) -> MessageNode:
    node: MessageNode = message
    while node.parent is not None:
        owner = node.parent
        field = owner.parent if isinstance(owner, ListValue) else owner
        if field is None or field.parent is None:
            break
        node = field.parent
    return node


def _document_style(message: MessageNode) -> tuple[str, str]:
    """The line ending and indent unit of the document ``message`` belongs to."""
    root = _root_of(message)
    if root._style is None:
        text = root.render()
        newline = "\r\n" if "\r\n" in text else "\n"
        root._style = (newline, _detect_unit(root))
    return root._style


def _detect_unit(root: MessageNode) -> str:
    """The indent step of the first nested field that starts a line ("  " if none)."""
    stack = [(root, "")]
    while stack:
        message, indent = stack.pop()
        for f in message.fields:
            value = f.value
            if isinstance(value, MessageNode):
                own = _indent_of(f)
                for child in value.fields:
                    inner = _indent_of(child)
                    if (
                        own is not None
                        and inner is not None
                        and len(inner) > len(own)
                        and inner.startswith(own)
                    ):
                        return inner[len(own) :]
                    break
                stack.append((value, indent))
    return "  "


def _model_message(
    siblings: list[FieldNode], anchor: FieldNode | None, name: str
) -> MessageNode | None:
    """A sibling message whose layout a new message should copy."""
    candidates = [anchor] if anchor is not None else []
    candidates += [f for f in reversed(siblings) if f.name == name]
    candidates += list(reversed(siblings))
    for f in candidates:
        if f is not None and isinstance(f.value, MessageNode):
            return f.value
    return None


def _model_mid(siblings: list[FieldNode]) -> str:
    """The ``: `` of the siblings' scalar fields, when they agree on a plain one."""
    for f in siblings:
        if isinstance(f.value, ScalarValue) and re.fullmatch(r"[ \t]*:[ \t]*", f.mid):
            return f.mid
    return ": "


def _one_line_gap(items: list[str | FieldNode]) -> str:
    """The text written between two fields of a one-line message (" " or ", ")."""
    for i in range(1, len(items) - 1):
        item = items[i]
        if (
            isinstance(item, str)
            and not isinstance(items[i - 1], str)
            and not isinstance(items[i + 1], str)
            and "#" not in item
        ):
            return item
    return " "


def _scalar_like(
    value: str | int | float | bool | bytes | Identifier | ScalarValue, like: ScalarValue
) -> ScalarValue:
    """A token for ``value`` that replaces ``like``, in ``like``'s style."""
    if isinstance(value, str) and not isinstance(value, Identifier):
        if like.kind == "identifier" and _IDENT_RE.match(value) and like.raw not in _TRUE | _FALSE:
            return ScalarValue(value, "identifier")
        if like.kind == "string":
            return ScalarValue(quote_string(value, like.quote_char()), "string")
    return ScalarValue.from_python(value)


def _format_field(  # noqa: PLR0917 - private helper, called in two places
    name: str,
    value: NewValue,
    indent: str,
    unit: str,
    newline: str,
    multiline: bool,
    mid: str,
) -> str:
    """Text of a new field starting at its name; later lines carry their full indent."""
    if not _IDENT_RE.match(name):
        raise PrototxtSchemaError(f"{name!r} is not a valid field name")
    if isinstance(value, (str, bytes, int, float, Identifier, ScalarValue)):
        return name + mid + ScalarValue.from_python(value).raw
    parts: list[str] = []
    inner = indent + unit
    for entry in value:
        if not (isinstance(entry, tuple) and len(entry) == 2):
            raise PrototxtSchemaError(
                f"items of message '{name}' must be (name, value) pairs, got {entry!r}"
            )
        child_name, child_value = entry
        parts.append(_format_field(child_name, child_value, inner, unit, newline, multiline, mid))
    if not parts:
        return name + " {" + (newline + indent if multiline else " ") + "}"
    if multiline:
        body = "".join(newline + inner + p for p in parts)
        return name + " {" + body + newline + indent + "}"
    return name + " { " + " ".join(parts) + " }"


# --------------------------------------------------------------------------------------
# Rendering


def _render_field(field: FieldNode, out: list[str]) -> None:
    out.append(field.name)
    out.append(field.mid)
    value = field.value
    if isinstance(value, ScalarValue):
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


# --------------------------------------------------------------------------------------
# Parsing


def _read_scalar(tokens: _Tokens, i: int, lines: _Lines | None) -> tuple[ScalarValue, int]:
    """Read the value starting at token ``i``; return it and the index after it."""
    kinds = tokens.kinds
    texts = tokens.texts
    starts = tokens.starts
    kind = kinds[i]
    start = starts[i]
    if kind == "s":
        j = i
        # Adjacent literals are one value; the text between them belongs to it.
        while True:
            tok = texts[j]
            if len(tok) == 1:
                tokens.fail_at(j, "")
            if "\\" in tok:
                tokens.check_escapes(tok, starts[j])
            if kinds[j + 1] == "s":
                j += 1
            elif kinds[j + 1] == "w" and kinds[j + 2] == "s":
                j += 2
            else:
                break
        end = starts[j + 1]
        return ScalarValue(tokens.text[start:end], "string", start, lines), j + 1
    if kind == "i":
        return ScalarValue(texts[i], "identifier", start, lines), i + 1
    j = i
    if kind == "-":
        # A sign, then a number or inf/nan (C++ allows space between).
        j = i + 1
        if kinds[j] == "w":
            j += 1
        if kinds[j] == "i" and texts[j].lower() in _INF_NAN:
            return ScalarValue(tokens.text[start : starts[j + 1]], "number", start, lines), j + 1
        if kinds[j] != "n":
            tokens.fail_at(j, f"expected a number after '-', found {_describe(kinds[j], texts[j])}")
    tok = texts[j]
    if tok == ".":
        tokens.fail_at(j, "")
    if kinds[j + 1] in ("i", "n"):
        # "1.5.2", "3x": C++ wants a space between a number and what follows.
        tokens.fail(starts[j], f"invalid number {tok + texts[j + 1]!r}")
    if (
        len(tok) > 1
        and tok[0] == "0"
        and tok[1].isdigit()
        and not all(c in "01234567" for c in tok)
    ):
        tokens.fail(starts[j], f"numbers with a leading zero must be octal integers: {tok!r}")
    return ScalarValue(tokens.text[start : starts[j + 1]], "number", start, lines), j + 1


def _parse_tokens(tokens: _Tokens, keep_positions: bool = True) -> MessageNode:
    """The iterative parser (no recursion, so nesting depth costs no stack)."""
    kinds = tokens.kinds
    texts = tokens.texts
    starts = tokens.starts
    lines = tokens.lines if keep_positions else None
    fail = tokens.fail
    fail_at = tokens.fail_at
    value_start = _VALUE_START
    root = MessageNode("", "", 0, lines)

    # The open message or list; saved on `stack` while a nested one is parsed.
    node: MessageNode | ListValue = root
    items: list[Any] = root.items
    is_list = False
    close = ""  # the bracket that closes `node`
    owner = ""  # the field name `node` belongs to, for messages
    owner_pos = 0
    messages_only = False  # a list written without ':' holds messages only
    # Messages: 1 when a separator may come.  Lists: 0 = first element or "]",
    # 1 = "," or "]", 2 = an element (after a comma).
    expect = 0
    stack: list[tuple[Any, ...]] = []

    def opened() -> str:
        line, column = tokens.lines.where(owner_pos)
        return f"{line}:{column}"

    i = 0
    while True:
        kind = kinds[i]
        if kind == "w":
            if items and items[-1].__class__ is str:
                items[-1] += texts[i]
            else:
                items.append(texts[i])
            i += 1
            kind = kinds[i]

        if not is_list:
            if kind == "i":
                name = texts[i]
                name_pos = starts[i]
                i += 1
                mid_start = i
                if kinds[i] == "w":
                    i += 1
                colon = kinds[i] == ":"
                if colon:
                    i += 1
                    if kinds[i] == "w":
                        i += 1
                mid = texts[mid_start] if i == mid_start + 1 else "".join(texts[mid_start:i])
                kind = kinds[i]
                if colon and kind in value_start:
                    if kind == "i":
                        scalar = ScalarValue(texts[i], "identifier", starts[i], lines)
                        i += 1
                    else:
                        scalar, i = _read_scalar(tokens, i, lines)
                    field = FieldNode(name, mid, scalar, name_pos, lines)
                    field.parent = node  # type: ignore[assignment]
                    items.append(field)
                    expect = 1
                    continue
                if kind == "{" or kind == "<" or kind == "[":  # noqa: PLR1714 - faster
                    if len(stack) >= MAX_DEPTH:
                        fail(starts[i], f"nesting deeper than {MAX_DEPTH} levels")
                    value: MessageNode | ListValue
                    if kind == "[":
                        value = ListValue(starts[i], lines)
                    else:
                        value = MessageNode(kind, "", starts[i], lines)
                    field = FieldNode(name, mid, value, name_pos, lines)
                    field.parent = node  # type: ignore[assignment]
                    items.append(field)
                    stack.append((node, items, is_list, close, owner, owner_pos, messages_only, 1))
                    node = value
                    items = value.items
                    is_list = kind == "["
                    close = "]" if is_list else _OPEN_TO_CLOSE[kind]
                    owner = name
                    owner_pos = name_pos
                    messages_only = is_list and not colon
                    expect = 0
                    i += 1
                    continue
                if colon and kind == "":
                    fail(starts[i], "unexpected end of file: expected a value after ':'")
                if colon:
                    fail_at(i, f"expected a value after ':', found {_describe(kind, texts[i])}")
                fail_at(
                    i,
                    f"expected ':' or '{{' after field name {name!r}, "
                    f"found {_describe(kind, texts[i])}",
                )
            if (kind == "," or kind == ";") and expect == 1:  # noqa: PLR1714 - faster
                if items and items[-1].__class__ is str:
                    items[-1] += texts[i]
                else:
                    items.append(texts[i])
                expect = 0
                i += 1
                continue
            if kind == close and kind:
                node.close = kind  # type: ignore[union-attr]
                node, items, is_list, close, owner, owner_pos, messages_only, expect = stack.pop()
                i += 1
                continue
            if kind == "":
                if stack:
                    fail(
                        starts[i],
                        f"unexpected end of file: expected {close!r} to close "
                        f"{owner!r} opened at {opened()}",
                    )
                return root
            if kind == "}" or kind == ">":  # noqa: PLR1714 - faster
                if not stack:
                    fail(starts[i], f"unexpected {kind!r} with no open message")
                fail(
                    starts[i],
                    f"expected {close!r} to close {owner!r} opened at {opened()}, found {kind!r}",
                )
            hint = " (extension fields are not supported)" if kind == "[" else ""
            fail_at(i, f"expected a field name, found {_describe(kind, texts[i])}{hint}")

        # Inside a list.
        if kind == "]" and expect != 2:
            node, items, is_list, close, owner, owner_pos, messages_only, expect = stack.pop()
            i += 1
            continue
        if expect == 1:
            if kind == ",":
                if items and items[-1].__class__ is str:
                    items[-1] += ","
                else:
                    items.append(",")
                expect = 2
                i += 1
                continue
            if kind == "":
                fail(
                    starts[i],
                    f"unexpected end of file: expected ']' to close the list of "
                    f"{owner!r} opened at {opened()}",
                )
            fail_at(
                i,
                f"expected ',' or ']' in the list of {owner!r}, found {_describe(kind, texts[i])}",
            )
        first = next((v for v in items if v.__class__ is not str), None)
        want_messages = messages_only or isinstance(first, MessageNode)
        if (kind == "{" or kind == "<") and not isinstance(first, ScalarValue):  # noqa: PLR1714
            if len(stack) >= MAX_DEPTH:
                fail(starts[i], f"nesting deeper than {MAX_DEPTH} levels")
            element = MessageNode(kind, "", starts[i], lines)
            element.parent = node  # type: ignore[assignment]
            items.append(element)
            stack.append((node, items, is_list, close, owner, owner_pos, messages_only, 1))
            node = element
            items = element.items
            is_list = False
            close = _OPEN_TO_CLOSE[kind]
            owner_pos = starts[i]
            expect = 0
            i += 1
            continue
        if kind in value_start and not want_messages:
            scalar, i = _read_scalar(tokens, i, lines)
            scalar.parent = node  # type: ignore[assignment]
            items.append(scalar)
            expect = 1
            continue
        if kind == "":
            fail(
                starts[i],
                f"unexpected end of file: expected ']' to close the list of "
                f"{owner!r} opened at {opened()}",
            )
        wanted = "'{'" if want_messages else "a value"
        why = " (a list without ':' holds messages)" if messages_only else ""
        fail_at(
            i,
            f"expected {wanted} in the list of {owner!r}{why}, found {_describe(kind, texts[i])}",
        )


def _parse_fragment(text: str) -> FieldNode:
    """Parse the text of one new field; it has no position (not from the source)."""
    root = _parse_tokens(_Tokens(text, "<new>"), keep_positions=False)
    (field,) = root.fields
    field.parent = None
    return field


class Document:
    """A parsed prototxt: the root message plus what is needed to write it back.

    Example:
        >>> text = "# net\\r\\nname: 'n'  # the name\\r\\nlayer <name: \\"a\\", type: 'B';>\\r\\n"
        >>> Document.parse(text).render() == text
        True
    """

    __slots__ = ("root", "source")

    def __init__(self, root: MessageNode, source: str = "<string>") -> None:
        self.root = root
        #: The name used in error messages (usually the file path).
        self.source = source

    def __repr__(self) -> str:
        return f"Document({self.source!r}, {len(self.root.fields)} top-level fields)"

    @classmethod
    def parse(cls, text: str, source: str = "<string>") -> Document:
        """Parse prototxt text; raises :class:`~bnfuse.errors.PrototxtSyntaxError`.

        Example:
            >>> Document.parse("layer {", source="net.prototxt")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            bnfuse.errors.PrototxtSyntaxError: net.prototxt:1:8: unexpected end of file: ...
        """
        return cls(_parse_tokens(_Tokens(text, source)), source)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> Document:
        """Decode UTF-8 bytes (see :func:`decode_text`) and parse them.

        Example:
            >>> Document.from_bytes(b"a: 1\\n").render()
            'a: 1\\n'
        """
        return cls.parse(decode_text(data, source), source)

    def render(self) -> str:
        """The text of the document, identical to the input where nothing was edited.

        Example:
            >>> Document.parse("a:1;b:[2 ,3]").render()
            'a:1;b:[2 ,3]'
        """
        return self.root.render()

    def to_bytes(self) -> bytes:
        """:meth:`render` encoded as UTF-8 (a byte-order mark read in is written back).

        Example:
            >>> Document.parse("a: 'é'").to_bytes()
            b"a: '\\xc3\\xa9'"
        """
        return self.render().encode("utf-8")
