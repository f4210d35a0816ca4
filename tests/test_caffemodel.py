"""Caffemodel bytes: indexing real and hand-built files, clean errors, streaming writes."""

from __future__ import annotations

import hashlib
import io
import os
import struct
from pathlib import Path
from typing import Any

import google.protobuf
import numpy as np
import pytest
from conftest import golden_cases, real_models, shared_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnfuse.errors import CaffemodelError, OutputError
from bnfuse.io import caffemodel as cm
from bnfuse.io.caffemodel import (
    MAX_CAFFEMODEL_BYTES,
    V1_TYPE_NAMES,
    CaffemodelFile,
    LayerRecord,
    NewLayer,
    caffemodel_size,
    read_caffemodel,
    write_caffemodel,
)
from bnfuse.io.wire import encode_len_header, encode_tag, encode_varint, iter_fields, read_field
from bnfuse.proto import (
    TRAIN,
    BlobProto,
    LayerParameter,
    NetParameter,
    Phase,
    V1LayerParameter,
)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _model_paths() -> list[tuple[str, str]]:
    cases = [("golden", name) for name in golden_cases()]
    cases += [("corpus/real", name) for name in real_models()]
    return cases


def _shared_model(kind: str, name: str) -> Path:
    return shared_path(*kind.split("/"), name, "model.caffemodel")


def _reencoded(
    record: LayerRecord, data: bytes, arrays: list[np.ndarray] | None = None
) -> NewLayer:
    """``record`` (from the file ``data``) rebuilt: its exact header bytes, the blobs where
    they were and in their encodings, with ``arrays`` (default: its own) as values."""
    # Everything between the record's length prefix and its first blob is header.
    payload_start = read_field(data, record.start, record.end).value_start
    return NewLayer(
        record.header_bytes(),
        record.arrays() if arrays is None else arrays,
        formats=record.blobs,
        version=record.version,
        blob_offset=record.blobs[0].start - payload_start,
        name=record.name,
    )


def _reference_arrays(blob: BlobProto) -> np.ndarray:
    """What protobuf itself gives for a blob, reshaped like Caffe does."""
    if len(blob.double_data):
        values = np.array(blob.double_data, np.float64)
    else:
        values = np.array(blob.data, np.float32)
    if (
        blob.HasField("num")
        or blob.HasField("channels")
        or blob.HasField("height")
        or (blob.HasField("width"))
    ):
        shape: tuple[int, ...] = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = tuple(blob.shape.dim)
    return values.reshape(shape)


# ---------------------------------------------------------------------------
# Real files: golden fixtures and the real-Caffe corpus
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "name"), _model_paths())
def test_real_file_matches_protobuf(kind: str, name: str) -> None:
    path = _shared_model(kind, name)
    before = _sha(path)
    net = NetParameter.FromString(path.read_bytes())
    with read_caffemodel(path) as model:
        assert model.source == str(path)
        assert model.size == path.stat().st_size
        layers: list[Any] = list(net.layer) if model.version == 2 else list(net.layers)
        assert len(model.layers) == len(layers) > 0
        for record, layer in zip(model.layers, layers, strict=True):
            assert record.name == layer.name
            assert len(record.blobs) == len(layer.blobs)
            for blob_record, blob in zip(record.blobs, layer.blobs, strict=True):
                expected = _reference_arrays(blob)
                got = blob_record.array()
                assert got.shape == expected.shape == blob_record.shape
                assert got.dtype == expected.dtype
                # Bit-exact, NaN payloads and signed zeros included.
                assert got.tobytes() == expected.tobytes()
            header = record.header()
            reference = type(layer)()
            reference.CopyFrom(layer)
            reference.ClearField("blobs")
            assert header == reference
            assert not record.header_fallback
        top = NetParameter()
        top.CopyFrom(net)
        top.ClearField("layer")
        top.ClearField("layers")
        assert model.net_header() == top
    assert _sha(path) == before


@pytest.mark.parametrize(("kind", "name"), _model_paths())
def test_real_file_rewritten_unchanged_is_identical(kind: str, name: str, tmp_path: Path) -> None:
    path = _shared_model(kind, name)
    before = _sha(path)
    out = tmp_path / "out.caffemodel"
    with read_caffemodel(path) as model:
        write_caffemodel(out, model.layers, source=model)
        assert caffemodel_size(model.layers, source=model) == model.size
    assert _sha(out) == before
    assert _sha(path) == before


@pytest.mark.parametrize(("kind", "name"), _model_paths())
def test_real_file_reencoded_blobs_are_identical(kind: str, name: str, tmp_path: Path) -> None:
    # Every layer re-encoded from its arrays: the writer reproduces Caffe's byte layout.
    path = _shared_model(kind, name)
    out = tmp_path / "out.caffemodel"
    data = path.read_bytes()
    with read_caffemodel(path) as model:
        entries = [_reencoded(r, data) if r.blobs else r for r in model.layers]
        assert all(
            isinstance(e, NewLayer) for e, r in zip(entries, model.layers, strict=True) if r.blobs
        )
        write_caffemodel(out, entries, source=model)
    assert _sha(out) == _sha(path)


