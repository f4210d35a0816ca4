"""The numpy reference executor against independent formulas and against real Caffe.

Every layer type is checked against a reference written here as plainly as possible
(direct loops on tiny shapes for convolution, deconvolution, pooling and LRN), and the
golden fixtures and real models made by BVLC Caffe are replayed blob by blob.

Tolerances: results are compared by max |difference| relative to the reference's
max |value| (``assert_close``). Float32 against a float64 loop: 1e-5. Golden cases
(shallow nets) against Caffe: 1e-5. Real MobileNets against Caffe: 1e-4, because
float32 rounding alone accounts for up to 3.6e-5 there (Caffe's own float32 output is
that far from a float64 evaluation of the same net, measured on these files).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from conftest import golden_cases, real_models, shared_path
from google.protobuf import text_format

from bnfuse import proto
from bnfuse.errors import ModelMismatchError, UnsupportedLayerError
from bnfuse.layertypes.shapes import infer_shapes, layer_output_shapes, param_shapes
from bnfuse.verification.executor import forward, forward_steps

Array = npt.NDArray[Any]


@dataclass
class Layer:
    """The smallest thing the executor accepts as a layer."""

    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    param: Any
    blobs: list[Array] = field(default_factory=list)


@dataclass
class Net:
    layers: list[Layer]


def layer(text: str, *blobs: npt.ArrayLike) -> Layer:
    """A layer from its prototxt text (name, type, bottoms and tops are read from it)."""
    p = text_format.Parse(text, proto.LayerParameter())
    weights = [np.asarray(b, dtype=np.float32) for b in blobs]
    return Layer(p.name, p.type, tuple(p.bottom), tuple(p.top), p, weights)


def run(layers: Sequence[Layer], dtype: Any = np.float32, **inputs: Array) -> dict[str, Array]:
    return forward(Net(list(layers)), inputs, dtype=dtype)


def assert_close(actual: Array, expected: npt.ArrayLike, rel: float = 1e-5) -> None:
    """max |actual - expected| <= rel * max |expected| (shapes must match exactly)."""
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-30)
    err = float(np.abs(actual.astype(np.float64) - expected).max(initial=0.0))
    assert err <= rel * scale, f"max abs diff {err:.3g} > {rel:g} * {scale:.3g}"


RNG = np.random.default_rng(1234)


def randn(*shape: int) -> Array:
    return RNG.standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------- references


def ref_conv(
    x: Array,
    w: Array,
    b: Array | None,
    *,
    stride: Sequence[int],
    pad: Sequence[int],
    dil: Sequence[int],
    group: int,
) -> Array:
    """Direct N-D convolution: every output = sum over its group's channels and taps."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    n = x.shape[0]
    cout, cin_g = w.shape[:2]
    kernel = w.shape[2:]
    size = x.shape[2:]
    out_size = [
        (s + 2 * p - (d * (k - 1) + 1)) // st + 1
        for s, p, d, k, st in zip(size, pad, dil, kernel, stride, strict=True)
    ]
    y = np.zeros((n, cout, *out_size))
    cout_g = cout // group
    for i in range(n):
        for o in range(cout):
            first = (o // cout_g) * cin_g
            for pos in itertools.product(*(range(s) for s in out_size)):
                total = 0.0 if b is None else float(b[o])
                for tap in itertools.product(*(range(k) for k in kernel)):
                    src = [
                        q * st - p + t * d
                        for q, st, p, t, d in zip(pos, stride, pad, tap, dil, strict=True)
                    ]
                    if all(0 <= s < lim for s, lim in zip(src, size, strict=True)):
                        total += float(
                            np.dot(
                                x[(i, slice(first, first + cin_g), *src)], w[(o, slice(None), *tap)]
                            )
                        )
                y[(i, o, *pos)] = total
    return y


def ref_deconv(
    x: Array, w: Array, b: Array | None, *, stride: int, pad: int, dil: int, group: int
) -> Array:
    """Direct 2-D deconvolution: every input pixel scatters weight * value into the output."""
    x = x.astype(np.float64)
    n, cin, h, wd = x.shape
    _, cout_g, kh, kw = w.shape
    cin_g = cin // group
    oh = stride * (h - 1) + dil * (kh - 1) + 1 - 2 * pad
    ow = stride * (wd - 1) + dil * (kw - 1) + 1 - 2 * pad
    y = np.zeros((n, cout_g * group, oh, ow))
    for i, ci, r, c, co, a, bb in itertools.product(
        range(n), range(cin), range(h), range(wd), range(cout_g), range(kh), range(kw)
    ):
        orow, ocol = r * stride - pad + a * dil, c * stride - pad + bb * dil
        if 0 <= orow < oh and 0 <= ocol < ow:
            y[i, (ci // cin_g) * cout_g + co, orow, ocol] += x[i, ci, r, c] * float(
                w[ci, co, a, bb]
            )
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def ref_pool(
    x: Array,
    method: str,
    *,
    k: tuple[int, int],
    s: tuple[int, int],
    p: tuple[int, int],
    ceil: bool = True,
) -> Array:
    """Caffe's pooling rules written out as loops (see pooling_layer.cpp)."""
    n, c, h, w = x.shape

    def out(size: int, kk: int, ss: int, pp: int) -> int:
        span = (size + 2 * pp - kk) / ss
        o = (int(np.ceil(span)) if ceil else int(np.floor(span))) + 1
        if pp and (o - 1) * ss >= size + pp:
            o -= 1
        return o

    oh, ow = out(h, k[0], s[0], p[0]), out(w, k[1], s[1], p[1])
    y = np.zeros((n, c, oh, ow))
    for i, ch, r, q in itertools.product(range(n), range(c), range(oh), range(ow)):
        hs, ws = r * s[0] - p[0], q * s[1] - p[1]
        if method == "MAX":
            he, we = min(hs + k[0], h), min(ws + k[1], w)
            window = x[i, ch, max(hs, 0) : he, max(ws, 0) : we]
            y[i, ch, r, q] = window.max()
        else:
            he, we = min(hs + k[0], h + p[0]), min(ws + k[1], w + p[1])
            divisor = (he - hs) * (we - ws)
            window = x[i, ch, max(hs, 0) : min(he, h), max(ws, 0) : min(we, w)]
            y[i, ch, r, q] = window.astype(np.float64).sum() / divisor
    return y


# --------------------------------------------------------------------------- inputs


def test_input_layer_fills_seeded_standard_normal_data() -> None:
    inp = layer(
        'name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } }'
    )
    first = forward(Net([inp]), seed=7)
    again = forward(Net([inp]), seed=7)
    other = forward(Net([inp]), seed=8)
    assert first["a"].shape == first["b"].shape == (2, 3)
    assert first["a"].dtype == np.float32
    np.testing.assert_array_equal(first["a"], again["a"])
    assert not np.array_equal(first["a"], other["a"])
    expected = np.random.default_rng(7).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(first["a"], expected)


def test_given_input_replaces_random_data_and_unknown_names_are_rejected() -> None:
    inp = layer('name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } }')
    data = np.array([[1.5, -2.0]], dtype=np.float32)
    out = forward(Net([inp]), {"data": data})
    np.testing.assert_array_equal(out["data"], data)
    with pytest.raises(ModelMismatchError, match="datta"):
        forward(Net([inp]), {"datta": data})
    relu = layer('name: "r" type: "ReLU" bottom: "data" top: "act"')
    with pytest.raises(ModelMismatchError, match="act"):
        forward(Net([inp, relu]), {"act": data})


def test_convolution_with_several_bottoms_shares_the_weights() -> None:
    a, b = randn(1, 2, 4, 4), randn(1, 2, 4, 4)
    w = randn(3, 2, 3, 3)
    conv = layer(
        'name: "c" type: "Convolution" bottom: "a" bottom: "b" top: "p" top: "q" '
        "convolution_param { num_output: 3 kernel_size: 3 pad: 1 bias_term: false }",
        w,
    )
    out = run([conv], a=a, b=b)
    geometry = {"stride": (1, 1), "pad": (1, 1), "dil": (1, 1), "group": 1}
    assert_close(out["p"], ref_conv(a, w, None, **geometry))
    assert_close(out["q"], ref_conv(b, w, None, **geometry))


# --------------------------------------------------------------------------- convolution

CONV_CASES = [
    # (param text, input shape, weight shape, stride, pad, dilation, group)
    ("num_output: 4 kernel_size: 3", (2, 3, 6, 5), (4, 3, 3, 3), (1, 1), (0, 0), (1, 1), 1),
    (
        "num_output: 4 kernel_size: 3 pad: 1 stride: 2",
        (1, 3, 7, 6),
        (4, 3, 3, 3),
        (2, 2),
        (1, 1),
        (1, 1),
        1,
    ),
    (
        "num_output: 6 kernel_size: 3 pad: 2 dilation: 2 stride: 2 group: 3",
        (1, 6, 9, 9),
        (6, 2, 3, 3),
        (2, 2),
        (2, 2),
        (2, 2),
        3,
    ),
    (
        "num_output: 2 kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 stride_h: 1 stride_w: 2",
        (1, 2, 5, 6),
        (2, 2, 3, 1),
        (1, 2),
        (1, 0),
        (1, 1),
        1,
    ),
    (
        "num_output: 3 kernel_size: 2 kernel_size: 3 pad: 0 pad: 1",
        (1, 2, 5, 5),
        (3, 2, 2, 3),
        (1, 1),
        (0, 1),
        (1, 1),
        1,
    ),
    ("num_output: 5 kernel_size: 1", (2, 4, 3, 3), (5, 4, 1, 1), (1, 1), (0, 0), (1, 1), 1),
    (
        "num_output: 4 kernel_size: 1 stride: 2 group: 2",
        (1, 4, 5, 5),
        (4, 2, 1, 1),
        (2, 2),
        (0, 0),
        (1, 1),
        2,
    ),
    (
        "num_output: 4 kernel_size: 3 pad: 1 group: 4",
        (1, 4, 5, 5),
        (4, 1, 3, 3),
        (1, 1),
        (1, 1),
        (1, 1),
        4,
    ),
    (
        "num_output: 8 kernel_size: 3 pad: 1 group: 4",
        (2, 4, 5, 5),
        (8, 1, 3, 3),
        (1, 1),
        (1, 1),
        (1, 1),
        4,
    ),
]


@pytest.mark.parametrize(("text", "xshape", "wshape", "stride", "pad", "dil", "group"), CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_convolution_matches_direct_loops(
    *,
    text: str,
    xshape: tuple[int, ...],
    wshape: tuple[int, ...],
    stride: tuple[int, int],
    pad: tuple[int, int],
    dil: tuple[int, int],
    group: int,
    bias: bool,
) -> None:
    x, w = randn(*xshape), randn(*wshape)
    b = randn(wshape[0]) if bias else None
    blobs = [w, b] if b is not None else [w]
    conv = layer(
        f'name: "c" type: "Convolution" bottom: "x" top: "y" '
        f"convolution_param {{ {text} bias_term: {str(bias).lower()} }}",
        *blobs,
    )
    assert_close(
        run([conv], x=x)["y"], ref_conv(x, w, b, stride=stride, pad=pad, dil=dil, group=group)
    )


def test_convolution_3d_and_1d() -> None:
    x3, w3, b3 = randn(1, 2, 4, 5, 4), randn(3, 2, 2, 3, 2), randn(3)
    conv3 = layer(
        'name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param '
        "{ num_output: 3 kernel_size: 2 kernel_size: 3 kernel_size: 2 pad: 1 stride: 2 }",
        w3,
        b3,
    )
    assert_close(
        run([conv3], x=x3)["y"],
        ref_conv(x3, w3, b3, stride=(2, 2, 2), pad=(1, 1, 1), dil=(1, 1, 1), group=1),
    )
    x1, w1 = randn(2, 3, 9), randn(4, 3, 3)
    conv1 = layer(
        'name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param '
        "{ num_output: 4 kernel_size: 3 dilation: 2 bias_term: false }",
        w1,
    )
    assert_close(
        run([conv1], x=x1)["y"], ref_conv(x1, w1, None, stride=(1,), pad=(0,), dil=(2,), group=1)
    )


def test_convolution_axis_puts_leading_axes_in_the_batch() -> None:
    # axis: 2 on a (2, 3, C, L) blob: the first two axes are both "num".
    x, w = randn(2, 3, 4, 6), randn(5, 4, 3)
    conv = layer(
        'name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param '
        "{ num_output: 5 kernel_size: 3 axis: 2 bias_term: false }",
        w,
    )
    expected = ref_conv(
        x.reshape(6, 4, 6), w, None, stride=(1,), pad=(0,), dil=(1,), group=1
    ).reshape(2, 3, 5, 4)
    assert_close(run([conv], x=x)["y"], expected)


@pytest.mark.parametrize("kind", ["ConvolutionDepthwise", "DepthwiseConvolution"])
def test_depthwise_aliases_are_one_group_per_channel(kind: str) -> None:
    x, w, b = randn(1, 3, 6, 6), randn(3, 1, 3, 3), randn(3)
    dw = layer(
        f'name: "dw" type: "{kind}" bottom: "x" top: "y" '
        "convolution_param { num_output: 3 kernel_size: 3 pad: 1 stride: 2 }",
        w,
        b,
    )
    assert_close(
        run([dw], x=x)["y"], ref_conv(x, w, b, stride=(2, 2), pad=(1, 1), dil=(1, 1), group=3)
    )


@pytest.mark.parametrize(
    ("text", "xshape", "wshape", "stride", "pad", "dil", "group"),
    [
        ("num_output: 3 kernel_size: 3", (1, 2, 3, 4), (2, 3, 3, 3), 1, 0, 1, 1),
        (
            "num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2",
            (2, 4, 3, 3),
            (4, 3, 4, 4),
            2,
            1,
            1,
            2,
        ),
        (
            "num_output: 2 kernel_size: 3 stride: 3 dilation: 2 pad: 2",
            (1, 3, 3, 2),
            (3, 2, 3, 3),
            3,
            2,
            2,
            1,
        ),
        ("num_output: 4 kernel_size: 2 stride: 2 group: 4", (1, 4, 2, 3), (4, 1, 2, 2), 2, 0, 1, 4),
    ],
)
def test_deconvolution_matches_direct_scatter(
    *,
    text: str,
    xshape: tuple[int, ...],
    wshape: tuple[int, ...],
    stride: int,
    pad: int,
    dil: int,
    group: int,
) -> None:
    x, w, b = randn(*xshape), randn(*wshape), randn(wshape[1] * group)
    deconv = layer(
        f'name: "d" type: "Deconvolution" bottom: "x" top: "y" convolution_param {{ {text} }}',
        w,
        b,
    )
    assert_close(
        run([deconv], x=x)["y"], ref_deconv(x, w, b, stride=stride, pad=pad, dil=dil, group=group)
    )


def test_inner_product_axis_and_transpose() -> None:
    x = randn(2, 3, 2, 2)
    w, b = randn(5, 12), randn(5)
    fc = layer(
        'name: "fc" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output:'
        " 5 }",
        w,
        b,
    )
    expected = x.reshape(2, 12).astype(np.float64) @ w.T.astype(np.float64) + b
    assert_close(run([fc], x=x)["y"], expected)
    wt = randn(4, 5)
    fct = layer(
        'name: "fc" type: "InnerProduct" bottom: "x" top: "y" '
        "inner_product_param { num_output: 5 axis: 2 transpose: true bias_term: false }",
        wt,
    )
    expected = x.reshape(2, 3, 4).astype(np.float64) @ wt.astype(np.float64)
    assert_close(run([fct], x=x)["y"], expected)


# --------------------------------------------------------------------------- normalisation


def test_batch_norm_global_stats_use_the_factor() -> None:
    x = randn(2, 3, 4, 4)
    mean, var, factor = np.array([1.0, -2.0, 0.5]), np.array([4.0, 0.25, 1.0]), 2.0
    bn = layer(
        'name: "bn" type: "BatchNorm" bottom: "x" top: "x" batch_norm_param { eps: 0.001 }',
        mean * factor,
        var * factor,
        [factor],
    )
    expected = (x - mean.reshape(1, 3, 1, 1)) / np.sqrt(var.reshape(1, 3, 1, 1) + 0.001)
    assert_close(run([bn], x=x)["x"], expected)


def test_batch_norm_zero_factor_means_zero_statistics() -> None:
    x = randn(1, 2, 3, 3)
    bn = layer('name: "bn" type: "BatchNorm" bottom: "x" top: "y"', [5.0, 6.0], [7.0, 8.0], [0.0])
    assert_close(run([bn], x=x)["y"], x / np.sqrt(1e-5))


def test_batch_norm_explicit_false_uses_batch_statistics() -> None:
    x = randn(3, 2, 4, 5) * 3 + 1
    bn = layer(
        'name: "bn" type: "BatchNorm" bottom: "x" top: "y" batch_norm_param { use_global_stats:'
        " false }",
        [100.0, 100.0],
        [100.0, 100.0],
        [1.0],
    )
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(0, 2, 3), keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    assert_close(run([bn], x=x)["y"], (x64 - mean) / np.sqrt(var + 1e-5))


def test_scale_and_bias_axis_num_axes_and_two_bottoms() -> None:
    x = randn(2, 3, 4, 5)
    s, b = randn(3), randn(3)
    sc = layer('name: "s" type: "Scale" bottom: "x" top: "y" scale_param { bias_term: true }', s, b)
    assert_close(run([sc], x=x)["y"], x * s.reshape(1, 3, 1, 1) + b.reshape(1, 3, 1, 1))
    s2 = randn(4, 5)
    sc2 = layer(
        'name: "s" type: "Scale" bottom: "x" top: "y" scale_param { axis: -2 num_axes: -1 }', s2
    )
    assert_close(run([sc2], x=x)["y"], x * s2)
    sc0 = layer(
        'name: "s" type: "Scale" bottom: "x" top: "y" scale_param { num_axes: 0 }', np.float32(2.5)
    )
    assert_close(run([sc0], x=x)["y"], x * 2.5)
    other, bias = randn(2, 3), randn(2, 3)
    sc3 = layer(
        'name: "s" type: "Scale" bottom: "x" bottom: "z" top: "y" scale_param { axis: 0'
        " bias_term: true }",
        bias,
    )
    expected = x * other.reshape(2, 3, 1, 1) + bias.reshape(2, 3, 1, 1)
    assert_close(run([sc3], x=x, z=other)["y"], expected)
    bl = layer(
        'name: "b" type: "Bias" bottom: "x" top: "y" bias_param { axis: 1 num_axes: 2 }', s2[:3, :4]
    )
    assert_close(run([bl], x=x)["y"], x + s2[:3, :4].reshape(1, 3, 4, 1))
    bl2 = layer('name: "b" type: "Bias" bottom: "x" bottom: "z" top: "y"', [])
    bl2.blobs = []
    assert_close(run([bl2], x=x, z=b)["y"], x + b.reshape(1, 3, 1, 1))


def lrn_reference(
    x: Array, *, size: int, alpha: float, beta: float, k: float, across: bool
) -> Array:
    x = x.astype(np.float64)
    n, c, h, w = x.shape
    half = (size - 1) // 2
    y = np.zeros_like(x)
    for i, ch, r, q in itertools.product(range(n), range(c), range(h), range(w)):
        if across:
            lo, hi = max(ch - half, 0), min(ch + half + 1, c)
            total = (x[i, lo:hi, r, q] ** 2).sum()
            y[i, ch, r, q] = x[i, ch, r, q] * (k + alpha / size * total) ** -beta
        else:
            rows = slice(max(r - half, 0), min(r + half + 1, h))
            cols = slice(max(q - half, 0), min(q + half + 1, w))
            total = (x[i, ch, rows, cols] ** 2).sum()
            y[i, ch, r, q] = x[i, ch, r, q] * (1 + alpha / size**2 * total) ** -beta
    return y


@pytest.mark.parametrize("across", [True, False])
def test_lrn_matches_direct_loops(across: bool) -> None:
    x = randn(2, 7, 5, 4) * 2
    region = "ACROSS_CHANNELS" if across else "WITHIN_CHANNEL"
    lrn = layer(
        'name: "n" type: "LRN" bottom: "x" top: "y" lrn_param '
        f"{{ local_size: 5 alpha: 0.3 beta: 0.75 k: 2 norm_region: {region} }}"
    )
    assert_close(
        run([lrn], x=x)["y"], lrn_reference(x, size=5, alpha=0.3, beta=0.75, k=2.0, across=across)
    )


# --------------------------------------------------------------------------- activations


def _sig(v: Array) -> Array:
    return 1.0 / (1.0 + np.exp(-v))


ACTIVATIONS = [
    ('type: "ReLU"', lambda v: np.maximum(v, 0)),
    ('type: "ReLU" relu_param { negative_slope: 0.1 }', lambda v: np.where(v > 0, v, 0.1 * v)),
    ('type: "ELU" elu_param { alpha: 0.5 }', lambda v: np.where(v > 0, v, 0.5 * (np.exp(v) - 1))),
    ('type: "Sigmoid"', _sig),
    ('type: "TanH"', np.tanh),
    ('type: "AbsVal"', np.abs),
    ('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', lambda v: (1 + 0.5 * v) ** 2),
    ('type: "Power" power_param { power: 0 scale: 3 }', np.ones_like),
    ('type: "Exp"', np.exp),
    ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }', lambda v: 2.0 ** (1 + 0.5 * v)),
    ('type: "Log" log_param { base: 10 scale: 2 shift: 9 }', lambda v: np.log10(9 + 2 * v)),
    ('type: "Clip" clip_param { min: -0.5 max: 0.7 }', lambda v: np.clip(v, -0.5, 0.7)),
    ('type: "Swish" swish_param { beta: 1.5 }', lambda v: v * _sig(1.5 * v)),
    ('type: "Threshold" threshold_param { threshold: 0.2 }', lambda v: (v > 0.2).astype(float)),
    ('type: "Dropout" dropout_param { dropout_ratio: 0.7 }', lambda v: v),
]


@pytest.mark.parametrize(
    ("text", "formula"),
    ACTIVATIONS,
    ids=[a[0].split('"')[1] + str(i) for i, a in enumerate(ACTIVATIONS)],
)
def test_elementwise_layers_match_their_formula(text: str, formula: Any) -> None:
    x = randn(2, 3, 4)
    act = layer(f'name: "a" bottom: "x" top: "y" {text}')
    assert_close(run([act], x=x)["y"], formula(x.astype(np.float64)))


def test_log_of_negative_is_nan_without_warnings() -> None:
    x = np.array([-1.0, 0.0, 1.0], dtype=np.float32)
    y = run([layer('name: "l" type: "Log" bottom: "x" top: "y"')], x=x)["y"]
    assert np.isnan(y[0]) and y[1] == -np.inf and y[2] == 0


def test_prelu_per_channel_and_shared() -> None:
    x = randn(2, 3, 4)
    a = np.array([0.1, -0.5, 2.0], dtype=np.float32)
    pr = layer('name: "p" type: "PReLU" bottom: "x" top: "y"', a)
    assert_close(run([pr], x=x)["y"], np.where(x > 0, x, a.reshape(1, 3, 1) * x))
    shared = layer(
        'name: "p" type: "PReLU" bottom: "x" top: "y" prelu_param { channel_shared: true }',
        np.float32(0.25),
    )
    assert_close(run([shared], x=x)["y"], np.where(x > 0, x, 0.25 * x))


# --------------------------------------------------------------------------- pooling


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize(
    ("text", "k", "s", "p"),
    [
        ("kernel_size: 3 stride: 2", (3, 3), (2, 2), (0, 0)),
        ("kernel_size: 3 stride: 2 pad: 1", (3, 3), (2, 2), (1, 1)),
        ("kernel_size: 2 stride: 2 pad: 1", (2, 2), (2, 2), (1, 1)),
        ("kernel_size: 3 stride: 3 pad: 2", (3, 3), (3, 3), (2, 2)),
        (
            "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0",
            (3, 2),
            (2, 1),
            (1, 0),
        ),
    ],
)
def test_pooling_matches_caffe_loops(
    method: str, text: str, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int]
) -> None:
    x = randn(2, 3, 7, 6)
    pool = layer(
        f'name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param {{ pool: {method} {text} }}'
    )
    assert_close(run([pool], x=x)["y"], ref_pool(x, method, k=k, s=s, p=p))


def test_pooling_ceil_rounding_and_last_window_rule() -> None:
    # 4 + 2*1 - 2 = 4, /2 = 2 -> 3 windows; a 4th never exists. 5 + 2 - 2 = 5, ceil(2.5) + 1 = 4,
    # but window 4 would start at 6 - 1 = 5 = H: only padding, so Caffe drops it -> 3.
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    pool = layer(
        'name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: AVE kernel_size:'
        " 2 stride: 2 pad: 1 }"
    )
    y = run([pool], x=x)["y"]
    assert y.shape == (1, 1, 3, 3)
    # Corner: only x[0,0] is inside, the window (2x2) is all within the padded extent -> /4.
    assert y[0, 0, 0, 0] == pytest.approx(0.0 / 4)
    # Last row/col window [3, 5) x [3, 5): all inside the image -> plain mean.
    assert y[0, 0, 2, 2] == pytest.approx((18 + 19 + 23 + 24) / 4)
    # Without padding ceil keeps a partial last window: (6 - 3) / 2 = 1.5 -> 3 outputs,
    # and AVE divides the clipped window by its clipped size.
    x6 = np.arange(36, dtype=np.float32).reshape(1, 1, 6, 6)
    ave = layer(
        'name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: AVE kernel_size:'
        " 3 stride: 2 }"
    )
    y6 = run([ave], x=x6)["y"]
    assert y6.shape == (1, 1, 3, 3)
    assert y6[0, 0, 2, 2] == pytest.approx((28 + 29 + 34 + 35) / 4)


def test_pooling_ave_divides_by_the_padded_window() -> None:
    x = np.ones((1, 1, 3, 3), dtype=np.float32)
    pool = layer(
        'name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: AVE kernel_size:'
        " 3 stride: 1 pad: 1 }"
    )
    y = run([pool], x=x)["y"][0, 0]
    # Corner: 4 valid pixels over a 9-pixel window that lies entirely in [-1, 4).
    np.testing.assert_allclose(
        y, [[4 / 9, 6 / 9, 4 / 9], [6 / 9, 1.0, 6 / 9], [4 / 9, 6 / 9, 4 / 9]], rtol=1e-6
    )


def test_pooling_floor_round_mode_and_global_pooling() -> None:
    x = randn(1, 2, 6, 6)
    floor = layer(
        'name: "p" type: "Pooling" bottom: "x" top: "y" '
        "pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR }"
    )
    assert_close(
        run([floor], x=x)["y"], ref_pool(x, "MAX", k=(3, 3), s=(2, 2), p=(0, 0), ceil=False)
    )
    for method, reduce in (("MAX", np.max), ("AVE", np.mean)):
        glob = layer(
            f'name: "g" type: "Pooling" bottom: "x" top: "y" pooling_param {{ pool: {method}'
            f" global_pooling: true }}"
        )
        y = run([glob], x=x)["y"]
        assert y.shape == (1, 2, 1, 1)
        assert_close(y, reduce(x.astype(np.float64), axis=(2, 3), keepdims=True))


def test_pooling_large_kernel_uses_window_reduction() -> None:
    x = randn(1, 2, 12, 12)
    pool = layer(
        'name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: AVE kernel_size:'
        " 9 stride: 3 pad: 1 }"
    )
    assert_close(run([pool], x=x)["y"], ref_pool(x, "AVE", k=(9, 9), s=(3, 3), p=(1, 1)))


# --------------------------------------------------------------------------- structure


def test_eltwise_sum_with_coeff_prod_and_max() -> None:
    a, b, c = randn(2, 3), randn(2, 3), randn(2, 3)
    s = layer(
        'name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" eltwise_param {'
        " coeff: 1 coeff: -0.5 coeff: 2 }"
    )
    assert_close(run([s], a=a, b=b, c=c)["y"], a - 0.5 * b + 2 * c)
    p = layer(
        'name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" eltwise_param {'
        " operation: PROD }"
    )
    assert_close(run([p], a=a, b=b, c=c)["y"], a * b * c)
    m = layer(
        'name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" eltwise_param {'
        " operation: MAX }"
    )
    assert_close(run([m], a=a, b=b, c=c)["y"], np.maximum(np.maximum(a, b), c))


def test_concat_slice_split() -> None:
    a, b = randn(2, 3, 4), randn(2, 5, 4)
    cat = layer('name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y"')
    assert_close(run([cat], a=a, b=b)["y"], np.concatenate([a, b], axis=1))
    cat_dim = layer(
        'name: "c" type: "Concat" bottom: "a" bottom: "a" top: "y" concat_param { concat_dim: 2 }'
    )
    assert_close(run([cat_dim], a=a)["y"], np.concatenate([a, a], axis=2))
    sl = layer(
        'name: "s" type: "Slice" bottom: "b" top: "p" top: "q" top: "r" slice_param { axis: 1'
        " slice_point: 1 slice_point: 3 }"
    )
    out = run([sl], b=b)
    assert_close(out["p"], b[:, :1])
    assert_close(out["q"], b[:, 1:3])
    assert_close(out["r"], b[:, 3:])
    even = layer(
        'name: "s" type: "Slice" bottom: "a" top: "p" top: "q" slice_param { slice_dim: 2 }'
    )
    out = run([even], a=a)
    assert_close(out["p"], a[:, :, :2])
    assert_close(out["q"], a[:, :, 2:])
    split = layer('name: "s" type: "Split" bottom: "a" top: "p" top: "q"')
    out = run([split], a=a)
    assert_close(out["p"], a)
    assert_close(out["q"], a)


def test_flatten_reshape_crop_softmax() -> None:
    x = randn(2, 3, 4, 5)
    fl = layer('name: "f" type: "Flatten" bottom: "x" top: "y"')
    assert run([fl], x=x)["y"].shape == (2, 60)
    fl2 = layer(
        'name: "f" type: "Flatten" bottom: "x" top: "y" flatten_param { axis: 1 end_axis: 2 }'
    )
    assert_close(run([fl2], x=x)["y"], x.reshape(2, 12, 5))
    rs = layer(
        'name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 0 dim: -1'
        " dim: 10 } }"
    )
    assert_close(run([rs], x=x)["y"], x.reshape(2, 6, 10))
    rs2 = layer(
        'name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 2 dim: 2 }'
        " axis: 2 num_axes: 1 }"
    )
    assert_close(run([rs2], x=x)["y"], x.reshape(2, 3, 2, 2, 5))
    rs3 = layer(
        'name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 1 } axis:'
        " -1 num_axes: 0 }"
    )
    assert run([rs3], x=x)["y"].shape == (2, 3, 4, 5, 1)
    ref = randn(1, 2, 2, 3)
    crop = layer(
        'name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { axis: 2 offset: 1'
        " offset: 2 }"
    )
    assert_close(run([crop], x=x, r=ref)["y"], x[:, :, 1:3, 2:5])
    crop1 = layer(
        'name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { axis: 1 offset: 1 }'
    )
    assert_close(run([crop1], x=x, r=ref)["y"], x[:, 1:3, 1:3, 1:4])
    for axis in (1, -1):
        sm = layer(
            f'name: "s" type: "Softmax" bottom: "x" top: "y" softmax_param {{ axis: {axis} }}'
        )
        e = np.exp(x.astype(np.float64))
        assert_close(run([sm], x=x)["y"], e / e.sum(axis=axis, keepdims=True))


# ---------------------------------------------------------------- in place, dtype, errors


def test_forward_steps_show_every_version_of_an_in_place_blob() -> None:
    x = randn(1, 2, 3, 3)
    w = randn(2, 2, 1, 1)
    layers = [
        layer(
            'name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output:'
            " 2 kernel_size: 1 bias_term: false }",
            w,
        ),
        layer('name: "s" type: "Scale" bottom: "y" top: "y"', [2.0, 3.0]),
        layer('name: "r" type: "ReLU" bottom: "y" top: "y"'),
    ]
    steps = [(lay.name, tops["y"]) for lay, tops in forward_steps(Net(layers), {"x": x})]
    assert [name for name, _ in steps] == ["c", "s", "r"]
    conv = np.einsum("oc,nchw->nohw", w[:, :, 0, 0].astype(np.float64), x)
    assert_close(steps[0][1], conv)
    assert_close(steps[1][1], conv * np.array([2.0, 3.0]).reshape(1, 2, 1, 1))
    assert_close(steps[2][1], np.maximum(steps[1][1], 0))
    seen: list[str] = []
    final = forward(Net(layers), {"x": x}, observer=lambda lay, tops: seen.append(lay.name))
    assert seen == ["c", "s", "r"]
    np.testing.assert_array_equal(final["y"], steps[2][1])


def test_float64_mode_computes_in_double() -> None:
    x = randn(1, 3, 5, 5).astype(np.float64) + 1e-9
    w, b = randn(2, 3, 3, 3), randn(2)
    layers = [
        layer(
            'name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output:'
            " 2 kernel_size: 3 pad: 1 }",
            w,
            b,
        ),
        layer(
            'name: "bn" type: "BatchNorm" bottom: "y" top: "y"', [0.125, 0.25], [1.5, 0.5], [1.0]
        ),
    ]
    y64 = run(layers, dtype=np.float64, x=x)["y"]
    assert y64.dtype == np.float64
    expected = (
        ref_conv(x, w, b, stride=(1, 1), pad=(1, 1), dil=(1, 1), group=1)
        - np.array([0.125, 0.25]).reshape(1, 2, 1, 1)
    ) / np.sqrt(np.array([1.5, 0.5]).reshape(1, 2, 1, 1) + float(np.float32(1e-5)))
    assert_close(y64, expected, rel=1e-13)
    y32 = run(layers, x=x)["y"]
    assert y32.dtype == np.float32
    assert_close(y32, expected, rel=1e-5)


@pytest.mark.parametrize(
    "text",
    [
        'name: "prior" type: "PriorBox" bottom: "x" top: "y"',
        'name: "py" type: "Python" bottom: "x" top: "y" python_param { module:'
        ' "no_such_module_xyz" layer: "L" }',
        'name: "bn9" type: "BN" bottom: "x" top: "y"',
        'name: "rg" type: "Reorg" bottom: "x" top: "y"',
    ],
)
def test_unknown_types_raise_naming_layer_and_type(text: str) -> None:
    lay = layer(text)
    with pytest.raises(UnsupportedLayerError, match=f"'{lay.name}'.*'{lay.type}'"):
        run([lay], x=randn(1, 2, 3, 3))


def test_weight_mismatch_names_the_layer() -> None:
    x = randn(1, 3, 4, 4)
    conv_text = (
        'name: "conv7" type: "Convolution" bottom: "x" top: "y" convolution_param {'
        " num_output: 2 kernel_size: 3 }"
    )
    with pytest.raises(ModelMismatchError, match=r"'conv7'.*0 weight blobs"):
        run([layer(conv_text)], x=x)
    with pytest.raises(ModelMismatchError, match=r"'conv7'.*blob 0 has shape \(2, 3, 2, 2\)"):
        run([layer(conv_text, randn(2, 3, 2, 2), randn(2))], x=x)
    # Legacy 4-D blob shapes with leading 1s are accepted, as Caffe accepts them.
    legacy = layer(conv_text, randn(2, 3, 3, 3), randn(1, 1, 1, 2))
    assert run([legacy], x=x)["y"].shape == (1, 2, 2, 2)


def test_missing_bottom_is_reported() -> None:
    relu = layer('name: "r" type: "ReLU" bottom: "nowhere" top: "y"')
    with pytest.raises(ModelMismatchError, match="'nowhere'"):
        run([relu])


# --------------------------------------------------------------------------- real Caffe


def load_net(folder: Path) -> Net:
    """A golden or real model: prototxt text + caffemodel blobs matched by layer name."""
    text = (folder / "model.prototxt").read_text()
    net = text_format.Parse(text, proto.NetParameter())
    weights = proto.NetParameter.FromString((folder / "model.caffemodel").read_bytes())
    blobs: dict[str, list[Array]] = {}
    for lp in weights.layer:
        blobs.setdefault(
            lp.name, [np.asarray(b.data, np.float32).reshape(tuple(b.shape.dim)) for b in lp.blobs]
        )
    layers: list[Layer] = []
    if net.input:
        # Top-level input/input_dim fields: the Input layer Caffe's upgrade would create.
        inp = proto.LayerParameter(name="input", type="Input", top=list(net.input))
        for i in range(len(net.input)):
            dims = net.input_dim[4 * i : 4 * i + 4] if net.input_dim else net.input_shape[i].dim
            inp.input_param.shape.add().dim.extend(dims)
        layers.append(Layer("input", "Input", (), tuple(net.input), inp))
    for lp in net.layer:
        if any(rule.phase == proto.TRAIN for rule in lp.include):
            continue
        layers.append(
            Layer(lp.name, lp.type, tuple(lp.bottom), tuple(lp.top), lp, blobs.get(lp.name, []))
        )
    return Net(layers)


def compare_to_caffe(folder: Path, rel: float) -> None:
    ref = np.load(folder / "blobs.npz")
    net = load_net(folder)
    out = forward(net, {"data": ref["input:data"]})
    shapes = infer_shapes(net)
    checked = 0
    for key in ref.files:
        if not key.startswith("blob:") or "_split_" in key:
            continue
        name = key[len("blob:") :]
        assert shapes[name] == out[name].shape
        assert_close(out[name], ref[key], rel=rel)
        checked += 1
    assert checked > 0


@pytest.mark.parametrize("case", [c for c in golden_cases() if c != "v1_legacy_format"])
def test_golden_case_matches_caffe(case: str) -> None:
    compare_to_caffe(shared_path("golden", case), rel=1e-5)


@pytest.mark.parametrize("model", real_models())
def test_real_model_matches_caffe(model: str) -> None:
    compare_to_caffe(shared_path("corpus", "real", model), rel=1e-4)


@pytest.mark.slow
def test_resnet50_with_random_weights_agrees_with_opencv(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    text = shared_path("corpus", "prototxt", "resnet50.prototxt").read_text()
    net_param = text_format.Parse(text, proto.NetParameter())
    rng = np.random.default_rng(0)
    inp = proto.LayerParameter(name="input", type="Input", top=["data"])
    inp.input_param.shape.add().dim.extend([1, 3, 224, 224])
    layers = [Layer("input", "Input", (), ("data",), inp)]
    shapes = {"data": (1, 3, 224, 224)}
    saved = proto.NetParameter(name="resnet50")
    for lp in net_param.layer:
        lay = Layer(lp.name, lp.type, tuple(lp.bottom), tuple(lp.top), lp)
        bottoms = [shapes[b] for b in lay.bottoms]
        for i, shape in enumerate(param_shapes(lay, bottoms)):
            if lay.type == "BatchNorm":
                blob = [rng.normal(0, 0.1, shape), rng.uniform(0.5, 1.5, shape), np.ones(shape)][i]
            elif lay.type == "Scale":
                blob = rng.uniform(0.8, 1.2, shape) if i == 0 else rng.normal(0, 0.1, shape)
            else:
                fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
                blob = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
            lay.blobs.append(blob.astype(np.float32))
        layers.append(lay)
        shapes.update(zip(lay.tops, layer_output_shapes(lay, bottoms), strict=True))
        saved_layer = saved.layer.add(name=lp.name, type=lp.type)
        for blob in lay.blobs:
            bp = saved_layer.blobs.add()
            bp.shape.dim.extend(blob.shape)
            bp.data.extend(blob.ravel().tolist())
    (tmp_path / "model.caffemodel").write_bytes(saved.SerializeToString())
    (tmp_path / "model.prototxt").write_text(text)
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    ours = forward(Net(layers), {"data": x})
    cv_net = cv2.dnn.readNetFromCaffe(
        str(tmp_path / "model.prototxt"), str(tmp_path / "model.caffemodel")
    )
    cv_net.setInput(x)
    theirs = cv_net.forward("fc1000")
    assert_close(ours["fc1000"], theirs, rel=1e-4)


def test_max_pooling_mask_top_matches_caffes_argmax_scan() -> None:
    """Caffe's mask: flat index h*W+w of the first maximum scanned row by row in the window."""
    import bnfuse

    rng = np.random.default_rng(7)
    # Values drawn from a few levels so ties occur and the first-maximum rule is exercised.
    x = rng.integers(0, 3, size=(2, 3, 7, 6)).astype(np.float32)
    net = bnfuse.load(b"""
    layer { name: "in" type: "Input" top: "x"
            input_param { shape { dim: 2 dim: 3 dim: 7 dim: 6 } } }
    layer { name: "pool" type: "Pooling" bottom: "x" top: "p" top: "mask"
            pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }""")
    out = forward(net, {"x": x})
    oh, ow = out["p"].shape[2:]
    want_value = np.zeros((2, 3, oh, ow), np.float32)
    want_mask = np.zeros((2, 3, oh, ow), np.float32)
    for n in range(2):
        for c in range(3):
            for i in range(oh):
                for j in range(ow):
                    h0, w0 = max(i * 2 - 1, 0), max(j * 2 - 1, 0)
                    h1, w1 = min(i * 2 - 1 + 3, 7), min(j * 2 - 1 + 3, 6)
                    best, where = -np.inf, -1
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            if x[n, c, h, w] > best:
                                best, where = x[n, c, h, w], h * 6 + w
                    want_value[n, c, i, j], want_mask[n, c, i, j] = best, where
    np.testing.assert_array_equal(out["p"], want_value)
    np.testing.assert_array_equal(out["mask"], want_mask)
