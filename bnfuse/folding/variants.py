"""A BatchNorm dialect's blobs turned into one per-channel affine map, for the folds.

Which dialect a layer is, and what each of its blobs means, is decided once, by
:func:`bnfuse.layertypes.batchnorm.detect`; this module only does the fold's arithmetic
on the blobs that decision names (:func:`dialect_affine`). The executor computes the
same layers with its own code from the same roles, so the verifier never checks a fold
with the fold's arithmetic.

Example:
    >>> from bnfuse.layertypes.batchnorm import detect
    >>> a = dialect_affine(detect("BN", {"bn_mode": "INFERENCE"}, 2), [[[[2.0]]], [[[1.0]]]])
    >>> a.scale.tolist(), a.shift.tolist()
    ([2.0], [1.0])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from bnfuse.errors import UnsupportedLayerError
from bnfuse.folding.arith import Affine, affine_from_batchnorm, caffe_batchnorm_stats
from bnfuse.folding.float32 import Float32Probe, caffe_float32_batchnorm, caffe_float32_scale
from bnfuse.layertypes.batchnorm import Dialect

__all__ = ["dialect_affine", "dialect_float32_probe"]

Blobs = Sequence[npt.ArrayLike]


def _roles(dialect: Dialect, blobs: Blobs) -> Callable[[str], npt.ArrayLike]:
    """The blob playing a role, once the dialect is known foldable and the count fits."""
    if not dialect.foldable:
        raise UnsupportedLayerError(
            f"cannot fold {dialect.name} {dialect.layer_type}: {dialect.reason}")
    if len(blobs) != len(dialect.roles):
        raise UnsupportedLayerError(
            f"{dialect.name} {dialect.layer_type}: expected {len(dialect.roles)} blobs "
            f"({', '.join(dialect.roles)}), got {len(blobs)}")

    def role(name: str) -> npt.ArrayLike:
        return blobs[dialect.index(name)]

    return role


def dialect_affine(dialect: Dialect, blobs: Blobs) -> Affine:
    """The per-channel ``(scale, shift)`` a foldable BatchNorm dialect applies at inference.

    Mean and variance are taken from the blobs whose role the dialect names (divided by
    the factor with Caffe's rule for BVLC), eps is the dialect's (already clamped as the
    fork clamps it), and ``scale``/``shift`` blobs, when the dialect has them, are
    applied after the normalisation. SegNet's INFERENCE mode is ``scale·x + shift``.
    Raises :class:`~bnfuse.errors.UnsupportedLayerError` with the dialect's reason when
    it is not foldable, or when the blob count does not fit its roles.

    Example:
        >>> from bnfuse.layertypes.batchnorm import detect
        >>> dialect_affine(detect("BatchNorm", {"eps": 0}, 3), [[2.0], [8.0], [2.0]]).scale
        array([0.5])
    """
    role = _roles(dialect, blobs)

    scale = role("scale") if dialect.has("scale") else None
    shift = role("shift") if dialect.has("shift") else None
    if dialect.statistics == "none":  # SegNet INFERENCE: the blobs are the map itself
        assert scale is not None and shift is not None
        return Affine(np.asarray(scale, np.float64).reshape(-1),
                      np.asarray(shift, np.float64).reshape(-1))
    mean: npt.ArrayLike
    var: npt.ArrayLike
    if dialect.has("factor"):
        mean, var = caffe_batchnorm_stats(role("mean"), role("variance"), role("factor"))
    else:
        mean, var = role("mean"), role("variance")
    eps = 0.0 if dialect.eps is None else dialect.eps
    return affine_from_batchnorm(mean, var, eps, scale, shift)


def dialect_float32_probe(dialect: Dialect, blobs: Blobs) -> Float32Probe:
    """Caffe's own float32 evaluation of a foldable BatchNorm dialect on the inputs 0 and 1.

    The same roles as :func:`dialect_affine`, computed with the fork's float32 steps
    (:func:`bnfuse.folding.float32.caffe_float32_batchnorm`): BVLC divides the statistics
    by the factor, NVIDIA multiplies by ``(variance + eps)^-0.5``, the others divide by
    the square root and then apply scale and shift; SegNet's INFERENCE map is
    ``scale·x + shift``. Raises :class:`~bnfuse.errors.UnsupportedLayerError` naming the
    step and the channel where Caffe would compute inf or NaN.

    Example:
        >>> from bnfuse.layertypes.batchnorm import detect
        >>> bvlc = detect("BatchNorm", {"eps": 0}, 3)
        >>> dialect_float32_probe(bvlc, [[2.0], [8.0], [2.0]]).at_zero.tolist()
        [-0.5]
        >>> dialect_float32_probe(bvlc, [[0.0], [1e-40], [1e-40]])  # 1/f overflows float32
        Traceback (most recent call last):
        ...
        bnfuse.errors.UnsupportedLayerError: Caffe's float32 arithmetic is not finite: \
1/factor is inf (factor 9.9999461e-41), so Caffe's mean and variance are inf or NaN
    """
    role = _roles(dialect, blobs)

    scale = role("scale") if dialect.has("scale") else None
    shift = role("shift") if dialect.has("shift") else None
    if dialect.statistics == "none":  # SegNet INFERENCE: y = scale * x + shift
        assert scale is not None and shift is not None
        channels = int(np.asarray(scale).size)
        return caffe_float32_scale(Float32Probe.unit(channels), scale, shift,
                                   what="the BN output (scale * x + shift)")
    return caffe_float32_batchnorm(
        role("mean"), role("variance"), 0.0 if dialect.eps is None else dialect.eps,
        factor_blob=role("factor") if dialect.has("factor") else None,
        scale=scale, shift=shift, multiply_by_rsqrt=dialect.name == "nvidia")
