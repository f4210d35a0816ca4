"""Per-layer forward arithmetic with the semantics of BVLC Caffe's CPU layers (TEST phase).

Each implementation takes the layer, its bottom arrays (already in the working dtype)
and the working dtype, and returns one new array per top. Bottoms are never written
to, so an in-place layer's earlier value stays valid for whoever still holds it.

Convolution goes through BLAS: the input is windowed with
``numpy.lib.stride_tricks.sliding_window_view`` (im2col without Python loops over
pixels), copied once into a column matrix and multiplied per group with one
``matmul``. 1x1 convolutions skip the windowing; depthwise convolutions (one input
channel per group) accumulate over kernel offsets instead, which beats thousands of
tiny matrix products.

Example:
    >>> import bnfuse
    >>> net = bnfuse.load(b'''layer { name: "relu" type: "ReLU" bottom: "x" top: "x"
    ...                           relu_param { negative_slope: 0.1 } }''')
    >>> x = np.array([[-2.0, 0.0, 3.0]], np.float32)
    >>> relu = net.layer("relu")
    >>> forward_of(relu)(relu, [x], np.dtype(np.float32))
    [array([[-0.2,  0. ,  3. ]], dtype=float32)]
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from bnfuse.errors import ModelMismatchError, UnsupportedLayerError
from bnfuse.layertypes import SPECS, spec_of, squeeze_legacy
from bnfuse.layertypes._forks import (
    detection_output_config,
    interp_geometry,
    normalize_config,
    permute_order,
    prior_box_config,
    refused_fork_field,
    relu6_slope,
    shuffle_groups,
    upsample_output,
)
from bnfuse.layertypes.geometry import (
    CAFFE_INT_MAX,
    POOL_AVE,
    POOL_MAX,
    ROUND_CEIL,
    ConvGeometry,
    PoolGeometry,
    canonical_axis,
    concat_axis,
    conv_geometry,
    count,
    crop_offsets,
    pool_geometry,
    pooled_size,
    scale_operand_shape,
    slice_layout,
)
from bnfuse.layertypes.shapes import layer_output_shapes, param_shapes, unsupported_type
from bnfuse.verification._binarylayers import (
    binary_layer_dialect,
    binary_weights,
    channel_vector,
    sign_forward,
    sign_zero_to,
)
from bnfuse.verification._forklayers import (
    axpy_forward,
    interp_forward,
    nearest_upsample_forward,
    relu6_forward,
    shuffle_channel_forward,
    unpool_forward,
)
from bnfuse.verification._ssd import (
    detection_output_forward,
    normalize_forward,
    prior_box_forward,
)
from bnfuse.verification.norms import norm_dialect, norm_forward

if TYPE_CHECKING:
    from bnfuse.verification.executor import LayerLike

Array = npt.NDArray[Any]
#: A basic-indexing tuple (slices, ints, Ellipsis) built up axis by axis.
Index = tuple[Any, ...]
LayerForward = Callable[["LayerLike", list[Array], np.dtype[Any]], list[Array]]

#: Caffe seeds max pooling with -FLT_MAX (also in double precision), not -inf.
_CAFFE_MAX_INIT = float(np.finfo(np.float32).min)


def _legacy_equal(actual: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Caffe accepts a 4-D legacy blob whose missing leading axes are 1: (1,1,N,K) ~ (N,K)."""
    return len(actual) == 4 and squeeze_legacy(actual, len(expected)) == expected


def layer_weights(
    layer: LayerLike, bottom_shapes: Sequence[tuple[int, ...]], dtype: np.dtype[Any]
) -> list[Array]:
    """The layer's weight blobs, checked against Caffe's shapes and cast to ``dtype``.

    Raises :class:`~bnfuse.errors.ModelMismatchError` naming the layer when a blob is
    missing, extra or shaped differently from what Caffe would create.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(bnfuse.example_path("prototxt"), bnfuse.example_path("caffemodel"))
        >>> weights = layer_weights(net.layer("conv2"), [(1, 16, 16, 16)], np.dtype("f8"))
        >>> [(w.shape, str(w.dtype)) for w in weights]
        [((32, 8, 3, 3), 'float64'), ((32,), 'float64')]
    """
    expected = param_shapes(layer, bottom_shapes)
    blobs = list(layer.blobs)
    if len(blobs) != len(expected):
        raise ModelMismatchError(
            f"layer {layer.name!r} (type {layer.type!r}) has {len(blobs)} weight blobs; "
            f"Caffe expects {len(expected)} with shapes {expected}"
        )
    result = []
    for i, (blob, shape) in enumerate(zip(blobs, expected, strict=True)):
        arr = np.asarray(blob)
        if arr.shape != shape and not _legacy_equal(arr.shape, shape):
            raise ModelMismatchError(
                f"layer {layer.name!r} (type {layer.type!r}) weight blob {i} has shape "
                f"{arr.shape}; Caffe expects {shape}"
            )
        # astype(copy=False) keeps read-only caffemodel views uncopied when no cast is needed.
        result.append(arr.astype(dtype, copy=False).reshape(shape))
    return result


