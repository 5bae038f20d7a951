"""Input preprocessing: how raw images become what a model was trained on.

A model file stores it with the weights, so evaluation and prediction apply
exactly the transformation training used:

    x = (pixels * scale - mean[c]) / std[c]        for each channel c

with images of ``channels`` channels and ``size`` (height, width). Turning
files into arrays of that size and channel count is the data pipeline's job;
this is the arithmetic after it.
"""

import contextlib
import math

import numpy as np

__all__ = ["Preprocessing"]

# The largest input a preprocessing may produce from a 16-bit pixel: far
# beyond any sensible normalisation, far below float32's overflow.
MAX_INPUT_MAGNITUDE = 1e30


def _finite_numbers(name, values, count, positive=False):
    if not isinstance(values, (list, tuple)) or len(values) != count:
        raise ValueError(f"{name}: expected {count} numbers (one per channel), got {values!r}")
    numbers = []
    for value in values:
        number = None
        if not isinstance(value, bool) and isinstance(value, (int, float, np.integer,
                                                              np.floating)):
            with contextlib.suppress(OverflowError):     # an int beyond any float
                number = float(value)
        if number is None or not math.isfinite(number) or (positive and number <= 0):
            kind = "positive finite numbers" if positive else "finite numbers"
            raise ValueError(f"{name}: expected {kind}, got {values!r}"[:300])
        numbers.append(number)
    return tuple(numbers)


class Preprocessing:
    """Images of ``channels`` x ``size``, scaled then normalised per channel.

    Parameters
    ----------
    channels : int
        1 for grayscale, 3 for RGB.
    size : (int, int)
        Height and width the model expects.
    mean, std : sequence of float, one per channel
        Normalisation applied after scaling (defaults: 0 and 1, i.e. none).
    scale : float
        Multiplies raw pixel values first: 1/255 maps 8-bit pixels to [0, 1].
    """

    def __init__(self, channels, size, mean=None, std=None, scale=1 / 255):
        if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) \
                or not 1 <= channels <= 4096:
            raise ValueError(f"channels: expected a positive int, got {channels!r}")
        if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 1 <= v <= 2**16
                for v in size):
            raise ValueError(f"size: expected (height, width) in pixels, got {size!r}")
        self.channels = int(channels)
        self.size = tuple(int(v) for v in size)
        self.mean = _finite_numbers("mean", [0.0] * self.channels if mean is None else mean,
                                    self.channels)
        self.std = _finite_numbers("std", [1.0] * self.channels if std is None else std,
                                   self.channels, positive=True)
        (self.scale,) = _finite_numbers("scale", [scale], 1, positive=True)
        # Pixels of up to 16 bits must become finite float32 inputs, or every
        # output of the model would be NaN.
        extremes = [abs((pixel * self.scale - mean) / std) for pixel in (0, 65535)
                    for mean, std in zip(self.mean, self.std)]
        if not all(value <= MAX_INPUT_MAGNITUDE for value in extremes):
            raise ValueError(f"preprocessing: scale {self.scale:g}, mean and std map pixel "
                             f"values 0..65535 beyond +-{MAX_INPUT_MAGNITUDE:g}"[:300])

    @property
    def input_shape(self):
        """(channels, height, width): the model's input shape."""
        return (self.channels,) + self.size

    def __call__(self, images, dtype=np.float32):
        """Preprocessed float images, (N, C, H, W), from raw pixels of shape (N, C, H, W).

        Grayscale batches may also come as (N, H, W).
        """
        images = np.asarray(images)
        if images.ndim == 3 and self.channels == 1:
            images = images[:, None]
        if images.shape[1:] != self.input_shape:
            raise ValueError(f"images: expected shape (N, {', '.join(map(str, self.input_shape))})"
                             f", got {images.shape}")
        if not (np.issubdtype(images.dtype, np.integer)
                or np.issubdtype(images.dtype, np.floating)):
            raise ValueError(f"images: expected integer or float pixels, got {images.dtype}")
        dtype = np.dtype(dtype)
        shape = (1, self.channels, 1, 1)
        mean = np.asarray(self.mean, dtype=dtype).reshape(shape)
        inverse_std = (1 / np.asarray(self.std, dtype=np.float64)).astype(dtype).reshape(shape)
        out = images.astype(dtype) * dtype.type(self.scale)
        out -= mean
        out *= inverse_std
        return out

    def get_config(self):
        return {"channels": self.channels, "size": list(self.size), "mean": list(self.mean),
                "std": list(self.std), "scale": self.scale}

    @classmethod
    def from_config(cls, config):
        if not isinstance(config, dict):
            raise ValueError(f"preprocessing: expected a dict, got {type(config).__name__}")
        unknown = set(config) - {"channels", "size", "mean", "std", "scale"}
        if unknown:
            raise ValueError(f"preprocessing: unknown settings {sorted(unknown)}")
        try:
            return cls(**config)
        except (TypeError, OverflowError) as error:
            raise ValueError(f"preprocessing: {error}") from None

    def __eq__(self, other):
        return isinstance(other, Preprocessing) and self.get_config() == other.get_config()

    def __repr__(self):
        return (f"Preprocessing(channels={self.channels}, size={self.size}, mean={self.mean}, "
                f"std={self.std}, scale={self.scale})")
