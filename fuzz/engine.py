"""Deterministic mutators and the oracle that judges one fuzz input.

Input ``i`` of a run with seed ``s`` is made by ``random.Random(f"{s}:{i}")``,
so any input a run reports can be rebuilt from those two numbers (and the
seed list) without storing it.  A seeded generator is used instead of
hypothesis because it tries thousands of inputs per minute with no shrinking
overhead; the oracle is the same either way.

The oracle (:func:`run_input`) writes the prototxt and caffemodel to a folder,
then loads, folds and saves them, and optionally runs ``bnfuse inspect``.
Allowed outcomes are success or a :class:`bnfuse.BnfuseError` whose message
names one of the files involved.  Any other exception, a run over the time
limit, or a traced peak allocation over a bound proportional to the input size
is a finding.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import time
import traceback
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fuzz.corpus_seeds import Seed

# ---------------------------------------------------------------------------
# Protobuf wire tree: mutate structure, then re-serialize with correct lengths
# ---------------------------------------------------------------------------


@dataclass
class Node:
    """One wire field: ``children`` when the payload parsed as a message, else ``payload``."""

    number: int
    wire_type: int
    payload: bytes
    children: list[Node] | None = None


def _parse_tree(buf: bytes, depth: int = 0) -> list[Node] | None:
    """Parse ``buf`` as a message; None when it is not one (then it stays opaque bytes)."""
    from bnfuse.errors import CaffemodelError
    from bnfuse.io.wire import WIRETYPE_LENGTH_DELIMITED, iter_fields

    nodes: list[Node] = []
    try:
        for f in iter_fields(buf):
            payload = bytes(buf[f.value_start : f.value_end])
            node = Node(f.number, f.wire_type, payload)
            # Packed float arrays also parse as "fields" by accident; descending into
            # long payloads wastes time, so only headers and shapes are opened.
            if f.wire_type == WIRETYPE_LENGTH_DELIMITED and depth < 6 and len(payload) < 4096:
                node.children = _parse_tree(payload, depth + 1)
            nodes.append(node)
    except CaffemodelError:
        return None
    return nodes


def _serialize(nodes: list[Node]) -> bytes:
    from bnfuse.io.wire import encode_tag, encode_varint

    out = []
    for node in nodes:
        out.append(encode_tag(node.number, node.wire_type))
        body = node.payload if node.children is None else _serialize(node.children)
        if node.wire_type == 2:
            out.append(encode_varint(len(body)))
        out.append(body)
    return b"".join(out)


def _all_nodes(nodes: list[Node]) -> list[tuple[list[Node], int]]:
    """Every (sibling list, index) pair of the tree, so a mutator can edit in place."""
    found: list[tuple[list[Node], int]] = []
    stack = [nodes]
    while stack:
        siblings = stack.pop()
        for i, node in enumerate(siblings):
            found.append((siblings, i))
            if node.children is not None:
                stack.append(node.children)
    return found


def field_boundaries(buf: bytes) -> list[int]:
    """Offsets where a field, a length prefix or a payload starts or ends, at any depth."""
    from bnfuse.errors import CaffemodelError
    from bnfuse.io.wire import WIRETYPE_LENGTH_DELIMITED, iter_fields

    points: set[int] = set()
    stack = [(0, len(buf), 0)]
    while stack:
        start, end, depth = stack.pop()
        try:
            for f in iter_fields(buf, start, end):
                points.update((f.field_start, f.value_start, f.value_end))
                if (f.wire_type == WIRETYPE_LENGTH_DELIMITED and depth < 6
                        and f.value_end - f.value_start < 4096):
                    stack.append((f.value_start, f.value_end, depth + 1))
        except CaffemodelError:
            continue
    return sorted(points)


_EXTREME_VARINTS = [0, 1, 2, 3, 127, 128, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40,
                    2**62, 2**63 - 1, 2**63, 2**64 - 1]


def _random_bytes(rng: random.Random, n: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(n))


def _garbage_tree(rng: random.Random, depth: int = 0) -> list[Node]:
    """A random but well-formed message: nested garbage that passes the wire layer."""
    nodes = []
    for _ in range(rng.randint(0, 4)):
        number = rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 100, 2, rng.randint(1, 2**29 - 1)])
        wire = rng.choice([0, 1, 2, 5])
        if wire == 2 and depth < 4 and rng.random() < 0.6:
            nodes.append(Node(number, 2, b"", _garbage_tree(rng, depth + 1)))
        elif wire == 0:
            from bnfuse.io.wire import encode_varint

            nodes.append(Node(number, 0, encode_varint(rng.choice(_EXTREME_VARINTS))))
        else:
            size = {1: 8, 5: 4}.get(wire, rng.randint(0, 16))
            nodes.append(Node(number, wire, _random_bytes(rng, size)))
    return nodes


def _mutate_tree(rng: random.Random, data: bytes, heavy: bool = True) -> tuple[bytes, str]:
    """One structure-aware edit; lengths stay consistent so deeper code is reached."""
    from bnfuse.io.wire import encode_varint

    tree = _parse_tree(data)
    if not tree:
        return _mutate_raw(rng, data)
    places = _all_nodes(tree)
    siblings, i = rng.choice(places)
    node = siblings[i]
    op = rng.randrange(9)
    if op == 0:
        count = rng.choice([2, 3, 10, 1000, 5000 if heavy else 1000])
        siblings[i + 1 : i + 1] = [node] * (count - 1)
        return _serialize(tree), f"tree: repeat field {node.number} x{count}"
    if op == 1:
        del siblings[i]
        return _serialize(tree), f"tree: delete field {node.number}"
    if op == 2:
        value = rng.choice(_EXTREME_VARINTS)
        siblings[i] = Node(node.number, 0, encode_varint(value))
        return _serialize(tree), f"tree: field {node.number} := varint {value}"
    if op == 3:
        siblings[i] = Node(node.number, 2, b"", _garbage_tree(rng))
        return _serialize(tree), f"tree: field {node.number} := nested garbage"
    if op == 4:
        siblings[i] = Node(node.number, 2, _random_bytes(rng, rng.randint(0, 64)))
        return _serialize(tree), f"tree: field {node.number} := random bytes"
    if op == 5:
        wire = rng.choice([w for w in (0, 1, 2, 5) if w != node.wire_type])
        payload = node.payload if node.children is None else _serialize(node.children)
        fixed = {1: 8, 5: 4}.get(wire)
        if fixed is not None:
            payload = (payload + bytes(8))[:fixed]
        elif wire == 0:
            payload = encode_varint(int.from_bytes(payload[:8], "little"))
        siblings[i] = Node(node.number, wire, payload)
        return _serialize(tree), f"tree: field {node.number} wire type {node.wire_type}->{wire}"
    if op == 6 and node.children is None and node.wire_type == 2 and node.payload:
        cut = rng.randrange(len(node.payload))
        siblings[i] = Node(node.number, 2, node.payload[:cut])
        return _serialize(tree), f"tree: field {node.number} payload cut to {cut}"
    if op == 7 and len(siblings) > 1:
        j = rng.randrange(len(siblings))
        siblings[i], siblings[j] = siblings[j], siblings[i]
        return _serialize(tree), f"tree: swap fields {i} and {j}"
    other_siblings, k = rng.choice(places)
    other = other_siblings[k]
    # A frozen copy: inserting the node itself could put it inside its own subtree.
    frozen = other.payload if other.children is None else _serialize(other.children)
    siblings.insert(i, Node(other.number, other.wire_type, frozen))
    return _serialize(tree), "tree: copy a field elsewhere"


def _length_fields(data: bytes) -> list[Any]:
    """Length-delimited fields at any depth (up to 2,000), located with bnfuse.io.wire."""
    from bnfuse.errors import CaffemodelError
    from bnfuse.io.wire import iter_fields

    spans = []
    stack = [(0, len(data), 0)]
    while stack and len(spans) < 2000:
        start, end, depth = stack.pop()
        with contextlib.suppress(CaffemodelError):
            for f in iter_fields(data, start, end):
                if f.wire_type == 2:
                    spans.append(f)
                    # Small payloads are headers and shapes; big ones are weight arrays.
                    if depth < 5 and f.value_end - f.value_start < 4096:
                        stack.append((f.value_start, f.value_end, depth + 1))
    return spans


def _mutate_raw(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Byte-level edits: bit flips, truncation at field boundaries, huge length claims."""
    from bnfuse.io.wire import encode_tag, encode_varint, read_varint

    buf = bytearray(data)
    op = rng.randrange(8)
    if op == 7:
        # Special float values inside weight arrays: NaN, signalling NaN, inf, huge, tiny.
        arrays = [f for f in _length_fields(data) if f.value_end - f.value_start >= 8
                  and (f.value_end - f.value_start) % 4 == 0]
        if arrays:
            f = rng.choice(arrays)
            at = f.value_start + 4 * rng.randrange((f.value_end - f.value_start) // 4)
            value = rng.choice([0x7FC00000, 0x7F800001, 0x7F800000, 0xFF800000, 0x7F7FFFFF,
                                0x00000001, 0x80000000, 0x00000000])
            buf[at : at + 4] = value.to_bytes(4, "little")
            return bytes(buf), f"raw: float at {at} := 0x{value:08x}"
    if op == 0 and buf:
        flips = rng.choice([1, 1, 2, 4, 16])
        for _ in range(flips):
            pos = rng.randrange(len(buf))
            buf[pos] ^= 1 << rng.randrange(8)
        return bytes(buf), f"raw: {flips} bit flips"
    if op == 1:
        points = field_boundaries(data) or [0]
        cut = rng.choice(points)
        cut = max(0, min(len(buf), cut + rng.choice([0, 0, 0, -1, 1])))
        return bytes(buf[:cut]), f"raw: truncate at {cut}"
    if op in (2, 3):
        # A length prefix claiming far more than the file: at top level or nested.
        spans = _length_fields(data)
        if spans:
            f = rng.choice(spans)
            _, tag_end = read_varint(data, f.field_start)
            claim = rng.choice([2**40, 2**31, 2**63, 2**64 - 1, f.value_end - f.value_start + 1,
                                len(data) * 2])
            new = data[:tag_end] + encode_varint(claim) + data[f.value_start:]
            return new, f"raw: length at {tag_end} claims {claim}"
    if op == 4 and buf:
        pos = rng.randrange(len(buf) + 1)
        chunk = rng.choice([
            encode_tag(rng.randint(1, 200), rng.randrange(8)),
            encode_tag(100, 2) + encode_varint(2**40),
            encode_tag(7, 2) + encode_varint(2**40),
            _random_bytes(rng, rng.randint(1, 32)),
        ])
        return bytes(buf[:pos]) + chunk + bytes(buf[pos:]), f"raw: insert {len(chunk)} at {pos}"
    if op == 5 and len(buf) > 2:
        a = rng.randrange(len(buf))
        b = min(len(buf), a + rng.randint(1, 64))
        return bytes(buf[:a] + buf[b:]), f"raw: delete {a}:{b}"
    if buf:
        pos = rng.randrange(len(buf))
        buf[pos] = rng.choice([0x00, 0xFF, 0x80, 0x7F, rng.getrandbits(8)])
        return bytes(buf), f"raw: set byte {pos}"
    return _random_bytes(rng, rng.randint(1, 64)), "raw: random bytes"


def mutate_caffemodel(rng: random.Random, data: bytes, heavy: bool = True) -> tuple[bytes, str]:
    """A mutated caffemodel and a one-line description of the mutation(s).

    ``heavy=False`` caps repeat counts so the bounded test keeps its pace.
    """
    steps = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if rng.random() < 0.5:
            data, what = _mutate_tree(rng, data, heavy)
        else:
            data, what = _mutate_raw(rng, data)
        steps.append(what)
    return data, "; ".join(steps)


# ---------------------------------------------------------------------------
# Prototxt mutators
# ---------------------------------------------------------------------------

_NUMBER_LITERALS = [b"1e999", b"-1e999", b"99999999999999999999999999999", b"-9223372036854775809",
                    b"18446744073709551616", b"4294967296", b"2147483648", b"-1", b"0", b"-0",
                    b"nan", b"NaN", b"inf", b"-inf", b"infinity", b"-Infinity", b"1e-999",
                    b"0x7fffffffffffffff", b"0xFFFFFFFFFFFFFFFFFF", b"0777", b"1.5", b"1e5f",
                    b"1.", b".5", b"--1", b"1e", b"0x"]
_WRONG_VALUES = [b'"ten"', b"{ }", b"{ a: 1 }", b"TRUE", b"true", b"MAX", b"3.5", b"'x'",
                 b'"\\xff\\u0000"', b"[1, 2]", b"[]", b'"unterminated', b"<>", b"{"]
_LAYER_TYPES = [b"Convolution", b"Deconvolution", b"BatchNorm", b"Scale", b"Bias",
                b"InnerProduct", b"BN", b"Python", b"Input", b"Eltwise", b"Concat", b"Slice",
                b"Split", b"ReLU", b"PReLU", b"Pooling", b"Crop", b"Reshape", b"Flatten",
                b"DepthwiseConvolution", b"Data", b"Softmax", b"", b"\\000"]
_FIELD_NAMES = [b"name", b"type", b"bottom", b"top", b"num_output", b"kernel_size", b"pad",
                b"stride", b"group", b"bias_term", b"eps", b"use_global_stats", b"axis",
                b"num_axes", b"dim", b"phase", b"include", b"exclude", b"input", b"input_dim",
                b"layer", b"layers", b"param", b"lr_mult", b"blobs", b"dilation", b"transpose",
                b"batch_norm_param", b"scale_param", b"convolution_param", b"bn_param",
                b"[caffe.ext]", b"python_param"]
_BAD_UTF8 = [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\x80"]


def _token_spans(text: bytes) -> list[tuple[int, int]]:
    """Rough token spans (words, numbers, strings, punctuation) for token-level edits."""
    import re

    return [m.span() for m in re.finditer(rb'"(?:[^"\\\n]|\\.)*"|[\w.+-]+|[{}:<>\[\],;#]', text)]


def mutate_prototxt(rng: random.Random, text: bytes, heavy: bool = True) -> tuple[bytes, str]:
    """A mutated prototxt and a one-line description of the mutation(s).

    ``heavy=False`` caps nesting depth and repeat counts (the parser's limit is 100,
    so 1,000 levels still cross it).
    """
    steps = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        text, what = _mutate_text_once(rng, text, heavy)
        steps.append(what)
    return text, "; ".join(steps)


def _mutate_text_once(rng: random.Random, text: bytes, heavy: bool) -> tuple[bytes, str]:
    import re

    op = rng.randrange(12)
    spans = _token_spans(text) if op in (9, 10) else []
    if op == 0:
        braces = [i for i, c in enumerate(text) if c in b"{}"]
        if braces:
            pos = rng.choice(braces)
            return text[:pos] + text[pos + 1 :], f"text: delete brace at {pos}"
        return text + b"}", "text: add brace"
    if op == 1:
        depth = rng.choice([50, 99, 100, 101, 1000, 100000 if heavy else 1000])
        field = rng.choice([b"a", b"convolution_param", b"layer", b"shape", b"param"])
        pos = rng.choice([m.end() for m in re.finditer(rb"\{", text)] or [len(text)])
        body = (field + b" { ") * depth + (b"} " * depth if rng.random() < 0.8 else b"")
        return text[:pos] + body + text[pos:], f"text: nest {field.decode()} {depth} deep"
    if op == 2:
        pos = rng.randrange(len(text) + 1)
        junk = rng.choice([_random_bytes(rng, rng.randint(1, 8)), b"\x00", b"\x1b[31m",
                           b"\r", b"\x0c", b"#", b"\\", b'"', b"'", b";", b",", b"<", b">",
                           b"[", b"]", b"\xef\xbb\xbf"])
        return text[:pos] + junk + text[pos:], f"text: insert {junk!r} at {pos}"
    if op == 3:
        pos = rng.randrange(len(text) + 1)
        bad = rng.choice(_BAD_UTF8)
        return text[:pos] + bad + text[pos:], f"text: invalid UTF-8 {bad!r} at {pos}"
    numbers = [m.span() for m in re.finditer(rb"(?<=:)\s*-?[0-9][\w.+-]*", text)]
    if op in (4, 5) and numbers:
        a, b = rng.choice(numbers)
        literal = rng.choice(_NUMBER_LITERALS)
        return text[:a] + b" " + literal + text[b:], f"text: number -> {literal.decode()}"
    scalars = [m.span() for m in re.finditer(rb"\b\w+\s*:\s*(?:\"[^\"\n]*\"|[\w.+-]+)", text)]
    if op == 6 and scalars:
        a, b = rng.choice(scalars)
        count = rng.choice([2, 2, 3, 1000 if heavy else 100])
        return text[:b] + (b" " + text[a:b]) * (count - 1) + text[b:], (
            f"text: duplicate {text[a:b][:30]!r} x{count}")
    values = [m.span(1) for m in re.finditer(rb"\b\w+\s*:\s*(\"[^\"\n]*\"|[\w.+-]+)", text)]
    if op == 7 and values:
        a, b = rng.choice(values)
        value = rng.choice(_WRONG_VALUES + _NUMBER_LITERALS[:6])
        return text[:a] + value + text[b:], f"text: value {text[a:b][:20]!r} -> {value!r}"
    types = [m.span(1) for m in re.finditer(rb'\btype\s*:\s*"([^"\n]*)"', text)]
    if op == 8 and types:
        a, b = rng.choice(types)
        kind = rng.choice(_LAYER_TYPES)
        return text[:a] + kind + text[b:], f"text: type -> {kind.decode()}"
    if op == 9 and spans:
        a, b = rng.choice(spans)
        name = rng.choice(_FIELD_NAMES)
        return text[:a] + name + text[b:], f"text: token -> {name.decode()}"
    if op == 10 and spans:
        a, b = rng.choice(spans)
        if rng.random() < 0.5:
            return text[:a] + text[b:], f"text: delete token {text[a:b][:20]!r}"
        c, d = rng.choice(spans)
        return text[:a] + text[c:d] + text[a:], f"text: copy token {text[c:d][:20]!r}"
    if text:
        cut = rng.randrange(len(text))
        return text[:cut], f"text: truncate at {cut}"
    return b"layer {", "text: replace"


# ---------------------------------------------------------------------------
# Generating inputs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FuzzInput:
    """One generated input: which seed, how it was mutated, the bytes."""

    index: int
    seed_name: str
    description: str
    prototxt: bytes
    caffemodel: bytes | None


def generate(seeds: list[Seed], run_seed: int, index: int, *, heavy: bool = True) -> FuzzInput:
    """Input ``index`` of run ``run_seed``: deterministic, so a finding can be rebuilt."""
    rng = random.Random(f"{run_seed}:{index}")
    seed = rng.choice(seeds)
    prototxt, caffemodel = seed.prototxt, seed.caffemodel
    target = rng.random()
    if caffemodel is not None and target < 0.5:
        caffemodel, what = mutate_caffemodel(rng, caffemodel, heavy)
    elif target < 0.9 or caffemodel is None:
        prototxt, what = mutate_prototxt(rng, prototxt, heavy)
        if caffemodel is not None and rng.random() < 0.3:
            caffemodel = None  # structure-only paths (inspect/fold without weights)
    else:
        # Weights of another seed: every mismatch path of attaching weights.
        other = rng.choice([s for s in seeds if s.caffemodel is not None] or [seed])
        caffemodel, what = other.caffemodel, f"weights of {other.name}"
        if rng.random() < 0.5 and caffemodel is not None:
            caffemodel, more = mutate_caffemodel(rng, caffemodel, heavy)
            what += "; " + more
    return FuzzInput(index, seed.name, what, prototxt, caffemodel)


# ---------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------


class _Timeout(BaseException):
    """Raised by the SIGALRM handler; a BaseException so bnfuse cannot swallow it."""


@dataclass(frozen=True)
class Outcome:
    """What happened: ``kind`` is ok, error, crash, timeout or memory."""

    kind: str
    detail: str = ""
    seconds: float = 0.0
    peak_bytes: int = 0

    @property
    def is_finding(self) -> bool:
        return self.kind in ("crash", "timeout", "memory")


@contextlib.contextmanager
def deadline(seconds: float,
               error: Callable[[str], BaseException] = _Timeout) -> Iterator[None]:
    """Raise ``error("over N s")`` from SIGALRM when the block runs longer than ``seconds``.

    The default is a BaseException, so bnfuse cannot swallow it; the hostile scenarios
    give their own finding class.
    """
    def on_alarm(signum: int, frame: object) -> None:
        raise error(f"over {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _steps(prototxt: Path, caffemodel: Path | None, out: Path,
           cli: bool) -> list[tuple[str, Callable[[], object]]]:
    import bnfuse
    from bnfuse.cli import main

    loaded: list[bnfuse.Net] = []

    def load() -> None:
        loaded.append(bnfuse.load(prototxt, caffemodel))

    def save() -> None:
        bnfuse.save(loaded[0], out / "saved.prototxt",
                    None if caffemodel is None else out / "saved.caffemodel")

    def fold_save() -> None:
        # fold(paths) is load + fold_net: folding the already loaded (and saved) net
        # covers the same code with one parse instead of two.
        result = bnfuse.fold_net(loaded[0])
        result.save(out / "folded.prototxt",
                    None if caffemodel is None else out / "folded.caffemodel")

    def inspect() -> None:
        sink = io.StringIO()
        args = ["inspect", str(prototxt)] + ([] if caffemodel is None else [str(caffemodel)])
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            code = main(args)
        if code not in (0, 1):
            raise AssertionError(f"bnfuse inspect exited {code}: {sink.getvalue()[-300:]}")
        if code == 1 and not sink.getvalue().rstrip().splitlines()[-1].startswith("error: "):
            raise AssertionError(f"exit 1 without an error line: {sink.getvalue()[-300:]}")

    def verify() -> None:
        # The original against its fold, on a budget: a mutated input shape must end in
        # a refusal naming the figure, never in an allocation attempt.
        if caffemodel is not None:
            original = bnfuse.load(prototxt, caffemodel)
            bnfuse.verify(original, bnfuse.fold_net(bnfuse.load(prototxt, caffemodel)).net,
                          fallback="local", max_memory=RUN_BUDGET)

    def random_weights() -> None:
        from bnfuse.verification.randweights import random_weights as draw

        draw(prototxt, seed=0, max_memory=RUN_BUDGET)

    steps: list[tuple[str, Callable[[], object]]] = [("load", load), ("save", save),
                                                     ("fold+save", fold_save)]
    if cli:
        steps += [("cli inspect", inspect), ("verify", verify),
                  ("random weights", random_weights)]
    return steps


#: Memory budget of the runs of a net in :func:`_steps` (verify, random weights).
RUN_BUDGET = 64 << 20
#: The steps that run the net; their clean errors do not make the input's outcome "error".
RUN_STEPS = ("verify", "random weights")


def memory_bound(input_bytes: int) -> int:
    """Peak traced allocation allowed for an input of this size (fold keeps float64 copies)."""
    return (48 << 20) + 40 * input_bytes


def run_input(item: FuzzInput, workdir: Path, *, time_limit: float = 10.0,
              trace_memory: bool = False, cli: bool = False) -> Outcome:
    """Run load, fold, save (and optionally ``bnfuse inspect``) on one input; judge it."""
    from bnfuse.errors import BnfuseError

    prototxt = workdir / "model.prototxt"
    caffemodel: Path | None = None
    # Unlink first: truncating a file with unwritten pages makes ext4 flush it (slow).
    for old in (prototxt, workdir / "model.caffemodel"):
        old.unlink(missing_ok=True)
    prototxt.write_bytes(item.prototxt)
    if item.caffemodel is not None:
        caffemodel = workdir / "model.caffemodel"
        caffemodel.write_bytes(item.caffemodel)
    out = workdir / "out"
    out.mkdir(exist_ok=True)
    names = [str(prototxt), str(out)] + ([] if caffemodel is None else [str(caffemodel)])
    size = len(item.prototxt) + len(item.caffemodel or b"")
    # Linear work is allowed: 10 us per input byte on top of the base (4x under tracemalloc,
    # which slows Python's allocations); only superlinear time or a hang exceeds it.
    limit = time_limit + size * 1e-5 * (4 if trace_memory else 1)
    start = time.perf_counter()
    errors = []
    if trace_memory:
        tracemalloc.start()
    try:
        for label, step in _steps(prototxt, caffemodel, out, cli):
            try:
                # A warning is a finding too: the library must not print to the user's
                # stderr (only cli.py talks), and the test suite turns warnings into errors.
                with deadline(limit), warnings.catch_warnings():
                    warnings.simplefilter("error")
                    step()
            except BnfuseError as exc:
                message = str(exc)
                if "\n" in message or not any(name in message for name in names):
                    return Outcome("crash", f"{label}: {type(exc).__name__} does not name the "
                                   f"file in one line: {message[:300]!r}",
                                   time.perf_counter() - start)
                # The runs of the net judge only how they fail: an input may well load
                # and fold but not run (an unsupported layer, over the budget).
                if label not in RUN_STEPS:
                    errors.append(type(exc).__name__)
                if label == "load":
                    break  # fold and inspect would only load it again and fail the same way
            except _Timeout:
                return Outcome("timeout", f"{label}: over {limit:.1f} s for {size} bytes",
                               time.perf_counter() - start)
            except RecursionError:
                return Outcome("crash", f"{label}: RecursionError", time.perf_counter() - start)
            except Exception as exc:  # the finding itself: anything outside BnfuseError
                tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
                return Outcome("crash", f"{label}: {type(exc).__name__}: {exc}"[:400] + "\n"
                               + "".join(tb[-6:]), time.perf_counter() - start)
        peak = 0
        if trace_memory:
            peak = tracemalloc.get_traced_memory()[1]
            if peak > memory_bound(size) + (RUN_BUDGET if cli else 0):
                return Outcome("memory", f"peak {peak} bytes for a {size}-byte input",
                               time.perf_counter() - start, peak)
        kind = "error" if errors else "ok"
        return Outcome(kind, ",".join(errors), time.perf_counter() - start, peak)
    finally:
        if trace_memory:
            tracemalloc.stop()
        for leftover in out.iterdir():
            leftover.unlink()


def reproduce_seconds_budget() -> float:
    """Per-input time limit; generous on a loaded CI machine, overridable by environment."""
    return float(os.environ.get("BNFUSE_FUZZ_TIME_LIMIT", "10"))


def run_batch(seeds: list[Seed], run_seed: int, start: int, stride: int, count: int, *,
              heavy: bool, workdir: Path, time_limit: float = 10.0) -> dict[str, object]:
    """Run inputs ``start, start+stride, ...`` (``count`` of them); summarise the outcomes.

    Used by the bounded test (one batch per core) through ``python -m fuzz.run --batch``.
    """
    kinds: dict[str, int] = {}
    errors: dict[str, int] = {}
    findings: list[dict[str, object]] = []
    began = time.perf_counter()
    for index in range(start, start + stride * count, stride):
        item = generate(seeds, run_seed, index, heavy=heavy)
        outcome = run_input(item, workdir, time_limit=time_limit, cli=index % 50 == 0)
        kinds[outcome.kind] = kinds.get(outcome.kind, 0) + 1
        for name in filter(None, outcome.detail.split(",")) if outcome.kind == "error" else ():
            errors[name] = errors.get(name, 0) + 1
        if outcome.is_finding:
            findings.append({"index": index, "seed": item.seed_name,
                             "mutation": item.description, "kind": outcome.kind,
                             "detail": outcome.detail})
    return {"inputs": count, "seconds": time.perf_counter() - began, "outcomes": kinds,
            "errors": errors, "findings": findings}
