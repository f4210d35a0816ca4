"""The ``bnfuse`` command line, run in-process through ``main(argv)`` and once as a process."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import corpus_prototxts, shared_path

import bnfuse
from bnfuse.cli import main


@pytest.fixture
def example(tmp_path: Path) -> tuple[Path, Path]:
    """The bundled example copied into a temporary folder."""
    prototxt = tmp_path / "net.prototxt"
    caffemodel = tmp_path / "net.caffemodel"
    shutil.copyfile(bnfuse.example_path("prototxt"), prototxt)
    shutil.copyfile(bnfuse.example_path("caffemodel"), caffemodel)
    return prototxt, caffemodel


def _hashes(*paths: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_fold_writes_default_outputs_and_prints_the_table(
        example: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    prototxt, caffemodel = example
    before = _hashes(prototxt, caffemodel)
    assert main(["fold", str(prototxt), str(caffemodel)]) == 0
    out = capsys.readouterr().out
    assert "BatchNorm          2       0" in out
    assert "folded  conv1/bn + conv1/scale into conv1" in out
    assert "folded  conv2/bn + conv2/scale into conv2" in out
    assert "2 chains: 2 folded into their producer\n" in out
    folded_text = prototxt.with_name("net_inference.prototxt")
    folded_model = caffemodel.with_name("net_inference.caffemodel")
    assert f"wrote {folded_text}" in out and f"wrote {folded_model}" in out
    net = bnfuse.load(folded_text, folded_model)
    assert [layer.type for layer in net.layers].count("BatchNorm") == 0
    assert _hashes(prototxt, caffemodel) == before


def test_fold_verify_and_json_report(example: tuple[Path, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    prototxt, caffemodel = example
    report = tmp_path / "report.json"
    code = main(["fold", str(prototxt), str(caffemodel), "-o", str(tmp_path / "o.prototxt"),
                 "-w", str(tmp_path / "o.caffemodel"), "--verify", "--json", str(report)])
    assert code == 0
    assert "PASSED" in capsys.readouterr().out
    payload = json.loads(report.read_text())
    assert payload["verify"]["passed"] is True
    assert payload["report"]["layers_after"]["Convolution"] == 2
    assert [a["kind"] for a in payload["report"]["actions"]] == ["folded_into_producer"] * 2
    assert payload["written"] == {"prototxt": str(tmp_path / "o.prototxt"),
                                  "caffemodel": str(tmp_path / "o.caffemodel")}


def test_fold_dry_run_writes_nothing(example: tuple[Path, Path],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    prototxt, caffemodel = example
    assert main(["fold", str(prototxt), str(caffemodel), "--dry-run", "--json", "-"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["written"] is None
    assert sorted(p.name for p in prototxt.parent.iterdir()) == ["net.caffemodel", "net.prototxt"]


def test_quiet_prints_nothing(example: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
                              tmp_path: Path) -> None:
    prototxt, caffemodel = example
    assert main(["fold", str(prototxt), str(caffemodel), "-q", "-o", str(tmp_path / "q.prototxt"),
                 "-w", str(tmp_path / "q.caffemodel")]) == 0
    assert capsys.readouterr() == ("", "")


def test_errors_are_one_line_with_exit_code_1(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.prototxt"
    assert main(["fold", str(missing), str(tmp_path / "x.caffemodel")]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {missing}: no such file\n"


def test_output_over_an_input_is_refused(example: tuple[Path, Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    prototxt, caffemodel = example
    before = _hashes(prototxt, caffemodel)
    assert main(["fold", str(prototxt), str(caffemodel), "-w", str(caffemodel)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert _hashes(prototxt, caffemodel) == before


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fold"]) == 2
    assert "usage:" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["no-such-command"]) == 2


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"bnfuse {bnfuse.__version__}\n"
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fold", "inspect", "verify", "random-weights"):
        assert command in out


def test_verify_command_passes_and_fails(example: tuple[Path, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    prototxt, caffemodel = example
    folded = bnfuse.fold(prototxt, caffemodel)
    folded.save(tmp_path / "f.prototxt", tmp_path / "f.caffemodel")
    args = [str(prototxt), str(caffemodel), str(tmp_path / "f.prototxt"),
            str(tmp_path / "f.caffemodel")]
    assert main(["verify", *args]) == 0
    assert "PASSED" in capsys.readouterr().out
    # Break the folded model: scale conv2's weights.
    broken = bnfuse.load(tmp_path / "f.prototxt", tmp_path / "f.caffemodel")
    conv2 = broken.layer("conv2")
    broken.set_blobs(conv2, [conv2.blobs[0] * np.float32(1.5), conv2.blobs[1]])
    bnfuse.save(broken, tmp_path / "b.prototxt", tmp_path / "b.caffemodel")
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, data=np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32))
    code = main(["verify", str(prototxt), str(caffemodel), str(tmp_path / "b.prototxt"),
                 str(tmp_path / "b.caffemodel"), "--inputs", str(inputs), "--json",
                 str(tmp_path / "v.json")])
    assert code == 1
    assert "first at blob 'conv2/scale'" in capsys.readouterr().err
    assert json.loads((tmp_path / "v.json").read_text())["passed"] is False


def test_inspect_without_weights_lists_every_batchnorm(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(bnfuse.example_path("prototxt"))]) == 0
    out = capsys.readouterr().out
    assert "structure only" in out
    assert "folded  conv1/bn + conv1/scale into conv1" in out
    assert out.endswith("2 chains: 2 folded into their producer\n")


@pytest.mark.parametrize("name", corpus_prototxts())
def test_inspect_corpus_lists_every_batchnorm_with_its_fate(
        name: str, capsys: pytest.CaptureFixture[str]) -> None:
    prototxt = shared_path("corpus", "prototxt", name)
    assert main(["inspect", str(prototxt), "--json", "-"]) == 0
    payload = json.loads(capsys.readouterr().out)
    net = bnfuse.load(prototxt)
    norms = {layer.name for layer in net.layers if layer.type in ("BatchNorm", "BN")}
    fates = {name for action in payload["actions"] for name in action["layers"]}
    assert norms <= fates
    for action in payload["actions"]:
        if action["kind"] in ("skipped", "kept"):
            assert action["reason"]


def test_random_weights_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prototxt = tmp_path / "net.prototxt"
    shutil.copyfile(bnfuse.example_path("prototxt"), prototxt)
    assert main(["random-weights", str(prototxt), "--seed", "3"]) == 0
    net = bnfuse.load(prototxt, tmp_path / "net.caffemodel")
    assert net.layer("conv1/bn").blobs[2].shape == (1,)
    assert float(net.layer("conv1/bn").blobs[2][0]) != 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.caffemodel", "net.prototxt"]


def test_python_dash_m_runs_the_same_command(example: tuple[Path, Path], tmp_path: Path) -> None:
    prototxt, caffemodel = example
    done = subprocess.run(
        [sys.executable, "-m", "bnfuse", "fold", str(prototxt), str(caffemodel), "--dry-run"],
        capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "folded  conv1/bn + conv1/scale into conv1" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "bnfuse", "fold"], capture_output=True,
                         text=True, check=False)
    assert bad.returncode == 2


def test_fold_verify_falls_back_to_a_local_check_for_unknown_layers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from modelkit import bn_blobs, conv_blobs, scale_blobs, write_model

    text = """layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 4 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "reorg" type: "Reorg" bottom: "conv" top: "reorg"
        reorg_param { stride: 2 } }
