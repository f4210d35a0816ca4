"""Memory budgets: estimate what running a net will take, and refuse above the budget.

A prototxt of a few hundred bytes can declare a 1x3x12000x12000 input; running it
(``bnfuse verify``, ``bnfuse fold --verify``, ``bnfuse random-weights``) would then ask
for tens of gigabytes and be killed by the kernel with no message. Before anything is
allocated, :func:`estimate_verify` and :func:`estimate_random_weights` compute from the
blob shapes alone (:func:`bnfuse.verification.local.known_shapes`, the same shape rules
the executor checks itself against) how much memory the run will hold at its peak, and
:func:`check_budget` refuses with :class:`MemoryBudgetError` above the budget, naming
the estimate, the budget and the largest blob.

How the estimate is made
------------------------
The executor is walked layer by layer. At each layer the live arrays are the values
still held, the layer's new tops, and its working arrays: the zero-padded input and the
column matrix of a convolution, the accumulator of a deconvolution, the padded copy of a
pooling, the temporaries of an LRN, a float64 draw of each seeded input, a cast copy of
weights stored in another dtype, and one top-sized temporary for other layers. Layers
that pass their bottom through (Split, Dropout, Flatten, Reshape) add nothing.

- :func:`estimate_verify` keeps every blob: ``verify`` compares every blob of both nets,
  so each value lives to the end (an in-place blob only in its final version). The peak
  is the larger of net a's run, net a's values plus net b's run, and both nets' values
  plus the float64 temporaries of comparing the largest blob (56 bytes a value).
- :func:`estimate_random_weights` drops each value after its last reader, as the
  generator does, and adds the weights made so far and the float64 temporaries of the
  BatchNorm measurement and of drawing the largest weight.

Shapes that cannot be inferred (a layer the executor cannot run, and what follows it)
count for nothing: the run stops there too, or the local check runs smaller regions.

The budget
----------
``max_memory`` in bytes; by default :func:`default_max_memory`, half of the machine's
physical memory (``os.sysconf``), lowered to half of the address-space limit
(``ulimit -v``) when that is smaller, and 4 GiB when neither can be read.

Example:
    >>> import bnfuse
    >>> net = bnfuse.load(b'''
    ... layer { name: "data" type: "Input" top: "data"
    ...         input_param { shape { dim: 1 dim: 3 dim: 12000 dim: 12000 } } }
    ... layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
    ...         convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }
    ... ''')
    >>> estimate = estimate_verify(net, net)
    >>> estimate.largest_blob, estimate.largest_shape, format_size(estimate.peak_bytes)
    ('data', (1, 3, 12000, 12000), '27.4 GiB')
    >>> check_budget(estimate, parse_size("8G"), "verifying the nets")
    Traceback (most recent call last):
    ...
    bnfuse.errors.MemoryBudgetError: verifying the nets needs about 27.4 GiB \
(29,376,000,000 bytes) of memory at its peak (comparing the blobs), more than the budget \
of 8.0 GiB (8,589,934,592 bytes); \
the largest blob is 'data' with shape (1, 3, 12000, 12000) (1.6 GiB); allow more with \
--max-memory (max_memory=) or declare smaller inputs (--batch, --input-shape; input_shapes=)
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from bnfuse._text import quote_user_text
from bnfuse.errors import BnfuseError, MemoryBudgetError
from bnfuse.layertypes.shapes import is_input_layer

if TYPE_CHECKING:
    from bnfuse.net import Layer, Net

__all__ = [
    "COMPARE_BYTES_PER_VALUE",
    "FALLBACK_MAX_MEMORY",
    "MemoryBudgetError",
    "MemoryEstimate",
    "check_budget",
    "default_max_memory",
    "estimate_random_weights",
    "estimate_verify",
    "format_size",
    "parse_size",
    "resolve_max_memory",
]

Shape = tuple[int, ...]

#: The budget when the machine's memory cannot be read.
FALLBACK_MAX_MEMORY = 4 * 2**30
#: Float64 copies, masks and differences ``compare_values`` holds per value of a blob.
COMPARE_BYTES_PER_VALUE = 56
#: Float64 temporaries per input value of a BatchNorm measured by ``random_weights``.
_MEASURE_BYTES_PER_VALUE = 32
#: Float64 temporaries per value of a weight drawn by ``random_weights``.
_DRAW_BYTES_PER_VALUE = 16
#: Layers whose tops are their bottom (a view or the same array): no new memory.
_ALIASING_TYPES = frozenset({"Split", "Dropout", "Flatten", "Reshape"})
#: Layers computed into their top directly, without a top-sized temporary.
_DIRECT_TYPES = frozenset({"BatchNorm", "BN", "CuDNNBatchNorm", "Scale", "Bias",
                           "InnerProduct", "Concat", "Slice", "Crop"})


@dataclass(frozen=True)
class MemoryEstimate:
    """The estimated peak of a run and the largest blob behind it.

    ``peak_bytes`` is the most memory held at once; ``peak_at`` says where;
    ``largest_blob`` (``largest_shape``, ``largest_bytes``) is the biggest single value.

    Example:
        >>> MemoryEstimate(100, "layer 'conv'", "conv", (1, 5, 5), 100).largest_bytes
        100
    """

    peak_bytes: int
    peak_at: str
    largest_blob: str
    largest_shape: Shape
    largest_bytes: int


# --------------------------------------------------------------------------- sizes


_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "kb": 10**3, "m": 2**20, "mib": 2**20,
          "mb": 10**6, "g": 2**30, "gib": 2**30, "gb": 10**9, "t": 2**40, "tib": 2**40,
          "tb": 10**12}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """A memory size: plain bytes, or a number with ``K``/``M``/``G``/``T`` (powers of 1024,
    also written ``KiB``...) or ``KB``/``MB``/``GB``/``TB`` (powers of 1000).

    Example:
        >>> parse_size("512M"), parse_size("4G"), parse_size("1.5GB"), parse_size("1000")
        (536870912, 4294967296, 1500000000, 1000)
        >>> parse_size("-1")
        Traceback (most recent call last):
        ...
        bnfuse.errors.BnfuseError: invalid memory size '-1': expected a positive number \
