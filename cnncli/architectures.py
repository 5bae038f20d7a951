"""Named architectures: what ``cnncli train --arch NAME`` builds.

Each builder takes the input shape (C, H, W), the number of classes and a
seed, and returns a built ``Sequential`` whose last layer (the head) is a
``Dense`` with one output per class.
"""

from cnncli.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from cnncli.model import Sequential

__all__ = ["ARCHITECTURES", "build", "lenet", "vgg_small", "alexnet"]


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


ARCHITECTURES = {"lenet": lenet, "vgg-small": vgg_small, "alexnet": alexnet}


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
