"""Bounded work on any input: memory budgets, absurd geometry, API argument checks, messages.

Each case ended before in an OOM kill, a numpy traceback, an ``AttributeError`` from deep
inside, or a message that echoed user text raw.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import bnfuse
from bnfuse._text import escape_user_text, quote_user_text
from bnfuse.cli import main
from bnfuse.errors import BnfuseError, UnsupportedLayerError
from bnfuse.layertypes.shapes import infer_shapes
from bnfuse.verification import budget
from bnfuse.verification.budget import (
    MemoryBudgetError,
    estimate_random_weights,
    estimate_verify,
    format_size,
    parse_size,
)
from bnfuse.verification.executor import forward
from bnfuse.verification.randweights import random_weights
from tests.modelkit import caffemodel_bytes

ROOT = Path(__file__).resolve().parent.parent

#: A few hundred bytes, as in the issue: a 1x3x12000x12000 input and one 3x3 convolution chain.
HUGE = b"""layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 12000 dim: 12000 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
"""


def _huge_model(tmp_path: Path) -> tuple[Path, Path]:
    prototxt, caffemodel = tmp_path / "huge.prototxt", tmp_path / "huge.caffemodel"
    prototxt.write_bytes(HUGE)
    caffemodel.write_bytes(caffemodel_bytes(
        {"conv": [np.full((3, 3, 3, 3), 0.1, np.float32), np.zeros(3, np.float32)],
         "bn": [np.zeros(3, np.float32), np.ones(3, np.float32), np.ones(1, np.float32)]},
        {"conv": "Convolution", "bn": "BatchNorm"}))
    return prototxt, caffemodel


def _peak_of(call: Callable[[], object]) -> tuple[BaseException, int]:
    """The exception ``call`` raises and the peak of memory traced while it ran."""
    tracemalloc.start()
    try:
        call()
    except BaseException as exc:  # returned to the test
        _, peak = tracemalloc.get_traced_memory()
        return exc, peak
    finally:
        tracemalloc.stop()
    raise AssertionError("expected an exception")


# --------------------------------------------------------------------------- memory budget


def test_verify_refuses_the_12000x12000_input_before_allocating(tmp_path: Path) -> None:
    assert len(HUGE) < 400
    paths = _huge_model(tmp_path)
    exc, peak = _peak_of(lambda: bnfuse.verify(paths, paths, max_memory=2**30))
    assert isinstance(exc, MemoryBudgetError) and isinstance(exc, BnfuseError)
    assert peak < 16 * 2**20  # not one of the 1.7 GB blobs was allocated
    message = str(exc)
    assert message.startswith(f"verifying {paths[0]} against {paths[0]} needs about 27.4 GiB "
                              "(29,376,000,000 bytes) of memory at its peak (comparing the blobs)")
    assert "more than the budget of 1.0 GiB (1,073,741,824 bytes)" in message
    assert "the largest blob is 'data' with shape (1, 3, 12000, 12000) (1.6 GiB)" in message
    assert "--max-memory" in message


def test_fold_verify_refuses_under_an_address_space_limit(tmp_path: Path) -> None:
    """The CLI in a child limited to 1.5 GB of address space: the default budget follows
    ``ulimit -v``, and the refusal comes before any large allocation (which would fail)."""
    prototxt, caffemodel = _huge_model(tmp_path)
    limit = 1536 * 2**20

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "bnfuse", "fold", str(prototxt), str(caffemodel), "--verify",
         "-o", str(tmp_path / "f.prototxt"), "-w", str(tmp_path / "f.caffemodel"), "-q"],
        env=env, capture_output=True, text=True, preexec_fn=cap, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"error: verifying {prototxt} against {tmp_path / 'f.prototxt'} "
                                  "needs about 27.4 GiB")
    assert f"more than the budget of {format_size(limit // 2)}" in done.stderr
    assert "'data' with shape (1, 3, 12000, 12000)" in done.stderr


def test_cli_max_memory_flag_on_verify_fold_and_random_weights(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prototxt, caffemodel = _huge_model(tmp_path)
    out = ["-o", str(tmp_path / "f.prototxt"), "-w", str(tmp_path / "f.caffemodel")]
    for argv in (["verify", str(prototxt), str(caffemodel), str(prototxt), str(caffemodel)],
                 ["fold", str(prototxt), str(caffemodel), "--verify", *out],
                 ["random-weights", str(prototxt), "-w", str(tmp_path / "r.caffemodel")]):
        assert main([*argv, "-q", "--max-memory", "512M"]) == 1
        err = capsys.readouterr().err
        assert "more than the budget of 512.0 MiB (536,870,912 bytes)" in err, argv
        assert err.count("\n") == 1
    assert not (tmp_path / "r.caffemodel").exists()
    for bad in ("-1", "0", "lots", "12X"):
        assert main(["verify", *[str(prototxt), str(caffemodel)] * 2, "--max-memory", bad]) == 2
        assert "invalid memory size" in capsys.readouterr().err


def test_random_weights_refuses_over_the_budget() -> None:
    exc, peak = _peak_of(lambda: random_weights(HUGE, max_memory=4 * 2**30))
    assert isinstance(exc, MemoryBudgetError)
    assert peak < 16 * 2**20
    assert str(exc).startswith("making random weights (the measurement run and the weights) "
                               "needs about 20.9 GiB")
    assert "at its peak (layer 'conv' of the net)" in str(exc)


def test_default_budget_is_half_the_physical_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 1_000_000}  # a 4.1 GB machine
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    monkeypatch.setattr(resource, "getrlimit",
                        lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert budget.default_max_memory() == 2_048_000_000
    with pytest.raises(MemoryBudgetError, match=r"more than the budget of 1\.9 GiB "
                                                r"\(2,048,000,000 bytes\)"):
        bnfuse.verify(bnfuse.load(HUGE), bnfuse.load(HUGE))

    def unavailable(name: str) -> int:
        raise ValueError(name)

    monkeypatch.setattr(os, "sysconf", unavailable)
    assert budget.default_max_memory() == budget.FALLBACK_MAX_MEMORY == 4 * 2**30


def test_the_estimate_bounds_what_verify_and_random_weights_really_hold() -> None:
    """Measured with tracemalloc on a small net with every kind of working array: the
    estimate is above the real peak, and not far above it."""
    text = b"""
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 8 dim: 32 dim: 32 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "c1" top: "c1" }
layer { name: "p1" type: "Pooling" bottom: "c1" top: "p1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "lrn" type: "LRN" bottom: "p1" top: "lrn" }
layer { name: "d" type: "Deconvolution" bottom: "lrn" top: "d"
        convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "d" top: "ip"
        inner_product_param { num_output: 10 } }
"""
    original = random_weights(text, seed=0)
    folded = bnfuse.fold_net(random_weights(text, seed=0)).net
    for dtype in (np.float32, np.float64):
        estimate = estimate_verify(original, folded, dtype=dtype).peak_bytes
        tracemalloc.start()
        bnfuse.verify(original, folded, dtype=dtype)
        _, measured = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert measured <= estimate <= 2 * measured, (np.dtype(dtype).name, estimate, measured)
    estimate = estimate_random_weights(bnfuse.load(text)).peak_bytes
    tracemalloc.start()
    random_weights(text, seed=0)
    _, measured = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert measured <= estimate <= 2 * measured, (estimate, measured)


def test_the_estimate_is_linear_in_the_layer_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """n and 8n layers: the shape rules run 8 times as often, and the figure is exact."""
    from bnfuse.layertypes import shapes
    from bnfuse.verification import local

    calls = []
    real = shapes.layer_output_shapes

    def counting(*args: object) -> object:
        calls.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(local, "layer_output_shapes", counting, raising=False)
    monkeypatch.setattr(shapes, "layer_output_shapes", counting)

    def chain(n: int) -> bnfuse.Net:
        layers = "".join(f'layer {{ name: "r{i}" type: "ReLU" bottom: "b{i}" top: "b{i + 1}" }}\n'
                         for i in range(n))
        return bnfuse.load(b'layer { name: "data" type: "Input" top: "b0" '
                           b'input_param { shape { dim: 1 dim: 1000 } } }\n' + layers.encode())

    counts = []
    for n in (200, 1600):
        net = chain(n)
        calls.clear()
        estimate = estimate_verify(net, net)
        counts.append(len(calls))
        # n + 1 blobs of 4000 bytes in each net, one ReLU temporary, 56 B a compared value.
        assert estimate.peak_bytes == 2 * (n + 1) * 4000 - 4000 + 56 * 1000 * (n > 0)
    assert counts == [2 * 200, 2 * 1600]


def test_parse_and_format_sizes() -> None:
    assert [parse_size(t) for t in ("1", "512M", "4G", "4g", "2K", "1.5GiB", "1GB", "3T")] == \
        [1, 2**29, 2**32, 2**32, 2048, 3 * 2**29, 10**9, 3 * 2**40]
    for bad in ("", "0", "-5", "1.5.5G", "4 Q", "x" * 100):
        with pytest.raises(BnfuseError, match="invalid memory size"):
            parse_size(bad)
    assert [format_size(n) for n in (0, 1023, 1024, 10**13)] == \
        ["0 B", "1023 B", "1.0 KiB", "9.1 TiB"]


def test_max_memory_argument_types() -> None:
    net = bnfuse.load(bnfuse.example_path())
    with pytest.raises(TypeError, match="verify: max_memory must be a number of bytes"):
        bnfuse.verify(net, net, max_memory="1G")  # type: ignore[arg-type]
    with pytest.raises(BnfuseError, match="max_memory must be a positive number of bytes"):
        bnfuse.verify(net, net, max_memory=0)
    with pytest.raises(TypeError, match="random_weights: max_memory must be"):
        random_weights(bnfuse.example_path(), max_memory=1.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- geometry


def _one(layer: str, shape: str = "dim: 1 dim: 2 dim: 4 dim: 4") -> bnfuse.Net:
    return bnfuse.load(f'layer {{ name: "data" type: "Input" top: "data" input_param {{ '
                       f'shape {{ {shape} }} }} }}\n{layer}\n'.encode())


@pytest.mark.parametrize(("layer", "words"), [
    ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { '
     'num_output: 2 kernel_size: 1 pad: 4294967295 } }',
     "pad 4294967295 is beyond Caffe's int range (at most 2147483647)"),
    ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { '
     'num_output: 2 kernel_size: 1 pad: 2147483647 } }',
     "has shape (1, 2, 4294967298, 4294967298); Caffe's blobs allow dimensions"),
    ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { '
     'num_output: 4294967295 kernel_size: 1 } }', "num_output 4294967295 is beyond"),
    ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { '
     'kernel_size: 4294967295 } }', "kernel 4294967295 is beyond Caffe's int range"),
    ('layer { name: "n" type: "LRN" bottom: "data" top: "n" lrn_param { '
     'local_size: 4294967295 } }', "local_size 4294967295 is beyond Caffe's int range"),
    ('layer { name: "n" type: "LRN" bottom: "data" top: "n" lrn_param { '
     'local_size: 2147483647 } }', "needs a padded blob of 34359738368 values"),
    ('layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { '
     'num_output: 2000000000 } }', "the weight has shape (2000000000, 32)"),
])
def test_absurd_geometry_is_refused_by_the_shape_rules(layer: str, words: str) -> None:
    net = _one(layer)
    for call in (lambda: infer_shapes(net), lambda: forward(net)):
        with pytest.raises(UnsupportedLayerError) as info:
            call()
        assert words in str(info.value)


def test_an_input_with_more_axes_than_caffe_allows_is_refused() -> None:
    with pytest.raises(UnsupportedLayerError, match="the declared input has 40 axes; Caffe's "
                                                    "blobs have at most 32"):
        forward(_one("", " ".join(["dim: 1"] * 40)))


def test_an_input_beyond_caffe_blob_limits_is_refused() -> None:
    with pytest.raises(UnsupportedLayerError, match=r"the declared input has shape "
                                                    r"\(1099511627776, 4, 0\); Caffe's blobs"):
        forward(_one("", "dim: 1099511627776 dim: 4 dim: 0"))


@pytest.mark.parametrize(("layer", "words"), [
    # Output 1x1, but padding 4x4 to 2000004 per side would be 8e12 values.
    ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { '
     'num_output: 2 kernel_size: 3 pad: 1000000 stride: 1000000 } }',
     "the zero-padded input would hold 8000032000032 values per image"),
    ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { '
     'pool: MAX kernel_size: 2147483647 pad: 2147483646 stride: 2147483647 } }',
     "the padded input would hold"),
    ('layer { name: "d" type: "Deconvolution" bottom: "data" top: "d" convolution_param { '
     'num_output: 1 kernel_size: 300 pad: 148 } }', "more than 65536 taps"),
])
def test_the_executor_refuses_working_arrays_beyond_caffe_limits(layer: str, words: str) -> None:
    net = _one(layer)
    weights = {"c": [(2, 2, 3, 3), (2,)], "d": [(2, 1, 300, 300), (1,)]}
    target = net.layers[1]
    if target.name in weights:
        net.set_blobs(target, [np.zeros(s, np.float32) for s in weights[target.name]])
    with pytest.raises(UnsupportedLayerError) as info:
        forward(net)
    assert words in str(info.value)


def test_a_huge_local_size_is_cut_to_the_channels_and_stays_exact() -> None:
    x = np.random.default_rng(3).standard_normal((1, 3, 2, 2)).astype(np.float32)
    huge = _one('layer { name: "n" type: "LRN" bottom: "data" top: "n" lrn_param { '
                'local_size: 100000001 alpha: 2 beta: 0.5 k: 1 } }', "dim: 1 dim: 3 dim: 2 dim: 2")
    got = forward(huge, {"data": x})["n"]
    # Every channel's window covers all 3 channels; alpha is divided by the true size.
    x64 = x.astype(np.float64)
    expected = x64 * (1.0 + 2.0 / 100000001 * (x64 ** 2).sum(axis=1, keepdims=True)) ** -0.5
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # Cutting the window at C - 1 channels changes no bit: the full loop over a 21-channel
    # window (20 of them zero padding) gives the same float32 values.
    net = _one('layer { name: "n" type: "LRN" bottom: "data" top: "n" lrn_param { '
               'local_size: 21 alpha: 2 beta: 0.5 k: 1 } }', "dim: 1 dim: 3 dim: 2 dim: 2")
    f32 = np.float32
    padded = np.zeros((1, 3 + 20, 2, 2), f32)
    padded[:, 10:13] = x * x
    window = np.zeros_like(x)
    for c in range(21):
        window += padded[:, c:c + 3]
    full_loop = x * np.power(f32(1) + (f32(2) / f32(21)) * window, -f32(0.5))
    assert np.array_equal(forward(net, {"data": x})["n"], full_loop)


def test_a_depthwise_convolution_with_a_huge_kernel_uses_one_product() -> None:
    net = _one('layer { name: "c" type: "ConvolutionDepthwise" bottom: "data" top: "c" '
               'convolution_param { num_output: 2 kernel_size: 40 pad: 18 bias_term: false } }')
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((2, 1, 40, 40)).astype(np.float32)
    net.set_blobs(net.layers[1], [weight])
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    got = forward(net, {"data": x})["c"]
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (18, 18), (18, 18)))
    expected = np.array([[[[float((padded[0, c, i:i + 40, j:j + 40] * weight[c, 0]).sum())
                            for j in range(1)] for i in range(1)] for c in range(2)]])
    assert got.shape == (1, 2, 1, 1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(("call", "words"), [
    (lambda: bnfuse.fold_net(None), "fold_net: net must be a bnfuse.Net"),  # type: ignore[arg-type]
    (lambda: bnfuse.fold_net(bnfuse.load(bnfuse.example_path()), forward="no"),  # type: ignore[arg-type]
     "fold_net: forward must be True or False, not str"),
    (lambda: bnfuse.fold(bnfuse.example_path(), merge_unfoldable=1),  # type: ignore[arg-type]
     "fold: merge_unfoldable must be True or False, not int"),
    (lambda: bnfuse.verify(1, 2), "verify: a must be a bnfuse.Net or a (prototxt, caffemodel) "  # type: ignore[arg-type]
                                  "pair of paths, not int"),
    (lambda: bnfuse.verify((b"x", None), (b"x", None)),  # type: ignore[arg-type]
     "verify: a[0] (the prototxt) must be a path"),
    (lambda: bnfuse.verify(*[bnfuse.load(bnfuse.example_path())] * 2, seed="1"),  # type: ignore[arg-type]
     "verify: seed must be an integer, not str"),
    (lambda: bnfuse.verify(*[bnfuse.load(bnfuse.example_path())] * 2, inputs=5),  # type: ignore[arg-type]
     "verify: inputs must be a mapping"),
    (lambda: bnfuse.verify(*[bnfuse.load(bnfuse.example_path())] * 2, progress=3),  # type: ignore[arg-type]
     "verify: progress must be callable or None"),
    (lambda: bnfuse.save("x", "out.prototxt"), "save: net must be a bnfuse.Net"),  # type: ignore[arg-type]
    (lambda: bnfuse.save(bnfuse.load(bnfuse.example_path()), 7),  # type: ignore[arg-type]
     "save: prototxt must be a path (str or os.PathLike), not int"),
    (lambda: __import__("bnfuse.net").net.save_weights(None, "w.caffemodel"),
     "save_weights: net must be a bnfuse.Net"),
    (lambda: bnfuse.load(42), "load: prototxt must be a path, bytes or an open binary file"),  # type: ignore[arg-type]
    (lambda: bnfuse.load(b"", 3.5), "load: caffemodel must be a path, bytes"),  # type: ignore[arg-type]
    (lambda: random_weights(None), "random_weights: prototxt_or_net must be a path"),  # type: ignore[arg-type]
    (lambda: random_weights(bnfuse.example_path(), seed=1.0),  # type: ignore[arg-type]
     "random_weights: seed must be an integer, not float"),
])
def test_wrong_argument_types_are_type_errors_naming_the_argument(
        call: Callable[[], object], words: str) -> None:
    with pytest.raises(TypeError) as info:
        call()
    assert words in str(info.value)


def test_load_of_a_closed_file_and_a_nul_path(tmp_path: Path) -> None:
    with open(bnfuse.example_path(), "rb") as handle:
        pass
    with pytest.raises(TypeError, match="load: prototxt is a closed file object"):
        bnfuse.load(handle)
    with pytest.raises(BnfuseError) as info:
        bnfuse.load("net\0.prototxt")
    assert str(info.value) == ("net\\x00.prototxt: the prototxt path contains a NUL byte, "
                               "which no file name can hold")
    with pytest.raises(BnfuseError, match="the caffemodel path contains a NUL byte"):
        bnfuse.load(bnfuse.example_path(), str(tmp_path / "w\0.caffemodel"))
    net = bnfuse.load(bnfuse.example_path())
    # An output path is the guarded writer's to judge (tests/test_outputs.py too).
    with pytest.raises(bnfuse.OutputError, match="the output path contains a NUL byte"):
        bnfuse.save(net, str(tmp_path / "o\0.prototxt"))


@pytest.mark.parametrize("seed", [-1, 2**64, -(10**50)])
def test_invalid_seeds_are_clean_errors(seed: int) -> None:
    net = bnfuse.load(bnfuse.example_path(), bnfuse.example_path("caffemodel"))
    for call in (lambda: bnfuse.verify(net, net, seed=seed),
                 lambda: random_weights(bnfuse.example_path(), seed=seed),
                 lambda: forward(net, seed=seed)):
        with pytest.raises(BnfuseError, match=r"seed must be an integer from 0 to 2\*\*64 - 1"):
            call()


def test_cli_seed_minus_one_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    model = [str(bnfuse.example_path(kind)) for kind in ("prototxt", "caffemodel")]
    for argv in (["verify", *model, *model, "--seed", "-1"],
                 ["fold", *model, "--dry-run", "--seed", "x"],
                 ["random-weights", model[0], "--seed", "18446744073709551616"]):
        assert main(argv) == 2
        assert "invalid seed" in capsys.readouterr().err
    assert main(["verify", *model, *model, "--seed", "18446744073709551615", "-q"]) == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1e-3])
def test_tolerances_and_factors_are_finite_and_not_negative(value: float) -> None:
    # An infinite tolerance passed any fold; a NaN one failed a net against itself.
    net = bnfuse.load(bnfuse.example_path(), bnfuse.example_path("caffemodel"))
    shown = repr(value)
    for name, call in (("verify: rtol", lambda: bnfuse.verify(net, net, rtol=value)),
                       ("verify: atol", lambda: bnfuse.verify(net, net, atol=value)),
                       ("random_weights: factor",
                        lambda: random_weights(bnfuse.example_path(), factor=value))):
        with pytest.raises(BnfuseError) as info:
            call()
        assert str(info.value) == f"{name} must be a finite number >= 0, got {shown}"


@pytest.mark.parametrize("text", ["nan", "1e999", "-1", "abc", "inf"])
def test_cli_tolerances_are_usage_errors(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    model = [str(bnfuse.example_path(kind)) for kind in ("prototxt", "caffemodel")]
    for flag in ("--rtol", "--atol"):
        assert main(["verify", *model, *model, flag, text]) == 2
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"bnfuse verify: error: argument {flag}: invalid tolerance '{text}': "
            "expected a finite number >= 0")
    assert main(["verify", *model, *model, "--rtol", "0", "--atol", "1e-3", "-q"]) == 0


# --------------------------------------------------------------------------- messages


def test_user_text_is_escaped_and_cut() -> None:
    assert escape_user_text("a\nb\x1b[2J") == "a\\nb\\x1b[2J"
    assert escape_user_text("x" * 300) == "x" * 200 + "... (300 characters)"
    assert quote_user_text("line\u2028sep") == "'line\\u2028sep'"
    assert escape_user_text(b"\xffname") == "\\xffname"
    assert quote_user_text("y" * 5, limit=2) == "'yy'... (5 characters)"


def test_a_long_layer_name_is_cut_in_shape_errors() -> None:
    name = "n" * 20000
    net = _one(f'layer {{ name: "{name}" type: "LRN" bottom: "data" top: "n" '
               'lrn_param { local_size: 4294967295 } }')
    with pytest.raises(UnsupportedLayerError) as info:
        infer_shapes(net)
    assert len(str(info.value)) < 500
    assert "... (20000 characters)" in str(info.value)
