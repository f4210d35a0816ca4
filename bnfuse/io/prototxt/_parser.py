"""Tokens -> syntax tree, and :class:`Document`, a parsed prototxt.

The parser is one loop over the tokens with an explicit stack (no recursion,
so nesting depth costs no Python stack), its state in local variables (the
loop runs once per token of files with millions of them).  What it accepts is
what protobuf's C++ ``TextFormat`` parser accepts, without a schema; the error
paths, which run at most once per parse, are functions of their own.

Example:
    >>> root = parse_tokens(Tokens("a: 1 b { c: [2, 3] }", "x"))
    >>> [f.name for f in root.fields], root.render()
    (['a', 'b'], 'a: 1 b { c: [2, 3] }')
"""

from __future__ import annotations

from typing import Any, NoReturn

from bnfuse.errors import InternalError, PrototxtSyntaxError, excerpt
from bnfuse.io.prototxt._lexer import (
    EOF,
    MAX_LITERAL_CHARS,
    VALUE_START,
    ScalarKind,
    Tokens,
    decode_text,
    describe,
    scan_value,
)
from bnfuse.io.prototxt._tree import FieldNode, ListValue, MessageNode, ScalarValue

#: Deepest nesting of messages and lists accepted; deeper input is rejected
#: with a syntax error instead of exhausting the stack of a later consumer.
MAX_DEPTH = 100

_OPEN_TO_CLOSE = {"{": "}", "<": ">", "[": "]"}


class _Frame:
    """An open message or list: where its items go and what closes it."""

    __slots__ = ("close", "is_list", "items", "messages_only", "node", "owner", "owner_pos")

    def __init__(
        self,
        node: MessageNode | ListValue,
        close: str,
        owner: str,
        owner_pos: int,
        messages_only: bool,
    ) -> None:
        self.node = node
        self.items: list[Any] = node.items
        self.is_list = isinstance(node, ListValue)
        self.close = close  # the bracket that closes `node` ("" for the root)
        self.owner = owner  # the field name `node` belongs to
        self.owner_pos = owner_pos  # where that field (or list element) starts
        self.messages_only = messages_only  # a list written without ':' holds messages only


def parse_tokens(tokens: Tokens, keep_positions: bool = True) -> MessageNode:
    """The tree of ``tokens``; nodes remember their position when ``keep_positions``."""
    kinds = tokens.kinds
    texts = tokens.texts
    starts = tokens.starts
    lines = tokens.lines if keep_positions else None
    value_start = VALUE_START
    root = MessageNode("", "", 0, lines)
    frame = _Frame(root, "", "", 0, False)
    stack: list[_Frame] = []  # the frames that enclose `frame`
    # The hot part of `frame`, in locals (this loop runs once per token).
    items: list[Any] = root.items
    is_list = False
    close = ""
    # Messages: 1 when a separator may come.  Lists: 0 = first element or "]",
    # 1 = "," or "]", 2 = an element (after a comma).
    expect = 0

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
        if is_list:
            i, expect, frame = _list_token(tokens, i, expect, frame, stack)
            items, is_list, close = frame.items, frame.is_list, frame.close
            continue

        if kind == "i":
            # A field: its name, then what is between the name and the value.
            name = texts[i]
            name_pos = starts[i]
            i += 1
            if kinds[i] == ":":  # the usual "name: value", "name:value"
                colon = True
                i += 1
                if kinds[i] == "w":
                    mid = ":" + texts[i]
                    i += 1
                else:
                    mid = ":"
            else:
                mid_start = i
                if kinds[i] == "w":
                    i += 1
                colon = kinds[i] == ":"
                if colon:
                    i += 1
                    if kinds[i] == "w":
                        i += 1
                mid = "".join(texts[mid_start:i])
            kind = kinds[i]
            if colon and kind in value_start:
                i = _scalar_field(tokens, i, name, mid, name_pos, frame.node)  # type: ignore[arg-type]
                expect = 1
                continue
            if kind == "{" or kind == "<" or kind == "[":  # noqa: PLR1714 - faster
                stack.append(frame)
                frame = _open_field(tokens, i, name, mid, name_pos, colon, frame, len(stack))
                items, is_list, close = frame.items, frame.is_list, frame.close
                expect = 0
                i += 1
                continue
            _fail_after_name(tokens, i, name, colon)
        if (kind == "," or kind == ";") and expect == 1:  # noqa: PLR1714 - faster
            if items and items[-1].__class__ is str:
                items[-1] += texts[i]
            else:
                items.append(texts[i])
            expect = 0
            i += 1
            continue
        if kind == close:
            frame.node.close = kind  # type: ignore[union-attr]
            frame = stack.pop()
            items, is_list, close = frame.items, frame.is_list, frame.close
            expect = 1
            i += 1
            continue
        if kind == EOF and not stack:
            return root
        _fail_in_message(tokens, i, frame, bool(stack))


