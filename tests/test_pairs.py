"""Pairs committed together, and a mismatched pair noticed on the next load.

A prototxt and its caffemodel are renamed into place together, after both are
complete; a failing second rename puts the first destination back.  The one
window left (a crash between the two renames) is made detectable: every pair
written from an edited net carries one id (from its text) in both files, and
``bnfuse.load`` refuses a pair whose ids differ.  The marker must never change
what Caffe, protobuf or OpenCV read, and an unedited net must still be written
back byte for byte.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format, unknown_fields
from modelkit import bn_blobs, conv_blobs, scale_blobs, write_model

import bnfuse
from bnfuse.cli import main
from bnfuse.errors import ModelMismatchError, OutputError
from bnfuse.io.caffemodel import read_caffemodel
from bnfuse.net import save_weights
from bnfuse.proto import NetParameter

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^# bnfuse pair ([0-9a-f]{32})$", re.MULTILINE)

TEXT = """name: "paired"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 2 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
"""


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(11)
    return write_model(folder, TEXT, {"conv": conv_blobs(rng, 4, 2), "bn": bn_blobs(rng, 4),
                                      "sc": scale_blobs(rng, 4)}, name="net")


@pytest.fixture
def other_model(tmp_path: Path) -> tuple[Path, Path]:
    """Another net (its text differs by the name): its pairs get another id."""
    folder = tmp_path / "other"
    folder.mkdir()
    rng = np.random.default_rng(12)
    return write_model(folder, TEXT.replace('"paired"', '"paired_b"'),
                       {"conv": conv_blobs(rng, 4, 2), "bn": bn_blobs(rng, 4),
                        "sc": scale_blobs(rng, 4)}, name="net")


def _ids(prototxt: Path, caffemodel: Path) -> tuple[list[str], list[tuple[int, bytes]]]:
    """The marker lines of the text, and the unknown fields protobuf finds in the weights."""
    net = NetParameter.FromString(caffemodel.read_bytes())
    fields = [(f.field_number, f.data) for f in unknown_fields.UnknownFieldSet(net)]
    return MARKER.findall(prototxt.read_text()), fields


def _fold_to(model: tuple[Path, Path], folder: Path, name: str = "out") -> tuple[Path, Path]:
    folder.mkdir(exist_ok=True)
    out = folder / f"{name}.prototxt", folder / f"{name}.caffemodel"
    bnfuse.fold(*model).save(*out)
    return out


def test_an_edited_pair_carries_one_id_in_both_files(model: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    out_p, out_c = _fold_to(model, tmp_path / "out")
    lines, fields = _ids(out_p, out_c)
    assert len(lines) == 1
    assert fields == [(117_637_501, lines[0].encode("ascii"))]
    assert out_p.read_text().endswith(f"\n# bnfuse pair {lines[0]}\n")
    # The id is the text's: the same fold writes the same bytes again.
    again_p, again_c = _fold_to(model, tmp_path / "again")
    assert _ids(again_p, again_c)[0] == lines
    assert (again_p.read_bytes(), again_c.read_bytes()) == (out_p.read_bytes(),
                                                            out_c.read_bytes())


def test_another_text_gets_another_id(model: tuple[Path, Path],
                                      other_model: tuple[Path, Path], tmp_path: Path) -> None:
    a = _ids(*_fold_to(model, tmp_path / "a"))[0]
    b = _ids(*_fold_to(other_model, tmp_path / "b"))[0]
    assert len(a) == len(b) == 1 and a != b


def test_the_marker_changes_nothing_caffe_protobuf_or_opencv_read(model: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    out_p, out_c = _fold_to(model, tmp_path / "out")
    # protobuf's text parser (Caffe's ReadProtoFromTextFile) skips the comment line.
    parsed = text_format.Parse(out_p.read_text(), NetParameter())
    stripped = text_format.Parse(MARKER.sub("", out_p.read_text()), NetParameter())
    assert parsed == stripped and [layer.name for layer in parsed.layer] == ["data", "conv",
                                                                             "relu"]
    # protobuf's binary parser keeps the field as unknown and writes it back.
    weights = NetParameter.FromString(out_c.read_bytes())
    again = NetParameter.FromString(weights.SerializeToString())
    assert [(f.field_number, f.data) for f in unknown_fields.UnknownFieldSet(again)] == [
        (117_637_501, MARKER.findall(out_p.read_text())[0].encode("ascii"))]
    plain = NetParameter.FromString(out_c.read_bytes())
    plain.DiscardUnknownFields()
    assert [layer.name for layer in plain.layer] == [layer.name for layer in weights.layer]
    # OpenCV reads the marked pair and computes exactly what it computes without the marker.
    cv2 = pytest.importorskip("cv2")
    bare_p, bare_c = tmp_path / "bare.prototxt", tmp_path / "bare.caffemodel"
    bare_p.write_text(MARKER.sub("", out_p.read_text()))
    bare_c.write_bytes(plain.SerializeToString())
    x = np.random.default_rng(0).normal(size=(1, 2, 6, 6)).astype(np.float32)
    outputs = []
    for p, c in ((out_p, out_c), (bare_p, bare_c)):
        net = cv2.dnn.readNetFromCaffe(str(p), str(c))
        net.setInput(x)
        outputs.append(net.forward())
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert outputs[0].shape == (1, 4, 4, 4)


def test_an_unedited_net_is_written_byte_for_byte_without_a_marker(model: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    prototxt, caffemodel = model
    bnfuse.save(bnfuse.load(prototxt, caffemodel), tmp_path / "a.prototxt",
                tmp_path / "a.caffemodel")
    assert (tmp_path / "a.prototxt").read_bytes() == prototxt.read_bytes()
    assert (tmp_path / "a.caffemodel").read_bytes() == caffemodel.read_bytes()
    # A marked pair saved again unedited keeps its id, byte for byte.
    out_p, out_c = _fold_to(model, tmp_path / "out")
    bnfuse.save(bnfuse.load(out_p, out_c), tmp_path / "b.prototxt", tmp_path / "b.caffemodel")
    assert (tmp_path / "b.prototxt").read_bytes() == out_p.read_bytes()
    assert (tmp_path / "b.caffemodel").read_bytes() == out_c.read_bytes()


def test_editing_a_marked_pair_gives_it_a_new_id(model: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    out_p, out_c = _fold_to(model, tmp_path / "out")
    old = _ids(out_p, out_c)[0][0]
    net = bnfuse.load(out_p, out_c)
    net.rename_layer(net.layer("relu"), "relu_renamed")
    bnfuse.save(net, tmp_path / "e.prototxt", tmp_path / "e.caffemodel")
    lines, fields = _ids(tmp_path / "e.prototxt", tmp_path / "e.caffemodel")
    assert len(lines) == 1 and lines[0] != old
    assert fields == [(117_637_501, lines[0].encode("ascii"))]
    assert bnfuse.load(tmp_path / "e.prototxt", tmp_path / "e.caffemodel").layer("relu_renamed")


def test_files_written_alone_carry_no_id(model: tuple[Path, Path], tmp_path: Path) -> None:
    out_p, out_c = _fold_to(model, tmp_path / "out")
    net = bnfuse.load(out_p, out_c)
    net.rename_layer(net.layer("relu"), "r2")
    bnfuse.save(net, tmp_path / "alone.prototxt")
    save_weights(net, tmp_path / "alone.caffemodel")
    lines, fields = _ids(tmp_path / "alone.prototxt", tmp_path / "alone.caffemodel")
    assert (lines, fields) == ([], [])


def test_a_mismatched_pair_is_refused_naming_both_files(model: tuple[Path, Path],
                                                        other_model: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    a_p, a_c = _fold_to(model, tmp_path / "a")
    b_p, b_c = _fold_to(other_model, tmp_path / "b")
    id_a, id_b = _ids(a_p, a_c)[0][0], _ids(b_p, b_c)[0][0]
    with pytest.raises(ModelMismatchError) as info:
        bnfuse.load(a_p, b_c)
    assert str(info.value) == (
        f"{a_p}: was not written together with {b_c} (bnfuse pair ids {id_a} and {id_b}): a "
        "save was cut between its two renames, or the files come from different saves; write "
        "the pair again (or delete the '# bnfuse pair' line to load them anyway)")
    assert main(["inspect", str(a_p), str(b_c), "-q"]) == 1
    # Either file with an unmarked partner loads: only two different ids are a mismatch.
    assert bnfuse.load(a_p, model[1]).weights is not None
    assert bnfuse.load(model[0], b_c).weights is not None


_CRASH_BETWEEN_RENAMES = """
    import os, signal, sys
    import bnfuse
    src_p, src_c, out_p, out_c = sys.argv[1:5]
    real = os.replace
    def replace_then_die(a, b):
        real(a, b)
        os.kill(os.getpid(), signal.SIGKILL)  # the machine dies after the first rename
    os.replace = replace_then_die
    bnfuse.fold(src_p, src_c).save(out_p, out_c)
