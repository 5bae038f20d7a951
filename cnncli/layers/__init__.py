"""Layers: parameters, forward and backward passes, built against an input shape.

One module per kind of layer, all importable from here:

- ``base``: ``Parameter``, ``Layer``, weight initialisation, the registry of
  layer types a model file may name;
- ``weighted``: ``Conv2D``, ``Dense``;
- ``pooling``: ``MaxPool2D``, ``AvgPool2D``, ``GlobalAvgPool2D``, ``Flatten``;
- ``activations``: ``ReLU``, ``LeakyReLU``, ``Sigmoid``, ``Tanh``, ``Softmax``,
  ``Dropout``;
- ``normalization``: ``BatchNorm2D``.
"""

from cnncli.layers.activations import Dropout, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from cnncli.layers.base import (INITIALIZERS, LAYER_TYPES, Layer, Parameter, initialize,
                                layer_config, register_layer)
from cnncli.layers.normalization import BatchNorm2D
from cnncli.layers.pooling import AvgPool2D, Flatten, GlobalAvgPool2D, MaxPool2D
from cnncli.layers.weighted import Conv2D, Dense

__all__ = [
    "Parameter", "Layer", "Conv2D", "Dense", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D",
    "Flatten", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "Dropout", "BatchNorm2D",
    "INITIALIZERS", "LAYER_TYPES", "initialize", "layer_config", "register_layer",
]

for _layer_class in (Conv2D, Dense, MaxPool2D, AvgPool2D, GlobalAvgPool2D, Flatten, ReLU,
                     LeakyReLU, Sigmoid, Tanh, Softmax, Dropout, BatchNorm2D):
    register_layer(_layer_class)
