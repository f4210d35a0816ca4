"""How much a net's blobs move when its weights move by one unit in the last place.

A fold rounds each new weight to its dtype once, half an ulp at most, and computes in
another order; a correct fold can therefore not be told apart from the original better
than the net itself tells apart two weight sets one ulp apart. :func:`perturbed` gives a
view of a net whose every weight value is moved one ulp up or down (seeded random
signs, in the blob's own dtype: float32 for nearly every caffemodel); running it next
to the original measures, per blob, the noise a fold's error is judged against (see
:func:`bnfuse.verification.compare.verify`). Deep nets with random weights amplify
rounding a great deal: on a 60-convolution plain chain a one-ulp change moves the last
blob by 4e-2 of its largest value, and a correct fold by 7e-2, where a ResNet-style
net of the same depth stays below 1e-5.

The view shares everything but the weights with the original, so the verifier never
edits the net it checks, and never needs :mod:`bnfuse.folding`.

Example:
    >>> import bnfuse
    >>> net = bnfuse.load(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
    >>> moved = perturbed(net, seed=0)
    >>> weight, moved_weight = net.layer("conv1").blobs[0], moved.layers[1].blobs[0]
    >>> ulps = np.abs(moved_weight.view(np.int32).astype(np.int64) - weight.view(np.int32))
    >>> int(ulps.max()), moved.layers[1].name, net.layer("conv1").blobs[0] is weight
    (1, 'conv1', True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from bnfuse._checks import require_seed
from bnfuse.graph import build_graph
from bnfuse.layertypes.shapes import is_input_layer
from bnfuse.verification.detections import detection_rules
from bnfuse.verification.executor import forward_steps
from bnfuse.verification.metrics import Noise, blob_kind, blob_noise

if TYPE_CHECKING:
    from bnfuse import proto
    from bnfuse.layertypes._base import LayerLike, NetLike

Array = npt.NDArray[Any]


class PerturbedLayer:
    """A layer seen with other weights: every other attribute is the wrapped layer's.

    Example:
        >>> import bnfuse
        >>> layer = bnfuse.load(b'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }').layers[0]
        >>> view = PerturbedLayer(layer, ())
        >>> view.name, view.tops, view.in_place
        ('r', ('y',), False)
    """

    __slots__ = ("_blobs", "_layer")

    def __init__(self, layer: LayerLike, blobs: Sequence[Array]) -> None:
        self._layer = layer
        self._blobs = tuple(blobs)

    @property
    def name(self) -> str:
        """The wrapped layer's name."""
        return self._layer.name

    @property
    def type(self) -> str:
        """The wrapped layer's type."""
        return self._layer.type

    @property
    def bottoms(self) -> Sequence[str]:
        """The wrapped layer's bottoms."""
        return self._layer.bottoms

    @property
    def tops(self) -> Sequence[str]:
        """The wrapped layer's tops."""
        return self._layer.tops

    @property
    def param(self) -> proto.LayerParameter:
        """The wrapped layer's typed parameters."""
        return self._layer.param

    @property
    def blobs(self) -> tuple[Array, ...]:
        """The moved weights."""
        return self._blobs

    def __getattr__(self, name: str) -> Any:
        # Fork fields, the text, in_place...: whatever the executor asks the real layer.
        return getattr(self._layer, name)


class PerturbedNet:
    """The layers of a net, each weight moved by one ulp (see :func:`perturbed`)."""

    __slots__ = ("_layers",)

    def __init__(self, layers: Sequence[LayerLike]) -> None:
        self._layers = tuple(layers)

    @property
    def layers(self) -> tuple[LayerLike, ...]:
        """The layers in execution order."""
        return self._layers


