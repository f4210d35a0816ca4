"""Binary-weight fork layers, TEST phase, in the working dtype.

Which rule a layer follows (sign of 0, alpha axes, alpha before or after the bias) is
the table :mod:`bnfuse.layertypes.binary`; the arithmetic here is the verifier's own:

- ``BinaryConvolution`` / ``BinaryInnerProduct``: ``B = sign(W)`` with the dialect's
  sign of 0, ``alpha_c = mean(|W_c|)`` over every axis but the output one, then either
  ``alpha * (x * B + b)`` (alpha after the bias) or ``x * (alpha B) + b``.
- ``Signum``: ``+1`` where ``x > 0``, else ``-1``.

A ``BinaryConvolution`` without a ``binary_convolution_param`` block is ambiguous (two
forks use the name); :func:`binary_conventions` names the convention per layer for a
run, and also makes a plain ``Convolution``/``InnerProduct`` run as binary (what
``binarize --verify`` checks the binarized net against).

Example:
    >>> w = np.array([[0.5, -1.5, 0.0]], np.float32)
    >>> b, alpha = binary_weights(w, zero_to=-1)
    >>> b.tolist(), alpha.tolist()
    ([[1.0, -1.0, -1.0]], [0.6666666865348816])
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from bnfuse.layertypes._forks import Field, read_block
from bnfuse.layertypes.binary import (
    OWN_BLOCKS,
    SIGN_ACTIVATIONS,
    BinaryDialect,
    alpha_axes,
    binary_dialect,
)

if TYPE_CHECKING:
    from bnfuse.verification.executor import LayerLike

Array = npt.NDArray[Any]

_CONVENTIONS: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "bnfuse_binary_conventions", default=None)


@contextlib.contextmanager
def binary_conventions(conventions: Mapping[str, str]) -> Iterator[None]:
    """Run the named layers (by layer name) with the named binary convention.

    Example:
        >>> with binary_conventions({"conv": "zzqiuzz"}):
        ...     convention_of("conv"), convention_of("other")
        ('zzqiuzz', None)
    """
    token = _CONVENTIONS.set(dict(conventions))
    try:
        yield
    finally:
        _CONVENTIONS.reset(token)


def convention_of(name: str) -> str | None:
    """The convention :func:`binary_conventions` names for layer ``name`` (None: none)."""
    given = _CONVENTIONS.get()
    return None if given is None else given.get(name)


def binary_weights(weight: Array, *, zero_to: int) -> tuple[Array, Array]:
    """``(sign(W), alpha)`` in ``weight``'s dtype: the sign with 0 mapped to ``zero_to``,
    ``alpha`` the mean of ``|W|`` per output channel (axis 0).

    Example: see the module docstring.
    """
    t = weight.dtype.type
    signs: Array = np.where(weight > 0, t(1), np.where(weight < 0, t(-1), t(zero_to)))
    axes = alpha_axes(weight.ndim)
    size = int(np.prod([weight.shape[a] for a in axes], dtype=np.int64))
    # The forks divide a float sum by the count (kohuthonza's asum / n; zzqiuzz's gemv
    # with 1/n): equal up to one rounding, which the tolerance covers.
    alpha: Array = np.abs(weight).sum(axis=axes, dtype=weight.dtype) / t(size)
    return signs, alpha


def binary_layer_dialect(layer: LayerLike) -> BinaryDialect:
    """The rule ``layer`` runs with: its fork block read (only training switches are
    allowed), then :func:`~bnfuse.layertypes.binary.binary_dialect` with the convention
    :func:`binary_conventions` names for it.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "ip" type: "BinaryInnerProduct"
        ...   bottom: "x" top: "y" inner_product_param { num_output: 2 } }''')
        >>> binary_layer_dialect(net.layer("ip")).name
        'zzqiuzz'
    """
    block = OWN_BLOCKS.get(layer.type)
    if block is not None:
        # The fork's own fields are training switches; reading them refuses any other.
        read_block(layer, block[0], {name: Field("bool") for name in block[1]})
    return binary_dialect(layer, convention_of(layer.name))


def channel_vector(values: Array, ndim: int, axis: int) -> Array:
    """``values`` shaped to broadcast along ``axis`` of an ``ndim``-array.

    Example:
        >>> channel_vector(np.arange(3.0), 4, 1).shape
        (1, 3, 1, 1)
    """
    shape = [1] * ndim
    shape[axis] = values.size
    return values.reshape(shape)


def sign_zero_to(layer: LayerLike) -> int:
    """The sign a sign-like activation layer gives to an input of exactly 0.

    Example:
        >>> import bnfuse
        >>> sign_zero_to(bnfuse.load(b'layer { name: "s" type: "Signum" bottom: "x" '
        ...                          b'top: "y" }').layer("s"))
        -1
    """
    return SIGN_ACTIVATIONS[layer.type].zero_to


def sign_forward(x: Array, zero_to: int) -> Array:
    """``+1`` above 0, ``-1`` below, ``zero_to`` at 0, in ``x``'s dtype.

    Example:
        >>> sign_forward(np.array([-2.0, 0.0, 3.0], np.float32), -1)
        array([-1., -1.,  1.], dtype=float32)
    """
    t = x.dtype.type
    out: Array = np.where(x > 0, t(1), np.where(x < 0, t(-1), t(zero_to)))
    return out




def verify_binarized(original: Any, binarized: Any, *, conventions: Mapping[str, str],
                     plain: Mapping[str, str] | None = None, **options: Any) -> Any:
    """:func:`bnfuse.verify` of ``binarized`` against ``original`` run with its binary
    semantics (not a full-precision run): ``conventions`` names the convention of each
    ambiguous or plain layer; ``plain`` maps each plain layer declared binary-trained to
    its binary type, which ``original`` (changed in place) is given for the run.
    ``options`` are :func:`~bnfuse.verification.compare.verify`'s.

    Example:
        >>> import bnfuse
        >>> text = b'''input: "x" input_shape { dim: 1 dim: 2 }
        ... layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        ...         inner_product_param { num_output: 2 bias_term: false } }
        ... layer { name: "s" type: "Scale" bottom: "y" top: "y" }'''
        >>> def build():
        ...     net = bnfuse.load(text)
        ...     net.set_blobs(net.layer("ip"), [np.array([[0.5, -1.5], [2.0, 0.0]])])
        ...     net.set_blobs(net.layer("s"), [np.array([1.0, -2.0])])
        ...     return net
        >>> result = bnfuse.binarize_net(build(), layers=["ip"], convention="zzqiuzz")
        >>> verify_binarized(build(), result.net, conventions=result.report.conventions(),
        ...                  plain=result.report.declared()).passed
        True
    """
    from bnfuse.verification.compare import verify

    for name, binary_type in (plain or {}).items():
        original.set_type(original.layer(name), binary_type)
    with binary_conventions(conventions):
        return verify(original, binarized, **options)


__all__ = ["binary_conventions", "binary_layer_dialect", "binary_weights", "channel_vector",
           "convention_of", "sign_forward", "sign_zero_to", "verify_binarized"]