"""
    rng = np.random.default_rng(0)
    prototxt, caffemodel = write_model(tmp_path, text, {
        "conv": conv_blobs(rng, 4, 4), "bn": bn_blobs(rng, 4), "sc": scale_blobs(rng, 4)})
    code = main(["fold", str(prototxt), str(caffemodel), "--verify"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Reorg" in out and "comparing the changed layers locally instead" in out
    assert "PASSED" in out


def test_public_functions_do_not_hide_their_subpackages() -> None:
    """bnfuse.fold and bnfuse.verify are functions; the packages behind them import plainly."""
    import importlib

    import bnfuse

    assert callable(bnfuse.fold) and callable(bnfuse.verify)
    for module in ("bnfuse.folding.planner", "bnfuse.verification.executor"):
        done = subprocess.run([sys.executable, "-c", f"import {module} as m; print(m.__name__)"],
                              capture_output=True, text=True, check=False)
        assert done.stdout.strip() == module, done.stderr
    assert importlib.import_module("bnfuse.folding.arith").__name__ == "bnfuse.folding.arith"


def _corpus_weights(name: str, target: Path) -> None:
    """Random weights for a corpus net the numpy executor cannot run whole, as the fold and
    local-check tests make them: SSD at its declared 300x300 input, ENet with unit
    statistics for the BNs behind layers the executor cannot run."""
    from bnfuse.net import save_weights
    from bnfuse.verification.randweights import random_weights

    prototxt = shared_path("corpus", "prototxt", name)
    if name.startswith("mobilenet_ssd"):
        net = random_weights(prototxt, seed=0, input_shapes={"data": (1, 3, 300, 300)})
    else:
        net = random_weights(prototxt, seed=0, unmeasurable="unit",
                             input_shapes={"data": (1, 3, 128, 128)})
    save_weights(net, target)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "rtol", "blocker"), [
    # (SSD's, SE-ResNet's and ShuffleNet's layers run whole-net now: ENet's Python
    # layers still send the check local.)
    ("enet_deploy.prototxt", None, "layer 'drop1_0_3' has type 'Python'"),
])
def test_library_and_fold_verify_give_the_same_local_verdict(
        name: str, rtol: float | None, blocker: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """bnfuse.verify(..., fallback="local") and `bnfuse fold --verify` are one check."""
    import re

    prototxt = shared_path("corpus", "prototxt", name)
    weights, out_text, out_model, report = (tmp_path / "w.caffemodel", tmp_path / "f.prototxt",
                                            tmp_path / "f.caffemodel", tmp_path / "report.json")
    _corpus_weights(name, weights)
    code = main(["fold", str(prototxt), str(weights), "-o", str(out_text), "-w", str(out_model),
                 "--verify", "--json", str(report), *(["--rtol", str(rtol)] if rtol else [])])
    printed = capsys.readouterr().out
    from_cli = json.loads(report.read_text())["verify"]
    library = bnfuse.verify((prototxt, weights), (out_text, out_model), rtol=rtol,
                            fallback="local")
    assert code == 0 and library.passed, library.summary()
    assert from_cli["passed"] is True
    assert library.scope == from_cli["scope"] == "local"
    assert library.scope_reason == f"{prototxt}: {blocker}" + (
        ", which the numpy reference executor does not implement; verify with another "
        "backend or remove the layer")
    assert from_cli["scope_reason"] == library.scope_reason
    counts = re.compile(r"local check: (\d+) layers of a, (\d+) of b, (\d+) region inputs")
    cli_counts, lib_counts = counts.match(from_cli["notes"][0]), counts.match(library.notes[0])
    assert cli_counts is not None and lib_counts is not None
    assert cli_counts.groups() == lib_counts.groups()
    assert int(lib_counts.group(1)) > 100  # the folded regions, not a token check
    assert len(from_cli["blobs"]) == len(library.blobs) > 30
    # Everything else agrees too: same inputs, same blobs, same numbers.
    assert from_cli == json.loads(json.dumps(library.to_dict()))
    assert library.summary() in printed


def test_messages_name_flags_not_keywords(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # A BatchNorm behind a layer the executor cannot run: the library says to pass
    # unmeasurable='unit', the command line says --fill-unmeasurable.
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text("""layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
layer { name: "conv0" type: "Convolution" bottom: "data" top: "conv0"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "bn0" type: "BatchNorm" bottom: "conv0" top: "conv0"
        batch_norm_param { use_global_stats: false } }