def _shapes(bottoms: Sequence[Array]) -> list[tuple[int, ...]]:
    return [tuple(b.shape) for b in bottoms]


def _fail(layer: LayerLike, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"layer {layer.name!r} (type {layer.type!r}): {why}")


# --------------------------------------------------------------------------- convolution


def _padded(x: Array, pad: Sequence[int], first: int) -> Array:
    """Zero-pad the axes from ``first`` on (one allocation, no ``np.pad`` mode machinery)."""
    if not any(pad):
        return x
    shape = list(x.shape)
    inner = []
    for i, p in enumerate(pad):
        shape[first + i] += 2 * p
        inner.append(slice(p, p + x.shape[first + i]))
    out = np.zeros(shape, dtype=x.dtype)
    out[(slice(None),) * first + tuple(inner)] = x
    return out


def conv_forward(x: Array, weight: Array, bias: Array | None, g: ConvGeometry) -> Array:
    """Caffe's convolution of ``x`` (channels on ``g.axis``) with ``(Cout, Cin/g, *k)`` weights.

    Example:
        >>> g = ConvGeometry(1, 1, 1, 1, (1, 1), (1, 1), (0, 0), (1, 1), False)
        >>> conv_forward(np.ones((1, 1, 2, 2)), np.full((1, 1, 1, 1), 2.0), None, g)[0, 0]
        array([[2., 2.],
               [2., 2.]])
    """
    lead = x.shape[: g.axis]
    spatial = x.shape[g.axis + 1 :]
    n_sp = len(spatial)
    batch = count(lead)
    groups, cout = g.group, g.num_output
    cin_g, cout_g = g.channels // groups, cout // groups
    out_sp = g.output_spatial(spatial, deconv=False)
    positions = count(out_sp)
    xb = x.reshape(batch, g.channels, *spatial)
    if all(k == 1 for k in g.kernel) and not any(g.pad):
        # A 1x1 convolution is a plain matrix product over channels: no im2col at all.
        every: tuple[slice, ...] = (slice(None), slice(None))
        picked = xb[every + tuple(slice(None, None, s) for s in g.stride)]
        cols: Array = picked.reshape(batch, groups, cin_g, positions)
        w = weight.reshape(groups, cout_g, cin_g)
        y = np.matmul(w, cols).reshape(batch, cout, *out_sp)
    else:
        xp = _padded(xb, g.pad, 2)
        extent = tuple(d * (k - 1) + 1 for k, d in zip(g.kernel, g.dilation, strict=True))
        win = sliding_window_view(xp, extent, axis=tuple(range(2, 2 + n_sp)))
        # (B, C, *out, *k): every output position's (dilated) receptive field, as a view.
        positions_index = (
            slice(0, (o - 1) * s + 1, s) for o, s in zip(out_sp, g.stride, strict=True)
        )
        taps_index = (slice(None, None, d) for d in g.dilation)
        window_index: Index = (slice(None), slice(None), *positions_index, *taps_index)
        win = win[window_index]
        if cin_g == 1 and count(g.kernel) <= 64:
            # Few taps: accumulate per offset (a huge kernel goes through one GEMM instead).
            y = _depthwise(win, weight, g, batch, out_sp)
        else:
            ksize = count(g.kernel)
            # Column matrix (C * k, B * out) in one contiguous copy, then one GEMM per group.
            order = (1, *range(2 + n_sp, 2 + 2 * n_sp), 0, *range(2, 2 + n_sp))
            cols = np.ascontiguousarray(win.transpose(order)).reshape(
                groups, cin_g * ksize, batch * positions
            )
            w = weight.reshape(groups, cout_g, cin_g * ksize)
            y = np.matmul(w, cols).reshape(cout, batch, *out_sp)
            y = np.moveaxis(y, 0, 1) if batch > 1 else y.reshape(1, cout, *out_sp)
    if bias is not None:
        # y is a fresh result here, so the bias goes in without another full-size temporary.
        y += bias.reshape((1, cout) + (1,) * n_sp)
    return np.ascontiguousarray(y).reshape(*lead, cout, *out_sp)


