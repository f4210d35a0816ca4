"""Prototxt text -> tokens, and the syntax of literals both ways.

What protobuf's C++ ``Tokenizer`` accepts: identifiers, numbers, string
literals with C escapes, punctuation, whitespace and ``#`` comments.  This
module splits a text into tokens, checks one value's tokens (:func:`scan_value`),
reads literals (:func:`literal_int`, :func:`literal_float`, :func:`unescape`)
and writes them (:func:`quote_string`, :func:`format_float`).

Every step is linear in the length of the text: a string literal that never
closes is one token up to the end of its line (not a restart at each quote),
and a number literal longer than :data:`MAX_LITERAL_CHARS` is refused before
anything converts it.

Example:
    >>> tokens = Tokens('a: "x" # c\\n', "t.prototxt")
    >>> [(k, t) for k, t in zip(tokens.kinds, tokens.texts) if k != EOF]
    [('i', 'a'), (':', ':'), ('w', ' '), ('s', '"x"'), ('w', ' # c\\n')]
"""

from __future__ import annotations

import math
import re
import struct
from bisect import bisect_right
from itertools import accumulate
from operator import itemgetter
from typing import Literal, NoReturn, TypeAlias

from bnfuse.errors import PrototxtSyntaxError, excerpt

#: Longest number literal accepted, in characters.  A double printed with every
#: digit of its exact binary value needs fewer than 800; an integer field holds
#: at most 20 digits.  Longer literals are refused with a syntax error (Python's
#: own ``int()`` stops at 4300 digits with a ``ValueError`` otherwise).
MAX_LITERAL_CHARS = 1000

ScalarKind: TypeAlias = Literal["string", "identifier", "number"]

# Every character belongs to exactly one token, so token starts are the running
# sum of token lengths and ``findall`` (all in C) does the whole split.  The kind
# of a token follows from its first character (see _KINDS); whitespace and
# comments are one "trivia" token because nothing ever needs them apart.  A
# string literal without its closing quote runs to the end of its line (the
# quote is optional): matching it as one token keeps the split linear, where
# retrying at each of its quotes would be quadratic.
TOKEN_RE = re.compile(
    r"(?:[ \t\r\n\v\f]+|#[^\n]*)+"
    r"|[A-Za-z_][A-Za-z0-9_]*"
    r"|[{}<>:\[\],;-]"
    r"|\"[^\"\\\n]*(?:\\[^\n][^\"\\\n]*)*\"?"
    r"|'[^'\\\n]*(?:\\[^\n][^'\\\n]*)*'?"
    r"|0[xX][0-9A-Fa-f]+|(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[fF]?"
    r"|[\s\S]"
)

#: Token kinds, one character each: "w" trivia, "i" identifier, "n" number,
#: "s" string, the punctuation character itself, "?" anything else, EOF past the end.
EOF = "$"
_UNKNOWN = "?"


class _KindTable(dict[int, str]):
    """``str.translate`` table from a token's first character to its kind."""

    def __missing__(self, code: int) -> str:
        return _UNKNOWN


