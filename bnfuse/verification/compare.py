"""``verify()``: run two nets on the same inputs and compare every blob they share.

What is compared
----------------
Each net is run once by a backend (:mod:`bnfuse.verification.backends`); every backend
returns each blob's *final* value, the value Caffe's ``net.blobs`` holds after the
forward pass (an in-place blob is overwritten by each layer that writes it).
Every blob name both runs produced is compared, except the inputs (fed identically).

Folding keeps these final values meaningful: the folded producer publishes the
name of the last folded layer's top, so

- an in-place chain ``conv1 -> bn1 -> scale1 -> relu1`` (all writing ``conv1``)
  ends, before and after folding, with ReLU's output in ``conv1``;
- with renamed tops (``conv1``, ``conv1/bn``, ``conv1/scale``) the folded net
  writes ``conv1/scale`` directly, and ``conv1``/``conv1/bn`` exist only in the
  original: they are listed in :attr:`VerifyResult.only_in_a`, not compared.

One case keeps a name but changes what it holds: a *forward* fold (BatchNorm +
Scale folded into the next convolution) of an in-place BatchNorm on, say,
``pool1``: originally ``pool1`` ends normalised, after folding it ends as the raw
pooling output, and the normalisation lives inside the next convolution's
weights. This is recognised from the writers of the name: when one net's last
writer of a blob is an *earlier* writer of it in the other net, the other net's
later writers are all gone, and that layer has no weights (so it cannot have
absorbed them), the blob is listed in :attr:`VerifyResult.not_compared` with the
reason. Everything downstream (the convolution's output) is still compared.

Metric and default tolerances
-----------------------------
For each blob, with ``A`` the value in net ``a`` (the reference) and ``B`` in net ``b``:
``max_abs = max|A - B|``, ``max_rel = max_abs / max|A|`` (0 when both are all
zero, infinite when only ``A`` is). A blob passes when the shapes agree, the
non-finite values agree, and ``max_abs <= atol + rtol_blob * max|A|``.

Defaults are what reordering floating-point operations can explain and nothing
more. Real Caffe in float32 measures a correct fold at a max relative difference
of about 2e-4 (ResNet-50), 4e-4 (Inception-v3) and 4e-3 (ResNet-152); wrong folds
are at 0.1 to 0.9 (``../shared/design/FOLDING.md``), and a wrong eps in a
one-layer net (golden case ``bn_without_scale_eps``) at only 1.7e-3, against
3e-7 for the correct fold. Rounding grows with depth, so the default float32
tolerance is ``rtol_blob = 2e-4 * max(1, d / 5)``, where ``d`` is the number of
weighted layers (convolutions, inner products) on the longest path from the
inputs to the blob: 2e-4 for shallow blobs, 1e-3 at depth 25, about 2e-3 at the
end of ResNet-50 and 6e-3 at the end of ResNet-152 (above the measured 4e-3, still
15x below the smallest wrong fold of a deep net). float64 uses ``1e-6`` with the
same scaling: the arithmetic then adds almost no rounding, but a folded caffemodel
stores its weights in float32, whose rounding (~6e-8 per weight) is still there. ``atol`` (1e-7 in
float32, 1e-15 in float64) only matters for blobs that are (almost) all zero. An explicit
``rtol`` is applied as given, without depth scaling.

That default is a *floor*. Deep nets amplify rounding by very different amounts (a deep
plain chain with random weights turns one ulp of its weights into 4e-3 of its output), so
by default the tolerance is measured on net ``a`` itself: ``max(floor, 4 x noise)``, the
noise being what moving every weight of ``a`` by one ulp does to the blob
(:mod:`bnfuse.verification.calibrate`, measured numbers in ``docs/math.md``); blobs that
would need more than 0.05 are too sensitive to judge and listed in ``not_compared``.
Index-valued blobs are compared exactly, ``DetectionOutput`` blobs as sets of detections
(:mod:`bnfuse.verification.metrics`, :mod:`bnfuse.verification.detections`).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> import bnfuse
    >>> from bnfuse.verification.compare import verify
    >>> orig = (bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
    >>> out = Path(tempfile.mkdtemp())
    >>> bnfuse.fold(*orig).save(out / "f.prototxt", out / "f.caffemodel")
    >>> result = verify(orig, (out / "f.prototxt", out / "f.caffemodel"))
    >>> result.passed, result.first_divergence
    (True, None)
    >>> print(result.summary())  # doctest: +ELLIPSIS
    PASSED (numpy, float32): 5 blobs compared, largest relative difference ...
    top-5 of 'prob': top-1 agrees on 100% of 1 items, top-5 overlap 100%
    not compared: 2 blobs only in a, 0 only in b
    noise (weights of a moved one ulp): largest ... in '...'; tolerance max(default, 4 x ...
    >>> result.only_in_a  # renamed tops of the folded BatchNorm and Scale
    ['conv2', 'conv2/bn']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from bnfuse._checks import (
    require_bool,
    require_callable,
    require_inputs,
    require_int,
    require_net_or_paths,
    require_optional_number,
    require_seed,
)
from bnfuse._text import escape_user_text
from bnfuse.errors import BnfuseError, UnsupportedLayerError
from bnfuse.graph import Graph, build_graph
from bnfuse.layertypes import accumulates
from bnfuse.layertypes.shapes import is_input_layer
from bnfuse.verification._given import (
    MAX_INPUT_MEMBERS,
    Inputs,
    given_input_shapes,
    load_inputs,
    resolve_inputs,
)
from bnfuse.verification.backends import (
    BACKENDS,
    BackendRun,
    NetOrPaths,
    Progress,
    as_net,
    get_backend,
)
from bnfuse.verification.budget import (
    MemoryBudgetError,
    check_budget,
    estimate_verify,
    format_size,
    resolve_max_memory,
)
from bnfuse.verification.calibrate import measure_noise
from bnfuse.verification.detections import detection_rules
from bnfuse.verification.metrics import (
    BlobComparison,
    Noise,
    _sortable,
    blob_kind,
    blob_noise,
    compare_detection_blob,
    compare_indices,
    compare_values,
)

if TYPE_CHECKING:
    from bnfuse.net import Layer, Net

Array = npt.NDArray[Any]

#: Depth (weighted layers) up to which the default tolerance is not widened.
DEPTH_UNIT = 5
#: A fold may differ from the original by this many times the measured noise.
NOISE_MULTIPLE = 4.0
#: No calibrated tolerance exceeds this (relative; the smallest wrong fold measured on a
#: deep net is at 0.1): a blob that would need more is too sensitive to be judged.
NOISE_CEILING = 0.05


@dataclass(frozen=True)
class Tolerances:
    """The tolerances a comparison used.

    ``rtol`` is relative to each blob's max ``|value|`` in the reference net; when
    ``depth_scaled`` is true the tolerance of a blob ``d`` weighted layers deep is
    ``rtol * max(1, d / 5)``: the *floor*. When ``calibrated`` is true, a blob whose
    measured noise is ``n`` (see :func:`verify`) gets ``max(floor, noise_multiple * n)``,
    and is not judged at all when that exceeds both the floor and ``ceiling``.

    Example:
        >>> tol = default_tolerances(np.float32)
        >>> tol.rtol, tol.for_depth(5), round(tol.for_depth(50), 6)
        (0.0002, 0.0002, 0.002)
        >>> calibrated = Tolerances(2e-4, 1e-7, True, "float32", calibrated=True)
        >>> calibrated.with_noise(2e-4, 1e-3), calibrated.too_noisy(2e-4, 1e-3)
        (0.004, False)
        >>> calibrated.too_noisy(2e-4, 0.02)  # 4 x 0.02 > 0.05
        True
    """

    rtol: float
    atol: float
    depth_scaled: bool
    dtype: str
    calibrated: bool = False
    noise_multiple: float = NOISE_MULTIPLE
    ceiling: float = NOISE_CEILING

    def for_depth(self, depth: int) -> float:
        """The relative tolerance for a blob ``depth`` weighted layers from the inputs."""
        if not self.depth_scaled:
            return self.rtol
        return self.rtol * max(1.0, depth / DEPTH_UNIT)

    def with_noise(self, floor: float, noise: float | None) -> float:
        """The tolerance of a blob whose floor is ``floor`` and measured noise ``noise``."""
        if not self.calibrated or noise is None or not math.isfinite(noise):
            return floor
        return max(floor, self.noise_multiple * noise)

    def too_noisy(self, floor: float, noise: float | None) -> bool:
        """Whether a blob with this noise cannot be judged: its tolerance would exceed
        both the floor and the ceiling (or one ulp made its values non-finite)."""
        if not self.calibrated or noise is None:
            return False
        return not self.noise_multiple * noise <= max(floor, self.ceiling)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {"rtol": self.rtol, "atol": self.atol, "depth_scaled": self.depth_scaled,
                "depth_unit": DEPTH_UNIT, "dtype": self.dtype, "calibrated": self.calibrated,
                "noise_multiple": self.noise_multiple, "ceiling": self.ceiling}


def default_tolerances(
    dtype: npt.DTypeLike = np.float32, rtol: float | None = None, atol: float | None = None
) -> Tolerances:
    """The tolerances :func:`verify` uses for ``dtype`` (explicit values win, unscaled).

    Example:
        >>> default_tolerances(np.float64).rtol
        1e-06
        >>> default_tolerances(np.float32, rtol=0.01).depth_scaled
        False
    """
    resolved = np.dtype(dtype)
    wide = resolved == np.dtype(np.float32)
    return Tolerances(
        rtol=float(rtol) if rtol is not None else (2e-4 if wide else 1e-6),
        atol=float(atol) if atol is not None else (1e-7 if wide else 1e-15),
        depth_scaled=rtol is None,
        dtype=str(resolved),
    )


@dataclass
class TopKAgreement:
    """How far the final class scores of the two nets agree.

    For an output of shape ``(N, C)`` (trailing axes of size 1 ignored, ``C >= 2``):
    ``top1`` is the fraction of the ``N`` items whose arg-max is the same in both
    nets; ``overlap`` is the mean over items of ``|topk(A) ∩ topk(B)| / k`` with
    ``k = min(top_k, C)``. Informational: it does not decide :attr:`VerifyResult.passed`.

    Example:
        >>> TopKAgreement("prob", 5, 2, 1.0, 0.9).to_dict()["top1"]
        1.0
    """

    name: str
    k: int
    items: int
    top1: float
    overlap: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {"name": self.name, "k": self.k, "items": self.items, "top1": self.top1,
                "overlap": self.overlap}


@dataclass
class VerifyResult:
    """The outcome of :func:`verify` (or :func:`bnfuse.verification.local.verify_local`).

    ``passed`` is true when every compared blob passed and no output of either net
    is missing from the other. ``blobs`` are in the order their final value was
    computed in net ``a``; ``first_divergence`` is the first failing one. ``scope`` is
    ``"net"`` when both whole nets ran and ``"local"`` when only the layers that differ
    were checked; ``scope_reason`` then says why the whole nets could not run (empty
    when the local check was called directly).

    Example:
        >>> r = VerifyResult(passed=True, blobs=[], first_divergence=None, topk=[],
        ...                  backend="numpy", tolerances=default_tolerances())
        >>> r.to_dict()["passed"], r.to_dict()["scope"]
        (True, 'net')
    """

    passed: bool
    blobs: list[BlobComparison]
    first_divergence: str | None
    topk: list[TopKAgreement]
    backend: str
    tolerances: Tolerances
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    #: Names present in both nets whose final values mean different things, with why.
    not_compared: list[tuple[str, str]] = field(default_factory=list)
    #: Outputs of one net that the other does not produce (each one fails the check).
    missing_outputs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: ``"net"``: both whole nets were run; ``"local"``: only the layers that differ.
    scope: str = "net"
    #: Why a local check was made instead of a whole-net one ("" when it was asked for).
    scope_reason: str = ""

    @property
    def failures(self) -> list[BlobComparison]:
        """The blobs that failed, in order."""
        return [blob for blob in self.blobs if not blob.passed]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (used by ``bnfuse verify --json``)."""
        return {
            "passed": self.passed,
            "backend": self.backend,
            "tolerances": self.tolerances.to_dict(),
            "first_divergence": self.first_divergence,
            "blobs": [blob.to_dict() for blob in self.blobs],
            "topk": [item.to_dict() for item in self.topk],
            "only_in_a": list(self.only_in_a),
            "only_in_b": list(self.only_in_b),
            "not_compared": [{"name": n, "reason": r} for n, r in self.not_compared],
            "missing_outputs": list(self.missing_outputs),
            "notes": list(self.notes),
            "scope": self.scope,
            "scope_reason": self.scope_reason,
        }

    def summary(self, max_lines: int = 10) -> str:
        """A few readable lines: verdict, worst blob, failures, top-k, what was skipped.

        Example:
            >>> print(VerifyResult(True, [], None, [], "numpy", default_tolerances()).summary())
            PASSED (numpy, float32): 0 blobs compared
        """
        verdict = "PASSED" if self.passed else "FAILED"
        values = [blob for blob in self.blobs if blob.kind == "values"]
        lines = [f"{verdict} ({self.backend}, {self.tolerances.dtype}): "
                 f"{len(values)} blobs compared"]
        if values:
            worst = max(values, key=lambda b: (not b.passed, _sortable(b.max_rel)))
            lines[0] += (f", largest relative difference {worst.max_rel:.2e} in "
                         f"'{worst.name}' (tolerance {worst.rtol:.1e}")
            if worst.noise is not None and worst.noise.rel is not None:
                lines[0] += f", noise {worst.noise.rel:.1e}"
            lines[0] += ")"
        lines.extend(self._apart_lines())
        if self.scope_reason:
            lines.append(f"note: {self.scope_reason}; comparing the changed layers locally "
                         "instead")
        if self.first_divergence is not None:
            lines.append(f"first divergence: '{self.first_divergence}'")
        for blob in self.failures[:max_lines]:
            lines.append(f"  {blob.name}: {blob.reason or 'differs'} ({blob.describe()})")
        if len(self.failures) > max_lines:
            lines.append(f"  ... and {len(self.failures) - max_lines} more failing blobs")
        for name in self.missing_outputs:
            lines.append(f"missing output: '{name}'")
        for item in self.topk:
            lines.append(f"top-{item.k} of '{item.name}': top-1 agrees on {item.top1:.0%} of "
                         f"{item.items} items, top-{item.k} overlap {item.overlap:.0%}")
        if self.only_in_a or self.only_in_b:
            lines.append(f"not compared: {len(self.only_in_a)} blobs only in a, "
                         f"{len(self.only_in_b)} only in b")
        for name, reason in self.not_compared[:max_lines]:
            lines.append(f"not compared: '{name}': {reason}")
        lines.extend(self.notes)
        return "\n".join(lines)

    def _apart_lines(self) -> list[str]:
        """The index-valued and detection blobs, reported apart from the values."""
        lines: list[str] = []
        indices = [blob for blob in self.blobs if blob.kind == "indices"]
        if indices:
            differing = sum(blob.differing for blob in indices)
            total = sum(math.prod(blob.shape_a or ()) for blob in indices)
            lines.append(f"indices: {len(indices)} blobs compared exactly, {differing} of "
                         f"{total} elements differ")
        lines.extend(f"detections '{blob.name}': {blob.describe()}"
                     for blob in self.blobs if blob.kind == "detections")
        return lines