def _scalar_field(  # noqa: PLR0917 - the parser's state, one call site
    tokens: Tokens, i: int, name: str, mid: str, name_pos: int, message: MessageNode
) -> int:
    """Add the field ``name`` whose value starts at token ``i``; return the index after it.

    The field keeps the value's text and builds its ScalarValue only if it is read.
    """
    kinds = tokens.kinds
    kind = kinds[i]
    raw = tokens.texts[i]
    after = kinds[i + 1]
    end = i + 1
    # The usual values are one token that needs no check beyond what is tested
    # here; scan_value checks (and refuses) everything else.
    if kind == "i":
        value_kind: ScalarKind = "identifier"
    elif (
        kind == "s"
        and raw[-1] == raw[0]
        and len(raw) > 1
        and "\\" not in raw
        and after != "s"
        and (after != "w" or kinds[i + 2] != "s")
    ):
        value_kind = "string"
    elif (
        kind == "n"
        and after not in "in"  # kinds are one character each
        and (raw[0] not in "0." or raw == "0")
        and len(raw) <= MAX_LITERAL_CHARS
    ):
        value_kind = "number"
    else:
        value_kind, end = scan_value(tokens, i)
        raw = tokens.text[tokens.starts[i] : tokens.starts[end]]
    field: FieldNode = _new(FieldNode)
    field.name = name
    field.mid = mid
    field._value = None
    field._raw = raw
    field._kind = value_kind
    field._value_pos = tokens.starts[i]
    field._pos = name_pos
    field._lines = message._lines
    field.parent = message
    message.items.append(field)
    return end


_new = object.__new__


def _open_field(  # noqa: PLR0917 - the parser's state, one call site
    tokens: Tokens,
    i: int,
    name: str,
    mid: str,
    name_pos: int,
    colon: bool,
    frame: _Frame,
    depth: int,
) -> _Frame:
    """Add the field ``name`` whose message or list opens at token ``i``; return its frame."""
    kind = tokens.kinds[i]
    pos = tokens.starts[i]
    if depth > MAX_DEPTH:
        tokens.fail(pos, f"nesting deeper than {MAX_DEPTH} levels")
    lines = frame.node._lines
    value: MessageNode | ListValue = (
        ListValue(pos, lines) if kind == "[" else MessageNode(kind, "", pos, lines)
    )
    field = FieldNode(name, mid, value, name_pos, lines)
    field.parent = frame.node  # type: ignore[assignment]
    frame.items.append(field)
    return _Frame(value, _OPEN_TO_CLOSE[kind], name, name_pos, kind == "[" and not colon)


