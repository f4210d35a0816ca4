"""BatchNorm dialects: the one place that decides what a BatchNorm-like layer is.

Caffe forks reuse the type names ``BatchNorm`` and ``BN`` for layers whose blobs mean
different things. :func:`detect` reads a layer's type, the fields written in its
``batch_norm_param`` / ``bn_param`` block and (when weights are loaded) its blob count,
and returns a :class:`Dialect`: the role of every blob, the eps the fork adds, which
statistics its TEST-phase forward pass uses, and, when the layer is not an
inference-time affine map, the reason. The loader, the planner, the executor, the
random-weight generator and ``inspect`` all ask this function and nothing else decides.

The dialect says what the blobs *are*; it computes nothing with them. The fold
(:mod:`bnfuse.folding.variants`) and the executor (:mod:`bnfuse.verification.layers`)
each write their own arithmetic from the roles, so a wrong reading cannot be folded and
then "verified" by the same code.

What each dialect computes in Caffe's TEST phase (``x`` is the input, per channel):

==============  =====================================  =====================================
dialect         blobs (roles)                          output
==============  =====================================  =====================================
bvlc            mean·f, variance·f, f                  (x - mean) / sqrt(variance + eps)
nvidia          mean, variance, correction             (x - mean) / sqrt(variance + eps)
nvidia (5)      ... then scale, shift                  the above · scale + shift
cudnn           scale, shift, mean, variance           scale·(x - mean)/sqrt(var + eps) + shift
segnet          scale, shift                           scale · x + shift (bn_mode INFERENCE)
pspnet          scale, shift, mean, variance           as cudnn, eps from ``bn_param.eps``
pspnet-legacy   scale, shift, mean, variance           as cudnn, ``var_eps``; needs
                                                       ``moving_average: true``
==============  =====================================  =====================================

Sources (public repositories, read for their semantics only):

- BVLC Caffe ``src/caffe/layers/batch_norm_layer.cpp``: blobs mean·f, variance·f and the
  factor f (shape (1,)); the statistics are multiplied by ``0 if f == 0 else 1/f``;
  ``use_global_stats`` defaults to true in TEST; eps as written (default 1e-5).
- NVIDIA Caffe 0.17 ``src/caffe/layers/batch_norm_layer.cpp`` (commits 2d2371773c8c and
  ca572024024b): ``eps_ = std::max<float>(eps, 0.00001f)``; ``scale_bias_`` is
  ``scale_bias``, or true when ``scale_filler`` or ``bias_filler`` is set, and then there
  are 5 blobs; blobs[2] ("variance correction", created as 1) is never read; the TEST
  branch uses blobs[0] and blobs[1] directly and does not look at ``use_global_stats``.
- ``CuDNNBatchNorm``, ``hujie-frank/GENet`` ``src/caffe/layers/cudnn_batch_norm_layer.cpp``:
  four (1, C, 1, 1) blobs scale, bias, mean, variance, used directly by
  ``cudnnBatchNormalizationForwardInference`` with ``max(eps, CUDNN_BN_MIN_EPSILON)``.
- SegNet, ``alexgkendall/caffe-segnet`` ``bn_layer.cpp`` and ``caffe.proto``
  (``BNParameter``: ``bn_mode`` = 3 with LEARN first, ``scale_filler`` = 1,
  ``shift_filler`` = 2): two (1, C, 1, 1) blobs scale and shift; INFERENCE computes
  ``scale·x + shift``; LEARN (also an absent ``bn_mode``) normalises with the batch's own
  statistics.
- PSPNet, ``hszhao/PSPNet``: the released code (``bn_param`` fields ``slope_filler``,
  ``bias_filler``, ``momentum``, ``eps`` = 1e-5, ``frozen``, ``engine``) uses blobs[2]/[3]
  as mean and variance in TEST; an older revision (``scale_filler``, ``shift_filler``,
  ``var_eps`` = 1e-10, ``moving_average`` = false, ``decay``, ``axis``) uses them only
  when ``moving_average: true``.

Example:
    >>> d = detect("BatchNorm", {"eps": "0.001"}, 3)
    >>> d.name, d.roles, d.eps == float(np.float32(0.001)), d.foldable
    ('bvlc', ('mean', 'variance', 'factor'), True, True)
    >>> detect("BN", {}, 2).reason
    'bn_mode is LEARN: SegNet BN normalises with the batch statistics'
"""