def _depthwise(
    win: Array, weight: Array, g: ConvGeometry, batch: int, out_sp: tuple[int, ...]
) -> Array:
    """One input channel per group: accumulate ``w[:, k] * x_k`` over kernel offsets."""
    mult = g.num_output // g.group
    w = weight.reshape(g.group, mult, *g.kernel)
    y = np.zeros((batch, g.group, mult, *out_sp), dtype=win.dtype)
    n_sp = len(out_sp)
    every = (slice(None), slice(None))
    for offset in itertools.product(*(range(k) for k in g.kernel)):
        tap_index: Index = (Ellipsis, *offset)
        weight_index: Index = (*every, *offset)
        tap = win[tap_index][:, :, None]
        tap_weight = w[weight_index].reshape((1, g.group, mult) + (1,) * n_sp)
        y += tap_weight * tap
    return y.reshape(batch, g.num_output, *out_sp)


def deconv_forward(x: Array, weight: Array, bias: Array | None, g: ConvGeometry) -> Array:
    """Caffe's deconvolution: the adjoint of convolution, weights ``(Cin, Cout/g, *k)``.

    Each input pixel scatters ``weight * x`` into the output; done as one GEMM per group
    into columns and an accumulation over kernel offsets (col2im).

    Example:
        >>> g = ConvGeometry(1, 1, 1, 1, (2, 2), (2, 2), (0, 0), (1, 1), False)
        >>> deconv_forward(np.ones((1, 1, 1, 1)), np.arange(4.0).reshape(1, 1, 2, 2), None, g)
        array([[[[0., 1.],
                 [2., 3.]]]])
    """
    lead = x.shape[: g.axis]
    spatial = x.shape[g.axis + 1 :]
    n_sp = len(spatial)
    batch = count(lead)
    groups = g.group
    cin_g, cout_g = g.channels // groups, g.num_output // groups
    positions = count(spatial)
    out_sp = g.output_spatial(spatial, deconv=True)
    xg = x.reshape(batch, groups, cin_g, positions).transpose(1, 2, 0, 3)
    xg = xg.reshape(groups, cin_g, batch * positions)
    w = weight.reshape(groups, cin_g, cout_g * count(g.kernel)).transpose(0, 2, 1)
    cols = np.matmul(w, xg).reshape(groups, cout_g, *g.kernel, batch, *spatial)
    full = tuple(
        s * (i - 1) + d * (k - 1) + 1
        for i, s, d, k in zip(spatial, g.stride, g.dilation, g.kernel, strict=True)
    )
    acc = np.zeros((groups, cout_g, batch, *full), dtype=x.dtype)
    every = (slice(None), slice(None))
    for offset in itertools.product(*(range(k) for k in g.kernel)):
        target = tuple(
            slice(o * d, o * d + s * (i - 1) + 1, s)
            for o, d, s, i in zip(offset, g.dilation, g.stride, spatial, strict=True)
        )
        target_index: Index = (*every, slice(None), *target)
        source_index: Index = (*every, *offset)
        acc[target_index] += cols[source_index]
    crop: Index = (*every, *(slice(p, p + o) for p, o in zip(g.pad, out_sp, strict=True)))
    y = acc.reshape(g.num_output, batch, *full)[crop]
    y = np.ascontiguousarray(np.moveaxis(y, 0, 1))
    if bias is not None:
        y += bias.reshape((1, g.num_output) + (1,) * n_sp)
    return y.reshape(*lead, g.num_output, *out_sp)


#: Kernel offsets the executor loops over one by one (a deconvolution's col2im); Caffe's
#: largest real kernels (FCN's 64x64 upsampling) have 4096.
MAX_LOOPED_TAPS = 65536


