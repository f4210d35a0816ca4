"""Edits of the syntax tree that change only the text they concern.

The node methods (:meth:`~bnfuse.io.prototxt.MessageNode.set`, ``add``,
``remove``, ``rename``, :meth:`~bnfuse.io.prototxt.FieldNode.set_value`) call
these functions.  A new field is written in the style of its siblings (indent,
indent unit, line ending, one line or several, ``: `` spelling) and then
parsed, so what an edit inserts is exactly what a later parse of the rendered
text would read.

Example:
    >>> from bnfuse.io.prototxt import Document
    >>> doc = Document.parse("layer {\\n  name: 'a'\\n}\\n")
    >>> _ = add(doc.root.message("layer"), "top", "a")
    >>> print(doc.render(), end="")
    layer {
      name: 'a'
      top: "a"
    }
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from bnfuse.errors import PrototxtSchemaError, excerpt
from bnfuse.io.prototxt._lexer import IDENT_RE
from bnfuse.io.prototxt._parser import parse_fragment
from bnfuse.io.prototxt._tree import (
    FieldNode,
    Identifier,
    ListValue,
    MessageNode,
    NewScalar,
    NewValue,
    ScalarValue,
    place,
    scalar_like,
)

_HSPACE = " \t"
_LINE_END_RE = re.compile(r"[ \t]*(?:[,;][ \t]*)?(\r?\n)?")
_OWN_SEP_RE = re.compile(r"[ \t]*[,;][ \t]*|[ \t]*")
_PREV_SEP_RE = re.compile(r"([ \t]*[,;])?[ \t]*\Z")
_SCALAR_TYPES = (str, bytes, int, float, Identifier, ScalarValue)


# --------------------------------------------------------------------------------------
# Values


def set_value(field: FieldNode, value: NewScalar) -> None:
    """Replace the single value of ``field`` (see :meth:`FieldNode.set_value`)."""
    old = field.value
    if not isinstance(old, ScalarValue):
        what = "a list" if isinstance(old, ListValue) else "a message"
        raise PrototxtSchemaError(
            f"field {excerpt(field.name)} at {field.line}:{field.column} holds {what}, "
            "not one value",
            **place(field),
        )
    new = scalar_like(value, old)
    new.parent = field
    field.value = new


def set_field(message: MessageNode, name: str, value: NewScalar) -> FieldNode:
    """Set field ``name`` of ``message`` (see :meth:`MessageNode.set`)."""
    found = message.all(name)
    if len(found) > 1:
        raise PrototxtSchemaError(
            f"field {excerpt(name)} occurs {len(found)} times in the message at "
            f"{message.line}:{message.column}; set one occurrence with FieldNode.set_value()",
            **place(message),
        )
    if found:
        set_value(found[0], value)
        return found[0]
    return add(message, name, value)


def rename(message: MessageNode, name: str, old: str, new: str) -> int:
    """Rename string values of fields ``name`` (see :meth:`MessageNode.rename`)."""
    count = 0
    for f in message.all(name):
        container = f.value
        for v in f.values:
            if isinstance(v, ScalarValue) and v.kind == "string" and v.text() == old:
                replacement = scalar_like(new, v)
                if isinstance(container, ListValue):
                    container.items[index_of(container.items, v)] = replacement
                    replacement.parent = container
                else:
                    f.value = replacement
                    replacement.parent = f
                count += 1
    return count


# --------------------------------------------------------------------------------------
# Removing


def remove(message: MessageNode, field: FieldNode) -> None:
    """Remove ``field`` and the text that only it needed (see :meth:`MessageNode.remove`)."""
    items = message.items
    idx = index_of(items, field)
    before = items[idx - 1] if idx > 0 else None
    after = items[idx + 1] if idx + 1 < len(items) else None
    prev = before if isinstance(before, str) else None
    nxt = after if isinstance(after, str) else None
    last_item = idx == len(items) - 1 or (idx == len(items) - 2 and nxt is not None)
    new_prev, new_nxt = _surroundings(prev, nxt, idx, last_item, message.is_root)
    lo = idx - 1 if prev is not None else idx
    hi = idx + 2 if nxt is not None else idx + 1
    replacement = [s for s in (new_prev, new_nxt) if s]
    items[lo:hi] = replacement
    # Items are kept normalized, so only the edited window (and its two
    # neighbours) can need merging; normalizing the whole list on every
    # removal made removing n layers from an n-layer net O(n^2).
    window_lo, window_hi = max(lo - 1, 0), lo + len(replacement) + 1
    window = items[window_lo:window_hi]
    normalize(window)
    items[window_lo:window_hi] = window
    field.parent = None


def remove_many(message: MessageNode, fields: Sequence[FieldNode]) -> None:
    """Remove ``fields`` in one pass: the same text as :func:`remove` of each, in order.

    Finding each field in the message's items costs a scan of them, so removing
    n of an n-field message one by one is quadratic; here the items are walked
    once and each removal sees the text the earlier ones left, exactly as the
    one-by-one removals in the fields' order of appearance would.

    Example:
        >>> from bnfuse.io.prototxt import Document
        >>> doc = Document.parse("a: 1\\nb: 2  # two\\nc: 3\\nd: 4\\n")
        >>> remove_many(doc.root, [doc.root.first("c"), doc.root.first("a")])
        >>> doc.render()
        'b: 2  # two\\nd: 4\\n'
    """
    doomed = {id(field) for field in fields}
    items = message.items
    found = sum(1 for item in items if id(item) in doomed and isinstance(item, FieldNode))
    if found != len(doomed):
        raise PrototxtSchemaError(
            f"{len(doomed) - found} of the fields to remove are not in this message")
    out: list[str | FieldNode] = []
    i, count = 0, len(items)
    while i < count:
        item = items[i]
        if isinstance(item, str) or id(item) not in doomed:
            _append_merged(out, item)
            i += 1
            continue
        # The list as the one-by-one removals would see it: out + items[i:].
        prev = out[-1] if out and isinstance(out[-1], str) else None
        after = items[i + 1] if i + 1 < count else None
        nxt = after if isinstance(after, str) else None
        last_item = i == count - 1 or (i == count - 2 and nxt is not None)
        new_prev, new_nxt = _surroundings(prev, nxt, len(out), last_item, message.is_root)
        if prev is not None:
            out.pop()
        for text in (new_prev, new_nxt):
            if text:
                _append_merged(out, text)
        item.parent = None
        i += 2 if nxt is not None else 1
    items[:] = out


def _append_merged(out: list[str | FieldNode], item: str | FieldNode) -> None:
    """Append ``item``, merging adjacent text (what :func:`normalize` would do)."""
    if isinstance(item, str):
        if not item:
            return
        if out and isinstance(out[-1], str):
            out[-1] = out[-1] + item
            return
    out.append(item)


def _surroundings(
    prev: str | None, nxt: str | None, idx: int, last_item: bool, root: bool
) -> tuple[str | None, str | None]:
    """The text before and after the field at ``idx`` once the field is removed.

    ``prev``/``nxt`` are the text items around it (None: a field or the end),
    ``last_item`` says nothing but ``nxt`` follows it.
    """
    first_item = idx == 0 or (idx == 1 and prev is not None)
    # Does the field start its line, and end it (up to an optional separator)?
    tail = ""
    if prev is None:
        starts_line = idx == 0 and root
    else:
        cut = prev.rfind("\n") + 1
        tail = prev[cut:]
        starts_line = (cut > 0 or (first_item and root)) and not tail.strip(_HSPACE)
    line_end = _LINE_END_RE.match(nxt or "")
    assert line_end is not None
    ends_line = bool(line_end.group(1)) or (
        last_item and root and line_end.end() == len(nxt or "")
    )
    if starts_line and ends_line:
        return _without_lines(prev, nxt, tail, line_end)
    return _without_separator(prev, nxt)


def _without_lines(
    prev: str | None, nxt: str | None, tail: str, line_end: re.Match[str]
) -> tuple[str | None, str | None]:
    """The text around a field alone on its lines, once those lines are gone."""
    new_prev = prev[: len(prev) - len(tail)] if prev is not None else None
    if line_end.group(1):
        return new_prev, (nxt or "")[line_end.end() :]
    # The last line of a file without a final newline: drop the line break
    # before it instead, keeping "no final newline".
    if new_prev is not None:
        new_prev = re.sub(r"\r?\n\Z", "", new_prev)
    return new_prev, ""


def _without_separator(prev: str | None, nxt: str | None) -> tuple[str | None, str | None]:
    """The text around a field that shares its line, once its separator is gone."""
    # Take the field's own separator; else the one before it (so the last
    # field of "{ a: 1, b: 2 }" leaves no dangling comma); else spaces.
    own = _OWN_SEP_RE.match(nxt or "")
    assert own is not None
    prev_sep = _PREV_SEP_RE.search(prev) if prev is not None else None
    if "," in own.group() or ";" in own.group():
        return prev, (nxt or "")[own.end() :]
    if prev is not None and prev_sep is not None and prev_sep.group(1):
        return prev[: prev_sep.start()], nxt
    if own.end() > 0:
        return prev, (nxt or "")[own.end() :]
    if prev is not None and prev_sep is not None:
        return prev[: prev_sep.start()], nxt
    return prev, nxt


# --------------------------------------------------------------------------------------
# Adding


def add(
    message: MessageNode,
    name: str,
    value: NewValue,
    *,
    after: FieldNode | None = None,
    before: FieldNode | None = None,
) -> FieldNode:
    """Add a new field to ``message`` (see :meth:`MessageNode.add`)."""
    if after is not None and before is not None:
        raise PrototxtSchemaError("give either after= or before=, not both")
    anchor = after if after is not None else before
    if anchor is not None and anchor.parent is not message:
        raise PrototxtSchemaError(
            f"field {excerpt(anchor.name)} at {anchor.line}:{anchor.column} "
            "is not in this message",
            **place(anchor),
        )
    siblings = message.fields
    newline, unit = _document_style(message)
    multiline = _is_multiline(message)

    # The new message's own layout copies a sibling message's.
    inner_multiline = multiline
    if not isinstance(value, _SCALAR_TYPES) and multiline:
        model = _model_message(siblings, anchor, name)
        if model is not None:
            inner_multiline = _is_multiline(model)
    indent = _child_indent(message, anchor, unit) if multiline else ""
    style = _Style(unit, newline, inner_multiline, _model_mid(siblings))
    node = parse_fragment(_format_field(name, value, indent, style))
    node.parent = message

    if after is None and before is None and siblings:
        after = siblings[-1]
    if multiline:
        _insert_multiline(message, node, indent, newline, after, before)
    else:
        _insert_one_line(message, node, after, before)
    normalize(message.items)
    return node


class _Style:
    """How new text is laid out: indent unit, line ending, one line or several, ``: ``."""

    __slots__ = ("mid", "multiline", "newline", "unit")

    def __init__(self, unit: str, newline: str, multiline: bool, mid: str) -> None:
        self.unit = unit
        self.newline = newline
        self.multiline = multiline
        self.mid = mid


def _format_field(name: str, value: NewValue, indent: str, style: _Style) -> str:
    """Text of a new field starting at its name; later lines carry their full indent."""
    if not IDENT_RE.match(name):
        raise PrototxtSchemaError(f"{excerpt(name)} is not a valid field name")
    if isinstance(value, _SCALAR_TYPES):
        return name + style.mid + ScalarValue.from_python(value).raw
    parts: list[str] = []
    inner = indent + style.unit
    for entry in value:
        if not (isinstance(entry, tuple) and len(entry) == 2):
            raise PrototxtSchemaError(
                f"items of message {excerpt(name)} must be (name, value) pairs, "
                f"got {excerpt(repr(entry))}"
            )
        child_name, child_value = entry
        parts.append(_format_field(child_name, child_value, inner, style))
    newline = style.newline
    if not parts:
        return name + " {" + (newline + indent if style.multiline else " ") + "}"
    if style.multiline:
        body = "".join(newline + inner + p for p in parts)
        return name + " {" + body + newline + indent + "}"
    return name + " { " + " ".join(parts) + " }"


def _insert_one_line(
    message: MessageNode, node: FieldNode, after: FieldNode | None, before: FieldNode | None
) -> None:
    items = message.items
    gap = _one_line_gap(items)
    if after is not None:
        idx = index_of(items, after)
        items[idx + 1 : idx + 1] = [gap, node]
    elif before is not None:
        idx = index_of(items, before)
        items[idx:idx] = [node, gap]
    else:
        items[:] = [" ", node, " "] if message.open else [node]


def _insert_multiline(  # noqa: PLR0917 - private helper, one call site
    message: MessageNode,
    node: FieldNode,
    indent: str,
    newline: str,
    after: FieldNode | None,
    before: FieldNode | None,
) -> None:
    items = message.items
    if after is not None:
        idx = index_of(items, after)
        trail = items[idx + 1] if idx + 1 < len(items) else None
        if isinstance(trail, str) and "\n" in trail:
            # After the end of the sibling's line, so a trailing comment stays with it.
            cut = trail.index("\n") + 1
            items[idx + 1 : idx + 2] = [trail[:cut] + indent, node, newline + trail[cut:]]
        else:
            items[idx + 1 : idx + 1] = [newline + indent, node]
        return
    if before is not None:
        idx = index_of(items, before)
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
    elif message.open:
        items[:] = [newline + indent, node, newline]
    else:
        items[:] = [text + newline if text else "", node, newline]


# --------------------------------------------------------------------------------------
# Layout of the existing text


def index_of(items: Sequence[object], node: object) -> int:
    """Position of ``node`` in ``items`` by identity (nodes never compare equal)."""
    # list.index checks identity first and runs in C: nodes define no __eq__, so it
    # finds exactly the same position as a Python identity loop, ~30x faster.
    try:
        return items.index(node)
    except ValueError:
        raise PrototxtSchemaError(f"{node!r} is not in this message") from None


def normalize(items: list[str | FieldNode]) -> None:
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


def _is_multiline(message: MessageNode) -> bool:
    if message.is_root:
        return True
    return any(isinstance(s, str) and "\n" in s for s in message.items)


def _child_indent(message: MessageNode, anchor: FieldNode | None, unit: str) -> str:
    for f in ([anchor] if anchor is not None else []) + message.fields[::-1]:
        indent = _indent_of(f)
        if indent is not None:
            return indent
    if message.is_root:
        return ""
    # An empty multi-line message: one unit deeper than its closing bracket.
    last = message.items[-1] if message.items and isinstance(message.items[-1], str) else ""
    closing = last[last.rfind("\n") + 1 :]
    return (closing if not closing.strip(_HSPACE) else "") + unit


def _indent_of(field: FieldNode) -> str | None:
    """The indentation before ``field`` if it starts its line, else None."""
    parent = field.parent
    if parent is None:
        return None
    items = parent.items
    idx = index_of(items, field)
    if idx == 0:
        return "" if parent.is_root else None
    prev = items[idx - 1]
    if not isinstance(prev, str):
        return None
    cut = prev.rfind("\n") + 1
    tail = prev[cut:]
    if tail.strip(_HSPACE):
        return None
    if cut == 0 and not (idx == 1 and parent.is_root):
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
    stack = [root]
    while stack:
        message = stack.pop()
        for f in message.fields:
            value = _message_value(f)
            if value is not None:
                own = _indent_of(f)
                children = value.fields
                inner = _indent_of(children[0]) if children else None
                if (
                    own is not None
                    and inner is not None
                    and len(inner) > len(own)
                    and inner.startswith(own)
                ):
                    return inner[len(own) :]
                stack.append(value)
    return "  "


def _model_message(
    siblings: list[FieldNode], anchor: FieldNode | None, name: str
) -> MessageNode | None:
    """A sibling message whose layout a new message should copy."""
    candidates = [anchor] if anchor is not None else []
    candidates += [f for f in reversed(siblings) if f.name == name]
    candidates += list(reversed(siblings))
    for f in candidates:
        value = _message_value(f)
        if value is not None:
            return value
    return None


def _message_value(field: FieldNode) -> MessageNode | None:
    """The message ``field`` holds (not a list of them), else None; scalars stay unbuilt."""
    if field.raw_scalar() is not None:
        return None
    value = field.value
    return value if isinstance(value, MessageNode) else None


def _model_mid(siblings: list[FieldNode]) -> str:
    """The ``: `` of the siblings' scalar fields, when they agree on a plain one."""
    for f in siblings:
        if f.raw_scalar() is not None and re.fullmatch(r"[ \t]*:[ \t]*", f.mid):
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