def test_v1_legacy_format() -> None:
    path = shared_path("golden", "v1_legacy_format", "model.caffemodel")
    with read_caffemodel(path) as model:
        assert model.version == 1
        assert [(r.name, r.type, r.version) for r in model.layers] == [
            ("conv1", "Convolution", 1),
            ("relu1", "ReLU", 1),
            ("fc", "InnerProduct", 1),
            ("prob", "Softmax", 1),
        ]
        conv, fc = model.layers[0], model.layers[2]
        assert [(b.shape, b.legacy_shape) for b in conv.blobs] == [
            ((4, 3, 3, 3), True),
            ((1, 1, 1, 4), True),
        ]
        assert [b.shape for b in fc.blobs] == [(1, 1, 5, 144), (1, 1, 1, 5)]
        header = conv.header()
        assert isinstance(header, V1LayerParameter)
        assert list(header.blobs_lr) == [1.0, 2.0]
        assert header.convolution_param.num_output == 4
        net = model.net_header()
        assert net.name == "legacy"
        assert list(net.input) == ["data"]
        assert list(net.input_dim) == [1, 3, 8, 8]


def test_v1_type_table_matches_schema_enum() -> None:
    # Every V1 enum value of the schema has Caffe's V2 name, and nothing else is in the table.
    enum = V1LayerParameter.LayerType
    assert set(V1_TYPE_NAMES) == set(enum.values())
    assert V1_TYPE_NAMES[enum.Value("CONVOLUTION")] == "Convolution"
    assert V1_TYPE_NAMES[enum.Value("SOFTMAX_LOSS")] == "SoftmaxWithLoss"
    assert V1_TYPE_NAMES[enum.Value("DECONVOLUTION")] == "Deconvolution"
    assert V1_TYPE_NAMES[enum.Value("TANH")] == "TanH"
    assert V1_TYPE_NAMES[enum.Value("NONE")] == ""
    assert len(V1_TYPE_NAMES) == 40


def test_zero_copy_read_only_views() -> None:
    path = shared_path("corpus", "real", "mobilenet_v1", "model.caffemodel")
    model = read_caffemodel(path)
    record = next(r for r in model.layers if r.type == "Convolution")
    weights = record.blobs[0].array()
    assert record.blobs[0].encoding == "data"
    assert weights.dtype == np.dtype("<f4")
    assert not weights.flags.writeable
    assert not weights.flags.owndata
    with pytest.raises(ValueError, match="read-only"):
        weights[...] = 0
    copy = weights.copy()
    model.close()
    assert model.closed
    # Arrays handed out keep the mapping alive after close().
    assert np.array_equal(weights, copy)
    with pytest.raises(CaffemodelError, match="was closed"):
        record.blobs[0].array()


def test_every_kind_of_source_reads_the_same(tmp_path: Path) -> None:
    path = shared_path("golden", "conv_bn_scale_inplace", "model.caffemodel")
    data = path.read_bytes()
    expected = [[b.array().tobytes() for b in r.blobs] for r in read_caffemodel(data).layers]

    def arrays(model: CaffemodelFile) -> list[list[bytes]]:
        with model:
            return [[b.array().tobytes() for b in r.blobs] for r in model.layers]

    assert arrays(read_caffemodel(str(path))) == expected
    assert arrays(read_caffemodel(path)) == expected
    assert arrays(read_caffemodel(bytearray(data))) == expected
    assert arrays(read_caffemodel(memoryview(data))) == expected
    assert arrays(read_caffemodel(io.BytesIO(data))) == expected
    with path.open("rb") as handle:
        model = read_caffemodel(handle)
        assert model.fileno() is not None  # memory-mapped
        assert model.path == str(path)
        assert arrays(model) == expected
        assert not handle.closed  # the caller's file stays the caller's
    with path.open("rb") as handle:
        # Not at the start: read from here, as for any stream.  The first 3
        # bytes are the net's name field, so what remains is a nameless net.
        handle.read(3)
        with read_caffemodel(handle) as rest:
            assert rest.fileno() is None
            assert rest.net_header().name == ""
            assert [[b.array().tobytes() for b in r.blobs] for r in rest.layers] == expected


def test_bytearray_source_gives_read_only_arrays() -> None:
    data = bytearray(NewLayer(LayerParameter(name="a"), [np.ones(3, np.float32)]).to_bytes())
    values = read_caffemodel(data).layers[0].blobs[0].array()
    assert not values.flags.writeable


# ---------------------------------------------------------------------------
# Hand-built files
# ---------------------------------------------------------------------------


def _layer_bytes(header: LayerParameter, blobs: list[bytes]) -> bytes:
    body = header.SerializeToString() + b"".join(encode_len_header(7, len(b)) + b for b in blobs)
    return encode_len_header(100, len(body)) + body


def _shape_field(*dims: int) -> bytes:
    packed = b"".join(encode_varint(d) for d in dims)
    inner = encode_len_header(1, len(packed)) + packed
    return encode_len_header(7, len(inner)) + inner


def _only_blob(data: bytes) -> cm.BlobRecord:
    model = read_caffemodel(data, name="hand.caffemodel")
    (record,) = model.layers
    (blob,) = record.blobs
    return blob


