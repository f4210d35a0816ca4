"""Fork layers other than SSD's, TEST phase, on arrays.

- ``ReLU6`` (the MobileNet-v2 forks, e.g. eric612/MobileNet-YOLO
  ``src/caffe/layers/relu6_layer.cpp``): ``min(max(x, 0) + slope * min(x, 0), 6)``.
- ``Upsample`` with a mask bottom (alexgkendall/caffe-segnet
  ``src/caffe/layers/upsample_layer.cpp``): each value goes to the flat position its
  MAX-pooling mask names; with one bottom (eric612/MobileNet-YOLO
  ``src/caffe/layers/upsample_layer.cpp``), nearest-neighbour repetition by ``scale``.
- ``ShuffleChannel`` (farmingyard/ShuffleNet ``shuffle_channel_layer.cpp``): input
  channel ``i * C/g + j`` becomes output channel ``j * g + i``.
- ``Axpy`` (hujie-frank/SENet ``axpy_layer.cpp``): ``a * x + y``, ``a`` one value per
  (item, channel), in float32 as the fork's ``caffe_axpy`` adds it.
- ``Interp`` (hszhao/PSPNet, DeepLab v2: ``src/caffe/layers/interp_layer.cpp`` and
  ``src/caffe/util/interp.cpp``): bilinear resizing with aligned corners, the source
  positions and weights computed in float32 as the fork computes them.

Example:
    >>> relu6_forward(np.array([-1.0, 3.0, 9.0], np.float32), 0.0)
    array([0., 3., 6.], dtype=float32)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from bnfuse.layertypes._forks import InterpGeometry

Array = npt.NDArray[Any]
_F4 = np.float32


def relu6_forward(x: Array, slope: float) -> Array:
    """``min(max(x, 0) + slope * min(x, 0), 6)`` in ``x``'s dtype.

    Example: see the module docstring.
    """
    t = x.dtype.type
    y: Array = np.minimum(np.maximum(x, t(0)) + t(slope) * np.minimum(x, t(0)), t(6))
    return y


def shuffle_channel_forward(x: Array, group: int) -> Array:
    """ShuffleNet's channel shuffle of an (N, C, ...) array in ``group`` groups.

    Example:
        >>> shuffle_channel_forward(np.arange(6.0).reshape(1, 6), 2)[0]
        array([0., 3., 1., 4., 2., 5.])
    """
    n, c = x.shape[:2]
    rest = x.shape[2:]
    grouped = x.reshape(n, group, c // group, -1)
    return np.ascontiguousarray(grouped.transpose(0, 2, 1, 3)).reshape(n, c, *rest)


def axpy_forward(a: Array, x: Array, y: Array) -> Array:
    """SENet's ``Axpy``: ``a * x + y`` with ``a`` of shape (N, C) or (N, C, 1, 1).

    Example:
        >>> a = np.array([[2.0, 0.5]], np.float32)
        >>> axpy_forward(a, np.ones((1, 2, 1, 2), np.float32), np.ones((1, 2, 1, 2), np.float32))
        array([[[[3. , 3. ]],
        <BLANKLINE>
                [[1.5, 1.5]]]], dtype=float32)
    """
    scale = a.reshape(a.shape[0], a.shape[1], *([1] * (x.ndim - 2)))
    out: Array = scale * x + y
    return out


def source_positions(size_in: int, size_out: int, dtype: np.dtype[Any]) -> tuple[Array, ...]:
    """Per output index: the source index, the step to the next one (0 at the edge), and
    the two weights, as the fork derives them from a float32 ratio (the ONNX export of
    Interp asks the same rule).

    Example:
        >>> index, step, near, far = source_positions(2, 3, np.dtype(np.float32))
        >>> index.tolist(), step.tolist(), far.tolist()
        ([0, 0, 1], [1, 1, 0], [0.0, 0.5, 0.0])
    """
    ratio = _F4(_F4(size_in - 1) / _F4(size_out - 1)) if size_out > 1 else _F4(0)
    real = ratio * np.arange(size_out, dtype=_F4)
    index = real.astype(np.int64)  # C's float -> int conversion truncates
    step = (index < size_in - 1).astype(np.int64)
    far = (real - index.astype(_F4)).astype(dtype)
    near = dtype.type(1) - far
    return index, step, near, far


def interp_forward(x: Array, g: InterpGeometry) -> Array:
    """PSPNet's ``Interp`` of an (N, C, H, W) array to ``(N, C, out_h, out_w)``.

    Example:
        >>> g = InterpGeometry(pad_beg=0, in_h=1, in_w=2, out_h=1, out_w=3)
        >>> interp_forward(np.array([[[[0.0, 4.0]]]], np.float32), g)[0, 0]
        array([[0., 2., 4.]], dtype=float32)
    """
    b = g.pad_beg
    window = x[:, :, b : b + g.in_h, b : b + g.in_w]
    if (g.in_h, g.in_w) == (g.out_h, g.out_w):
        return np.ascontiguousarray(window)
    rows, row_step, h0, h1 = source_positions(g.in_h, g.out_h, x.dtype)
    cols, col_step, w0, w1 = source_positions(g.in_w, g.out_w, x.dtype)
    top, bottom = window[:, :, rows], window[:, :, rows + row_step]
    h0, h1 = h0[:, None], h1[:, None]
    # The fork's expression, in its order: h0 * (w0 * a + w1 * b) + h1 * (w0 * c + w1 * d).
    upper = w0 * top[..., cols] + w1 * top[..., cols + col_step]
    lower = w0 * bottom[..., cols] + w1 * bottom[..., cols + col_step]
    out: Array = h0 * upper + h1 * lower
    return out


def unpool_forward(x: Array, mask: Array, out_h: int, out_w: int) -> Array | None:
    """SegNet's ``Upsample``: zeros, then ``top[int(mask[i])] = x[i]`` per channel, in order.

    Returns None when a mask index is outside the output (the fork stops there).

    Example:
        >>> x = np.array([[[[5.0, 7.0]]]], np.float32)
        >>> unpool_forward(x, np.array([[[[1.0, 2.0]]]], np.float32), 1, 4)[0, 0]
        array([[0., 5., 7., 0.]], dtype=float32)
    """
    n, c = x.shape[:2]
    index = mask.reshape(n * c, -1).astype(np.int64)  # C's float -> int truncates
    size = out_h * out_w
    if index.size and (index.min() < 0 or index.max() >= size):
        return None
    flat = (np.arange(n * c)[:, None] * size + index).ravel()
    values = x.reshape(-1)
    # A later write to the same place wins, as in the fork's loop: keep the last of each.
    last = flat.size - 1 - np.unique(flat[::-1], return_index=True)[1]
    top = np.zeros(n * c * size, x.dtype)
    top[flat[last]] = values[last]
    return top.reshape(n, c, out_h, out_w)


def nearest_upsample_forward(x: Array, scale: int) -> Array:
    """Each value repeated ``scale`` times along height and width.

    Example:
        >>> nearest_upsample_forward(np.array([[[[1.0, 2.0]]]]), 2)[0, 0]
        array([[1., 1., 2., 2.],
               [1., 1., 2., 2.]])
    """
    return np.repeat(np.repeat(x, scale, axis=2), scale, axis=3)


__all__ = ["interp_forward", "nearest_upsample_forward", "relu6_forward", "source_positions",
           "unpool_forward"]
