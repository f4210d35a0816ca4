"""Each BatchNorm flavour's blobs turned into one per-channel affine map.

Forks reuse the names "BatchNorm" and "BN" for layers whose blobs mean
different things. Each function here reads one flavour by what its own source
code does in the TEST phase, and refuses what it cannot establish instead of
guessing. Functions take plain arrays and plain parameters; the planner reads
the layer and passes them in. :func:`classify_bn_layer` gathers the rules for
telling the flavours apart from a layer's type, blob count and parameter
fields, still without seeing a layer object.

What each flavour computes at inference (``x`` is the layer input, per channel):

=================  ============================================  ==========================
flavour            blobs                                         output
=================  ============================================  ==========================
BVLC BatchNorm     mean*f, var*f, f                              (x - mean) / sqrt(var+eps)
NVIDIA BatchNorm   mean, var, correction [, scale, bias]         same, then * scale + bias
CuDNNBatchNorm     scale, bias, mean, var                        scale*(x-mean)/sqrt(var+eps)+bias
SegNet BN          scale, shift                                  scale * x + shift
PSPNet BN          slope, bias, mean, var                        slope*(x-mean)/sqrt(var+eps)+bias
=================  ============================================  ==========================

Sources read (public repositories; semantics only, no code copied):

- BVLC: ``../shared/design/FORMAT.md`` (factor rule ``k = 0 if f == 0 else 1/f``).
- NVIDIA Caffe 0.17: ``NVIDIA/caffe`` ``src/caffe/layers/batch_norm_layer.cpp``
  (commits 2d2371773c8c and ca572024024b, identical in this respect). LayerSetUp
  sets ``eps_ = std::max<float>(eps, 0.00001f)``. blobs[2] is created with shape
  (1,) and value 1 (comment: "variance correction"). ``Forward_cpu`` in TEST
  subtracts ``blobs[0]`` and multiplies by ``(blobs[1] + eps_)^-0.5``, both used
  directly: blobs[2] is never read. The TEST branch does not look at
  ``use_global_stats``. With ``scale_bias`` (or ``scale_filler`` /
  ``bias_filler`` present) there are 5 blobs and the output is then multiplied
  by ``blobs[3]`` and shifted by ``blobs[4]``. The GPU/cuDNN sources of that
  fork were not available to check; they are assumed to agree with the CPU path.
- CuDNNBatchNorm: ``hujie-frank/GENet`` ``src/caffe/layers/cudnn_batch_norm_layer.cpp``
  and ``.cu`` (the layer registered as type "CuDNNBatchNorm", reused by SENet /
  SKNet-style forks). Four blobs of shape (1, C, 1, 1): blobs[0] scale, blobs[1]
  bias, blobs[2] running mean, blobs[3] running variance. In TEST (or with
  ``frozen``) it calls ``cudnnBatchNormalizationForwardInference`` with those
  four blobs directly (no factor) and ``epsilon = max(eps, CUDNN_BN_MIN_EPSILON)``.
  Other forks register a layer of the same name with other layouts (one derives
  from BatchNormLayer and keeps its mean/var/factor blobs first), so only the
  4-blob layout is accepted.
- SegNet: ``alexgkendall/caffe-segnet`` ``src/caffe/layers/bn_layer.cpp``. Two
  blobs (1, C, 1, 1): scale and shift. ``bn_mode: INFERENCE`` computes
  ``scale * x + shift``; ``LEARN`` normalises with the batch's own statistics
  (not foldable). LEARN is the enum's first value, so it is what an absent
  ``bn_mode`` means.
- PSPNet: ``hszhao/PSPNet`` ``src/caffe/layers/bn_layer.cpp`` and
  ``src/caffe/proto/caffe.proto``. The released code (commit c479f4fe941e,
  ``bn_param = 152``; fields slope_filler, bias_filler, momentum, eps = 1e-5,
  frozen) uses blobs[2] mean and blobs[3] variance directly (no factor) whenever
  the phase is TEST or ``frozen`` is set, with ``eps`` from ``bn_param.eps``.
  An older revision of the same repository (commit 88d0b3ee8082; fields
  scale_filler, shift_filler, ``var_eps`` = 1e-10, ``moving_average`` = false,
  decay, axis) uses the stored statistics in TEST only when
  ``moving_average: true``, and adds ``var_eps``.

Example:
    >>> a = segnet_bn([[[[2.0]]], [[[1.0]]]])
    >>> a.scale.tolist(), a.shift.tolist()
    ([2.0], [1.0])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bnfuse.errors import ModelMismatchError, UnsupportedLayerError
from bnfuse.folding.arith import Affine, affine_from_batchnorm, caffe_batchnorm_stats

__all__ = [
    "BVLC_DEFAULT_EPS",
    "CUDNN_BN_MIN_EPSILON",
    "NVIDIA_MIN_EPS",
    "PSPNET_DEFAULT_EPS",
    "PSPNET_LEGACY_DEFAULT_VAR_EPS",
    "VariantChoice",
    "bvlc_batchnorm",
    "classify_bn_layer",
    "cudnn_batchnorm",
    "nvidia_batchnorm",
    "nvidia_eps",
    "pspnet_bn",
    "segnet_bn",
    "segnet_bn_reason",
    "variant_affine",
]

#: ``BatchNormParameter.eps`` default in BVLC Caffe (and NVIDIA Caffe).
BVLC_DEFAULT_EPS = 1e-5
#: NVIDIA Caffe clamps eps with ``std::max<float>(eps, 0.00001f)``: the float32 value of 1e-5.
NVIDIA_MIN_EPS = float(np.float32(1e-5))
#: ``CUDNN_BN_MIN_EPSILON`` in the cuDNN 5-7 headers those forks were built with.
CUDNN_BN_MIN_EPSILON = 1e-5
#: ``BNParameter.eps`` default in the released PSPNet code.
PSPNET_DEFAULT_EPS = 1e-5
#: ``BNParameter.var_eps`` default in the older PSPNet revision.
PSPNET_LEGACY_DEFAULT_VAR_EPS = 1e-10

Blobs = Sequence[npt.ArrayLike]


def _expect_blobs(blobs: Blobs, counts: tuple[int, ...], flavour: str) -> None:
    if len(blobs) not in counts:
        wanted = " or ".join(str(c) for c in counts)
        raise UnsupportedLayerError(
            f"{flavour}: expected {wanted} blobs, got {len(blobs)}; "
            "this blob layout is not one bnfuse knows"
        )


def bvlc_batchnorm(blobs: Blobs, eps: float = BVLC_DEFAULT_EPS) -> Affine:
    """BVLC ``BatchNorm``: blobs ``[mean*f, var*f, f]``, output ``(x - mean) / sqrt(var + eps)``.

    ``eps`` is ``batch_norm_param.eps`` (default 1e-5). The factor rule is
    :func:`~bnfuse.folding.arith.caffe_batchnorm_stats`.

    Example:
        >>> bvlc_batchnorm([[2.0], [8.0], [2.0]], eps=0.0).scale.tolist()
        [0.5]
    """
    _expect_blobs(blobs, (3,), "BatchNorm")
    mean, var = caffe_batchnorm_stats(blobs[0], blobs[1], blobs[2])
    return affine_from_batchnorm(mean, var, eps)


def nvidia_eps(eps: float) -> float:
    """The eps NVIDIA Caffe actually adds: ``std::max<float>(eps, 0.00001f)``, in float32.

    Example:
        >>> nvidia_eps(1e-8) == NVIDIA_MIN_EPS, nvidia_eps(0.5)
        (True, 0.5)
    """
    # The comparison and the stored value are float32 in the C++ source, so an
    # eps of 1e-5 given as a double becomes the float32 1e-5 either way.
    return float(max(np.float32(eps), np.float32(NVIDIA_MIN_EPS)))


def nvidia_batchnorm(blobs: Blobs, eps: float = BVLC_DEFAULT_EPS) -> Affine:
    """NVIDIA Caffe 0.17 ``BatchNorm``: 3 or 5 blobs, statistics used without the factor.

    blobs: ``[mean, var, correction]`` or, with ``scale_bias``,
    ``[mean, var, correction, scale, bias]``. The correction blob is not read
    at inference. eps is clamped to at least :data:`NVIDIA_MIN_EPS` and used
    as the float32 value NVIDIA Caffe stores (:func:`nvidia_eps`).

    A 3-blob model whose factor is not 1 gives different outputs in BVLC and
    in NVIDIA Caffe; which applies depends on the Caffe that runs the model,
    so the caller must choose (see :func:`classify_bn_layer`).

    Example:
        >>> a = nvidia_batchnorm([[1.0], [4.0], [2.0], [2.0], [1.0]], eps=0.0)
        >>> bool(a.scale[0] == 2.0 / (4.0 + NVIDIA_MIN_EPS) ** 0.5)  # eps clamped, no factor
        True
    """
    _expect_blobs(blobs, (3, 5), "NVIDIA BatchNorm")
    eps_used = nvidia_eps(eps)
    if len(blobs) == 5:
        return affine_from_batchnorm(blobs[0], blobs[1], eps_used, blobs[3], blobs[4])
    return affine_from_batchnorm(blobs[0], blobs[1], eps_used)


def cudnn_batchnorm(
    blobs: Blobs, eps: float = BVLC_DEFAULT_EPS, min_eps: float = CUDNN_BN_MIN_EPSILON
) -> Affine:
    """``CuDNNBatchNorm`` (GENet / SENet lineage): blobs ``[scale, bias, mean, var]``.

    Output ``scale * (x - mean) / sqrt(var + max(eps, min_eps)) + bias``, the
    formula of ``cudnnBatchNormalizationForwardInference``. ``min_eps`` is the
    ``CUDNN_BN_MIN_EPSILON`` of the cuDNN the fork was built with (1e-5 for
    cuDNN 5-7). Any other blob count is a different fork's layout and raises
    :class:`~bnfuse.errors.UnsupportedLayerError`.

    Example:
        >>> a = cudnn_batchnorm([[2.0], [1.0], [3.0], [4.0]], eps=0.0, min_eps=0.0)
        >>> a.scale.tolist(), a.shift.tolist()
        ([1.0], [-2.0])
    """
    _expect_blobs(blobs, (4,), "CuDNNBatchNorm")
    eps_used = max(float(eps), float(min_eps))
    return affine_from_batchnorm(blobs[2], blobs[3], eps_used, blobs[0], blobs[1])


def segnet_bn_reason(mode: str | None) -> str | None:
    """Why a SegNet ``BN`` in ``mode`` cannot be folded, or ``None`` when it can.

    Only ``INFERENCE`` applies the stored scale and shift; ``LEARN`` (also the
    meaning of an absent ``bn_mode``) normalises with batch statistics.

    Example:
        >>> segnet_bn_reason("INFERENCE") is None, segnet_bn_reason(None)
        (True, 'bn_mode is LEARN: SegNet BN normalises with the batch statistics')
    """
    name = "LEARN" if mode is None else str(mode).upper()
    if name == "INFERENCE":
        return None
    return f"bn_mode is {name}: SegNet BN normalises with the batch statistics"


def segnet_bn(blobs: Blobs, mode: str | None = "INFERENCE") -> Affine:
    """SegNet ``BN`` in ``bn_mode: INFERENCE``: blobs ``[scale, shift]``, output ``scale*x+shift``.

    Raises :class:`~bnfuse.errors.UnsupportedLayerError` in any other mode.

    Example:
        >>> segnet_bn([[3.0, 1.0], [0.0, 2.0]]).shift.tolist()
        [0.0, 2.0]
    """
    reason = segnet_bn_reason(mode)
    if reason is not None:
        raise UnsupportedLayerError(f"cannot fold SegNet BN: {reason}")
    _expect_blobs(blobs, (2,), "SegNet BN")
    return Affine(blobs[0], blobs[1])


def pspnet_bn(
    blobs: Blobs, eps: float = PSPNET_DEFAULT_EPS, *, var_eps: float | None = None
) -> Affine:
    """PSPNet / DeepLab ``BN``: blobs ``[slope, bias, mean, var]``.

    Output ``slope * (x - mean) / sqrt(var + eps) + bias`` with the stored
    statistics used directly. ``eps`` is ``bn_param.eps`` (default 1e-5) in the
    released code. The older code reads ``bn_param.var_eps`` (default 1e-10)
    instead: pass it as ``var_eps`` and it replaces ``eps``. Whether the older
    code uses the stored statistics at all depends on ``moving_average``; see
    :func:`classify_bn_layer`.

    Example:
        >>> a = pspnet_bn([[2.0], [1.0], [3.0], [4.0]], eps=0.0)
        >>> a.scale.tolist(), a.shift.tolist()
        ([1.0], [-2.0])
    """
    _expect_blobs(blobs, (4,), "PSPNet BN")
    eps_used = float(eps) if var_eps is None else float(var_eps)
    return affine_from_batchnorm(blobs[2], blobs[3], eps_used, blobs[0], blobs[1])


# --------------------------------------------------------------------------- choosing a flavour


@dataclass(frozen=True)
class VariantChoice:
    """Which flavour a layer is, the eps it uses, and why it cannot fold (if so).

    ``variant`` is one of ``"bvlc"``, ``"nvidia"``, ``"cudnn"``, ``"segnet"``,
    ``"pspnet"``, ``"pspnet-legacy"`` or ``"unknown"``. ``reason`` is ``None``
    when the layer is an inference-time affine map that can be folded.

    Example:
        >>> VariantChoice("bvlc", 1e-5, None).foldable
        True
    """

    variant: str
    eps: float | None
    reason: str | None

    @property
    def foldable(self) -> bool:
        """True when the layer is a known affine map at inference.

        Example:
            >>> VariantChoice("segnet", None, "bn_mode is LEARN").foldable
            False
        """
        return self.reason is None and self.variant != "unknown"


_NVIDIA_ONLY_FIELDS = frozenset({"scale_bias", "scale_filler", "bias_filler"})
_PSP_NEW_ONLY_FIELDS = frozenset({"slope_filler", "bias_filler"})
_PSP_OLD_ONLY_FIELDS = frozenset(
    {"var_eps", "moving_average", "decay", "axis", "scale_filler", "shift_filler"}
)


def _as_bool(value: object, field: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "t", "1"):
        return True
    if text in ("false", "f", "0"):
        return False
    raise ModelMismatchError(f"{field}: expected true or false, got {value!r}")


def _as_float(value: object, field: str) -> float:
    if isinstance(value, bool):
        raise ModelMismatchError(f"{field}: expected a number, got {value!r}")
    try:
        # str() first: values come as text from a prototxt or as numbers from protobuf.
        return float(str(value))
    except ValueError:
        raise ModelMismatchError(f"{field}: expected a number, got {value!r}") from None


def classify_bn_layer(
    layer_type: str,
    num_blobs: int,
    params: Mapping[str, object] | None = None,
    *,
    bn_dialect: str | None = None,
) -> VariantChoice:
    """Tell the BatchNorm flavours apart from plain facts about a layer.

    ``params`` maps the field names present in the layer's ``batch_norm_param``
    (type ``BatchNorm`` / ``CuDNNBatchNorm``) or ``bn_param`` (type ``BN``) to
    their values; a sub-message such as a filler may map to anything. Rules:

    - ``BatchNorm`` with 5 blobs, or with a field only NVIDIA Caffe has
      (``scale_bias``, ``scale_filler``, ``bias_filler``): NVIDIA, eps clamped.
      With 3 blobs otherwise: BVLC. Either way an explicit
      ``use_global_stats: false`` means batch statistics: not foldable.
    - ``CuDNNBatchNorm`` with 4 blobs: the GENet layout, eps clamped to 1e-5.
    - ``BN`` with 2 blobs: SegNet; foldable only in ``bn_mode: INFERENCE``.
    - ``BN`` with 4 blobs: PSPNet. ``slope_filler``/``bias_filler`` mark the
      released dialect (``eps``); ``var_eps``/``moving_average``/``decay``/
      ``axis``/``scale_filler``/``shift_filler`` mark the older one, foldable
      only with ``moving_average: true`` and ``axis: 1``. When no field tells
      them apart the two programs disagree (the older one uses batch
      statistics by default), so the choice is not foldable unless the caller
      passes ``bn_dialect="pspnet"`` or ``"pspnet-legacy"``.

    Example:
        >>> classify_bn_layer("BatchNorm", 3, {"eps": 0.001})
        VariantChoice(variant='bvlc', eps=0.001, reason=None)
        >>> classify_bn_layer("BN", 2, {}).reason
        'bn_mode is LEARN: SegNet BN normalises with the batch statistics'
    """
    fields: Mapping[str, object] = params or {}
    if layer_type == "BatchNorm":
        eps = _as_float(fields.get("eps", BVLC_DEFAULT_EPS), "batch_norm_param.eps")
        reason = None
        if "use_global_stats" in fields and not _as_bool(
            fields["use_global_stats"], "batch_norm_param.use_global_stats"
        ):
            reason = "use_global_stats is false: BatchNorm normalises with the batch statistics"
        if num_blobs == 5 or _NVIDIA_ONLY_FIELDS & fields.keys():
            if num_blobs not in (3, 5):
                return VariantChoice("unknown", None, _blob_count_reason("NVIDIA BatchNorm", 3, 5))
            return VariantChoice("nvidia", nvidia_eps(eps), reason)
        if num_blobs != 3:
            return VariantChoice("unknown", None, _blob_count_reason("BatchNorm", 3))
        return VariantChoice("bvlc", eps, reason)

    if layer_type == "CuDNNBatchNorm":
        if num_blobs != 4:
            return VariantChoice("unknown", None, _blob_count_reason("CuDNNBatchNorm", 4))
        eps = _as_float(fields.get("eps", BVLC_DEFAULT_EPS), "batch_norm_param.eps")
        return VariantChoice("cudnn", max(eps, CUDNN_BN_MIN_EPSILON), None)

    if layer_type == "BN":
        if num_blobs == 2:
            mode = fields.get("bn_mode")
            return VariantChoice(
                "segnet", None, segnet_bn_reason(None if mode is None else str(mode))
            )
        if num_blobs != 4:
            return VariantChoice("unknown", None, _blob_count_reason("BN", 2, 4))
        return _classify_pspnet(fields, bn_dialect)

    return VariantChoice("unknown", None, f"layer type {layer_type!r} is not a BatchNorm flavour")


def _blob_count_reason(flavour: str, *counts: int) -> str:
    wanted = " or ".join(str(c) for c in counts)
    return f"{flavour} layout with this many blobs is unknown (expected {wanted})"


def _classify_pspnet(fields: Mapping[str, object], bn_dialect: str | None) -> VariantChoice:
    new = bool(_PSP_NEW_ONLY_FIELDS & fields.keys())
    old = bool(_PSP_OLD_ONLY_FIELDS & fields.keys())
    dialect = bn_dialect
    if dialect is None:
        if new and old:
            return VariantChoice(
                "unknown", None, "bn_param mixes fields of both PSPNet BN dialects"
            )
        if not new and not old:
            return VariantChoice(
                "unknown",
                None,
                "bn_param does not tell the PSPNet BN dialects apart (the older one uses "
                "batch statistics unless moving_average is true); choose one explicitly",
            )
        dialect = "pspnet" if new else "pspnet-legacy"
    if dialect == "pspnet":
        eps = _as_float(fields.get("eps", PSPNET_DEFAULT_EPS), "bn_param.eps")
        return VariantChoice("pspnet", eps, None)
    if dialect == "pspnet-legacy":
        eps = _as_float(fields.get("var_eps", PSPNET_LEGACY_DEFAULT_VAR_EPS), "bn_param.var_eps")
        reason = None
        if not _as_bool(fields.get("moving_average", False), "bn_param.moving_average"):
            reason = "moving_average is not true: this BN normalises with the batch statistics"
        elif _as_float(fields.get("axis", 1), "bn_param.axis") != 1:
            reason = "bn_param.axis is not 1: the layer does not normalise over channels"
        return VariantChoice("pspnet-legacy", eps, reason)
    raise UnsupportedLayerError(
        f"unknown BN dialect {bn_dialect!r}; expected 'pspnet' or 'pspnet-legacy'"
    )


def variant_affine(choice: VariantChoice, blobs: Blobs) -> Affine:
    """The affine map of a layer classified by :func:`classify_bn_layer`.

    Raises :class:`~bnfuse.errors.UnsupportedLayerError` with the choice's
    reason when it is not foldable.

    Example:
        >>> choice = classify_bn_layer("BN", 2, {"bn_mode": "INFERENCE"})
        >>> variant_affine(choice, [[2.0], [1.0]]).scale.tolist()
        [2.0]
    """
    if not choice.foldable:
        raise UnsupportedLayerError(f"cannot fold {choice.variant} BatchNorm: {choice.reason}")
    eps = BVLC_DEFAULT_EPS if choice.eps is None else choice.eps
    if choice.variant == "bvlc":
        return bvlc_batchnorm(blobs, eps)
    if choice.variant == "nvidia":
        return nvidia_batchnorm(blobs, eps)
    if choice.variant == "cudnn":
        return cudnn_batchnorm(blobs, eps)
    if choice.variant == "segnet":
        return segnet_bn(blobs, "INFERENCE")
    if choice.variant in ("pspnet", "pspnet-legacy"):
        # Both PSPNet dialects share the blob layout; only eps and foldability differ.
        return pspnet_bn(blobs, eps)
    raise UnsupportedLayerError(f"unknown BatchNorm flavour {choice.variant!r}")