def test_unpacked_float_data() -> None:
    values = [1.5, -2.0, 3.25, 0.0, 7.0, 8.0]
    blob = b"".join(encode_tag(5, 5) + struct.pack("<f", v) for v in values) + _shape_field(2, 3)
    data = _layer_bytes(LayerParameter(name="u", type="Scale"), [blob])
    record = _only_blob(data)
    assert record.encoding == "data"
    got = record.array()
    assert got.shape == (2, 3)
    assert got.tolist() == [[1.5, -2.0, 3.25], [0.0, 7.0, 8.0]]
    assert not got.flags.writeable
    reference = NetParameter.FromString(data).layer[0].blobs[0]
    assert got.ravel().tolist() == list(reference.data)


def test_padded_tags_are_read_one_by_one() -> None:
    # Tags written as two-byte varints (legal, never canonical) break the
    # one-byte-tag fast path: each element is then taken on its own.
    floats = (
        b"\xad\x00"
        + struct.pack("<f", 1.0)
        + encode_tag(5, 5)
        + struct.pack("<f", 2.0)
        + _shape_field(2)
    )
    doubles = b"\xc1\x00" + struct.pack("<d", 3.0) + _shape_field(1)
    data = _layer_bytes(LayerParameter(name="p"), [floats, doubles])
    record = read_caffemodel(data).layers[0]
    assert [(b.encoding, b.array().tolist()) for b in record.blobs] == [
        ("data", [1.0, 2.0]),
        ("double_data", [3.0]),
    ]
    if int(google.protobuf.__version__.split(".")[0]) >= 4:
        # protobuf 3.20's pure-Python parser mis-reads padded tags; newer runtimes agree.
        parsed = NetParameter.FromString(data).layer[0]
        assert list(parsed.blobs[0].data) == [1.0, 2.0]
        assert list(parsed.blobs[1].double_data) == [3.0]


def test_mixed_packed_and_unpacked_chunks_concatenate() -> None:
    packed = struct.pack("<2f", 1.0, 2.0)
    blob = (
        encode_len_header(5, len(packed))
        + packed
        + encode_tag(5, 5)
        + struct.pack("<f", 3.0)
        + encode_tag(5, 5)
        + struct.pack("<f", 4.0)
        + encode_len_header(5, 4)
        + struct.pack("<f", 5.0)
        + _shape_field(5)
    )
    data = _layer_bytes(LayerParameter(name="m"), [blob])
    assert _only_blob(data).array().tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert list(NetParameter.FromString(data).layer[0].blobs[0].data) == [1, 2, 3, 4, 5]


def test_double_data_packed() -> None:
    proto = BlobProto(double_data=[0.1, 0.2, 1e300])
    proto.shape.dim.append(3)
    record = _only_blob(_layer_bytes(LayerParameter(name="d"), [proto.SerializeToString()]))
    assert record.encoding == "double_data"
    assert record.dtype == np.dtype("<f8")
    assert record.array().tolist() == [0.1, 0.2, 1e300]
    assert not record.array().flags.owndata


def test_double_data_unpacked() -> None:
    blob = b"".join(encode_tag(8, 1) + struct.pack("<d", v) for v in (0.1, -0.5)) + _shape_field(2)
    data = _layer_bytes(LayerParameter(name="d"), [blob])
    assert _only_blob(data).array().tolist() == [0.1, -0.5]
    assert list(NetParameter.FromString(data).layer[0].blobs[0].double_data) == [0.1, -0.5]


def test_double_data_wins_over_data_like_caffe() -> None:
    proto = BlobProto(data=[9.0, 9.0], double_data=[1.0, 2.0])
    proto.shape.dim.append(2)
    record = _only_blob(_layer_bytes(LayerParameter(name="d"), [proto.SerializeToString()]))
    assert record.array().tolist() == [1.0, 2.0]


@pytest.mark.parametrize(
    ("type_name", "dtype"),
    [("FLOAT16", "<f2"), ("FLOAT", "<f4"), ("DOUBLE", "<f8")],
)
def test_raw_data(type_name: str, dtype: str) -> None:
    values = np.array([[0.5, -1.0], [65504.0, 2.0**-14]], dtype=dtype)
    proto = BlobProto(raw_data_type=type_name, raw_data=values.tobytes())
    proto.shape.dim.extend([2, 2])
    record = _only_blob(_layer_bytes(LayerParameter(name="r"), [proto.SerializeToString()]))
    assert record.encoding == "raw_data"
    assert record.dtype == np.dtype(dtype)
    got = record.array()
    assert got.dtype == np.dtype(dtype)
    assert got.tobytes() == values.tobytes()


def test_raw_data_unsupported_type() -> None:
    proto = BlobProto(raw_data_type="INT", raw_data=b"\x00" * 8)
    proto.shape.dim.append(2)
    data = _layer_bytes(LayerParameter(name="r"), [proto.SerializeToString()])
    with pytest.raises(CaffemodelError, match="raw_data_type 3 is not a float type"):
        read_caffemodel(data, name="x.caffemodel")


def test_legacy_dims() -> None:
    proto = BlobProto(num=1, channels=2, height=1, width=3, data=[1, 2, 3, 4, 5, 6])
    record = _only_blob(_layer_bytes(LayerParameter(name="l"), [proto.SerializeToString()]))
    assert record.legacy_shape
    assert record.shape == (1, 2, 1, 3)
    assert record.array().tolist() == [[[[1, 2, 3]], [[4, 5, 6]]]]


