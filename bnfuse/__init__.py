"""bnfuse: fold BatchNorm and Scale layers of Caffe models, exactly, without Caffe.

The public API:

- :func:`load` / :func:`save`: read and write a Caffe net (prototxt, caffemodel);
- :func:`fold` / :func:`fold_net`: fold BatchNorm, Scale and Bias layers and
  report every decision;
- :func:`verify`: run two nets on the same inputs and compare every blob;
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

from pathlib import Path

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
from bnfuse.folding.api import FoldReport, FoldResult, fold, fold_net
from bnfuse.folding.binarize import BinarizeResult, binarize, binarize_net
from bnfuse.folding.planner import Action
from bnfuse.net import Layer, Net, load, save
from bnfuse.verification._binarylayers import verify_binarized
from bnfuse.verification.compare import VerifyResult, verify

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
    "BackendUnavailableError",
    "BinarizeResult",
    "BnfuseError",
    "CaffemodelError",
    "FoldReport",
    "FoldResult",
    "InternalError",
    "Layer",
    "MemoryBudgetError",
    "ModelMismatchError",
    "Net",
    "OutputError",
    "PrototxtSchemaError",
    "PrototxtSyntaxError",
    "ReadOnlyLayerError",
    "UnsupportedLayerError",
    "UpgradeError",
    "VerifyResult",
    "__version__",
    "binarize",
    "binarize_net",
    "example_path",
    "fold",
    "fold_net",
    "load",
    "save",
    "verify",
    "verify_binarized",
]
