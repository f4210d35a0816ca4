"""The one error family bnfuse raises.

Every failure a caller can cause (a bad file, an unsupported layer, a missing
backend, an output that would be unsafe to write) is a :class:`BnfuseError`.
Messages are one line and name the file, the place and, where there is one,
the fix, so the CLI can print them as they are.

Example:
    >>> import bnfuse
    >>> try:
    ...     bnfuse.load(b"layer {")
    ... except bnfuse.BnfuseError as exc:
    ...     print(type(exc).__name__)
    PrototxtSyntaxError
"""

from __future__ import annotations


class BnfuseError(Exception):
    """Base class of every error bnfuse raises on purpose.

    Example:
        >>> issubclass(CaffemodelError, BnfuseError)
        True
    """


class PrototxtSyntaxError(BnfuseError):
    """A prototxt is not valid protobuf text format.

    The message starts with ``file:line:column:`` and says what was expected.

    Example:
        >>> err = PrototxtSyntaxError("net.prototxt", 3, 7, "expected '}'")
        >>> str(err)
        "net.prototxt:3:7: expected '}'"
    """

    def __init__(self, source: str, line: int, column: int, message: str) -> None:
        self.source = source
        self.line = line
        self.column = column
        self.detail = message
        super().__init__(f"{source}:{line}:{column}: {message}")


class PrototxtSchemaError(BnfuseError):
    """A prototxt is well-formed text but a value does not fit Caffe's schema.

    Example: ``num_output: "ten"`` or an unknown enum value such as ``pool: MEDIAN``.
    """


class CaffemodelError(BnfuseError):
    """A caffemodel is truncated, corrupt, empty or not a caffemodel at all."""


class ModelMismatchError(BnfuseError):
    """Weights do not fit the net: wrong blob count or shape for a layer."""


class UnsupportedLayerError(BnfuseError):
    """A layer type or configuration that the requested operation cannot handle."""


class BackendUnavailableError(BnfuseError):
    """An optional verification backend is not installed; the message says how to get it."""


class OutputError(BnfuseError):
    """An output cannot be written safely (collides with an input, too large, disk full)."""


class InternalError(BnfuseError):
    """An invariant of bnfuse itself failed: a bug in bnfuse, not in the user's files.

    The command line reports it as "internal error, please report" with the traceback
    and exit code 3, never as a user error.
    """


class ReadOnlyLayerError(BnfuseError, AttributeError):
    """An attribute of a :class:`~bnfuse.net.Layer` was assigned: layers are read-only.

    The message names the :class:`~bnfuse.net.Net` method that makes the change, so
    that the edit reaches the text and the caffemodel instead of being lost on save.
    It is also an ``AttributeError``, as for any read-only attribute.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'layer { name: "r" type: "ReLU" bottom: "x" top: "x" }')
        >>> try:
        ...     net.layers[0].blobs = []
        ... except ReadOnlyLayerError as exc:
        ...     print(exc)
        layer 'r' is read-only: use Net.set_blobs to change blobs
    """


__all__ = [
    "BackendUnavailableError",
    "BnfuseError",
    "CaffemodelError",
    "InternalError",
    "ModelMismatchError",
    "OutputError",
    "PrototxtSchemaError",
    "PrototxtSyntaxError",
    "ReadOnlyLayerError",
    "UnsupportedLayerError",
]
