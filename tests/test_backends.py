"""Backends: numpy vs OpenCV verdicts, OpenCV availability checks, the pycaffe child protocol.

The pycaffe backend is tested without Caffe: a fake ``caffe`` package written to
``tmp_path`` (put on the child's ``PYTHONPATH``) implements just enough of
pycaffe's API with numpy, and a second fake aborts the process like a failed
``CHECK`` does.
"""

from __future__ import annotations

import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from bnfuse.errors import BackendUnavailableError, BnfuseError, UnsupportedLayerError
from bnfuse.net import load
from bnfuse.verification.backends import BACKENDS, get_backend, net_files
from bnfuse.verification.compare import verify
from tests.conftest import golden_cases, shared_path
from tests.test_compare import fold_bn, fresh, golden

# OpenCV cannot run BatchNorm in training mode (use_global_stats: false) and ignores
# InnerProduct's transpose (the backend refuses it).
OPENCV_CASES = [case for case in golden_cases()
                if case not in ("global_stats_off", "innerproduct_transpose_bn")]


def _cv2_or_skip() -> None:
    pytest.importorskip("cv2")


# --------------------------------------------------------------------------- numpy


def test_backend_names() -> None:
    assert BACKENDS == ("numpy", "opencv", "onnxruntime", "pycaffe")
    with pytest.raises(BnfuseError, match="unknown verification backend"):
        get_backend("onnx")


def test_numpy_backend_matches_caffe_reference() -> None:
    folder = shared_path("golden", "grouped_dilated_strided_conv")
    reference = np.load(folder / "blobs.npz")
    run = get_backend("numpy")
    blobs = run((folder / "model.prototxt", folder / "model.caffemodel"),
                {"data": reference["input:data"]})
    np.testing.assert_allclose(blobs["conv1"], reference["blob:conv1"], rtol=0, atol=1e-4)


def test_net_files_saves_edited_nets_only() -> None:
    prototxt, caffemodel = golden("conv_bn_scale_inplace")
    net = load(prototxt, caffemodel)
    with net_files(net) as (p, m):
        assert (p, m) == (prototxt, caffemodel)  # unedited: the original files
    folded = fold_bn(fresh("conv_bn_scale_inplace"), "conv1", "bn1", "sc1")
    with net_files(folded) as (p, m):
        assert p != prototxt and m is not None and m.exists()
        kept = p
    assert not kept.exists()  # the temporary copy is removed


# --------------------------------------------------------------------------- opencv


@pytest.mark.parametrize("case", OPENCV_CASES)
def test_opencv_and_numpy_agree_on_an_unchanged_net(case: str) -> None:
    _cv2_or_skip()
    prototxt, caffemodel = golden(case)
    inputs = shared_path("golden", case, "blobs.npz")
    for backend in ("numpy", "opencv"):
        result = verify((prototxt, caffemodel), (prototxt, caffemodel), inputs=inputs,
                        backend=backend)
        assert result.passed, (backend, result.summary())
        assert result.blobs


