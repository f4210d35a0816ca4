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

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from bnfuse.errors import UnsupportedLayerError
from bnfuse.folding.arith import Affine, affine_from_batchnorm, caffe_batchnorm_stats
from bnfuse.layertypes.batchnorm import Dialect

__all__ = ["dialect_affine"]

Blobs = Sequence[npt.ArrayLike]


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
    if not dialect.foldable:
        raise UnsupportedLayerError(
            f"cannot fold {dialect.name} {dialect.layer_type}: {dialect.reason}")
    if len(blobs) != len(dialect.roles):
        raise UnsupportedLayerError(
            f"{dialect.name} {dialect.layer_type}: expected {len(dialect.roles)} blobs "
            f"({', '.join(dialect.roles)}), got {len(blobs)}")

    def role(name: str) -> npt.ArrayLike:
        return blobs[dialect.index(name)]

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