from __future__ import annotations

from collections.abc import Mapping, Sized
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import numpy as np

from bnfuse.errors import ModelMismatchError, UnsupportedLayerError
from bnfuse.io.prototxt._lexer import literal_bool, literal_float

__all__ = [
    "BVLC_DEFAULT_EPS",
    "CUDNN_BN_MIN_EPSILON",
    "DIALECTS",
    "NORM_TYPES",
    "NVIDIA_MIN_EPS",
    "PSPNET_DEFAULT_EPS",
    "PSPNET_LEGACY_DEFAULT_VAR_EPS",
    "Dialect",
    "detect",
    "detect_layer",
    "nvidia_eps",
    "param_group",
]

#: Layer types that are a BatchNorm of some dialect.
NORM_TYPES = frozenset({"BatchNorm", "BN", "CuDNNBatchNorm"})
#: Every dialect name :func:`detect` returns (``unknown``: a layout bnfuse cannot establish).
DIALECTS = ("bvlc", "nvidia", "cudnn", "segnet", "pspnet", "pspnet-legacy", "unknown")

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

Statistics = Literal["stored", "batch", "none"]

# Fields that only one program's parameter message has; they tell the dialects apart when
# no caffemodel is loaded, and must agree with the blob count when one is.
_NVIDIA_SCALE_BIAS_FIELDS = frozenset({"scale_filler", "bias_filler"})
_NVIDIA_ONLY_FIELDS = frozenset({"scale_bias"}) | _NVIDIA_SCALE_BIAS_FIELDS
_SEGNET_ONLY_FIELDS = frozenset({"bn_mode"})
_PSP_NEW_ONLY_FIELDS = frozenset({"slope_filler", "bias_filler", "momentum", "eps", "frozen",
                                  "engine"})
_PSP_OLD_ONLY_FIELDS = frozenset({"var_eps", "moving_average", "decay", "axis"})
# scale_filler and shift_filler exist in both SegNet's and the older PSPNet's BNParameter.

_SOURCES = {
    "bvlc": "BVLC Caffe src/caffe/layers/batch_norm_layer.cpp",
    "nvidia": "NVIDIA/caffe 0.17 src/caffe/layers/batch_norm_layer.cpp",
    "cudnn": "hujie-frank/GENet src/caffe/layers/cudnn_batch_norm_layer.cpp",
    "segnet": "alexgkendall/caffe-segnet src/caffe/layers/bn_layer.cpp",
    "pspnet": "hszhao/PSPNet src/caffe/layers/bn_layer.cpp (released)",
    "pspnet-legacy": "hszhao/PSPNet src/caffe/layers/bn_layer.cpp (commit 88d0b3ee8082)",
    "unknown": "",
}
_ROLES: dict[str, tuple[str, ...]] = {
    "bvlc": ("mean", "variance", "factor"),
    "nvidia": ("mean", "variance", "correction"),
    "cudnn": ("scale", "shift", "mean", "variance"),
    "segnet": ("scale", "shift"),
    "pspnet": ("scale", "shift", "mean", "variance"),
    "pspnet-legacy": ("scale", "shift", "mean", "variance"),
    "unknown": (),
}
_FORMULAS = {
    "bvlc": "(x - mean/f) / sqrt(variance/f + eps), f the factor blob (0 if f == 0)",
    "nvidia": "(x - mean) / sqrt(variance + eps)",
    "nvidia-5": "(x - mean) / sqrt(variance + eps) * scale + shift",
    "cudnn": "scale * (x - mean) / sqrt(variance + eps) + shift",
    "segnet": "scale * x + shift",
    "pspnet": "scale * (x - mean) / sqrt(variance + eps) + shift",
    "pspnet-legacy": "scale * (x - mean) / sqrt(variance + eps) + shift",
    "unknown": "",
}


