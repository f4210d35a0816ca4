"""Caffemodel bytes: index the layers and blobs of a memory-mapped file, stream a new one.

A caffemodel is a serialized ``NetParameter``.  Parsing it through protobuf
copies every weight into Python lists (seconds to tens of seconds for VGG-16),
and re-serializing it would rewrite fork fields bnfuse does not know.  This
package instead walks the wire format once (:mod:`bnfuse.io.wire`), remembers the
byte span of every layer record and every blob array, and hands out read-only
``numpy`` views straight into the memory map.  Writing streams a new file in
which untouched layer records are copied byte for byte and only new layers are
encoded, so an unchanged net comes out identical to its source.

Its modules: ``_layout`` (field numbers and type tables), ``_index`` (records
and blobs found in the bytes), ``_sources`` (opening paths, bytes and streams;
the memory map's lifetime) and ``_writer`` (new layers, planning and writing).

Example:
    >>> import numpy as np
    >>> from bnfuse.proto import LayerParameter
    >>> import io, os, tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "tiny.caffemodel")
    >>> conv = NewLayer(LayerParameter(name="conv1", type="Convolution"),
    ...                 [np.ones((2, 1, 1, 1), np.float32), np.zeros(2, np.float32)])
    >>> write_caffemodel(out, [conv], source=None)
    >>> with read_caffemodel(out) as model:
    ...     layer = model.layers[0]
    ...     print(layer.name, layer.type, layer.blobs[0].shape, layer.blobs[1].array())
    conv1 Convolution (2, 1, 1, 1) [0. 0.]
"""

from __future__ import annotations

from bnfuse.io.caffemodel._index import BlobRecord, LayerRecord
from bnfuse.io.caffemodel._layout import (
    MAX_CAFFEMODEL_BYTES,
    RAW_DATA_TYPES,
    V0_TYPE_NAMES,
    V1_TYPE_NAMES,
    BlobFormat,
)
from bnfuse.io.caffemodel._sources import CaffemodelFile, read_caffemodel
from bnfuse.io.caffemodel._writer import NewLayer, caffemodel_size, write_caffemodel

__all__ = [
    "MAX_CAFFEMODEL_BYTES",
    "RAW_DATA_TYPES",
    "V0_TYPE_NAMES",
    "V1_TYPE_NAMES",
    "BlobFormat",
    "BlobRecord",
    "CaffemodelFile",
    "LayerRecord",
    "NewLayer",
    "caffemodel_size",
    "read_caffemodel",
    "write_caffemodel",
]
