"""Seed models for the fuzzer: small nets built in code, plus ../shared when present.

Every seed is a :class:`Seed` (a prototxt and, optionally, a caffemodel, as
bytes).  The built-in seeds need nothing but bnfuse itself, so the fuzz test
runs in a fresh clone; the golden models made by real Caffe and the public
prototxt corpus are added when ``../shared`` exists, because real files carry
layouts (Caffe's own field order, V1 records, fork fields) that hand-built ones
do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: ``../shared`` seen from the project root (absent in a fresh clone).
SHARED_DIR = Path(__file__).resolve().parent.parent.parent / "shared"

#: Caffemodels above this size are only used by the long run (they are slow to mutate).
SMALL_MODEL_BYTES = 256 << 10


@dataclass(frozen=True)
class Seed:
    """One starting model: ``name`` for reports, the prototxt text, optional weights."""

    name: str
    prototxt: bytes
    caffemodel: bytes | None = None


def _blob(array: np.ndarray, *, legacy: bool = False, double: bool = False) -> object:
    """A BlobProto holding ``array`` with a shape, or Caffe's legacy 4-D dims."""
    from bnfuse.proto import BlobProto

    blob = BlobProto()
    if legacy:
        dims = (1,) * (4 - array.ndim) + tuple(array.shape)
        blob.num, blob.channels, blob.height, blob.width = (int(d) for d in dims)
    else:
        blob.shape.dim.extend(int(d) for d in array.shape)
    if double:
        blob.double_data.extend(array.astype(np.float64).ravel().tolist())
    else:
        blob.data.extend(array.astype(np.float32).ravel().tolist())
    return blob


_CONV_BN_SCALE = b"""name: "seed_conv_bn_scale"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 bias_term: true } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1"
        batch_norm_param { eps: 0.001 } }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip" type: "InnerProduct" bottom: "conv1" top: "ip"
        inner_product_param { num_output: 3 } }
layer { name: "bn2" type: "BatchNorm" bottom: "ip" top: "bn2" }
layer { name: "prob" type: "Softmax" bottom: "bn2" top: "prob" }
"""


def _conv_bn_scale(rng: np.random.Generator) -> Seed:
    """Convolution + BatchNorm + Scale and InnerProduct + BatchNorm (V2 records)."""
    from bnfuse.proto import NetParameter

    net = NetParameter(name="seed_conv_bn_scale")
    conv = net.layer.add(name="conv1", type="Convolution")
    conv.blobs.append(_blob(rng.normal(size=(4, 3, 3, 3))))
    conv.blobs.append(_blob(rng.normal(size=(4,))))
    bn = net.layer.add(name="bn1", type="BatchNorm")
    bn.blobs.append(_blob(rng.normal(size=(4,)) * 3))
    bn.blobs.append(_blob(rng.uniform(0.5, 2, size=(4,)) * 3))
    bn.blobs.append(_blob(np.array([3.0])))
    sc = net.layer.add(name="sc1", type="Scale")
    sc.blobs.append(_blob(rng.normal(size=(4,))))
    sc.blobs.append(_blob(rng.normal(size=(4,))))
    ip = net.layer.add(name="ip", type="InnerProduct")
    # Legacy 4-D dims and double data: both are read paths real files use.
    ip.blobs.append(_blob(rng.normal(size=(3, 144)), legacy=True))
    ip.blobs.append(_blob(rng.normal(size=(3,)), double=True))
    bn2 = net.layer.add(name="bn2", type="BatchNorm")
    bn2.blobs.append(_blob(rng.normal(size=(3,))))
    bn2.blobs.append(_blob(rng.uniform(0.5, 2, size=(3,))))
    bn2.blobs.append(_blob(np.array([1.0])))
    return Seed("built/conv_bn_scale", _CONV_BN_SCALE, net.SerializeToString())


_V1_NET = b"""name: "seed_v1"
input: "data"
input_dim: 1 input_dim: 2 input_dim: 4 input_dim: 4
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
         blobs_lr: 1 blobs_lr: 2
         convolution_param { num_output: 2 kernel_size: 1 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
"""


def _v1_net(rng: np.random.Generator) -> Seed:
    """An old-format (V1 ``layers``) net with ``input_dim`` fields."""
    from bnfuse.proto import NetParameter, V1LayerParameter

    net = NetParameter(name="seed_v1")
    conv = net.layers.add(name="conv", type=V1LayerParameter.CONVOLUTION)
    conv.blobs.append(_blob(rng.normal(size=(2, 2, 1, 1)), legacy=True))
    conv.blobs.append(_blob(rng.normal(size=(2,)), legacy=True))
    return Seed("built/v1", _V1_NET, net.SerializeToString())


_FORK_NET = b"""name: "seed_fork"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 1 bias_term: false } }
layer { name: "bn" type: "BN" bottom: "conv" top: "conv" bn_param { bn_mode: INFERENCE } }
layer { name: "py" type: "Python" bottom: "conv" top: "out"
        python_param { module: "never_imported" layer: "L" param_str: "{'a': 1}" } }
"""


def _fork_net(rng: np.random.Generator) -> Seed:
    """A SegNet-style ``BN`` layer (fork field) and a Python layer."""
    from bnfuse.proto import NetParameter

    net = NetParameter(name="seed_fork")
    conv = net.layer.add(name="conv", type="Convolution")
    conv.blobs.append(_blob(rng.normal(size=(2, 2, 1, 1))))
    bn = net.layer.add(name="bn", type="BN")
    bn.blobs.append(_blob(rng.normal(size=(1, 2, 1, 1))))
    bn.blobs.append(_blob(rng.normal(size=(1, 2, 1, 1))))
    return Seed("built/fork", _FORK_NET, net.SerializeToString())


def builtin_seeds() -> list[Seed]:
    """Seeds made in code (deterministic): they need nothing outside the repository."""
    rng = np.random.default_rng(1234)
    seeds = [_conv_bn_scale(rng), _v1_net(rng), _fork_net(rng)]
    example = Path(__file__).resolve().parent.parent / "bnfuse" / "examples"
    if (example / "example.caffemodel").is_file():
        seeds.append(Seed("example", (example / "example.prototxt").read_bytes(),
                          (example / "example.caffemodel").read_bytes()))
    return seeds


def shared_seeds(*, include_large: bool = False, root: Path = SHARED_DIR) -> list[Seed]:
    """Golden models, corpus prototxts and (optionally) the real models of ``../shared``."""
    seeds: list[Seed] = []
    golden = root / "golden"
    if golden.is_dir():
        for case in sorted(p for p in golden.iterdir() if p.is_dir()):
            model = case / "model.caffemodel"
            seeds.append(Seed(f"golden/{case.name}", (case / "model.prototxt").read_bytes(),
                              model.read_bytes() if model.is_file() else None))
    corpus = root / "corpus" / "prototxt"
    if corpus.is_dir():
        for path in sorted(corpus.glob("*.prototxt")):
            seeds.append(Seed(f"corpus/{path.name}", path.read_bytes(), None))
    real = root / "corpus" / "real"
    if real.is_dir():
        for case in sorted(p for p in real.iterdir() if p.is_dir()):
            model = case / "model.caffemodel"
            weights = None
            if include_large and model.is_file():
                weights = model.read_bytes()
            seeds.append(Seed(f"real/{case.name}", (case / "model.prototxt").read_bytes(),
                              weights))
    return seeds


def all_seeds(*, include_large: bool = False) -> list[Seed]:
    """Built-in seeds, then the ``../shared`` ones when that folder exists."""
    return builtin_seeds() + shared_seeds(include_large=include_large)