def _list_token(
    tokens: Tokens, i: int, expect: int, frame: _Frame, stack: list[_Frame]
) -> tuple[int, int, _Frame]:
    """Read token ``i`` inside the list of ``frame``: ``(next index, expect, open frame)``."""
    kind = tokens.kinds[i]
    items = frame.items
    if kind == "]" and expect != 2:
        return i + 1, 1, stack.pop()
    if expect == 1:
        if kind != ",":
            _fail_in_list(tokens, i, "',' or ']'", frame)
        if items and items[-1].__class__ is str:
            items[-1] += ","
        else:
            items.append(",")
        return i + 1, 2, frame
    first = next((v for v in items if v.__class__ is not str), None)
    want_messages = frame.messages_only or isinstance(first, MessageNode)
    pos = tokens.starts[i]
    lines = frame.node._lines
    if (kind == "{" or kind == "<") and not isinstance(first, ScalarValue):  # noqa: PLR1714
        stack.append(frame)
        if len(stack) > MAX_DEPTH:
            tokens.fail(pos, f"nesting deeper than {MAX_DEPTH} levels")
        element = MessageNode(kind, "", pos, lines)
        element.parent = frame.node  # type: ignore[assignment]
        items.append(element)
        return i + 1, 0, _Frame(element, _OPEN_TO_CLOSE[kind], frame.owner, pos, False)
    if kind in VALUE_START and not want_messages:
        value_kind, end = scan_value(tokens, i)
        scalar = ScalarValue(tokens.text[pos : tokens.starts[end]], value_kind, pos, lines)
        scalar.parent = frame.node  # type: ignore[assignment]
        items.append(scalar)
        return end, 1, frame
    wanted = "'{'" if want_messages else "a value"
    why = " (a list without ':' holds messages)" if frame.messages_only else ""
    _fail_in_list(tokens, i, wanted, frame, why)


def _opened_at(tokens: Tokens, pos: int) -> str:
    line, column = tokens.lines.where(pos)
    return f"{line}:{column}"


def _fail_after_name(tokens: Tokens, i: int, name: str, colon: bool) -> NoReturn:
    """The error for a field name followed by neither a value nor a message."""
    kind = tokens.kinds[i]
    found = describe(kind, tokens.texts[i])
    if colon and kind == EOF:
        tokens.fail(tokens.starts[i], "unexpected end of file: expected a value after ':'")
    if colon:
        tokens.fail_at(i, f"expected a value after ':', found {found}")
    tokens.fail_at(i, f"expected ':' or '{{' after field name {excerpt(name)}, found {found}")


def _fail_in_message(tokens: Tokens, i: int, frame: _Frame, nested: bool) -> NoReturn:
    """The error for a token that cannot come next inside a message."""
    kind = tokens.kinds[i]
    pos = tokens.starts[i]
    opened = f"{excerpt(frame.owner)} opened at {_opened_at(tokens, frame.owner_pos)}"
    if kind == EOF:
        tokens.fail(pos, f"unexpected end of file: expected {frame.close!r} to close {opened}")
    if kind == "}" or kind == ">":  # noqa: PLR1714 - reads as the two brackets
        if not nested:
            tokens.fail(pos, f"unexpected {kind!r} with no open message")
        tokens.fail(pos, f"expected {frame.close!r} to close {opened}, found {kind!r}")
    hint = " (extension fields are not supported)" if kind == "[" else ""
    tokens.fail_at(i, f"expected a field name, found {describe(kind, tokens.texts[i])}{hint}")


def _fail_in_list(tokens: Tokens, i: int, wanted: str, frame: _Frame, why: str = "") -> NoReturn:
    """The error for a token that cannot come next inside a list."""
    kind = tokens.kinds[i]
    owner = excerpt(frame.owner)
    if kind == EOF:
        tokens.fail(
            tokens.starts[i],
            f"unexpected end of file: expected ']' to close the list of "
            f"{owner} opened at {_opened_at(tokens, frame.owner_pos)}",
        )
    tokens.fail_at(
        i, f"expected {wanted} in the list of {owner}{why}, found {describe(kind, tokens.texts[i])}"
    )


def parse_fragment(text: str) -> FieldNode:
    """Parse the text of one new field; it has no position (not from the source).

    The text is what an edit wrote for one field, so anything else is bnfuse's bug.
    """
    try:
        fields = parse_tokens(Tokens(text, "<new>"), keep_positions=False).fields
    except PrototxtSyntaxError as exc:
        raise InternalError(f"an edit wrote text that does not parse: {exc}") from exc
    if len(fields) != 1:
        raise InternalError(f"an edit wrote {len(fields)} fields instead of one: {excerpt(text)}")
    fields[0].parent = None
    return fields[0]


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
        return cls(parse_tokens(Tokens(text, source)), source)

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