# --------------------------------------------------------------------------- graph facts


def _writer_names(graph: Graph, layers: Sequence[Layer], name: str) -> list[str]:
    return [layers[index].name for index in graph.writers(name)]


def _moved_reason(name: str, writers_x: list[str], writers_y: list[str],
                  layers_y: Mapping[str, Layer], label_x: str) -> str | None:
    """Why net y's final value of ``name`` is an earlier version than net x's, or None."""
    last_y = writers_y[-1]
    if last_y == writers_x[-1] or last_y not in writers_x[:-1]:
        return None
    later = writers_x[writers_x.index(last_y) + 1:]
    if any(writer in writers_y for writer in later):
        return None
    layer = layers_y.get(last_y)
    if layer is None or layer.blobs:
        return None  # a layer with weights may have absorbed the later writers (a fold)
    return (f"in {label_x} it is last written by {later[-1]!r}; in the other net by "
            f"{last_y!r}, an earlier version (normalisation moved into a later layer)")


def _top_k(name: str, a: Array, b: Array, k: int) -> TopKAgreement | None:
    shape = list(a.shape)
    while len(shape) > 2 and shape[-1] == 1:
        shape.pop()
    if len(shape) != 2 or shape[1] < 2 or a.shape != b.shape or k < 1:
        return None
    sa = np.asarray(a, dtype=np.float64).reshape(shape)
    sb = np.asarray(b, dtype=np.float64).reshape(shape)
    if not (np.isfinite(sa).all() and np.isfinite(sb).all()):
        return None
    kk = min(k, shape[1])
    # Stable sort on negated scores: ties go to the lower class index in both nets.
    order_a = np.argsort(-sa, axis=1, kind="stable")[:, :kk]
    order_b = np.argsort(-sb, axis=1, kind="stable")[:, :kk]
    top1 = float(np.mean(order_a[:, 0] == order_b[:, 0]))
    overlap = float(np.mean([len(set(ra) & set(rb)) / kk
                             for ra, rb in zip(order_a.tolist(), order_b.tolist(), strict=True)]))
    return TopKAgreement(name=name, k=kk, items=shape[0], top1=top1, overlap=overlap)


