"""``fold --verify`` verifies the pair it is about to commit; a failed check writes nothing.

The check runs on the complete temporary files (the very bytes that would be renamed
into place), so a failed verification, a memory-budget refusal or a net whose shapes
do not hold leaves every destination as it was and no temporary file behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from modelkit import bn_blobs, conv_blobs, scale_blobs, write_model

import bnfuse
from bnfuse.cli import main

OLD_TEXT, OLD_MODEL = b"old prototxt\n", b"old caffemodel"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The bundled example and two existing destinations with known bytes."""
    shutil.copyfile(bnfuse.example_path("prototxt"), tmp_path / "net.prototxt")
    shutil.copyfile(bnfuse.example_path("caffemodel"), tmp_path / "net.caffemodel")
    (tmp_path / "o.prototxt").write_bytes(OLD_TEXT)
    (tmp_path / "o.caffemodel").write_bytes(OLD_MODEL)
    return tmp_path


def _fold(folder: Path, *extra: str, prototxt: str = "net.prototxt",
          caffemodel: str = "net.caffemodel") -> int:
    return main(["fold", str(folder / prototxt), str(folder / caffemodel),
                 "-o", str(folder / "o.prototxt"), "-w", str(folder / "o.caffemodel"),
                 "--verify", *extra])


def _untouched(folder: Path, *inputs: str) -> None:
    assert (folder / "o.prototxt").read_bytes() == OLD_TEXT
    assert (folder / "o.caffemodel").read_bytes() == OLD_MODEL
    # Nothing else: no temporary file of the aborted commit is left behind.
    assert sorted(os.listdir(folder)) == sorted(["o.prototxt", "o.caffemodel", *inputs])


def test_a_failed_verification_writes_nothing(folder: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # The fold's float32 rounding (about 1e-6 relative) is far above a 1e-12 tolerance.
    report = folder / "report.json"
    code = _fold(folder, "--rtol", "1e-12", "--atol", "0", "--json", str(report))
    captured = capsys.readouterr()
    assert code == 1
    assert "FAILED (numpy, float32)" in captured.out
    assert "wrote" not in captured.out
    assert captured.err.startswith("error: verification failed: the folded model's outputs "
                                   "differ (first at blob ")
    assert captured.err.rstrip().endswith("; nothing was written")
    _untouched(folder, "net.prototxt", "net.caffemodel", "report.json")
    payload = json.loads(report.read_text())
    assert payload["written"] is None
    assert payload["verify"]["passed"] is False


def test_a_memory_budget_refusal_writes_nothing(folder: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = _fold(folder, "--max-memory", "1K")
    captured = capsys.readouterr()
    assert code == 1
    assert "wrote" not in captured.out
    assert "more than the budget of 1.0 KiB (1,024 bytes)" in captured.err
    _untouched(folder, "net.prototxt", "net.caffemodel")


def test_a_net_whose_shapes_do_not_hold_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Conv + BN + Scale fold fine; the InnerProduct after them holds a (2, 10) weight
    # for a 4*6*6 input, which Caffe refuses when it copies the trained weights.
    rng = np.random.default_rng(3)
    text = """
input: "data" input_shape { dim: 1 dim: 3 dim: 6 dim: 6 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 2 } }
"""
    fc = [rng.normal(size=(2, 10)).astype(np.float32), np.zeros(2, np.float32)]
    write_model(tmp_path, text, {"conv": conv_blobs(rng, 4, 3, k=1), "bn": bn_blobs(rng, 4),
                                 "scale": scale_blobs(rng, 4), "fc": fc}, name="net")
    (tmp_path / "o.prototxt").write_bytes(OLD_TEXT)
    (tmp_path / "o.caffemodel").write_bytes(OLD_MODEL)
    code = _fold(tmp_path)
    captured = capsys.readouterr()
    assert code == 1
    assert "wrote" not in captured.out
    assert "layer 'fc' (type 'InnerProduct') weight blob 0 has shape (2, 10); Caffe " \
        "expects (2, 144)" in captured.err
    _untouched(tmp_path, "net.prototxt", "net.caffemodel")


def test_a_passed_verification_checked_the_bytes_it_wrote(folder: Path) -> None:
    seen: list[tuple[bytes, bytes]] = []

    def check(text_temp: str, model_temp: str) -> None:
        # The temporary pair is complete when the check runs.
        seen.append((Path(text_temp).read_bytes(), Path(model_temp).read_bytes()))
        assert bnfuse.verify((folder / "net.prototxt", folder / "net.caffemodel"),
                             (text_temp, model_temp)).passed

    result = bnfuse.fold(folder / "net.prototxt", folder / "net.caffemodel")
    result.save(folder / "o.prototxt", folder / "o.caffemodel", check=check)
    assert seen == [((folder / "o.prototxt").read_bytes(),
                     (folder / "o.caffemodel").read_bytes())]


def test_a_check_that_raises_leaves_the_destinations_as_they_were(folder: Path) -> None:
    def refuse(text_temp: str, model_temp: str) -> None:
        raise bnfuse.BnfuseError("refused by the caller's check")

    result = bnfuse.fold(folder / "net.prototxt", folder / "net.caffemodel")
    with pytest.raises(bnfuse.BnfuseError, match=r"^refused by the caller's check$"):
        result.save(folder / "o.prototxt", folder / "o.caffemodel", check=refuse)
    _untouched(folder, "net.prototxt", "net.caffemodel")


def test_a_check_needs_a_caffemodel_destination(folder: Path) -> None:
    result = bnfuse.fold(folder / "net.prototxt", folder / "net.caffemodel")
    with pytest.raises(TypeError, match=r"save\(check=...\) needs a caffemodel destination"):
        result.save(folder / "o.prototxt", check=lambda t, m: None)
    assert (folder / "o.prototxt").read_bytes() == OLD_TEXT
