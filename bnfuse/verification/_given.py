"""Inputs given to :func:`bnfuse.verify`: a mapping of arrays or an ``--inputs`` ``.npz``.

Everything here is checked before a value is read or cast: names against the net's
inputs, shapes against the declared ones, dtypes (real numbers only, no pickles), and the
sizes against the memory budget. Anything wrong is a one-line
:class:`~bnfuse.errors.BnfuseError` naming the file (or ``inputs:`` for a mapping).
:func:`load_inputs` is public through :mod:`bnfuse.verification.compare`.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "in.npz"
    >>> np.savez(path, data=np.zeros((1, 3, 2, 2), np.float32))
    >>> npz_input_shapes(path, {"data": (1, 3, 2, 2)}, 2**20)
    {'data': (1, 3, 2, 2)}
"""

from __future__ import annotations

import math
import os
import stat
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import numpy.typing as npt

from bnfuse._text import escape_user_text, quote_user_text
from bnfuse.errors import BnfuseError
from bnfuse.verification.budget import default_max_memory, format_size
from bnfuse.verification.inputs import input_layer_shapes, net_input_shapes, seeded_inputs

if TYPE_CHECKING:
    from bnfuse.net import Net

Array = npt.NDArray[Any]
#: Inputs for :func:`~bnfuse.verification.compare.verify`: name -> array, or a ``.npz``
#: file (keys ``name`` or ``input:name``).
Inputs = Mapping[str, npt.ArrayLike] | str | os.PathLike[str]


#: More members than this in an inputs ``.npz`` is not a set of net inputs.
MAX_INPUT_MEMBERS = 4096
#: Largest ``.npy`` header read from an inputs file (numpy's own default limit).
_MAX_NPY_HEADER = 10_000


@dataclass(frozen=True)
class _Member:
    """One array of an inputs ``.npz``, known from its header before any data is read."""

    name: str  # the zip member
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    stored: int  # uncompressed bytes the archive says the member has
    header: int  # bytes of its .npy header

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _input_problem(key: str, shape: tuple[int, ...], dtype: np.dtype[Any],
                   expected: Mapping[str, tuple[int, ...] | None] | None) -> str | None:
    """Why an array cannot be fed as input ``key`` (None: it can); no data is touched."""
    if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None:
        kind = ("object" if dtype.hasobject else
                "structured" if dtype.names is not None else "sub-array")
        return (f"input {quote_user_text(key)} is an array of {kind} dtype {dtype}; inputs "
                "must be real numbers (float or int)")
    if dtype.kind not in "fiu":
        return (f"input {quote_user_text(key)} has dtype {dtype}; inputs must be real numbers "
                "(float or int)")
    if expected is None:
        return None
    if key not in expected:
        names = ", ".join(quote_user_text(n, 60) for n in list(expected)[:20])
        more = f" and {len(expected) - 20} more" if len(expected) > 20 else ""
        return (f"{quote_user_text(key)} is not an input of the net (its inputs: "
                f"{names or 'none'}{more}); a misnamed input would be replaced by random data")
    wanted = expected[key]
    if wanted is not None and tuple(shape) != tuple(wanted):
        return (f"input {quote_user_text(key)} has shape {tuple(shape)}, the net expects "
                f"{tuple(wanted)}")
    return None


def _read_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...],
                                                                       np.dtype[Any], int]:
    """Shape, dtype and header length of one ``.npy`` member, from its header alone."""
    with zf.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(
                member, max_header_size=_MAX_NPY_HEADER)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(
                member, max_header_size=_MAX_NPY_HEADER)
        else:
            raise ValueError(f".npy format version {version} is not one numpy.savez writes "
                             "for numbers")
        return tuple(int(d) for d in shape), np.dtype(dtype), member.tell()


