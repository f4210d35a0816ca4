"""Prototxt builders for the benchmark models.

Every model is generated here, so the benchmark needs nothing but this
repository (no downloads, no ``../shared``). The nets follow the published
architectures closely enough that their weight sizes, layer counts and
BatchNorm/Scale chains match the real deploy files:

- :func:`vgg16_bn`: VGG-16 with BatchNorm -- 13 Convolution + BatchNorm + Scale +
  ReLU, 5 max pools, 3 InnerProduct (4096, 4096, 1000); 138.4 M float32 values
  (about 553 MB). Only the convolutions are followed by BatchNorm, so most of the
  file (the fully connected layers) is copied unchanged by a fold.
- :func:`resnet`: ResNet-50/101/152 as in Kaiming He's Caffe deploy files
  (bottleneck blocks, ``conv -> BatchNorm -> Scale`` everywhere, in place).
  ResNet-152 has 155 BatchNorm + Scale pairs and about 240 MB of weights, all of
  which a fold rewrites; ``stages`` and ``width`` give small variants for CI.
- :func:`mobilenet_v2`: MobileNet-v2 (expansion 6, depthwise convolutions as
  grouped ``Convolution``), 52 BatchNorm + Scale pairs, about 14 MB.
- :func:`inception_resnet`: an Inception-ResNet-v2-like stack of residual
  inception blocks with small channel counts, so that the time of a fold is
  dominated by the per-layer work (graph, planner, text edits) rather than by
  bytes. Two sizes (about 1,000 and 4,000 layers) show whether that per-layer
  cost stays constant as the net grows.

Example:
    >>> text = resnet(50)
    >>> text.count('type: "BatchNorm"'), text.count('type: "Scale"')
    (53, 53)
    >>> vgg16_bn().count('type: "InnerProduct"')
    3
"""

from __future__ import annotations

from collections.abc import Sequence


class _Builder:
    """Accumulates prototxt text in the layout of Caffe's own deploy files."""

    def __init__(self, name: str, input_shape: Sequence[int]) -> None:
        dims = " ".join(f"dim: {int(d)}" for d in input_shape)
        self.parts: list[str] = [
            f'name: "{name}"\n',
            'layer {\n  name: "data"\n  type: "Input"\n  top: "data"\n'
            f"  input_param {{ shape {{ {dims} }} }}\n}}\n",
        ]

    def layer(self, name: str, kind: str, bottoms: Sequence[str], tops: Sequence[str],
              body: str = "") -> None:
        lines = [f'  name: "{name}"', f'  type: "{kind}"']
        lines += [f'  bottom: "{b}"' for b in bottoms]
        lines += [f'  top: "{t}"' for t in tops]
        if body:
            lines.append(body)
        self.parts.append("layer {\n" + "\n".join(lines) + "\n}\n")

    def conv(self, name: str, bottom: str, num_output: int, kernel: int, *, stride: int = 1,
             pad: int | None = None, group: int = 1, bias: bool = False,
             top: str | None = None) -> str:
        pad = (kernel - 1) // 2 if pad is None else pad
        fields = [f"num_output: {num_output}"]
        if not bias:
            fields.append("bias_term: false")
        fields += [f"pad: {pad}", f"kernel_size: {kernel}", f"stride: {stride}"]
        if group != 1:
            fields.append(f"group: {group}")
        body = "  convolution_param {\n" + "".join(f"    {f}\n" for f in fields) + "  }"
        top = top or name
        self.layer(name, "Convolution", [bottom], [top], body)
        return top

    def bn_scale(self, prefix: str, blob: str) -> str:
        # In place, as in the ResNet and VGG-BN deploy files: conv, BatchNorm and Scale
        # write the same blob name (three versions of one name for the graph).
        self.layer(f"bn_{prefix}", "BatchNorm", [blob], [blob],
                   "  batch_norm_param { use_global_stats: true }")
        self.layer(f"scale_{prefix}", "Scale", [blob], [blob],
                   "  scale_param { bias_term: true }")
        return blob

    def relu(self, name: str, blob: str) -> str:
        self.layer(name, "ReLU", [blob], [blob])
        return blob

    def conv_bn(self, name: str, bottom: str, num_output: int, kernel: int, *,
                stride: int = 1, group: int = 1, relu: bool = True, bias: bool = False) -> str:
        top = self.conv(name, bottom, num_output, kernel, stride=stride, group=group, bias=bias)
        self.bn_scale(name, top)
        if relu:
            self.relu(f"{name}_relu", top)
        return top

    def pool(self, name: str, bottom: str, *, kind: str = "MAX", kernel: int = 2,
             stride: int = 2, pad: int = 0, global_pool: bool = False) -> str:
        if global_pool:
            body = f"  pooling_param {{ pool: {kind} global_pooling: true }}"
        else:
            body = (f"  pooling_param {{ pool: {kind} kernel_size: {kernel} stride: {stride}"
                    + (f" pad: {pad}" if pad else "") + " }")
        self.layer(name, "Pooling", [bottom], [name], body)
        return name

    def fc(self, name: str, bottom: str, num_output: int) -> str:
        self.layer(name, "InnerProduct", [bottom], [name],
                   f"  inner_product_param {{ num_output: {num_output} }}")
        return name

    def eltwise(self, name: str, bottoms: Sequence[str]) -> str:
        self.layer(name, "Eltwise", bottoms, [name], "  eltwise_param { operation: SUM }")
        return name

    def concat(self, name: str, bottoms: Sequence[str]) -> str:
        self.layer(name, "Concat", bottoms, [name])
        return name

    def softmax(self, bottom: str) -> None:
        self.layer("prob", "Softmax", [bottom], ["prob"])

    def text(self) -> str:
        return "".join(self.parts)