def test_opencv_matches_caffe_reference() -> None:
    _cv2_or_skip()
    folder = shared_path("golden", "conv_bn_scale_renamed_tops")
    reference = np.load(folder / "blobs.npz")
    blobs = get_backend("opencv")((folder / "model.prototxt", folder / "model.caffemodel"),
                                  {"data": reference["input:data"]})
    # Every layer's final output is observable, in Caffe's shapes.
    assert set(blobs) == {"data", "conv1", "conv1/bn", "conv1/scale", "conv2"}
    for name in ("conv1", "conv1/bn", "conv1/scale", "conv2"):
        expected = reference[f"blob:{name}"]
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(blobs[name], expected, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize(("case", "fold", "first"), [
    ("bn_without_scale_eps", {"producer": "conv1", "bn": "bn1", "eps": 1e-5}, "conv1"),
    ("conv_bn_scale_inplace",
     {"producer": "conv1", "bn": "bn1", "scale": "sc1", "use_factor": False}, "conv1"),
    ("deconv_grouped", {"producer": "up", "bn": "up/bn", "scale": "up/scale",
                        "deconv_groups_ignored": True}, "up"),
    ("conv_bn_scale_renamed_tops", {"producer": "conv1", "bn": "conv1/bn",
                                    "scale": "conv1/scale", "use_factor": False}, "conv1/scale"),
])
def test_opencv_and_numpy_agree_on_wrong_folds(case: str, fold: dict[str, object],
                                               first: str) -> None:
    _cv2_or_skip()
    inputs = shared_path("golden", case, "blobs.npz")
    for backend in ("numpy", "opencv"):
        wrong = fold_bn(fresh(case), **fold)  # type: ignore[arg-type]
        result = verify(golden(case), wrong, inputs=inputs, backend=backend)
        assert not result.passed, backend
        assert result.first_divergence == first, backend
        right_fold = {k: v for k, v in fold.items()
                      if k not in ("eps", "use_factor", "deconv_groups_ignored")}
        right = verify(golden(case), fold_bn(fresh(case), **right_fold),  # type: ignore[arg-type]
                       inputs=inputs, backend=backend)
        assert right.passed, (backend, right.summary())


def test_opencv_refuses_transposed_inner_product() -> None:
    _cv2_or_skip()
    prototxt, caffemodel = golden("innerproduct_transpose_bn")
    with pytest.raises(BnfuseError, match="transpose"):
        verify((prototxt, caffemodel), (prototxt, caffemodel), backend="opencv")


def test_opencv_rejects_float64() -> None:
    _cv2_or_skip()
    prototxt, caffemodel = golden("conv_bn_scale_inplace")
    with pytest.raises(BnfuseError, match="float32 only"):
        verify((prototxt, caffemodel), (prototxt, caffemodel), backend="opencv",
               dtype=np.float64)


def test_opencv_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    prototxt, caffemodel = golden("conv_bn_scale_inplace")
    with pytest.raises(BackendUnavailableError, match=r'pip install "bnfuse\[verify\]"'):
        verify((prototxt, caffemodel), (prototxt, caffemodel), backend="opencv")


def test_opencv_5_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("cv2")
    fake.__version__ = "5.0.0"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cv2", fake)
    from bnfuse.verification.backends.opencv_backend import import_cv2

    with pytest.raises(BackendUnavailableError, match="removed readNetFromCaffe"):
        import_cv2()


def _opencv_run_quietly(text: bytes, inputs: dict[str, np.ndarray],
                        capfd: pytest.CaptureFixture[str]) -> UnsupportedLayerError:
    """Run ``text`` with OpenCV, expect its failure; check nothing reached stderr."""
    import cv2

    from bnfuse.verification.backends.opencv_backend import run

    level = cv2.utils.logging.getLogLevel()
    with pytest.raises(UnsupportedLayerError) as caught:
        run(load(text), inputs)
    assert cv2.utils.logging.getLogLevel() == level  # OpenCV's log level is restored
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    assert "\n" not in str(caught.value)
    return caught.value


def test_opencv_refuses_a_40_axis_input_in_one_line(capfd: pytest.CaptureFixture[str]) -> None:
    _cv2_or_skip()
    dims = " ".join(["dim: 1"] * 40)
    text = (f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} '
            '} }\nlayer { name: "relu" type: "ReLU" bottom: "data" top: "out" }').encode()
    error = _opencv_run_quietly(text, {"data": np.zeros((1,) * 40, np.float32)}, capfd)
    assert str(error) == ("<prototxt bytes>: OpenCV refuses input 'data': Bad argument: in "
                          "function 'setInput': blob dimensionality (=40) is too high; verify "
                          "this net with the numpy backend")
    assert error.path == "<prototxt bytes>"


def test_opencv_logs_nothing_when_a_layer_fails(capfd: pytest.CaptureFixture[str]) -> None:
    _cv2_or_skip()
    # Concat of 3x3 and 4x4 maps: OpenCV logs five [ERROR] lines and raises, unless silenced.
    text = b'''layer { name: "data" type: "Input" top: "a" top: "b"
        input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 }
                      shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "out" }'''
    inputs = {"a": np.zeros((1, 2, 3, 3), np.float32), "b": np.zeros((1, 2, 4, 4), np.float32)}
    error = _opencv_run_quietly(text, inputs, capfd)
    assert str(error).startswith("<prototxt bytes>: OpenCV forward pass failed: Incorrect size "
                                 "of input array: Inconsistent shape for ConcatLayer")


def test_opencv_turns_off_fusion_and_winograd() -> None:
    from bnfuse.verification.backends.opencv_backend import _configure

    calls: list[tuple[str, object]] = []

    class OldNet:  # an OpenCV release without Winograd convolutions
        def enableFusion(self, on: bool) -> None:  # noqa: N802 - OpenCV's names
            calls.append(("fusion", on))

        def setPreferableBackend(self, value: int) -> None:  # noqa: N802
            calls.append(("backend", value))

        def setPreferableTarget(self, value: int) -> None:  # noqa: N802
            calls.append(("target", value))

    class NewNet(OldNet):
        def enableWinograd(self, on: bool) -> None:  # noqa: N802
            calls.append(("winograd", on))

    cv2 = types.SimpleNamespace(dnn=types.SimpleNamespace(DNN_BACKEND_OPENCV=3, DNN_TARGET_CPU=0))
    _configure(cv2, NewNet())
    assert calls == [("fusion", False), ("winograd", False), ("backend", 3), ("target", 0)]
    del calls[:]
    _configure(cv2, OldNet())
    assert calls == [("fusion", False), ("backend", 3), ("target", 0)]


# --------------------------------------------------------------------------- pycaffe