def _npz_members(path: Path, max_bytes: int) -> tuple[BinaryIO, zipfile.ZipFile,
                                                       dict[str, _Member]]:
    """Open an inputs ``.npz`` and read every member's header; refuse what is not inputs.

    Returns the open file and archive (the caller closes both) and the members by key,
    after the ``input:`` rule (keys ``input:<name>`` when any member has one, else every
    key).
    """
    shown = escape_user_text(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it.
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise BnfuseError(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise BnfuseError(f"{shown}: is a folder; pass the .npz file of the inputs") from None
    except OSError as exc:
        raise BnfuseError(f"{shown}: cannot read the inputs: {exc.strerror or exc}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            raise BnfuseError(f"{shown}: is a folder; pass the .npz file of the inputs")
        raise BnfuseError(f"{shown}: is not a regular file (a FIFO, device or socket); "
                          "pass the .npz file of the inputs")
    handle = os.fdopen(fd, "rb")
    try:
        if info.st_size == 0:
            raise BnfuseError(f"{shown}: the inputs file is empty; write it with "
                              "numpy.savez(path, data=array)")
        if info.st_size > max_bytes:
            raise BnfuseError(f"{shown}: the inputs file is {info.st_size:,} bytes, more than "
                              f"the memory budget of {format_size(max_bytes)} "
                              f"({max_bytes:,} bytes)")
        if handle.read(6) == b"\x93NUMPY":
            raise BnfuseError(f"{shown}: is a .npy file (one unnamed array); --inputs needs a "
                              ".npz that names each input: numpy.savez(path, data=array)")
        handle.seek(0)
        try:
            zf = zipfile.ZipFile(handle)
            infos = zf.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
                NotImplementedError) as exc:
            raise BnfuseError(f"{shown}: is not a .npz (zip) file: "
                              f"{escape_user_text(exc, 120)}") from None
        if not infos:
            raise BnfuseError(f"{shown}: holds no arrays")
        if len(infos) > MAX_INPUT_MEMBERS:
            raise BnfuseError(f"{shown}: holds {len(infos):,} members, more than the "
                              f"{MAX_INPUT_MEMBERS} a set of net inputs can have")
        keys = {zinfo.filename[:-4] if zinfo.filename.endswith(".npy") else zinfo.filename:
                zinfo for zinfo in infos}
        if len(keys) != len(infos):
            raise BnfuseError(f"{shown}: names an array twice")
        if any(key.startswith("input:") for key in keys):
            keys = {key[len("input:"):]: zinfo for key, zinfo in keys.items()
                    if key.startswith("input:")}
        members: dict[str, _Member] = {}
        for key, zinfo in keys.items():
            where = f"{shown}: member {quote_user_text(zinfo.filename)}"
            if not zinfo.filename.endswith(".npy"):
                raise BnfuseError(f"{where} is not a .npy array")
            if zinfo.flag_bits & 0x1:
                raise BnfuseError(f"{where} is encrypted")
            try:
                shape, dtype, header = _read_header(zf, zinfo)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error,
                    NotImplementedError, RuntimeError) as exc:
                raise BnfuseError(f"{where}: not a readable .npy header: "
                                  f"{escape_user_text(exc, 120)}") from None
            members[key] = _Member(zinfo.filename, shape, dtype, zinfo.file_size, header)
        return handle, zf, members
    except BaseException:
        handle.close()
        raise


@contextmanager
def _open_npz(path: Path, expected: Mapping[str, tuple[int, ...] | None] | None,
              max_bytes: int) -> Iterator[tuple[zipfile.ZipFile, dict[str, _Member]]]:
    """The archive and its members, every header checked (against the net when
    ``expected`` is given) before the caller reads any data."""
    handle, zf, members = _npz_members(path, max_bytes)
    try:
        shown = escape_user_text(path)
        for key, member in members.items():
            problem = _input_problem(key, member.shape, member.dtype, expected)
            if problem is not None:
                raise BnfuseError(f"{shown}: {problem}")
            if member.nbytes > max_bytes:
                raise BnfuseError(
                    f"{shown}: member {quote_user_text(member.name)}: the array "
                    f"{quote_user_text(key)} of shape {member.shape} and dtype {member.dtype} "
                    f"would take {format_size(member.nbytes)} ({member.nbytes:,} bytes), more "
                    f"than the memory budget of {format_size(max_bytes)}")
            if member.stored < member.header + member.nbytes:
                raise BnfuseError(f"{shown}: member {quote_user_text(member.name)}: holds "
                                  f"{member.stored:,} bytes, its header announces "
                                  f"{member.header + member.nbytes:,}: the file is truncated "
                                  "or corrupt")
        total = sum(member.nbytes for member in members.values())
        if total > max_bytes:
            raise BnfuseError(f"{shown}: the arrays would take {format_size(total)} ({total:,} "
                              f"bytes), more than the memory budget of {format_size(max_bytes)}")
        yield zf, members
    finally:
        zf.close()
        handle.close()


def npz_input_shapes(path: Path, expected: Mapping[str, tuple[int, ...] | None] | None,
                      max_bytes: int) -> dict[str, tuple[int, ...]]:
    """The shape of every input an ``.npz`` holds, checked against the net, from headers."""
    with _open_npz(path, expected, max_bytes) as (_, members):
        return {key: member.shape for key, member in members.items()}


def load_inputs(
    path: str | os.PathLike[str],
    expected: Mapping[str, tuple[int, ...] | None] | None = None,
    *,
    max_bytes: int | None = None,
) -> dict[str, Array]:
    """Read inputs from a ``.npz`` file: keys ``input:<name>`` when present, else every key.

    The golden fixtures' ``blobs.npz`` files work as they are. Nothing is read before
    every member's header has been checked: a ``.npy`` member of real numbers (no
    pickles, no object or structured arrays), at most ``max_bytes`` in all (default:
    :func:`~bnfuse.verification.budget.default_max_memory`), the file itself no larger.
    With ``expected`` (name -> shape, ``None`` for any shape; see
    :func:`~bnfuse.verification.inputs.net_input_shapes`) every key must be one of its
    names and every shape the expected one. Any problem is a one-line
    :class:`~bnfuse.errors.BnfuseError` naming the file.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "blobs.npz"
        >>> np.savez(path, **{"input:data": np.zeros((1, 3, 4, 4)), "prob": np.ones((1, 10))})
        >>> {name: value.shape for name, value in load_inputs(path).items()}
        {'data': (1, 3, 4, 4)}
        >>> load_inputs(path, {"data": (1, 3, 8, 8)})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        bnfuse.errors.BnfuseError: ...blobs.npz: input 'data' has shape (1, 3, 4, 4), the net \
expects (1, 3, 8, 8)
    """
    source = Path(path)
    budget = default_max_memory() if max_bytes is None else max_bytes
    result: dict[str, Array] = {}
    with _open_npz(source, expected, budget) as (zf, members):
        for key, member in members.items():
            try:
                with zf.open(member.name) as stream:
                    array = np.lib.format.read_array(stream, allow_pickle=False)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error,
                    RuntimeError) as exc:
                raise BnfuseError(f"{escape_user_text(source)}: member "
                                  f"{quote_user_text(member.name)}: cannot read the array: "
                                  f"{escape_user_text(exc, 120)}") from None
            if array.shape != member.shape or array.dtype != member.dtype:
                raise BnfuseError(f"{escape_user_text(source)}: member "
                                  f"{quote_user_text(member.name)} does not hold what its "
                                  "header announces")
            result[key] = array
    return result