def _too_noisy_reason(name: str, layer: Layer, depth: int, tolerances: Tolerances,
                      noise: Mapping[str, Noise] | None) -> str | None:
    """Why blob ``name`` is too sensitive to be judged (None: it can be judged)."""
    measured = None if noise is None else noise.get(name)
    if measured is None or measured.rel is None or blob_kind(layer, name) == "indices":
        return None
    if not tolerances.too_noisy(tolerances.for_depth(depth), measured.rel):
        return None
    return (f"too sensitive to judge: one ulp of net a's weights moves it by "
            f"{measured.rel:.1e}, so a tolerance of {tolerances.noise_multiple:g} x noise "
            f"would exceed {tolerances.ceiling:g}; float32 cannot tell a correct fold from "
            "a wrong one here")


def _pooled_input(layer: Layer, graph_b: Graph, position_b: Mapping[str, int],
                  values_b: Mapping[str, Array]) -> Array | None:
    """Net b's input of the pooling layer named like ``layer``, when its final value is
    what that pooling read (no later layer of b wrote over it in place)."""
    at = position_b.get(layer.name)
    if layer.type != "Pooling" or not layer.bottoms or at is None:
        return None
    bottom = layer.bottoms[0]
    if bottom not in values_b or any(i > at for i in graph_b.writers(bottom)):
        return None
    return values_b[bottom]


