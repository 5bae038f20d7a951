"""Named architectures: what ``cnncli train --arch NAME`` builds.

Each builder takes the input shape (C, H, W), the number of classes and a
seed, and returns a built ``Sequential`` whose last layer (the head) is a
``Dense`` with one output per class.
"""

from cnncli.blocks import Residual
from cnncli.layers import (BatchNorm2D, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D,
                           MaxPool2D, ReLU)
from cnncli.model import Sequential

__all__ = ["ARCHITECTURES", "build", "lenet", "vgg_small", "alexnet", "resnet", "resnet18",
           "resnet34", "resnet50", "resnet_layers", "RESNET_DEPTHS"]


def lenet(input_shape=(1, 28, 28), classes=10, seed=0):
    """LeNet-style: conv 5x5 32 -> pool -> conv 5x5 64 -> pool -> dense 128 -> dense classes.

    'same' padding keeps 28x28 inputs at 28, 14, then 7 pixels: a 3,136-value
    feature map before the dense layers.
    """
    return Sequential([
        Conv2D(32, 5, padding="same"), ReLU(), MaxPool2D(2),
        Conv2D(64, 5, padding="same"), ReLU(), MaxPool2D(2),
        Flatten(), Dense(128), ReLU(), Dense(classes),
    ], input_shape=input_shape, seed=seed, name="lenet")


def vgg_small(input_shape=(3, 32, 32), classes=10, seed=0):
    """A small VGG-style net: two blocks of two 3x3 convolutions and a pool, then dense layers."""
    return Sequential([
        Conv2D(32, 3, padding="same"), ReLU(), Conv2D(32, 3, padding="same"), ReLU(),
        MaxPool2D(2),
        Conv2D(64, 3, padding="same"), ReLU(), Conv2D(64, 3, padding="same"), ReLU(),
        MaxPool2D(2),
        Flatten(), Dense(256), ReLU(), Dropout(0.5), Dense(classes),
    ], input_shape=input_shape, seed=seed, name="vgg_small")


def alexnet(input_shape=(3, 227, 227), classes=1000, seed=0):
    """AlexNet (single-tower): its first layer takes 227x227x3 to 55x55x96 with 96 11x11
    filters at stride 4. 62,378,344 parameters with 1000 classes."""
    return Sequential([
        Conv2D(96, 11, stride=4), ReLU(), MaxPool2D(3, stride=2),
        Conv2D(256, 5, padding=2), ReLU(), MaxPool2D(3, stride=2),
        Conv2D(384, 3, padding=1), ReLU(),
        Conv2D(384, 3, padding=1), ReLU(),
        Conv2D(256, 3, padding=1), ReLU(), MaxPool2D(3, stride=2),
        Flatten(), Dropout(0.5), Dense(4096), ReLU(), Dropout(0.5), Dense(4096), ReLU(),
        Dense(classes),
    ], input_shape=input_shape, seed=seed, name="alexnet")


# Blocks per stage and the block kind of each ResNet depth (He et al. 2016, table 1).
RESNET_DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
                 50: ("bottleneck", (3, 4, 6, 3))}


def _conv_bn(prefix, filters, kernel_size, stride=1):
    """A bias-free convolution and its BatchNorm (the bias would be cancelled by the BN)."""
    return [Conv2D(filters, kernel_size, stride=stride, padding=kernel_size // 2,
                   use_bias=False, init="he_normal", name=f"conv{prefix}"),
            BatchNorm2D(name=f"bn{prefix}")]


