"""The deploy form of a train/val net, and nets fed at shapes the caller chooses.

People often have a ``train_val.prototxt`` and a snapshot, not the deploy file.
:func:`to_deploy` makes the deploy form of such a net in place, with :class:`~bnfuse.Net`'s
edit methods, and lists every change:

- the TEST-phase view: layers the TEST phase excludes (``include { phase: TRAIN }``)
  are removed from the text. A train-only file (its data layers are TRAIN-only, so its
  TEST phase has no input) is loaded with ``phase="TRAIN"`` instead: the layers the TRAIN
  phase excludes are removed, and the include/exclude rules of the others, so that the
  deploy file keeps them in the TEST phase;
- loss layers (every type ending in ``Loss``: ``SoftmaxWithLoss``, ``EuclideanLoss``,
  ``SigmoidCrossEntropyLoss``, ``HingeLoss``, ``InfogainLoss``, ..., and any layer whose
  every top has a non-zero ``loss_weight``, such as a fork's ``Yolov3``), ``Accuracy``, the
  SSD fork's ``DetectionEvaluate`` and ``Silence`` layers are removed. A
  ``SoftmaxWithLoss`` becomes nothing: no ``Softmax`` is put in its place, so the
  deploy net outputs the scores the loss read (the logits);
  a train net that has its own ``Softmax`` (a ``prob`` layer) keeps it. The logits
  rank the classes as the probabilities do, and bnfuse adds no layer the net's author
  did not write;
- a ``BatchNorm`` that says ``use_global_stats: false`` (train/val nets share one
  definition between phases and write it for training) is set to ``true``: a deploy
  net normalises with the stored statistics, as every published deploy file of such a
  net does, and Caffe's own TEST-phase default is ``true``;
- each data layer (``Data``, ``ImageData``, ``MemoryData``, ..., and ``Python`` layers
  without bottoms; see :mod:`bnfuse.layertypes.datalayers`) becomes an ``Input`` layer
  of the same name with the shapes its prototxt states (or ``input_shapes`` gives); its
  tops no layer reads any more (the label) are dropped, and a data layer left with none
  is removed.

Everything else -- what the net computes, auxiliary classifier branches included -- is
kept, so every blob of the deploy net has the value it had in the train/val net.

Example:
    >>> import bnfuse
    >>> net = bnfuse.load(b'''
    ... layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
    ...         transform_param { crop_size: 8 } data_param { batch_size: 64 } }
    ... layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
    ...         transform_param { crop_size: 8 } data_param { batch_size: 2 } }
    ... layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
    ...         inner_product_param { num_output: 10 } }
    ... layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
    ... layer { name: "top1" type: "Accuracy" bottom: "fc" bottom: "label" top: "top1"
    ...         include { phase: TEST } }''')
    >>> for change in to_deploy(net, {"data": (1, 3, 8, 8)}):
    ...     print(change)
    removed data (Data): excluded from the TEST phase
    removed loss (SoftmaxWithLoss): a loss layer (training only)
    removed top1 (Accuracy): measures accuracy against the labels (training only)
    made data (Data) an Input layer: data (1, 3, 8, 8); dropped label (no layer reads it)
    >>> [(layer.name, layer.type, layer.tops) for layer in net.layers]
    [('data', 'Input', ('data',)), ('fc', 'InnerProduct', ('fc',))]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bnfuse.layertypes.datalayers import data_shapes, is_data_layer
from bnfuse.layertypes.shapes import (
    as_shapes,
    input_layer_shapes,
    input_shape_error,
    is_input_layer,
)
from bnfuse.net import Layer, Net

Shape = tuple[int, ...]


@dataclass(frozen=True)
class DeployChange:
    """One change :func:`to_deploy` made: ``action`` is ``"removed"``, ``"made_input"``,
    ``"set_global_stats"`` or ``"cleared_rules"`` (include/exclude rules of a TRAIN-phase
    view's layer).

    Example:
        >>> change = DeployChange("loss", "SoftmaxWithLoss", "removed", "a loss layer")
        >>> str(change), change.to_dict()["action"]
        ('removed loss (SoftmaxWithLoss): a loss layer', 'removed')
    """

    layer: str
    type: str
    action: str
    detail: str

    def __str__(self) -> str:
        if self.action == "made_input":
            return f"made {self.layer} ({self.type}) an Input layer: {self.detail}"
        if self.action == "cleared_rules":
            return f"removed the include/exclude rules of {self.layer} ({self.type}): {self.detail}"
        if self.action == "set_global_stats":
            return f"set use_global_stats: true in {self.layer} ({self.type}): {self.detail}"
        return f"{self.action} {self.layer} ({self.type}): {self.detail}"

    def to_dict(self) -> dict[str, str]:
        """A JSON-ready view (in ``bnfuse fold --deploy --json``)."""
        return {"layer": self.layer, "type": self.type, "action": self.action,
                "detail": self.detail}


def training_only(layer: Layer) -> str | None:
    """Why a deploy net has no place for ``layer`` (None: it keeps it).

    A layer whose every top has a non-zero ``loss_weight`` is a loss whatever its type
    (a fork's detection loss such as ``Yolov3``): Caffe sums those tops into the training
    objective.

    Example:
        >>> from types import SimpleNamespace
        >>> [training_only(SimpleNamespace(type=t, tops=("x",),
        ...                                param=SimpleNamespace(loss_weight=[])))
        ...  for t in ("HingeLoss", "Silence", "ReLU")]
        ['a loss layer (training only)', 'consumes blobs nothing else reads (training only)', None]
        >>> training_only(SimpleNamespace(type="Yolov3", tops=("det_loss",),
        ...                               param=SimpleNamespace(loss_weight=[1.0])))
        'its tops are losses (loss_weight; training only)'
    """
    if layer.type.endswith("Loss"):
        return "a loss layer (training only)"
    weights = list(layer.param.loss_weight)
    if layer.tops and len(weights) == len(layer.tops) and all(w != 0 for w in weights):
        return "its tops are losses (loss_weight; training only)"
    if layer.type == "Accuracy":
        return "measures accuracy against the labels (training only)"
    if layer.type == "DetectionEvaluate":  # the SSD fork's mAP statistics
        return "evaluates detections against the labels (training only)"
    if layer.type == "Silence":
        return "consumes blobs nothing else reads (training only)"
    return None


def _batch_statistics(layer: Layer) -> bool:
    """A BatchNorm told to normalise with the batch's statistics (``use_global_stats:
    false``), as train/val nets write for training."""
    param = layer.param.batch_norm_param
    return (layer.type == "BatchNorm" and param.HasField("use_global_stats")
            and not param.use_global_stats)


def _shown(shape: Shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _feed_as_input(net: Net, layer: Layer, shapes: Mapping[str, Shape],
                   needed: set[str]) -> DeployChange:
    """Make ``layer`` an Input of its ``needed`` tops at ``shapes``; say what changed."""
    keep = [top for top in layer.tops if top in needed]
    stated = data_shapes(layer) if is_data_layer(layer) else [None] * len(layer.tops)
    for top in keep:
        if top not in shapes:
            raise input_shape_error(layer, top, stated[layer.tops.index(top)])
    dropped = [top for top in layer.tops if top not in needed]
    detail = ", ".join(f"{top} {_shown(shapes[top])}" for top in keep)
    if dropped:
        pronoun = "it" if len(dropped) == 1 else "them"
        detail += f"; dropped {', '.join(dropped)} (no layer reads {pronoun})"
    change = DeployChange(layer.name, layer.type, "made_input", detail)
    net.make_input(layer, [(top, shapes[top]) for top in keep])
    return change


def to_deploy(net: Net, input_shapes: Mapping[str, Sequence[int]] | None = None
              ) -> list[DeployChange]:
    """Make ``net`` its deploy form, in place (see the module docstring); list the changes.

    ``input_shapes`` gives (or overrides) the shape of data layer tops; a top a kept
    layer reads whose shape neither the prototxt nor ``input_shapes`` gives raises
    :func:`~bnfuse.layertypes.shapes.input_shape_error`. A net without data, loss or
    TRAIN-only layers is left as it is (an empty list).
    """
    given = as_shapes(input_shapes)
    phase = net.phase
    changes = [DeployChange(layer.name, layer.type, "removed", f"excluded from the {phase} phase")
               for layer in net.excluded_layers]
    if phase == "TEST":
        net.remove_excluded_layers()
    else:
        changes += [DeployChange(layer.name, layer.type, "cleared_rules",
                                 f"the deploy form keeps the {phase} phase's layers in every "
                                 "phase")
                    for layer in net.make_test_phase()]
    for layer in [layer for layer in net.layers if training_only(layer) is not None]:
        net.remove_layer(layer)
        changes.append(DeployChange(layer.name, layer.type, "removed",
                                    training_only(layer) or ""))
    for layer in net.layers:
        if _batch_statistics(layer):
            net.set_field(layer, ("batch_norm_param", "use_global_stats"), True)
            changes.append(DeployChange(
                layer.name, layer.type, "set_global_stats",
                "use_global_stats: false is a training setting; a deploy net normalises with "
                "the stored statistics"))
    read = {name for layer in net.layers for name in layer.bottoms}
    shapes = input_layer_shapes(net.layers, given, required=False)
    for layer in [layer for layer in net.layers if is_data_layer(layer)]:
        if not read.intersection(layer.tops):
            net.remove_layer(layer)
            changes.append(DeployChange(layer.name, layer.type, "removed",
                                        "a data layer whose tops no layer reads"))
            continue
        changes.append(_feed_as_input(net, layer, shapes, read))
    return changes


def feed_at(net: Net, input_shapes: Mapping[str, Sequence[int]]) -> None:
    """Make every input layer with a top in ``input_shapes`` an ``Input`` at those shapes.

    For running a net at shapes its prototxt does not state (``--input-shape``,
    ``--batch``): an ``Input`` layer's shapes are replaced, and a data layer becomes an
    ``Input`` of all its tops (the other tops at their stated shapes).

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(bnfuse.example_path("prototxt"))
        >>> feed_at(net, {"data": (4, 3, 16, 16)})
        >>> from bnfuse.layertypes.shapes import infer_shapes
        >>> infer_shapes(net)["prob"]
        (4, 10)
    """
    given = as_shapes(input_shapes)
    shapes = input_layer_shapes(net.layers, given, required=False)
    for layer in [layer for layer in net.layers if is_input_layer(layer)]:
        if given.keys() & set(layer.tops):
            _feed_as_input(net, layer, shapes, set(layer.tops))


__all__ = ["DeployChange", "feed_at", "to_deploy", "training_only"]