def _compare_blob(name: str, layer: Layer, a: Array, b: Array, *, depth: int,
                  tolerances: Tolerances, noise: Noise | None,
                  pooled: Array | None = None) -> BlobComparison:
    """One blob compared by its kind, with its floor and calibrated tolerance.

    ``pooled`` is net b's input of the MAX pooling whose mask ``name`` is, when known:
    ties among its values may break either way.
    """
    kind = blob_kind(layer, name)
    floor = tolerances.for_depth(depth)
    if kind == "indices":
        count = noise.count if noise is not None else None
        allowed = (int(tolerances.noise_multiple * count)
                   if tolerances.calibrated and count is not None else 0)
        comparison = compare_indices(name, a, b, allowed=allowed, pooled=pooled,
                                     rtol=floor, atol=tolerances.atol)
    else:
        rtol = tolerances.with_noise(floor, None if noise is None else noise.rel)
        if kind == "detections":
            comparison = compare_detection_blob(name, a, b, rtol=rtol, atol=tolerances.atol,
                                                rules=detection_rules(layer))
        else:
            comparison = compare_values(name, a, b, rtol=rtol, atol=tolerances.atol)
    comparison.kind = kind
    comparison.floor = floor
    comparison.noise = noise
    comparison.depth = depth
    comparison.producer = layer.name
    return comparison


