"""The ``bnfuse`` command line: fold, inspect, verify, random-weights.

This is the only module that prints or exits. Library errors become one line
``error: ...`` and exit code 1; usage errors exit 2 (argparse's convention).
SIGINT, SIGTERM and SIGHUP end the command with one line and exit code
``128 + signal number``, after the temp files of any output being written were
removed (:func:`bnfuse.io.guard.install_handlers`); caffemodels being read are
held with a read lease so that another process changing one stops the command
cleanly (:func:`bnfuse.io.guard.watch_inputs`).

Example:
    >>> from bnfuse.cli import main
    >>> main(["--version"])  # doctest: +ELLIPSIS
    bnfuse ...
    0
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
#: A bug in bnfuse itself (an :class:`~bnfuse.errors.InternalError`), never a user error.
EXIT_INTERNAL = 3


class _Out:
    """Where the command writes: stdout for results, stderr for progress and errors."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def say(self, text: str = "") -> None:
        if not self.quiet:
            print(text, file=sys.stdout)

    def progress(self) -> Callable[[int, int, str], None] | None:
        """A progress callback drawing on stderr, only when stderr is a terminal."""
        stream: TextIO = sys.stderr
        if self.quiet or not stream.isatty():
            return None

        def draw(done: int, total: int, what: str) -> None:
            width = 30
            filled = width * done // max(total, 1)
            bar = "#" * filled + "." * (width - filled)
            stream.write(f"\r[{bar}] {done}/{total} {what[:40]:40}")
            if done >= total:
                stream.write("\r" + " " * (width + 60) + "\r")
            stream.flush()

        return draw


#: The library names its keyword arguments in messages; the command line shows the flag
#: that sets each (the one table of which flag is which keyword).
#: (Patterns as text, compiled on the first message: ``bnfuse --help`` compiles none.)
_FLAG_WORDS: tuple[tuple[str, str], ...] = (
    (r"unmeasurable='unit'", "--fill-unmeasurable"),
    (r"force_global_stats=True", "--force-global-stats"),
    (r"deploy=True", "--deploy"),
    (r"phase='(TRAIN|TEST)'", "--phase {0}"),
    (r"\(--batch, --input-shape; input_shapes=\)", "(--batch, --input-shape)"),
    (r"--max-memory \(max_memory=\)", "--max-memory"),
    (r"input_shapes=\{'((?:[^'\\]|\\.)*)': \(([^)]*)\)\}(?: to verify_local)?",
     "--input-shape {0}={1}"),
)


@functools.cache
def _flag_patterns() -> tuple[tuple[re.Pattern[str], str], ...]:
    return tuple((re.compile(pattern), flag) for pattern, flag in _FLAG_WORDS)


def cli_words(text: str) -> str:
    """A library message as the command line prints it: flags instead of keywords.

    Example:
        >>> print(cli_words("pass unmeasurable='unit' or input_shapes={'data': (8, C, H, W)}"))
        pass --fill-unmeasurable or --input-shape data=8,C,H,W
    """
    for pattern, flag in _flag_patterns():
        text = pattern.sub(lambda m, flag=flag: flag.format(  # type: ignore[misc]
            *(g.replace(" ", "").rstrip(",") for g in m.groups())), text)
    return text


def _write_json(payload: Any, target: str, inputs: Sequence[str | Path] = ()) -> None:
    """Write JSON to stdout (``-``) or through the guarded writer to a file that is
    none of ``inputs``."""
    import json

    text = json.dumps(payload, indent=2, sort_keys=False) + "\n"
    if target == "-":
        sys.stdout.write(text)
        return
    from bnfuse.io.atomic import atomic_write

    with atomic_write(target, inputs=inputs) as handle:
        handle.write(text.encode("utf-8"))


def _check_outputs(outputs: Sequence[tuple[str, str | Path]], inputs: Sequence[str | Path]) -> None:
    """Refuse, before any work, outputs that are inputs, not regular files, or one file.

    ``outputs`` are (label, path) pairs; ``--json -`` (standard output) is no file.
    """
    from bnfuse.io.guard import check_destinations

    files = [(label, path) for label, path in outputs if str(path) != "-"]
    check_destinations([path for _, path in files], inputs=inputs,
                       labels=[label for label, _ in files])


