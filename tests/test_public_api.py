"""A converter's use of bnfuse, through ``bnfuse`` names only.

Everything here is what a Caffe-to-X converter does with bnfuse: load a net, ask for
the per-channel map of each BatchNorm dialect, Scale and Bias, run the net and read
its blobs. Every expected value is computed in this file with numpy, from the blobs
and the formulas of the Caffe sources, never with bnfuse's own arithmetic.
"""

from __future__ import annotations

import numpy as np
import pytest

import bnfuse

RNG = np.random.default_rng(20261201)


def _net_with(text: bytes, blobs: dict[str, list[np.ndarray]]) -> bnfuse.Net:
    net = bnfuse.load(text)
    for name, arrays in blobs.items():
        net.set_blobs(net.layer(name), arrays)
    return net


def _one(layer_text: bytes, blobs: list[np.ndarray]) -> bnfuse.Layer:
    net = _net_with(b'layer { name: "n" ' + layer_text + b' bottom: "x" top: "x" }',
                    {"n": blobs})
    return net.layer("n")


def _f32(value: float) -> float:
    return float(np.float32(value))


# --------------------------------------------------------------------------- affine_of


def test_affine_of_bvlc_batchnorm_divides_by_the_factor() -> None:
    mean, var = RNG.standard_normal(5), RNG.uniform(0.5, 2.0, 5)
    factor = 7.5
    layer = _one(b'type: "BatchNorm" batch_norm_param { eps: 0.001 }',
                 [mean * factor, var * factor, np.array([factor])])
    affine = bnfuse.affine_of(layer)
    scale = 1.0 / np.sqrt(var + _f32(0.001))
    assert isinstance(affine, bnfuse.Affine) and affine.channels == 5
    assert affine.scale.dtype == np.float64 and not affine.scale.flags.writeable
    np.testing.assert_allclose(affine.scale, scale, rtol=1e-6)  # the blobs are float32
    np.testing.assert_allclose(affine.shift, -mean * scale, rtol=1e-6, atol=1e-7)


def test_affine_of_bvlc_zero_factor_means_zero_statistics() -> None:
    layer = _one(b'type: "BatchNorm"', [np.full(3, 4.0), np.full(3, 9.0), np.zeros(1)])
    affine = bnfuse.affine_of(layer)
    np.testing.assert_array_equal(affine.scale, np.full(3, 1.0 / np.sqrt(_f32(1e-5))))
    np.testing.assert_array_equal(affine.shift, np.zeros(3))


def test_affine_of_every_fork_dialect() -> None:
    c = 4
    gamma, beta = RNG.uniform(0.5, 2, c), RNG.standard_normal(c)
    mean, var = RNG.standard_normal(c), RNG.uniform(0.5, 2, c)

    def blob(v: np.ndarray) -> np.ndarray:
        return v.reshape(1, c, 1, 1)

    segnet = _one(b'type: "BN" bn_param { bn_mode: INFERENCE }', [blob(gamma), blob(beta)])
    np.testing.assert_allclose(bnfuse.affine_of(segnet).scale, gamma, rtol=1e-6)
    np.testing.assert_allclose(bnfuse.affine_of(segnet).shift, beta, rtol=1e-6)

    pspnet = _one(b'type: "BN" bn_param { eps: 0.01 momentum: 0.9 }',
                  [blob(gamma), blob(beta), blob(mean), blob(var)])
    s = gamma / np.sqrt(var + _f32(0.01))
    np.testing.assert_allclose(bnfuse.affine_of(pspnet).scale, s, rtol=1e-6)
    np.testing.assert_allclose(bnfuse.affine_of(pspnet).shift, beta - mean * s, rtol=1e-5,
                               atol=1e-6)

    cudnn = _one(b'type: "CuDNNBatchNorm" batch_norm_param { eps: 1e-9 }',
                 [blob(gamma), blob(beta), blob(mean), blob(var)])
    s = gamma / np.sqrt(var + 1e-5)  # CUDNN_BN_MIN_EPSILON
    np.testing.assert_allclose(bnfuse.affine_of(cudnn).scale, s, rtol=1e-6)

    nvidia = _one(b'type: "BatchNorm" batch_norm_param { scale_bias: true eps: 1e-7 }',
                  [mean, var, np.ones(1), gamma, beta])
    s = gamma / np.sqrt(var + _f32(1e-5))  # NVIDIA clamps eps to float(1e-5)
    np.testing.assert_allclose(bnfuse.affine_of(nvidia).scale, s, rtol=1e-6)
    np.testing.assert_allclose(bnfuse.affine_of(nvidia).shift, beta - mean * s, rtol=1e-5,
                               atol=1e-6)


