"""The plain-protobuf way to fold BatchNorm, as most published scripts do it.

This is the baseline bnfuse is measured against: the whole caffemodel is parsed
with ``NetParameter.ParseFromString``, the blobs a fold needs are turned into
numpy arrays from their repeated fields, the same fold arithmetic as bnfuse
(:mod:`bnfuse.folding.arith`) is applied, the new arrays are written back through
the repeated fields, the message is serialized with ``SerializeToString`` and
written out; the prototxt goes through ``text_format``. Only what such a script
needs is implemented: ``Convolution``/``InnerProduct`` -> ``BatchNorm`` ->
optional ``Scale`` chains whose intermediate blobs nothing else reads.

Run it with any protobuf runtime bnfuse supports (the benchmark runs it on the
newest and on 3.20.3); it needs only ``protobuf`` and ``numpy`` besides the
bnfuse source tree, which it finds next to this file.

Usage::

    python benchmarks/baseline_protobuf.py IN.prototxt IN.caffemodel OUT.prototxt \\
        OUT.caffemodel [--timings T.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# The bnfuse source tree this file belongs to (benchmarks/..), so the baseline runs
# in a bare venv that has only protobuf and numpy installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from google.protobuf import text_format

from bnfuse.folding import arith
from bnfuse.proto import NetParameter

_PRODUCERS = ("Convolution", "InnerProduct")


def _blob_array(blob: Any) -> np.ndarray:
    """A BlobProto's values as a numpy array: the repeated-field conversion under test."""
    shape = tuple(blob.shape.dim) or tuple(
        d for d in (blob.num, blob.channels, blob.height, blob.width) if d)
    if len(blob.double_data):
        return np.array(blob.double_data, dtype=np.float64).reshape(shape)
    return np.array(blob.data, dtype=np.float32).reshape(shape)


def _set_blob(blob: Any, array: np.ndarray) -> None:
    """Write an array back through the repeated fields, as a protobuf script does."""
    blob.ClearField("data")
    blob.ClearField("double_data")
    blob.shape.ClearField("dim")
    blob.shape.dim.extend(int(d) for d in array.shape)
    blob.data.extend(np.asarray(array, dtype=np.float32).ravel().tolist())


def _chains(net: Any) -> list[tuple[Any, Any, Any | None]]:
    """(producer, BatchNorm, Scale or None) chains whose inner blobs have one reader."""
    readers: dict[str, int] = {}
    for layer in net.layer:
        for name in set(layer.bottom):
            readers[name] = readers.get(name, 0) + 1
    found = []
    layers = list(net.layer)
    for i, layer in enumerate(layers[:-1]):
        bn = layers[i + 1]
        if (layer.type not in _PRODUCERS or bn.type != "BatchNorm" or len(layer.top) != 1
                or list(bn.bottom) != [layer.top[0]]):
            continue
        # In place, the conv output is read by the BatchNorm and by what follows it
        # (same name): then BatchNorm is its only reader before it is overwritten.
        if layer.top[0] != bn.top[0] and readers.get(layer.top[0], 0) != 1:
            continue
        scale = layers[i + 2] if i + 2 < len(layers) else None
        if (scale is None or scale.type != "Scale" or list(scale.bottom) != [bn.top[0]]
                or (bn.top[0] != scale.top[0] and readers.get(bn.top[0], 0) != 1)):
            scale = None
        found.append((layer, bn, scale))
    return found


def fold_files(prototxt: str, caffemodel: str, out_prototxt: str,
               out_caffemodel: str) -> dict[str, float]:
    """Fold with protobuf messages only; return the time of each phase in seconds."""
    times: dict[str, float] = {}
    t = time.perf_counter()
    net = NetParameter()
    text_format.Parse(Path(prototxt).read_text(), net)
    data = Path(caffemodel).read_bytes()
    times["read"] = time.perf_counter() - t

    t = time.perf_counter()
    model = NetParameter()
    model.ParseFromString(data)
    del data
    times["parse"] = time.perf_counter() - t
    by_name = {layer.name: layer for layer in model.layer}

    to_numpy = fold = write_back = 0.0
    removed: set[str] = set()
    for producer, bn, scale in _chains(net):
        t = time.perf_counter()
        weights = by_name[producer.name]
        conv_blobs = [_blob_array(b) for b in weights.blobs]
        bn_blobs = [_blob_array(b) for b in by_name[bn.name].blobs]
        scale_blobs = [_blob_array(b) for b in by_name[scale.name].blobs] if scale else []
        t2 = time.perf_counter()
        to_numpy += t2 - t
        mean, var = arith.caffe_batchnorm_stats(*bn_blobs[:3])
        gamma = scale_blobs[0] if scale_blobs else None
        beta = scale_blobs[1] if len(scale_blobs) > 1 else None
        affine = arith.affine_from_batchnorm(mean, var, bn.batch_norm_param.eps, gamma, beta)
        bias = conv_blobs[1] if len(conv_blobs) > 1 else None
        if producer.type == "Convolution":
            w, b = arith.fold_into_convolution(conv_blobs[0], bias, affine)
            producer.convolution_param.bias_term = True
        else:
            w, b = arith.fold_into_inner_product(conv_blobs[0], bias, affine,
                                                 producer.inner_product_param.transpose)
            producer.inner_product_param.bias_term = True
        t3 = time.perf_counter()
        fold += t3 - t2
        _set_blob(weights.blobs[0], w)
        if len(weights.blobs) < 2:
            weights.blobs.add()
        _set_blob(weights.blobs[1], b)
        write_back += time.perf_counter() - t3
        last = scale if scale is not None else bn
        producer.top[0] = last.top[0]
        removed.update({bn.name} | ({scale.name} if scale is not None else set()))
    times.update(to_numpy=to_numpy, fold=fold, write_back=write_back)

    t = time.perf_counter()
    for message in (net, model):
        for i in reversed(range(len(message.layer))):
            if message.layer[i].name in removed:
                del message.layer[i]
    for layer in model.layer:
        # The caffemodel's own copy of the layer definition follows the prototxt.
        twin = next((x for x in net.layer if x.name == layer.name), None)
        if twin is not None and twin.type in _PRODUCERS:
            layer.top[:] = list(twin.top)
            layer.convolution_param.CopyFrom(twin.convolution_param)
            layer.inner_product_param.CopyFrom(twin.inner_product_param)
    times["edit"] = time.perf_counter() - t

    t = time.perf_counter()
    payload = model.SerializeToString()
    times["serialize"] = time.perf_counter() - t
    t = time.perf_counter()
    Path(out_caffemodel).write_bytes(payload)
    Path(out_prototxt).write_text(text_format.MessageToString(net))
    times["write"] = time.perf_counter() - t
    return times


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: fold the given files and optionally write the phase times."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prototxt")
    parser.add_argument("caffemodel")
    parser.add_argument("out_prototxt")
    parser.add_argument("out_caffemodel")
    parser.add_argument("--timings", help="write the phase times (s) as JSON here")
    args = parser.parse_args(argv)
    times = fold_files(args.prototxt, args.caffemodel, args.out_prototxt, args.out_caffemodel)
    if args.timings:
        from google.protobuf import __version__ as pb_version

        Path(args.timings).write_text(json.dumps({"protobuf": pb_version, "phases": times}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