layer { name: "py" type: "Python" bottom: "conv0" top: "feat" }
layer { name: "conv" type: "Convolution" bottom: "feat" top: "conv"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
""")
    assert main(["random-weights", str(prototxt)]) == 1
    err = capsys.readouterr().err
    assert "pass --fill-unmeasurable to fill what can be shaped" in err
    assert "unmeasurable=" not in err
    assert main(["random-weights", str(prototxt), "--fill-unmeasurable", "-q"]) == 0
    assert main(["inspect", str(prototxt), str(tmp_path / "net.caffemodel")]) == 0
    out = capsys.readouterr().out
    assert "(--force-global-stats folds it with the stored statistics)" in out
    assert "force_global_stats=" not in out


def test_input_shape_and_batch_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prototxt = tmp_path / "net.prototxt"
    shutil.copyfile(bnfuse.example_path("prototxt"), prototxt)
    weights = tmp_path / "w.caffemodel"
    # Weights for 16x16 images: the fc layer then takes 16 * 8 * 8 = 2048 inputs, not 8192.
    assert main(["random-weights", str(prototxt), "-w", str(weights), "-q",
                 "--input-shape", "data=2,3,16,16"]) == 0
    assert bnfuse.load(prototxt, weights).layer("fc").blobs[0].shape == (10, 2048)
    folded = [str(tmp_path / "f.prototxt"), str(tmp_path / "f.caffemodel")]
    assert main(["fold", str(prototxt), str(weights), "-o", folded[0], "-w", folded[1],
                 "-q"]) == 0
    # At the declared 32x32 the weights do not fit; at the shape given they do.
    assert main(["verify", str(prototxt), str(weights), *folded, "-q"]) == 1
    assert "Caffe expects (10, 8192)" in capsys.readouterr().err
    report = tmp_path / "v.json"
    assert main(["verify", str(prototxt), str(weights), *folded, "--batch", "3", "--json",
                 str(report), "--input-shape", "data=1,3,16,16", "-q"]) == 0
    blobs = {b["name"]: b["shape_a"] for b in json.loads(report.read_text())["blobs"]}
    assert blobs["prob"] == [3, 10]  # --batch replaced the batch of the shape given
    assert main(["fold", str(prototxt), str(weights), "--dry-run", "--batch", "2"]) == 0
    assert "--input-shape/--batch ignored" in capsys.readouterr().out


@pytest.mark.parametrize(("flag", "value"), [
    ("--input-shape", "data"), ("--input-shape", "data=1,x"), ("--input-shape", "=1,2"),
    ("--input-shape", "data=0,3"), ("--batch", "0"), ("--batch", "two")])
def test_bad_shape_flags_are_usage_errors(flag: str, value: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["random-weights", "net.prototxt", flag, value]) == 2
    assert f"invalid {'batch' if flag == '--batch' else 'input shape'}" in capsys.readouterr().err