def test_affine_of_scale_and_bias() -> None:
    gamma, beta = RNG.standard_normal(3), RNG.standard_normal(3)
    scale = _one(b'type: "Scale" scale_param { bias_term: true }', [gamma, beta])
    np.testing.assert_allclose(bnfuse.affine_of(scale).scale, gamma, rtol=1e-6)
    np.testing.assert_allclose(bnfuse.affine_of(scale).shift, beta, rtol=1e-6)
    no_bias = _one(b'type: "Scale"', [gamma])
    np.testing.assert_array_equal(bnfuse.affine_of(no_bias).shift, np.zeros(3))
    bias = _one(b'type: "Bias"', [beta])
    np.testing.assert_array_equal(bnfuse.affine_of(bias).scale, np.ones(3))
    np.testing.assert_allclose(bnfuse.affine_of(bias).shift, beta, rtol=1e-6)


@pytest.mark.parametrize(("text", "blobs", "words"), [
    (b'type: "BatchNorm" batch_norm_param { use_global_stats: false }', 3,
     "use_global_stats is false"),
    (b'type: "BN" bn_param { bn_mode: LEARN }', 2, "bn_mode is LEARN"),
    (b'type: "Scale" scale_param { axis: 0 }', 1, "works on axis 0"),
    (b'type: "ReLU"', 0, "ReLU is not a per-channel affine layer"),
    (b'type: "Scale"', 0, "has no weights in the caffemodel"),
])
def test_affine_of_says_why_a_layer_is_no_map(text: bytes, blobs: int, words: str) -> None:
    layer = _one(text, [np.ones(2) for _ in range(blobs)])
    with pytest.raises(bnfuse.UnsupportedLayerError, match=words):
        bnfuse.affine_of(layer)


def test_affine_of_refuses_a_scale_whose_factor_is_an_input() -> None:
    net = bnfuse.load(b'layer { name: "s" type: "Scale" bottom: "x" bottom: "f" top: "y" }')
    with pytest.raises(bnfuse.UnsupportedLayerError, match="2 bottoms: its factor is an input"):
        bnfuse.affine_of(net.layer("s"))


def test_affine_of_force_global_stats_reads_the_stored_statistics() -> None:
    layer = _one(b'type: "BatchNorm" batch_norm_param { use_global_stats: false eps: 0 }',
                 [np.array([2.0]), np.array([8.0]), np.array([2.0])])
    affine = bnfuse.affine_of(layer, force_global_stats=True)
    assert affine.scale.tolist() == [0.5] and affine.shift.tolist() == [-0.5]


# --------------------------------------------------------------------------- forward


CONV_NET = b'''
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 2 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
'''


def _conv_net() -> tuple[bnfuse.Net, dict[str, np.ndarray]]:
    w = RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(3).astype(np.float32)
    mean = RNG.standard_normal(3).astype(np.float32)
    var = RNG.uniform(0.5, 2, 3).astype(np.float32)
    net = _net_with(CONV_NET, {"conv": [w, b], "bn": [mean, var, np.ones(1, np.float32)]})
    return net, {"w": w, "b": b, "mean": mean, "var": var}


