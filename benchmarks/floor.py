"""The floor of a fold: only the work the output's bytes need, in a minimal numpy script.

Two steps, so that the timed one does nothing but that work:

``python benchmarks/floor.py plan A.prototxt A.caffemodel PLAN_DIR``
    (untimed, uses bnfuse) folds the net in memory and writes what the caffemodel
    bnfuse would write is made of, as a list of operations in output order: copy a
    byte range of the source, write literal bytes (headers, biases, anything small),
    or multiply a source weight by its per-channel float64 scales, rounding once to
    float32. Also written: the scales (``scales.npy``) and the literal bytes
    (``literal.bin``).

``python benchmarks/floor.py run A.caffemodel PLAN_DIR OUT.caffemodel``
    (timed) memory-maps the source, runs those operations with one reused float32
    buffer (``copy_file_range`` for copies, ``np.multiply(w, s64, out=buffer)`` for
    weights) and fsyncs the output. It imports numpy and nothing of bnfuse.

The benchmark checks that the floor's output is byte for byte the caffemodel bnfuse
wrote, so the floor really did the whole job -- and, since it applies the
float64-once rule by itself, that bnfuse's output follows that rule.
"""

from __future__ import annotations

import json
import mmap
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

#: Operations: ["copy", source offset, length], ["lit", offset in literal.bin, length],
#: ["mul", source offset, channels, values per channel, offset in scales.npy].
Op = list[Any]


def make_plan(prototxt: str, caffemodel: str, folder: Path) -> dict[str, Any]:
    """Fold ``prototxt``/``caffemodel`` in memory and write the floor's operations."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import bnfuse
    from bnfuse.folding.planner import FOLD_INTO_PRODUCER
    from bnfuse.io.caffemodel._writer import _ArrayPiece, _CopyPiece
    from bnfuse.io.pairs import pair_id_for
    from bnfuse.net import _weights_plan

    original = bnfuse.load(prototxt, caffemodel)
    result = bnfuse.fold(prototxt, caffemodel)
    net = result.net
    assert original.weights is not None and net.weights is not None
    # Which new arrays are "a source weight times per-channel scales" (axis 0).
    multiplied: dict[int, tuple[int, int, int, np.ndarray]] = {}
    for action in result.report.actions:
        if action.kind != FOLD_INTO_PRODUCER or action.affine is None:
            continue
        producer = action.target_layers[0]
        transposed = producer.type == "InnerProduct" and \
            producer.param.inner_product_param.transpose
        if producer.type not in ("Convolution", "InnerProduct") or transposed:
            continue
        old = original.layer(producer.name).blobs[0]
        offset = original.weights.locate(old)
        new = producer.blobs[0]
        if offset is None or old.dtype != np.float32 or new.dtype != np.float32:
            continue
        channels = int(action.affine.channels)
        multiplied[id(new)] = (offset, channels, int(new.size) // channels,
                               np.asarray(action.affine.scale, np.float64))
    plan = _weights_plan(net, "floor", pair_id_for(net.document.render()))
    ops: list[Op] = []
    literal = bytearray()
    scales: list[np.ndarray] = []
    scale_at = 0

    def lit(data: bytes) -> None:
        if ops and ops[-1][0] == "lit" and ops[-1][1] + ops[-1][2] == len(literal):
            ops[-1][2] += len(data)
        else:
            ops.append(["lit", len(literal), len(data)])
        literal.extend(data)

    def copy(start: int, size: int) -> None:
        if ops and ops[-1][0] == "copy" and ops[-1][1] + ops[-1][2] == start:
            ops[-1][2] += size
        else:
            ops.append(["copy", start, size])

    for piece in plan.pieces:
        if isinstance(piece, bytes):
            lit(piece)
        elif isinstance(piece, _CopyPiece):
            assert piece.file is net.weights
            copy(piece.start, piece.size)
        else:
            assert isinstance(piece, _ArrayPiece)
            found = multiplied.get(id(piece.array))
            where = net.weights.locate(piece.array) if piece.array.dtype == piece.dtype \
                else None
            if found is not None and piece.dtype == np.dtype("<f4"):
                offset, channels, inner, scale = found
                ops.append(["mul", offset, channels, inner, scale_at])
                scales.append(scale)
                scale_at += scale.size
            elif where is not None:
                copy(where, piece.size)
            else:
                lit(np.ascontiguousarray(piece.array, dtype=piece.dtype).tobytes())
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "scales.npy", np.concatenate(scales) if scales else np.zeros(0))
    (folder / "literal.bin").write_bytes(bytes(literal))
    summary = {"ops": ops, "size": plan.size,
               "multiplied_bytes": sum(op[2] * op[3] * 4 for op in ops if op[0] == "mul"),
               "copied_bytes": sum(op[2] for op in ops if op[0] == "copy"),
               "literal_bytes": len(literal)}
    (folder / "plan.json").write_text(json.dumps(summary))
    return summary


def run(source: str, folder: Path, dest: str) -> None:
    """Write ``dest`` from ``source`` by the plan in ``folder``; fsync it."""
    plan = json.loads((folder / "plan.json").read_text())
    scales = np.load(folder / "scales.npy")
    literal = memoryview((folder / "literal.bin").read_bytes())
    src = os.open(source, os.O_RDONLY)
    mapped = mmap.mmap(src, 0, access=mmap.ACCESS_READ)
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    largest = max((op[2] * op[3] for op in plan["ops"] if op[0] == "mul"), default=0)
    buffer = np.empty(largest, np.float32)
    for op in plan["ops"]:
        if op[0] == "copy":
            start, left = op[1], op[2]
            while left:
                done = os.copy_file_range(src, out, left, start)
                start, left = start + done, left - done
        elif op[0] == "lit":
            view = literal[op[1] : op[1] + op[2]]
            while view:
                view = view[os.write(out, view):]
        else:
            _, offset, channels, inner, at = op
            weight = np.frombuffer(mapped, "<f4", channels * inner, offset).reshape(channels, inner)
            result = buffer[: channels * inner].reshape(channels, inner)
            np.multiply(weight, scales[at : at + channels, None], out=result, casting="same_kind")
            view = memoryview(result.data).cast("B")
            while view:
                view = view[os.write(out, view):]
    os.fsync(out)
    os.close(out)
    os.close(src)  # the map goes with the process: arrays still view it


def main(argv: list[str]) -> int:
    """``plan PROTOTXT CAFFEMODEL DIR`` or ``run CAFFEMODEL DIR OUT``."""
    if argv[:1] == ["plan"] and len(argv) == 4:
        summary = make_plan(argv[1], argv[2], Path(argv[3]))
        print(json.dumps({k: v for k, v in summary.items() if k != "ops"}))
        return 0
    if argv[:1] == ["run"] and len(argv) == 4:
        run(argv[1], Path(argv[2]), argv[3])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