def _check_work(layer: LayerLike, what: str, values: int) -> None:
    """Refuse a working array Caffe itself could not hold (more than INT_MAX values)."""
    if values > CAFFE_INT_MAX:
        raise _fail(layer, f"{what} would hold {values} values per image, more than Caffe's "
                           f"blob limit of {CAFFE_INT_MAX}")


def _check_conv_work(layer: LayerLike, shape: tuple[int, ...], g: ConvGeometry) -> None:
    """The per-image buffers of Caffe's convolution (its column buffer) and of this one."""
    spatial = shape[g.axis + 1 :]
    if layer.type == "Deconvolution":
        _check_work(layer, "the column buffer", g.num_output * count(g.kernel) * count(spatial))
        if count(g.kernel) > MAX_LOOPED_TAPS:
            raise _fail(layer, f"a {'x'.join(map(str, g.kernel))} kernel has more than "
                               f"{MAX_LOOPED_TAPS} taps, which the numpy executor does not run")
        return
    out = g.output_spatial(spatial, deconv=False)
    _check_work(layer, "the column buffer", g.channels * count(g.kernel) * count(out))
    padded = [size + 2 * p for size, p in zip(spatial, g.pad, strict=True)]
    _check_work(layer, "the zero-padded input", g.channels * count(padded))


