"""The schema: generated code is fresh, facts match BVLC Caffe, real files round-trip.

The facts checked here (field numbers, packing, defaults, presence) are the
ones in ``../shared/design/FORMAT.md``; the wire and text checks use files
written by real Caffe and skip when ``../shared`` is absent.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import corpus_prototxts, golden_cases, real_models, shared_path
from google.protobuf import descriptor, text_format

from bnfuse import proto
from bnfuse.proto import (
    TEST,
    TRAIN,
    BatchNormParameter,
    BlobProto,
    BlobShape,
    ConvolutionParameter,
    LayerParameter,
    NetParameter,
    V1LayerParameter,
    caffe_pb2,
)

ROOT = Path(__file__).resolve().parent.parent
GENERATE_PY = ROOT / "caffe_proto" / "generate.py"


def _load_generator() -> ModuleType:
    """Import caffe_proto/generate.py (a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("bnfuse_generate_under_test", GENERATE_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    """The generator module, or a skip when the pinned protoc is not installed."""
    pytest.importorskip(
        "grpc_tools", reason="grpcio-tools (dev extra) is needed to regenerate the schema"
    )
    version = importlib.metadata.version("grpcio-tools")
    if not version.startswith("1.64."):
        pytest.skip(f"grpcio-tools {version} installed; the committed code is from 1.64.x")
    return _load_generator()


def _field(message: type, name: str) -> descriptor.FieldDescriptor:
    fd: descriptor.FieldDescriptor = message.DESCRIPTOR.fields_by_name[name]  # type: ignore[attr-defined]
    return fd


def _is_packed(fd: descriptor.FieldDescriptor) -> bool:
    # The schema is proto2, so packing is exactly the explicit option; reading
    # the option works on every supported runtime (3.20 has no is_packed).
    return bool(fd.GetOptions().packed)


def _all_messages(
    messages: list[descriptor.Descriptor],
) -> list[descriptor.Descriptor]:
    found: list[descriptor.Descriptor] = []
    for message in messages:
        found.append(message)
        found.extend(_all_messages(list(message.nested_types)))
    return found


# --- (a) generated code is what the pinned generator makes ------------------


def test_committed_files_equal_fresh_generation(generator: ModuleType, tmp_path: Path) -> None:
    fresh = generator.generate(tmp_path)
    assert [p.name for p in fresh] == ["caffe_pb2.py", "caffe_pb2.pyi"]
    for path in fresh:
        committed = ROOT / "bnfuse" / "proto" / path.name
        assert committed.read_bytes() == path.read_bytes(), f"{path.name} is stale"


def test_generation_is_deterministic(generator: ModuleType, tmp_path: Path) -> None:
    first = generator.generate(tmp_path / "one")
    second = generator.generate(tmp_path / "two")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_check_mode_reports_stale_files(generator: ModuleType, tmp_path: Path) -> None:
    assert generator.stale_files() == []
    assert generator.main(["--check"]) == 0
    copy = tmp_path / "committed"
    copy.mkdir()
    for name in ("caffe_pb2.py", "caffe_pb2.pyi"):
        shutil.copyfile(ROOT / "bnfuse" / "proto" / name, copy / name)
    with (copy / "caffe_pb2.py").open("a", encoding="utf-8") as handle:
        handle.write("# edited by hand\n")
    assert generator.stale_files(copy) == ["caffe_pb2.py"]
    (copy / "caffe_pb2.pyi").unlink()
    assert generator.stale_files(copy) == ["caffe_pb2.py", "caffe_pb2.pyi"]


def test_generator_refuses_other_grpcio_tools(
    generator: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(generator.importlib.metadata, "version", lambda _name: "1.65.0")
    with pytest.raises(generator.GeneratorError, match=r"grpcio-tools 1\.65\.0 .*1\.64\.x"):
        generator.generate(tmp_path)
    assert not (tmp_path / "caffe_pb2.py").exists()


def test_registered_under_own_file_and_package() -> None:
    assert caffe_pb2.DESCRIPTOR.name == "bnfuse/proto/caffe.proto"
    assert caffe_pb2.DESCRIPTOR.package == "bnfuse.caffe"
    assert NetParameter.DESCRIPTOR.full_name == "bnfuse.caffe.NetParameter"
    assert proto.caffe_pb2 is caffe_pb2


def test_public_names() -> None:
    parameters = {n for n in caffe_pb2.DESCRIPTOR.message_types_by_name if n.endswith("Parameter")}
    assert len(parameters) == 54
    assert parameters <= set(proto.__all__)
    for name in proto.__all__:
        assert hasattr(proto, name), name
    assert (TRAIN, TEST) == (0, 1)
    assert proto.Phase.Name(TEST) == "TEST"
    assert proto.BlobDataType.Value("FLOAT16") == 2


# --- (b) coexistence with a module that uses Caffe's own package -----------

_COEXIST_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])   # theirs: caffe_pb2 registered as caffe.proto
    sys.path.insert(0, sys.argv[2])   # ours: the project root
    if sys.argv[3] == "ours_first":
        import bnfuse.proto as ours
        import caffe_pb2 as theirs
    else:
        import caffe_pb2 as theirs
        import bnfuse.proto as ours

    net = ours.NetParameter(name="coexist")
    layer = net.layer.add(name="bn", type="BatchNorm", bottom=["x"], top=["x"])
    layer.batch_norm_param.use_global_stats = True
    layer.batch_norm_param.eps = 0.001
    for values in ([1.0, 2.0], [3.0, 4.0], [5.0]):
        blob = layer.blobs.add(data=values)
        blob.shape.dim.append(len(values))
    payload = net.SerializeToString()

    parsed = theirs.NetParameter.FromString(payload)
    back = ours.NetParameter.FromString(parsed.SerializeToString())
    print(json.dumps({
        "ours_file": ours.caffe_pb2.DESCRIPTOR.name,
        "theirs_file": theirs.DESCRIPTOR.name,
        "ours_type": type(back).DESCRIPTOR.full_name,
        "theirs_type": type(parsed).DESCRIPTOR.full_name,
        "same_bytes": parsed.SerializeToString() == payload,
        "round_trip": back == net,
        "eps": parsed.layer[0].batch_norm_param.eps,
        "use_global_stats": parsed.layer[0].batch_norm_param.use_global_stats,
        "data": [list(b.data) for b in parsed.layer[0].blobs],
    }))
    """
)


@pytest.fixture(scope="module")
def their_module_dir(generator: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same schema as pycaffe would register it: ``package caffe`` in ``caffe.proto``."""
    out = tmp_path_factory.mktemp("theirs")
    generator.generate(out, package="caffe", proto_name="caffe.proto")
    return out


@pytest.mark.parametrize("order", ["ours_first", "theirs_first"])
def test_coexists_with_pycaffe_style_module(their_module_dir: Path, order: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _COEXIST_SCRIPT, str(their_module_dir), str(ROOT), order],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ours_file"] == "bnfuse/proto/caffe.proto"
    assert report["theirs_file"] == "caffe.proto"
    assert report["ours_type"] == "bnfuse.caffe.NetParameter"
    assert report["theirs_type"] == "caffe.NetParameter"
    assert report["same_bytes"] is True
    assert report["round_trip"] is True
    assert np.float32(report["eps"]) == np.float32(0.001)
    assert report["use_global_stats"] is True
    assert report["data"] == [[1.0, 2.0], [3.0, 4.0], [5.0]]


# --- (c) facts from FORMAT.md ----------------------------------------------


@pytest.mark.parametrize(
    ("message", "name", "number"),
    [
        (LayerParameter, "batch_norm_param", 139),
        (LayerParameter, "scale_param", 142),
        (LayerParameter, "convolution_param", 106),
        (LayerParameter, "inner_product_param", 117),
        (LayerParameter, "input_param", 143),
        (LayerParameter, "clip_param", 148),
        (LayerParameter, "transform_param", 100),
        (NetParameter, "layer", 100),
        (NetParameter, "layers", 2),
        (NetParameter, "input_dim", 4),
        (V1LayerParameter, "param", 1001),
        (V1LayerParameter, "blob_share_mode", 1002),
        (V1LayerParameter, "convolution_param", 10),
        (V1LayerParameter, "inner_product_param", 17),
        (BlobProto, "data", 5),
        (BlobProto, "double_data", 8),
        (BlobProto, "raw_data_type", 10),
        (BlobProto, "raw_data", 12),
        (ConvolutionParameter, "dilation", 18),
    ],
)
def test_field_numbers(message: type, name: str, number: int) -> None:
    assert _field(message, name).number == number


def test_layer_parameter_has_one_param_per_number_100_to_148() -> None:
    numbers = sorted(
        fd.number for fd in LayerParameter.DESCRIPTOR.fields if fd.name.endswith("_param")
    )
    assert numbers == list(range(100, 149))


def test_packed_exactly_where_bvlc_has_it() -> None:
    packed = {
        f"{message.name}.{fd.name}"
        for message in _all_messages(list(caffe_pb2.DESCRIPTOR.message_types_by_name.values()))
        for fd in message.fields
        if _is_packed(fd)
    }
    assert packed == {
        "BlobShape.dim",
        "BlobProto.data",
        "BlobProto.diff",
        "BlobProto.double_data",
        "BlobProto.double_diff",
    }
    assert not _is_packed(_field(ConvolutionParameter, "pad"))
    assert not _field(ConvolutionParameter, "pad").GetOptions().HasField("packed")


def test_wire_encoding_of_packed_and_unpacked_fields() -> None:
    # Packed: one tag (5, wire type 2), a length, then the raw little-endian floats.
    blob = BlobProto(data=[1.0, -2.0])
    assert blob.SerializeToString() == b"\x2a\x08" + struct.pack("<2f", 1.0, -2.0)
    # Not packed: one tag (3, varint) per value, as Caffe writes them.
    assert ConvolutionParameter(pad=[1, 2]).SerializeToString() == b"\x18\x01\x18\x02"
    assert BlobShape(dim=[1, 3]).SerializeToString() == b"\x0a\x02\x01\x03"
    # A reader must accept unpacked floats too (wire type 5 under number 5).
    unpacked = b"\x2d" + struct.pack("<f", 1.5) + b"\x2d" + struct.pack("<f", 2.5)
    assert list(BlobProto.FromString(unpacked).data) == [1.5, 2.5]


def test_batch_norm_defaults_and_presence() -> None:
    param = BatchNormParameter()
    assert np.float32(param.eps) == np.float32(1e-5)
    assert np.float32(param.moving_average_fraction) == np.float32(0.999)
    assert param.HasField("use_global_stats") is False
    assert param.use_global_stats is False
    param.use_global_stats = False
    # Presence survives an explicit false: Caffe treats "set to false" differently from unset.
    assert param.HasField("use_global_stats") is True
    assert BatchNormParameter.FromString(param.SerializeToString()).HasField("use_global_stats")
    assert param.SerializeToString() == b"\x08\x00"


def test_other_defaults() -> None:
    scale = proto.ScaleParameter()
    assert (scale.axis, scale.num_axes, scale.bias_term) == (1, 1, False)
    conv = ConvolutionParameter()
    assert (conv.bias_term, conv.group, conv.axis) == (True, 1, 1)
    inner = proto.InnerProductParameter()
    assert (inner.bias_term, inner.axis, inner.transpose) == (True, 1, False)
    assert proto.PoolingParameter().round_mode == proto.PoolingParameter.CEIL
    assert proto.FillerParameter().type == "constant"
    assert proto.NetState().phase == TEST
    assert BlobProto().num == 0


def test_v1_layer_types() -> None:
    layer_type = V1LayerParameter.LayerType
    values = {v.name: v.number for v in layer_type.DESCRIPTOR.values}
    assert len(values) == 40
    assert values["NONE"] == 0
    assert values["CONVOLUTION"] == 4
    assert values["INNER_PRODUCT"] == 14
    assert values["DECONVOLUTION"] == 39
    assert values["SOFTMAX_LOSS"] == 21
    assert values["ABSVAL"] == 35


def test_nvidia_raw_data_type_values() -> None:
    values = {v.name: v.number for v in caffe_pb2.Type.DESCRIPTOR.values}
    assert values == {"DOUBLE": 0, "FLOAT": 1, "FLOAT16": 2, "INT": 3, "UINT": 4}
    half = np.array([1.0, -0.5], dtype="<f2")
    blob = BlobProto(raw_data_type=caffe_pb2.FLOAT16, raw_data=half.tobytes())
    again = BlobProto.FromString(blob.SerializeToString())
    assert np.frombuffer(again.raw_data, dtype="<f2").tolist() == [1.0, -0.5]


# --- (d) wire compatibility with files written by Caffe ---------------------


def _caffemodel_paths() -> list[tuple[str, str]]:
    return [("golden", name) for name in golden_cases()] + [
        ("corpus/real", name) for name in real_models()
    ]


@pytest.mark.parametrize(("folder", "name"), _caffemodel_paths())
def test_caffemodel_round_trips_byte_for_byte(folder: str, name: str) -> None:
    path = shared_path(*folder.split("/"), name, "model.caffemodel")
    payload = path.read_bytes()
    net = NetParameter.FromString(payload)
    assert len(net.layer) + len(net.layers) > 0
    assert net.SerializeToString() == payload
    # Every field Caffe wrote is one the schema declares: dropping unknown
    # fields changes nothing.
    net.DiscardUnknownFields()  # type: ignore[attr-defined]  # missing from types-protobuf
    assert net.SerializeToString() == payload


def test_caffemodel_blob_values_are_readable() -> None:
    path = shared_path("golden", "conv_bn_scale_inplace", "model.caffemodel")
    net = NetParameter.FromString(path.read_bytes())
    bn = next(layer for layer in net.layer if layer.type == "BatchNorm")
    assert len(bn.blobs) == 3
    assert list(bn.blobs[2].shape.dim) == [1]
    channels = list(bn.blobs[0].shape.dim)
    assert channels == list(bn.blobs[1].shape.dim)
    assert len(bn.blobs[0].data) == channels[0]


# --- (e) text compatibility -------------------------------------------------


@pytest.mark.parametrize("name", golden_cases())
def test_golden_prototxt_parses(name: str) -> None:
    text = shared_path("golden", name, "model.prototxt").read_text(encoding="utf-8")
    net = text_format.Parse(text, NetParameter())
    names = [layer.name for layer in net.layer] or [layer.name for layer in net.layers]
    assert names
    weights = NetParameter.FromString(shared_path("golden", name, "model.caffemodel").read_bytes())
    saved = {layer.name for layer in weights.layer} | {layer.name for layer in weights.layers}
    assert set(names) <= saved
    assert text_format.Parse(text_format.MessageToString(net), NetParameter()) == net


def test_v1_prototxt_reads_enum_types() -> None:
    text = shared_path("golden", "v1_legacy_format", "model.prototxt").read_text(encoding="utf-8")
    net = text_format.Parse(text, NetParameter())
    assert not net.layer
    assert [V1LayerParameter.LayerType.Name(layer.type) for layer in net.layers] == [
        "CONVOLUTION",
        "RELU",
        "INNER_PRODUCT",
        "SOFTMAX",
    ]
    assert list(net.input_dim) == [1, 3, 8, 8]
    assert list(net.layers[0].blobs_lr) == [1.0, 2.0]


#: Corpus files that use fields of a fork, and the first such field protobuf reports.
FORK_FIELDS = {
    "densenet121.prototxt": "ceil_mode",
    "enet_deploy.prototxt": "bn_param",
    "mobilenet_ssd_deploy.prototxt": "permute_param",
}


@pytest.mark.parametrize("name", corpus_prototxts())
def test_corpus_prototxt_parses_unless_it_uses_fork_fields(name: str) -> None:
    text = shared_path("corpus", "prototxt", name).read_text(encoding="utf-8")
    if name in FORK_FIELDS:
        with pytest.raises(text_format.ParseError, match=f'no field named "{FORK_FIELDS[name]}"'):
            text_format.Parse(text, NetParameter())
    else:
        assert len(text_format.Parse(text, NetParameter()).layer) > 0
