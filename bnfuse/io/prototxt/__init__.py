"""Lossless prototxt text: parse to a concrete syntax tree, edit, render.

A prototxt is protobuf *text format* as protobuf's C++ ``TextFormat`` parser
(the one Caffe calls) accepts it.  This package parses it without a schema into
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

The package's modules, in the order text flows through them: ``_lexer``
(tokens, literals, escapes), ``_parser`` (tokens -> tree, :class:`Document`),
``_tree`` (the nodes, reading, rendering) and ``_edits`` (set, add, remove,
rename).

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

from bnfuse.io.prototxt._lexer import (
    MAX_LITERAL_CHARS,
    ScalarKind,
    decode_text,
    format_float,
    quote_string,
)
from bnfuse.io.prototxt._parser import MAX_DEPTH, Document
from bnfuse.io.prototxt._tree import (
    FieldNode,
    Identifier,
    ListValue,
    MessageNode,
    NewScalar,
    NewValue,
    ScalarValue,
)

__all__ = [
    "MAX_DEPTH",
    "MAX_LITERAL_CHARS",
    "Document",
    "FieldNode",
    "Identifier",
    "ListValue",
    "MessageNode",
    "NewScalar",
    "NewValue",
    "ScalarKind",
    "ScalarValue",
    "decode_text",
    "format_float",
    "quote_string",
]
