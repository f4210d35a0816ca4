"""ONNX export and the ONNX Runtime backend, against real Caffe and written-out rules.

Tolerances: max |difference| relative to the reference's max |value|. Real MobileNets
against real Caffe: 1e-4 (float32 rounding alone reaches 3.6e-5 there, see
test_executor.py); golden cases (shallow nets) and SSD's own Caffe: 1e-5; ONNX Runtime
against bnfuse's executor on the layer-zoo nets: 1e-5 (Interp: 1e-6); pooling against
Caffe's loops written out here: 1e-6 (one rounding of a sum of at most 25 terms); masks,
unpooling and the divisor of an overhanging window: exact.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from conftest import golden_cases, real_models, shared_path

import bnfuse
from bnfuse.cli import main
from bnfuse.errors import BackendUnavailableError, BnfuseError, OutputError, UnsupportedLayerError
from bnfuse.export import MAX_OPSET, MIN_OPSET
from bnfuse.export._onnx import export_graph, import_onnx
from bnfuse.export.api import verify_onnx
from bnfuse.verification.backends.onnxruntime_backend import import_onnxruntime, session
from bnfuse.verification.executor import forward
from bnfuse.verification.randweights import random_weights

try:
    # Through bnfuse, which imports them with the deferred signals blocked (their native
    # threads would otherwise take the signals test_atomic defers).
    onnx = import_onnx()
    import_onnxruntime()
except BackendUnavailableError as missing:
    pytest.skip(str(missing), allow_module_level=True)

Array = npt.NDArray[Any]


def relative(actual: Array, expected: Array) -> float:
    assert actual.shape == expected.shape
    return float(np.abs(actual.astype(np.float64) - expected).max()
                 / max(float(np.abs(expected).max()), 1e-30))


def run_exported(net: Any, inputs: dict[str, Array], *, opset: int = 17,
                 every_blob: bool = True) -> dict[str, Array]:
    """Export, check with onnx's full checker and strict shape inference, run in ORT.

    Returns Caffe blob name -> the final value ORT computed for it.
    """
    exported = export_graph(net, opset=opset, every_blob=every_blob,
                            input_shapes={k: v.shape for k, v in inputs.items()})
    onnx.checker.check_model(exported.model, full_check=True)
    onnx.shape_inference.infer_shapes(exported.model, strict_mode=True)
    assert exported.model.opset_import[0].version == opset
    sess = session(exported.model)
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(names, {k: inputs[k].astype(np.float32)
                                               for k in exported.inputs}), strict=True))
    return {blob: values[value] for blob, value in exported.blob_values.items()
            if value in values}


def load_case(folder: Path, *, fold: bool) -> tuple[Any, dict[str, Array], Any]:
    net = bnfuse.load(folder / "model.prototxt", folder / "model.caffemodel")
    if fold:
        net = bnfuse.fold_net(net).net
    ref = np.load(folder / "blobs.npz")
    inputs = {k[len("input:"):]: ref[k] for k in ref.files if k.startswith("input:")}
    return net, inputs, ref


# --------------------------------------------------------------------------- real Caffe


@pytest.mark.parametrize("fold", [False, True], ids=["unfolded", "folded"])
@pytest.mark.parametrize("model", real_models() or ["absent"])
def test_real_models_match_real_caffe_in_onnxruntime(model: str, fold: bool) -> None:
    folder = shared_path("corpus", "real", model)
    net, inputs, ref = load_case(folder, fold=fold)
    got = run_exported(net, inputs)
    outputs = [v.name for v in bnfuse.graph.build_graph(net.layers).outputs()]
    assert outputs
    compared = 0
    for name, value in got.items():
        key = f"blob:{name}"
        if key in ref.files and "_split_" not in name:
            limit = 1e-4
            assert relative(value, ref[key]) < limit, name
            compared += 1
    assert all(f"blob:{name}" in ref.files for name in outputs)
    assert compared >= 2


@pytest.mark.parametrize("fold", [False, True], ids=["unfolded", "folded"])
@pytest.mark.parametrize("case", golden_cases() or ["absent"])
def test_golden_cases_match_real_caffe_in_onnxruntime(case: str, fold: bool) -> None:
    folder = shared_path("golden", case)
    net, inputs, ref = load_case(folder, fold=fold)
    got = run_exported(net, inputs, opset=MIN_OPSET if fold else MAX_OPSET)
    compared = [name for name in got if f"blob:{name}" in ref.files and "_split_" not in name
                and name not in inputs]
    assert compared
    for name in compared:
        assert relative(got[name], ref[f"blob:{name}"]) < 1e-5, name


def test_ssd_fork_layers_match_the_ssd_forks_own_caffe() -> None:
    """Normalize, PriorBox, Permute, Flatten, Concat, Reshape, Softmax of SSD's Caffe.

    DetectionOutput (a data-dependent number of rows after NMS) is not exported: the
    net is cut before it, and every blob before it is compared.
    """
    folder = shared_path("golden_forks", "ssd_tiny")
    net, inputs, ref = load_case(folder, fold=False)
    with pytest.raises(UnsupportedLayerError, match="'DetectionOutput' cannot be exported"):
        export_graph(net)
    for layer in [layer for layer in net.layers if layer.type == "DetectionOutput"]:
        net.remove_layer(layer)
    got = run_exported(net, inputs)
    compared = [name for name in got if f"blob:{name}" in ref.files and name not in inputs]
    assert {"conv2_norm", "mbox_priorbox", "mbox_conf_softmax"} <= set(compared)
    for name in compared:
        assert relative(got[name], ref[f"blob:{name}"]) < 1e-5, name


# --------------------------------------------------------------------------- pooling edge


def caffe_pool(x: Array, method: str, k: int, s: int, p: int, ceil: bool = True) -> Array:
    """Caffe's pooling_layer.cpp written out: output size, then MAX / AVE per window."""
    n, c, h, w = x.shape

    def size(extent: int) -> int:
        span = extent + 2 * p - k
        out = (-(-span // s) if ceil else span // s) + 1
        if p and (out - 1) * s >= extent + p:
            out -= 1
        return out

    oh, ow = size(h), size(w)
    y = np.zeros((n, c, oh, ow), np.float64)
    for i in range(oh):
        for j in range(ow):
            hstart, wstart = i * s - p, j * s - p
            hend, wend = min(hstart + k, h + p), min(wstart + k, w + p)
            pool_size = (hend - hstart) * (wend - wstart)  # AVE: padding counts
            hstart, wstart = max(hstart, 0), max(wstart, 0)
            hend, wend = min(hend, h), min(wend, w)
            window = x[:, :, hstart:hend, wstart:wend]
            if method == "MAX":
                y[:, :, i, j] = window.max(axis=(2, 3))
            else:
                y[:, :, i, j] = window.sum(axis=(2, 3)) / pool_size
    return y


POOL_CASES = [
    # (method, kernel, stride, pad, height/width, ceil): each overhangs the padded image
    ("AVE", 3, 2, 1, 6, True),   # last window one row beyond the padding: divisor 6, 4
    ("AVE", 3, 2, 0, 8, True),   # no padding, ceil: last window reaches past the image
    ("AVE", 2, 2, 1, 5, True),   # 4 windows would start in the padding: Caffe drops one
    ("AVE", 5, 3, 2, 9, True),
    ("MAX", 3, 2, 1, 6, True),
    ("MAX", 3, 2, 0, 8, True),
    ("MAX", 2, 2, 1, 5, True),
    ("MAX", 3, 2, 0, 8, False),  # the forks' ceil_mode: false (floor)
    ("AVE", 3, 2, 1, 8, False),
]


@pytest.mark.parametrize(("method", "k", "s", "p", "size", "ceil"), POOL_CASES)
def test_pooling_at_the_overhanging_edge_matches_caffe(method: str, k: int, s: int, p: int,
                                                       size: int, ceil: bool) -> None:
    fork = "" if ceil else " ceil_mode: false"
    net = bnfuse.load(f'''
    layer {{ name: "data" type: "Input" top: "data"
             input_param {{ shape {{ dim: 2 dim: 3 dim: {size} dim: {size} }} }} }}
    layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool"
             pooling_param {{ pool: {method} kernel_size: {k} stride: {s} pad: {p}{fork} }} }}
    '''.encode())
    # Negative values everywhere: a MAX that let the zero padding in would be caught.
    x = -np.random.default_rng(size + k).uniform(0.5, 2.0, (2, 3, size, size))
    expected = caffe_pool(x, method, k, s, p, ceil)
    got = run_exported(net, {"data": x.astype(np.float32)})["pool"]
    assert got.shape == expected.shape
    assert relative(got, expected) < 1e-6


def test_overhanging_ave_pooling_divides_by_the_clipped_window() -> None:
    net = bnfuse.load(b'''
    layer { name: "data" type: "Input" top: "data"
            input_param { shape { dim: 1 dim: 1 dim: 6 dim: 6 } } }
    layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
            pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }''')
    got = run_exported(net, {"data": np.ones((1, 1, 6, 6), np.float32)})["pool"]
    # Ones: per axis the windows [-1, 2), [1, 4), [3, 6), [5, 8) hold 2, 3, 3, 1 pixels of
    # the image and Caffe divides by their extent clipped to the padded [-1, 7): 3, 3, 3, 2.
    # (ONNX's count_include_pad would give 1/9 in the corner, Caffe gives 1/4.)
    pixels, divisor = np.array([2, 3, 3, 1]), np.array([3, 3, 3, 2])
    expected = np.outer(pixels, pixels) / np.outer(divisor, divisor)
    np.testing.assert_allclose(got[0, 0], expected, rtol=1e-6)
    assert got[0, 0, 3, 3] == np.float32(0.25)


# --------------------------------------------------------------------------- the layer zoo

ZOO = b'''
layer { name: "data" type: "Input" top: "data" top: "side"
        input_param { shape { dim: 2 dim: 4 dim: 9 dim: 9 } shape { dim: 2 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 8 kernel_size: 3 pad: 2 dilation: 2 group: 2 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "prelu" type: "PReLU" bottom: "conv" top: "conv" }
layer { name: "deconv" type: "Deconvolution" bottom: "conv" top: "deconv"
        convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 2 } }
layer { name: "cudnn_bn" type: "CuDNNBatchNorm" bottom: "deconv" top: "deconv" }
layer { name: "elu" type: "ELU" bottom: "deconv" top: "deconv" elu_param { alpha: 0.5 } }
layer { name: "pool" type: "Pooling" bottom: "deconv" top: "pool"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "lrn" type: "LRN" bottom: "pool" top: "lrn"
        lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 k: 2 } }
layer { name: "lrn_within" type: "LRN" bottom: "pool" top: "lrn_within"
        lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 norm_region: WITHIN_CHANNEL } }
layer { name: "sum" type: "Eltwise" bottom: "lrn" bottom: "lrn_within" top: "sum"
        eltwise_param { operation: SUM coeff: 0.5 coeff: -2 } }
layer { name: "prod" type: "Eltwise" bottom: "sum" bottom: "lrn" top: "prod"
        eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "prod" bottom: "sum" top: "max"
        eltwise_param { operation: MAX } }
layer { name: "slice" type: "Slice" bottom: "max" top: "s1" top: "s2"
        slice_param { axis: 1 slice_point: 1 } }
layer { name: "sig" type: "Sigmoid" bottom: "s1" top: "s1" }
layer { name: "tanh" type: "TanH" bottom: "s2" top: "s2" }
layer { name: "concat" type: "Concat" bottom: "s2" bottom: "s1" top: "cat" }
layer { name: "crop" type: "Crop" bottom: "cat" bottom: "s1" top: "crop"
        crop_param { axis: 1 offset: 1 offset: 0 offset: 0 } }
layer { name: "power" type: "Power" bottom: "crop" top: "power"
        power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "split" type: "Split" bottom: "power" top: "p1" top: "p2" }
layer { name: "scale2" type: "Scale" bottom: "p1" bottom: "p2" top: "scaled"
        scale_param { axis: 0 } }
layer { name: "bias" type: "Bias" bottom: "scaled" top: "scaled" }
layer { name: "ave" type: "Pooling" bottom: "scaled" top: "ave"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "global" type: "Pooling" bottom: "ave" top: "global"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "permute" type: "Permute" bottom: "ave" top: "permute"
        permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "flat" type: "Flatten" bottom: "permute" top: "flat" }
layer { name: "reshape" type: "Reshape" bottom: "flat" top: "reshaped"
        reshape_param { shape { dim: 0 dim: -1 dim: 3 } } }
layer { name: "ip_axis" type: "InnerProduct" bottom: "reshaped" top: "ip_axis"
        inner_product_param { num_output: 5 axis: 2 } }
layer { name: "ip_t" type: "InnerProduct" bottom: "side" top: "ip_t"
        inner_product_param { num_output: 3 transpose: true } }
layer { name: "segnet_bn" type: "BN" bottom: "ip_t" top: "ip_t"
        bn_param { bn_mode: INFERENCE } }
layer { name: "leaky" type: "ReLU" bottom: "ip_t" top: "ip_t" relu_param { negative_slope: 0.1 } }
layer { name: "drop" type: "Dropout" bottom: "ip_t" top: "ip_t" }
layer { name: "softmax" type: "Softmax" bottom: "ip_axis" top: "prob" softmax_param { axis: 1 } }
'''


@pytest.mark.parametrize("opset", [MIN_OPSET, MAX_OPSET])
def test_every_layer_type_matches_the_executor(opset: int) -> None:
    net = random_weights(ZOO, seed=3)
    rng = np.random.default_rng(0)
    inputs = {"data": rng.standard_normal((2, 4, 9, 9)).astype(np.float32),
              "side": rng.standard_normal((2, 6)).astype(np.float32)}
    expected = forward(net, inputs)
    got = run_exported(net, inputs, opset=opset)
    assert set(got) == set(expected) - set(inputs)
    for name in got:
        assert relative(got[name], expected[name]) < 1e-5, name
    # Only the net's outputs in the default export, under Caffe's names.
    plain = export_graph(net, opset=opset)
    assert [o.name for o in plain.model.graph.output] == ["global", "ip_t", "prob"]


FORKS = b'''
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 6 dim: 5 dim: 5 } } }
layer { name: "relu6" type: "ReLU6" bottom: "data" top: "r6" }
layer { name: "leaky6" type: "ReLU6" bottom: "data" top: "l6" relu6_param { negative_slope: 0.2 } }
layer { name: "shuffle" type: "ShuffleChannel" bottom: "l6" top: "shuffled"
        shuffle_channel_param { group: 3 } }
layer { name: "gap" type: "Pooling" bottom: "shuffled" top: "gap"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "gate" type: "Sigmoid" bottom: "gap" top: "gap" }
layer { name: "axpy" type: "Axpy" bottom: "gap" bottom: "shuffled" bottom: "r6" top: "axpy" }
layer { name: "up" type: "Upsample" bottom: "axpy" top: "up" upsample_param { scale: 2 } }
layer { name: "norm" type: "Normalize" bottom: "up" top: "norm"
        norm_param { across_spatial: false channel_shared: false } }
layer { name: "norm_all" type: "Normalize" bottom: "up" top: "norm_all" }
'''


@pytest.mark.parametrize("opset", [MIN_OPSET, MAX_OPSET])
def test_fork_layers_match_the_executor(opset: int) -> None:
    net = random_weights(FORKS, seed=1)
    x = {"data": 4 * np.random.default_rng(2).standard_normal((2, 6, 5, 5)).astype(np.float32)}
    expected = forward(net, x)
    got = run_exported(net, x, opset=opset)
    assert set(got) == set(expected) - {"data"}
    for name in got:
        assert relative(got[name], expected[name]) < 1e-5, name


def test_in_place_blobs_are_versioned_and_the_final_version_keeps_the_name() -> None:
    net = random_weights(b'''
    layer { name: "data" type: "Input" top: "data"
            input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }
    layer { name: "pre" type: "Power" bottom: "data" top: "data" power_param { shift: 1 } }
    layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
            convolution_param { num_output: 2 kernel_size: 1 } }
    layer { name: "conv1/bn" type: "BatchNorm" bottom: "conv1" top: "conv1" }
    layer { name: "relu" type: "ReLU" bottom: "conv1" top: "conv1" }''', seed=0)
    exported = export_graph(net)
    graph = exported.model.graph
    assert [(n.op_type, list(n.input)[:1], list(n.output)) for n in graph.node] == [
        ("Add", ["data"], ["data#1"]),
        ("Conv", ["data#1"], ["conv1#0"]),
        ("BatchNormalization", ["conv1#0"], ["conv1#1"]),
        ("Relu", ["conv1#1"], ["conv1"]),
    ]
    assert [i.name for i in graph.input] == ["data"]
    assert exported.blob_values == {"data": "data#1", "conv1": "conv1"}
    assert [n.name for n in graph.node] == ["pre", "conv1", "conv1/bn", "relu"]


def test_one_error_names_every_type_that_cannot_be_exported() -> None:
    net = bnfuse.load(b'''
    layer { name: "data" type: "Input" top: "data"
            input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
    layer { name: "reorg" type: "Reorg" bottom: "data" top: "r" }
    layer { name: "relu" type: "ReLU" bottom: "r" top: "r" }
    layer { name: "py" type: "Python" bottom: "r" top: "q" }
    layer { name: "reorg2" type: "Reorg" bottom: "q" top: "z" }''')
    with pytest.raises(UnsupportedLayerError) as info:
        export_graph(net)
    assert "layer types 'Python', 'Reorg' cannot be exported to ONNX" in str(info.value)


def caffe_pool_mask(x: Array, k: int, s: int, p: int) -> Array:
    """Caffe's MAX mask written out: ``h * W + w`` of the first maximum (strict ``>``)."""
    n, c, h, w = x.shape
    oh = -(-(h + 2 * p - k) // s) + 1
    if p and (oh - 1) * s >= h + p:
        oh -= 1
    mask = np.zeros((n, c, oh, oh))
    for i, j in np.ndindex(oh, oh):
        hs, ws = max(i * s - p, 0), max(j * s - p, 0)
        he, we = min(i * s - p + k, h), min(j * s - p + k, w)
        for a, b_ in np.ndindex(n, c):
            best, where = -np.inf, -1
            for y in range(hs, he):
                for z in range(ws, we):
                    if x[a, b_, y, z] > best:
                        best, where = x[a, b_, y, z], y * w + z
            mask[a, b_, i, j] = where
    return mask


SEGNET = b'''
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 7 dim: 7 } } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "pool2" type: "Pooling" bottom: "pool" top: "pool2" top: "mask2"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "unpool2" type: "Upsample" bottom: "pool2" bottom: "mask2" top: "unpooled2"
        upsample_param { scale: 2 } }
layer { name: "interp" type: "Interp" bottom: "unpooled2" top: "zoomed"
        interp_param { zoom_factor: 3 } }
layer { name: "shrink" type: "Interp" bottom: "zoomed" top: "shrunk"
        interp_param { shrink_factor: 2 pad_beg: -1 pad_end: -1 } }
'''


def test_segnet_masks_unpooling_and_pspnet_interp_match_caffe_rules() -> None:
    net = bnfuse.load(SEGNET)
    # Ties everywhere (few distinct values): the mask must name the first maximum.
    x = np.random.default_rng(4).integers(-2, 3, (2, 3, 7, 7)).astype(np.float32)
    got = run_exported(net, {"data": x})
    np.testing.assert_array_equal(got["mask"], caffe_pool_mask(x, 3, 2, 1))
    np.testing.assert_array_equal(got["pool"], caffe_pool(x, "MAX", 3, 2, 1))
    expected = forward(net, {"data": x})
    assert set(got) == set(expected) - {"data"}
    for name in ("mask2", "unpooled2"):
        np.testing.assert_array_equal(got[name], expected[name])
    for name in ("zoomed", "shrunk"):
        assert relative(got[name], expected[name]) < 1e-6, name


def test_legacy_inputs_and_data_layers_become_graph_inputs() -> None:
    legacy = bnfuse.load(b'''input: "data" input_dim: 2 input_dim: 3 input_dim: 4 input_dim: 4
    layer { name: "relu" type: "ReLU" bottom: "data" top: "out" }''')
    exported = export_graph(legacy)
    assert exported.inputs == {"data": (2, 3, 4, 4)} and exported.outputs == ["out"]
    data_layer = bnfuse.load(b'''
    layer { name: "d" type: "Data" top: "data" top: "label" include { phase: TEST }
            transform_param { crop_size: 5 } data_param { batch_size: 4 } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 2 kernel_size: 1 } }''')
    net = random_weights(data_layer, seed=0, input_shapes={"data": (4, 3, 5, 5)})
    exported = export_graph(net, input_shapes={"data": (4, 3, 5, 5)})
    assert exported.inputs == {"data": (4, 3, 5, 5)}  # the label nobody reads is left out
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5)).astype(np.float32)
    assert relative(run_exported(net, {"data": x})["conv"], forward(net, {"data": x})["conv"]) \
        < 1e-6


def test_a_train_val_net_is_pointed_to_its_deploy_form() -> None:
    net = bnfuse.load(b'''
    layer { name: "data" type: "Input" top: "data" top: "label"
            input_param { shape { dim: 1 dim: 4 } shape { dim: 1 } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" top: "loss" }
    layer { name: "acc" type: "Accuracy" bottom: "data" bottom: "label" top: "acc" }''')
    with pytest.raises(UnsupportedLayerError, match=r"layer types 'Accuracy', 'SoftmaxWithLoss' "
                                                    r"cannot be exported to ONNX; this is a "
                                                    r"train/val net: export its deploy form"):
        export_graph(net)


def test_opsets_outside_the_stated_range_are_refused() -> None:
    paths = (bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
    for opset in (MIN_OPSET - 1, MAX_OPSET + 1):
        with pytest.raises(BnfuseError, match="bnfuse writes opsets 13 to 21"):
            bnfuse.to_onnx(paths, opset=opset)
    with pytest.raises(TypeError, match="opset must be an int"):
        bnfuse.to_onnx(paths, opset="17")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- extras, API


def test_import_bnfuse_never_imports_onnx() -> None:
    code = ("import sys, bnfuse; bnfuse.load(bnfuse.example_path()); "
            "print(sorted(m for m in ('onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_a_missing_onnx_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(BackendUnavailableError, match=r'pip install "bnfuse\[onnx\]"'):
        import_onnx()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendUnavailableError, match=r'pip install "bnfuse\[verify\]"'):
        import_onnxruntime()


def test_to_onnx_folds_a_copy_and_leaves_the_callers_net_alone(tmp_path: Path) -> None:
    net = bnfuse.load(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
    types = [layer.type for layer in net.layers]
    out = tmp_path / "m.onnx"
    model = bnfuse.to_onnx(net, out)
    assert [layer.type for layer in net.layers] == types
    assert "BatchNormalization" not in {n.op_type for n in model.graph.node}
    assert out.read_bytes() == model.SerializeToString()
    unfolded = bnfuse.to_onnx(net, fold=False)
    assert [n.op_type for n in unfolded.graph.node].count("BatchNormalization") == 2


def test_to_onnx_never_writes_over_the_nets_own_files(tmp_path: Path) -> None:
    prototxt = tmp_path / "a.prototxt"
    caffemodel = tmp_path / "a.caffemodel"
    prototxt.write_bytes(bnfuse.example_path("prototxt").read_bytes())
    caffemodel.write_bytes(bnfuse.example_path("caffemodel").read_bytes())
    with pytest.raises(OutputError):
        bnfuse.to_onnx((prototxt, caffemodel), caffemodel)
    assert caffemodel.read_bytes() == bnfuse.example_path("caffemodel").read_bytes()


# --------------------------------------------------------------------------- verification


def _perturbed(net: Any) -> Any:
    """A deliberately wrong fold: the first weighted layer's largest weight moved by 5%."""
    for layer in net.layers:
        if layer.blobs:
            blobs = [np.array(b) for b in layer.blobs]
            flat = blobs[0].reshape(-1)
            i = int(np.abs(flat).argmax())
            flat[i] *= 1.05
            net.set_blobs(layer, blobs)
            return net
    raise AssertionError("no weights")


@pytest.mark.parametrize("case", golden_cases() or ["absent"])
def test_onnxruntime_backend_agrees_with_numpy_verdicts(case: str) -> None:
    folder = shared_path("golden", case)
    original = (folder / "model.prototxt", folder / "model.caffemodel")
    verdicts = {}
    for backend in ("numpy", "onnxruntime"):
        good = bnfuse.verify(original, bnfuse.fold(*original).net, backend=backend)
        bad = bnfuse.verify(original, _perturbed(bnfuse.fold(*original).net), backend=backend)
        verdicts[backend] = (good.passed, bad.passed, bad.first_divergence)
    assert verdicts["numpy"] == verdicts["onnxruntime"]
    assert verdicts["numpy"][:2] == (True, False)


def test_verify_onnx_passes_the_export_and_catches_a_wrong_weight() -> None:
    paths = (bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
    model = bnfuse.to_onnx(paths)
    good = verify_onnx(paths, model)
    assert good.passed and [blob.name for blob in good.blobs] == ["prob"]
    assert good.only_in_a == []
    weight = next(t for t in model.graph.initializer if t.name == "conv1/weight")
    values = onnx.numpy_helper.to_array(weight).copy()
    values.flat[int(np.abs(values).argmax())] *= 1.05
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    bad = verify_onnx(paths, model)
    assert not bad.passed and bad.first_divergence == "prob"


def test_cli_export_verify_and_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = [str(bnfuse.example_path(kind)) for kind in ("prototxt", "caffemodel")]
    out = tmp_path / "example.onnx"
    assert main(["export", *model, "-o", str(out), "--verify", "--opset", "13"]) == 0
    text = capsys.readouterr().out
    assert "PASSED (onnxruntime, float32)" in text
    assert f"wrote {out}" in text
    assert onnx.load(out).opset_import[0].version == 13
    assert main(["export", *model, "-o", str(out), "--no-fold", "-q"]) == 0
    assert [n.op_type for n in onnx.load(out).graph.node].count("BatchNormalization") == 2
    assert main(["export", *model, "-o", model[1]]) == 1
    assert "error:" in capsys.readouterr().err
    assert main(["verify", *model, *model, "--backend", "onnxruntime", "-q"]) == 0
    folded = [str(tmp_path / "f.prototxt"), str(tmp_path / "f.caffemodel")]
    assert main(["fold", *model, "-o", folded[0], "-w", folded[1], "--verify",
                 "--backend", "onnxruntime"]) == 0
    assert "PASSED (onnxruntime, float32)" in capsys.readouterr().out
    assert main(["export", *model, "--opset", "12"]) == 2
