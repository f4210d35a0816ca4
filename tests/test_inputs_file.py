"""``--inputs`` / ``verify(inputs=...)``: every array is checked from its header, against the net,
before anything is read or cast.

Each case used to end in a traceback, a huge allocation or a silent pass on random data.
"""

from __future__ import annotations

import io
import os
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import bnfuse
from bnfuse.cli import main
from bnfuse.errors import BnfuseError
from bnfuse.verification.compare import load_inputs

PROTOTXT = b"""layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
layer { name: "relu" type: "ReLU" bottom: "data" top: "out" }
"""


def _net() -> bnfuse.Net:
    return bnfuse.load(PROTOTXT)


def _npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False,
                                               "shape": shape})
    return out.getvalue()


def _zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _refused(inputs: object, *words: str) -> str:
    with pytest.raises(BnfuseError) as info:
        bnfuse.verify(_net(), _net(), inputs=inputs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


def test_a_242_byte_npz_asking_for_10_9_tib_is_refused_from_its_header(tmp_path: Path) -> None:
    shape = (1, 3, 706_000, 706_000)  # float64: 11,962,464,000,000 bytes = 10.9 TiB
    path = _zip(tmp_path / "bomb.npz", {"data.npy": _npy_header(shape, "<f8")},
                zipfile.ZIP_STORED)
    assert path.stat().st_size == 242
    tracemalloc.start()
    try:
        with pytest.raises(BnfuseError) as info:
            load_inputs(path, max_bytes=2**30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20  # nothing near the claimed size was allocated
    message = str(info.value)
    assert message.startswith(f"{path}: member 'data.npy': the array 'data' of shape "
                              "(1, 3, 706000, 706000) and dtype float64 would take 10.9 TiB")
    assert "more than the memory budget of 1.0 GiB" in message
    # Through verify the net's declared shape refuses it first.
    _refused(path, "input 'data' has shape (1, 3, 706000, 706000), the net expects "
                   "(1, 2, 4, 4)")


def test_a_npy_file_is_named_and_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.npy"
    np.save(path, np.zeros((1, 2, 4, 4), np.float32))
    _refused(path, f"{path}: is a .npy file (one unnamed array)", "numpy.savez")


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    _refused(path, f"{path}: the inputs file is empty")


def test_a_bad_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04 this is no zip at all" * 4)
    _refused(path, f"{path}: is not a .npz (zip) file")


def test_a_missing_file_and_a_folder(tmp_path: Path) -> None:
    _refused(tmp_path / "absent.npz", f"{tmp_path / 'absent.npz'}: no such file")
    _refused(tmp_path, f"{tmp_path}: is a folder")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "inputs.npz"
    os.mkfifo(fifo)
    _refused(fifo, f"{fifo}: is not a regular file")


def test_object_arrays_are_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, data=np.array([{"a": 1}, None], dtype=object))
    _refused(path, "input 'data' is an array of object dtype object")


def test_structured_arrays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "structured.npz"
    np.savez(path, data=np.zeros((1, 2, 4, 4), dtype=[("x", "<f4"), ("y", "<i4")]))
    _refused(path, "input 'data' is an array of structured dtype")


def test_complex_and_bool_arrays_are_refused(tmp_path: Path) -> None:
    for dtype in (np.complex64, np.bool_):
        path = tmp_path / f"{np.dtype(dtype).name}.npz"
        np.savez(path, data=np.zeros((1, 2, 4, 4), dtype=dtype))
        _refused(path, f"input 'data' has dtype {np.dtype(dtype).name}; inputs must be real "
                       "numbers")


def test_a_key_that_is_no_net_input_is_an_error(tmp_path: Path) -> None:
    # Before, the misnamed key was dropped and the check "passed" on random data.
    path = tmp_path / "misnamed.npz"
    np.savez(path, image=np.zeros((1, 2, 4, 4), np.float32))
    _refused(path, "'image' is not an input of the net (its inputs: 'data')")
    prefixed = tmp_path / "prefixed.npz"
    np.savez(prefixed, **{"input:image": np.zeros((1, 2, 4, 4), np.float32),
                          "out": np.zeros((1, 2, 4, 4), np.float32)})
    _refused(prefixed, "'image' is not an input of the net")


def test_a_shape_that_differs_from_the_input_layer_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "shape.npz"
    np.savez(path, data=np.zeros((1, 2, 8, 8), np.float32))
    _refused(path, f"{path}: input 'data' has shape (1, 2, 8, 8), the net expects (1, 2, 4, 4)")


def test_a_truncated_member_is_refused(tmp_path: Path) -> None:
    data = _npy_header((1, 2, 4, 4)) + b"\x00" * 16  # 16 of the 128 bytes announced
    path = _zip(tmp_path / "short.npz", {"data.npy": data})
    _refused(path, "member 'data.npy': holds", "the file is truncated or corrupt")


def test_a_member_that_is_no_npy(tmp_path: Path) -> None:
    path = _zip(tmp_path / "odd.npz", {"data.npy": b"not a numpy header at all"})
    _refused(path, "member 'data.npy': not a readable .npy header")
    path = _zip(tmp_path / "txt.npz", {"notes.txt": b"hello"})
    _refused(path, "member 'notes.txt' is not a .npy array")


def test_an_inputs_file_larger_than_the_budget_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.npz"
    np.savez(path, data=np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(BnfuseError, match=r"the inputs file is \d+ bytes, more than the "
                                          r"memory budget of 100 B"):
        load_inputs(path, max_bytes=100)


def test_good_inputs_still_work(tmp_path: Path) -> None:
    path = tmp_path / "good.npz"
    value = np.arange(32, dtype=np.float64).reshape(1, 2, 4, 4) - 16
    np.savez(path, data=value)
    loaded = load_inputs(path, {"data": (1, 2, 4, 4)})
    assert loaded["data"].dtype == np.float64 and np.array_equal(loaded["data"], value)
    result = bnfuse.verify(_net(), _net(), inputs=path)
    assert result.passed and [blob.name for blob in result.blobs] == ["out"]
    # int arrays are numbers too (cast to the working dtype).
    np.savez(path, data=np.ones((1, 2, 4, 4), np.int32))
    assert bnfuse.verify(_net(), _net(), inputs=path).passed


def test_mapping_inputs_are_checked_the_same_way() -> None:
    _refused({"image": np.zeros((1, 2, 4, 4))}, "inputs: 'image' is not an input of the net")
    _refused({"data": np.zeros((2, 2, 4, 4))}, "inputs: input 'data' has shape (2, 2, 4, 4), "
                                               "the net expects (1, 2, 4, 4)")
    _refused({"data": np.array([None] * 32, dtype=object).reshape(1, 2, 4, 4)},
             "inputs: input 'data' is an array of object dtype")
    with pytest.raises(TypeError, match="verify: the keys of inputs must be blob names"):
        bnfuse.verify(_net(), _net(), inputs={3: np.zeros((1, 2, 4, 4))})  # type: ignore[dict-item]


def test_a_blob_read_before_it_is_written_accepts_any_shape() -> None:
    net = bnfuse.load(b'layer { name: "relu" type: "ReLU" bottom: "x" top: "y" }')
    result = bnfuse.verify(net, net, inputs={"x": np.ones((3, 5), np.float32)})
    assert result.passed and result.blobs[0].shape_a == (3, 5)


def test_cli_inputs_path_with_a_newline_is_escaped(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    model = [str(bnfuse.example_path(kind)) for kind in ("prototxt", "caffemodel")]
    odd = tmp_path / "in\nputs.npz"
    odd.write_bytes(b"")
    assert main(["verify", *model, *model, "--inputs", str(odd), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err == f"error: {tmp_path}/in\\nputs.npz: the inputs file is empty; write it with " \
                  "numpy.savez(path, data=array)\n"
