"""The one error family bnfuse raises.

Every failure a caller can cause (a bad file, an unsupported layer, a missing
backend, an output that would be unsafe to write) is a :class:`BnfuseError`.
Messages are one line and name the file, the place and, where there is one,
the fix, so the CLI can print them as they are.  Beside the message, every
error carries the same facts as attributes, for a program to read instead of
parsing the text: ``path`` (the file), ``line`` and ``column`` (in a prototxt),
``layer`` (a layer name); each is ``None`` when it does not apply.  A
:class:`CaffemodelError` also carries the byte ``offset``.

A failure that is bnfuse's own fault (an internal invariant broken) is an
:class:`InternalError`, so it is never mistaken for a problem in the user's files.

Example:
    >>> import bnfuse
    >>> try:
    ...     bnfuse.load(b"layer {")
    ... except bnfuse.BnfuseError as exc:
    ...     print(type(exc).__name__, exc.path, exc.line, exc.column)
    PrototxtSyntaxError <prototxt bytes> 1 8
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

#: How many characters of a file's own text a message quotes at most, by default.
EXCERPT_CHARS = 40


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` quoted for a message: its ``repr``, cut to ``limit`` characters with ``...``.

    Files can hold a megabyte-long name or number; messages stay one short line.
    (A helper for the modules that build messages, not part of the error family.)

    Example:
        >>> excerpt("conv1"), excerpt("9" * 100, 12)
        ("'conv1'", "'999999999...'")
    """
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return repr(text)


def _rebuild(cls: type[BnfuseError], args: tuple[Any, ...], state: dict[str, Any]) -> BnfuseError:
    """Unpickle an error without calling its ``__init__`` (whose signature may differ)."""
    error = cls.__new__(cls, *args)
    error.__dict__.update(state)
    return error


class BnfuseError(Exception):
    """Base class of every error bnfuse raises on purpose.

    ``path``, ``line``, ``column`` and ``layer`` are keyword-only and default
    to ``None``; they never change the message.

    Example:
        >>> issubclass(CaffemodelError, BnfuseError)
        True
        >>> err = BnfuseError("net.prototxt: no layer named 'conv9'", path="net.prototxt",
        ...                   layer="conv9")
        >>> str(err), err.path, err.layer, err.line
        ("net.prototxt: no layer named 'conv9'", 'net.prototxt', 'conv9', None)
    """

    def __init__(
        self,
        *args: object,
        path: str | None = None,
        line: int | None = None,
        column: int | None = None,
        layer: str | None = None,
    ) -> None:
        super().__init__(*args)
        #: The file the error is about, as the caller named it (a path, ``<bytes>``...).
        self.path = path
        #: 1-based line in a text file.
        self.line = line
        #: 1-based column (characters) in a text file.
        self.column = column
        #: The name of the layer concerned.
        self.layer = layer

    def __reduce__(self) -> tuple[Any, ...]:
        # The default reduction calls cls(*args), which fails for subclasses whose
        # __init__ takes other arguments than the message (PrototxtSyntaxError).
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


@contextlib.contextmanager
def naming_file(path: str | None) -> Iterator[None]:
    """Let every :class:`BnfuseError` raised in the block name ``path`` (its message
    starts with ``path: ``), unless it names a file already.

    For the stages that work on a loaded net (running it, drawing its weights), whose
    errors are about a layer: the message then says which file that layer is in. A
    net read from bytes (``<prototxt bytes>``) has no file to name.

    Example:
        >>> try:
        ...     with naming_file("deploy.prototxt"):
        ...         raise UnsupportedLayerError("layer 'p' has type 'PriorBox'", layer="p")
        ... except BnfuseError as error:
        ...     print(error, "|", error.path)
        deploy.prototxt: layer 'p' has type 'PriorBox' | deploy.prototxt
    """
    try:
        yield
    except BnfuseError as error:
        message = error.args[0] if len(error.args) == 1 else None
        # "<prototxt bytes>" and the like name no file: the message stays as it is.
        if (path is not None and not path.startswith("<") and error.path is None
                and isinstance(message, str) and path not in message
                and not isinstance(error, InternalError)):
            error.args = (f"{path}: {message}",)
            error.path = path
        raise


class InternalError(BnfuseError):
    """An invariant of bnfuse itself failed: a bug in bnfuse, not in the user's files.

    Raised where bnfuse checks its own work (a plan that does not match the
    net it was made for, a written file whose size differs from the planned
    one without any outside cause...).  The command line reports it as an
    internal error to report, with the traceback, and exits with status 3.

    Example:
        >>> issubclass(InternalError, BnfuseError)
        True
    """