def test_scalar_blob_with_empty_shape() -> None:
    proto = BlobProto(data=[4.0])
    record = _only_blob(_layer_bytes(LayerParameter(name="s"), [proto.SerializeToString()]))
    assert record.shape == ()
    assert record.array().tolist() == 4.0


def test_train_phase_caffemodel_with_data_layer() -> None:
    data_layer = LayerParameter(name="data", type="Data", top=["data", "label"], phase="TRAIN")
    data_layer.include.add(phase="TRAIN")
    data_layer.transform_param.mirror = True
    data_layer.transform_param.crop_size = 227
    data_layer.data_param.source = "examples/imagenet/ilsvrc12_train_lmdb"
    data_layer.data_param.batch_size = 256
    conv = LayerParameter(name="conv1", type="Convolution", bottom=["data"], top=["conv1"])
    conv.phase = Phase.TRAIN
    conv.param.add(lr_mult=1, decay_mult=1)
    conv.convolution_param.num_output = 2
    blob = conv.blobs.add(data=[1.0, 2.0])
    blob.shape.dim.extend([2, 1, 1, 1])
    net = NetParameter(name="train")
    net.state.phase = Phase.TRAIN
    net.layer.append(data_layer)
    net.layer.append(conv)
    model = read_caffemodel(net.SerializeToString())
    assert [(r.name, r.type) for r in model.layers] == [("data", "Data"), ("conv1", "Convolution")]
    header = model.layers[0].header()
    assert isinstance(header, LayerParameter)
    assert header == data_layer
    assert header.phase == TRAIN
    conv_header = model.layers[1].header()
    assert isinstance(conv_header, LayerParameter)
    assert conv_header.phase == TRAIN
    assert conv_header.param[0].lr_mult == 1
    assert model.layers[1].blobs[0].array().ravel().tolist() == [1.0, 2.0]
    assert model.net_header().state.phase == TRAIN


def test_fork_field_collision_falls_back() -> None:
    # A fork stored its own message under number 106 (convolution_param here)
    # with a field 1 holding bytes where the schema expects a varint... and a
    # corrupt nested length: the header cannot parse, the layer still loads.
    header = LayerParameter(name="bn1", type="BN", bottom=["x"], top=["y"])
    header.param.add(lr_mult=0)
    fork_payload = encode_len_header(3, 50) + b"short"
    body = header.SerializeToString() + encode_len_header(106, len(fork_payload)) + fork_payload
    blob = BlobProto(data=[1.0, 2.0])
    blob.shape.dim.append(2)
    blob_bytes = blob.SerializeToString()
    body += encode_len_header(7, len(blob_bytes)) + blob_bytes
    data = encode_len_header(100, len(body)) + body
    model = read_caffemodel(data)
    (record,) = model.layers
    assert (record.name, record.type) == ("bn1", "BN")
    parsed = record.header()
    assert record.header_fallback
    assert (parsed.name, parsed.type, list(parsed.bottom), list(parsed.top)) == (
        "bn1",
        "BN",
        ["x"],
        ["y"],
    )
    assert isinstance(parsed, LayerParameter)
    assert parsed.param[0].lr_mult == 0
    assert record.blobs[0].array().tolist() == [1.0, 2.0]
    # The exact bytes are still there for a verbatim copy.
    assert (
        record.header_bytes()
        == header.SerializeToString() + encode_len_header(106, len(fork_payload)) + fork_payload
    )


def test_header_is_a_fresh_message_each_time() -> None:
    data = NewLayer(LayerParameter(name="a", type="ReLU", bottom=["x"]), []).to_bytes()
    record = read_caffemodel(data).layers[0]
    first = record.header()
    assert isinstance(first, LayerParameter)
    first.name = "edited"
    del first.bottom[:]
    again = record.header()
    assert isinstance(again, LayerParameter)
    assert (again.name, list(again.bottom)) == ("a", ["x"])


def test_unknown_fork_fields_are_kept_in_header() -> None:
    header = LayerParameter(name="p", type="PriorBox")
    extra = encode_len_header(203, 2) + b"\x08\x01"  # SSD's prior_box_param
    data = encode_len_header(100, len(header.SerializeToString()) + len(extra))
    data += header.SerializeToString() + extra
    record = read_caffemodel(data).layers[0]
    parsed = record.header()
    assert not record.header_fallback
    assert parsed.SerializeToString() == header.SerializeToString() + extra


def test_v0_layers_inside_v1() -> None:
    v0 = V1LayerParameter()
    v0.layer.name = "conv1"
    v0.layer.type = "conv"
    v0.layer.num_output = 2
    blob = v0.layer.blobs.add(num=2, channels=1, height=1, width=1, data=[3.0, 4.0])
    del blob
    v0.bottom.append("data")
    net = NetParameter(name="v0")
    net.layers.append(v0)
    model = read_caffemodel(net.SerializeToString())
    assert model.version == 1
    (record,) = model.layers
    assert (record.name, record.type, record.is_v0) == ("conv1", "Convolution", True)
    assert record.blobs[0].array().ravel().tolist() == [3.0, 4.0]
    header = record.header()
    assert isinstance(header, V1LayerParameter)
    assert header.layer.num_output == 2
    assert len(header.layer.blobs) == 0
    assert list(header.bottom) == ["data"]