"""


def test_a_crash_between_the_two_renames_is_detected_on_the_next_load(
        model: tuple[Path, Path], other_model: tuple[Path, Path], tmp_path: Path) -> None:
    out_p, out_c = _fold_to(model, tmp_path / "out")
    # Another net's fold over the same pair dies after its first rename.
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_CRASH_BETWEEN_RENAMES), str(other_model[0]),
         str(other_model[1]), str(out_p), str(out_c)],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, timeout=120,
        check=False)
    assert result.returncode == -9
    with pytest.raises(ModelMismatchError, match="was not written together with"):
        bnfuse.load(out_p, out_c)


def test_a_failed_second_rename_puts_the_first_destination_back(
        model: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out_p, out_c = _fold_to(model, tmp_path / "out")
    before = out_p.read_bytes(), out_c.read_bytes()
    real = os.replace
    calls: list[str] = []

    def second_fails(a: str, b: str) -> None:
        calls.append(os.path.basename(b))
        if len(calls) == 2:
            raise OSError(errno.EACCES, "Permission denied")
        real(a, b)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(OutputError) as info:
        bnfuse.fold(*model).save(out_p, out_c)
    monkeypatch.setattr(os, "replace", real)
    assert calls[:2] == ["out.prototxt", "out.caffemodel"]
    assert str(info.value) == (f"{out_c}: cannot write: Permission denied (permission denied; "
                               "choose a folder you can write to)")
    assert (out_p.read_bytes(), out_c.read_bytes()) == before
    assert sorted(os.listdir(out_p.parent)) == ["out.caffemodel", "out.prototxt"]
    assert bnfuse.load(out_p, out_c).weights is not None


def test_a_failed_second_rename_of_a_fresh_pair_leaves_nothing(
        model: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.replace
    calls: list[str] = []

    def second_fails(a: str, b: str) -> None:
        calls.append(b)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        real(a, b)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(OutputError, match="cannot write: Input/output error"):
        bnfuse.fold(*model).save(tmp_path / "n.prototxt", tmp_path / "n.caffemodel")
    assert sorted(os.listdir(tmp_path)) == ["in"]


def test_the_documented_field_number_is_the_one_written() -> None:
    from bnfuse.io.pairs import PAIR_ID_FIELD

    assert PAIR_ID_FIELD == 117_637_501
    assert f"(number {PAIR_ID_FIELD})" in (ROOT / "docs" / "cli.md").read_text()


def test_marked_caffemodel_reports_its_id(model: tuple[Path, Path], tmp_path: Path) -> None:
    out_p, out_c = _fold_to(model, tmp_path / "out")
    with read_caffemodel(out_c) as weights:
        assert weights.pair_id == _ids(out_p, out_c)[0][0]
    with read_caffemodel(model[1]) as weights:
        assert weights.pair_id is None
