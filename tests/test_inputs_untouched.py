"""Every command and API call leaves its input files byte-identical.

Inputs are hashed before and after each call: plain use (load, save, fold,
fold().save, ``bnfuse fold|inspect|verify``), and outputs that are the inputs
themselves (same path, another spelling of it, a symlink, a hard link), which
must be refused with an OutputError before anything is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import bnfuse
from bnfuse.cli import main
from bnfuse.proto import NetParameter

PROTOTXT = b"""name: "untouched"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
"""


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, Path]:
    """A small Convolution + BatchNorm + Scale model, written to ``tmp_path/in``."""
    rng = np.random.default_rng(3)
    net = NetParameter(name="untouched")
    shapes = {"conv1": [(4, 3, 3, 3), (4,)], "bn1": [(4,), (4,), (1,)], "sc1": [(4,), (4,)]}
    types = {"conv1": "Convolution", "bn1": "BatchNorm", "sc1": "Scale"}
    for name, blob_shapes in shapes.items():
        layer = net.layer.add(name=name, type=types[name])
        for shape in blob_shapes:
            blob = layer.blobs.add()
            blob.shape.dim.extend(shape)
            blob.data.extend(rng.uniform(0.5, 1.5, int(np.prod(shape))).tolist())
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "net.prototxt").write_bytes(PROTOTXT)
    (folder / "net.caffemodel").write_bytes(net.SerializeToString())
    return folder / "net.prototxt", folder / "net.caffemodel"


def _digests(*paths: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mtime (ns) of each file: a rewrite with equal bytes would still show."""
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in paths}


@contextlib.contextmanager
def _untouched(*paths: Path) -> Iterator[None]:
    before = _digests(*paths)
    yield
    assert _digests(*paths) == before


def _cli(*args: str) -> tuple[int, str]:
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        code = main(list(args))
    return code, sink.getvalue()


def test_every_call_leaves_inputs_identical(model: tuple[Path, Path], tmp_path: Path) -> None:
    """load, save, fold, fold().save, fold_net and the three CLI commands."""
    prototxt, caffemodel = model
    out = tmp_path / "out"
    out.mkdir()
    with _untouched(prototxt, caffemodel):
        net = bnfuse.load(prototxt, caffemodel)
        bnfuse.save(net, out / "a.prototxt", out / "a.caffemodel")
        bnfuse.fold_net(net).save(out / "b.prototxt", out / "b.caffemodel")
        bnfuse.fold(prototxt, caffemodel).save(out / "c.prototxt", out / "c.caffemodel")
        bnfuse.fold(prototxt).save(out / "d.prototxt")
        with prototxt.open("rb") as p, caffemodel.open("rb") as c:
            bnfuse.fold(p, c).save(out / "e.prototxt", out / "e.caffemodel")
        assert _cli("inspect", str(prototxt), str(caffemodel))[0] == 0
        assert _cli("fold", str(prototxt), str(caffemodel), "-o", str(out / "f.prototxt"),
                    "-w", str(out / "f.caffemodel"), "--verify")[0] == 0
        # The default outputs go beside the inputs: the inputs must still be untouched.
        assert _cli("fold", str(prototxt), str(caffemodel))[0] == 0
        assert _cli("verify", str(prototxt), str(caffemodel), str(out / "f.prototxt"),
                    str(out / "f.caffemodel"))[0] == 0
    assert (prototxt.parent / "net_inference.caffemodel").is_file()


def _same_path(path: Path, scratch: Path) -> Path:
    return path


def _other_spelling(path: Path, scratch: Path) -> Path:
    return path.parent / ".." / path.parent.name / path.name


def _symlink(path: Path, scratch: Path) -> Path:
    link = scratch / f"link-{path.name}"
    link.symlink_to(path)
    return link


def _hard_link(path: Path, scratch: Path) -> Path:
    link = scratch / f"hard-{path.name}"
    os.link(path, link)
    return link


ALIASES: dict[str, Callable[[Path, Path], Path]] = {
    "same-path": _same_path,
    "other-spelling": _other_spelling,
    "symlink": _symlink,
    "hard-link": _hard_link,
}


@pytest.mark.parametrize("alias", list(ALIASES))
@pytest.mark.parametrize("target", ["prototxt", "caffemodel"])
@pytest.mark.parametrize("output", ["prototxt", "caffemodel"])
@pytest.mark.parametrize("call", ["save", "fold.save", "cli fold"])
def test_output_that_is_an_input_is_refused(model: tuple[Path, Path], tmp_path: Path,
                                            alias: str, target: str, output: str,
                                            call: str) -> None:
    """An output naming an input file in any way: OutputError, and the input is unchanged."""
    prototxt, caffemodel = model
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    victim = prototxt if target == "prototxt" else caffemodel
    colliding = ALIASES[alias](victim, scratch)
    outs = {"prototxt": scratch / "o.prototxt", "caffemodel": scratch / "o.caffemodel"}
    outs[output] = colliding
    with _untouched(prototxt, caffemodel):
        if call == "cli fold":
            code, text = _cli("fold", str(prototxt), str(caffemodel), "-o", str(outs["prototxt"]),
                              "-w", str(outs["caffemodel"]), "-q")
            assert code == 1
            assert text.startswith(f"error: {colliding}: is the input file "), text
            assert "choose another output path" in text
        else:
            with pytest.raises(bnfuse.OutputError, match="is the input file") as info:
                if call == "save":
                    net = bnfuse.load(prototxt, caffemodel)
                    bnfuse.save(net, outs["prototxt"], outs["caffemodel"])
                else:
                    bnfuse.fold(prototxt, caffemodel).save(outs["prototxt"], outs["caffemodel"])
            assert str(info.value).startswith(f"{colliding}: is the input file ")
    # Nothing was written: no output beside the scratch links, no temp files anywhere.
    leftovers = {p.name for p in scratch.iterdir()} - {colliding.name}
    assert leftovers == set()
    assert sorted(p.name for p in prototxt.parent.iterdir()) == ["net.caffemodel",
                                                                 "net.prototxt"]


def test_prototxt_and_caffemodel_outputs_may_not_be_one_file(model: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    """Both outputs pointing at one path is refused too (the second would replace the first)."""
    prototxt, caffemodel = model
    with _untouched(prototxt, caffemodel), pytest.raises(bnfuse.OutputError,
                                                         match="are the same file"):
        bnfuse.fold(prototxt, caffemodel).save(tmp_path / "x", tmp_path / "x")
    assert not (tmp_path / "x").exists()