def test_unknown_v1_enum_value_does_not_fail() -> None:
    body = encode_len_header(4, 2) + b"bn" + encode_tag(5, 0) + encode_varint(140)
    record = read_caffemodel(encode_len_header(2, len(body)) + body).layers[0]
    assert (record.name, record.type) == ("bn", "V1LayerType140")


def test_mixed_v1_and_v2_layers_refused() -> None:
    v1 = encode_len_header(4, 1) + b"a"
    v2 = LayerParameter(name="b").SerializeToString()
    data = encode_len_header(2, len(v1)) + v1 + encode_len_header(100, len(v2)) + v2
    with pytest.raises(CaffemodelError) as info:
        read_caffemodel(data, name="mixed.caffemodel")
    assert str(info.value) == (
        f"mixed.caffemodel: byte {len(v1) + 2}: the net mixes V1 'layers' and V2 'layer' "
        "records, which Caffe refuses; re-save the model with one format"
    )


def test_count_mismatch_names_layer_blob_and_counts() -> None:
    proto = BlobProto(data=[1.0, 2.0, 3.0])
    proto.shape.dim.extend([2, 2])
    data = _layer_bytes(LayerParameter(name="conv9"), [proto.SerializeToString()])
    with pytest.raises(CaffemodelError) as info:
        read_caffemodel(data, name="w.caffemodel")
    message = str(info.value)
    assert message.startswith("w.caffemodel: byte ")
    assert "layer 'conv9' blob 0: shape (2, 2) needs 4 values but the blob stores 3" in message


def test_errors_carry_file_offset_and_layer_as_fields() -> None:
    proto = BlobProto(data=[1.0, 2.0, 3.0])
    proto.shape.dim.extend([2, 2])
    blob = proto.SerializeToString()
    data = _layer_bytes(LayerParameter(name="conv9"), [blob])
    blob_start = data.find(encode_len_header(7, len(blob)) + blob)
    assert blob_start > 0
    with pytest.raises(CaffemodelError) as info:
        read_caffemodel(data, name="w.caffemodel")
    error = info.value
    assert (error.path, error.offset, error.layer) == ("w.caffemodel", blob_start, "conv9")
    assert error.detail == "layer 'conv9' blob 0: shape (2, 2) needs 4 values but the blob stores 3"
    assert str(error) == (
        f"w.caffemodel: byte {blob_start}: {error.detail}; "
        "the file is truncated or corrupt; copy or download it again"
    )
    # A wire-level failure (bnfuse.io.wire knows no file) is named after the file too.
    with pytest.raises(CaffemodelError) as info:
        read_caffemodel(data[:-3], name="cut.caffemodel")
    assert (info.value.path, info.value.offset, info.value.layer) == ("cut.caffemodel", 0, None)
    assert str(info.value).startswith("cut.caffemodel: byte 0: field 100 claims ")


def test_a_huge_layer_name_is_quoted_short() -> None:
    proto = BlobProto(data=[1.0])
    proto.shape.dim.extend([2])
    name = "n\x1b" * 50_000  # long, with terminal escapes
    data = _layer_bytes(LayerParameter(name=name), [proto.SerializeToString()])
    with pytest.raises(CaffemodelError) as info:
        read_caffemodel(data, name="w.caffemodel")
    message = str(info.value)
    assert len(message) < 250 and "\x1b" not in message and "\n" not in message
    assert "layer 'n\\x1bn\\x1b" in message and "...' blob 0: shape (2,) needs 2 values" in message
    assert info.value.layer == name


def test_blob_without_data() -> None:
    empty_shape = BlobProto()
    empty_shape.shape.dim.extend([0, 3])
    diff_only = BlobProto(diff=[1.0, 2.0])
    diff_only.shape.dim.append(2)
    ok = _only_blob(_layer_bytes(LayerParameter(name="e"), [empty_shape.SerializeToString()]))
    assert ok.encoding == "none"
    assert ok.array().shape == (0, 3)
    with pytest.raises(CaffemodelError, match=r"layer 'e' blob 0: shape \(2,\) needs 2 values"):
        read_caffemodel(_layer_bytes(LayerParameter(name="e"), [diff_only.SerializeToString()]))


def test_net_without_layers() -> None:
    data = NetParameter(name="n", input=["data"], input_dim=[1, 3, 2, 2]).SerializeToString()
    model = read_caffemodel(data)
    assert model.layers == []
    assert model.net_header().input_dim == [1, 3, 2, 2]
    assert model.net_header_bytes() == data


# ---------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.caffemodel"
    path.write_bytes(b"")
    with pytest.raises(CaffemodelError) as info:
        read_caffemodel(path)
    assert str(info.value) == (
        f"{path}: byte 0: the file is empty; pass the .caffemodel written by Caffe"
    )
    with pytest.raises(CaffemodelError, match=r"^<bytes>: byte 0: the file is empty"):
        read_caffemodel(b"")


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(CaffemodelError, match=r"absent.caffemodel: cannot open the caffemodel"):
        read_caffemodel(tmp_path / "absent.caffemodel")
    with pytest.raises(CaffemodelError) as info:
        read_caffemodel(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a folder; pass the .caffemodel file inside it"


def test_wrong_source_type() -> None:
    with pytest.raises(CaffemodelError, match="cannot read a caffemodel from a int"):
        read_caffemodel(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        b'name: "LeNet"\nlayer {\n  name: "data"\n}\n',
        b'layer {\n  name: "data"\n  type: "Input"\n}\n',
        b"# deploy net\ninput: 'data'\n",
        b'\n\ninput: "data"\ninput_dim: 1\n',
    ],
)
def test_prototxt_given_as_caffemodel(text: bytes, tmp_path: Path) -> None:
    path = tmp_path / "deploy.prototxt"
    path.write_bytes(text)
    with pytest.raises(CaffemodelError) as info:
        read_caffemodel(path)
    message = str(info.value)
    assert message == (
        f"{path}: byte 0: this looks like a prototxt (text), not a binary caffemodel; "
        "pass the prototxt as the first argument and the .caffemodel as the second"
    )
    assert "\n" not in message