def _expected(x: np.ndarray, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The net by hand, in float64: 3x3 convolution with zero padding 1, BatchNorm,
    ReLU, then 2x2/2 MAX pooling with Caffe's ceil rounding (5 -> 3: the last window
    overhangs and takes the maximum of what it covers)."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.zeros((1, 3, 5, 5))
    for o in range(3):
        for i in range(5):
            for j in range(5):
                conv[0, o, i, j] = np.sum(xp[0, :, i:i + 3, j:j + 3] * p["w"][o]) + p["b"][o]
    bn = (conv - p["mean"].reshape(1, 3, 1, 1)) / np.sqrt(p["var"].reshape(1, 3, 1, 1) + 1e-5)
    relu = np.maximum(bn, 0)
    pool = np.zeros((1, 3, 3, 3))
    for i in range(3):
        for j in range(3):
            pool[0, :, i, j] = relu[0, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max(axis=(1, 2))
    return {"conv#0": conv, "conv#1": bn, "conv": relu, "pool": pool}


def test_forward_gives_every_blob_as_caffe_computes_it() -> None:
    net, p = _conv_net()
    x = RNG.standard_normal((1, 2, 5, 5)).astype(np.float32)
    blobs = bnfuse.forward(net, {"data": x})
    expected = _expected(x, p)
    assert sorted(blobs) == ["conv", "data", "pool"]
    assert blobs["pool"].dtype == np.float32 and blobs["pool"].shape == (1, 3, 3, 3)
    np.testing.assert_allclose(blobs["conv"], expected["conv"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(blobs["pool"], expected["pool"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(blobs["data"], x)


def test_forward_keeps_the_blobs_and_versions_asked_for() -> None:
    net, p = _conv_net()
    x = RNG.standard_normal((1, 2, 5, 5))
    conv_versions = net.graph().versions_of("conv")
    assert [str(v) for v in conv_versions] == ["conv#0", "conv#1", "conv#2"]
    kept = bnfuse.forward(net, {"data": x}, dtype=np.float64,
                          blobs=[conv_versions[0], conv_versions[1], "pool"])
    assert list(kept) == ["conv#0", "conv#1", "pool"]
    expected = _expected(x, p)
    for key, value in kept.items():
        assert value.dtype == np.float64
        np.testing.assert_allclose(value, expected[key], rtol=1e-5, atol=1e-6)


def test_forward_seeds_the_inputs_it_is_not_given() -> None:
    net, p = _conv_net()
    x = np.random.default_rng(3).standard_normal((1, 2, 5, 5)).astype(np.float32)
    seeded = bnfuse.forward(net, seed=3, blobs=["data", "pool"])
    np.testing.assert_array_equal(seeded["data"], x)
    np.testing.assert_allclose(seeded["pool"], _expected(x, p)["pool"], rtol=1e-5, atol=1e-5)


def test_forward_refuses_unknown_names() -> None:
    net, _ = _conv_net()
    with pytest.raises(bnfuse.ModelMismatchError, match="'dta'"):
        bnfuse.forward(net, {"dta": np.zeros((1, 2, 5, 5))})
    with pytest.raises(bnfuse.BnfuseError, match="no blob named 'poll'"):
        bnfuse.forward(net, blobs=["poll"])
    with pytest.raises(TypeError, match="blobs must be a list"):
        bnfuse.forward(net, blobs="pool")


# --------------------------------------------------------------------------- shapes, graph


def test_shapes_inputs_and_outputs_of_an_input_dim_net() -> None:
    net = bnfuse.load(b'''name: "old" input: "data" input_dim: 2 input_dim: 3 input_dim: 9
    input_dim: 9
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 4 kernel_size: 3 stride: 2 dilation: 2 } }
    layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
    layer { name: "split" type: "Slice" bottom: "conv" top: "a" top: "b"
            slice_param { slice_point: 1 } }
    layer { name: "ip" type: "InnerProduct" bottom: "a" top: "ip"
            inner_product_param { num_output: 5 } }''')
    assert net.upgrade_notes == ["input fields became an Input layer"]
    assert net.inputs == {"data": (2, 3, 9, 9)}
    assert net.outputs == ("b", "ip")
    side = (9 - (2 * (3 - 1) + 1)) // 2 + 1  # Caffe: (H + 2p - dilated kernel) / s + 1
    assert side == 3
    assert net.shapes() == {"data": (2, 3, 9, 9), "conv": (2, 4, side, side),
                            "a": (2, 1, side, side), "b": (2, 3, side, side), "ip": (2, 5)}
    bigger = net.shapes({"data": (1, 3, 17, 17)})
    assert bigger["conv"] == (1, 4, 7, 7) and bigger["ip"] == (1, 5)


def test_shapes_per_version_when_a_name_is_written_again() -> None:
    net = bnfuse.load(b'''
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 6
            dim: 6 } } }
    layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }
    layer { name: "pool" type: "Pooling" bottom: "x" top: "x"
            pooling_param { pool: AVE kernel_size: 3 stride: 2 } }''')
    by_version = net.shapes(versions=True)
    assert {str(v): s for v, s in by_version.items()} == {
        "x#0": (1, 2, 6, 6), "x#1": (1, 2, 6, 6), "x#2": (1, 2, 3, 3)}  # ceil(3/2) + 1
    assert net.shapes() == {"x": (1, 2, 3, 3)}
    graph = net.graph()
    assert isinstance(graph, bnfuse.Graph)
    x0, x1, x2 = graph.versions_of("x")
    assert isinstance(x0, bnfuse.BlobVersion)
    assert (graph.producer(x0), graph.readers(x0)) == (0, [1])
    assert (graph.producer(x1), graph.readers(x1)) == (1, [2])
    assert graph.outputs() == [x2] and graph.final_version("x") == x2
    assert graph.reads[2] == (x1,) and graph.writes[2] == (x2,)
    assert graph.layers == net.layers


def test_inputs_of_data_layers_and_fragments() -> None:
    net = bnfuse.load(b'''
    layer { name: "d" type: "Data" top: "data" top: "label"
            transform_param { crop_size: 8 } data_param { batch_size: 4 } }
    layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
            inner_product_param { num_output: 3 } }''')
    # The database decides the channels: open until given; the label is an output.
    assert net.inputs == {"data": None, "label": (4,)}
    assert net.outputs == ("label", "fc")
    assert net.shapes({"data": (4, 3, 8, 8)})["fc"] == (4, 3)
    fragment = bnfuse.load(b'layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" '
                           b'top: "c" }')
    assert fragment.inputs == {"a": None, "b": None} and fragment.outputs == ("c",)
    assert fragment.shapes({"a": (1, 2), "b": (1, 2)}) == {"a": (1, 2), "b": (1, 2),
                                                           "c": (1, 2)}


GEOMETRY_NET = b'''
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 dim: 11
        dim: 14 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
        convolution_param { num_output: 8 kernel_size: 3 kernel_size: 5 stride: 2
                            pad_h: 1 pad_w: 2 dilation: 2 group: 2 } }
layer { name: "dw" type: "DepthwiseConvolution" bottom: "c" top: "dw"
        convolution_param { num_output: 8 kernel_h: 3 kernel_w: 1 } }
layer { name: "up" type: "Deconvolution" bottom: "dw" top: "up"
        convolution_param { num_output: 2 kernel_size: 4 stride: 2 pad: 1 } }
layer { name: "ceil" type: "Pooling" bottom: "up" top: "p1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "floor" type: "Pooling" bottom: "up" top: "p2"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 ceil_mode: false } }
layer { name: "global" type: "Pooling" bottom: "up" top: "p3"
        pooling_param { pool: AVE global_pooling: true } }
'''


def test_geometry_of_convolutions_and_poolings() -> None:
    net = bnfuse.load(GEOMETRY_NET)
    conv = net.geometry(net.layer("conv"))
    assert isinstance(conv, bnfuse.ConvGeometry)
    assert (conv.kernel, conv.stride, conv.pad, conv.dilation, conv.group) == (
        (3, 5), (2, 2), (1, 2), (2, 2), 2)
    # floor((11 + 2 - 5) / 2) + 1 = 5 and floor((14 + 4 - 9) / 2) + 1 = 5
    assert conv.output == (5, 5) and net.shapes()["c"] == (1, 8, 5, 5)
    dw = net.geometry(net.layer("dw"))
    assert (dw.kernel, dw.group, dw.output) == ((3, 1), 8, (3, 5))
    up = net.geometry(net.layer("up"))
    # stride (size - 1) + kernel - 2 pad
    assert up.output == (2 * (3 - 1) + 4 - 2, 2 * (5 - 1) + 4 - 2) == (6, 10)
    ceil = net.geometry(net.layer("ceil"))
    assert isinstance(ceil, bnfuse.PoolGeometry)
    # ceil((6 + 2 - 3) / 2) + 1 = 4 and ceil((10 + 2 - 3) / 2) + 1 = 6; the last windows
    # start at 3 * 2 - 1 = 5 and 5 * 2 - 1 = 9, inside the image, so both stay.
    assert (ceil.method_name, ceil.kernel, ceil.pad, ceil.output, ceil.ceil) == (
        "MAX", (3, 3), (1, 1), (4, 6), True)
    assert ceil.overhang((6, 10)) == (1, 1)  # (4-1)*2+3 - (6+2) and (6-1)*2+3 - (10+2)
    floor = net.geometry(net.layer("floor"))
    # floor((6 - 3) / 2) + 1 = 2 and floor((10 - 3) / 2) + 1 = 4
    assert (floor.method_name, floor.output, floor.ceil) == ("AVE", (2, 4), False)
    assert net.geometry(net.layer("global")).kernel == (6, 10)
    # 21 high: conv 10, depthwise 8, deconvolution 16, pooling ceil(15 / 2) + 1 = 9
    assert net.geometry(net.layer("ceil"), {"x": (1, 4, 21, 14)}).output == (9, 6)
    # A window that would start in the bottom padding is dropped: 5 high, pad 1, 2/2:
    # ceil((5 + 2 - 2) / 2) + 1 = 4, but the 4th window would start at row 3 * 2 - 1 = 5,
    # past the image's last row 4, so Caffe makes 3.
    edge = bnfuse.load(b'''layer { name: "in" type: "Input" top: "x" input_param {
        shape { dim: 1 dim: 1 dim: 5 dim: 5 } } }
        layer { name: "p" type: "Pooling" bottom: "x" top: "y"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 } }''')
    assert edge.geometry(edge.layer("p")).output == (3, 3)
    with pytest.raises(bnfuse.UnsupportedLayerError, match="only convolution and pooling"):
        net.geometry(net.layer("in"))


# --------------------------------------------------------------------------- warnings


WARNED = b'''
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 5
        dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
        convolution_param { num_output: 2 kernel_size: 1 quantize: true } }
layer { name: "conv2" type: "Convolution" bottom: "c" top: "c2"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "pool" type: "Pooling" bottom: "c2" top: "p"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 ceil_mode: false
                        engine: PRE_FIXED } }
'''


def test_warnings_say_what_the_schema_fields_do_not(tmp_path: object) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    net = bnfuse.load(WARNED)
    assert [(w.kind, w.layer, w.field) for w in net.warnings] == [
        ("unknown_fork_field", "conv", "convolution_param.quantize"),
        ("fork_field", "pool", "pooling_param.ceil_mode"),
        ("unknown_enum", "pool", "pooling_param.engine"),
    ]
    assert all(isinstance(w, bnfuse.NetWarning) for w in net.warnings)
    assert "round down (floor)" in str(net.warnings[1])
    assert "'PRE_FIXED'" in str(net.warnings[2])
    assert net.shapes()["p"] == (1, 2, 2, 2)  # floor((5 - 2) / 2) + 1, not ceil's 3
    # A caffemodel with the weights of conv2 only: conv has none.
    net.set_blobs(net.layer("conv2"), [np.ones((2, 2, 1, 1), np.float32),
                                       np.zeros(2, np.float32)])
    bnfuse.save(net, folder / "w.prototxt", folder / "w.caffemodel")
    loaded = bnfuse.load(folder / "w.prototxt", folder / "w.caffemodel")
    assert [(w.kind, w.layer) for w in loaded.warnings if w.kind == "missing_weights"] == [
        ("missing_weights", "conv")]
    with pytest.raises(bnfuse.ModelMismatchError,
                       match=r"1 layer needs weights and has none in .*'conv' \(Convolution\)"):
        bnfuse.load(folder / "w.prototxt", folder / "w.caffemodel", require_weights=True)
    with pytest.raises(bnfuse.ModelMismatchError, match="2 layers need weights"):
        bnfuse.load(WARNED, require_weights=True)
    assert bnfuse.load(b'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }',
                       require_weights=True).warnings == ()


# --------------------------------------------------------------------------- copy


def test_copy_is_independent_of_the_original() -> None:
    prototxt, caffemodel = bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel")
    net = bnfuse.load(prototxt, caffemodel)
    weights = [np.array(b) for layer in net.layers for b in layer.blobs]
    twin = net.copy()
    assert [layer.name for layer in twin.layers] == [layer.name for layer in net.layers]
    assert twin.layer("conv1") is not net.layer("conv1")
    twin.rename_layer(twin.layer("fc"), "classifier")
    twin.set_blobs(twin.layer("conv2"), [np.zeros_like(b) for b in twin.layer("conv2").blobs])
    folded = bnfuse.fold_net(twin).net
    assert folded is twin and len(twin.layers) < len(net.layers)
    assert not net.edited and net.layer("fc").name == "fc"
    assert net.document.render() == prototxt.read_text()
    assert 'name: "classifier"' in twin.document.render()
    for before, after in zip(weights, (b for layer in net.layers for b in layer.blobs),
                             strict=True):
        np.testing.assert_array_equal(before, after)
    # And the other way round: editing the original leaves the copy as it was.
    other = net.copy()
    net.rename_layer(net.layer("conv1"), "first")
    assert other.layer("conv1").name == "conv1" and not other.edited
    assert other.document.render() == prototxt.read_text()


def test_wrong_argument_types_are_type_errors() -> None:
    net = bnfuse.load(bnfuse.example_path("prototxt"))
    with pytest.raises(TypeError, match="affine_of: layer must be a Layer"):
        bnfuse.affine_of("conv1/bn")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Net\.shapes: input_shapes must be a mapping"):
        net.shapes([1, 3, 8, 8])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Net\.shapes: versions must be"):
        net.shapes(versions="yes")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"Net\.geometry: layer must be a Layer"):
        net.geometry("conv1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="forward: inputs must be a mapping"):
        bnfuse.forward(net, [np.zeros((1, 3, 32, 32))])  # type: ignore[arg-type]
