"""The numpy reference executor: a net's TEST-phase forward pass with Caffe's semantics.

:func:`forward` returns every blob's value after the pass (an in-place blob holds its
final value, like Caffe's ``net.blobs``). :func:`forward_steps` yields after each layer,
so a caller can see every version of an in-place blob and compare layer by layer.

Layers the executor does not implement (Python layers, fork layers such as ``BN`` or
``PriorBox``) raise :class:`~bnfuse.errors.UnsupportedLayerError`; a Python layer's
module is never imported. Missing or ill-shaped weights raise
:class:`~bnfuse.errors.ModelMismatchError`.

Example:
    >>> import bnfuse
    >>> net = bnfuse.load(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
    >>> blobs = forward(net, {"data": np.zeros((1, 3, 32, 32), np.float32)})
    >>> blobs["prob"].shape, round(float(blobs["prob"].sum()), 4)
    ((1, 10), 1.0)
    >>> for layer, tops in forward_steps(net):
    ...     if layer.name.startswith("conv1"):
    ...         print(layer.name, {k: v.shape for k, v in tops.items()})
    conv1 {'conv1': (1, 16, 32, 32)}
    conv1/bn {'conv1': (1, 16, 32, 32)}
    conv1/scale {'conv1': (1, 16, 32, 32)}
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from bnfuse._text import escape_user_text
from bnfuse.errors import (
    BnfuseError,
    InternalError,
    ModelMismatchError,
    UnsupportedLayerError,
    naming_file,
)
from bnfuse.layertypes._base import LayerLike, NetLike
from bnfuse.layertypes._forks import runtime_shaped
from bnfuse.layertypes.shapes import is_input_layer, layer_output_shapes
from bnfuse.verification.inputs import input_layer_shapes, net_input_shapes, seeded_inputs
from bnfuse.verification.layers import forward_of

Array = npt.NDArray[Any]


#: Called after each layer with the layer and the values of its tops.
Observer = Callable[[LayerLike, Mapping[str, Array]], None]


def _working_dtype(dtype: npt.DTypeLike) -> np.dtype[Any]:
    resolved = np.dtype(dtype)
    if resolved not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise BnfuseError(f"the reference executor computes in float32 or float64, not {resolved}")
    return resolved


def forward_steps(
    net: NetLike,
    inputs: Mapping[str, npt.ArrayLike] | None = None,
    *,
    dtype: npt.DTypeLike = np.float32,
    seed: int = 0,
) -> Iterator[tuple[LayerLike, dict[str, Array]]]:
    """Run the net layer by layer, yielding ``(layer, {top: value})`` after each one.

    ``Input`` layers are steps too (their tops are the inputs used), and so are data
    layers (``Data``, ``ImageData``, ...), fed like ``Input`` layers at the shapes their
    prototxt states. Inputs missing from
    ``inputs`` are filled by :func:`bnfuse.verification.inputs.seeded_inputs` (standard-normal
    data from ``numpy.random.default_rng(seed)``), drawn in the order the ``Input`` layers
    declare them. Values are never modified after
    they are yielded, so earlier versions of an in-place blob stay valid; treat them as
    read-only (identity layers such as Dropout return their bottom itself).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''
        ... layer { name: "data" type: "Input" top: "data"
        ...         input_param { shape { dim: 1 dim: 3 } } }
        ... layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }
        ... ''')
        >>> for layer, tops in forward_steps(net, {"data": [[-1.0, 0.5, 2.0]]}):
        ...     print(layer.name, tops["data"].tolist())
        data [[-1.0, 0.5, 2.0]]
        relu [[0.0, 0.5, 2.0]]
    """
    # A layer's error says which file the layer is in.
    with naming_file(getattr(net, "prototxt_source", None)):
        yield from _steps(net, inputs, _working_dtype(dtype), seed)


def _steps(net: NetLike, inputs: Mapping[str, npt.ArrayLike] | None, work: np.dtype[Any],
           seed: int) -> Iterator[tuple[LayerLike, dict[str, Array]]]:
    if getattr(net, "phase", "TEST") != "TEST":
        # The executor has Caffe's TEST-phase semantics (stored statistics, no dropout).
        raise BnfuseError(f"the reference executor runs TEST-phase nets; this one was loaded "
                          f"with phase={getattr(net, 'phase', None)!r}: make its deploy form "
                          "first (deploy=True, or bnfuse.deploy.to_deploy(net))")
    given = {name: np.asarray(value, dtype=work) for name, value in (inputs or {}).items()}
    layers = list(net.layers)
    _check_input_names(layers, given)
    # Shapes of the inputs given are not needed (nor, for a data layer, always knowable).
    declared = input_layer_shapes(layers, {name: value.shape for name, value in given.items()})
    drawn = seeded_inputs({name: shape for name, shape in declared.items() if name not in given},
                          seed, work)
    blobs: dict[str, Array] = {}
    for layer in layers:
        if is_input_layer(layer):  # an Input or a data layer: fed like an Input
            tops = {top: given[top] if top in given else drawn[top] for top in layer.tops}
        else:
            bottoms = [_bottom(layer, name, blobs, given) for name in layer.bottoms]
            # The shape rules validate the configuration (and reject unknown types) first,
            # so the arithmetic below only ever sees layers it can compute.
            expected = layer_output_shapes(layer, [b.shape for b in bottoms])
            for name, value in zip(layer.bottoms, bottoms, strict=True):
                if value.size == 0:
                    # A zero dimension: Caffe runs nothing on it, and there is nothing
                    # to compare; say so instead of computing on an empty array.
                    raise UnsupportedLayerError(
                        f"layer {layer.name!r} (type {layer.type!r}): its input {name!r} is "
                        f"empty (shape {value.shape}); there is nothing to compute")
            # Caffe lets overflow and log(0) produce inf/nan silently; so does the reference.
            with np.errstate(all="ignore"):
                values = forward_of(layer)(layer, bottoms, work)
            tops = {}
            for top, value, shape in zip(layer.tops, values, expected, strict=True):
                # DetectionOutput's row count is known only once it has run.
                runtime = runtime_shaped(layer.type) and value.ndim == len(shape)
                if (value.shape != shape and not runtime) or value.dtype != work:
                    raise InternalError(
                        f"layer {layer.name!r} (type {layer.type!r}): the executor made "
                        f"{value.dtype}{value.shape}, expected {work}{shape}"
                    )
                tops[top] = value
        blobs.update(tops)
        yield layer, tops


def _check_input_names(layers: Sequence[LayerLike], given: Mapping[str, Array]) -> None:
    """Reject names that are not inputs of the net, so a typo cannot silently become noise.

    Inputs are the tops of ``Input`` layers and blobs read before any layer produces them;
    a value given for a computed blob would be ignored, so it is refused too.
    """
    inputs = set(net_input_shapes(layers))
    unknown = sorted(set(given) - inputs)
    if unknown:
        raise ModelMismatchError(
            f"{escape_user_text(unknown)} are not inputs of the net; its inputs are "
            f"{escape_user_text(sorted(inputs))}"
        )


def _bottom(
    layer: LayerLike, name: str, blobs: Mapping[str, Array], given: Mapping[str, Array]
) -> Array:
    if name in blobs:
        return blobs[name]
    if name in given:
        return given[name]
    raise ModelMismatchError(
        f"layer {layer.name!r} (type {layer.type!r}) reads blob {name!r}, which no earlier layer "
        f"produces and which was not given as an input"
    )


def forward(
    net: NetLike,
    inputs: Mapping[str, npt.ArrayLike] | None = None,
    *,
    dtype: npt.DTypeLike = np.float32,
    seed: int = 0,
    observer: Observer | None = None,
) -> dict[str, Array]:
    """Every blob's value after the forward pass (in-place blobs hold their final value).

    Missing inputs are seeded standard-normal data shaped by the ``Input`` layers;
    computation runs in ``dtype`` (float32 like Caffe, or float64) with weights cast to
    it. ``observer(layer, tops)`` is called after each layer.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
        >>> blobs = forward(net, seed=0)  # "data" is drawn from default_rng(0)
        >>> blobs["data"].shape, blobs["prob"].shape, blobs["prob"].dtype
        ((1, 3, 32, 32), (1, 10), dtype('float32'))
        >>> forward(net, dtype=np.float64)["prob"].dtype
        dtype('float64')
    """
    blobs: dict[str, Array] = {}
    for name, value in (inputs or {}).items():
        blobs[name] = np.asarray(value, dtype=_working_dtype(dtype))
    for layer, tops in forward_steps(net, inputs, dtype=dtype, seed=seed):
        if observer is not None:
            observer(layer, tops)
        blobs.update(tops)
    return blobs


__all__ = ["LayerLike", "NetLike", "Observer", "forward", "forward_steps"]