of bytes, optionally with K, M, G or T (e.g. 512M, 4G)
    """
    match = _SIZE.fullmatch(text) if len(text) <= 64 else None
    unit = _UNITS.get(match.group(2).lower()) if match else None
    value = 0 if match is None or unit is None else int(float(match.group(1)) * unit)
    if value < 1:
        raise BnfuseError(f"invalid memory size {quote_user_text(text, 64)}: expected a "
                          "positive number of bytes, optionally with K, M, G or T "
                          "(e.g. 512M, 4G)")
    return value


def format_size(size: int) -> str:
    """``size`` bytes in the largest binary unit that keeps a leading digit.

    Example:
        >>> format_size(512), format_size(3 * 2**20), format_size(25_500_000_000)
        ('512 B', '3.0 MiB', '23.7 GiB')
    """
    if size < 1024:
        return f"{size} B"
    for unit, scale in (("EiB", 2**60), ("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30),
                        ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def default_max_memory() -> int:
    """Half of the physical memory, or of ``ulimit -v`` when lower; 4 GiB when unknown.

    Example:
        >>> default_max_memory() > 0
        True
    """
    candidates = []
    with contextlib.suppress(AttributeError, OSError, ValueError):  # no sysconf (Windows)
        candidates.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY and soft > 0:
            candidates.append(soft // 2)
    except (ImportError, OSError, ValueError):
        pass
    positive = [c for c in candidates if c > 0]
    return min(positive) if positive else FALLBACK_MAX_MEMORY


def resolve_max_memory(max_memory: object, func: str) -> int:
    """The budget in bytes: ``max_memory`` itself, or :func:`default_max_memory` for None.

    Example:
        >>> resolve_max_memory(2**20, "verify")
        1048576
        >>> resolve_max_memory("1G", "verify")
        Traceback (most recent call last):
        ...
        TypeError: verify: max_memory must be a number of bytes (int) or None, not str
    """
    if max_memory is None:
        return default_max_memory()
    if isinstance(max_memory, (bool, np.bool_)) or not isinstance(max_memory,
                                                                   (int, np.integer)):
        raise TypeError(f"{func}: max_memory must be a number of bytes (int) or None, "
                        f"not {type(max_memory).__name__}")
    if max_memory < 1:
        raise BnfuseError(f"{func}: max_memory must be a positive number of bytes, "
                          f"got {int(max_memory)}")
    return int(max_memory)


def check_budget(estimate: MemoryEstimate, budget: int, doing: str) -> None:
    """Raise :class:`MemoryBudgetError` when ``estimate`` is above ``budget`` bytes.

    Example: see the module docstring.
    """
    if estimate.peak_bytes <= budget:
        return
    raise MemoryBudgetError(
        f"{doing} needs about {format_size(estimate.peak_bytes)} "
        f"({estimate.peak_bytes:,} bytes) of memory at its peak ({estimate.peak_at}), "
        "more than the budget of "
        f"{format_size(budget)} ({budget:,} bytes); the largest blob is "
        f"{quote_user_text(estimate.largest_blob)} with shape {estimate.largest_shape} "
        f"({format_size(estimate.largest_bytes)}); allow more with --max-memory "
        "(max_memory=) or declare smaller inputs (--batch, --input-shape; input_shapes=)")


# --------------------------------------------------------------------------- the walk


def _count(shape: Sequence[int]) -> int:
    return math.prod(int(d) for d in shape)


def _weight_cast_bytes(layer: Layer, work: np.dtype[Any]) -> int:
    """Bytes of the copies the executor makes of weights not stored in its dtype."""
    return sum(int(np.asarray(blob).size) * work.itemsize for blob in layer.blobs
               if np.asarray(blob).dtype != work)


def _conv_scratch(layer: Layer, bottom: Shape, top: Shape, itemsize: int) -> int:
    from bnfuse.layertypes.geometry import conv_geometry

    g = conv_geometry(layer, bottom)
    lead = _count(bottom[: g.axis])
    spatial = bottom[g.axis + 1:]
    if layer.type == "Deconvolution":
        full = [s * (i - 1) + d * (k - 1) + 1
                for i, s, d, k in zip(spatial, g.stride, g.dilation, g.kernel, strict=True)]
        cols = g.num_output * _count(g.kernel) * lead * _count(spatial)
        acc = g.num_output * lead * _count(full)
        return (_count(bottom) + cols + acc) * itemsize
    out = g.output_spatial(spatial, deconv=False)
    if all(k == 1 for k in g.kernel) and not any(g.pad):
        strided = any(s != 1 for s in g.stride)
        return (g.channels * lead * _count(out) if strided else 0) * itemsize
    padded = lead * g.channels * _count([s + 2 * p for s, p in zip(spatial, g.pad,
                                                                   strict=True)])
    depthwise = g.channels // g.group == 1
    cols = 0 if depthwise else g.channels * _count(g.kernel) * lead * _count(out)
    return (padded + cols + _count(top)) * itemsize


def _pool_scratch(layer: Layer, bottom: Shape, tops: Sequence[Shape], itemsize: int) -> int:
    from bnfuse.layertypes.geometry import pool_geometry

    g = pool_geometry(layer, bottom)
    n, c, height, width = bottom
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = g.kernel, g.stride, g.pad, g.output
    padded = n * c * max((oh - 1) * sh + kh, ph + height) * max((ow - 1) * sw + kw, pw + width)
    scratch = padded + _count(tops[0])
    if len(tops) > 1:  # the mask: another padded copy and every window's values
        scratch += padded + n * c * oh * ow * kh * kw * 2
    return scratch * itemsize


def _scratch(layer: Layer, bottoms: Sequence[Shape], tops: Sequence[Shape],
             work: np.dtype[Any]) -> int:
    """Bytes of the working arrays the executor holds while it runs ``layer``."""
    itemsize = work.itemsize
    extra = _weight_cast_bytes(layer, work)
    try:
        if layer.type in ("Convolution", "Deconvolution", "ConvolutionDepthwise",
                          "DepthwiseConvolution"):
            return extra + sum(_conv_scratch(layer, b, t, itemsize)
                               for b, t in zip(bottoms, tops, strict=False))
        if layer.type == "Pooling":
            return extra + _pool_scratch(layer, bottoms[0], tops, itemsize)
        if layer.type == "LRN":
            return extra + 5 * _count(bottoms[0]) * itemsize
    except BnfuseError:
        return extra  # the executor refuses this layer before it allocates anything
    if layer.type in _ALIASING_TYPES or layer.type in _DIRECT_TYPES:
        return extra
    return extra + sum(_count(t) for t in tops) * itemsize


@dataclass
class _Walk:
    """Running totals of one walk over a net."""

    live: dict[str, int]
    peak: int = 0
    peak_at: str = ""

    def note(self, total: int, where: str) -> None:
        if total > self.peak:
            self.peak, self.peak_at = total, where

    def held(self) -> int:
        return sum(self.live.values())


def _largest(shapes: Mapping[str, Shape], itemsize: int) -> tuple[str, Shape, int]:
    if not shapes:
        return "", (), 0
    name = max(shapes, key=lambda n: _count(shapes[n]))  # ties: the first in net order
    return name, shapes[name], _count(shapes[name]) * itemsize


def _walk(net: Net, shapes: Mapping[str, Shape], work: np.dtype[Any], *, label: str,
          inputs_held: bool, keep: bool, base: int = 0,
          per_layer: Mapping[int, tuple[int, int]] | None = None) -> _Walk:
    """Walk ``net``'s layers, noting the bytes held at each one.

    ``inputs_held``: the Input tops are already in memory (net b of a verify shares net
    a's). ``keep``: values live to the end (verify) instead of until their last reader.
    ``base``: bytes held by the caller throughout. ``per_layer``: by layer index, bytes
    held from then on and bytes needed before the layer runs (random_weights' weights
    and their float64 draws).
    """
    itemsize = work.itemsize
    last_read: dict[str, int] = {}
    for index, layer in enumerate(net.layers):
        for name in layer.bottoms:
            last_read[name] = index
    walk = _Walk(live={})
    for index, layer in enumerate(net.layers):
        where = f"layer {quote_user_text(layer.name)} of {label}"
        top_shapes = [shapes.get(top) for top in layer.tops]
        if any(shape is None for shape in top_shapes):
            continue  # the run cannot compute this layer: it stops (or skips) here
        known = [shape for shape in top_shapes if shape is not None]
        bottoms = [shapes[name] for name in layer.bottoms if name in shapes]
        held_extra, before = (per_layer or {}).get(index, (0, 0))
        if is_input_layer(layer):
            new = 0 if inputs_held else sum(_count(s) for s in known) * itemsize
            # Seeded (or given) inputs are drawn in float64, then cast to the work dtype.
            draw = 0 if inputs_held else max((_count(s) * 8 for s in known), default=0)
            walk.note(base + walk.held() + held_extra + new + draw, where)
            for top, shape in zip(layer.tops, known, strict=True):
                walk.live[top] = 0 if inputs_held else _count(shape) * itemsize
            continue
        aliasing = layer.type in _ALIASING_TYPES
        new_bytes = 0 if aliasing else sum(_count(s) for s in known) * itemsize
        scratch = _scratch(layer, bottoms, known, work)
        walk.note(base + walk.held() + held_extra + max(new_bytes + scratch, before), where)
        for top, shape in zip(layer.tops, known, strict=True):
            walk.live[top] = 0 if aliasing else _count(shape) * itemsize
        if not keep:
            for name in {*layer.bottoms, *layer.tops}:
                if last_read.get(name, -1) <= index:
                    walk.live.pop(name, None)
    return walk


def _known_shapes(net: Net, input_shapes: Mapping[str, Sequence[int]] | None) -> dict[str, Shape]:
    from bnfuse.verification.local import known_shapes

    return known_shapes(net, input_shapes)


def estimate_verify(
    net_a: Net,
    net_b: Net,
    *,
    dtype: npt.DTypeLike = np.float32,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    noise_run: bool = False,
) -> MemoryEstimate:
    """The memory :func:`bnfuse.verify` will hold at its peak (see the module docstring).

    ``input_shapes`` are the shapes of given inputs (default: the Input layers').
    ``noise_run``: net a also runs a second time, with its values held (the calibration
    of the tolerances, :mod:`bnfuse.verification.calibrate`).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(bnfuse.example_path("prototxt"))
        >>> estimate = estimate_verify(net, net)
        >>> estimate.largest_blob, estimate.largest_shape, estimate.peak_bytes < 2**21
        ('conv1', (1, 16, 32, 32), True)
    """
    work = np.dtype(dtype)
    shapes_a = _known_shapes(net_a, input_shapes)
    shapes_b = _known_shapes(net_b, input_shapes)
    run_a = _walk(net_a, shapes_a, work, label="net a", inputs_held=False, keep=True)
    held_a = run_a.held()
    run_b = _walk(net_b, shapes_b, work, label="net b", inputs_held=True, keep=True,
                  base=held_a)
    largest = max(_largest(shapes_a, work.itemsize), _largest(shapes_b, work.itemsize),
                  key=lambda item: item[2])
    # Inputs are fed identically and not compared (unless a layer writes over one).
    fed = {top for layer in net_a.layers if is_input_layer(layer) for top in layer.tops}
    fed -= {top for layer in net_a.layers if not is_input_layer(layer) for top in layer.tops}
    compared = [_count(shapes_a[n]) for n in shapes_a if n in shapes_b and n not in fed]
    compare = held_a + run_b.held() + COMPARE_BYTES_PER_VALUE * max(compared, default=0)
    noise = (held_a + run_a.peak, f"{run_a.peak_at} in the noise run") if noise_run else (0, "")
    peak, peak_at = max((run_a.peak, run_a.peak_at), (run_b.peak, run_b.peak_at),
                        (compare, "comparing the blobs"), noise)
    return MemoryEstimate(peak, peak_at, *largest)


def estimate_random_weights(
    net: Net, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> MemoryEstimate:
    """The memory :func:`~bnfuse.verification.randweights.random_weights` will hold.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(bnfuse.example_path("prototxt"))
        >>> estimate_random_weights(net).largest_blob
        'conv1'
    """
    from bnfuse.layertypes.batchnorm import NORM_TYPES
    from bnfuse.layertypes.shapes import param_shapes

    work = np.dtype(np.float32)
    shapes = _known_shapes(net, input_shapes)
    per_layer: dict[int, tuple[int, int]] = {}
    weights_so_far = 0
    for index, layer in enumerate(net.layers):
        bottoms = [shapes.get(name) for name in layer.bottoms]
        if is_input_layer(layer) or any(shape is None for shape in bottoms):
            per_layer[index] = (weights_so_far, 0)
            continue
        try:
            wanted = param_shapes(layer, [s for s in bottoms if s is not None])
        except BnfuseError:
            wanted = []
        counts = [_count(s) for s in wanted]
        draw = _DRAW_BYTES_PER_VALUE * max(counts, default=0)
        if layer.type in NORM_TYPES and bottoms and bottoms[0] is not None:
            draw = max(draw, _MEASURE_BYTES_PER_VALUE * _count(bottoms[0]))
        weights_so_far += sum(counts) * work.itemsize
        per_layer[index] = (weights_so_far, draw)
    walk = _walk(net, shapes, work, label="the net", inputs_held=False, keep=False,
                 per_layer=per_layer)
    return MemoryEstimate(walk.peak, walk.peak_at, *_largest(shapes, work.itemsize))