def vgg16_bn(input_size: int = 224, classes: int = 1000) -> str:
    """VGG-16 with BatchNorm after every convolution (about 553 MB of float32 weights).

    Example:
        >>> vgg16_bn().count('type: "Convolution"')
        13
    """
    net = _Builder("VGG16_BN", (1, 3, input_size, input_size))
    blob = "data"
    for stage, (width, count) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], 1):
        for i in range(1, count + 1):
            blob = net.conv_bn(f"conv{stage}_{i}", blob, width, 3, bias=True)
        blob = net.pool(f"pool{stage}", blob)
    blob = net.relu("relu6", net.fc("fc6", blob, 4096))
    blob = net.relu("relu7", net.fc("fc7", blob, 4096))
    net.softmax(net.fc("fc8", blob, classes))
    return net.text()


#: Bottleneck blocks per stage of the published ResNets.
RESNET_STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def resnet(depth: int = 50, *, stages: Sequence[int] | None = None, width: int = 64,
           input_size: int = 224, classes: int = 1000, name: str | None = None) -> str:
    """A bottleneck ResNet in the layout of the original Caffe deploy files.

    ``depth`` picks the published block counts (50, 101, 152); ``stages`` and
    ``width`` override them for small test variants.

    Example:
        >>> resnet(152).count('type: "BatchNorm"')
        155
    """
    blocks = tuple(stages) if stages is not None else RESNET_STAGES[depth]
    net = _Builder(name or f"ResNet-{depth}", (1, 3, input_size, input_size))
    blob = net.conv_bn("conv1", "data", width, 7, stride=2)
    blob = net.pool("pool1", blob, kernel=3, stride=2)
    for stage, count in enumerate(blocks, 2):
        inner = width * 2 ** (stage - 2)
        for i in range(count):
            prefix = f"res{stage}{chr(ord('a') + i) if i < 26 else f'b{i}'}"
            stride = 2 if i == 0 and stage > 2 else 1
            shortcut = blob
            if i == 0:
                shortcut = net.conv_bn(f"{prefix}_branch1", blob, inner * 4, 1, stride=stride,
                                       relu=False)
            x = net.conv_bn(f"{prefix}_branch2a", blob, inner, 1, stride=stride)
            x = net.conv_bn(f"{prefix}_branch2b", x, inner, 3)
            x = net.conv_bn(f"{prefix}_branch2c", x, inner * 4, 1, relu=False)
            blob = net.relu(f"{prefix}_relu", net.eltwise(prefix, [shortcut, x]))
    blob = net.pool("pool5", blob, kind="AVE", global_pool=True)
    net.softmax(net.fc("fc1000", blob, classes))
    return net.text()


