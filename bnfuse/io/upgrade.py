"""Bring old Caffe nets up to the current format, the way Caffe does on load.

Caffe accepts nets written in three generations of its schema and upgrades them
in memory before building the net (``UpgradeNetAsNeeded``), in this order:

1. V0 layers (``layers { layer { type: "conv" ... } }``, 2013) become V1 layers;
   ``padding`` layers merge into the convolution or pooling that reads them.
2. Data-layer transformation fields move into ``transform_param``.
3. V1 layers (``layers { type: CONVOLUTION }``) become ``layer`` entries with a
   string type; ``blobs_lr``/``weight_decay`` become ``param`` entries.
4. Top-level ``input``/``input_dim``/``input_shape`` become one ``Input`` layer
   named ``input`` at the front of the net.
5. A BatchNorm with three ``param`` entries gets ``lr_mult``/``decay_mult`` 0.

Everything here works on messages of the generated schema; it never sees text
or file bytes.

Example:
    >>> from bnfuse.proto import NetParameter
    >>> net = NetParameter(input=["data"], input_dim=[1, 3, 8, 8])
    >>> notes = upgrade_net(net)
    >>> [(layer.name, layer.type, list(layer.top)) for layer in net.layer]
    [('input', 'Input', ['data'])]
    >>> notes
    ['input fields became an Input layer']
"""

from __future__ import annotations

from typing import Any

from bnfuse.errors import UpgradeError, excerpt
from bnfuse.io.textmsg import is_repeated
from bnfuse.proto import (
    BlobShape,
    LayerParameter,
    NetParameter,
    ParamSpec,
    V1LayerParameter,
    caffe_pb2,
)