@dataclass(frozen=True)
class Dialect:
    """What a BatchNorm-like layer is: its blob roles, its eps and its TEST-phase meaning.

    ``roles`` names each blob in order: ``mean``, ``variance``, ``factor`` (BVLC's
    moving-average factor: mean and variance are stored multiplied by it),
    ``correction`` (NVIDIA's, never read), ``scale`` and ``shift``. ``statistics`` is
    ``"stored"`` (the blobs' mean and variance), ``"batch"`` (the batch's own: not an
    affine map at inference) or ``"none"`` (SegNet INFERENCE: no normalisation at all).
    ``reason`` says why the layer is not a foldable affine map (``None``: it is);
    ``note`` records a reading decision worth reporting.

    Example:
        >>> d = detect("CuDNNBatchNorm", {}, 4)
        >>> d.index("mean"), d.eps, d.blob_shapes(8)[0]  # eps clamped to CUDNN_BN_MIN_EPSILON
        (2, 1e-05, (1, 8, 1, 1))
    """

    name: str
    layer_type: str
    roles: tuple[str, ...]
    eps: float | None
    statistics: Statistics
    reason: str | None = None
    note: str | None = None

    @property
    def foldable(self) -> bool:
        """True when the layer is a known per-channel affine map at inference.

        Example:
            >>> detect("BN", {"bn_mode": "INFERENCE"}, 2).foldable
            True
        """
        return self.reason is None and self.name != "unknown"

    @property
    def formula(self) -> str:
        """The TEST-phase output as a formula of the blob roles (for reports and docs).

        Example:
            >>> detect("BN", {"bn_mode": "INFERENCE"}, 2).formula
            'scale * x + shift'
        """
        key = "nvidia-5" if self.name == "nvidia" and "scale" in self.roles else self.name
        return _FORMULAS[key]

    @property
    def source(self) -> str:
        """The fork source whose semantics this dialect follows.

        Example:
            >>> detect("BatchNorm", {}, 3).source
            'BVLC Caffe src/caffe/layers/batch_norm_layer.cpp'
        """
        return _SOURCES[self.name]

    def has(self, role: str) -> bool:
        """True when one of the blobs plays ``role``.

        Example:
            >>> detect("BatchNorm", {}, 5).has("scale"), detect("BatchNorm", {}, 3).has("scale")
            (True, False)
        """
        return role in self.roles

    def index(self, role: str) -> int:
        """Position of the blob playing ``role``; ``KeyError`` when no blob does.

        Example:
            >>> detect("BN", {"slope_filler": None}, 4).index("variance")
            3
        """
        try:
            return self.roles.index(role)
        except ValueError:
            raise KeyError(f"{self.name} BatchNorm has no {role!r} blob") from None

    def blob_shapes(self, channels: int) -> list[tuple[int, ...]]:
        """The blob shapes the fork creates for ``channels`` input channels.

        BVLC and NVIDIA keep ``(C,)`` vectors and a ``(1,)`` factor/correction; the
        other forks keep ``(1, C, 1, 1)`` blobs.

        Example:
            >>> detect("BatchNorm", {}, 3).blob_shapes(4)
            [(4,), (4,), (1,)]
        """
        if self.name in ("bvlc", "nvidia"):
            return [(1,) if role in ("factor", "correction") else (channels,)
                    for role in self.roles]
        return [(1, channels, 1, 1)] * len(self.roles)

    def with_stored_statistics(self) -> Dialect:
        """The same layer read with its stored statistics (``--force-global-stats``).

        Only a BVLC/NVIDIA ``use_global_stats: false`` layer changes; the result computes
        something else than the layer did, which is what the caller asked for.

        Example:
            >>> d = detect("BatchNorm", {"use_global_stats": "false"}, 3)
            >>> d.foldable, d.with_stored_statistics().foldable
            (False, True)
        """
        if self.statistics != "batch" or self.name not in ("bvlc", "nvidia"):
            return self
        return replace(self, statistics="stored", reason=None,
                       note="use_global_stats: false overridden: folded with the stored "
                            "statistics")