def _table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _counts_table(before: dict[str, int], after: dict[str, int],
                  params_before: int, params_after: int) -> str:
    types = list(before) + [t for t in after if t not in before]
    rows = [(t, str(before.get(t, 0)), str(after.get(t, 0))) for t in types]
    rows.append(("total layers", str(sum(before.values())), str(sum(after.values()))))
    rows.append(("parameters", f"{params_before:,}", f"{params_after:,}"))
    return _table(rows, ("layer type", "before", "after"))


_KIND_LABELS = {
    "folded_into_producer": "folded ",
    "folded_forward": "forward",
    "merged_into_scale": "merged ",
    "skipped": "skipped",
    "kept": "kept   ",
}


def _describe_action(action: Any) -> str:
    label = _KIND_LABELS.get(action.kind, action.kind)
    chain = " + ".join(action.chain)
    return cli_words(_action_text(action, label, chain))


def _action_text(action: Any, label: str, chain: str) -> str:
    if action.kind == "folded_into_producer":
        return f"{label} {chain} into {action.target[0]}"
    if action.kind == "folded_forward":
        return f"{label} {chain} into {', '.join(action.target)}"
    if action.kind == "merged_into_scale":
        return f"{label} {chain} into one Scale ({action.reason})"
    return f"{label} {chain}: {action.reason}"


_SUMMARY_ORDER = (
    ("folded_into_producer", "folded into their producer"),
    ("folded_forward", "folded forward"),
    ("merged_into_scale", "merged into one Scale"),
    ("skipped", "skipped"),
    ("kept", "kept"),
)


def _summary(actions: Sequence[Any]) -> str:
    """One line counting the actions by kind, e.g. '59 folded into their producer, 62 ...'."""
    counts = {kind: sum(1 for a in actions if a.kind == kind) for kind, _ in _SUMMARY_ORDER}
    parts = [f"{counts[kind]} {label}" for kind, label in _SUMMARY_ORDER if counts[kind]]
    return f"{len(actions)} chains: " + ", ".join(parts)


class _NotCommittedError(Exception):
    """Raised from a save's check to keep the outputs from being committed."""


def _default_outputs(prototxt: Path, caffemodel: Path) -> tuple[Path, Path]:
    return (prototxt.with_name(f"{prototxt.stem}_inference.prototxt"),
            caffemodel.with_name(f"{caffemodel.stem}_inference.caffemodel"))


def _shapes_of(net: Any, args: argparse.Namespace) -> dict[str, tuple[int, ...]] | None:
    """The input shapes ``--input-shape`` and ``--batch`` ask for (None: neither given).

    ``--batch`` replaces axis 0 of every input the net states or ``--input-shape`` gives.
    """
    from bnfuse.layertypes.shapes import input_layer_shapes

    given = dict(args.input_shape or [])
    if args.batch is None:
        return given or None
    stated = input_layer_shapes(net.layers, given, required=False)
    return {name: (args.batch, *shape[1:]) for name, shape in stated.items() if shape}


def _fed(net: Any, shapes: dict[str, tuple[int, ...]] | None) -> Any:
    from bnfuse.deploy import feed_at

    if shapes:
        feed_at(net, shapes)
    return net


def _verify_and_report(out: _Out, a: Any, b: Any, args: argparse.Namespace) -> Any:
    import bnfuse

    # The library decides everything, the fallback to a local check included, so the
    # command and bnfuse.verify(..., fallback="local") give the same verdict.
    result = bnfuse.verify(a, b, backend=args.backend, inputs=args.inputs, seed=args.seed,
                           rtol=args.rtol, atol=args.atol, progress=out.progress(),
                           fallback="local", max_memory=args.max_memory)
    out.say(cli_words(result.summary()))
    return result