def compare_runs(
    layers_a: Sequence[Layer],
    layers_b: Sequence[Layer],
    values_a: Mapping[str, Array],
    values_b: Mapping[str, Array],
    *,
    tolerances: Tolerances,
    backend: str,
    skip: Sequence[str] = (),
    top_k: int = 5,
    noise: Mapping[str, Noise] | None = None,
) -> VerifyResult:
    """Compare two runs' blobs (the core of :func:`verify`, reused by the local check).

    ``layers_a``/``layers_b`` are the layers that produced ``values_a``/``values_b``;
    ``skip`` names blobs not to compare (the inputs, fed identically); ``noise`` is the
    measured noise per blob (:func:`measure_noise`), used when ``tolerances.calibrated``.

    Example:
        >>> import bnfuse
        >>> from bnfuse.verification.executor import forward
        >>> net = bnfuse.load(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
        >>> blobs_a = forward(net, seed=0)
        >>> blobs_b = dict(blobs_a, fc=blobs_a["fc"] + 1.0)  # pretend net b got fc wrong
        >>> res = compare_runs(net.layers, net.layers, blobs_a, blobs_b, skip=["data"],
        ...                    tolerances=default_tolerances(), backend="numpy")
        >>> res.passed, res.first_divergence, [c.name for c in res.failures]
        (False, 'fc', ['fc'])
    """
    graph_a, graph_b = build_graph(layers_a), build_graph(layers_b)
    # Inputs are fed identically, so comparing them proves nothing, unless a layer
    # writes over one in place: then its final value is a result like any other.
    skipped = {name for name in skip
               if all(is_input_layer(layers_a[i]) for i in graph_a.writers(name))}
    by_name_a = {layer.name: layer for layer in layers_a}
    by_name_b = {layer.name: layer for layer in layers_b}
    position_b = {layer.name: i for i, layer in enumerate(layers_b)}
    depths = graph_a.depths(accumulates)
    # Order blobs by the position of the layer that wrote their final value in a.
    final_index = {n: i for n in values_a if (i := graph_a.last_writer(n)) is not None}
    order = sorted(final_index, key=lambda n: (final_index[n], n))
    outputs_a = [v.name for v in graph_a.outputs() if v.name not in skipped]
    outputs_b = [v.name for v in graph_b.outputs() if v.name not in skipped]
    comparisons: list[BlobComparison] = []
    not_compared: list[tuple[str, str]] = []
    topk: list[TopKAgreement] = []
    for name in order:
        if name in skipped or name not in values_b:
            continue
        reason = None
        writers_a = _writer_names(graph_a, layers_a, name)
        writers_b = _writer_names(graph_b, layers_b, name)
        if writers_a and writers_b:
            reason = (_moved_reason(name, writers_a, writers_b, by_name_b, "a")
                      or _moved_reason(name, writers_b, writers_a, by_name_a, "b"))
        depth = depths[graph_a.final_version(name)]
        reason = reason or _too_noisy_reason(name, layers_a[final_index[name]], depth,
                                             tolerances, noise)
        if reason is not None:
            not_compared.append((name, reason))
            continue
        producer = layers_a[final_index[name]]
        comparison = _compare_blob(name, producer, values_a[name],
                                   values_b[name], depth=depth,
                                   tolerances=tolerances,
                                   noise=None if noise is None else noise.get(name),
                                   pooled=_pooled_input(producer, graph_b, position_b,
                                                        values_b))
        comparison.is_output = name in outputs_a
        comparisons.append(comparison)
        if comparison.is_output and comparison.kind == "values":
            agreement = _top_k(name, values_a[name], values_b[name], top_k)
            if agreement is not None:
                topk.append(agreement)
    compared = {c.name for c in comparisons} | {n for n, _ in not_compared}
    only_a = [n for n in order if n not in skipped and n not in values_b]
    only_b = sorted(n for n in values_b if n not in values_a and n not in skipped)
    missing = [n for n in outputs_a if n not in compared and n not in values_b]
    missing += [n for n in outputs_b if n not in compared and n not in values_a]
    failures = [c for c in comparisons if not c.passed]
    return VerifyResult(
        passed=not failures and not missing,
        blobs=comparisons,
        first_divergence=failures[0].name if failures else None,
        topk=topk,
        backend=backend,
        tolerances=tolerances,
        only_in_a=only_a,
        only_in_b=only_b,
        not_compared=not_compared,
        missing_outputs=missing,
    )