def mobilenet_v2(input_size: int = 224, classes: int = 1000, width: float = 1.0) -> str:
    """MobileNet-v2 (inverted residuals, depthwise convolutions as grouped Convolution).

    Example:
        >>> mobilenet_v2().count('type: "BatchNorm"')
        52
    """

    def ch(c: int) -> int:
        return max(8, int(c * width + 4) // 8 * 8)

    net = _Builder("MobileNet-v2", (1, 3, input_size, input_size))
    blob = net.conv_bn("conv1", "data", ch(32), 3, stride=2)
    channels = ch(32)
    # (expansion t, output channels c, repeats n, first stride s), from the paper.
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]
    index = 0
    for t, c, n, s in settings:
        for i in range(n):
            index += 1
            prefix = f"block{index}"
            stride = s if i == 0 else 1
            out = ch(c)
            x = blob
            hidden = channels * t
            if t != 1:
                x = net.conv_bn(f"{prefix}_expand", x, hidden, 1)
            x = net.conv_bn(f"{prefix}_dwise", x, hidden, 3, stride=stride, group=hidden)
            x = net.conv_bn(f"{prefix}_linear", x, out, 1, relu=False)
            if stride == 1 and channels == out:
                x = net.eltwise(f"{prefix}_add", [blob, x])
            blob, channels = x, out
    blob = net.conv_bn("conv_last", blob, max(1280, ch(1280)), 1)
    blob = net.pool("pool_last", blob, kind="AVE", global_pool=True)
    net.softmax(net.fc("fc", blob, classes))
    return net.text()


def inception_resnet(blocks: int = 62, *, channels: int = 32, input_size: int = 17) -> str:
    """A deep Inception-ResNet-v2-like net: ``blocks`` residual inception blocks.

    Each block has 16 layers (four convolutions, three BatchNorm + Scale + ReLU
    chains, a Concat, a linear 1x1 up-projection with bias, the residual sum and
    a ReLU), so 62 blocks make about 1,000 layers. Channels and the input are
    small: the weights are a few MB, and what a fold costs here is per-layer work.

    Example:
        >>> inception_resnet(2).count("layer {")
        40
    """
    net = _Builder(f"InceptionResNet-{blocks}", (1, channels, input_size, input_size))
    blob = net.conv_bn("stem", "data", channels, 3)
    half = channels // 2
    for i in range(1, blocks + 1):
        prefix = f"block{i}"
        b1 = net.conv_bn(f"{prefix}_b1", blob, half, 1)
        b2 = net.conv_bn(f"{prefix}_b2a", blob, half, 1)
        b2 = net.conv_bn(f"{prefix}_b2b", b2, half, 3)
        mixed = net.concat(f"{prefix}_concat", [b1, b2])
        up = net.conv(f"{prefix}_up", mixed, channels, 1, bias=True)
        blob = net.relu(f"{prefix}_relu", net.eltwise(f"{prefix}_sum", [blob, up]))
    blob = net.pool("pool", blob, kind="AVE", global_pool=True)
    net.softmax(net.fc("fc", blob, 10))
    return net.text()


__all__ = ["RESNET_STAGES", "inception_resnet", "mobilenet_v2", "resnet", "vgg16_bn"]
