"""Argument checks of the public API: a wrong type is a ``TypeError`` naming the argument.

A caller who passes ``None`` for a net, a number for a path or a string for a flag made
a programming error, not a data error: it is reported as :class:`TypeError` by bnfuse
itself, with the function and the argument named, before anything deeper fails with an
``AttributeError`` from inside. A value of the right type that cannot be used (a
negative seed, a path with a NUL byte) is a :class:`~bnfuse.errors.BnfuseError`, one
line, like every other refusal.

Example:
    >>> require_bool(True, "fold_net", "forward")
    >>> require_bool("no", "fold_net", "forward")
    Traceback (most recent call last):
    ...
    TypeError: fold_net: forward must be True or False, not str
    >>> require_seed(-1, "verify")
    Traceback (most recent call last):
    ...
    bnfuse.errors.BnfuseError: verify: seed must be an integer from 0 to 2**64 - 1, got -1
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bnfuse._text import escape_user_text
from bnfuse.errors import BnfuseError
from bnfuse.layertypes.geometry import CAFFE_INT_MAX, CAFFE_MAX_AXES

__all__ = [
    "MAX_SEED",
    "require_bool",
    "require_callable",
    "require_destination",
    "require_input_shapes",
    "require_inputs",
    "require_int",
    "require_net",
    "require_net_or_paths",
    "require_optional_number",
    "require_seed",
    "require_source",
    "require_text",
]

#: Seeds are non-negative integers below 2**64 (numpy's SeedSequence takes any, bnfuse
#: keeps them to a size every tool that replays a run can store).
MAX_SEED = 2**64 - 1


def _kind(value: object) -> str:
    return type(value).__name__


def require_net(value: object, func: str, arg: str = "net") -> None:
    """``value`` must be a loaded :class:`bnfuse.Net`.

    Example:
        >>> require_net(None, "fold_net")
        Traceback (most recent call last):
        ...
        TypeError: fold_net: net must be a bnfuse.Net (from bnfuse.load), not NoneType
    """
    from bnfuse.net import Net

    if not isinstance(value, Net):
        raise TypeError(f"{func}: {arg} must be a bnfuse.Net (from bnfuse.load), "
                        f"not {_kind(value)}")


def require_bool(value: object, func: str, arg: str) -> None:
    """``value`` must be ``True`` or ``False`` (a numpy bool too).

    Example: see the module docstring.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{func}: {arg} must be True or False, not {_kind(value)}")


def require_int(value: object, func: str, arg: str, *, minimum: int | None = None) -> int:
    """``value`` as an ``int``; a bool or a float is a ``TypeError``, a value below
    ``minimum`` a :class:`~bnfuse.errors.BnfuseError`.

    Example:
        >>> require_int(np.int64(5), "verify", "top_k", minimum=1)
        5
        >>> require_int(0, "verify", "top_k", minimum=1)
        Traceback (most recent call last):
        ...
        bnfuse.errors.BnfuseError: verify: top_k must be at least 1, got 0
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{func}: {arg} must be an integer, not {_kind(value)}")
    number = int(value)
    if minimum is not None and number < minimum:
        raise BnfuseError(f"{func}: {arg} must be at least {minimum}, got {number}")
    return number


def require_seed(value: object, func: str, arg: str = "seed") -> int:
    """A random seed: an integer from 0 to :data:`MAX_SEED`.

    Example:
        >>> require_seed(7, "random_weights")
        7
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{func}: {arg} must be an integer, not {_kind(value)}")
    number = int(value)
    if not 0 <= number <= MAX_SEED:
        shown = str(number) if len(str(number)) <= 40 else f"{str(number)[:40]}..."
        raise BnfuseError(f"{func}: {arg} must be an integer from 0 to 2**64 - 1, got {shown}")
    return number


def require_optional_number(value: object, func: str, arg: str) -> None:
    """``None`` or a finite real number ``>= 0`` (a tolerance, a BatchNorm factor).

    A wrong type is a ``TypeError``; NaN, an infinity or a negative number a
    :class:`~bnfuse.errors.BnfuseError` (an infinite tolerance would pass anything,
    a NaN one would fail everything).

    Example:
        >>> require_optional_number("1e-3", "verify", "rtol")
        Traceback (most recent call last):
        ...
        TypeError: verify: rtol must be a number or None, not str
        >>> require_optional_number(float("inf"), "verify", "rtol")
        Traceback (most recent call last):
        ...
        bnfuse.errors.BnfuseError: verify: rtol must be a finite number >= 0, got inf
    """
    if value is None:
        return
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{func}: {arg} must be a number or None, not {_kind(value)}")
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise BnfuseError(f"{func}: {arg} must be a finite number >= 0, got {number!r}")


def require_text(value: object, func: str, arg: str) -> str:
    """``value`` must be a non-empty ``str`` (a blob, layer or type name).

    Example:
        >>> require_text(7, "Net.set_top", "blob")
        Traceback (most recent call last):
        ...
        TypeError: Net.set_top: blob must be a str, not int
    """
    if not isinstance(value, str):
        raise TypeError(f"{func}: {arg} must be a str, not {_kind(value)}")
    if not value:
        raise BnfuseError(f"{func}: {arg} must not be empty")
    return value


def require_callable(value: object, func: str, arg: str) -> None:
    """``None`` or something callable.

    Example:
        >>> require_callable(print, "verify", "progress")
    """
    if value is not None and not callable(value):
        raise TypeError(f"{func}: {arg} must be callable or None, not {_kind(value)}")


def _check_path(value: str | os.PathLike[Any], func: str, arg: str) -> None:
    text = os.fspath(value)
    if isinstance(text, bytes):
        raise TypeError(f"{func}: {arg} must be a str path or os.PathLike of str, not a "
                        "bytes path")
    if "\0" in text:
        raise BnfuseError(f"{escape_user_text(text)}: the {arg} path contains a NUL byte, "
                          "which no file name can hold")