# --------------------------------------------------------------------------- verify


#: Values of :func:`verify`'s ``fallback``.
FALLBACKS = ("none", "local")


def verify(
    a: NetOrPaths,
    b: NetOrPaths,
    *,
    inputs: Inputs | None = None,
    backend: str = "numpy",
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    top_k: int = 5,
    dtype: npt.DTypeLike = np.float32,
    allow_python_layers: bool = False,
    progress: Progress | None = None,
    fallback: str = "none",
    max_memory: int | None = None,
    calibrate: bool = True,
) -> VerifyResult:
    """Run nets ``a`` (the reference) and ``b`` on the same inputs and compare every blob.

    ``a`` and ``b`` are loaded Nets or ``(prototxt, caffemodel)`` path pairs.
    ``inputs`` is a mapping name -> array or a ``.npz`` path; by default seeded
    standard-normal data shaped by net ``a``'s Input layers. ``backend`` is
    ``"numpy"``, ``"opencv"`` or ``"pycaffe"``. ``progress(done, total, what)``
    is called as layers run. See the module docstring for the metric and the
    default tolerances.

    ``fallback`` says what to do when the whole-net run raises
    :class:`~bnfuse.errors.UnsupportedLayerError` (a layer the backend cannot run):
    ``"none"`` (the default) lets the error through; ``"local"`` checks only the
    layers that differ between ``a`` and ``b`` instead, with
    :func:`bnfuse.verification.local.verify_local` (same seed, tolerances, ``dtype``
    and ``top_k``), and returns its result with ``scope == "local"`` and the error's
    message as ``scope_reason``. The fallback applies to the numpy backend without
    explicit ``inputs`` only: the local check runs in numpy on seeded data, so it
    could not honour another backend or given inputs, and the error is raised then.
    This is what ``bnfuse verify`` and ``bnfuse fold --verify`` do.

    ``inputs`` must name inputs of net ``a`` only (``Input`` tops, or blobs read before
    any layer writes them), each of real numbers in the declared shape: anything else is
    refused before a value is read or cast. ``max_memory`` is the memory budget in bytes
    (default: half of the machine's memory, see :mod:`bnfuse.verification.budget`):
    before anything runs, the memory the comparison will hold is estimated from the blob
    shapes, and a :class:`~bnfuse.verification.budget.MemoryBudgetError` naming the
    estimate, the budget and the largest blob is raised above it. Wrong argument types
    raise ``TypeError``.

    ``calibrate`` (default true, ignored with an explicit ``rtol``) measures the noise of
    each blob on net ``a`` itself before judging: net ``a`` is run a second time by the
    numpy executor with every weight moved one ulp at random
    (:mod:`bnfuse.verification.calibrate`, signs from ``seed``), and a blob whose values
    moved by ``n`` (relative) may differ between ``a`` and ``b`` by ``max(floor, 4 * n)``,
    the floor being the depth-scaled default; an index-valued blob may have ``4 * k``
    differing elements when ``k`` moved. A blob whose ``4 * n`` exceeds both its floor
    and 0.05 is not judged: it is listed in :attr:`VerifyResult.not_compared` with its
    noise, as float32 cannot tell a correct fold from a wrong one there (the blobs before
    it still are judged). Each :class:`BlobComparison` carries its ``noise`` and
    ``floor``. When the executor cannot run net ``a``, the floors apply and a note says so.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import bnfuse
        >>> orig = (bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
        >>> out = Path(tempfile.mkdtemp())
        >>> bnfuse.fold(*orig).save(out / "f.prototxt", out / "f.caffemodel")
        >>> data = np.random.default_rng(0).standard_normal((1, 3, 32, 32))
        >>> result = verify(orig, (out / "f.prototxt", out / "f.caffemodel"),
        ...                 inputs={"data": data})
        >>> result.passed, result.tolerances.rtol, [b.name for b in result.blobs]
        (True, 0.0002, ['conv1', 'pool1', 'conv2/scale', 'fc', 'prob'])
        >>> result.scope
        'net'

        A net with a layer the numpy executor cannot run (here YOLO's ``Reorg``) is
        checked locally with ``fallback="local"``:

        >>> from bnfuse.verification.randweights import random_weights
        >>> text = b'''
        ... layer { name: "data" type: "Input" top: "data"
        ...         input_param { shape { dim: 1 dim: 4 dim: 6 dim: 6 } } }
        ... layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        ...         convolution_param { num_output: 4 kernel_size: 3 } }
        ... layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
        ... layer { name: "reorg" type: "Reorg" bottom: "conv" top: "out"
        ...         reorg_param { stride: 2 } }
        ... '''
        >>> original = random_weights(text, seed=0, unmeasurable="unit")
        >>> folded = bnfuse.fold_net(random_weights(text, seed=0, unmeasurable="unit")).net
        >>> checked = verify(original, folded, fallback="local")
        >>> checked.passed, checked.scope, [blob.name for blob in checked.blobs]
        (True, 'local', ['conv'])
        >>> print(checked.summary())  # doctest: +ELLIPSIS
        PASSED (numpy (local), float32): 1 blobs compared, ...
        note: layer 'reorg' has type 'Reorg', ... locally instead
        local check: 2 layers of a, 1 of b, 1 region inputs (seeded random data)
    """
    budget = _check_verify_arguments(
        a, b, inputs=inputs, backend=backend, rtol=rtol, atol=atol, seed=seed, top_k=top_k,
        dtype=dtype, allow_python_layers=allow_python_layers, progress=progress,
        fallback=fallback, max_memory=max_memory, calibrate=calibrate)
    run = get_backend(backend)
    tolerances = replace(default_tolerances(dtype, rtol, atol),
                         calibrated=calibrate and rtol is None)
    net_a, net_b = as_net(a), as_net(b)
    _check_verify_memory(net_a, net_b, inputs, dtype, budget,
                         calibrated=tolerances.calibrated)
    try:
        return _verify_whole(net_a, net_b, run, backend, tolerances, inputs=inputs, seed=seed,
                             top_k=top_k, dtype=dtype, allow_python_layers=allow_python_layers,
                             progress=progress, max_bytes=budget)
    except MemoryError:
        raise MemoryBudgetError(
            "verifying the two nets ran out of memory although the estimate was within the "
            f"budget of {format_size(budget)}; lower --max-memory (max_memory=) to what this "
            "machine can spare, or declare smaller inputs (--batch, --input-shape; "
            "input_shapes=)") from None
    except UnsupportedLayerError as exc:
        if fallback != "local" or backend != "numpy" or inputs is not None:
            raise
        from bnfuse.verification.local import verify_local

        # Nets with layers the executor cannot run (SSD's PriorBox, custom layers) are
        # still checked: every changed layer is run on random data fed at its boundary.
        result = verify_local(net_a, net_b, seed=seed, rtol=rtol, atol=atol, dtype=dtype,
                              top_k=top_k)
        result.scope_reason = str(exc)
        return result


