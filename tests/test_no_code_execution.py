"""Reading, folding and inspecting a model never runs its code or opens its file paths.

A prototxt can name a Python module (``python_param { module: ... }``) and
files (``mean_file``, ``source`` of data layers, ...).  Caffe imports and opens
them; bnfuse must not: a model file is data.  An audit hook
(:func:`sys.addaudithook`) records every ``import`` and ``open`` event while
bnfuse runs, so the assertions see every way Python could reach a module or a
file, not only the ones a monkeypatch would catch.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bnfuse
from bnfuse.cli import main
from bnfuse.proto import NetParameter

#: The event list of the active _watch() block, if any (an audit hook cannot be removed,
#: so the one hook installed below records only while a block is active).
_ACTIVE: list[list[tuple[str, str]]] = []


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not _ACTIVE:
        return
    if event == "import":
        _ACTIVE[-1].append((event, str(args[0])))
    elif event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _ACTIVE[-1].append((event, os.fsdecode(args[0])))


sys.addaudithook(_hook)


@contextlib.contextmanager
def _watch() -> Iterator[list[tuple[str, str]]]:
    events: list[tuple[str, str]] = []
    _ACTIVE.append(events)
    try:
        yield events
    finally:
        _ACTIVE.pop()


MODULE = '''
"""A Python layer module whose import must never happen."""
from pathlib import Path
Path({marker!r}).write_text("imported")
raise RuntimeError("the Python layer module was imported")
'''


def _python_layer_model(folder: Path) -> tuple[Path, Path, Path]:
    """A Conv + BatchNorm net whose output goes through a Python layer; the module is armed."""
    marker = folder / "IMPORTED"
    modules = folder / "modules"
    modules.mkdir()
    (modules / "evil_layer.py").write_text(MODULE.format(marker=str(marker)))
    prototxt = folder / "py.prototxt"
    prototxt.write_text("""
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "py" type: "Python" bottom: "conv" top: "out"
        python_param { module: "evil_layer" layer: "Evil"
                       param_str: "__import__('os').system('touch PWNED')" } }
""")
    net = NetParameter()
    conv = net.layer.add(name="conv", type="Convolution")
    for shape in ((2, 2, 1, 1), (2,)):
        blob = conv.blobs.add()
        blob.shape.dim.extend(shape)
        blob.data.extend(np.ones(int(np.prod(shape))).tolist())
    bn = net.layer.add(name="bn", type="BatchNorm")
    for values in ([0.0, 1.0], [1.0, 2.0], [1.0]):
        blob = bn.blobs.add()
        blob.shape.dim.append(len(values))
        blob.data.extend(values)
    caffemodel = folder / "py.caffemodel"
    caffemodel.write_bytes(net.SerializeToString())
    return prototxt, caffemodel, marker


def _cli(*args: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(list(args))


def test_python_layer_module_is_never_imported(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """load, fold, save, inspect, verify: the module on sys.path is never imported."""
    prototxt, caffemodel, marker = _python_layer_model(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    with _watch() as events:
        net = bnfuse.load(prototxt, caffemodel)
        assert net.layer("py").type == "Python"
        result = bnfuse.fold(prototxt, caffemodel)
        result.save(out / "f.prototxt", out / "f.caffemodel")
        assert _cli("inspect", str(prototxt), str(caffemodel)) == 0
        assert _cli("fold", str(prototxt), str(caffemodel), "-o", str(out / "g.prototxt"),
                    "-w", str(out / "g.caffemodel")) == 0
        # verify needs to run the Python layer, which it refuses rather than import.
        with pytest.raises(bnfuse.BnfuseError):
            from bnfuse.verification.compare import verify

            verify((prototxt, caffemodel), (out / "f.prototxt", out / "f.caffemodel"))
        # The CLI falls back to comparing the changed layers locally, around the Python layer.
        assert _cli("verify", str(prototxt), str(caffemodel), str(out / "f.prototxt"),
                    str(out / "f.caffemodel")) in (0, 1)
    assert not marker.exists()
    assert not (tmp_path / "PWNED").exists()
    assert "evil_layer" not in sys.modules
    assert not [name for kind, name in events if kind == "import" and "evil" in name]
    assert not [path for kind, path in events if "evil_layer" in path]


def test_file_paths_inside_a_prototxt_are_never_opened(tmp_path: Path) -> None:
    """mean_file, data sources, ... point at a FIFO and at real files: none is opened."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading would block: a hang would show too
    bait = {name: tmp_path / name for name in
            ("mean.binaryproto", "train_lmdb", "list.txt", "h5list.txt", "windows.txt",
             "labels.txt", "mean_image.jpg")}
    for path in bait.values():
        path.write_bytes(b"x")
    prototxt = tmp_path / "data.prototxt"
    prototxt.write_text(f"""
layer {{ name: "data" type: "Data" top: "data" top: "label"
        include {{ phase: TEST }}
        transform_param {{ mean_file: "{bait['mean.binaryproto']}" scale: 0.5 }}
        data_param {{ source: "{bait['train_lmdb']}" batch_size: 1 backend: LMDB }} }}
layer {{ name: "img" type: "ImageData" top: "img" top: "l2"
        transform_param {{ mean_file: "{fifo}" }}
        image_data_param {{ source: "{bait['list.txt']}" root_folder: "{tmp_path}/" }} }}
layer {{ name: "h5" type: "HDF5Data" top: "h5"
        hdf5_data_param {{ source: "{bait['h5list.txt']}" }} }}
layer {{ name: "win" type: "WindowData" top: "win" top: "l3"
        window_data_param {{ source: "{bait['windows.txt']}" mean_file: "{fifo}" }} }}
layer {{ name: "out" type: "HDF5Output" bottom: "data" bottom: "label"
        hdf5_output_param {{ file_name: "{fifo}" }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param {{ num_output: 2 kernel_size: 1 }} }}
layer {{ name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }}
""")
    out = tmp_path / "out"
    out.mkdir()
    forbidden = {str(fifo), *map(str, bait.values())}
    with _watch() as events:
        bnfuse.load(prototxt)
        bnfuse.fold(prototxt).save(out / "f.prototxt")
        assert _cli("inspect", str(prototxt)) == 0
        with contextlib.suppress(bnfuse.BnfuseError):
            from bnfuse.verification.randweights import random_weights

            random_weights(prototxt)
    opened = [path for kind, path in events if kind == "open"]
    assert str(prototxt) in opened  # the hook works: the prototxt itself was seen
    assert not [p for p in opened if os.path.abspath(p) in forbidden or p in forbidden]
    assert all(p.read_bytes() == b"x" for p in bait.values())
