"""The per-channel affine map of one BatchNorm, Scale or Bias layer, or why it has none.

This is the fold's own reading of a layer: the planner folds what :func:`layer_affine`
returns, and :func:`affine_of` (``bnfuse.affine_of``) hands the same map to embedders
that convert a net and want ``y = scale * x + shift`` per channel instead of each
BatchNorm dialect's blob meaning. Which dialect a layer is comes from
:func:`bnfuse.layertypes.batchnorm.detect_layer`; the arithmetic from
:func:`bnfuse.folding.variants.dialect_affine` and
:func:`bnfuse.folding.arith.affine_from_scale` / ``affine_from_bias``.

Example:
    >>> import bnfuse
    >>> net = bnfuse.load(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
    >>> bn = affine_of(net.layer("conv1/bn"))
    >>> bn.channels, bn.scale.dtype
    (16, dtype('float64'))
"""

from __future__ import annotations

import numpy as np

from bnfuse._checks import require_bool
from bnfuse.errors import BnfuseError, UnsupportedLayerError
from bnfuse.folding import arith, variants
from bnfuse.folding.arith import Affine
from bnfuse.layertypes.batchnorm import NORM_TYPES, detect_layer
from bnfuse.net import Layer

__all__ = ["AFFINE_TYPES", "affine_of", "layer_affine", "scale_bias_problem"]

#: Layer types that may be an inference-time per-channel affine map.
AFFINE_TYPES = NORM_TYPES | {"Scale", "Bias"}

#: Appended to the reason of a BatchNorm that uses the batch statistics, where the
#: stored ones exist (BVLC and NVIDIA layouts).
_FORCE_HINT = " (force_global_stats=True folds it with the stored statistics)"


def scale_bias_problem(layer: Layer, *, structural: bool = False) -> str | None:
    """Why a Scale or Bias layer is not a per-channel map on axis 1 (``None``: it is).

    ``structural=True`` judges the parameters and the wiring only (a net loaded
    without weights), leaving out the check that the weights are there.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''
        ... layer { name: "s" type: "Scale" bottom: "x" bottom: "f" top: "y" }
        ... layer { name: "b" type: "Bias" bottom: "y" top: "y" }''')
        >>> scale_bias_problem(net.layer("s"))
        "Scale 's' has 2 bottoms: its factor is an input, not a weight"
        >>> scale_bias_problem(net.layer("b")), scale_bias_problem(net.layer("b"), structural=True)
        ("Bias 'b' has no weights in the caffemodel", None)
    """
    if layer.type == "Scale":
        axis, num_axes = layer.param.scale_param.axis, layer.param.scale_param.num_axes
    elif layer.type == "Bias":
        axis, num_axes = layer.param.bias_param.axis, layer.param.bias_param.num_axes
    else:
        return f"{layer.type} is not a per-channel affine layer"
    if len(layer.bottoms) != 1:
        return (f"{layer.type} {layer.name!r} has {len(layer.bottoms)} bottoms: its factor "
                "is an input, not a weight")
    if axis != 1 or num_axes != 1:
        return (f"{layer.type} {layer.name!r} works on axis {axis} with num_axes "
                f"{num_axes}; only per-channel (axis 1, num_axes 1) maps fold")
    if not layer.blobs and not structural:
        return f"{layer.type} {layer.name!r} has no weights in the caffemodel"
    if len(layer.tops) != 1:
        return f"{layer.type} {layer.name!r} has {len(layer.tops)} tops"
    return None


def _norm_affine(layer: Layer, force_global_stats: bool, structural: bool) -> Affine | None:
    if len(layer.bottoms) != 1 or len(layer.tops) != 1:
        raise UnsupportedLayerError(f"{layer.type} {layer.name!r} needs one bottom and one top",
                                    layer=layer.name)
    if not layer.blobs and not structural:
        raise UnsupportedLayerError(
            f"{layer.type} {layer.name!r} has no weights in the caffemodel", layer=layer.name)
    try:
        dialect = detect_layer(layer, weights_loaded=not structural)
        if force_global_stats:
            dialect = dialect.with_stored_statistics()
        if not dialect.foldable:
            reason = dialect.reason or f"{layer.type} layout is unknown"
            if dialect.statistics == "batch" and dialect.name in ("bvlc", "nvidia"):
                reason += _FORCE_HINT
            raise UnsupportedLayerError(reason, layer=layer.name)
        if structural:
            return None
        return variants.dialect_affine(dialect, [np.asarray(blob) for blob in layer.blobs])
    except UnsupportedLayerError:
        raise
    except BnfuseError as exc:  # e.g. a field that is no number
        raise UnsupportedLayerError(str(exc), layer=layer.name) from None


