"""The executor's BatchNorm: every dialect run by its own fork's formula.

Which dialect a layer is comes from :func:`bnfuse.layertypes.batchnorm.detect_layer`, the
one place that decides it (the folds ask it too). Everything else here is the verifier's
own arithmetic, written from each fork's TEST-phase code and independent of
:mod:`bnfuse.folding`: a blob read the wrong way by the fold is then computed differently
here and shows up as a failed comparison instead of being "verified" by the same code.

Rounding follows the fork's CPU code in the working dtype: BVLC multiplies the stored
statistics by ``1/f``, adds eps, takes the square root and divides; NVIDIA multiplies by
``(variance + eps)^-0.5``; the others normalise and then apply scale and shift.

Example:
    >>> import numpy as np, bnfuse
    >>> net = bnfuse.load(b'layer { name: "b" type: "BN" bottom: "x" top: "y" '
    ...                   b'bn_param { bn_mode: INFERENCE } }')
    >>> layer = net.layers[0]
    >>> net.set_blobs(layer, [np.full((1, 3, 1, 1), 2.0), np.ones((1, 3, 1, 1))])
    >>> norm_forward(layer, np.ones((1, 3, 1, 1)), np.dtype(np.float32)).ravel().tolist()
    [3.0, 3.0, 3.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from bnfuse.errors import BnfuseError, UnsupportedLayerError
from bnfuse.layertypes.batchnorm import BVLC_DEFAULT_EPS, Dialect, detect_layer

if TYPE_CHECKING:
    from bnfuse.verification.executor import LayerLike

Array = npt.NDArray[Any]

__all__ = ["norm_blobs", "norm_dialect", "norm_forward"]



def _where(layer: LayerLike) -> str:
    return f"layer {layer.name!r} (type {layer.type!r})"


def norm_dialect(layer: LayerLike) -> Dialect:
    """The layer's dialect when the executor can run it, else
    :class:`~bnfuse.errors.UnsupportedLayerError` naming the layer and the reason.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'layer { name: "b" type: "BatchNorm" bottom: "x" top: "x" }')
        >>> norm_dialect(net.layers[0]).name
        'bvlc'
    """
    try:
        dialect = detect_layer(layer)
    except BnfuseError as exc:
        raise UnsupportedLayerError(f"{_where(layer)}: {exc}") from None
    if dialect.name == "unknown":
        raise UnsupportedLayerError(f"{_where(layer)}: {dialect.reason}")
    if dialect.statistics == "batch" and dialect.name != "bvlc":
        # Batch statistics with a formula bnfuse has not established (SegNet LEARN,
        # PSPNet's older revision without moving_average): refuse rather than guess.
        raise UnsupportedLayerError(f"{_where(layer)}: {dialect.reason}")
    return dialect


def _per_channel(blob: npt.ArrayLike, channels: int, dtype: np.dtype[Any], layer: LayerLike,
                 role: str) -> Array:
    values = np.asarray(blob).astype(dtype, copy=False).reshape(-1)
    if values.size != channels:
        raise UnsupportedLayerError(
            f"{_where(layer)}: the {role} blob holds {values.size} channels, "
            f"the input has {channels}")
    return values


def _batch_statistics(xr: Array, dtype: np.dtype[Any]) -> tuple[Array, Array]:
    """Mean and (biased) variance over N and the spatial axes, as Caffe's BatchNorm does."""
    mean = xr.mean(axis=(0, 2), dtype=dtype)
    var = np.square(xr - mean[None, :, None]).mean(axis=(0, 2), dtype=dtype)
    return mean, var


