"""Pair ids: a prototxt and a caffemodel written together carry the same id.

bnfuse commits a prototxt and a caffemodel together (:mod:`bnfuse.io.atomic`),
but two renames are still two renames: a crash of the machine or a SIGKILL
between them leaves one new file beside one old one.  So that such a pair is
noticed, every pair bnfuse writes from an edited net carries one id in both
files. The id is derived from the prototxt text (a hash of it, marker aside), so the
same fold always writes the same bytes; a different text gets a different id:

- the prototxt ends with the comment line ``# bnfuse pair <32 hex digits>``
  (a comment: Caffe, OpenCV and protobuf's text parser skip it);
- the caffemodel's ``NetParameter`` holds the same id as a length-delimited
  field numbered :data:`PAIR_ID_FIELD`, a number no Caffe schema declares, so
  protobuf parsers (Caffe's, pycaffe's, OpenCV's) keep it as an unknown field
  and ignore it.

:func:`bnfuse.load` compares the two ids when both files have one and raises
:class:`~bnfuse.errors.ModelMismatchError` when they differ.  A net saved
without edits is written byte for byte, so it gets no new id (it keeps any it
had), and a file written alone (a prototxt without caffemodel, ``save_weights``)
carries none: an id vouches only for a pair that was committed together.

Example:
    >>> pair = pair_id_for('layer { name: "a" type: "ReLU" }\\n')
    >>> text = with_text_marker('layer { name: "a" type: "ReLU" }\\n', pair)
    >>> text_marker(text.encode()) == pair
    True
    >>> strip_text_marker(text)
    'layer { name: "a" type: "ReLU" }\\n'
"""

from __future__ import annotations

import hashlib
import re

from bnfuse.io.wire import encode_len_header

#: The NetParameter field holding the pair id.  BVLC Caffe's NetParameter uses
#: 1 to 8 and 100; the forks listed in the design notes add NetParameter fields
#: below 100 and LayerParameter fields up to 8,266,712 (py-faster-rcnn).  This
#: number is far above all of them, below protobuf's maximum (2**29 - 1) and
#: outside its reserved range (19,000 to 19,999).
PAIR_ID_FIELD = 117_637_501

#: Hex digits of an id (128 bits of the text's SHA-256).
_ID_CHARS = 32

_TEXT_LINE = re.compile(rb"^# bnfuse pair ([0-9a-f]{32})[ \t]*\r?$", re.MULTILINE)
_TEXT_LINE_STR = re.compile(r"^# bnfuse pair [0-9a-f]{32}[ \t]*\r?(?:\n|\Z)", re.MULTILINE)


def pair_id_for(text: str) -> str:
    """The id of a pair whose prototxt is ``text``: 32 hex digits of its SHA-256.

    Any marker already in ``text`` is left out, so marking a text does not change its id.

    Example:
        >>> a = pair_id_for("a: 1\\n")
        >>> len(a), a == pair_id_for(with_text_marker("a: 1\\n", a)), a == pair_id_for("a: 2\\n")
        (32, True, False)
    """
    return hashlib.sha256(strip_text_marker(text).encode("utf-8")).hexdigest()[:_ID_CHARS]


def text_marker(data: bytes) -> str | None:
    """The pair id of a prototxt's bytes (its last ``# bnfuse pair`` line), or None.

    Example:
        >>> text_marker(b'name: "n"\\n# bnfuse pair ' + b"ab" * 16 + b"\\n")
        'abababababababababababababababab'
        >>> text_marker(b'name: "n"\\n') is None
        True
    """
    matches = _TEXT_LINE.findall(data)
    return matches[-1].decode("ascii") if matches else None


def strip_text_marker(text: str) -> str:
    """``text`` without its ``# bnfuse pair`` lines.

    Example:
        >>> strip_text_marker('a: 1\\n# bnfuse pair ' + "0" * 32 + '\\n')
        'a: 1\\n'
    """
    return _TEXT_LINE_STR.sub("", text)


def with_text_marker(text: str, pair_id: str) -> str:
    """``text`` with any old marker removed and a line for ``pair_id`` at the end.

    Example:
        >>> with_text_marker("a: 1", "f" * 32).splitlines()
        ['a: 1', '# bnfuse pair ffffffffffffffffffffffffffffffff']
    """
    text = strip_text_marker(text)
    if text and not text.endswith("\n"):
        text += "\n"
    return f"{text}# bnfuse pair {pair_id}\n"


def binary_marker(pair_id: str) -> bytes:
    """The caffemodel field that carries ``pair_id`` (tag, length, ASCII id).

    Example:
        >>> from bnfuse.proto import NetParameter
        >>> net = NetParameter.FromString(NetParameter(name="n").SerializeToString()
        ...                               + binary_marker("0" * 32))
        >>> net.name  # an unknown field to protobuf: parsed and ignored
        'n'
    """
    payload = pair_id.encode("ascii")
    return encode_len_header(PAIR_ID_FIELD, len(payload)) + payload


def binary_marker_id(payload: bytes) -> str | None:
    """The id in the payload of a :data:`PAIR_ID_FIELD` field, or None if it is not one.

    Example:
        >>> binary_marker_id(b"0" * 32), binary_marker_id(b"junk")
        ('00000000000000000000000000000000', None)
    """
    if len(payload) != _ID_CHARS or re.fullmatch(rb"[0-9a-f]+", payload) is None:
        return None
    return payload.decode("ascii")


__all__ = [
    "PAIR_ID_FIELD",
    "binary_marker",
    "binary_marker_id",
    "pair_id_for",
    "strip_text_marker",
    "text_marker",
    "with_text_marker",
]