def layer_affine(layer: Layer, *, force_global_stats: bool = False,
                 structural: bool = False) -> Affine | None:
    """The fold's per-channel map of ``layer``; ``None`` only with ``structural=True``.

    The one reading the planner folds and :func:`affine_of` returns. Raises
    :class:`~bnfuse.errors.UnsupportedLayerError` whose message is the reason the layer
    is no inference-time per-channel affine map (what the fold report says when it
    skips the layer). ``structural=True`` checks the parameters and the wiring only,
    for a net loaded without weights, and returns ``None`` when they allow a map.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" }')
        >>> layer_affine(net.layer("bn"), structural=True) is None
        True
    """
    if layer.type in NORM_TYPES:
        return _norm_affine(layer, force_global_stats, structural)
    problem = scale_bias_problem(layer, structural=structural)
    if problem is not None:
        raise UnsupportedLayerError(problem, layer=layer.name)
    if structural:
        return None
    blobs = [np.asarray(blob) for blob in layer.blobs]
    try:
        if layer.type == "Scale":
            return arith.affine_from_scale(blobs[0].reshape(-1),
                                           blobs[1].reshape(-1) if len(blobs) > 1 else None)
        return arith.affine_from_bias(blobs[0].reshape(-1))
    except BnfuseError as exc:
        # Blobs that do not fit together (a corrupt caffemodel): the layer is no map.
        raise UnsupportedLayerError(f"{layer.type} {layer.name!r}: {exc}",
                                    layer=layer.name) from None


def affine_of(layer: Layer, *, force_global_stats: bool = False) -> Affine:
    """The per-channel ``y = scale * x + shift`` a BatchNorm, Scale or Bias layer computes.

    Every BatchNorm dialect bnfuse reads (BVLC with its ``1/factor`` rule, NVIDIA,
    CuDNNBatchNorm, SegNet's and PSPNet's ``BN``) gives one :class:`~bnfuse.Affine` in
    float64: ``.scale`` and ``.shift`` are read-only vectors of ``.channels`` values,
    the map the fold folds (eps as the fork adds it). Channels are axis 1. Raises
    :class:`~bnfuse.errors.UnsupportedLayerError` with the reason when the layer is not
    an inference-time per-channel affine map: a BatchNorm with
    ``use_global_stats: false`` (unless ``force_global_stats=True``, which reads it
    with its stored statistics as ``fold(force_global_stats=True)`` does) or SegNet's
    ``bn_mode: LEARN``, a layout bnfuse cannot establish, a Scale with two bottoms
    (its factor is an input), a Scale or Bias on other axes than the channels, a layer
    without weights, statistics that make the map undefined or not finite, or a layer
    of another type.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
        >>> bn, scale = net.layer("conv1/bn"), net.layer("conv1/scale")
        >>> mean, var, factor = (np.asarray(b, np.float64) for b in bn.blobs)
        >>> eps = float(np.float32(bn.param.batch_norm_param.eps))
        >>> expected = 1 / np.sqrt(var / factor[0] + eps)
        >>> bool(np.allclose(affine_of(bn).scale, expected, rtol=1e-12))
        True
        >>> bool(np.array_equal(affine_of(scale).shift, scale.blobs[1]))
        True
        >>> affine_of(net.layer("conv1"))
        Traceback (most recent call last):
        ...
        bnfuse.errors.UnsupportedLayerError: Convolution is not a per-channel affine layer
    """
    if not isinstance(layer, Layer):
        raise TypeError(f"affine_of: layer must be a Layer (from net.layers or "
                        f"net.layer(name)), not {type(layer).__name__}")
    require_bool(force_global_stats, "affine_of", "force_global_stats")
    affine = layer_affine(layer, force_global_stats=force_global_stats)
    assert affine is not None
    problem = arith.affine_problem(affine)
    if problem is not None:
        raise UnsupportedLayerError(f"{layer.type} {layer.name!r}: {problem}", layer=layer.name)
    return affine