def _check_verify_arguments(a: object, b: object, *, inputs: object, backend: object,
                            rtol: object, atol: object, seed: object, top_k: object,
                            dtype: object, allow_python_layers: object, progress: object,
                            fallback: object, max_memory: object, calibrate: object) -> int:
    """:func:`verify`'s own argument checks (``TypeError`` for a wrong type); the budget."""
    require_net_or_paths(a, "verify", "a")
    require_net_or_paths(b, "verify", "b")
    require_inputs(inputs, "verify")
    for name, value in (("backend", backend), ("fallback", fallback)):
        if not isinstance(value, str):
            raise TypeError(f"verify: {name} must be a str, not {type(value).__name__}")
    require_optional_number(rtol, "verify", "rtol")
    require_optional_number(atol, "verify", "atol")
    require_seed(seed, "verify")
    require_int(top_k, "verify", "top_k", minimum=1)
    try:
        resolved = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"verify: dtype must be numpy.float32 or numpy.float64, not "
                        f"{type(dtype).__name__}") from None
    if resolved not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise BnfuseError(f"verify: dtype must be float32 or float64, not {resolved}")
    require_bool(allow_python_layers, "verify", "allow_python_layers")
    require_bool(calibrate, "verify", "calibrate")
    require_callable(progress, "verify", "progress")
    if backend not in BACKENDS:
        raise BnfuseError(f"unknown verification backend {backend!r}; "
                          f"choose one of {', '.join(BACKENDS)}")
    if fallback not in FALLBACKS:
        raise BnfuseError(f"unknown verification fallback {fallback!r}; "
                          f"choose one of {', '.join(FALLBACKS)}")
    return resolve_max_memory(max_memory, "verify")


def _check_verify_memory(net_a: Net, net_b: Net, inputs: Inputs | None, dtype: npt.DTypeLike,
                         budget: int, *, calibrated: bool) -> None:
    """Refuse before anything runs when the comparison would not fit the memory budget."""
    given = given_input_shapes(net_a, inputs, budget)
    # The noise run holds net a's values twice (its own and the moved run's).
    estimate = estimate_verify(net_a, net_b, dtype=dtype, input_shapes=given,
                               noise_run=calibrated)
    names = (net_a.prototxt_source, net_b.prototxt_source)
    # The message names the files when there are files to name (not "<prototxt bytes>").
    doing = ("verifying the two nets" if any(n.startswith("<") for n in names)
             else f"verifying {escape_user_text(names[0])} against {escape_user_text(names[1])}")
    check_budget(estimate, budget, doing)


def _feed_of(net: Net, given: Mapping[str, Array]) -> dict[str, Array]:
    """The given inputs this net reads (the executor rejects unknown names)."""
    graph = build_graph(net.layers)
    return {name: value for name, value in given.items() if graph.versions_of(name)}


