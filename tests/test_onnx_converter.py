"""A converter written as its author would: only names from ``bnfuse`` itself.

This file imports nothing from a private bnfuse module (a test below reads the file to
keep it so); the converter uses bnfuse.load, forward, affine_of and to_onnx, then onnx
and ONNX Runtime. Tolerances: ORT against bnfuse's executor, 1e-6 absolute on softmax
probabilities; the BatchNorm map in float32 against affine_of's float64, 1e-6 relative.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import bnfuse

if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
    pytest.skip("the verify extra (onnx, onnxruntime) is not installed", allow_module_level=True)


def test_a_converter_needs_only_bnfuse_names(tmp_path: Path) -> None:
    """What a converter author writes: bnfuse's public names, onnx and onnxruntime."""
    import onnx
    import onnxruntime

    paths = (bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
    net = bnfuse.load(*paths)
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    expected = bnfuse.forward(net, {"data": x}, blobs=["prob", "conv1"])
    target = tmp_path / "example.onnx"
    model = bnfuse.to_onnx(net, target, opset=13)
    sess = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    # The model's inputs and outputs are the net's, by name and shape.
    assert {i.name: tuple(i.shape) for i in sess.get_inputs()} == net.inputs == {
        "data": (1, 3, 32, 32)}
    assert tuple(o.name for o in model.graph.output) == net.outputs == ("prob",)
    assert tuple(d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim) == \
        net.shapes()["prob"]
    (prob,) = sess.run(["prob"], {"data": x})
    np.testing.assert_allclose(prob, expected["prob"], rtol=0, atol=1e-6)
    # Unfolded: the BatchNorm's map, as affine_of reads it, is what the model computes.
    unfolded = bnfuse.to_onnx(net, fold=False)
    bn = next(n for n in unfolded.graph.node if n.op_type == "BatchNormalization")
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in unfolded.graph.initializer}
    _, gamma, beta, mean, var = (weights.get(name) for name in bn.input)
    eps = next(a.f for a in bn.attribute if a.name == "epsilon")
    affine = bnfuse.affine_of(net.layer("conv1/bn"))
    np.testing.assert_allclose(gamma / np.sqrt(var.astype(np.float64) + eps), affine.scale,
                               rtol=1e-6)
    np.testing.assert_allclose(beta - mean * affine.scale, affine.shift, rtol=1e-5, atol=1e-6)


def test_this_converter_imports_no_private_bnfuse_module() -> None:
    tree = ast.parse(Path(__file__).read_text())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert sorted(m for m in modules if m.startswith("bnfuse")) == ["bnfuse"]
