"""A model large enough that a fold of it is still writing when a test interrupts it.

Built with the generated protobuf classes, as ``tests/modelkit.py`` builds its
models, but each blob's packed ``data`` field is handed to protobuf's parser as
bytes (tag, length, ``array.tobytes()``) instead of through ``extend``, which
takes seconds for millions of floats.  Protobuf parses and re-serializes every
byte, so the file is exactly what protobuf itself writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bnfuse.proto import BlobProto, NetParameter

PROTOTXT = """name: "big"
layer {{ name: "data" type: "Input" top: "data"
        input_param {{ shape {{ dim: 1 dim: {c} dim: 4 dim: 4 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param {{ num_output: {c} kernel_size: 3 pad: 1 }} }}
layer {{ name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }}
layer {{ name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param {{ bias_term: true }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param {{ num_output: {c} kernel_size: 3 pad: 1 }} }}
"""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def blob(array: np.ndarray) -> BlobProto:
    """A BlobProto holding ``array`` (float32, packed ``data`` and ``shape.dim``)."""
    values = np.ascontiguousarray(array, dtype="<f4")
    payload = values.tobytes()
    data_field = b"\x2a" + _varint(len(payload)) + payload  # field 5, length-delimited
    parsed = BlobProto.FromString(data_field)
    parsed.shape.dim.extend(int(d) for d in values.shape)
    return parsed


def write_big_model(folder: Path, channels: int = 640, seed: int = 0,
                    name: str = "big") -> tuple[Path, Path]:
    """``name``.prototxt and .caffemodel in ``folder``: two ``channels``-wide 3x3
    convolutions around a BatchNorm + Scale (640 channels: about 30 MB)."""
    rng = np.random.default_rng(seed)
    c = channels
    net = NetParameter(name="big")
    layers = {
        "conv1": ("Convolution", [rng.normal(0, 0.05, (c, c, 3, 3)), rng.normal(size=c)]),
        "bn1": ("BatchNorm", [rng.normal(size=c), rng.uniform(0.5, 2, c), np.array([0.9])]),
        "sc1": ("Scale", [rng.uniform(0.5, 1.5, c), rng.normal(size=c)]),
        "conv2": ("Convolution", [rng.normal(0, 0.05, (c, c, 3, 3)), rng.normal(size=c)]),
    }
    for layer_name, (kind, arrays) in layers.items():
        layer = net.layer.add(name=layer_name, type=kind)
        for array in arrays:
            layer.blobs.add().CopyFrom(blob(array))
    prototxt, caffemodel = folder / f"{name}.prototxt", folder / f"{name}.caffemodel"
    prototxt.write_text(PROTOTXT.format(c=c))
    caffemodel.write_bytes(net.SerializeToString())
    return prototxt, caffemodel