def require_input_shapes(value: object, func: str,
                         arg: str = "input_shapes") -> dict[str, tuple[int, ...]] | None:
    """Input shapes: None, or a mapping of blob name to a sequence of positive ints.

    Returns them as a dict of tuples. A wrong kind is a ``TypeError``; a dimension
    below 1, beyond Caffe's ``int`` or more than 32 axes a
    :class:`~bnfuse.errors.BnfuseError`.

    Example:
        >>> require_input_shapes({"data": [1, 3, 224, 224]}, "random_weights")
        {'data': (1, 3, 224, 224)}
        >>> require_input_shapes({"data": (1, 0)}, "fold")
        Traceback (most recent call last):
        ...
        bnfuse.errors.BnfuseError: fold: input_shapes['data'] must be a shape of 1 to 32 \
dimensions from 1 to 2147483647, got (1, 0)
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"{func}: {arg} must be a mapping of blob name to shape or None, not "
                        f"{_kind(value)}")
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in value.items():
        if not isinstance(name, str):
            raise TypeError(f"{func}: the keys of {arg} must be blob names (str), not "
                            f"{_kind(name)}")
        if (isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence)
                or not all(isinstance(d, numbers.Integral) and not isinstance(d, (bool, np.bool_))
                           for d in shape)):
            raise TypeError(f"{func}: {arg}[{escape_user_text(name)!r}] must be a sequence "
                            f"of ints such as (1, 3, 224, 224), not {_kind(shape)}")
        dims = tuple(int(d) for d in shape)
        if not 1 <= len(dims) <= CAFFE_MAX_AXES or not all(1 <= d <= CAFFE_INT_MAX for d in dims):
            shown = str(dims) if len(str(dims)) <= 80 else str(dims)[:77] + "..."
            raise BnfuseError(f"{func}: {arg}[{escape_user_text(name)!r}] must be a shape of 1 "
                              f"to {CAFFE_MAX_AXES} dimensions from 1 to {CAFFE_INT_MAX}, "
                              f"got {shown}")
        shapes[name] = dims
    return shapes


def require_inputs(value: object, func: str, arg: str = "inputs") -> None:
    """Given inputs: None, a mapping of blob name to array, or the path of a ``.npz``.

    Example:
        >>> require_inputs("in\\0puts.npz", "verify")
        Traceback (most recent call last):
        ...
        bnfuse.errors.BnfuseError: in\\x00puts.npz: the inputs path contains a NUL byte, \
which no file name can hold
    """
    if value is None or isinstance(value, Mapping):
        return
    if isinstance(value, (str, os.PathLike)):
        _check_path(value, func, arg)
        return
    raise TypeError(f"{func}: {arg} must be a mapping of blob name to array, a .npz path or "
                    f"None, not {_kind(value)}")


def require_source(value: object, func: str, arg: str, *, optional: bool = False) -> None:
    """What :func:`bnfuse.load` reads: a path, the bytes, or an open file object.

    Example:
        >>> require_source(b"layer {}", "load", "prototxt")
        >>> require_source(3, "load", "prototxt")
        Traceback (most recent call last):
        ...
        TypeError: load: prototxt must be a path, bytes or an open binary file, not int
        >>> require_source("net\\0.prototxt", "load", "prototxt")
        Traceback (most recent call last):
        ...
        bnfuse.errors.BnfuseError: net\\x00.prototxt: the prototxt path contains a NUL byte, \
which no file name can hold
    """
    if value is None and optional:
        return
    if isinstance(value, (bytes, bytearray, memoryview)):
        return
    if isinstance(value, (str, os.PathLike)):
        _check_path(value, func, arg)
        return
    if callable(getattr(value, "read", None)):
        if getattr(value, "closed", False) is True:
            raise TypeError(f"{func}: {arg} is a closed file object; pass an open binary "
                            "file, a path or the bytes")
        return
    raise TypeError(f"{func}: {arg} must be a path, bytes or an open binary file, "
                    f"not {_kind(value)}")


def require_destination(value: object, func: str, arg: str, *, optional: bool = False) -> None:
    """An output path: ``str`` or ``os.PathLike`` (``None`` when ``optional``).

    Example:
        >>> require_destination(None, "save", "caffemodel", optional=True)
        >>> require_destination(b"out.prototxt", "save", "prototxt")
        Traceback (most recent call last):
        ...
        TypeError: save: prototxt must be a path (str or os.PathLike), not bytes
    """
    if value is None and optional:
        return
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{func}: {arg} must be a path (str or os.PathLike), not {_kind(value)}")
    # What the path names (NUL bytes, folders, devices, inputs) is the guarded writer's
    # to judge: bnfuse.io.guard refuses it with an OutputError.


def require_net_or_paths(value: object, func: str, arg: str) -> None:
    """A loaded Net, or a ``(prototxt, caffemodel)`` pair of paths (caffemodel may be None).

    Example:
        >>> require_net_or_paths(1, "verify", "a")
        Traceback (most recent call last):
        ...
        TypeError: verify: a must be a bnfuse.Net or a (prototxt, caffemodel) pair of paths, \
not int
    """
    from bnfuse.net import Net

    if isinstance(value, Net):
        return
    if not (isinstance(value, tuple) and len(value) == 2):
        raise TypeError(f"{func}: {arg} must be a bnfuse.Net or a (prototxt, caffemodel) pair "
                        f"of paths, not {_kind(value)}")
    require_destination(value[0], func, f"{arg}[0] (the prototxt)")
    require_destination(value[1], func, f"{arg}[1] (the caffemodel)", optional=True)
