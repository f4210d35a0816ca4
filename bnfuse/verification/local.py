"""Local verification: check only the part of a net that a fold changed.

The whole-net check (:func:`bnfuse.verification.compare.verify`) needs a backend that can
run every layer. Nets with ``Python`` layers, YOLO's ``Reorg``, ``ROIPooling`` or a
fork's own layers cannot be run by the numpy executor, yet their folds sit in plain
Convolution -> BatchNorm -> Scale chains. :func:`verify_local` checks those
chains directly:

1. **What changed.** Layers are matched by name. A layer is changed when it
   exists in only one net, or its type, bottoms, tops, typed params or weights
   differ. (Or pass the names a fold reported as ``changed``.)
2. **The region.** The changed layers of each net, plus every unchanged layer
   that lies on a path between two changed layers (so an in-place ReLU between a
   folded convolution and a forward-folded one is run too), minus layers the
   executor cannot run: their outputs become region inputs instead.
3. **The inputs.** Every blob a region layer reads that no earlier region layer
   wrote is a region input, fed the *same* seeded standard-normal data in both
   nets. Shapes come from shape inference on net ``a``, then net ``b``; where an
   unknown layer upstream leaves a shape unknown, it is read off the weights of the
   region layer that consumes it (a convolution's input channels, an inner product's
   input size, a BatchNorm's channel count) with a batch of 2 and a spatial size of 8
   (or the kernel's extent if larger).
   ``input_shapes`` overrides any of them.
4. **The comparison.** Both regions run in the numpy executor; every blob both
   regions write is compared exactly as :func:`~bnfuse.verification.compare.verify`
   does (same metric, same depth-scaled default tolerances, depth counted within
   the region), including the rule for blobs whose final value moved because a
   forward fold took the normalisation into a later layer.

Because every region input gets random data rather than the real upstream value,
the check proves that the changed layers compute the same *function*, which is
what a fold must preserve; it does not check unchanged layers (they are
byte-identical).

Example:
    >>> import bnfuse
    >>> from bnfuse.verification.randweights import random_weights
    >>> prototxt = b'''
    ... layer { name: "data" type: "Input" top: "data"
    ...         input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
    ... layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
    ...         convolution_param { num_output: 4 kernel_size: 3 } }
    ... layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
    ... layer { name: "scale" type: "Scale" bottom: "conv" top: "conv"
    ...         scale_param { bias_term: true } }
    ... layer { name: "reorg" type: "Reorg" bottom: "conv" top: "feat"
    ...         reorg_param { stride: 2 } }
    ... '''
    >>> original = random_weights(prototxt, seed=0, unmeasurable="unit")
    >>> folded = random_weights(prototxt, seed=0, unmeasurable="unit")
    >>> [a.kind for a in bnfuse.fold_net(folded).report.actions]
    ['folded_into_producer']
    >>> from bnfuse.verification.compare import verify
    >>> verify(original, folded)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    bnfuse.errors.UnsupportedLayerError: layer 'reorg' has type 'Reorg', ...
    >>> from bnfuse.verification.local import verify_local
    >>> result = verify_local(original, folded)
    >>> result.passed, [blob.name for blob in result.blobs]
    (True, ['conv'])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from bnfuse.errors import BnfuseError, UnsupportedLayerError, naming_file
from bnfuse.graph import build_graph
from bnfuse.layertypes import executable, implied_bottom
from bnfuse.layertypes.shapes import as_shapes, is_input_layer
from bnfuse.verification.backends import NetOrPaths, as_net
from bnfuse.verification.compare import VerifyResult, compare_runs, default_tolerances
from bnfuse.verification.inputs import seeded_inputs

if TYPE_CHECKING:
    from bnfuse.net import Layer, Net

Array = npt.NDArray[Any]
Shape = tuple[int, ...]

#: Batch size and spatial size used when a region input's shape is read off weights.
FALLBACK_BATCH = 2
FALLBACK_SPATIAL = 8


def known_shapes(
    net: Net, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, Shape]:
    """Every blob shape that can be inferred, walking past layers the verifier does not know.

    Unlike :func:`bnfuse.layertypes.shapes.infer_shapes`, an unknown layer does not stop
    the walk: its tops are simply unknown, and so is everything computed from them,
    except an ``Eltwise`` whose shape any one known bottom gives. A blob written several times
    (in place) has its last shape; :func:`shape_walk` gives each layer's own view.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''
        ... layer { name: "data" type: "Input" top: "data"
        ...         input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
        ... layer { name: "shuffle" type: "ShuffleChannel" bottom: "data" top: "shuffled" }
        ... layer { name: "py" type: "Python" bottom: "shuffled" top: "feat" }
        ... layer { name: "relu" type: "ReLU" bottom: "feat" top: "out" }
        ... ''')
        >>> known_shapes(net)  # the Python layer's output (and all after it) is unknown
        {'data': (1, 3, 8, 8), 'shuffled': (1, 3, 8, 8)}
        >>> known_shapes(net, {"feat": (1, 5, 4, 4)})["out"]
        (1, 5, 4, 4)
    """
    shapes: dict[str, Shape] = {}
    for _ in shape_walk(net, input_shapes, shapes):
        pass
    return shapes


def shape_walk(net: Net, input_shapes: Mapping[str, Sequence[int]] | None = None,
               shapes: dict[str, Shape] | None = None
               ) -> Iterator[list[Shape | None]]:
    """For each layer in order, the shapes of its bottoms as that layer sees them.

    The walk of :func:`known_shapes`, one step per layer: a layer that changes a blob's
    shape in place (which Caffe refuses) cannot hide the shape the layers before it saw.
    ``shapes``, when given, is filled as the walk goes.
    """
    from bnfuse.layertypes.shapes import input_layer_shapes, is_input_layer, layer_output_shapes

    given = as_shapes(input_shapes)
    shapes = {} if shapes is None else shapes
    layers = list(net.layers)
    for position, layer in enumerate(layers):
        yield [shapes.get(name, given.get(name)) for name in layer.bottoms]
        if is_input_layer(layer):  # Input and data layers: the shapes that can be known
            try:
                stated = input_layer_shapes([layer, *layers[position + 1:]], given,
                                            required=False)
            except BnfuseError:
                stated = {}
            shapes.update({top: stated[top] if top in stated else given[top]
                           for top in layer.tops if top in stated or top in given})
            continue
        for name in layer.bottoms:
            if name not in shapes and name in given:
                shapes[name] = given[name]
        if layer.type == "Eltwise" and len(layer.tops) == 1:
            # Every bottom of an Eltwise has the output's shape: one known bottom is enough
            # (ENet adds the output of a Python dropout layer to a branch bnfuse can shape).
            known = [shapes[name] for name in layer.bottoms if name in shapes]
            if known:
                shapes[layer.tops[0]] = known[0]
                continue
        if not all(name in shapes for name in layer.bottoms):
            for top in layer.tops:
                shapes.pop(top, None)  # a stale earlier version must not survive
            continue
        bottoms = [shapes[name] for name in layer.bottoms]
        outs: list[Shape] | None
        try:
            outs = layer_output_shapes(layer, bottoms)
        except BnfuseError:
            outs = None
        for i, top in enumerate(layer.tops):
            if outs is not None and i < len(outs):
                shapes[top] = outs[i]
            else:
                shapes.pop(top, None)


def _layer_key(layer: Layer) -> tuple[Any, ...]:
    params = layer.param.SerializeToString(deterministic=True)
    return (layer.type, layer.bottoms, layer.tops, params)


def _same_weights(x: Layer, y: Layer) -> bool:
    if len(x.blobs) != len(y.blobs):
        return False
    return all(np.asarray(p).shape == np.asarray(q).shape and np.array_equal(p, q)
               for p, q in zip(x.blobs, y.blobs, strict=True))


def changed_layers(a: Net, b: Net) -> list[str]:
    """Names of layers that differ between ``a`` and ``b`` (in ``a``'s order, then ``b``'s).

    Example:
        >>> import bnfuse
        >>> paths = bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel")
        >>> original, folded = bnfuse.load(*paths), bnfuse.fold(*paths).net
        >>> changed_layers(original, folded)  # the folded-away layers exist only in a
        ['conv1', 'conv1/bn', 'conv1/scale', 'conv2', 'conv2/bn', 'conv2/scale']
    """
    first_a: dict[str, Layer] = {}
    for layer in a.layers:
        first_a.setdefault(layer.name, layer)
    first_b: dict[str, Layer] = {}
    for layer in b.layers:
        first_b.setdefault(layer.name, layer)
    result: list[str] = []
    for name, layer in first_a.items():
        other = first_b.get(name)
        if other is None or _layer_key(layer) != _layer_key(other) or not _same_weights(layer,
                                                                                          other):
            result.append(name)
    result.extend(name for name in first_b if name not in first_a)
    return result


@dataclass
class _Region:
    layers: list[Layer]
    inputs: list[str]


def _region(net: Net, names: set[str]) -> _Region:
    index = {i for i, layer in enumerate(net.layers) if layer.name in names}
    index |= build_graph(net.layers).between(index)
    chosen = [net.layers[i] for i in sorted(index)
              if executable(net.layers[i]) and not is_input_layer(net.layers[i])]
    # The region's inputs are the inputs of the net made of the chosen layers alone.
    return _Region(chosen, [v.name for v in build_graph(chosen).inputs()])


def _shape_from_weights(layer: Layer, position: int) -> Shape | None:
    """A plausible shape for bottom ``position`` of ``layer``, read off its weights."""
    if position != 0:
        return None
    return implied_bottom(layer, batch=FALLBACK_BATCH, spatial=FALLBACK_SPATIAL)


def _input_shape(name: str, shapes: Sequence[Mapping[str, Shape]],
                 regions: Sequence[_Region]) -> Shape:
    for known in shapes:
        if name in known:
            return known[name]
    for region in regions:
        for layer in region.layers:
            if name not in layer.bottoms:
                continue
            if layer.type == "Eltwise":
                # Every Eltwise bottom has the shape of its output or of a known sibling.
                for known in shapes:
                    for other in (*layer.tops, *layer.bottoms):
                        if other in known:
                            return known[other]
            guess = _shape_from_weights(layer, layer.bottoms.index(name))
            if guess is not None:
                return guess
    readers = [layer.name for region in regions for layer in region.layers if name in layer.bottoms]
    raise UnsupportedLayerError(
        f"cannot tell the shape of blob {name!r} (read by layer {readers[0]!r}): "
        f"pass input_shapes={{{name!r}: (N, C, H, W)}} to verify_local")


def _region_feed(region_a: _Region, region_b: _Region, shapes: Sequence[Mapping[str, Shape]],
                 seed: int, dtype: npt.DTypeLike) -> dict[str, Array]:
    """The seeded data fed to both regions: a's inputs, then b's that a does not have."""
    names = [*region_a.inputs, *(n for n in region_b.inputs if n not in region_a.inputs)]
    return seeded_inputs({name: _input_shape(name, shapes, (region_a, region_b))
                          for name in names}, seed, dtype)


def verify_local(
    a: NetOrPaths,
    b: NetOrPaths,
    *,
    changed: Iterable[str] | None = None,
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
    dtype: npt.DTypeLike = np.float32,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    top_k: int = 5,
) -> VerifyResult:
    """Compare only the layers a fold changed, fed seeded random data at their boundary.

    ``changed`` names the layers the fold touched (in either net); by default they
    are found by comparing ``a`` and ``b``. Returns a
    :class:`~bnfuse.verification.compare.VerifyResult` whose ``backend`` is ``"numpy (local)"``,
    whose ``scope`` is ``"local"`` and whose ``notes`` list the region's layers and inputs. Raises
    :class:`~bnfuse.errors.UnsupportedLayerError` when a changed layer itself cannot be
    run or a region input's shape cannot be found (pass ``input_shapes``).

    Example:
        >>> import bnfuse
        >>> paths = bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel")
        >>> res = verify_local(bnfuse.load(*paths), bnfuse.fold(*paths).net)
        >>> res.passed, res.backend, res.scope
        (True, 'numpy (local)', 'local')
        >>> res.notes[0]  # conv1 ... conv2/scale and relu1, pool1 between them; input: data
        'local check: 8 layers of a, 4 of b, 1 region inputs (seeded random data)'
    """
    from bnfuse.verification.executor import forward

    net_a, net_b = as_net(a), as_net(b)
    names = set(changed) if changed is not None else set(changed_layers(net_a, net_b))
    known = {layer.name for layer in net_a.layers} | {layer.name for layer in net_b.layers}
    unknown = sorted(names - known)
    if unknown:
        raise BnfuseError(f"changed layers {unknown} are in neither net")
    for net in (net_a, net_b):
        for layer in net.layers:
            if layer.name in names and not executable(layer):
                with naming_file(net.prototxt_source):
                    raise UnsupportedLayerError(
                        f"layer {layer.name!r} ({layer.type}) changed but the numpy executor "
                        "cannot run it, so the change cannot be verified locally")
    region_a, region_b = _region(net_a, names), _region(net_b, names)
    tolerances = default_tolerances(dtype, rtol, atol)
    if not region_a.layers and not region_b.layers:
        return VerifyResult(passed=True, blobs=[], first_divergence=None, topk=[],
                            backend="numpy (local)", tolerances=tolerances,
                            notes=["local check: no layer changed"], scope="local")
    override = as_shapes(input_shapes)
    shapes = [override, known_shapes(net_a, input_shapes), known_shapes(net_b, input_shapes)]
    feed = _region_feed(region_a, region_b, shapes, seed, dtype)
    values = []
    for net, region in ((net_a, region_a), (net_b, region_b)):
        mini = _LayerList(region.layers)
        # The region is part of a file: its layers' errors name that file.
        with naming_file(net.prototxt_source):
            values.append(forward(mini, {n: feed[n] for n in region.inputs}, dtype=dtype))
    result = compare_runs(region_a.layers, region_b.layers, values[0], values[1],
                          tolerances=tolerances, backend="numpy (local)", skip=list(feed),
                          top_k=top_k)
    result.scope = "local"
    result.notes.append(
        f"local check: {len(region_a.layers)} layers of a, {len(region_b.layers)} of b, "
        f"{len(feed)} region inputs (seeded random data)")
    skipped = sorted({layer.name for net in (net_a, net_b) for layer in net.layers
                      if layer.name in names and is_input_layer(layer)})
    if skipped:
        result.notes.append(f"changed Input layers not checked: {skipped}")
    return result


@dataclass
class _LayerList:
    """A net made of some layers of another (what the executor needs: ``.layers``)."""

    layers: list[Layer]


__all__ = ["FALLBACK_BATCH", "FALLBACK_SPATIAL", "changed_layers",
           "known_shapes", "shape_walk", "verify_local"]