def _noise_or_note(net_a: Net, feed: Mapping[str, Array], tolerances: Tolerances, *,
                   dtype: npt.DTypeLike, seed: int,
                   baseline: Mapping[str, Array] | None) -> tuple[dict[str, Noise] | None, str]:
    """The measured noise of net ``a``, or None and why it could not be measured."""
    if not tolerances.calibrated:
        return None, ""
    try:
        return measure_noise(net_a, feed, dtype=dtype, seed=seed, baseline=baseline), ""
    except BnfuseError as exc:
        return None, (f"tolerance not calibrated (the numpy executor cannot run net a: "
                      f"{exc}); the depth-scaled defaults apply")


def _noise_notes(result: VerifyResult) -> list[str]:
    """Lines on the measured noise: the largest judged, and the blobs too noisy to judge."""
    measured = [blob for blob in result.blobs
                if blob.noise is not None and blob.noise.rel is not None]
    if not measured:
        return []
    tol = result.tolerances
    loud, name = max((_sortable(blob.noise.rel or 0.0), blob.name) for blob in measured
                     if blob.noise is not None)
    lines = [f"noise (weights of a moved one ulp): largest {loud:.1e} in '{name}'; "
             f"tolerance max(default, {tol.noise_multiple:g} x noise)"]
    unjudged = [blob for blob, why in result.not_compared if why.startswith("too sensitive")]
    if unjudged:
        lines.append(f"not judged: {len(unjudged)} blobs too sensitive to rounding (from "
                     f"'{unjudged[0]}'): their tolerance would exceed {tol.ceiling:g}")
    return lines


def _verify_whole(
    net_a: Net,
    net_b: Net,
    run: BackendRun,
    backend: str,
    tolerances: Tolerances,
    *,
    inputs: Inputs | None,
    seed: int,
    top_k: int,
    dtype: npt.DTypeLike,
    allow_python_layers: bool,
    progress: Progress | None,
    max_bytes: int | None = None,
) -> VerifyResult:
    """:func:`verify` on the whole nets, without the fallback: run, measure, compare."""
    given = resolve_inputs(net_a, inputs, seed, dtype, max_bytes)
    steps = _Progress(progress, len(net_a.layers), len(net_b.layers), tolerances.calibrated)
    feed_a = _feed_of(net_a, given)
    noise: dict[str, Noise] | None = None
    note = ""
    if backend != "numpy":
        # Measured by the numpy executor before the other backend holds anything.
        noise, note = _noise_or_note(net_a, feed_a, tolerances, dtype=dtype, seed=seed,
                                     baseline=None)
        steps.done("noise")
    # An unedited Net read from files reaches file-based backends as those files.
    values_a = run(net_a, feed_a, dtype=dtype, progress=steps.part("a"),
                   allow_python_layers=allow_python_layers)
    if backend == "numpy":
        noise, note = _noise_or_note(net_a, feed_a, tolerances, dtype=dtype, seed=seed,
                                     baseline=values_a)
        steps.done("noise")
    values_b = run(net_b, _feed_of(net_b, given), dtype=dtype, progress=steps.part("b"),
                   allow_python_layers=allow_python_layers)
    result = compare_runs(net_a.layers, net_b.layers, values_a, values_b,
                          tolerances=tolerances, backend=backend, skip=list(given), top_k=top_k,
                          noise=noise)
    result.notes.extend([note] if note else _noise_notes(result))
    steps.finish()
    return result


class _Progress:
    """Progress of :func:`verify`: net a's layers, the noise run, net b's, the comparison."""

    def __init__(self, report: Progress | None, size_a: int, size_b: int,
                 calibrated: bool) -> None:
        self._report = report
        self._sizes = {"a": max(1, size_a), "noise": max(1, size_a) if calibrated else 0,
                       "b": max(1, size_b)}
        self._offset = 0
        self.total = sum(self._sizes.values()) + 1

    def part(self, label: str) -> Progress | None:
        """The callback a backend reports its own steps of part ``label`` through."""
        if self._report is None:
            return None
        report, offset, size, total = self._report, self._offset, self._sizes[label], self.total
        self._offset += size

        def inner(done: int, of: int, what: str) -> None:
            report(offset + round(size * done / max(1, of)), total, f"{label}: {what}")

        return inner

    def done(self, label: str) -> None:
        """Part ``label`` (no callback of its own) has finished."""
        if self._report is not None and self._sizes[label]:
            self._offset += self._sizes[label]
            self._report(self._offset, self.total, label)

    def finish(self) -> None:
        """Everything, the comparison included, has finished."""
        if self._report is not None:
            self._report(self.total, self.total, "compared")


__all__ = [
    "DEPTH_UNIT",
    "FALLBACKS",
    "MAX_INPUT_MEMBERS",
    "NOISE_CEILING",
    "NOISE_MULTIPLE",
    "BlobComparison",
    "Inputs",
    "Noise",
    "Tolerances",
    "TopKAgreement",
    "VerifyResult",
    "blob_noise",
    "compare_detection_blob",
    "compare_indices",
    "compare_runs",
    "compare_values",
    "default_tolerances",
    "load_inputs",
    "measure_noise",
    "verify",
]