def norm_forward(layer: LayerLike, x: Array, dtype: np.dtype[Any]) -> Array:
    """Run a BatchNorm-like layer of any dialect in Caffe's TEST phase, on axis 1.

    Raises :class:`~bnfuse.errors.UnsupportedLayerError` for a layout bnfuse does not
    know and for batch-statistics modes whose formula is not established (SegNet
    ``LEARN``, PSPNet's older revision without ``moving_average``).

    Example: see the module docstring.
    """
    dialect = norm_dialect(layer)
    channels = x.shape[1] if x.ndim > 1 else 1
    if len(layer.blobs) != len(dialect.roles):
        raise UnsupportedLayerError(
            f"{_where(layer)}: {dialect.name} BatchNorm has {len(dialect.roles)} blobs "
            f"({', '.join(dialect.roles)}), the layer has {len(layer.blobs)}")

    def role(name: str) -> Array:
        return _per_channel(layer.blobs[dialect.index(name)], channels, dtype, layer, name)

    xr = x.reshape(x.shape[0] if x.ndim > 1 else x.size, channels, -1)
    if dialect.statistics == "none":  # SegNet INFERENCE: y = scale * x + shift
        y = xr * role("scale")[None, :, None]
        y += role("shift")[None, :, None]
        return y.reshape(x.shape)
    eps = dtype.type(BVLC_DEFAULT_EPS if dialect.eps is None else dialect.eps)
    if dialect.statistics == "batch":
        mean, var = _batch_statistics(xr, dtype)
    elif dialect.has("factor"):
        # BVLC: statistics stored times the factor f; a zero factor gives zero statistics.
        factor = np.asarray(layer.blobs[dialect.index("factor")]).astype(dtype).reshape(-1)
        if factor.size != 1:
            raise UnsupportedLayerError(
                f"{_where(layer)}: the factor blob holds {factor.size} values, not 1")
        k = dtype.type(0) if factor[0] == 0 else dtype.type(1) / factor[0]
        mean, var = role("mean") * k, role("variance") * k
    else:
        mean, var = role("mean"), role("variance")
    y = xr - mean[None, :, None]
    if dialect.name == "nvidia":
        y *= np.power(var + eps, dtype.type(-0.5))[None, :, None]
    else:
        y /= np.sqrt(var + eps)[None, :, None]
    if dialect.has("scale"):
        y *= role("scale")[None, :, None]
        y += role("shift")[None, :, None]
    return y.reshape(x.shape)


def _moments(x: Array | None, channels: int, var_floor: float) -> tuple[Array, Array]:
    if x is None:
        return np.zeros(channels), np.ones(channels)
    values = np.asarray(x, dtype=np.float64)
    if values.ndim < 2:
        values = values.reshape(-1, 1)
    # An empty batch (a zero dimension) has no values to measure either.
    flat = (np.moveaxis(values, 1, 0).reshape(values.shape[1], -1) if values.size
            else np.zeros((channels, 0)))
    if flat.shape[1] < 2:
        # One value per channel (a BatchNorm after an InnerProduct, at batch 1): nothing
        # to measure. Its own value as the mean would make the measured input normalise
        # to exact zeros, and a verify on that input would compare rounding noise only.
        return np.zeros(channels), np.ones(channels)
    mean = flat.mean(axis=1)
    var = flat.var(axis=1)
    median = float(np.median(var))
    return mean, np.maximum(var, var_floor * median if median > 0 else 1.0)


def norm_blobs(layer: LayerLike, x: Array | None, channels: int, *, factor: float = 1.0,
               var_floor: float = 0.01) -> list[Array]:
    """Blobs that make the layer normalise ``x`` (mean 0, variance 1 per channel).

    ``x`` is the layer's actual input (``None``: mean 0, variance 1). The blobs follow
    the roles of the layer's dialect, read from its fields (no weights loaded yet):
    BVLC stores mean·f, variance·f and ``f = factor``; scale and shift are 1 and 0,
    except for SegNet's INFERENCE map, which bakes the normalisation into them.
    Variances below ``var_floor`` times the median variance are raised to it, so a dead
    channel does not become a huge scale.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'layer { name: "n" type: "CuDNNBatchNorm" bottom: "x" '
        ...                   b'top: "y" }')
        >>> x = np.random.default_rng(0).normal(3.0, 2.0, (4, 2, 5, 5))
        >>> blobs = norm_blobs(net.layers[0], x, 2)
        >>> [b.shape for b in blobs]
        [(1, 2, 1, 1), (1, 2, 1, 1), (1, 2, 1, 1), (1, 2, 1, 1)]
    """
    dialect = detect_layer(layer, weights_loaded=False)
    if dialect.name == "unknown":
        raise UnsupportedLayerError(f"{_where(layer)}: {dialect.reason}")
    mean, var = _moments(x, channels, var_floor)
    eps = BVLC_DEFAULT_EPS if dialect.eps is None else dialect.eps
    values: dict[str, Array] = {
        "mean": mean * factor if dialect.has("factor") else mean,
        "variance": var * factor if dialect.has("factor") else var,
        "factor": np.array([factor]),
        "correction": np.array([1.0]),
        "scale": np.ones(channels),
        "shift": np.zeros(channels),
    }
    if dialect.statistics == "none":
        values["scale"] = 1.0 / np.sqrt(var + eps)
        values["shift"] = -mean * values["scale"]
    shapes: Sequence[tuple[int, ...]] = dialect.blob_shapes(channels)
    return [values[role].reshape(shape).astype(np.float32)
            for role, shape in zip(dialect.roles, shapes, strict=True)]