def _cmd_fold(args: argparse.Namespace, out: _Out) -> int:
    import bnfuse

    prototxt, caffemodel = Path(args.prototxt), Path(args.caffemodel)
    default_text, default_model = _default_outputs(prototxt, caffemodel)
    # As given (a Path would turn "out/" into a file named "out").
    out_text: str | Path = args.output if args.output else default_text
    out_model: str | Path = args.weights if args.weights else default_model
    outputs: list[tuple[str, str | Path]] = [] if args.dry_run else [
        ("prototxt", out_text), ("caffemodel", out_model)]
    if args.json:
        outputs.append(("--json", args.json))
    # Before the fold: a wrong output must not cost the fold's time, nor leave half
    # the outputs written (the report comes last).
    _check_outputs(outputs, [prototxt, caffemodel])
    # --batch needs the inputs' shapes (a data layer's channels may come from the weights).
    shapes = (_shapes_of(bnfuse.load(prototxt, caffemodel, phase=args.phase), args)
              if args.batch is not None else _shapes_of(None, args))
    result = bnfuse.fold(prototxt, caffemodel, forward=not args.no_forward,
                         merge_unfoldable=not args.no_merge,
                         force_global_stats=args.force_global_stats, deploy=args.deploy,
                         input_shapes=shapes if args.deploy else None, phase=args.phase)
    report = result.report
    out.say(f"{prototxt.name} + {caffemodel.name}")
    out.say(_counts_table(report.layers_before, report.layers_after,
                          report.parameters_before, report.parameters_after))
    if report.deploy:
        out.say()
        out.say("deploy form:")
    for change in report.deploy:
        out.say(f"  {change}")
    if report.actions:
        out.say()
    for action in report.actions:
        out.say(_describe_action(action))
    if report.actions:
        out.say(_summary(report.actions))
    payload: dict[str, Any] = {"prototxt": str(prototxt), "caffemodel": str(caffemodel),
                               "report": report.to_dict(), "written": None, "verify": None}
    status = EXIT_OK
    if not args.dry_run:
        verdicts: list[Any] = []

        def verify_pair(text_temp: str, model_temp: str) -> None:
            # The complete temporary pair is what gets renamed into place: verifying it
            # checks the very bytes, and a failure (or a budget refusal) writes nothing.
            out.say()
            checked = _verify_and_report(out, *_fold_pair(args, shapes, (prototxt, caffemodel),
                                                          (text_temp, model_temp), out_text),
                                         args)
            verdicts.append(checked)
            if not checked.passed:
                raise _NotCommittedError

        try:
            result.save(out_text, out_model, check=verify_pair if args.verify else None)
        except _NotCommittedError:
            checked = verdicts[0]
            payload["verify"] = checked.to_dict()
            status = EXIT_ERROR
            print("error: verification failed: the folded model's outputs differ "
                  f"(first at blob {checked.first_divergence!r}); nothing was written",
                  file=sys.stderr)
        else:
            if verdicts:
                payload["verify"] = verdicts[0].to_dict()
            payload["written"] = {"prototxt": str(out_text), "caffemodel": str(out_model)}
            out.say()
            out.say(f"wrote {out_text}")
            out.say(f"wrote {out_model}")
    elif args.verify:
        out.say("--verify ignored with --dry-run: nothing was written to verify")
    if shapes and not args.deploy and not args.verify:
        out.say("--input-shape/--batch ignored: they shape the nets --verify runs and the "
                "Input layers --deploy writes")
    if args.json:
        written = [out_text, out_model] if payload["written"] else []
        _write_json(payload, args.json, [prototxt, caffemodel, *written])
    return status


def _cmd_binarize(args: argparse.Namespace, out: _Out) -> int:
    import bnfuse
    from bnfuse.verification._binarylayers import verify_binarized

    prototxt, caffemodel = Path(args.prototxt), Path(args.caffemodel)
    default_text, default_model = _default_outputs(prototxt, caffemodel)
    out_text: str | Path = args.output if args.output else default_text
    out_model: str | Path = args.weights if args.weights else default_model
    outputs: list[tuple[str, str | Path]] = [("prototxt", out_text), ("caffemodel", out_model)]
    for label, path in (("--thresholds", args.thresholds), ("--json", args.json)):
        if path:
            outputs.append((label, path))
    _check_outputs(outputs, [prototxt, caffemodel])
    result = bnfuse.binarize(prototxt, caffemodel, layers=args.layers or (),
                             convention=args.convention)
    report = result.report
    out.say(f"{prototxt.name} + {caffemodel.name}")
    for entry in report.layers:
        head = f"  {entry.layer} ({entry.type}, {entry.convention})"
        if entry.skipped:
            out.say(f"{head}: skipped: {entry.skipped}")
            continue
        out.say(f"{head}: alpha {entry.alpha_min:.6g} .. {entry.alpha_max:.6g}; bias: "
                f"{entry.bias}; alpha into Scale {entry.alpha_into!r} "
                + (f"(merged {' + '.join(entry.merged)})" if entry.merged else "(inserted)")
                + (f"; thresholds for {entry.thresholds_for!r}" if entry.thresholds_for else ""))
    if not report.layers:
        out.say("  no binary-weight layers")
    payload: dict[str, Any] = {"prototxt": str(prototxt), "caffemodel": str(caffemodel),
                               "report": report.to_dict(), "written": None, "verify": None}
    verdicts: list[Any] = []

    def check(text_temp: str, model_temp: str) -> None:
        binarized = bnfuse.load(text_temp, model_temp)
        binarized.prototxt_source = str(out_text)
        checked = verify_binarized(
            bnfuse.load(prototxt, caffemodel), binarized, conventions=report.conventions(),
            plain=report.declared(), backend=args.backend, inputs=args.inputs, seed=args.seed,
            rtol=args.rtol, atol=args.atol, progress=out.progress(), fallback="local",
            max_memory=args.max_memory)
        out.say(cli_words(checked.summary()))
        verdicts.append(checked)
        if not checked.passed:
            raise _NotCommittedError

    status = EXIT_OK
    try:
        result.save(out_text, out_model, thresholds=args.thresholds,
                    check=check if args.verify else None)
    except _NotCommittedError:
        payload["verify"] = verdicts[0].to_dict()
        status = EXIT_ERROR
        print("error: verification failed: the binarized model's outputs differ from the "
              f"original's binary semantics (first at blob {verdicts[0].first_divergence!r}); "
              "nothing was written", file=sys.stderr)
    else:
        if verdicts:
            payload["verify"] = verdicts[0].to_dict()
        written = [str(out_text), str(out_model), *([str(args.thresholds)]
                                                    if args.thresholds else [])]
        payload["written"] = written
        for path in written:
            out.say(f"wrote {path}")
    if args.json:
        _write_json(payload, args.json, [prototxt, caffemodel])
    return status