# V1 enum names -> V2 type strings (Caffe's UpgradeV1LayerType).
V1_TYPE_NAMES: dict[str, str] = {
    "NONE": "",
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "DATA": "Data",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

#: V0 type strings -> V1 enum names (Caffe's UpgradeV0LayerType).
V0_TYPES: dict[str, str] = {
    "accuracy": "ACCURACY",
    "bnll": "BNLL",
    "concat": "CONCAT",
    "conv": "CONVOLUTION",
    "data": "DATA",
    "dropout": "DROPOUT",
    "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL",
    "images": "IMAGE_DATA",
    "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT",
    "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING",
    "relu": "RELU",
    "sigmoid": "SIGMOID",
    "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT",
    "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}

# Where each flat V0 field lands, per V0 layer type: (typed param, field name).
# A field used with a type not listed here is dropped, as Caffe drops it (with a log line).
_V0_FIELDS: dict[str, dict[str, tuple[str, str]]] = {
    "num_output": {
        "conv": ("convolution_param", "num_output"),
        "innerproduct": ("inner_product_param", "num_output"),
    },
    "biasterm": {
        "conv": ("convolution_param", "bias_term"),
        "innerproduct": ("inner_product_param", "bias_term"),
    },
    "weight_filler": {
        "conv": ("convolution_param", "weight_filler"),
        "innerproduct": ("inner_product_param", "weight_filler"),
    },
    "bias_filler": {
        "conv": ("convolution_param", "bias_filler"),
        "innerproduct": ("inner_product_param", "bias_filler"),
    },
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {
        "conv": ("convolution_param", "kernel_size"),
        "pool": ("pooling_param", "kernel_size"),
    },
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {
        "data": ("data_param", "source"),
        "hdf5_data": ("hdf5_data_param", "source"),
        "images": ("image_data_param", "source"),
        "window_data": ("window_data_param", "source"),
        "infogain_loss": ("infogain_loss_param", "source"),
    },
    "batchsize": {
        "data": ("data_param", "batch_size"),
        "hdf5_data": ("hdf5_data_param", "batch_size"),
        "images": ("image_data_param", "batch_size"),
        "window_data": ("window_data_param", "batch_size"),
    },
    "rand_skip": {
        "data": ("data_param", "rand_skip"),
        "images": ("image_data_param", "rand_skip"),
    },
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", "")},
}

# V0 transformation fields that apply to every type.
_V0_TRANSFORM = {
    "scale": "scale",
    "meanfile": "mean_file",
    "cropsize": "crop_size",
    "mirror": "mirror",
}

# Data-layer V1 params whose transformation fields moved into transform_param.
_DATA_TRANSFORM_PARAMS = {
    "DATA": "data_param",
    "IMAGE_DATA": "image_data_param",
    "WINDOW_DATA": "window_data_param",
}


def _copy_value(dst_msg: Any, name: str, value: Any) -> None:
    """Set ``dst_msg.name`` from a value of the matching (scalar, repeated or message) field."""
    field = dst_msg.DESCRIPTOR.fields_by_name[name]
    if field.type == field.TYPE_MESSAGE:
        getattr(dst_msg, name).CopyFrom(value)
    elif is_repeated(field):
        getattr(dst_msg, name).append(value)
    else:
        setattr(dst_msg, name, value)


def upgrade_v0_layer(old: V1LayerParameter) -> V1LayerParameter:
    """Turn one V1 entry that wraps a V0 ``layer`` into a plain V1 layer.

    Example:
        >>> from bnfuse.proto import V0LayerParameter
        >>> v0 = V1LayerParameter(bottom=["data"], top=["c"],
        ...     layer=V0LayerParameter(name="c", type="conv", num_output=4, kernelsize=3))
        >>> new = upgrade_v0_layer(v0)
        >>> (new.name, V1LayerParameter.LayerType.Name(new.type),
        ...  new.convolution_param.num_output, list(new.convolution_param.kernel_size))
        ('c', 'CONVOLUTION', 4, [3])
    """
    new = V1LayerParameter(bottom=list(old.bottom), top=list(old.top))
    if not old.HasField("layer"):
        return new
    v0 = old.layer
    kind = v0.type
    if v0.HasField("name"):
        new.name = v0.name
    if v0.HasField("type"):
        if kind not in V0_TYPES:
            raise UpgradeError(f"V0 layer {excerpt(v0.name)} has unknown type {excerpt(kind)}")
        new.type = V1LayerParameter.LayerType.Value(V0_TYPES[kind])  # type: ignore[assignment]
    new.blobs.extend(v0.blobs)
    new.blobs_lr.extend(v0.blobs_lr)
    new.weight_decay.extend(v0.weight_decay)
    for v0_name, targets in _V0_FIELDS.items():
        if not v0.HasField(v0_name) or kind not in targets:
            continue
        param_name, field_name = targets[kind]
        value = getattr(v0, v0_name)
        if not field_name:  # the whole sub-message moves
            getattr(new, param_name).CopyFrom(value)
        elif v0_name == "pool":
            # V0 and V1 pooling enums share names, not necessarily numbers.
            enum_name = v0.DESCRIPTOR.fields_by_name["pool"].enum_type.values_by_number[value].name
            new.pooling_param.pool = caffe_pb2.PoolingParameter.PoolMethod.Value(  # type: ignore[assignment]
                enum_name)
        else:
            _copy_value(getattr(new, param_name), field_name, value)
    for v0_name, transform_name in _V0_TRANSFORM.items():
        if v0.HasField(v0_name):
            setattr(new.transform_param, transform_name, getattr(v0, v0_name))
    return new


def _merge_v0_padding(net: NetParameter) -> None:
    """Fold V0 ``padding`` layers into the conv/pool layer that reads them, as Caffe does."""
    last_writer: dict[str, int] = {name: -1 for name in net.input}
    kept: list[V1LayerParameter] = []
    for index, entry in enumerate(net.layers):
        is_padding = entry.layer.type == "padding"
        copy = V1LayerParameter()
        copy.CopyFrom(entry)
        for j, blob in enumerate(entry.bottom):
            if blob not in last_writer:
                raise UpgradeError(
                    f"V0 layer {excerpt(entry.layer.name)} reads unknown blob {excerpt(blob)}"
                )
            source_index = last_writer[blob]
            if source_index < 0 or net.layers[source_index].layer.type != "padding":
                continue
            if entry.layer.type not in ("conv", "pool"):
                raise UpgradeError(
                    f"V0 padding layer feeds {excerpt(entry.layer.name)} of type "
                    f"{excerpt(entry.layer.type)}; only conv and pool can absorb padding"
                )
            source = net.layers[source_index]
            copy.layer.pad = source.layer.pad
            copy.bottom[j] = source.bottom[0]
        if not is_padding:
            kept.append(copy)
        for blob in entry.top:
            last_writer[blob] = index
    del net.layers[:]
    net.layers.extend(kept)


def _upgrade_data_transform(net: NetParameter) -> bool:
    changed = False
    for entry in net.layers:
        enum_name = V1LayerParameter.LayerType.Name(entry.type)
        param_name = _DATA_TRANSFORM_PARAMS.get(enum_name)
        if param_name is None:
            continue
        param = getattr(entry, param_name)
        for field in ("scale", "mean_file", "crop_size", "mirror"):
            if param.HasField(field):
                setattr(entry.transform_param, field, getattr(param, field))
                param.ClearField(field)
                changed = True
    return changed


def upgrade_v1_layer(old: V1LayerParameter) -> LayerParameter:
    """Turn one V1 layer into a current ``LayerParameter`` (Caffe's UpgradeV1LayerParameter).

    Example:
        >>> v1 = V1LayerParameter(name="fc", type=V1LayerParameter.INNER_PRODUCT,
        ...                       blobs_lr=[1, 2], weight_decay=[1, 0])
        >>> layer = upgrade_v1_layer(v1)
        >>> layer.type, [(p.lr_mult, p.decay_mult) for p in layer.param]
        ('InnerProduct', [(1.0, 1.0), (2.0, 0.0)])
    """
    if old.HasField("layer"):
        raise UpgradeError(f"layer {excerpt(old.name)} still holds a V0 layer; upgrade it first")
    new = LayerParameter(bottom=list(old.bottom), top=list(old.top))
    if old.HasField("name"):
        new.name = old.name
    new.include.extend(old.include)
    new.exclude.extend(old.exclude)
    if old.HasField("type"):
        new.type = V1_TYPE_NAMES[V1LayerParameter.LayerType.Name(old.type)]
    new.blobs.extend(old.blobs)

    def spec(i: int) -> ParamSpec:
        while len(new.param) <= i:
            new.param.add()
        return new.param[i]

    for i, name in enumerate(old.param):
        spec(i).name = name
    for i, mode in enumerate(old.blob_share_mode):
        mode_name = V1LayerParameter.DimCheckMode.Name(mode)
        spec(i).share_mode = ParamSpec.DimCheckMode.Value(mode_name)  # type: ignore[assignment]
    for i, lr in enumerate(old.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(old.weight_decay):
        spec(i).decay_mult = decay
    new.loss_weight.extend(old.loss_weight)
    # Every typed V1 param has a field of the same name and type in LayerParameter.
    target_fields = new.DESCRIPTOR.fields_by_name
    for field, value in old.ListFields():
        if field.name.endswith("_param") and field.name in target_fields:
            getattr(new, field.name).CopyFrom(value)
    return new


def _upgrade_input_fields(net: NetParameter) -> bool:
    has_shape = len(net.input_shape) > 0
    has_dim = len(net.input_dim) > 0
    changed = bool(net.input or has_shape or has_dim)
    if has_shape or has_dim:
        if has_shape and len(net.input_shape) != len(net.input):
            raise UpgradeError(
                f"net has {len(net.input)} input names but {len(net.input_shape)} input_shape "
                "entries; give one input_shape per input"
            )
        if has_dim and not has_shape and len(net.input_dim) != 4 * len(net.input):
            raise UpgradeError(
                f"net has {len(net.input)} input names but {len(net.input_dim)} input_dim "
                "values; give exactly 4 input_dim values per input"
            )
        layer = LayerParameter(name="input", type="Input", top=list(net.input))
        for i in range(len(net.input)):
            if has_shape:
                layer.input_param.shape.add().CopyFrom(net.input_shape[i])
            else:
                layer.input_param.shape.append(BlobShape(dim=net.input_dim[4 * i : 4 * i + 4]))
        existing = list(net.layer)
        del net.layer[:]
        net.layer.append(layer)
        net.layer.extend(existing)
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")
    return changed


def upgrade_batchnorm_params(net: NetParameter) -> bool:
    """Zero the learning rates of BatchNorm layers that declare three ``param`` entries.

    Example:
        >>> net = NetParameter(layer=[LayerParameter(type="BatchNorm",
        ...     param=[ParamSpec(lr_mult=1)] * 3)])
        >>> upgrade_batchnorm_params(net), [p.lr_mult for p in net.layer[0].param]
        (True, [0.0, 0.0, 0.0])
    """
    changed = False
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0
            changed = True
    return changed


def needs_format_upgrade(net: NetParameter) -> bool:
    """True when the net uses V0/V1 layers (the text must be regenerated to save it).

    Example:
        >>> needs_format_upgrade(NetParameter(layers=[V1LayerParameter(name="a")]))
        True
    """
    return len(net.layers) > 0


def upgrade_net(net: NetParameter) -> list[str]:
    """Upgrade ``net`` in place as Caffe's ``UpgradeNetAsNeeded`` does; return what changed.

    Raises :class:`UpgradeError` for a net that mixes V1 ``layers`` and current
    ``layer`` entries (Caffe ignores the ``layer`` entries then; bnfuse refuses
    rather than silently lose them).

    Example:
        >>> net = NetParameter(layers=[V1LayerParameter(name="r", type=V1LayerParameter.RELU)])
        >>> upgrade_net(net)
        ['V1 layers became current layers']
        >>> net.layer[0].type
        'ReLU'
    """
    notes: list[str] = []
    if net.layers and net.layer:
        raise UpgradeError(
            "the net mixes V1 'layers' and current 'layer' entries; "
            "convert it to one format (Caffe's upgrade_net_proto_text does this)"
        )
    if any(entry.HasField("layer") for entry in net.layers):
        _merge_v0_padding(net)
        upgraded = [upgrade_v0_layer(entry) for entry in net.layers]
        del net.layers[:]
        net.layers.extend(upgraded)
        notes.append("V0 layers became V1 layers")
    if _upgrade_data_transform(net):
        notes.append("data transformation fields moved into transform_param")
    if net.layers:
        upgraded_layers = [upgrade_v1_layer(entry) for entry in net.layers]
        del net.layers[:]
        net.layer.extend(upgraded_layers)
        notes.append("V1 layers became current layers")
    if _upgrade_input_fields(net):
        notes.append("input fields became an Input layer")
    if upgrade_batchnorm_params(net):
        notes.append("BatchNorm param entries got lr_mult 0")
    return notes


__all__ = [
    "V0_TYPES",
    "V1_TYPE_NAMES",
    "UpgradeError",
    "needs_format_upgrade",
    "upgrade_batchnorm_params",
    "upgrade_net",
    "upgrade_v0_layer",
    "upgrade_v1_layer",
]
