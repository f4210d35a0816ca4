"""Seeded random inputs: the one place verification draws the data it feeds a net.

Every path that makes up input data -- the executor filling inputs nobody gave,
:func:`bnfuse.verify` feeding both nets, the local check feeding a changed region
at its boundary -- calls :func:`seeded_inputs`, so the same seed and the same
shapes give the same arrays everywhere, and a result can be replayed.

Example:
    >>> import bnfuse
    >>> net = bnfuse.load(bnfuse.example_path("prototxt"))
    >>> shapes = input_layer_shapes(net.layers)
    >>> shapes
    {'data': (1, 3, 32, 32)}
    >>> data = seeded_inputs(shapes, seed=0)["data"]
    >>> data.dtype, bool((data == np.random.default_rng(0).standard_normal(
    ...     (1, 3, 32, 32)).astype(np.float32)).all())
    (dtype('float32'), True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from bnfuse._checks import require_seed

if TYPE_CHECKING:
    from bnfuse.verification.executor import LayerLike

Array = npt.NDArray[Any]
Shape = tuple[int, ...]


def seeded_inputs(
    shapes: Mapping[str, Sequence[int]], seed: int = 0, dtype: npt.DTypeLike = np.float32
) -> dict[str, Array]:
    """Standard-normal arrays for ``shapes``, drawn in order from ``default_rng(seed)``.

    Each array is drawn in float64 and then cast to ``dtype``, one after the other
    from a single generator, in the mapping's order: the order is part of the
    result (the second array depends on the size of the first).

    Example:
        >>> arrays = seeded_inputs({"a": (2,), "b": (1, 2)}, seed=3)
        >>> rng = np.random.default_rng(3)
        >>> expected = [rng.standard_normal((2,)), rng.standard_normal((1, 2))]
        >>> [bool((arrays[k] == e.astype(np.float32)).all()) for k, e in zip("ab", expected)]
        [True, True]
        >>> seeded_inputs({"a": (2,)}, seed=3, dtype=np.float64)["a"].dtype
        dtype('float64')
    """
    rng = np.random.default_rng(require_seed(seed, "seeded_inputs"))
    target = np.dtype(dtype)
    return {name: rng.standard_normal(tuple(int(d) for d in shape)).astype(target)
            for name, shape in shapes.items()}


def input_layer_shapes(layers: Sequence[LayerLike],
                       given: Mapping[str, Sequence[int]] | None = None,
                       *, required: bool = True) -> dict[str, Shape]:
    """The shape of every top of the input layers (``Input`` and data layers), in net order.

    What :func:`bnfuse.layertypes.shapes.input_layer_shapes` gives: the declared or
    stated shapes, ``given`` overriding them; a shape that cannot be known raises its
    error (or is left out with ``required=False``). A top declared twice keeps its last
    shape, at its first position.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''
        ... layer { name: "in" type: "Input" top: "image" top: "mask"
        ...         input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 }
        ...                       shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }
        ... ''')
        >>> input_layer_shapes(net.layers)
        {'image': (1, 3, 4, 4), 'mask': (1, 1, 4, 4)}
    """
    from bnfuse.layertypes.shapes import input_layer_shapes as stated

    return stated(layers, given, required=required)


def net_input_shapes(layers: Sequence[LayerLike]) -> dict[str, Shape | None]:
    """Every name a net can be fed, with its declared shape (``None``: any shape).

    The inputs are the tops of ``Input`` and data layers (their declared or stated shape,
    ``None`` where a data layer leaves it open) and the blobs read
    before any layer produces them (no declared shape). A value for any other name would
    be ignored, so the executor and :func:`bnfuse.verify` refuse one: a misnamed input
    must not silently become random data.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''
        ... layer { name: "in" type: "Input" top: "image"
        ...         input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
        ... layer { name: "sum" type: "Eltwise" bottom: "image" bottom: "image" top: "out" }
        ... ''')
        >>> net_input_shapes(net.layers)
        {'image': (1, 3, 4, 4)}
        >>> fragment = bnfuse.load(b'''  # no declared input: its open bottoms are inputs
        ... layer { name: "sum" type: "Eltwise" bottom: "image" bottom: "extra" top: "out" }
        ... ''')
        >>> net_input_shapes(fragment.layers)
        {'image': None, 'extra': None}
    """
    from bnfuse.graph import build_graph
    from bnfuse.layertypes.shapes import is_input_layer

    known = input_layer_shapes(layers, required=False)
    shapes: dict[str, Shape | None] = {}
    for layer in layers:
        if is_input_layer(layer):
            # A data layer's top whose shape the prototxt leaves open takes any shape.
            shapes.update({top: known.get(top) for top in layer.tops})
    for version in build_graph(layers).inputs():
        shapes.setdefault(version.name, None)
    return shapes


__all__ = ["input_layer_shapes", "net_input_shapes", "seeded_inputs"]