def one_ulp(values: npt.ArrayLike, rng: np.random.Generator) -> Array:
    """``values`` each moved one ulp of their own dtype, up or down at random.

    Zeros, non-float and non-finite values are kept: a fold keeps an exact zero exact
    (``0 * s``), and a zero can mean something (a BatchNorm scale factor of 0). Signs are
    drawn for every element, so the draw depends on the sizes only, never on the values.

    Example:
        >>> moved = one_ulp(np.array([1.0, -2.0, 0.0], np.float32), np.random.default_rng(0))
        >>> np.abs(moved - np.array([1.0, -2.0, 0.0], np.float32)).tolist()
        [5.960464477539063e-08, 1.1920928955078125e-07, 0.0]
    """
    array = np.asarray(values)
    up = rng.random(array.shape) < 0.5
    if array.dtype.kind != "f":
        return np.array(array)
    towards = np.where(up, np.inf, -np.inf).astype(array.dtype)
    # NaN and inf stay as they are (np.where keeps them); nextafter must not warn on them,
    # and the largest finite value steps down rather than up to an infinity.
    with np.errstate(all="ignore"):
        stepped = np.nextafter(array, towards)
        stepped = np.where(np.isfinite(stepped), stepped, np.nextafter(array, -towards))
    moved: Array = np.where(np.isfinite(array) & (array != 0), stepped, array)
    return moved.astype(array.dtype, copy=False)


def perturbed(net: NetLike, seed: int = 0) -> PerturbedNet:
    """A view of ``net`` with every weight moved one ulp (signs from ``default_rng(seed)``).

    The layers keep their order, names, parameters and text; layers without weights are
    the original objects. The net itself is not changed.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
        >>> a, b = perturbed(net, seed=1), perturbed(net, seed=1)
        >>> bool((a.layers[1].blobs[0] == b.layers[1].blobs[0]).all())  # seeded: replayable
        True
        >>> a.layers[2] is net.layers[2] or a.layers[2].type  # BatchNorm: has weights
        'BatchNorm'
    """
    rng = np.random.default_rng(require_seed(seed, "perturbed"))
    layers: list[LayerLike] = []
    for layer in net.layers:
        if not layer.blobs:
            layers.append(layer)
            continue
        layers.append(PerturbedLayer(layer, [one_ulp(blob, rng) for blob in layer.blobs]))
    return PerturbedNet(layers)


def measure_noise(
    net: NetLike,
    feed: Mapping[str, Array],
    *,
    dtype: npt.DTypeLike,
    seed: int,
    baseline: Mapping[str, Array] | None = None,
) -> dict[str, Noise]:
    """The noise of every blob of ``net``: its final value with every weight moved one ulp
    (:func:`perturbed`) against the unmoved one.

    Both runs are the numpy executor's on ``feed``; ``baseline`` is the unmoved run's
    values when the caller has them already (else the two runs go in step). Each blob is
    reduced to its :class:`Noise` as soon as its final value exists, so the moved run's
    values are never all held next to the caller's.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
        >>> feed = {"data": np.random.default_rng(0).standard_normal((1, 3, 32, 32))}
        >>> noise = measure_noise(net, feed, dtype=np.float32, seed=0)
        >>> sorted(noise)[:3], 0 < noise["prob"].rel < 1e-5
        (['conv1', 'conv2', 'conv2/bn'], True)
    """
    graph = build_graph(net.layers)
    final = {name: index for layer in net.layers for name in layer.tops
             if (index := graph.last_writer(name)) is not None}
    unmoved = None if baseline is not None else forward_steps(net, feed, dtype=dtype)
    noise: dict[str, Noise] = {}
    moved_steps = forward_steps(perturbed(net, seed), feed, dtype=dtype)
    for index, (layer, tops) in enumerate(moved_steps):
        reference: Mapping[str, Array] = ((baseline or {}) if unmoved is None
                                          else next(unmoved)[1])
        if is_input_layer(layer):
            continue
        for name, value in tops.items():
            if final.get(name) != index or name not in reference:
                continue
            kind = blob_kind(layer, name)
            rules = detection_rules(layer) if kind == "detections" else None
            noise[name] = blob_noise(kind, reference[name], value, rules)
    return noise


__all__ = ["PerturbedLayer", "PerturbedNet", "measure_noise", "one_ulp", "perturbed"]
