"""The shapes Caffe's data layers give their tops, from what the prototxt states.

A train/val net reads its images through a data layer (``Data``, ``ImageData``, ...)
instead of an ``Input`` layer. Most of the shape of what such a layer produces is
written in the prototxt: the batch size in its parameter block, the image size in
``transform_param { crop_size }`` or ``image_data_param { new_height new_width }``, the
channels in ``is_color`` or ``memory_data_param``. What the prototxt does not state
(the LMDB decides the image size of an uncropped ``Data`` layer, the HDF5 file every
shape of ``HDF5Data``) is ``None`` here: the caller gets it from elsewhere or names the
blob in an error.

Facts from Caffe's layer setup code (``DataLayer``, ``ImageDataLayer``,
``WindowDataLayer``, ``MemoryDataLayer``, ``DummyDataLayer``, ``HDF5DataLayer``, SSD's
``AnnotatedDataLayer``, TSN's ``VideoDataLayer``):

- the label top is ``(batch,)``, except ``MemoryData``'s ``(batch, 1, 1, 1)``;
  ``AnnotatedData``'s label holds a variable number of boxes, so its shape is unknown;
- a crop (``transform_param.crop_size``) replaces both image axes;
- ``ImageData`` has 3 channels, or 1 with ``is_color: false``; ``WindowData`` always 3;
  ``Data`` and ``AnnotatedData`` as many as the stored images (known here only from
  ``force_color``/``force_gray``, or from more than one ``mean_value``, which Caffe checks
  against the channels);
- ``DummyData`` and ``MemoryData`` state every axis.

Example:
    >>> import bnfuse
    >>> net = bnfuse.load(b'''
    ... layer { name: "data" type: "ImageData" top: "data" top: "label"
    ...         include { phase: TEST } transform_param { crop_size: 224 }
    ...         image_data_param { source: "val.txt" batch_size: 50 } }
    ... layer { name: "relu" type: "ReLU" bottom: "data" top: "out" }''')
    >>> data_shapes(net.layer("data"))
    [(50, 3, 224, 224), (50,)]
"""

from __future__ import annotations

from bnfuse.layertypes._base import LayerLike

#: A shape with ``None`` for each axis the prototxt does not state.
PartialShape = tuple[int | None, ...]

#: Data layer types whose tops are fed from outside the net (by a file, a database, the
#: caller, or filled with constants); for verification they are net inputs.
DATA_TYPES = frozenset({
    "Data", "ImageData", "AnnotatedData", "WindowData", "VideoData", "HDF5Data",
    "MemoryData", "DummyData",
})



def is_data_layer(layer: LayerLike) -> bool:
    """A data layer: one of :data:`DATA_TYPES`, or a ``Python`` layer without bottoms
    (py-faster-rcnn's ``input-data``: its module makes the data, and its shapes).

    Example:
        >>> from types import SimpleNamespace
        >>> [is_data_layer(SimpleNamespace(type=t, bottoms=b))
        ...  for t, b in (("Data", ()), ("Python", ()), ("Python", ("x",)), ("ReLU", ()))]
        [True, True, False, False]
    """
    return layer.type in DATA_TYPES or (layer.type == "Python" and not layer.bottoms)


#: Why an axis is not stated, by type: the words an error about the blob uses.
DECIDED_BY = {
    "Python": "a Python data layer's module decides its shapes",
    "Data": "the database decides the image size unless transform_param sets crop_size",
    "AnnotatedData": "the database decides the image size unless transform_param sets "
                     "crop_size or resize_param",
    "ImageData": "the image files decide the size unless transform_param sets crop_size or "
                 "image_data_param sets new_height and new_width",
    "WindowData": "window_data_param's windows are cropped to transform_param's crop_size, "
                  "which is not set",
    "VideoData": "the video files decide the size unless transform_param sets crop_size",
    "HDF5Data": "the HDF5 files decide every shape",
    "MemoryData": "memory_data_param does not set every axis",
    "DummyData": "dummy_data_param does not state a shape for every top",
}


#: Why the channels of a cropped database image are not stated.
CHANNELS_DECIDED_BY = ("the stored images decide the channels (transform_param's force_color "
                       "or force_gray, or one mean_value per channel, would state them)")


def _positive(value: int) -> int | None:
    return int(value) if value > 0 else None


def _number(layer: LayerLike, *path: str) -> int | None:
    """A fork's integer field (read from the text), or None when it is not written."""
    reader = getattr(layer, "text_field", None)
    text = reader(*path) if reader is not None else None
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _crop(layer: LayerLike) -> int | None:
    return _positive(layer.param.transform_param.crop_size)


def _stored_channels(layer: LayerLike) -> int | None:
    """Channels of images read from a database, when the prototxt pins them."""
    transform = layer.param.transform_param
    if transform.force_color:
        return 3
    if transform.force_gray:
        return 1
    # Caffe checks the mean values against the channels: one per channel, or one for all.
    return len(transform.mean_value) if len(transform.mean_value) > 1 else None


def _with_label(layer: LayerLike, image: PartialShape, label: PartialShape | None) -> list[
        PartialShape | None]:
    """One shape per top: the image, then the label (None: not stated)."""
    shapes: list[PartialShape | None] = [image, label]
    return shapes[: len(layer.tops)] + [None] * (len(layer.tops) - 2)


