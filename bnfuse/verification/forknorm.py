"""BatchNorm flavours of Caffe forks, for the executor and the random-weight generator.

SegNet's and PSPNet's ``BN``, ``CuDNNBatchNorm`` and NVIDIA Caffe's 5-blob
``BatchNorm`` are all a per-channel affine map at inference, each with its own
blob layout. :mod:`bnfuse.folding.variants` establishes what each blob means (and
cites the fork sources); this module reuses that reading so the executor runs
exactly the map the folds assume, and gives the blob shapes each fork creates.

Example:
    >>> import numpy as np, bnfuse
    >>> net = bnfuse.load(b'layer { name: "b" type: "BN" bottom: "x" top: "y" '
    ...                   b'bn_param { bn_mode: INFERENCE } }')
    >>> layer = net.layers[0]
    >>> fork_norm_shapes(layer, (2, 3, 4, 4))
    [(1, 3, 1, 1), (1, 3, 1, 1)]
    >>> net.set_blobs(layer, [np.full((1, 3, 1, 1), 2.0), np.ones((1, 3, 1, 1))])
    >>> fork_norm_forward(layer, np.ones((1, 3, 1, 1)), np.dtype(np.float32)).ravel().tolist()
    [3.0, 3.0, 3.0]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from bnfuse.errors import BnfuseError, UnsupportedLayerError
from bnfuse.folding import variants

if TYPE_CHECKING:
    from bnfuse.verification.executor import LayerLike

Array = npt.NDArray[Any]
Shape = tuple[int, ...]

#: Layer types that are a BatchNorm of some fork (BVLC's own "BatchNorm" is not listed).
FORK_NORM_TYPES = frozenset({"BN", "CuDNNBatchNorm"})

#: SegNet marks its BN with ``bn_mode``; PSPNet's two dialects with these fields.
_PSPNET_FIELDS = frozenset({"slope_filler", "bias_filler", "var_eps", "moving_average",
                            "eps", "momentum", "frozen", "scale_filler", "shift_filler"})


def _fields(layer: LayerLike) -> dict[str, object]:
    fields_of = getattr(layer, "fields_of", None)
    if fields_of is None:  # a bare LayerLike without text: only the blob count can decide
        return {}
    group = "bn_param" if layer.type == "BN" else "batch_norm_param"
    result: dict[str, object] = fields_of(group)
    return result


def is_fork_norm(layer: LayerLike) -> bool:
    """True for a fork's BatchNorm: ``BN``, ``CuDNNBatchNorm`` or a 5-blob ``BatchNorm``.

    Example:
        >>> from types import SimpleNamespace as L
        >>> is_fork_norm(L(type="BatchNorm", blobs=[1, 2, 3])), is_fork_norm(L(type="BN"))
        (False, True)
    """
    if layer.type in FORK_NORM_TYPES:
        return True
    if layer.type != "BatchNorm":
        return False
    return len(getattr(layer, "blobs", ())) == 5 or "scale_bias" in _fields(layer)


def _blob_count(layer: LayerLike) -> int:
    """How many blobs the layer has, or would have once filled."""
    count = len(layer.blobs)
    if count:
        return count
    if layer.type == "BatchNorm":
        return 5
    if layer.type == "CuDNNBatchNorm":
        return 4
    fields = _fields(layer)
    return 4 if (_PSPNET_FIELDS & fields.keys()) and "bn_mode" not in fields else 2


def fork_norm_shapes(layer: LayerLike, bottom: Shape) -> list[Shape]:
    """The blob shapes the fork creates for input shape ``bottom``.

    ``BN`` and ``CuDNNBatchNorm`` keep ``(1, C, 1, 1)`` blobs; NVIDIA's
    BatchNorm keeps BVLC's ``(C,)``, ``(C,)``, ``(1,)`` and adds scale and bias.

    Example:
        >>> from types import SimpleNamespace as L
        >>> fork_norm_shapes(L(type="CuDNNBatchNorm", blobs=[]), (1, 5, 2, 2))
        [(1, 5, 1, 1), (1, 5, 1, 1), (1, 5, 1, 1), (1, 5, 1, 1)]
    """
    channels = int(bottom[1]) if len(bottom) > 1 else 1
    count = _blob_count(layer)
    if layer.type == "BatchNorm":
        nvidia: list[Shape] = [(channels,), (channels,), (1,), (channels,), (channels,)]
        return nvidia[:count]
    return [(1, channels, 1, 1)] * count


def fork_norm_affine(layer: LayerLike) -> tuple[Array, Array]:
    """Per-channel (scale, shift) in float64, or UnsupportedLayerError with the reason.

    Example:
        >>> from types import SimpleNamespace as L
        >>> layer = L(type="CuDNNBatchNorm", name="n", blobs=[np.ones(2), np.zeros(2),
        ...           np.zeros(2), np.full(2, 4.0)])
        >>> fork_norm_affine(layer)[0].round(4).tolist()  # 1 / sqrt(4 + 1e-5)
        [0.5, 0.5]
    """
    fields = _fields(layer)
    try:
        choice = variants.classify_bn_layer(layer.type, len(layer.blobs), fields)
        if not choice.foldable:
            raise UnsupportedLayerError(
                f"layer {layer.name!r} (type {layer.type!r}): {choice.reason}")
        affine = variants.variant_affine(choice, [np.asarray(b) for b in layer.blobs])
    except UnsupportedLayerError:
        raise
    except BnfuseError as exc:
        raise UnsupportedLayerError(f"layer {layer.name!r} (type {layer.type!r}): {exc}") \
            from None
    return affine.scale, affine.shift


def fork_norm_forward(layer: LayerLike, x: Array, dtype: np.dtype[Any]) -> Array:
    """Run a fork's BatchNorm at inference: ``x · scale + shift`` per channel (axis 1).

    Example: see the module docstring.
    """
    scale, shift = fork_norm_affine(layer)
    channels = x.shape[1] if x.ndim > 1 else 1
    if scale.size != channels:
        raise UnsupportedLayerError(
            f"layer {layer.name!r} (type {layer.type!r}): blobs hold {scale.size} channels, "
            f"the input has {channels}")
    view = (1, channels) + (1,) * (x.ndim - 2)
    result: Array = x * scale.astype(dtype).reshape(view) + shift.astype(dtype).reshape(view)
    return result.astype(dtype, copy=False)


def fork_norm_blobs(layer: LayerLike, x: Array | None, channels: int) -> list[Array]:
    """Blobs that make the fork's BatchNorm normalise ``x`` (mean 0, variance 1 per channel).

    ``x`` is the layer's actual input; without it (an input the executor cannot
    compute) the statistics are mean 0, variance 1.

    Example:
        >>> from types import SimpleNamespace as L
        >>> x = np.random.default_rng(0).normal(3.0, 2.0, (4, 2, 5, 5))
        >>> layer = L(type="CuDNNBatchNorm", name="n", blobs=[])
        >>> layer.blobs = fork_norm_blobs(layer, x, 2)
        >>> y = fork_norm_forward(layer, x, np.dtype(np.float64))
        >>> bool(abs(y.mean()) < 1e-6), bool(abs(y.var() - 1) < 1e-2)
        (True, True)
    """
    if x is None:
        mean, var = np.zeros(channels), np.ones(channels)
    else:
        flat = np.moveaxis(np.asarray(x, np.float64), 1, 0).reshape(channels, -1)
        mean, var = flat.mean(axis=1), np.maximum(flat.var(axis=1), 1e-6)
    count = _blob_count(layer)
    eps = variants.BVLC_DEFAULT_EPS
    ones, zeros = np.ones(channels), np.zeros(channels)
    if layer.type == "BatchNorm":  # NVIDIA: mean, var, correction, scale, bias
        blobs = [mean, var, np.ones(1), ones, zeros][:count]
        return [b.astype(np.float32) for b in blobs]
    if count == 2:  # SegNet INFERENCE: the normalisation baked into scale and shift
        scale = 1.0 / np.sqrt(var + eps)
        blobs = [scale, -mean * scale]
    else:  # PSPNet (slope, bias, mean, var) and CuDNNBatchNorm (scale, bias, mean, var)
        blobs = [ones, zeros, mean, var]
    return [b.reshape(1, channels, 1, 1).astype(np.float32) for b in blobs]


__all__ = [
    "FORK_NORM_TYPES",
    "fork_norm_affine",
    "fork_norm_blobs",
    "fork_norm_forward",
    "fork_norm_shapes",
    "is_fork_norm",
]