class PrototxtSyntaxError(BnfuseError):
    """A prototxt is not valid protobuf text format.

    The message starts with ``file:line:column:`` and says what was expected;
    ``path`` (also ``source``), ``line`` and ``column`` hold the place and
    ``detail`` the rest of the message.

    Example:
        >>> err = PrototxtSyntaxError("net.prototxt", 3, 7, "expected '}'")
        >>> str(err), err.path, err.line, err.column, err.detail
        ("net.prototxt:3:7: expected '}'", 'net.prototxt', 3, 7, "expected '}'")
    """

    def __init__(self, source: str, line: int, column: int, message: str) -> None:
        super().__init__(
            f"{source}:{line}:{column}: {message}", path=source, line=line, column=column
        )
        self.source = source
        self.detail = message


class PrototxtSchemaError(BnfuseError):
    """A prototxt is well-formed text but a value does not fit Caffe's schema.

    For instance ``num_output: "ten"`` or an unknown enum value such as ``pool: MEDIAN``.
    :meth:`at` builds one located in the text.

    Example:
        >>> err = PrototxtSchemaError.at("net.prototxt", 4, 17, "expected an integer")
        >>> str(err), (err.path, err.line, err.column), err.detail
        ('net.prototxt:4:17: expected an integer', ('net.prototxt', 4, 17), 'expected an integer')
    """

    #: The message without its ``file:line:column:`` prefix (None when not located).
    detail: str | None = None

    @classmethod
    def at(
        cls, path: str, line: int, column: int, detail: str, *, layer: str | None = None
    ) -> PrototxtSchemaError:
        """An error at ``path:line:column`` whose message is that place, then ``detail``."""
        error = cls(f"{path}:{line}:{column}: {detail}", path=path, line=line, column=column,
                    layer=layer)
        error.detail = detail
        return error


class UpgradeError(PrototxtSchemaError):
    """An old-format (V0/V1) net that Caffe itself could not upgrade either.

    Example:
        >>> issubclass(UpgradeError, PrototxtSchemaError)
        True
    """


class CaffemodelError(BnfuseError):
    """A caffemodel is truncated, corrupt, empty or not a caffemodel at all.

    ``offset`` is the byte where the problem was found, when there is one.
    :meth:`at` builds the usual message, ``file: byte N: what; fix``.

    Example:
        >>> err = CaffemodelError.at(12, "the data ends inside a varint", path="m.caffemodel",
        ...                          hint="copy it again")
        >>> str(err)
        'm.caffemodel: byte 12: the data ends inside a varint; copy it again'
        >>> err.path, err.offset, err.detail, err.hint
        ('m.caffemodel', 12, 'the data ends inside a varint', 'copy it again')
        >>> str(CaffemodelError.at(3, "invalid field number 0"))
        'byte 3: invalid field number 0'
    """

    def __init__(self, *args: object, offset: int | None = None, **fields: Any) -> None:
        super().__init__(*args, **fields)
        #: Byte offset in the file where the problem was found.
        self.offset = offset
        #: What is wrong, without the file, offset and fix (None when not built by at()).
        self.detail: str | None = None
        #: The suggested fix (None when there is none or the error was not built by at()).
        self.hint: str | None = None

    @classmethod
    def at(
        cls,
        offset: int,
        detail: str,
        *,
        path: str | None = None,
        hint: str | None = None,
        layer: str | None = None,
    ) -> CaffemodelError:
        """An error at byte ``offset``; the message is ``[path: ]byte N: detail[; hint]``."""
        message = f"byte {offset}: {detail}"
        if path is not None:
            message = f"{path}: {message}"
        if hint is not None:
            message = f"{message}; {hint}"
        error = cls(message, path=path, layer=layer, offset=offset)
        error.detail = detail
        error.hint = hint
        return error


class ModelMismatchError(BnfuseError):
    """Weights do not fit the net: wrong blob count or shape for a layer."""


class UnsupportedLayerError(BnfuseError):
    """A layer type or configuration that the requested operation cannot handle."""


class BackendUnavailableError(BnfuseError):
    """An optional verification backend is not installed; the message says how to get it."""


class MemoryBudgetError(BnfuseError):
    """Running a net (verify, random weights) would need more memory than the budget allows.

    Raised before any work; the message names the estimate, the budget and the largest
    blob (name and shape), and how to allow more (``--max-memory`` / ``max_memory=``).
    """


class OutputError(BnfuseError):
    """An output cannot be written safely (collides with an input, too large, disk full)."""


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
    "MemoryBudgetError",
    "ModelMismatchError",
    "OutputError",
    "PrototxtSchemaError",
    "PrototxtSyntaxError",
    "ReadOnlyLayerError",
    "UnsupportedLayerError",
    "UpgradeError",
]