def _convolution(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    weights = layer_weights(layer, _shapes(bottoms[:1]), dtype)
    bias = weights[1] if len(weights) > 1 else None
    run = deconv_forward if layer.type == "Deconvolution" else conv_forward
    geometries = [conv_geometry(layer, x.shape) for x in bottoms]
    for x, g in zip(bottoms, geometries, strict=True):
        _check_conv_work(layer, x.shape, g)
    # Several bottoms share the weights (Caffe allows N bottom/top pairs of one shape).
    return [run(x, weights[0], bias, g) for x, g in zip(bottoms, geometries, strict=True)]


def _inner_product(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    ip = layer.param.inner_product_param
    x = bottoms[0]
    axis = canonical_axis(layer, int(ip.axis), x.ndim)
    weights = layer_weights(layer, _shapes(bottoms), dtype)
    rows = x.reshape(count(x.shape, 0, axis), -1)
    y = rows @ weights[0] if ip.transpose else rows @ weights[0].T
    if len(weights) > 1:
        y += weights[1]
    return [y.reshape(*x.shape[:axis], int(ip.num_output))]


# --------------------------------------------------------------------------- normalisation


def _batch_norm(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    # Every BatchNorm dialect: one the executor cannot run is refused with its reason,
    # then blob count and shapes are checked against the dialect's layout.
    norm_dialect(layer)
    layer_weights(layer, _shapes(bottoms), dtype)
    return [norm_forward(layer, bottoms[0], dtype)]


def _broadcast(x: Array, operand: Array, axis: int) -> tuple[Array, Array]:
    """View ``x`` as (outer, dim, inner) and ``operand`` as (1, dim, 1) for Scale/Bias."""
    dim = operand.size
    outer = count(x.shape, 0, axis)
    return x.reshape(outer, dim, -1), operand.reshape(1, dim, 1)


def _scale(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    x = bottoms[0]
    axis, _ = scale_operand_shape(layer, _shapes(bottoms))
    weights = layer_weights(layer, _shapes(bottoms), dtype)
    factor = bottoms[1] if len(bottoms) > 1 else weights[0]
    xr, s = _broadcast(x, factor, axis)
    y = xr * s
    if layer.param.scale_param.bias_term:
        y += weights[-1].reshape(s.shape)
    return [y.reshape(x.shape)]


def _bias(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    x = bottoms[0]
    axis, _ = scale_operand_shape(layer, _shapes(bottoms))
    operand = bottoms[1] if len(bottoms) > 1 else layer_weights(layer, _shapes(bottoms), dtype)[0]
    xr, b = _broadcast(x, operand, axis)
    return [(xr + b).reshape(x.shape)]


def _lrn(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    lp = layer.param.lrn_param
    x = bottoms[0]
    size = int(lp.local_size)
    pre_pad = (size - 1) // 2
    alpha, beta = dtype.type(lp.alpha), dtype.type(lp.beta)
    square = x * x
    if int(lp.norm_region) == 0:  # ACROSS_CHANNELS
        # Sum of squares over a window of `size` channels centred on each channel,
        # zero beyond the ends; Caffe scales alpha by the window size. Offsets more than
        # C - 1 channels away only ever add zero padding, so the window is cut there
        # (adding +0 to a sum of squares changes no bit): a huge local_size costs nothing.
        reach = min(pre_pad, x.shape[1] - 1)
        padded = _padded(square, (reach,), 1)
        window = np.zeros_like(x)
        for c in range(2 * reach + 1):
            window += padded[:, c : c + x.shape[1]]
        scale = dtype.type(lp.k) + (alpha / dtype.type(size)) * window
        return [x * np.power(scale, -beta)]
    # WITHIN_CHANNEL: Caffe chains Power(x^2) -> AVE pooling (size, pad pre_pad, stride 1)
    # -> Power(1 + alpha * p)^-beta -> product; k is not used. Pooling divides by size^2.
    out_hw = (
        pooled_size(x.shape[2], size, 1, pre_pad, ROUND_CEIL),
        pooled_size(x.shape[3], size, 1, pre_pad, ROUND_CEIL),
    )
    g = PoolGeometry(POOL_AVE, (size, size), (1, 1), (pre_pad, pre_pad), out_hw)
    pooled = pool_forward(square, g)
    return [x * np.power(dtype.type(1) + alpha * pooled, -beta)]


# --------------------------------------------------------------------------- pooling


def pool_forward(x: Array, g: PoolGeometry) -> Array:
    """Caffe's 2-D MAX / AVE pooling of an (N, C, H, W) array.

    MAX takes the maximum over the window's part inside the image. AVE sums that part and
    divides by the window size clipped to the padded extent (padding counts, the area
    beyond the padding does not).

    Example:
        >>> g = PoolGeometry(1, (2, 2), (2, 2), (1, 1), (2, 2))
        >>> pool_forward(np.ones((1, 1, 2, 2)), g)[0, 0]
        array([[0.25, 0.25],
               [0.25, 0.25]])
    """
    n, c, height, width = x.shape
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = g.kernel, g.stride, g.pad, g.output
    is_max = g.method == POOL_MAX
    if (kh, kw) == (height, width) and (oh, ow) == (1, 1) and (ph, pw) == (0, 0):
        # Global pooling: one reduction instead of H*W shifted slices.
        if is_max:
            peak: Array = x.max(axis=(2, 3), keepdims=True)
            return peak
        total: Array = x.sum(axis=(2, 3), keepdims=True) / x.dtype.type(height * width)
        return total
    # Extent covered by all windows, starting at -pad; may end before or after the image.
    ext_h, ext_w = (oh - 1) * sh + kh, (ow - 1) * sw + kw
    fill = _CAFFE_MAX_INIT if is_max else 0.0
    xp = np.full((n, c, max(ext_h, ph + height), max(ext_w, pw + width)), fill, dtype=x.dtype)
    xp[:, :, ph : ph + height, pw : pw + width] = x
    if kh * kw <= 64:
        # Few taps: combine strided slices, each one vectorised over the whole output.
        out: Array | None = None
        for i in range(kh):
            for j in range(kw):
                tap = xp[:, :, i : i + (oh - 1) * sh + 1 : sh, j : j + (ow - 1) * sw + 1 : sw]
                if out is None:
                    out = tap.copy()
                elif is_max:
                    np.maximum(out, tap, out=out)
                else:
                    out += tap
        assert out is not None
    else:
        win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, : (oh - 1) * sh + 1 : sh]
        win = win[:, :, :, : (ow - 1) * sw + 1 : sw]
        out = win.max(axis=(4, 5)) if is_max else win.sum(axis=(4, 5))
    if is_max:
        return out
    # Divisor per output position: window clipped to [-pad, size + pad), as Caffe computes it.
    hstart = np.arange(oh) * sh - ph
    wstart = np.arange(ow) * sw - pw
    size_h = np.minimum(hstart + kh, height + ph) - hstart
    size_w = np.minimum(wstart + kw, width + pw) - wstart
    divisor = (size_h[:, None] * size_w[None, :]).astype(x.dtype)
    mean: Array = out / divisor
    return mean


def pool_mask(x: Array, g: PoolGeometry) -> Array:
    """Caffe's MAX pooling mask: the flat index ``h * W + w`` of each window's maximum.

    Ties go to the first maximum in row-major order, as Caffe's strict ``>`` scan does.

    Example:
        >>> g = PoolGeometry(POOL_MAX, (2, 2), (2, 2), (0, 0), (1, 2))
        >>> pool_mask(np.array([[[[1.0, 5.0, 7.0, 2.0], [3.0, 0.0, 7.0, 9.0]]]]), g)[0, 0]
        array([[1., 7.]])
    """
    n, c, height, width = x.shape
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = g.kernel, g.stride, g.pad, g.output
    ext_h, ext_w = (oh - 1) * sh + kh, (ow - 1) * sw + kw
    xp = np.full((n, c, max(ext_h, ph + height), max(ext_w, pw + width)), _CAFFE_MAX_INIT,
                 dtype=x.dtype)
    xp[:, :, ph : ph + height, pw : pw + width] = x
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, : (oh - 1) * sh + 1 : sh]
    win = win[:, :, :, : (ow - 1) * sw + 1 : sw]
    arg = win.reshape(n, c, oh, ow, kh * kw).argmax(axis=4)
    row = (np.arange(oh) * sh - ph)[:, None] + arg // kw
    col = (np.arange(ow) * sw - pw)[None, :] + arg % kw
    mask: Array = (row * width + col).astype(x.dtype)
    return mask


def _pooling(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    geometry = pool_geometry(layer, bottoms[0].shape)
    _, c, height, width = bottoms[0].shape
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = (geometry.kernel, geometry.stride, geometry.pad,
                                              geometry.output)
    # pool_forward pads the input to cover every window: an executor buffer, not Caffe's.
    _check_work(layer, "the padded input",
                c * max((oh - 1) * sh + kh, ph + height) * max((ow - 1) * sw + kw, pw + width))
    if len(layer.tops) == 2:
        _check_work(layer, "the windows of the mask", c * oh * ow * kh * kw)
    pooled = pool_forward(bottoms[0], geometry)
    if len(layer.tops) == 2:
        return [pooled, pool_mask(bottoms[0], geometry)]
    return [pooled]


# --------------------------------------------------------------------------- activations


def _relu(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    x = bottoms[0]
    slope = float(layer.param.relu_param.negative_slope)
    if slope == 0:
        return [np.maximum(x, dtype.type(0))]
    return [np.maximum(x, 0) + dtype.type(slope) * np.minimum(x, 0)]


def _prelu(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    x = bottoms[0]
    slope = layer_weights(layer, _shapes(bottoms), dtype)[0]
    channels = x.shape[1] if x.ndim > 1 else 1
    xr = x.reshape(x.shape[0] if x.ndim > 1 else x.size, channels, -1)
    a = slope.reshape(1, -1, 1)
    return [(np.maximum(xr, 0) + a * np.minimum(xr, 0)).reshape(x.shape)]


def _elu(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    x = bottoms[0]
    alpha = dtype.type(layer.param.elu_param.alpha)
    return [np.maximum(x, 0) + alpha * (np.exp(np.minimum(x, 0)) - dtype.type(1))]


def _sigmoid_of(x: Array) -> Array:
    # Caffe's CPU sigmoid is written as 0.5 * tanh(0.5 x) + 0.5 (no overflow for large |x|).
    half = x.dtype.type(0.5)
    result: Array = half * np.tanh(half * x) + half
    return result


def _sigmoid(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    return [_sigmoid_of(bottoms[0])]


def _swish(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    x = bottoms[0]
    beta = dtype.type(layer.param.swish_param.beta)
    return [x * _sigmoid_of(beta * x)]


def _tanh(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    return [np.tanh(bottoms[0])]


def _absval(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    return [np.abs(bottoms[0])]


def _power(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    pp = layer.param.power_param
    x = bottoms[0]
    power, scale, shift = (dtype.type(v) for v in (pp.power, pp.scale, pp.shift))
    if power * scale == 0:
        # Caffe's shortcut: the output does not depend on x at all.
        value = dtype.type(1) if power == 0 else np.power(shift, power)
        return [np.full_like(x, value)]
    y = x * scale if scale != 1 else x
    y = y + shift if shift != 0 else y
    return [np.power(y, power) if power != 1 else y.copy()]


def _exp(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    ep = layer.param.exp_param
    base, scale, shift = float(ep.base), float(ep.scale), float(ep.shift)
    if base != -1 and base <= 0:
        raise _fail(layer, f"base must be -1 (e) or > 0, got {base}")
    log_base = 1.0 if base == -1 else float(np.log(base))
    inner = dtype.type(log_base * scale)
    outer = dtype.type(1.0 if shift == 0 else np.exp(shift) if base == -1 else base**shift)
    y = np.exp(bottoms[0] * inner if inner != 1 else bottoms[0])
    return [y * outer if outer != 1 else y]


def _log(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    lp = layer.param.log_param
    base, scale, shift = float(lp.base), float(lp.scale), float(lp.shift)
    if base != -1 and base <= 0:
        raise _fail(layer, f"base must be -1 (e) or > 0, got {base}")
    base_scale = dtype.type(1.0 if base == -1 else 1.0 / float(np.log(base)))
    x = bottoms[0]
    x = x * dtype.type(scale) if scale != 1 else x
    x = x + dtype.type(shift) if shift != 0 else x
    y = np.log(x)
    return [y * base_scale if base_scale != 1 else y]


def _clip(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    cp = layer.param.clip_param
    return [np.maximum(dtype.type(cp.min), np.minimum(bottoms[0], dtype.type(cp.max)))]


def _threshold(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    t = dtype.type(layer.param.threshold_param.threshold)
    return [(bottoms[0] > t).astype(dtype)]


def _identity(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    # Dropout at TEST and Split: the value passes through unchanged (arrays are never mutated).
    return [bottoms[0]] * len(layer.tops)


# --------------------------------------------------------------------------- structure


def _eltwise(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    ep = layer.param.eltwise_param
    op = int(ep.operation)
    if op == 0:  # PROD
        y = bottoms[0] * bottoms[1] if len(bottoms) > 1 else bottoms[0].copy()
        for b in bottoms[2:]:
            y = y * b
        return [y]
    if op == 1:  # SUM
        coeffs = [float(c) for c in ep.coeff] or [1.0] * len(bottoms)
        terms = [b if c == 1 else b * dtype.type(c) for b, c in zip(bottoms, coeffs, strict=True)]
        y = terms[0] + terms[1] if len(terms) > 1 else terms[0].copy()
        for t in terms[2:]:
            y = y + t
        return [y]
    if op == 2:  # MAX
        y = np.maximum(bottoms[0], bottoms[1]) if len(bottoms) > 1 else bottoms[0].copy()
        for b in bottoms[2:]:
            y = np.maximum(y, b)
        return [y]
    raise _fail(layer, f"unknown eltwise operation {op}")


def _concat(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    return [np.concatenate(bottoms, axis=concat_axis(layer, bottoms[0].ndim))]


def _slice(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    x = bottoms[0]
    axis, sizes = slice_layout(layer, x.shape)
    edges = np.cumsum(sizes)[:-1].tolist()
    return [np.ascontiguousarray(part) for part in np.split(x, edges, axis=axis)]


def _reshaped(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    # Flatten and Reshape: the top shape comes from the shared shape rules.
    (shape,) = layer_output_shapes(layer, _shapes(bottoms))
    return [bottoms[0].reshape(shape)]


def _crop(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    x, ref = bottoms
    offsets = crop_offsets(layer, x.shape, ref.shape)
    axis = canonical_axis(layer, int(layer.param.crop_param.axis), x.ndim)
    index = tuple(
        slice(None) if i < axis else slice(o, o + ref.shape[i]) for i, o in enumerate(offsets)
    )
    return [np.ascontiguousarray(x[index])]


def _softmax(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    x = bottoms[0]
    axis = canonical_axis(layer, int(layer.param.softmax_param.axis), x.ndim)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return [e / e.sum(axis=axis, keepdims=True)]


# --------------------------------------------------------------------------- SSD fork


def _normalize(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    config = normalize_config(layer)
    (scale,) = layer_weights(layer, _shapes(bottoms), dtype)
    return [normalize_forward(bottoms[0], scale, config)]


def _permute(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    (shape,) = layer_output_shapes(layer, _shapes(bottoms))
    order = permute_order(layer, bottoms[0].ndim)
    return [np.ascontiguousarray(bottoms[0].transpose(order)).reshape(shape)]


def _prior_box(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    feature, image = _shapes(bottoms)
    return [prior_box_forward(feature, image, prior_box_config(layer), dtype)]


def _detection_output(layer: LayerLike, bottoms: list[Array],
                      dtype: np.dtype[Any]) -> list[Array]:
    loc, conf, prior = bottoms
    return [detection_output_forward(loc, conf, prior, detection_output_config(layer), dtype)]


# --------------------------------------------------------------------------- other forks


def _relu6(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    return [relu6_forward(bottoms[0], relu6_slope(layer))]


def _shuffle_channel(layer: LayerLike, bottoms: list[Array],
                     dtype: np.dtype[Any]) -> list[Array]:
    x = bottoms[0]
    return [shuffle_channel_forward(x, shuffle_groups(layer, x.shape[1]))]


def _axpy(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    return [axpy_forward(*bottoms)]


def _interp(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    return [interp_forward(bottoms[0], interp_geometry(layer, _shapes(bottoms)))]


def _upsample(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    out_h, out_w = upsample_output(layer, _shapes(bottoms))
    if len(bottoms) == 1:
        return [nearest_upsample_forward(bottoms[0], out_h // bottoms[0].shape[2])]
    top = unpool_forward(bottoms[0], bottoms[1], out_h, out_w)
    if top is None:
        raise ModelMismatchError(
            f"layer {layer.name!r} (type {layer.type!r}): its mask {layer.bottoms[1]!r} names "
            f"positions outside the {out_h}x{out_w} output; it is not the argmax mask of a "
            "pooling layer of this size")
    return [top]


# --------------------------------------------------------------------------- binary weights


def _binary_convolution(layer: LayerLike, bottoms: list[Array],
                        dtype: np.dtype[Any]) -> list[Array]:
    # The forks' rule (bnfuse.layertypes.binary): sign(W), alpha before or after the bias.
    dialect = binary_layer_dialect(layer)
    weights = layer_weights(layer, _shapes(bottoms[:1]), dtype)
    bias = weights[1] if len(weights) > 1 else None
    signs, alpha = binary_weights(weights[0], zero_to=dialect.zero_to)
    tops = []
    for x in bottoms:
        g = conv_geometry(layer, x.shape)
        _check_conv_work(layer, x.shape, g)
        if dialect.alpha_after_bias:
            y = conv_forward(x, signs, bias, g)
            tops.append(y * channel_vector(alpha, y.ndim, g.axis))
        else:
            tops.append(conv_forward(x, signs * channel_vector(alpha, signs.ndim, 0), bias, g))
    return tops


def _binary_inner_product(layer: LayerLike, bottoms: list[Array],
                          dtype: np.dtype[Any]) -> list[Array]:
    dialect = binary_layer_dialect(layer)
    ip = layer.param.inner_product_param
    x = bottoms[0]
    axis = canonical_axis(layer, int(ip.axis), x.ndim)
    weights = layer_weights(layer, _shapes(bottoms), dtype)
    signs, alpha = binary_weights(weights[0], zero_to=dialect.zero_to)
    rows = x.reshape(count(x.shape, 0, axis), -1)
    y = rows @ (signs if dialect.alpha_after_bias else signs * alpha[:, None]).T
    if len(weights) > 1:
        y += weights[1]
    if dialect.alpha_after_bias:
        y = y * alpha
    return [y.reshape(*x.shape[:axis], int(ip.num_output))]


def _signum(layer: LayerLike, bottoms: list[Array], dtype: np.dtype[Any]) -> list[Array]:
    return [sign_forward(bottoms[0], sign_zero_to(layer))]


# The registry names each type's forward function; resolved once, by name.
_FORWARDS: dict[str, LayerForward] = {
    spec.forward: globals()[spec.forward] for spec in SPECS.values() if spec.forward is not None
}


def forward_of(layer: LayerLike) -> LayerForward:
    """The forward function the registry names for ``layer``'s type.

    Raises :class:`~bnfuse.errors.UnsupportedLayerError` for a type the executor cannot
    run (``Input`` too: the executor feeds it).

    Example: see the module docstring.
    """
    spec = spec_of(layer.type)
    if spec is None or spec.forward is None:
        raise unsupported_type(layer)
    field = refused_fork_field(layer)
    if field is not None:
        raise _fail(layer, f"fork field {field} may change what the layer computes and the "
                           "numpy executor does not implement it")
    return _FORWARDS[spec.forward]


__all__ = [
    "LayerForward",
    "conv_forward",
    "deconv_forward",
    "forward_of",
    "layer_weights",
    "pool_forward",
]
