"""What the bytes of a caffemodel mean: field numbers, storage types, layer type names.

A caffemodel is a serialized ``NetParameter`` (caffe.proto).  The reader and the
writer both need these numbers; they are written down once, here.

Example:
    >>> RAW_DATA_TYPES[2], V1_TYPE_NAMES[4], V0_TYPE_NAMES["conv"]
    (dtype('float16'), 'Convolution', 'Convolution')
"""

from __future__ import annotations

import os
from typing import Literal, TypeAlias, Union

import numpy as np

from bnfuse.io.upgrade import V0_TYPES
from bnfuse.io.upgrade import V1_TYPE_NAMES as V1_TYPE_NAMES_BY_ENUM
from bnfuse.io.wire import WIRETYPE_FIXED32, WIRETYPE_FIXED64
from bnfuse.proto import V1LayerParameter

StrPath: TypeAlias = Union[str, "os.PathLike[str]"]

#: The largest message protobuf readers accept (Caffe, OpenCV and pycaffe all
#: parse the whole file as one message).
MAX_CAFFEMODEL_BYTES = 2**31 - 1

# NetParameter field numbers.
NET_LAYERS_V1 = 2
NET_LAYER_V2 = 100
# LayerParameter (V2) field numbers.
V2_NAME, V2_TYPE, V2_BLOBS = 1, 2, 7
# V1LayerParameter field numbers; field 1 holds a whole V0LayerParameter.
V1_V0LAYER, V1_NAME, V1_TYPE, V1_BLOBS = 1, 4, 5, 6
# V0LayerParameter field numbers (type is a string such as "conv").
V0_NAME, V0_TYPE, V0_BLOBS = 1, 2, 50
# BlobProto field numbers.
B_NUM, B_CHANNELS, B_HEIGHT, B_WIDTH = 1, 2, 3, 4
B_DATA, B_SHAPE, B_DOUBLE_DATA = 5, 7, 8
B_RAW_TYPE, B_RAW_DATA = 10, 12
# BlobShape.dim
SHAPE_DIM = 1

#: One-byte tags of unpacked repeated float (field 5, wire type 5) and double
#: (field 8, wire type 1) elements: runs of them are located with numpy.
TAG_FLOAT_UNPACKED = (B_DATA << 3) | WIRETYPE_FIXED32
TAG_DOUBLE_UNPACKED = (B_DOUBLE_DATA << 3) | WIRETYPE_FIXED64

#: NVIDIA Caffe's ``Type`` enum (caffe.proto) -> numpy dtype of ``raw_data``.
#: INT, UINT and BOOL are declared there but never used for weights.
RAW_DATA_TYPES: dict[int, np.dtype[np.floating]] = {
    0: np.dtype("<f8"),  # DOUBLE
    1: np.dtype("<f4"),  # FLOAT
    2: np.dtype("<f2"),  # FLOAT16
}
RAW_TYPE_OF: dict[str, int] = {"f8": 0, "f4": 1, "f2": 2}

#: Caffe's UpgradeV1LayerType keyed by V1 enum number (the names live in bnfuse.io.upgrade).
V1_TYPE_NAMES: dict[int, str] = {
    V1LayerParameter.LayerType.Value(enum_name): type_name
    for enum_name, type_name in V1_TYPE_NAMES_BY_ENUM.items()
}

#: Caffe's UpgradeV0LayerType composed with UpgradeV1LayerType: V0 type string -> V2 type.
V0_TYPE_NAMES: dict[str, str] = {
    v0_type: V1_TYPE_NAMES_BY_ENUM[enum_name] for v0_type, enum_name in V0_TYPES.items()
}

#: Fields kept when a layer header does not parse with bnfuse's schema (a fork
#: reused a number with another type): identity, wiring, learning rates, rules.
FALLBACK_V2_FIELDS = frozenset({1, 2, 3, 4, 6, 8, 9, 10})
FALLBACK_V1_FIELDS = frozenset({2, 3, 4, 5, 7, 8, 32, 33, 35, 1001, 1002})
FALLBACK_NET_FIELDS = frozenset({1, 3, 4, 5, 6, 7, 8})


#: Where a blob's values are stored.
BlobEncoding = Literal["data", "double_data", "raw_data", "none"]
BlobFormat = Literal["data", "double_data", "raw_float16", "raw_float32", "raw_float64"]


