"""bnfuse: fold BatchNorm and Scale layers of Caffe models, exactly, without Caffe.

The public API:

- :func:`load` / :func:`save`: read and write a Caffe net (prototxt, caffemodel);
- :func:`fold` / :func:`fold_net`: fold BatchNorm, Scale and Bias layers and
  report every decision;
- :func:`verify`: run two nets on the same inputs and compare every blob;
- :func:`to_onnx`: export a net (folded first by default) as an ONNX model
  (``pip install "bnfuse[onnx]"``);
- for embedders (converters): :func:`forward` runs a net and returns its blobs,
  :func:`affine_of` gives any BatchNorm dialect's, Scale's or Bias's per-channel
  :class:`Affine` map, and :class:`Net` gives the blob :class:`Graph`
  (:class:`BlobVersion` per write), shapes, inputs, outputs, layer geometry
  (:class:`ConvGeometry`, :class:`PoolGeometry`), its load :class:`NetWarning` list
  and an independent ``copy()``;
- :func:`binarize` / :func:`binarize_net`: binary-weight layers to +1/-1 weights with
  their scale merged into the Scale after them; :func:`verify_binarized` checks the
  result against the forks' binary semantics;
- :class:`BnfuseError` and its subclasses: the only errors bnfuse raises.

Example:
    >>> import bnfuse
    >>> result = bnfuse.fold(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
    >>> [a.kind for a in result.report.actions]
    ['folded_into_producer', 'folded_into_producer']
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bnfuse.errors import (
    BackendUnavailableError,
    BnfuseError,
    CaffemodelError,
    InternalError,
    MemoryBudgetError,
    ModelMismatchError,
    OutputError,
    PrototxtSchemaError,
    PrototxtSyntaxError,
    ReadOnlyLayerError,
    UnsupportedLayerError,
    UpgradeError,
    excerpt,
)

if TYPE_CHECKING:
    from bnfuse.export.api import to_onnx
    from bnfuse.folding.affine import affine_of
    from bnfuse.folding.api import FoldReport, FoldResult, fold, fold_net
    from bnfuse.folding.arith import Affine
    from bnfuse.folding.binarize import BinarizeResult, binarize, binarize_net
    from bnfuse.folding.planner import Action
    from bnfuse.graph import BlobVersion, Graph
    from bnfuse.layertypes.geometry import ConvGeometry, PoolGeometry
    from bnfuse.layertypes.notices import NetWarning
    from bnfuse.net import Layer, Net, load, save
    from bnfuse.run import forward
    from bnfuse.verification._binarylayers import verify_binarized
    from bnfuse.verification.compare import VerifyResult, verify

#: Public names imported on first use, by the module that defines them: ``import bnfuse``
#: and ``bnfuse --help`` then load neither numpy nor protobuf nor the schema module.
#: (Add a new public name here, and under TYPE_CHECKING above for type checkers.)
_LAZY = {
    "Action": "bnfuse.folding.planner",
    "Affine": "bnfuse.folding.arith",
    "BlobVersion": "bnfuse.graph",
    "ConvGeometry": "bnfuse.layertypes.geometry",
    "Graph": "bnfuse.graph",
    "NetWarning": "bnfuse.layertypes.notices",
    "PoolGeometry": "bnfuse.layertypes.geometry",
    "affine_of": "bnfuse.folding.affine",
    "forward": "bnfuse.run",
    "to_onnx": "bnfuse.export.api",
    "BinarizeResult": "bnfuse.folding.binarize",
    "binarize": "bnfuse.folding.binarize",
    "binarize_net": "bnfuse.folding.binarize",
    "verify_binarized": "bnfuse.verification._binarylayers",
    "FoldReport": "bnfuse.folding.api",
    "FoldResult": "bnfuse.folding.api",
    "Layer": "bnfuse.net",
    "Net": "bnfuse.net",
    "VerifyResult": "bnfuse.verification.compare",
    "fold": "bnfuse.folding.api",
    "fold_net": "bnfuse.folding.api",
    "load": "bnfuse.net",
    "save": "bnfuse.net",
    "verify": "bnfuse.verification.compare",
}


def __getattr__(name: str) -> Any:
    """Import a public name of :data:`_LAZY` on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bnfuse' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

__version__ = "0.1.0"

_EXAMPLES = Path(__file__).resolve().parent / "examples"


def example_path(kind: str = "prototxt") -> Path:
    """Path of the small example model that ships with bnfuse.

    ``kind`` is ``"prototxt"`` or ``"caffemodel"``. The example is a tiny
    classifier with two Convolution + BatchNorm + Scale blocks and realistic
    BatchNorm statistics (factor != 1).

    Example:
        >>> example_path("prototxt").name
        'example.prototxt'
    """
    if not isinstance(kind, str):
        raise TypeError(f"example_path: kind must be a str, not {type(kind).__name__}")
    if kind not in ("prototxt", "caffemodel"):
        raise BnfuseError("example_path: kind must be 'prototxt' or 'caffemodel', not "
                          f"{excerpt(kind)}")
    return _EXAMPLES / f"example.{kind}"


__all__ = [
    "Action",
    "Affine",
    "BackendUnavailableError",
    "BinarizeResult",
    "BlobVersion",
    "BnfuseError",
    "CaffemodelError",
    "ConvGeometry",
    "FoldReport",
    "FoldResult",
    "Graph",
    "InternalError",
    "Layer",
    "MemoryBudgetError",
    "ModelMismatchError",
    "Net",
    "NetWarning",
    "OutputError",
    "PoolGeometry",
    "PrototxtSchemaError",
    "PrototxtSyntaxError",
    "ReadOnlyLayerError",
    "UnsupportedLayerError",
    "UpgradeError",
    "VerifyResult",
    "__version__",
    "affine_of",
    "binarize",
    "binarize_net",
    "example_path",
    "fold",
    "fold_net",
    "forward",
    "load",
    "save",
    "to_onnx",
    "verify",
    "verify_binarized",
]
