"""``bnfuse.fold`` and ``bnfuse.fold_net``: plan, apply, report.

Example:
    >>> import bnfuse
    >>> result = bnfuse.fold(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
    >>> result.report.layers_before["BatchNorm"], result.report.layers_after.get("BatchNorm", 0)
    (2, 0)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from bnfuse._checks import require_bool, require_input_shapes, require_net, require_source
from bnfuse.deploy import DeployChange, to_deploy
from bnfuse.errors import BnfuseError
from bnfuse.folding import planner, rewrite
from bnfuse.folding.planner import Action, FoldOptions, layer_counts
from bnfuse.layertypes.batchnorm import NORM_TYPES
from bnfuse.net import Destination, Layer, Net, Source, load, save


def _check_switches(func: str, forward: object, merge_unfoldable: object,
                    force_global_stats: object) -> None:
    for name, value in (("forward", forward), ("merge_unfoldable", merge_unfoldable),
                        ("force_global_stats", force_global_stats)):
        require_bool(value, func, name)


def _parameter_count(layers: Sequence[Layer]) -> int:
    return sum(int(blob.size) for layer in layers for blob in layer.blobs)


@dataclass
class FoldReport:
    """What a fold did: every action, and the net's size before and after.

    ``actions`` lists each decision in layer order (kind, layers, target,
    reason); ``layers_before``/``layers_after`` count layers by type;
    ``parameters_before``/``parameters_after`` count weight values; ``deploy`` lists what
    making the deploy form removed or replaced (empty unless the fold was asked for it).

    Example:
        >>> report = FoldReport(actions=[], layers_before={"ReLU": 1}, layers_after={"ReLU": 1},
        ...                     parameters_before=0, parameters_after=0)
        >>> report.folded, report.skipped
        ([], [])
    """

    actions: list[Action]
    layers_before: dict[str, int]
    layers_after: dict[str, int]
    parameters_before: int
    parameters_after: int
    options: FoldOptions = field(default_factory=FoldOptions)
    deploy: list[DeployChange] = field(default_factory=list)

    @property
    def folded(self) -> list[Action]:
        """Actions that removed or merged layers."""
        return [a for a in self.actions if a.kind not in (planner.SKIPPED, planner.KEPT)]

    @property
    def skipped(self) -> list[Action]:
        """Actions that left layers as they were, each with its reason."""
        return [a for a in self.actions if a.kind in (planner.SKIPPED, planner.KEPT)]

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready view (used by ``bnfuse fold --json``)."""
        return {
            "actions": [a.to_dict() for a in self.actions],
            "layers_before": dict(self.layers_before),
            "layers_after": dict(self.layers_after),
            "parameters_before": self.parameters_before,
            "parameters_after": self.parameters_after,
            "options": {"forward": self.options.forward,
                        "merge_unfoldable": self.options.merge_unfoldable,
                        "force_global_stats": self.options.force_global_stats},
            "deploy": [change.to_dict() for change in self.deploy],
        }


@dataclass
class FoldResult:
    """The folded net and its report; :meth:`save` writes both files.

    Example:
        >>> import bnfuse, tempfile, pathlib
        >>> result = bnfuse.fold(bnfuse.example_path("prototxt"),
        ...                      bnfuse.example_path("caffemodel"))
        >>> out = pathlib.Path(tempfile.mkdtemp())
        >>> result.save(out / "net.prototxt", out / "net.caffemodel")
        >>> sorted(p.name for p in out.iterdir())
        ['net.caffemodel', 'net.prototxt']
    """

    net: Net
    report: FoldReport

    def save(
        self,
        prototxt: Destination,
        caffemodel: Destination | None = None,
        *,
        check: Callable[[str, str], None] | None = None,
    ) -> None:
        """Write the folded prototxt and, when a path is given, the caffemodel.

        ``check`` is :func:`bnfuse.save`'s: called with the complete temporary pair
        before it replaces the destinations.
        """
        save(self.net, prototxt, caffemodel, check=check)


def _weights_read(net: Net) -> list[Layer]:
    """The layers whose weights a fold may read: the affine layers and their neighbours."""
    affine = [layer for layer in net.layers
              if layer.type in NORM_TYPES or layer.type in ("Scale", "Bias")]
    near = {b for layer in affine for b in layer.bottoms} | {t for layer in affine
                                                             for t in layer.tops}
    return [*affine, *(layer for layer in net.layers if layer.type in planner.PRODUCER_TYPES
                       and near.intersection(layer.tops + layer.bottoms))]