def _resnet_block(kind, planes, stride, in_channels, name):
    """A residual block and the ReLU after the sum, named like torchvision's ``layerS.B``.

    Basic: 3x3 -> 3x3 (stride on the first). Bottleneck: 1x1 -> 3x3 (stride)
    -> 1x1 with four times the channels. The shortcut is a strided 1x1
    convolution and a BatchNorm wherever the shape changes, the identity
    elsewhere.
    """
    if kind == "basic":
        out_channels = planes
        body = [*_conv_bn(1, planes, 3, stride), ReLU(name="relu1"), *_conv_bn(2, planes, 3)]
    else:
        out_channels = planes * 4
        body = [*_conv_bn(1, planes, 1), ReLU(name="relu1"), *_conv_bn(2, planes, 3, stride),
                ReLU(name="relu2"), *_conv_bn(3, out_channels, 1)]
    shortcut = None
    if stride != 1 or in_channels != out_channels:
        shortcut = [Conv2D(out_channels, 1, stride=stride, use_bias=False, init="he_normal",
                           name="conv"), BatchNorm2D(name="bn")]
    return [Residual(body, shortcut, name=name), ReLU(name=f"{name}_relu")], out_channels


def resnet(depth, input_shape=(3, 224, 224), classes=1000, seed=0, width=64):
    """ResNet-18, -34 or -50 as in torchvision (ResNet v1.5: a bottleneck strides in its 3x3).

    The stem is a 7x7 stride-2 convolution, BatchNorm, ReLU and a 3x3 stride-2
    max pool; four stages of residual blocks follow, with ``width``, 2x, 4x
    and 8x channels (times 4 at the output of bottlenecks), halving the size
    at the start of stages 2-4; then global average pooling and a dense head.
    ``width`` below 64 gives a narrower network of the same shape (for tests).
    Layer names follow torchvision's parameter names (``layer2_0`` is
    ``layer2.0``), which is what lets ``cnncli.importer`` map its weights.
    """
    return Sequential(resnet_layers(depth, classes, width), input_shape=input_shape, seed=seed,
                      name=f"resnet{depth}")


def resnet_layers(depth, classes=1000, width=64):
    """The unbuilt layers of ``resnet(depth, ...)``: ``model.plan`` sizes them without
    allocating anything."""
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"depth: expected one of {sorted(RESNET_DEPTHS)}, got {depth!r}")
    kind, stages = RESNET_DEPTHS[depth]
    layers = [*_conv_bn(1, width, 7, stride=2), ReLU(name="relu"),
              MaxPool2D(3, stride=2, padding=1, name="maxpool")]
    channels = width
    for stage, blocks in enumerate(stages, start=1):
        planes = width * 2 ** (stage - 1)
        for block in range(blocks):
            stride = 2 if stage > 1 and block == 0 else 1
            block_layers, channels = _resnet_block(kind, planes, stride, channels,
                                                   f"layer{stage}_{block}")
            layers += block_layers
    layers += [GlobalAvgPool2D(name="avgpool"), Dense(classes, name="fc")]
    return layers


def resnet18(input_shape=(3, 224, 224), classes=1000, seed=0, width=64):
    """ResNet-18: 11,689,512 parameters with 1000 classes."""
    return resnet(18, input_shape, classes, seed, width)


def resnet34(input_shape=(3, 224, 224), classes=1000, seed=0, width=64):
    """ResNet-34: 21,797,672 parameters with 1000 classes."""
    return resnet(34, input_shape, classes, seed, width)


def resnet50(input_shape=(3, 224, 224), classes=1000, seed=0, width=64):
    """ResNet-50: 25,557,032 parameters with 1000 classes."""
    return resnet(50, input_shape, classes, seed, width)


ARCHITECTURES = {"lenet": lenet, "vgg-small": vgg_small, "alexnet": alexnet,
                 "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}


def build(name, input_shape, classes, seed=0):
    """The architecture ``name`` for inputs of ``input_shape`` and ``classes`` outputs."""
    if name not in ARCHITECTURES:
        raise ValueError(f"architecture: expected one of {', '.join(ARCHITECTURES)}, got "
                         f"{name!r}")
    try:
        return ARCHITECTURES[name](input_shape=tuple(input_shape), classes=classes, seed=seed)
    except ValueError as error:
        raise ValueError(f"architecture {name!r} does not fit inputs of shape "
                         f"{tuple(input_shape)}: {error}") from None