def _database(layer: LayerLike) -> list[PartialShape | None]:
    batch = _positive(layer.param.data_param.batch_size)
    crop = _crop(layer)
    height = width = crop
    if layer.type == "AnnotatedData" and crop is None:
        # SSD's resize_param (a fork field of transform_param) fixes both axes.
        height = _number(layer, "transform_param", "resize_param", "height")
        width = _number(layer, "transform_param", "resize_param", "width")
    label: PartialShape | None = None if layer.type == "AnnotatedData" else (batch,)
    return _with_label(layer, (batch, _stored_channels(layer), height, width), label)


def _image_data(layer: LayerLike) -> list[PartialShape | None]:
    param = layer.param.image_data_param
    batch = _positive(param.batch_size)
    channels = 3 if param.is_color else 1
    crop = _crop(layer)
    height = crop if crop is not None else _positive(param.new_height)
    width = crop if crop is not None else _positive(param.new_width)
    return _with_label(layer, (batch, channels, height, width), (batch,))


def _window_data(layer: LayerLike) -> list[PartialShape | None]:
    param = layer.param.window_data_param
    batch = _positive(param.batch_size)
    crop = _crop(layer) or _positive(param.crop_size)  # the deprecated place of crop_size
    return _with_label(layer, (batch, 3, crop, crop), (batch,))


def _video_data(layer: LayerLike) -> list[PartialShape | None]:
    # TSN's VideoData (a fork type): new_length frames stacked on the channel axis,
    # 3 channels each for RGB, 2 (x, y) for optical flow.
    batch = _number(layer, "video_data_param", "batch_size")
    frames = _number(layer, "video_data_param", "new_length") or 1
    reader = getattr(layer, "text_field", None)
    modality = reader("video_data_param", "modality") if reader is not None else None
    per_frame = 2 if modality == "FLOW" else 3
    crop = _crop(layer)
    return _with_label(layer, (batch, frames * per_frame, crop, crop), (batch,))


def _memory_data(layer: LayerLike) -> list[PartialShape | None]:
    param = layer.param.memory_data_param
    batch = _positive(param.batch_size)
    image = (batch, _positive(param.channels), _positive(param.height), _positive(param.width))
    return _with_label(layer, image, (batch, 1, 1, 1))


def _hdf5_data(layer: LayerLike) -> list[PartialShape | None]:
    batch = _positive(layer.param.hdf5_data_param.batch_size)
    return [(batch, None, None, None)] * len(layer.tops)


def _dummy_data(layer: LayerLike) -> list[PartialShape | None]:
    param = layer.param.dummy_data_param
    count = len(layer.tops)

    def pick(values: list[int], index: int) -> int | None:
        # Caffe takes one entry for every top, or one entry per top.
        if len(values) == 1:
            return int(values[0])
        return int(values[index]) if len(values) == count else None

    if param.shape:
        shapes = [tuple(int(d) for d in s.dim) for s in param.shape]
        if len(shapes) == 1:
            return [shapes[0]] * count
        return list(shapes) if len(shapes) == count else [None] * count
    legacy = [list(param.num), list(param.channels), list(param.height), list(param.width)]
    if not any(legacy):
        return [None] * count
    # Legacy dims: Caffe needs all four axes, each given once for all tops or once per top.
    found: list[PartialShape | None] = []
    for index in range(count):
        dims = [pick(values, index) if values else None for values in legacy]
        found.append(tuple(dims))
    return found


def _python_data(layer: LayerLike) -> list[PartialShape | None]:
    return [None] * len(layer.tops)  # bnfuse never imports a Python layer's module


_RULES = {
    "Data": _database,
    "AnnotatedData": _database,
    "ImageData": _image_data,
    "WindowData": _window_data,
    "VideoData": _video_data,
    "MemoryData": _memory_data,
    "HDF5Data": _hdf5_data,
    "DummyData": _dummy_data,
    "Python": _python_data,
}


def data_shapes(layer: LayerLike) -> list[PartialShape | None]:
    """The shape of each top of a data layer, ``None`` for each axis (or top) not stated.

    Example:
        >>> import bnfuse
        >>> net = bnfuse.load(b'''
        ... layer { name: "d" type: "Data" top: "data" top: "label"
        ...         data_param { source: "lmdb" batch_size: 8 } }
        ... layer { name: "m" type: "MemoryData" top: "image" top: "y"
        ...         memory_data_param { batch_size: 2 channels: 1 height: 5 width: 7 } }
        ... layer { name: "e" type: "Eltwise" bottom: "data" bottom: "image" top: "s" }''')
        >>> data_shapes(net.layer("d"))  # the database decides channels, height and width
        [(8, None, None, None), (8,)]
        >>> data_shapes(net.layer("m"))
        [(2, 1, 5, 7), (2, 1, 1, 1)]
    """
    return _RULES[layer.type](layer)


__all__ = [
    "CHANNELS_DECIDED_BY",
    "DATA_TYPES",
    "DECIDED_BY",
    "PartialShape",
    "data_shapes",
    "is_data_layer",
]
