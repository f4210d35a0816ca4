r"""User text made safe to quote in a one-line message.

Names, paths and literals in bnfuse's messages come from files the user did not
necessarily write. Quoted raw, a newline in a path forges a second message line, an
escape sequence rewrites the terminal and a 20,000-character literal buries the
message. Every message that quotes user text goes through one of these two helpers:
control and other non-printable characters are escaped the way Python's ``repr``
escapes them, and the text is cut to ``limit`` characters with a note of its full
length.

Example:
    >>> quote_user_text("conv1\n")
    "'conv1\\n'"
    >>> print(quote_user_text("x" * 500, limit=8))
    'xxxxxxxx'... (500 characters)
    >>> print(escape_user_text("dir/new\nline.npz"))
    dir/new\nline.npz
"""

from __future__ import annotations

import os

__all__ = ["DEFAULT_LIMIT", "escape_user_text", "quote_user_text"]

#: Characters of user text a message quotes before it cuts the rest.
DEFAULT_LIMIT = 200

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _as_text(text: object) -> str:
    """Paths (str, bytes, os.PathLike) and anything else as a ``str``, never raising."""
    if isinstance(text, os.PathLike):
        text = os.fspath(text)
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text).decode("utf-8", "backslashreplace")
    return text if isinstance(text, str) else str(text)


def _escape(char: str) -> str:
    if char.isprintable():
        return char
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _cut(text: str, limit: int) -> tuple[str, str]:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if len(text) <= limit:
        return text, ""
    return text[:limit], f"... ({len(text)} characters)"


def escape_user_text(text: object, limit: int = DEFAULT_LIMIT) -> str:
    r"""``text`` without quotes, non-printable characters escaped, cut to ``limit`` characters.

    For text that starts a message (a file name before ``:``). Backslashes are left as
    they are, so a path reads as typed.

    Example:
        >>> escape_user_text(b"a\x00b"), escape_user_text("tab\there")
        ('a\\x00b', 'tab\\there')
        >>> escape_user_text("abcdef", limit=3)
        'abc... (6 characters)'
    """
    head, tail = _cut(_as_text(text), limit)
    return "".join(_escape(char) for char in head) + tail


def quote_user_text(text: object, limit: int = DEFAULT_LIMIT) -> str:
    r"""``text`` quoted as Python's ``repr`` quotes a string, cut to ``limit`` characters.

    For a name inside a message (a layer, a blob, an npz key).

    Example:
        >>> quote_user_text("conv1"), quote_user_text("it's")
        ("'conv1'", '"it\'s"')
        >>> quote_user_text("\x1b[31mred", limit=4)
        "'\\x1b[31'... (8 characters)"
    """
    head, tail = _cut(_as_text(text), limit)
    return repr(head) + tail