def mapping_input_shapes(inputs: Mapping[str, npt.ArrayLike],
                          expected: Mapping[str, tuple[int, ...] | None]
                          ) -> dict[str, tuple[int, ...]]:
    """Shapes of inputs given as a mapping, checked against the net before any cast."""
    shapes: dict[str, tuple[int, ...]] = {}
    for key, value in inputs.items():
        if not isinstance(key, str):
            raise TypeError(f"verify: the keys of inputs must be blob names (str), not "
                            f"{type(key).__name__}")
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        problem = _input_problem(key, tuple(array.shape), array.dtype, expected)
        if problem is not None:
            raise BnfuseError(f"inputs: {problem}")
        shapes[key] = tuple(int(d) for d in array.shape)
    return shapes


def given_input_shapes(net: Net, inputs: Inputs | None,
                        max_bytes: int) -> dict[str, tuple[int, ...]] | None:
    """The shapes of the given inputs, every name and shape checked against net ``a``."""
    if inputs is None:
        return None
    expected = net_input_shapes(net.layers)
    if isinstance(inputs, (str, os.PathLike)):
        return npz_input_shapes(Path(inputs), expected, max_bytes)
    return mapping_input_shapes(inputs, expected)


def resolve_inputs(net: Net, inputs: Inputs | None, seed: int,
                    dtype: npt.DTypeLike, max_bytes: int | None = None) -> dict[str, Array]:
    if inputs is None:
        return seeded_inputs(input_layer_shapes(net.layers), seed, dtype)
    expected = net_input_shapes(net.layers)
    if isinstance(inputs, (str, os.PathLike)):
        loaded = load_inputs(inputs, expected, max_bytes=max_bytes)
    else:
        mapping_input_shapes(inputs, expected)
        loaded = {name: np.asarray(value) for name, value in inputs.items()}
    return {name: np.asarray(value, dtype=dtype) for name, value in loaded.items()}


__all__ = [
    "MAX_INPUT_MEMBERS",
    "Inputs",
    "given_input_shapes",
    "load_inputs",
    "mapping_input_shapes",
    "npz_input_shapes",
    "resolve_inputs",
]