def _fold_pair(args: argparse.Namespace, shapes: dict[str, tuple[int, ...]] | None,
               original: tuple[Path, Path], folded_temp: tuple[str, str],
               shown: str | Path) -> tuple[Any, Any]:
    """What ``fold --verify`` compares: the original against the temporary folded pair
    (named as its destination), fed at the shapes asked for (with ``--deploy``, the
    deploy form of the original)."""
    import bnfuse
    from bnfuse.deploy import to_deploy

    folded = bnfuse.load(*folded_temp)
    # Messages name the file the user asked for, not its hidden temporary twin.
    folded.prototxt_source = str(shown)
    if not args.deploy and not shapes:
        return original, folded
    net_a = bnfuse.load(*original, phase=args.phase)
    if args.deploy:
        to_deploy(net_a, shapes)
    return _fed(net_a, shapes), _fed(folded, shapes)


def _add_phase(parser: argparse.ArgumentParser, what: str, train_note: str) -> None:
    # load(..., phase=): a train-only file's TEST phase has no input.
    parser.add_argument("--phase", choices=("TEST", "TRAIN"), default="TEST",
                        help=f"the phase whose layers {what} (default: TEST); TRAIN for a "
                             f"train-only file whose data layers are TRAIN-only{train_note}")


def _cmd_inspect(args: argparse.Namespace, out: _Out) -> int:
    import bnfuse
    from bnfuse.folding.planner import FoldOptions, layer_counts, plan

    inputs = [p for p in (args.prototxt, args.caffemodel) if p is not None]
    if args.json:
        _check_outputs([("--json", args.json)], inputs)
    net = bnfuse.load(args.prototxt, args.caffemodel, phase=args.phase)
    counts = layer_counts(net.layers)
    parameters = sum(int(b.size) for layer in net.layers for b in layer.blobs)
    size = sum(int(b.nbytes) for layer in net.layers for b in layer.blobs)
    actions = plan(net, FoldOptions(forward=not args.no_forward,
                                    merge_unfoldable=not args.no_merge,
                                    force_global_stats=args.force_global_stats),
                   structural=net.weights is None)
    out.say(f"{net.prototxt_source}: {len(net.layers)} layers"
            + (f", {parameters:,} parameters ({size / 2**20:.1f} MiB)"
               if net.weights is not None else " (structure only: no caffemodel given)"))
    out.say(_table([(t, str(n)) for t, n in counts.items()], ("layer type", "count")))
    if actions:
        out.say()
        out.say("fold opportunities and blockers:")
    for action in actions:
        out.say("  " + _describe_action(action))
    if actions:
        out.say(_summary(actions))
    forks = _fork_fields(net, actions)
    if forks:
        out.say()
        out.say("fork fields (not in BVLC Caffe's schema) of the layers above:")
        for name, fields in forks.items():
            out.say(f"  {name}: {', '.join(fields)}")
    if net.warnings:
        out.say()
        out.say(f"warnings ({len(net.warnings)}): what the layers' schema fields do not say")
        for warning in net.warnings:
            out.say(f"  {warning.message}")
    if args.json:
        _write_json({"prototxt": net.prototxt_source, "layers": counts,
                     "parameters": parameters, "bytes": size,
                     "actions": [a.to_dict() for a in actions], "fork_fields": forks,
                     "warnings": [w.to_dict() for w in net.warnings]},
                    args.json, inputs)
    return EXIT_OK


