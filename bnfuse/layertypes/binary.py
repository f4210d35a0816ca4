"""Binary-weight dialects: the one table of what each fork's binary layers compute.

Forks of Caffe that train binary-weight nets (BWN / XNOR-Net style) keep full-precision
latent weights ``W`` and run, at TEST time, ``alpha_c * sign(W_c)`` per output channel
``c``. They differ in the facts that decide exactness, which this table states once:

- ``zero_to``: the sign a weight of exactly 0 gets (+1 or -1);
- the alpha axes: ``alpha_c`` is the mean of ``|W_c|`` over every axis of blob 0 but the
  first (a Convolution's ``C_in/group * kh * kw``, an InnerProduct's ``K``), so for a
  grouped convolution the mean runs over one group's input channels;
- ``alpha_after_bias``: whether alpha multiplies the output after the bias was added
  (the bias is scaled too) or the weights before it (the bias is not).

The fork layers have the blobs and params of their BVLC counterparts (``convolution_param``
/ ``inner_product_param``; :data:`PLAIN_TYPE`), so shapes and weight layout are the BVLC
rules. Sources (read for these facts; see ``docs/binary.md``):

- ``kohuthonza``: kohuthonza/caffe ``src/caffe/layers/binary_conv_layer.cpp``
  (``BinaryConvolution``; ``w > 0`` is +1, else -1; alpha = ``asum / (C_in/g*kh*kw)``;
  alpha applied after the bias) and ``src/caffe/layers/signum_layer.cpp`` (``Signum``:
  ``x > 0`` is +1, else -1). Its ``binary_convolution_param`` (LayerParameter field 147)
  holds two training-only switches.
- ``zzqiuzz``: zzqiuzz/caffe-zz ``src/caffe/layers/binary_conv_layer.cpp`` and
  ``binary_inner_product_layer.cpp`` (CPU; ``w >= 0`` is +1; alpha = mean ``|W|`` per row
  of blob 0; the weights are ``alpha * sign(W)``, the bias added after). Its ``.cu`` files
  hold unresolved merge conflicts, so the CPU code is the semantics.

Example:
    >>> d = DIALECTS["kohuthonza"]
    >>> d.zero_to, d.alpha_after_bias, alpha_axes(4)
    (-1, True, (1, 2, 3))
    >>> sorted(BINARY_TYPES), PLAIN_TYPE["BinaryInnerProduct"]
    (['BinaryConvolution', 'BinaryInnerProduct'], 'InnerProduct')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from bnfuse.layertypes._base import LayerLike, unsupported


@dataclass(frozen=True)
class BinaryDialect:
    """One fork's binary-weight rule.

    Example:
        >>> DIALECTS["zzqiuzz"].zero_to, DIALECTS["zzqiuzz"].alpha_after_bias
        (1, False)
    """

    name: str
    zero_to: int
    alpha_after_bias: bool
    source: str
    #: The fork layer types that follow this rule.
    types: frozenset[str]


@dataclass(frozen=True)
class SignActivation:
    """A fork's sign-like activation: ``+1`` above 0, ``-1`` below, ``zero_to`` at 0.

    ``runs``: whether the numpy executor runs it (``BinActiv`` has a second top, the
    XNOR-Net scaling map, which bnfuse does not compute).

    Example:
        >>> SIGN_ACTIVATIONS["Signum"].zero_to, SIGN_ACTIVATIONS["BinActiv"].zero_to
        (-1, 1)
    """

    type: str
    zero_to: int
    source: str
    runs: bool


DIALECTS: Mapping[str, BinaryDialect] = MappingProxyType({
    "kohuthonza": BinaryDialect(
        "kohuthonza", zero_to=-1, alpha_after_bias=True,
        source="kohuthonza/caffe src/caffe/layers/binary_conv_layer.cpp",
        types=frozenset({"BinaryConvolution"})),
    "zzqiuzz": BinaryDialect(
        "zzqiuzz", zero_to=1, alpha_after_bias=False,
        source="zzqiuzz/caffe-zz src/caffe/layers/binary_conv_layer.cpp, "
               "binary_inner_product_layer.cpp",
        types=frozenset({"BinaryConvolution", "BinaryInnerProduct"})),
})

#: The BVLC type whose blobs and params each binary type has.
PLAIN_TYPE: Mapping[str, str] = MappingProxyType({
    "BinaryConvolution": "Convolution",
    "BinaryInnerProduct": "InnerProduct",
})
BINARY_TYPES = frozenset(PLAIN_TYPE)

SIGN_ACTIVATIONS: Mapping[str, SignActivation] = MappingProxyType({
    "Signum": SignActivation("Signum", -1, "kohuthonza/caffe src/caffe/layers/signum_layer.cpp",
                             runs=True),
    "BinActiv": SignActivation(
        "BinActiv", 1, "XNOR-Net Caffe ports, src/caffe/ex_layers/binactiv_layer.cpp "
        "(sign(x) = x >= 0 ? 1 : -1); the repository is not established", runs=False),
})

#: The fork block each binary type may carry, with the fields it holds (all training-only).
OWN_BLOCKS: Mapping[str, tuple[str, tuple[str, ...]]] = MappingProxyType({
    "BinaryConvolution": ("binary_convolution_param",
                          ("update_weight_diff", "scale_weight_diff")),
})


def alpha_axes(weight_ndim: int) -> tuple[int, ...]:
    """The axes of blob 0 that ``alpha`` averages ``|W|`` over: all but the output axis.

    Example:
        >>> alpha_axes(2), alpha_axes(4)
        ((1,), (1, 2, 3))
    """
    return tuple(range(1, weight_ndim))


def _has_block(layer: LayerLike, block: str) -> bool:
    return any(str(name).partition(".")[0] == block
               for name in getattr(layer, "unknown_fields", ()))


def binary_dialect(layer: LayerLike, convention: str | None = None) -> BinaryDialect:
    """The binary rule ``layer`` runs with.

    A plain ``Convolution``/``InnerProduct`` needs ``convention`` (the user declares it
    binary-trained). ``BinaryInnerProduct`` is zzqiuzz's. ``BinaryConvolution`` is named
    by two forks: a ``binary_convolution_param`` block says kohuthonza's, otherwise
    ``convention`` must choose. A transposed inner product is refused (zzqiuzz's alpha
    index then runs over the wrong axis).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''layer { name: "b" type: "BinaryConvolution" bottom: "x"
        ...   top: "y" convolution_param { num_output: 2 kernel_size: 1 }
        ...   binary_convolution_param { update_weight_diff: false } }''')
        >>> binary_dialect(net.layer("b")).name
        'kohuthonza'
    """
    plain = layer.type in PLAIN_TYPE.values()
    if not plain and layer.type not in BINARY_TYPES:
        raise unsupported(layer, "not a binary-weight layer type")
    if layer.type in ("InnerProduct", "BinaryInnerProduct") \
            and layer.param.inner_product_param.transpose:
        raise unsupported(layer, "a transposed binary inner product: the forks' alpha is "
                                 "defined for (num_output, K) weights only")
    if convention is not None:
        dialect = DIALECTS.get(convention)
        if dialect is None:
            raise unsupported(layer, f"unknown binary convention {convention!r}; known: "
                                     f"{sorted(DIALECTS)}")
        if not plain and layer.type not in dialect.types:
            raise unsupported(layer, f"the {convention} fork has no {layer.type}")
        return dialect
    if plain:
        raise unsupported(layer, "a plain layer runs as binary only with a convention "
                                 f"({', '.join(sorted(DIALECTS))})")
    owners = [d for d in DIALECTS.values() if layer.type in d.types]
    if len(owners) == 1:
        return owners[0]
    block = OWN_BLOCKS.get(layer.type)
    if block is not None and _has_block(layer, block[0]):
        return DIALECTS["kohuthonza"]
    raise unsupported(layer, f"{layer.type} is ambiguous: the forks "
                             f"{', '.join(d.name for d in owners)} differ in the sign of 0 "
                             "and where alpha applies; name the convention")


__all__ = [
    "BINARY_TYPES",
    "DIALECTS",
    "OWN_BLOCKS",
    "PLAIN_TYPE",
    "SIGN_ACTIVATIONS",
    "BinaryDialect",
    "SignActivation",
    "alpha_axes",
    "binary_dialect",
]