def fold_net(
    net: Net,
    *,
    forward: bool = True,
    merge_unfoldable: bool = True,
    force_global_stats: bool = False,
    deploy: bool = False,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> FoldResult:
    """Fold BatchNorm/Scale/Bias layers of a loaded net, in place, and report.

    ``forward`` allows folding into the following zero-padded Convolution or
    InnerProduct; ``merge_unfoldable`` turns a BatchNorm + Scale that cannot
    fold into one Scale with bias; ``force_global_stats`` folds BatchNorms that
    say ``use_global_stats: false`` as if they used their stored statistics.
    ``deploy`` first makes the deploy form of a train/val net
    (:func:`bnfuse.deploy.to_deploy`: data layers become ``Input`` layers at their
    stated shapes or at ``input_shapes``; loss, accuracy, Silence and TRAIN-only layers
    are removed), listed in ``report.deploy``.
    The net is modified in place (no copy of its weights is made) and returned
    as ``result.net``.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
        >>> result = bnfuse.fold_net(net)
        >>> result.net is net, [a.kind for a in result.report.actions]
        (True, ['folded_into_producer', 'folded_into_producer'])
    """
    require_net(net, "fold_net")
    _check_switches("fold_net", forward, merge_unfoldable, force_global_stats)
    require_bool(deploy, "fold_net", "deploy")
    _check_input_shapes("fold_net", input_shapes, deploy)
    if net.phase != "TEST" and not deploy:
        # Its layers keep their TRAIN-only rules: folded and written as they are, the
        # file would load in the TEST phase without them.
        raise BnfuseError(f"fold_net: {net.prototxt_source} was loaded with "
                          f"phase={net.phase!r}; only its deploy form is folded: pass "
                          "deploy=True")
    options = FoldOptions(forward=forward, merge_unfoldable=merge_unfoldable,
                          force_global_stats=force_global_stats)
    layers_before = layer_counts(net.layers)
    parameters_before = _parameter_count(net.layers)
    changes = to_deploy(net, input_shapes) if deploy else []
    # Computed on private copies: a caffemodel truncated meanwhile is a clean error.
    net._read_weights_privately(_weights_read(net))
    actions = planner.plan(net, options)
    rewrite.apply(net, actions)
    report = FoldReport(actions=actions, layers_before=layers_before,
                        layers_after=layer_counts(net.layers),
                        parameters_before=parameters_before,
                        parameters_after=_parameter_count(net.layers), options=options,
                        deploy=changes)
    return FoldResult(net=net, report=report)


def fold(
    prototxt: Source,
    caffemodel: Source | None = None,
    *,
    forward: bool = True,
    merge_unfoldable: bool = True,
    force_global_stats: bool = False,
    deploy: bool = False,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    phase: str = "TEST",
) -> FoldResult:
    """Load a Caffe model and fold its BatchNorm and Scale layers; see :func:`fold_net`.

    Without a caffemodel only the plan can be made (nothing has weights), so
    every chain is reported as skipped for lack of weights. ``phase="TRAIN"`` (with
    ``deploy=True``) folds the deploy form of a train-only file (see :func:`load`).

    Example:
        >>> import bnfuse
        >>> result = bnfuse.fold(bnfuse.example_path("prototxt"),
        ...                      bnfuse.example_path("caffemodel"))
        >>> result.report.layers_after
        {'Input': 1, 'Convolution': 2, 'ReLU': 2, 'Pooling': 1, 'InnerProduct': 1, 'Softmax': 1}
    """
    require_source(prototxt, "fold", "prototxt")
    require_source(caffemodel, "fold", "caffemodel", optional=True)
    _check_switches("fold", forward, merge_unfoldable, force_global_stats)
    require_bool(deploy, "fold", "deploy")
    _check_input_shapes("fold", input_shapes, deploy)
    net = load(prototxt, caffemodel, phase=phase)
    return fold_net(net, forward=forward, merge_unfoldable=merge_unfoldable,
                    force_global_stats=force_global_stats, deploy=deploy,
                    input_shapes=input_shapes)


def _check_input_shapes(func: str, input_shapes: object, deploy: bool) -> None:
    if require_input_shapes(input_shapes, func) is None:
        return
    if not deploy:
        # Folding itself never needs a shape: only the deploy form's Input layers use them.
        raise BnfuseError(f"{func}: input_shapes are the shapes of the deploy form's Input "
                          "layers; pass deploy=True with them")


__all__ = ["FoldReport", "FoldResult", "fold", "fold_net"]