def _fork_fields(net: Any, actions: Sequence[Any]) -> dict[str, list[str]]:
    """The fork fields of every layer an action names, in the net's order."""
    named = {name for action in actions for name in (*action.chain, *action.target)}
    return {layer.name: list(layer.unknown_fields) for layer in net.layers
            if layer.name in named and layer.unknown_fields}


def _cmd_verify(args: argparse.Namespace, out: _Out) -> int:
    inputs = [args.a_prototxt, args.a_caffemodel, args.b_prototxt, args.b_caffemodel]
    if args.json:
        _check_outputs([("--json", args.json)], inputs)
    a: Any = (Path(args.a_prototxt), Path(args.a_caffemodel))
    b: Any = (Path(args.b_prototxt), Path(args.b_caffemodel))
    if args.input_shape or args.batch is not None:
        import bnfuse

        net_a = bnfuse.load(*a)
        shapes = _shapes_of(net_a, args)
        a, b = _fed(net_a, shapes), _fed(bnfuse.load(*b), shapes)
    result = _verify_and_report(out, a, b, args)
    if args.json:
        _write_json(result.to_dict(), args.json, inputs)
    if not result.passed:
        print(f"error: the nets differ (first at blob {result.first_divergence!r})",
              file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _cmd_export(args: argparse.Namespace, out: _Out) -> int:
    """``bnfuse export``: fold (unless --no-fold), write ONNX; with --verify, check it first."""
    import bnfuse
    from bnfuse.export.api import save_onnx, verify_onnx

    prototxt, caffemodel = Path(args.prototxt), Path(args.caffemodel)
    target: str | Path = args.output if args.output else prototxt.with_suffix(".onnx")
    _check_outputs([("-o", target)], [prototxt, caffemodel])
    shapes = dict(args.input_shape or []) or None
    net = bnfuse.load(prototxt, caffemodel) if args.no_fold else \
        bnfuse.fold(prototxt, caffemodel).net
    model = bnfuse.to_onnx(net, fold=False, opset=args.opset, input_shapes=shapes)
    out.say(f"{prototxt.name} + {caffemodel.name}: {len(net.layers)} layers"
            f"{'' if args.no_fold else ' after folding'} -> {len(model.graph.node)} ONNX nodes, "
            f"opset {args.opset}")
    if args.verify:
        # The verdict comes before the file is written: a failed check writes nothing.
        reference = net if args.no_fold else (prototxt, caffemodel)
        result = verify_onnx(reference, model, exported=net, inputs=args.inputs,
                             seed=args.seed, rtol=args.rtol, atol=args.atol)
        out.say(cli_words(result.summary()))
        if not result.passed:
            print(f"error: the ONNX model's outputs differ from the Caffe net's (first at "
                  f"blob {result.first_divergence!r}); nothing was written", file=sys.stderr)
            return EXIT_ERROR
    save_onnx(model, target, inputs=[prototxt, caffemodel])
    out.say(f"wrote {target}")
    return EXIT_OK


def _add_export_command(commands: Any) -> None:
    from bnfuse.export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

    export = commands.add_parser(
        "export", help="write the model as ONNX (folded first unless --no-fold)",
        description="Fold BatchNorm/Scale layers, then write the net as an ONNX model "
                    "(needs: pip install \"bnfuse[onnx]\"; --verify also needs onnxruntime).")
    export.add_argument("prototxt", help="the model definition")
    export.add_argument("caffemodel", help="the trained weights (.caffemodel)")
    export.add_argument("-o", "--output", metavar="OUT.onnx",
                        help="output path (default: the prototxt's name with .onnx)")
    export.add_argument("--no-fold", action="store_true",
                        help="export the net as it is, BatchNorm and Scale layers included")
    export.add_argument("--opset", type=int, choices=range(MIN_OPSET, MAX_OPSET + 1),
                        default=DEFAULT_OPSET, metavar="N",
                        help=f"ONNX opset ({MIN_OPSET} to {MAX_OPSET}, default "
                             f"{DEFAULT_OPSET})")
    export.add_argument("--verify", action="store_true",
                        help="run the ONNX model in ONNX Runtime and compare it with bnfuse's "
                             "executor on the Caffe net before writing (calibrated tolerance)")
    export.add_argument("--inputs", metavar="FILE.npz",
                        help="input arrays by blob name for --verify (default: seeded random)")
    export.add_argument("--seed", type=_seed, default=0, help="seed of --verify's inputs")
    export.add_argument("--rtol", type=_tolerance, default=None,
                        help="--verify's max difference relative to each blob's max |value|")
    export.add_argument("--atol", type=_tolerance, default=None,
                        help="--verify's absolute tolerance")
    export.add_argument("--input-shape", type=_input_shape, action="append", default=None,
                        metavar="NAME=N,C,H,W", help="export input blob NAME at this shape")
    export.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    export.set_defaults(handler=_cmd_export)


def _cmd_random_weights(args: argparse.Namespace, out: _Out) -> int:
    from bnfuse.errors import OutputError
    from bnfuse.net import save_weights
    from bnfuse.verification.randweights import random_weights

    target: str | Path = (args.weights if args.weights
                          else Path(args.prototxt).with_suffix(".caffemodel"))
    _check_outputs([("caffemodel", target)], [args.prototxt])
    if not args.weights and not args.force and os.path.lexists(target):
        # The default name is where the trained weights of this prototxt usually are.
        raise OutputError(
            f"{target}: exists, and random-weights would replace it with random weights; "
            f"name it with -w {target} to replace it, or pass --force", path=str(target))
    from bnfuse.net import load

    net = load(Path(args.prototxt), phase=args.phase)
    shapes = _shapes_of(net, args)
    if args.phase != "TEST":
        from bnfuse.deploy import to_deploy

        # Weights are matched by layer name: those of the deploy form are the file's.
        to_deploy(net, shapes)
    net = random_weights(net, seed=args.seed, input_shapes=shapes,
                         unmeasurable="unit" if args.fill_unmeasurable else "error",
                         max_memory=args.max_memory)
    save_weights(net, target)
    out.say(f"wrote {target}")
    return EXIT_OK


def _input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``--input-shape NAME=N,C,H,W``: a blob name and its positive extents."""
    name, sep, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"invalid input shape {text[:60]!r}: expected NAME=N,C,H,W with positive integers "
            "(e.g. data=1,3,224,224)")
    return name, shape


def _batch(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid batch {text[:40]!r}: expected a positive "
                                         "integer")
    return value


def _add_shape_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-shape", type=_input_shape, action="append", default=None,
                        metavar="NAME=N,C,H,W",
                        help="feed input blob NAME at this shape (repeatable); gives the shape "
                             "of a data layer's top that its prototxt does not state")
    parser.add_argument("--batch", type=_batch, default=None, metavar="N",
                        help="replace the batch size (axis 0) of every input by N")


def _add_verify_options(parser: argparse.ArgumentParser) -> None:
    from bnfuse.verification import BACKENDS

    parser.add_argument("--backend", choices=BACKENDS, default="numpy",
                        help="runtime that runs both nets (default: numpy, always available)")
    parser.add_argument("--inputs", metavar="FILE.npz",
                        help="input arrays by blob name (default: seeded random inputs)")
    parser.add_argument("--seed", type=_seed, default=0,
                        help="seed of the random inputs (an integer from 0 to 2**64 - 1)")
    parser.add_argument("--rtol", type=_tolerance, default=None,
                        help="max difference relative to each blob's max |value|")
    parser.add_argument("--atol", type=_tolerance, default=None, help="absolute tolerance")
    _add_max_memory(parser, "running both nets")
    _add_shape_options(parser)


def _seed(text: str) -> int:
    """``--seed``: a non-negative integer (argparse reports anything else as a usage error)."""
    from bnfuse._checks import MAX_SEED

    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"invalid seed {text[:40]!r}: expected an integer from 0 to 2**64 - 1")
    return value


def _tolerance(text: str) -> float:
    """``--rtol``/``--atol``: a finite number >= 0 (the library's own rule)."""
    from bnfuse._checks import require_optional_number
    from bnfuse._text import quote_user_text
    from bnfuse.errors import BnfuseError

    try:
        value = float(text)
        require_optional_number(value, "", "")
    except (ValueError, BnfuseError):
        raise argparse.ArgumentTypeError(
            f"invalid tolerance {quote_user_text(text, 40)}: expected a finite number >= 0"
        ) from None
    return value


def _memory_size(text: str) -> int:
    """``--max-memory``: bytes, or a number with K, M, G, T (e.g. 512M, 4G)."""
    from bnfuse.errors import BnfuseError
    from bnfuse.verification.budget import parse_size

    try:
        return parse_size(text)
    except BnfuseError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_max_memory(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--max-memory", type=_memory_size, default=None, metavar="SIZE",
                        help=f"refuse when {what} would need more memory than SIZE (bytes, or "
                             "with K, M, G, T: 512M, 4G; default: half the machine's memory)")


def _add_fold_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-forward", action="store_true",
                        help="do not fold BatchNorm forward into the next convolution")
    parser.add_argument("--no-merge", action="store_true",
                        help="leave unfoldable BatchNorm + Scale pairs as they are")
    parser.add_argument("--force-global-stats", action="store_true",
                        help="fold BatchNorms with use_global_stats: false using their "
                             "stored statistics (changes outputs)")


def _terminal_columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size`` finds it (COLUMNS, then the
    terminal, then 80), without importing shutil (and its compression modules) for it."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, given the width so that it does not import shutil for it."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _terminal_columns() - 2 if width is None else width)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bnfuse`` command.

    Example:
        >>> build_parser().parse_args(["inspect", "net.prototxt"]).command
        'inspect'
    """
    from bnfuse import __version__

    parser = argparse.ArgumentParser(
        prog="bnfuse", formatter_class=_HelpFormatter,
        description="Fold BatchNorm and Scale layers of Caffe models exactly, without Caffe.",
        epilog="Run 'bnfuse COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"bnfuse {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser = functools.partial(  # type: ignore[method-assign]
        commands.add_parser, formatter_class=_HelpFormatter)

    fold = commands.add_parser(
        "fold", help="fold BatchNorm/Scale layers and write the inference model",
        description="Fold BatchNorm, Scale and Bias layers into the layers around them and write "
                    "<name>_inference.prototxt / .caffemodel beside the inputs.")
    fold.add_argument("prototxt", help="the model definition (deploy or train/val .prototxt)")
    fold.add_argument("caffemodel", help="the trained weights (.caffemodel)")
    fold.add_argument("-o", "--output", metavar="OUT.prototxt", help="folded prototxt path")
    fold.add_argument("-w", "--weights", metavar="OUT.caffemodel", help="folded caffemodel path")
    fold.add_argument("--verify", action="store_true",
                      help="run both models and fail if the folded one's outputs differ")
    fold.add_argument("--dry-run", action="store_true", help="report what would be done only")
    fold.add_argument("--deploy", action="store_true",
                      help="write the deploy form of a train/val net: data layers become Input "
                           "layers, loss, Accuracy, Silence and TRAIN-only layers are removed")
    _add_phase(fold, "the deploy form keeps", " (needs --deploy)")
    fold.add_argument("--json", metavar="REPORT.json",
                      help="write the report as JSON to this file ('-': stdout, instead of the "
                           "table)")
    fold.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    _add_fold_options(fold)
    _add_verify_options(fold)
    fold.set_defaults(handler=_cmd_fold)

    binarize = commands.add_parser(
        "binarize", help="binary-weight layers to +1/-1 weights, alpha into the next Scale",
        description="Write the inference net of a binary-weight net in BVLC layers: each "
                    "binary layer's weights become exactly +1/-1 and its per-channel alpha "
                    "(with the fork's bias rule) is merged with the BatchNorm/Scale/Bias "
                    "chain after it into one Scale. See docs/binary.md.")
    binarize.add_argument("prototxt", help="the model definition")
    binarize.add_argument("caffemodel", help="the trained (latent full-precision) weights")
    binarize.add_argument("-o", "--output", metavar="OUT.prototxt", help="prototxt path")
    binarize.add_argument("-w", "--weights", metavar="OUT.caffemodel", help="caffemodel path")
    binarize.add_argument("--layers", nargs="+", metavar="NAME",
                          help="plain Convolution/InnerProduct layers that were trained as "
                               "binary (needs --convention)")
    binarize.add_argument("--convention", choices=("kohuthonza", "zzqiuzz"),
                          help="the sign and alpha rule of --layers and of BinaryConvolution "
                               "layers that do not say which fork wrote them")
    binarize.add_argument("--thresholds", metavar="OUT.npz",
                          help="write per-channel sign thresholds for Signum/BinActiv layers")
    binarize.add_argument("--verify", action="store_true",
                          help="check the result against the original run with the fork's "
                               "binary semantics; nothing is written if it differs")
    binarize.add_argument("--json", metavar="REPORT.json", help="write the report as JSON")
    binarize.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    _add_verify_options(binarize)
    binarize.set_defaults(handler=_cmd_binarize)

    inspect = commands.add_parser(
        "inspect", help="list layers, parameters and every fold opportunity or blocker",
        description="Show layer counts, parameter count and what 'bnfuse fold' would do to each "
                    "BatchNorm/Scale, and why. Writes nothing.")
    inspect.add_argument("prototxt", help="the model definition")
    inspect.add_argument("caffemodel", nargs="?", default=None,
                         help="the weights (optional: without them only structure is checked)")
    inspect.add_argument("--json", metavar="FILE",
                         help="write the result as JSON to this file ('-': stdout, instead of "
                              "the table)")
    inspect.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    _add_fold_options(inspect)
    _add_phase(inspect, "are inspected", "")
    inspect.set_defaults(handler=_cmd_inspect)

    verify = commands.add_parser(
        "verify", help="run two models on the same inputs and compare every blob",
        description="Compare model A with model B blob by blob; exit 1 when they differ.")
    verify.add_argument("a_prototxt", metavar="A.prototxt")
    verify.add_argument("a_caffemodel", metavar="A.caffemodel")
    verify.add_argument("b_prototxt", metavar="B.prototxt")
    verify.add_argument("b_caffemodel", metavar="B.caffemodel")
    verify.add_argument("--json", metavar="FILE",
                        help="write the comparison as JSON to this file ('-': stdout, instead "
                             "of the table)")
    verify.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    _add_verify_options(verify)
    verify.set_defaults(handler=_cmd_verify)

    rand = commands.add_parser(
        "random-weights", help="write realistic random weights for a prototxt",
        description="Fill every layer with He-scaled weights and BatchNorm statistics measured on "
                    "each layer's actual input, to try bnfuse on an architecture without weights.")
    rand.add_argument("prototxt", help="the model definition")
    rand.add_argument("-w", "--weights", metavar="OUT.caffemodel",
                      help="output path (default: the prototxt's name with .caffemodel, "
                           "which is never replaced without --force)")
    rand.add_argument("--force", action="store_true",
                      help="replace the default output even if it exists")
    rand.add_argument("--seed", type=_seed, default=0,
                      help="random seed (an integer from 0 to 2**64 - 1)")
    _add_max_memory(rand, "the measurement run")
    _add_shape_options(rand)
    _add_phase(rand, "get weights", ", measured in its deploy form")
    rand.add_argument("--fill-unmeasurable", action="store_true",
                      help="give BatchNorms behind a layer the executor cannot run mean 0, "
                           "variance 1 instead of failing")
    rand.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    rand.set_defaults(handler=_cmd_random_weights)
    _add_export_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bnfuse`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    Example:
        >>> main(["fold"])  # no model given: argparse prints the usage to stderr
        2
        >>> import bnfuse
        >>> model = [str(bnfuse.example_path(kind)) for kind in ("prototxt", "caffemodel")]
        >>> main(["verify", *model, *model, "--quiet"])  # a model against itself: passes
        0
    """
    import traceback

    from bnfuse.errors import BnfuseError, InternalError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse exits 0 for --help/--version and 2 for usage
        return int(stop.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    # JSON on stdout replaces the human-readable table there.
    out = _Out(getattr(args, "quiet", False) or getattr(args, "json", None) == "-")
    from bnfuse.io.guard import InputChanged, Interrupted, install_handlers, watch_inputs

    restore = install_handlers()
    try:
        with watch_inputs():
            return int(args.handler(args, out))
    except InternalError as exc:
        # bnfuse's own invariant failed: the traceback is what a bug report needs.
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        print(f"internal error, please report: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    except BnfuseError as exc:
        print(f"error: {cli_words(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except (RecursionError, AssertionError, AttributeError, IndexError, KeyError, TypeError,
            ValueError) as exc:
        # Anything else escaping the library is a bug of bnfuse's, reported as one.
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        print(f"internal error, please report: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    except Interrupted as exc:
        # The outputs being written were removed on the way here.
        print(f"error: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except InputChanged as exc:
        print(f"error: {exc}; bnfuse stopped before using the changed data", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted by SIGINT", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into a closed reader (e.g. `| head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    finally:
        restore()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
