"""Small helpers that build Caffe models inside tests (no ../shared needed).

Caffemodels are made with the generated protobuf classes, the way Caffe's own
``Net::ToProto`` lays them out, so tests do not depend on the code under test
to produce their inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bnfuse.proto import LayerParameter, NetParameter


def caffemodel_bytes(
    weights: Mapping[str, Sequence[np.ndarray]],
    types: Mapping[str, str] | None = None,
    *,
    double: bool = False,
) -> bytes:
    """Encode ``{layer name: [blobs]}`` as a caffemodel (float32 ``data`` or ``double_data``)."""
    net = NetParameter(name="test")
    for name, blobs in weights.items():
        layer: LayerParameter = net.layer.add(name=name, type=(types or {}).get(name, ""))
        for array in blobs:
            blob = layer.blobs.add()
            blob.shape.dim.extend(int(d) for d in np.shape(array))
            flat = np.asarray(array, dtype=np.float64).ravel().tolist()
            if double:
                blob.double_data.extend(flat)
            else:
                blob.data.extend(flat)
    return net.SerializeToString()


def write_model(folder: Path, text: str, weights: Mapping[str, Sequence[np.ndarray]],
                name: str = "model") -> tuple[Path, Path]:
    """Write ``name.prototxt`` and ``name.caffemodel`` into ``folder``; return both paths."""
    prototxt = folder / f"{name}.prototxt"
    caffemodel = folder / f"{name}.caffemodel"
    prototxt.write_text(text)
    caffemodel.write_bytes(caffemodel_bytes(weights))
    return prototxt, caffemodel


def bn_blobs(rng: np.random.Generator, channels: int, factor: float = 0.7) -> list[np.ndarray]:
    """BVLC BatchNorm blobs with realistic statistics stored times ``factor``."""
    mean = rng.normal(0.0, 1.0, channels)
    var = rng.uniform(0.2, 3.0, channels)
    return [(mean * factor).astype(np.float32), (var * factor).astype(np.float32),
            np.array([factor], dtype=np.float32)]


def scale_blobs(rng: np.random.Generator, channels: int, bias: bool = True) -> list[np.ndarray]:
    """Scale layer blobs: gamma near 1 and, with ``bias``, a small beta."""
    blobs = [rng.uniform(0.5, 1.5, channels).astype(np.float32)]
    if bias:
        blobs.append(rng.normal(0.0, 0.5, channels).astype(np.float32))
    return blobs


def conv_blobs(rng: np.random.Generator, out: int, inp: int, k: int = 3,
               bias: bool = True) -> list[np.ndarray]:
    """Convolution weights ``(out, inp, k, k)`` and, with ``bias``, a bias."""
    blobs = [rng.normal(0.0, (2.0 / (inp * k * k)) ** 0.5, (out, inp, k, k)).astype(np.float32)]
    if bias:
        blobs.append(rng.normal(0.0, 0.1, out).astype(np.float32))
    return blobs