def test_truncated_files(tmp_path: Path) -> None:
    source = shared_path("golden", "conv_bn_scale_inplace", "model.caffemodel").read_bytes()
    boundaries = {f.value_end for f in iter_fields(source)} | {0}
    cuts = [1, 2, 5, 40, 100, len(source) // 2, len(source) - 1]
    assert not boundaries & set(cuts)
    for cut in cuts:
        path = tmp_path / f"cut{cut}.caffemodel"
        path.write_bytes(source[:cut])
        with pytest.raises(CaffemodelError) as info:
            read_caffemodel(path)
        message = str(info.value)
        assert message.startswith(f"{path}: byte ")
        assert f"(the file is {cut} bytes); the file is truncated or corrupt" in message
        assert "\n" not in message


def test_length_claiming_a_terabyte() -> None:
    data = encode_tag(100, 2) + encode_varint(2**40) + b"\x0a\x01a"
    with pytest.raises(CaffemodelError) as info:
        read_caffemodel(data, name="huge.caffemodel")
    assert (info.value.path, info.value.offset) == ("huge.caffemodel", 0)
    assert str(info.value) == (
        "huge.caffemodel: byte 0: field 100 claims 1099511627776 bytes, only 3 remain "
        "(the file is 11 bytes); the file is truncated or corrupt; copy or download it again"
    )


def test_garbage(tmp_path: Path) -> None:
    rng = np.random.default_rng(1234)
    path = tmp_path / "garbage.caffemodel"
    for _ in range(50):
        path.write_bytes(rng.integers(0, 256, int(rng.integers(1, 4000)), np.uint8).tobytes())
        try:
            with read_caffemodel(path) as model:
                for record in model.layers:
                    record.header()
                    record.arrays()
        except CaffemodelError as exc:
            assert str(exc).startswith(f"{path}: ")
            assert exc.path == str(path)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.data())
def test_corrupted_golden_bytes_only_raise_caffemodel_error(data: st.DataObject) -> None:
    source = bytearray(
        shared_path("golden", "conv_bn_scale_inplace", "model.caffemodel").read_bytes()
    )
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(source) - 1))
        source[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(source)))
    try:
        model = read_caffemodel(bytes(source[:cut]), name="fuzz.caffemodel")
        for record in model.layers:
            record.header()
            record.arrays()
        model.net_header()
    except CaffemodelError as exc:
        assert str(exc).startswith("fuzz.caffemodel: ")
        assert exc.path == "fuzz.caffemodel"
        assert "\n" not in str(exc)


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def _golden_copy(tmp_path: Path, case: str = "conv_bn_scale_inplace") -> Path:
    src = tmp_path / "in.caffemodel"
    src.write_bytes(shared_path("golden", case, "model.caffemodel").read_bytes())
    return src


def test_replacing_one_layer_changes_only_that_record(tmp_path: Path) -> None:
    src = _golden_copy(tmp_path)
    before = _sha(src)
    original = src.read_bytes()
    out = tmp_path / "out.caffemodel"
    with read_caffemodel(src) as model:
        index = next(i for i, r in enumerate(model.layers) if r.type == "Convolution")
        target = model.layers[index]
        new_arrays = [a * 2 for a in target.arrays()]
        entries: list[LayerRecord | NewLayer] = list(model.layers)
        entries[index] = _reencoded(target, original, new_arrays)
        write_caffemodel(out, entries, source=model)
        start, end = target.start, target.end
        target_header = target.header_bytes()
        others = {r.name: r.arrays() for r in model.layers if r is not target}
        others = {k: [a.copy() for a in v] for k, v in others.items()}
    written = out.read_bytes()
    tail = len(original) - end
    assert written[:start] == original[:start]
    assert written[len(written) - tail :] == original[end:]
    assert len(written) == len(original)  # same shapes, same encoding, same size
    assert written != original
    with read_caffemodel(out) as again:
        for record in again.layers:
            if record.name == target.name:
                for got, want in zip(record.arrays(), new_arrays, strict=True):
                    assert got.tobytes() == want.astype("<f4").tobytes()
                assert record.header_bytes() == target_header
            else:
                for got, want in zip(record.arrays(), others[record.name], strict=True):
                    assert got.tobytes() == want.tobytes()
    assert _sha(src) == before