class _NormLayer(Protocol):
    @property
    def type(self) -> str: ...

    @property
    def blobs(self) -> Sized: ...


def _written_fields(layer: _NormLayer, group: str) -> dict[str, object]:
    """The fields written in ``group``: from the layer's text when it has one (fork fields
    included), else from its typed parameters (a layer built in code)."""
    fields_of = getattr(layer, "fields_of", None)
    if fields_of is not None:
        written: dict[str, object] = fields_of(group)
        return written
    param = getattr(layer, "param", None)
    if param is None or group not in param.DESCRIPTOR.fields_by_name or \
            not param.HasField(group):
        return {}
    return {field.name: value for field, value in getattr(param, group).ListFields()}


def _as_bool(value: object, field: str) -> bool:
    """A ``bool`` field as C++'s text parser reads it (``true``, ``t``, ``1``, ...)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip()
    parsed = literal_bool(text, "identifier" if text[:1].isalpha() else "number")
    if parsed is None:
        raise ModelMismatchError(f"{field}: expected true or false, got {text[:40]!r}")
    return parsed


def _as_float(value: object, field: str) -> float:
    """A ``float`` proto field as Caffe holds it: parsed as C++ reads it, then float32."""
    if isinstance(value, bool):
        raise ModelMismatchError(f"{field}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        number: float | None = float(value)
    else:
        # Text from a prototxt: the same literal rules as the text parser (1e-5f, inf, ...).
        text = str(value).strip()
        try:
            number = literal_float(text, "number")
        except ValueError:
            number = None
        if number is None:
            raise ModelMismatchError(f"{field}: expected a number, got {text[:40]!r}")
    # eps and var_eps are `float` fields: the C++ layer reads float32(value), so 1e-5 is
    # 9.99999974738e-06 there, in float and in double precision alike.
    with np.errstate(over="ignore"):
        return float(np.float32(number))


def nvidia_eps(eps: float) -> float:
    """The eps NVIDIA Caffe actually adds: ``std::max<float>(eps, 0.00001f)``, in float32.

    Example:
        >>> nvidia_eps(1e-8) == NVIDIA_MIN_EPS, nvidia_eps(0.5)
        (True, 0.5)
    """
    # The comparison and the stored value are float32 in the C++ source.
    return float(max(np.float32(eps), np.float32(NVIDIA_MIN_EPS)))


def _unknown(layer_type: str, reason: str) -> Dialect:
    return Dialect("unknown", layer_type, (), None, "stored", reason)


def _count_reason(flavour: str, count: int, *expected: int) -> str:
    wanted = " or ".join(str(c) for c in expected)
    return f"{flavour} with {count} blobs is a layout bnfuse does not know (expected {wanted})"


def _batchnorm(fields: Mapping[str, object], count: int | None) -> Dialect:
    eps = _as_float(fields.get("eps", BVLC_DEFAULT_EPS), "batch_norm_param.eps")
    batch = "use_global_stats" in fields and not _as_bool(
        fields["use_global_stats"], "batch_norm_param.use_global_stats")
    nvidia_text = bool(_NVIDIA_ONLY_FIELDS & fields.keys())
    scale_bias = bool(_NVIDIA_SCALE_BIAS_FIELDS & fields.keys()) or (
        "scale_bias" in fields and _as_bool(fields["scale_bias"], "batch_norm_param.scale_bias"))
    if count is None:  # no caffemodel: the fields say which layout the fork would create
        count = 5 if scale_bias else 3
    statistics: Statistics = "batch" if batch else "stored"
    reason = ("use_global_stats is false: BatchNorm normalises with the batch statistics"
              if batch else None)
    # NVIDIA's TEST branch always uses the stored statistics, whatever use_global_stats says.
    nvidia_note = ("use_global_stats: false is ignored: NVIDIA Caffe uses the stored "
                   "statistics in TEST" if batch else None)
    if count == 5:
        roles = (*_ROLES["nvidia"], "scale", "shift")
        return Dialect("nvidia", "BatchNorm", roles, nvidia_eps(eps), "stored", None,
                       nvidia_note)
    if count != 3:
        return _unknown("BatchNorm", _count_reason("BatchNorm", count, 3, 5))
    if nvidia_text and not scale_bias:
        # NVIDIA text with its 3-blob layout: statistics used directly, eps clamped.
        return Dialect("nvidia", "BatchNorm", _ROLES["nvidia"], nvidia_eps(eps), "stored", None,
                       nvidia_note)
    note = None
    if scale_bias:
        # NVIDIA Caffe would create 5 blobs for these fields and refuse this caffemodel;
        # BVLC's layout is the only one that fits 3 blobs (and what OpenCV reads).
        named = sorted(_NVIDIA_ONLY_FIELDS & fields.keys())[0]
        note = (f"batch_norm_param sets NVIDIA's {named}, which means 5 blobs there; the "
                "caffemodel has 3, read as BVLC's (mean·f, variance·f, f)")
    return Dialect("bvlc", "BatchNorm", _ROLES["bvlc"], eps, statistics, reason, note)


def _cudnn(fields: Mapping[str, object], count: int | None) -> Dialect:
    if count not in (None, 4):
        return _unknown("CuDNNBatchNorm", _count_reason("CuDNNBatchNorm", count or 0, 4))
    eps = _as_float(fields.get("eps", BVLC_DEFAULT_EPS), "batch_norm_param.eps")
    return Dialect("cudnn", "CuDNNBatchNorm", _ROLES["cudnn"], max(eps, CUDNN_BN_MIN_EPSILON),
                   "stored")


def _segnet(fields: Mapping[str, object]) -> Dialect:
    mode = fields.get("bn_mode")
    name = "LEARN" if mode is None else str(mode).strip().upper()
    if name == "INFERENCE":
        return Dialect("segnet", "BN", _ROLES["segnet"], None, "none")
    shown = name if mode is not None else "LEARN"
    return Dialect("segnet", "BN", _ROLES["segnet"], None, "batch",
                   f"bn_mode is {shown[:40]}: SegNet BN normalises with the batch statistics")


def _pspnet(fields: Mapping[str, object], dialect: str) -> Dialect:
    if dialect == "pspnet":
        eps = _as_float(fields.get("eps", PSPNET_DEFAULT_EPS), "bn_param.eps")
        return Dialect("pspnet", "BN", _ROLES["pspnet"], eps, "stored")
    eps = _as_float(fields.get("var_eps", PSPNET_LEGACY_DEFAULT_VAR_EPS), "bn_param.var_eps")
    reason = None
    statistics: Statistics = "stored"
    if not _as_bool(fields.get("moving_average", False), "bn_param.moving_average"):
        reason = "moving_average is not true: this BN normalises with the batch statistics"
        statistics = "batch"
    elif _as_float(fields.get("axis", 1), "bn_param.axis") != 1:
        reason = "bn_param.axis is not 1: the layer does not normalise over channels"
    return Dialect("pspnet-legacy", "BN", _ROLES["pspnet-legacy"], eps, statistics, reason)


def _bn(fields: Mapping[str, object], count: int | None, bn_dialect: str | None) -> Dialect:
    if bn_dialect not in (None, "pspnet", "pspnet-legacy"):
        raise UnsupportedLayerError(
            f"unknown BN dialect {str(bn_dialect)[:40]!r}; expected 'pspnet' or 'pspnet-legacy'")
    segnet = bool(_SEGNET_ONLY_FIELDS & fields.keys())
    new = sorted(_PSP_NEW_ONLY_FIELDS & fields.keys())
    old = sorted(_PSP_OLD_ONLY_FIELDS & fields.keys())
    if new and old and bn_dialect is None:
        return _unknown("BN", f"bn_param mixes fields of both PSPNet BN dialects "
                              f"({new[0]} and {old[0]})")
    psp_fields = new or old
    if count is None:  # no caffemodel: SegNet unless a PSPNet-only field is written
        count = 4 if (psp_fields or bn_dialect) and not segnet else 2
    if count == 2:
        if psp_fields:
            return _unknown("BN", f"bn_param sets PSPNet's {psp_fields[0]}, but the caffemodel "
                                  "has SegNet's 2 blobs (scale, shift)")
        return _segnet(fields)
    if count != 4:
        return _unknown("BN", _count_reason("BN", count, 2, 4))
    if segnet:
        return _unknown("BN", "bn_param sets SegNet's bn_mode, but the caffemodel has "
                              "PSPNet's 4 blobs (scale, shift, mean, variance)")
    dialect = bn_dialect or ("pspnet" if new else "pspnet-legacy" if old else None)
    if dialect is None:
        return _unknown("BN", "bn_param does not tell the PSPNet BN dialects apart (the older "
                              "one uses batch statistics unless moving_average is true); "
                              "choose one explicitly")
    return _pspnet(fields, dialect)


def detect(
    layer_type: str,
    fields: Mapping[str, object] | None,
    blob_count: int | None,
    *,
    bn_dialect: str | None = None,
) -> Dialect:
    """The dialect of a BatchNorm-like layer: the only function that decides it.

    ``fields`` maps the names written in the layer's ``batch_norm_param`` (types
    ``BatchNorm``, ``CuDNNBatchNorm``) or ``bn_param`` (``BN``) block to their values
    (text, numbers, or anything for a sub-message). ``blob_count`` is the number of
    blobs in the caffemodel, or ``None`` when no weights are loaded: the fields then say
    which layout the fork would create. Rules:

    - ``BatchNorm``: 5 blobs, or no weights and NVIDIA's ``scale_bias``/fillers: NVIDIA
      with scale and shift. 3 blobs: BVLC, except NVIDIA text without scale/bias
      (``scale_bias: false``), which is NVIDIA's 3-blob layout. An explicit
      ``use_global_stats: false`` means batch statistics in BVLC; NVIDIA's TEST phase
      ignores it.
    - ``CuDNNBatchNorm``: the 4-blob GENet layout, eps clamped to 1e-5.
    - ``BN``: 2 blobs SegNet (foldable only in ``bn_mode: INFERENCE``), 4 blobs PSPNet;
      without weights, SegNet unless a PSPNet-only field is written. PSPNet's two
      revisions are told apart by their own fields; ``bn_dialect`` chooses when none is
      written. Fields that contradict the blob count give ``unknown``.

    Example:
        >>> detect("BN", {"axis": "1", "decay": "0.9"}, None).name
        'pspnet-legacy'
        >>> detect("BatchNorm", {"scale_filler": None}, 3).name
        'bvlc'
        >>> detect("Convolution", {}, 2).reason
        "layer type 'Convolution' is not a BatchNorm dialect"
    """
    given: Mapping[str, object] = fields or {}
    if layer_type == "BatchNorm":
        return _batchnorm(given, blob_count)
    if layer_type == "CuDNNBatchNorm":
        return _cudnn(given, blob_count)
    if layer_type == "BN":
        return _bn(given, blob_count, bn_dialect)
    return _unknown(layer_type, f"layer type {layer_type[:60]!r} is not a BatchNorm dialect")


def param_group(layer_type: str) -> str:
    """The parameter block a BatchNorm dialect's fields are written in.

    Example:
        >>> param_group("BN"), param_group("BatchNorm")
        ('bn_param', 'batch_norm_param')
    """
    return "bn_param" if layer_type == "BN" else "batch_norm_param"


def detect_layer(layer: _NormLayer, *, bn_dialect: str | None = None,
                 weights_loaded: bool | None = None) -> Dialect:
    """:func:`detect` for a loaded layer: its written fields and its blob count.

    ``weights_loaded`` says whether the layer's blobs come from a caffemodel (the count
    decides) or not (the fields decide); by default, a layer with blobs has them loaded.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'layer { name: "b" type: "BN" bottom: "x" top: "x" '
        ...                   b'bn_param { bn_mode: INFERENCE } }')
        >>> detect_layer(net.layers[0]).name
        'segnet'
    """
    count = len(layer.blobs)
    loaded = bool(count) if weights_loaded is None else weights_loaded
    fields = _written_fields(layer, param_group(layer.type))
    return detect(layer.type, fields, count if loaded else None, bn_dialect=bn_dialect)
