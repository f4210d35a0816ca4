"""bnfuse's typed view of Caffe's schema: the one door to the generated ``caffe_pb2``.

Every other module imports message classes from here, never from
``bnfuse.proto.caffe_pb2``, so a regenerated or relocated schema touches one
file. The schema itself lives in ``caffe_proto/caffe.proto``; it matches BVLC
Caffe on the wire and in text, under the protobuf package ``bnfuse.caffe`` so
that pycaffe's own ``caffe_pb2`` can be loaded in the same process.

Example:
    >>> from bnfuse.proto import NetParameter, TEST
    >>> net = NetParameter(name="tiny")
    >>> layer = net.layer.add(name="bn", type="BatchNorm")
    >>> layer.batch_norm_param.eps
    9.999999747378752e-06
    >>> layer.batch_norm_param.HasField("use_global_stats")
    False
    >>> NetParameter.FromString(net.SerializeToString()) == net
    True
    >>> net.state.phase == TEST
    True
"""

from __future__ import annotations

from bnfuse.proto import caffe_pb2
from bnfuse.proto.caffe_pb2 import (
    AccuracyParameter,
    ArgMaxParameter,
    BatchNormParameter,
    BiasParameter,
    BlobProto,
    BlobProtoVector,
    BlobShape,
    ClipParameter,
    ConcatParameter,
    ContrastiveLossParameter,
    ConvolutionParameter,
    CropParameter,
    DataParameter,
    DropoutParameter,
    DummyDataParameter,
    EltwiseParameter,
    ELUParameter,
    EmbedParameter,
    ExpParameter,
    FillerParameter,
    FlattenParameter,
    HDF5DataParameter,
    HDF5OutputParameter,
    HingeLossParameter,
    ImageDataParameter,
    InfogainLossParameter,
    InnerProductParameter,
    InputParameter,
    LayerParameter,
    LogParameter,
    LossParameter,
    LRNParameter,
    MemoryDataParameter,
    MVNParameter,
    NetParameter,
    NetState,
    NetStateRule,
    ParameterParameter,
    ParamSpec,
    PoolingParameter,
    PowerParameter,
    PReLUParameter,
    PythonParameter,
    RecurrentParameter,
    ReductionParameter,
    ReLUParameter,
    ReshapeParameter,
    ScaleParameter,
    SigmoidParameter,
    SliceParameter,
    SoftmaxParameter,
    SPPParameter,
    SwishParameter,
    TanHParameter,
    ThresholdParameter,
    TileParameter,
    TransformationParameter,
    V0LayerParameter,
    V1LayerParameter,
    WindowDataParameter,
)

#: The ``Phase`` enum (``Phase.Name(1) == "TEST"``) and its two values.
Phase = caffe_pb2.Phase
TRAIN: int = caffe_pb2.TRAIN
TEST: int = caffe_pb2.TEST

#: NVIDIA Caffe's element type of ``BlobProto.raw_data`` (``Type`` in the schema):
#: ``BlobDataType.Value("FLOAT16") == 2``.
BlobDataType = caffe_pb2.Type

__all__ = [
    "TEST",
    "TRAIN",
    "AccuracyParameter",
    "ArgMaxParameter",
    "BatchNormParameter",
    "BiasParameter",
    "BlobDataType",
    "BlobProto",
    "BlobProtoVector",
    "BlobShape",
    "ClipParameter",
    "ConcatParameter",
    "ContrastiveLossParameter",
    "ConvolutionParameter",
    "CropParameter",
    "DataParameter",
    "DropoutParameter",
    "DummyDataParameter",
    "ELUParameter",
    "EltwiseParameter",
    "EmbedParameter",
    "ExpParameter",
    "FillerParameter",
    "FlattenParameter",
    "HDF5DataParameter",
    "HDF5OutputParameter",
    "HingeLossParameter",
    "ImageDataParameter",
    "InfogainLossParameter",
    "InnerProductParameter",
    "InputParameter",
    "LRNParameter",
    "LayerParameter",
    "LogParameter",
    "LossParameter",
    "MVNParameter",
    "MemoryDataParameter",
    "NetParameter",
    "NetState",
    "NetStateRule",
    "PReLUParameter",
    "ParamSpec",
    "ParameterParameter",
    "Phase",
    "PoolingParameter",
    "PowerParameter",
    "PythonParameter",
    "ReLUParameter",
    "RecurrentParameter",
    "ReductionParameter",
    "ReshapeParameter",
    "SPPParameter",
    "ScaleParameter",
    "SigmoidParameter",
    "SliceParameter",
    "SoftmaxParameter",
    "SwishParameter",
    "TanHParameter",
    "ThresholdParameter",
    "TileParameter",
    "TransformationParameter",
    "V0LayerParameter",
    "V1LayerParameter",
    "WindowDataParameter",
    "caffe_pb2",
]