@pytest.mark.parametrize(
    ("fmt", "dtype", "encoding"),
    [
        (None, np.float32, "data"),
        ("data", np.float32, "data"),
        ("double_data", np.float64, "double_data"),
        ("raw_float16", np.float16, "raw_data"),
        ("raw_float32", np.float32, "raw_data"),
        ("raw_float64", np.float64, "raw_data"),
    ],
)
def test_new_layer_round_trip(fmt: cm.BlobFormat | None, dtype: type, encoding: str) -> None:
    rng = np.random.default_rng(7)
    weights: np.ndarray = rng.standard_normal((3, 2, 3, 3)).astype(dtype)
    bias: np.ndarray = rng.standard_normal(3).astype(dtype)
    header = LayerParameter(name="conv", type="Convolution", bottom=["x"], top=["y"])
    header.convolution_param.num_output = 3
    layer = NewLayer(header, [weights, bias], formats=[fmt, fmt])
    data = layer.to_bytes()
    record = read_caffemodel(data).layers[0]
    assert record.header() == header
    for blob, want in zip(record.blobs, [weights, bias], strict=True):
        assert blob.encoding == encoding
        assert blob.shape == want.shape
        assert not blob.legacy_shape
        assert blob.array().dtype == want.dtype
        assert blob.array().tobytes() == want.tobytes()
    # protobuf reads the same record.
    parsed = NetParameter.FromString(data).layer[0]
    assert list(parsed.blobs[0].shape.dim) == [3, 2, 3, 3]
    if encoding == "data":
        assert np.array(parsed.blobs[0].data, np.float32).tobytes() == weights.ravel().tobytes()
    elif encoding == "double_data":
        assert np.array(parsed.blobs[1].double_data).tobytes() == bias.tobytes()
    else:
        assert parsed.blobs[1].raw_data == bias.tobytes()


def test_new_layer_auto_format_and_cast() -> None:
    blobs = [
        np.arange(4, dtype=np.int64).reshape(2, 2),
        np.array([1.0, 2.0], dtype=">f4"),
        np.ones(2, np.float64),
        np.ones(2, np.float16),
    ]
    record = read_caffemodel(NewLayer(LayerParameter(name="a"), blobs).to_bytes()).layers[0]
    assert [b.encoding for b in record.blobs] == ["data", "data", "double_data", "raw_data"]
    assert record.blobs[0].array().tolist() == [[0.0, 1.0], [2.0, 3.0]]
    assert record.blobs[1].array().dtype == np.dtype("<f4")
    assert record.blobs[1].array().tolist() == [1.0, 2.0]


def test_new_layer_keeps_legacy_shape_of_source_blob() -> None:
    path = shared_path("golden", "v1_legacy_format", "model.caffemodel")
    with read_caffemodel(path) as model:
        conv = model.layers[0]
        arrays = [np.zeros((4, 3, 3, 3), np.float32), np.zeros(4, np.float32)]
        layer = NewLayer(conv.header(), arrays, formats=conv.blobs)
        record = read_caffemodel(layer.to_bytes()).layers[0]
        assert record.version == 1
        assert [(b.shape, b.legacy_shape) for b in record.blobs] == [
            ((4, 3, 3, 3), True),
            ((1, 1, 1, 4), True),
        ]


def test_new_layer_header_blobs_are_ignored() -> None:
    header = LayerParameter(name="a")
    header.blobs.add(data=[9.0])
    record = read_caffemodel(NewLayer(header, [np.ones(1, np.float32)]).to_bytes()).layers[0]
    assert [b.array().tolist() for b in record.blobs] == [[1.0]]
    assert len(header.blobs) == 1  # the caller's message is not modified


def test_new_v1_layer() -> None:
    header = V1LayerParameter(name="fc", type=V1LayerParameter.INNER_PRODUCT)
    record = read_caffemodel(NewLayer(header, [np.ones((2, 2), np.float32)]).to_bytes()).layers[0]
    assert (record.version, record.type, record.blobs[0].shape) == (1, "InnerProduct", (2, 2))


def test_bad_formats_and_dtypes() -> None:
    with pytest.raises(OutputError, match="unknown blob format 'half'"):
        NewLayer(LayerParameter(name="a"), [np.ones(1)], formats=["half"]).to_bytes()  # type: ignore[list-item]
    with pytest.raises(OutputError, match="layer 'a' blob 0: cannot store an array of dtype"):
        NewLayer(LayerParameter(name="a"), [np.array(["x"])]).to_bytes()
    with pytest.raises(OutputError, match="2 formats given for 1 blobs"):
        NewLayer(LayerParameter(name="a"), [np.ones(1)], formats=[None, None]).to_bytes()


def test_write_without_source(tmp_path: Path) -> None:
    out = tmp_path / "new.caffemodel"
    layer = NewLayer(LayerParameter(name="s", type="Scale"), [np.ones(2, np.float32)])
    write_caffemodel(out, [layer], source=None)
    assert out.read_bytes() == layer.to_bytes()
    assert caffemodel_size([layer], source=None) == out.stat().st_size


def test_top_level_fields_kept_around_layers(tmp_path: Path) -> None:
    # V1 files put input/input_dim (3, 4) after the layers (2): order is kept.
    src = _golden_copy(tmp_path, "v1_legacy_format")
    out = tmp_path / "out.caffemodel"
    with read_caffemodel(src) as model:
        assert [n for n, _, _ in model.top_fields] == [1, 3, 4, 4, 4, 4]
        assert model.layer_slot == 1
        entries = [model.layers[0], model.layers[2]]
        write_caffemodel(out, entries, source=model)
        first = model.layers[0]
        expected = (
            src.read_bytes()[: first.end]
            + src.read_bytes()[model.layers[2].start : model.layers[2].end]
            + src.read_bytes()[model.layers[3].end :]
        )
    assert out.read_bytes() == expected
    parsed = NetParameter.FromString(out.read_bytes())
    assert [layer.name for layer in parsed.layers] == ["conv1", "fc"]
    assert list(parsed.input_dim) == [1, 3, 8, 8]