_KINDS = _KindTable(
    {
        **{ord(c): "w" for c in " \t\r\n\v\f#"},
        **{ord(c): "i" for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"},
        **{ord(c): "n" for c in "0123456789."},
        **{ord(c): "s" for c in "\"'"},
        **{ord(c): c for c in "{}<>:[],;-"},
    }
)

IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
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
INF_NAN = frozenset({"inf", "infinity", "nan"})
#: How C++ TextFormat spells booleans as identifiers (``1`` and ``0`` are numbers).
TRUE_WORDS = frozenset({"true", "True", "t"})
FALSE_WORDS = frozenset({"false", "False", "f"})
#: Kinds a value may start with.
VALUE_START = frozenset("sni-")


def describe(kind: str, text: str) -> str:
    """How an error message names a token."""
    return "end of file" if kind == EOF else excerpt(text, 24)


class Lines:
    """Maps character offsets of one text to 1-based (line, column), on demand.

    Nodes keep an offset and a reference to this table instead of computing
    their line at parse time: most positions are never asked for.

    Example:
        >>> Lines("ab\\ncd", "x").where(4)
        (2, 2)
    """

    __slots__ = ("line_starts", "source")

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.line_starts = [0, *(m.end() for m in re.finditer("\n", text))]

    def where(self, pos: int) -> tuple[int, int]:
        """The (line, column) of character offset ``pos``."""
        index = bisect_right(self.line_starts, pos) - 1
        return index + 1, pos - self.line_starts[index] + 1


class Tokens:
    """The tokens of a text as parallel sequences (faster than token objects).

    ``texts[i]`` is token ``i``, ``kinds[i]`` its kind (a ``str`` of one
    character per token) and ``starts[i]`` its offset; three EOF tokens follow
    the last one, so lookahead never runs off the end.

    Example:
        >>> t = Tokens("a:1", "x")
        >>> t.texts[:3], t.kinds, t.starts[:4]
        (['a', ':', '1'], 'i:n$$$', [0, 1, 2, 3])
    """

    __slots__ = ("kinds", "lines", "source", "starts", "text", "texts")

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        texts: list[str] = TOKEN_RE.findall(text)
        # A byte-order mark is whitespace to us: decode_text keeps it, so the
        # round trip of a BOM file is exact.
        bom = bool(texts) and texts[0] == "\ufeff"
        if bom and len(texts) > 1 and texts[1][0] in " \t\r\n\v\f#":
            texts[0:2] = [texts[0] + texts[1]]
        kinds = "".join(map(itemgetter(0), texts)).translate(_KINDS)
        if bom:
            kinds = "w" + kinds[1:]
        self.starts = list(accumulate(map(len, texts), initial=0))
        self.starts += [len(text), len(text)]
        texts += ["", "", ""]
        self.texts = texts
        self.kinds = kinds + EOF * 3
        self.lines = Lines(text, source)

    def fail(self, pos: int, message: str) -> NoReturn:
        """Raise a syntax error at character offset ``pos``."""
        line, column = self.lines.where(pos)
        raise PrototxtSyntaxError(self.source, line, column, message)

    def fail_at(self, i: int, message: str) -> NoReturn:
        """Fail at token ``i``, naming a lexical problem there first if it has one."""
        kind = self.kinds[i]
        text = self.texts[i]
        if kind == _UNKNOWN or (kind == "n" and text == "."):
            self.fail(self.starts[i], f"unexpected character {text!r}")
        if kind == "s" and not is_terminated(text):
            self.fail(self.starts[i], "unterminated string literal (strings cannot span lines)")
        self.fail(self.starts[i], message)

    def check_escapes(self, i: int) -> None:
        """Fail at the first invalid escape sequence of string token ``i``."""
        tok = self.texts[i]
        for m in _ESCAPE_RE.finditer(tok, 1, len(tok) - 1):
            if m.group(6) is not None:
                self.fail(
                    self.starts[i] + m.start(), f"invalid escape sequence {m.group()!r} in string"
                )


def is_terminated(tok: str) -> bool:
    """Whether string token ``tok`` ends with its own, unescaped, closing quote.

    Example:
        >>> [is_terminated(t) for t in ('"a"', '"a', '"a\\\\"', '"a\\\\\\\\"', "'")]
        [True, False, False, True, False]
    """
    if len(tok) < 2 or tok[-1] != tok[0]:
        return False
    if tok[-2] != "\\":
        return True
    # The closing quote is escaped when an odd number of backslashes precede it.
    body = tok[1:-1]
    return (len(body) - len(body.rstrip("\\"))) % 2 == 0


def scan_value(tokens: Tokens, i: int) -> tuple[ScalarKind, int]:
    """Check the value starting at token ``i``; return its kind and the index after it.

    A value is adjacent string literals (with the trivia between them), an
    identifier, or a number with an optional ``-`` (and trivia after it).  Its
    text is ``tokens.text[tokens.starts[i]:tokens.starts[end]]``.

    Example:
        >>> t = Tokens("'a' 'b' 3", "x")
        >>> scan_value(t, 0), scan_value(t, 4)
        (('string', 3), ('number', 5))
    """
    kind = tokens.kinds[i]
    if kind == "s":
        return "string", _scan_strings(tokens, i)
    if kind == "i":
        return "identifier", i + 1
    return "number", _scan_number(tokens, i)


def _scan_strings(tokens: Tokens, i: int) -> int:
    kinds = tokens.kinds
    texts = tokens.texts
    # Adjacent literals are one value; the text between them belongs to it.
    while True:
        tok = texts[i]
        if not is_terminated(tok):
            tokens.fail_at(i, "")
        if "\\" in tok:
            tokens.check_escapes(i)
        if kinds[i + 1] == "s":
            i += 1
        elif kinds[i + 1] == "w" and kinds[i + 2] == "s":
            i += 2
        else:
            return i + 1


def _scan_number(tokens: Tokens, i: int) -> int:
    kinds = tokens.kinds
    texts = tokens.texts
    if kinds[i] == "-":
        # A sign, then a number or inf/nan (C++ allows space between).
        i += 1
        if kinds[i] == "w":
            i += 1
        if kinds[i] == "i" and texts[i].lower() in INF_NAN:
            return i + 1
        if kinds[i] != "n":
            tokens.fail_at(i, f"expected a number after '-', found {describe(kinds[i], texts[i])}")
    tok = texts[i]
    start = tokens.starts[i]
    if tok == ".":
        tokens.fail_at(i, "")
    if len(tok) > MAX_LITERAL_CHARS:
        tokens.fail(
            start,
            f"number literal of {len(tok)} characters, longer than the {MAX_LITERAL_CHARS} "
            f"allowed: {excerpt(tok)}",
        )
    if kinds[i + 1] in ("i", "n"):
        # "1.5.2", "3x": C++ wants a space between a number and what follows.
        tokens.fail(start, f"invalid number {excerpt(tok + texts[i + 1])}")
    octal = len(tok) > 1 and tok[0] == "0" and tok[1].isdigit()
    if octal and any(c not in "01234567" for c in tok):
        tokens.fail(start, f"numbers with a leading zero must be octal integers: {excerpt(tok)}")
    return i + 1


# --------------------------------------------------------------------------------------
# Reading literals


def unescape(body: str) -> bytes:
    """Bytes of a string literal's contents (without quotes), C++ escape rules.

    Example:
        >>> unescape("a\\\\x41\\\\101\\\\n")
        b'aAA\\n'
    """
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


def string_bytes(raw: str) -> bytes:
    """The bytes of a string value's text (adjacent literals joined, escapes decoded).

    Example:
        >>> string_bytes("'a' \\"\\\\x62\\"")
        b'ab'
    """
    if len(raw) >= 2 and "\\" not in raw and raw[-1] == raw[0] and raw[0] not in raw[1:-1]:
        return raw[1:-1].encode("utf-8")
    return b"".join(unescape(t[1:-1]) for t in TOKEN_RE.findall(raw) if t[0] in "\"'")


def split_sign(raw: str) -> tuple[bool, str]:
    """(negative, the number token) of a number value's text (``-`` and trivia dropped).

    Example:
        >>> split_sign("- 5"), split_sign("0x1")
        ((True, '5'), (False, '0x1'))
    """
    if raw.startswith("-"):
        return True, TOKEN_RE.findall(raw)[-1]
    return False, raw


def literal_int(raw: str, kind: ScalarKind) -> int | None:
    """The integer a value spells (decimal, ``0x`` hex, leading-zero octal), else None.

    Example:
        >>> [literal_int(t, "number") for t in ("010", "-0x1F", "1.5")]
        [8, -31, None]
    """
    if kind != "number":
        return None
    negative, body = split_sign(raw)
    if len(body) > MAX_LITERAL_CHARS:
        return None  # only a value made by hand can get here; the lexer refuses such text
    if body[:2] in ("0x", "0X"):
        value = int(body[2:], 16)
    elif not body.isdigit():
        return None
    elif len(body) > 1 and body[0] == "0":
        value = int(body, 8)
    else:
        value = int(body)
    return -value if negative else value


def literal_float(raw: str, kind: ScalarKind) -> float | None:
    """The float a value spells as C++ reads a float field, else None.

    Decimal integers, floats with an optional ``f`` suffix, and
    ``inf``/``infinity``/``nan`` in any case are floats; hex and octal are not.

    Example:
        >>> [literal_float(t, k) for t, k in (("-INF", "number"), ("1.5f", "number"),
        ...                                   ("nan", "identifier"), ("0x1", "number"))]
        [-inf, 1.5, nan, None]
    """
    if kind == "string":
        return None
    negative, body = split_sign(raw)
    low = body.lower()
    if kind == "identifier" or low in INF_NAN:
        if low not in INF_NAN:
            return None
        value = math.nan if low == "nan" else math.inf
    elif body[:2] in ("0x", "0X") or (len(body) > 1 and body[0] == "0" and body.isdigit()):
        return None
    else:
        value = float(body.rstrip("fF"))
    return -value if negative else value


def literal_bool(raw: str, kind: ScalarKind) -> bool | None:
    """``true``/``True``/``t``/``1`` or ``false``/``False``/``f``/``0``, as C++ reads them.

    Example:
        >>> [literal_bool(t, k) for t, k in (("t", "identifier"), ("0", "number"), ("2", "number"))]
        [True, False, None]
    """
    if kind == "identifier":
        return True if raw in TRUE_WORDS else False if raw in FALSE_WORDS else None
    number = literal_int(raw, kind)
    return bool(number) if number in (0, 1) else None


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
# Writing literals


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