_FAKE_CAFFE = '''
"""A fake pycaffe: Net runs Input -> ReLU nets (enough to test the child protocol)."""
import os
import numpy as np

TEST = 1
TRAIN = 0
MODE = []


def set_mode_cpu():
    MODE.append("cpu")


class Blob:
    def __init__(self, shape):
        self.data = np.zeros(shape, dtype=np.float32)

    def reshape(self, *shape):
        self.data = np.zeros(shape, dtype=np.float32)


class Net:
    def __init__(self, prototxt, *args):
        assert os.path.exists(prototxt), prototxt
        if len(args) == 2:
            assert os.path.exists(args[0]), args[0]
        assert args[-1] == TEST
        self.blobs = {"data": Blob((1, 1)), "data_data_0_split_0": Blob((1, 1)),
                      "out": Blob((1, 1))}

    def reshape(self):
        shape = self.blobs["data"].data.shape
        self.blobs["out"].reshape(*shape)
        self.blobs["data_data_0_split_0"].reshape(*shape)

    def forward(self):
        x = self.blobs["data"].data
        self.blobs["data_data_0_split_0"].data[...] = x
        self.blobs["out"].data[...] = np.maximum(x, 0) * 2
        return {"out": self.blobs["out"].data}
'''

_ABORTING_CAFFE = '''
import os
import sys

TEST = 1


def set_mode_cpu():
    pass


class Net:
    def __init__(self, *args):
        sys.stderr.write("I0101 net.cpp:100] Initializing net\\n")
        sys.stderr.write("F0101 blob.cpp:32] Check failed: shape[i] >= 0 (-1 vs. 0)\\n")
        sys.stderr.flush()
        os.abort()
'''

_NET = b"""
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "relu" type: "ReLU" bottom: "data" top: "out" }
"""

_PYTHON_NET = _NET + b"""
layer { name: "py" type: "Python" bottom: "out" top: "out"
        python_param { module: "evil" layer: "Evil" } }
"""


def _fake(tmp_path: Path, source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "fakecaffe" / "caffe"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(source), encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fakecaffe"))


def test_pycaffe_child_protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(tmp_path, _FAKE_CAFFE, monkeypatch)
    x = np.array([[-1.0, 0.5, 2.0], [3.0, -4.0, 0.0]], dtype=np.float32)
    blobs = get_backend("pycaffe")(load(_NET), {"data": x})
    # Caffe's automatic split copies are dropped; declared blobs come back exactly.
    assert sorted(blobs) == ["data", "out"]
    np.testing.assert_array_equal(blobs["data"], x)
    np.testing.assert_array_equal(blobs["out"], np.maximum(x, 0) * 2)


def test_pycaffe_verify_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(tmp_path, _FAKE_CAFFE, monkeypatch)
    result = verify(load(_NET), load(_NET), backend="pycaffe")
    assert result.passed and [b.name for b in result.blobs] == ["out"]


def test_pycaffe_crash_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(tmp_path, _ABORTING_CAFFE, monkeypatch)
    with pytest.raises(BnfuseError, match="Check failed: shape") as info:
        get_backend("pycaffe")(load(_NET), {"data": np.zeros((2, 3), np.float32)})
    assert "SIGABRT" in str(info.value)
    assert "\n" not in str(info.value)  # one line, for the CLI


def test_pycaffe_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # nothing called caffe there
    with pytest.raises(BackendUnavailableError, match="Caffe's Python module") as info:
        get_backend("pycaffe")(load(_NET), {"data": np.zeros((2, 3), np.float32)})
    assert "PYTHONPATH" in str(info.value) and "No module named 'caffe'" in str(info.value)


def test_pycaffe_refuses_python_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(tmp_path, _FAKE_CAFFE, monkeypatch)
    run = get_backend("pycaffe")
    with pytest.raises(UnsupportedLayerError, match="allow_python_layers"):
        run(load(_PYTHON_NET), {"data": np.zeros((2, 3), np.float32)})
    # Allowed explicitly, the net reaches Caffe (here the fake, which ignores the layer).
    blobs = run(load(_PYTHON_NET), {"data": np.ones((2, 3), np.float32)},
                allow_python_layers=True)
    np.testing.assert_array_equal(blobs["out"], np.full((2, 3), 2.0, np.float32))


def test_pycaffe_rejects_float64() -> None:
    with pytest.raises(BnfuseError, match="float32 only"):
        get_backend("pycaffe")(load(_NET), {}, dtype=np.float64)


@pytest.mark.parametrize("case", OPENCV_CASES)
def test_opencv_every_golden_blob_matches_caffe(case: str) -> None:
    """OpenCV with fusion off agrees with real Caffe (its fusion breaks grouped deconvolution)."""
    _cv2_or_skip()
    folder = shared_path("golden", case)
    reference = np.load(folder / "blobs.npz")
    inputs = {k[len("input:"):]: reference[k] for k in reference.files if k.startswith("input:")}
    blobs = get_backend("opencv")((folder / "model.prototxt", folder / "model.caffemodel"), inputs)
    compared = 0
    for key in reference.files:
        name = key[len("blob:"):]
        if key.startswith("blob:") and name in blobs and name not in inputs:
            expected = reference[key]
            scale = max(float(np.abs(expected).max()), 1e-6)
            np.testing.assert_allclose(blobs[name], expected, rtol=0, atol=1e-4 * scale,
                                       err_msg=name)
            compared += 1
    assert compared >= 1