def test_records_from_bytes_source_are_copied(tmp_path: Path) -> None:
    data = shared_path("golden", "depthwise_conv", "model.caffemodel").read_bytes()
    out = tmp_path / "out.caffemodel"
    with read_caffemodel(data) as model:
        assert model.fileno() is None
        write_caffemodel(out, model.layers, source=model)
    assert out.read_bytes() == data


def test_large_copy_without_kernel_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = shared_path("corpus", "real", "mobilenet_v2", "model.caffemodel")
    out = tmp_path / "out.caffemodel"

    def cross_device(*args: object) -> int:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", cross_device, raising=False)
    with read_caffemodel(path) as model:
        write_caffemodel(out, list(reversed(model.layers)), source=model)
        expected_layers = [r.name for r in reversed(model.layers)]
    with read_caffemodel(out) as again:
        assert [r.name for r in again.layers] == expected_layers


def test_mixing_v1_and_v2_on_write_refused(tmp_path: Path) -> None:
    src = _golden_copy(tmp_path, "v1_legacy_format")
    with read_caffemodel(src) as model:
        entries: list[LayerRecord | NewLayer] = [*model.layers]
        entries.append(NewLayer(LayerParameter(name="x"), []))
        with pytest.raises(OutputError, match="mix V1 'layers' and V2 'layer' records"):
            write_caffemodel(tmp_path / "out.caffemodel", entries, source=model)
    assert not (tmp_path / "out.caffemodel").exists()


def test_refuses_to_overwrite_input(tmp_path: Path) -> None:
    src = _golden_copy(tmp_path)
    link = tmp_path / "link.caffemodel"
    link.symlink_to(src)
    before = _sha(src)
    with read_caffemodel(src) as model:
        for dest in (src, link, tmp_path / "." / "in.caffemodel"):
            with pytest.raises(OutputError, match="is the input file"):
                write_caffemodel(dest, model.layers, source=model)
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text("name: 'x'\n")
    with read_caffemodel(src) as model, pytest.raises(OutputError, match="is the input file"):
        write_caffemodel(prototxt, model.layers, source=model, inputs=[prototxt])
    assert _sha(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "deploy.prototxt",
        "in.caffemodel",
        "link.caffemodel",
    ]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failure_mid_write_leaves_previous_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    src = _golden_copy(tmp_path)
    out = tmp_path / "out.caffemodel"
    out.write_bytes(b"previous output")
    before = _sha(src)

    def fail(piece: object) -> memoryview:
        raise error

    monkeypatch.setattr(cm._writer, "_array_bytes", fail)
    data = src.read_bytes()
    with read_caffemodel(src) as model:
        # Private copies of the values: views of the source's map are copied by the
        # kernel instead, and would never reach the failing encoder.
        entries = [_reencoded(r, data, [np.array(a) for a in r.arrays()]) if r.blobs else r
                   for r in model.layers]
        expected = OutputError if isinstance(error, OSError) else KeyboardInterrupt
        with pytest.raises(expected):
            write_caffemodel(out, entries, source=model)
    assert out.read_bytes() == b"previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.caffemodel", "out.caffemodel"]
    assert _sha(src) == before


def test_two_gib_limit_checked_before_writing(tmp_path: Path) -> None:
    # A stride-0 array reports 2**29 float32 values (2 GiB) without allocating them.
    huge = np.broadcast_to(np.float32(0), (2**29,))
    layer = NewLayer(LayerParameter(name="fc6", type="InnerProduct"), [huge])
    size = caffemodel_size([layer], source=None)
    # record tag 2 + length 5 + header 19 ("fc6", "InnerProduct") + blob tag 1 + length 5
    # + data tag 1 + length 5 + 2**31 data bytes + shape field 9 (dims packed: 2**29)
    assert size == 2**31 + 47
    assert size > MAX_CAFFEMODEL_BYTES
    out = tmp_path / "big.caffemodel"
    with pytest.raises(OutputError) as info:
        write_caffemodel(out, [layer], source=None)
    assert str(info.value) == (
        f"{out}: the caffemodel would be {2**31 + 47} bytes, over protobuf's 2 GiB limit "
        "(2147483647 bytes); no protobuf reader (Caffe, pycaffe, OpenCV) can load a message "
        "that large"
    )
    assert list(tmp_path.iterdir()) == []


def test_size_just_under_limit_is_computed_exactly() -> None:
    small = NewLayer(LayerParameter(name="a"), [np.zeros((3, 5), np.float32)])
    assert caffemodel_size([small, small], source=None) == 2 * len(small.to_bytes())


def test_not_a_layer_entry(tmp_path: Path) -> None:
    entries: list[Any] = ["conv1"]
    with pytest.raises(OutputError, match="cannot write a str as a layer"):
        write_caffemodel(tmp_path / "o", entries, source=None)
