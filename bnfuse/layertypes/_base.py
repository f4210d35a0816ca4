"""What every module of :mod:`bnfuse.layertypes` shares: protocols, blob type, type names.

The package reads layers and nets structurally (``bnfuse.net.Layer`` and ``Net`` fit, and
so does any object with these attributes), so it needs neither the loader nor the verifier.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bnfuse import graph, proto
from bnfuse._text import quote_user_text
from bnfuse.errors import UnsupportedLayerError

#: Layer types that are a grouped convolution with one group per input channel (forks).
DEPTHWISE_TYPES = frozenset({"ConvolutionDepthwise", "DepthwiseConvolution"})
#: Every convolution-like type: weights ``(Cout, Cin/group, *kernel)``.
CONV_TYPES = frozenset({"Convolution"}) | DEPTHWISE_TYPES

#: A blob shape, one extent per axis.
Shape = tuple[int, ...]
#: One axis of a weight blob: its extent, or None when it depends on unknown bottom shapes.
Dim = int | None


class LayerLike(graph.LayerLike, Protocol):
    """What layer knowledge (and the executor) reads from a layer.

    It extends :class:`bnfuse.graph.LayerLike` (``name``, ``type``, ``bottoms``,
    ``tops``) with the two attributes the shapes and the arithmetic need; it is the one
    protocol for a layer with parameters and weights. ``bnfuse.net.Layer`` satisfies it.

    Example:
        >>> from types import SimpleNamespace
        >>> from bnfuse.layertypes.shapes import layer_output_shapes
        >>> relu = SimpleNamespace(name="r", type="ReLU", bottoms=("x",), tops=("y",),
        ...                        param=proto.LayerParameter(type="ReLU"), blobs=[])
        >>> layer_output_shapes(relu, [(2, 3)])
        [(2, 3)]
    """

    @property
    def param(self) -> proto.LayerParameter:
        """The typed layer parameters."""

    @property
    def blobs(self) -> Sequence[Any]:
        """Weight blobs (arrays, possibly read-only views), empty when there are none."""


class NetLike(Protocol):
    """Anything with the TEST-phase layers in order.

    Example:
        >>> import bnfuse
        >>> from bnfuse.layertypes.shapes import infer_shapes
        >>> net = bnfuse.load(bnfuse.example_path("prototxt"))
        >>> infer_shapes(net)["fc"]
        (1, 10)
    """

    @property
    def layers(self) -> Sequence[LayerLike]:
        """The layers in execution order."""


@dataclass(frozen=True)
class Blob:
    """One weight blob of a layer as Caffe creates it: its role and its shape.

    ``shape`` has ``None`` for an axis that depends on a bottom shape bnfuse was not given.
    ``rank_known`` is False when even the number of axes depends on it (a convolution
    with one ``kernel_size`` for every spatial axis): ``shape`` then lists the leading
    axes only. Roles: ``weight`` (the matrix a convolution or inner product sums products
    with), ``bias`` (added to its output), ``scale``/``shift`` (a per-channel factor and
    offset), ``slope`` (PReLU) and the BatchNorm dialects' roles
    (:attr:`bnfuse.layertypes.batchnorm.Dialect.roles`).

    Example:
        >>> str(Blob("weight", (64, None, 3, 3))), str(Blob("weight", (64, None), False))
        ('weight (64, ?, 3, 3)', 'weight (64, ?, ...)')
        >>> str(Blob("bias", (64,))), str(Blob("slope", ()))
        ('bias (64,)', 'slope ()')
    """

    role: str
    shape: tuple[Dim, ...]
    rank_known: bool = True

    def __str__(self) -> str:
        return f"{self.role} {self.shape_text}"

    @property
    def shape_text(self) -> str:
        """The shape as messages show it: ``?`` for an unknown axis, ``...`` for more axes.

        Example:
            >>> Blob("shift", (None,)).shape_text, Blob("shift", (), rank_known=False).shape_text
            ('(?,)', '(...)')
        """
        dims = ["?" if d is None else str(d) for d in self.shape]
        if not self.rank_known:
            dims.append("...")
        elif len(dims) == 1:
            dims.append("")  # Python's spelling of a 1-tuple: (8,)
        return f"({', '.join(dims).rstrip()})"

    @property
    def resolved(self) -> Shape | None:
        """The shape when every axis is known, else None.

        Example:
            >>> Blob("bias", (8,)).resolved, Blob("weight", (8, None)).resolved
            ((8,), None)
        """
        if not self.rank_known or any(d is None for d in self.shape):
            return None
        return tuple(d for d in self.shape if d is not None)

    def fits(self, shape: Sequence[int]) -> bool:
        """True when ``shape`` has every axis this description knows.

        Example:
            >>> Blob("weight", (8, None), False).fits((8, 3, 3, 3)), Blob("bias", (8,)).fits((4,))
            (True, False)
        """
        if len(shape) < len(self.shape) or (self.rank_known and len(shape) != len(self.shape)):
            return False
        leading = zip(self.shape, shape[: len(self.shape)], strict=True)
        return all(want is None or want == got for want, got in leading)


#: Output shapes of a layer from its bottom shapes.
ShapeRule = Callable[[LayerLike, Sequence[Shape]], list[Shape]]
#: The weight blobs of a layer, from its params, its bottom shapes (None: unknown) and the
#: number of blobs it holds (only the BatchNorm dialects depend on it).
Layout = Callable[[LayerLike, Sequence[Shape] | None, int], list[Blob]]


def where(layer: LayerLike) -> str:
    """How error messages name a layer.

    Example:
        >>> from types import SimpleNamespace
        >>> where(SimpleNamespace(name="conv1", type="Convolution"))
        "layer 'conv1' (type 'Convolution')"
    """
    return f"layer {quote_user_text(layer.name)} (type {quote_user_text(layer.type, 60)})"


def unsupported(layer: LayerLike, why: str) -> UnsupportedLayerError:
    """The error for a layer configuration bnfuse cannot shape or run.

    Example:
        >>> from types import SimpleNamespace
        >>> print(unsupported(SimpleNamespace(name="p", type="Pooling"), "no kernel"))
        layer 'p' (type 'Pooling'): no kernel
    """
    return UnsupportedLayerError(f"{where(layer)}: {why}")


__all__ = [
    "CONV_TYPES",
    "DEPTHWISE_TYPES",
    "Blob",
    "Dim",
    "LayerLike",
    "Layout",
    "NetLike",
    "Shape",
    "ShapeRule",
    "unsupported",
    "where",
]
