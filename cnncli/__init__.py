"""cnncli: convolutional neural networks on the CPU.

    import cnncli
    from cnncli.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU

    model = cnncli.Sequential([Conv2D(8, 3), ReLU(), MaxPool2D(2), Flatten(), Dense(10)],
                              input_shape=(1, 8, 8), seed=0)
    model.fit(x, y, epochs=5)
    model.save("digits.cnn")
    model = cnncli.load_model("digits.cnn")

The compiled convolution and pooling kernels are reached through
``cnncli.functional``; ``cnncli.gradcheck`` checks gradients by finite
differences.
"""

import os

__version__ = "0.1.0"

# OpenMP workers spin-wait after each parallel region: libgomp's default spin
# lasts several milliseconds on current CPUs, longer than the NumPy work
# between two kernels of a model, whose core it steals (measured: a LeNet
# forward at 2 threads took 60 ms instead of 35). A short spin keeps
# back-to-back kernels as fast. Set before the kernels load libgomp; a
# setting of the user's own wins.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"

# The imports follow the OpenMP setting on purpose (noqa: E402).
from cnncli.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()

from cnncli import functional, gradcheck, layers  # noqa: E402
from cnncli.blocks import Residual  # noqa: E402
from cnncli.functional import get_num_threads, openmp_enabled, set_num_threads, threads  # noqa: E402
from cnncli.model import IncompatibleWeightsError, LoadReport, Sequential  # noqa: E402
from cnncli.loading import load_model  # noqa: E402
from cnncli.modelfile import ModelFileError, save_model  # noqa: E402
from cnncli.preprocessing import Preprocessing  # noqa: E402

__all__ = ["functional", "gradcheck", "layers", "Sequential", "Residual", "Preprocessing",
           "load_model", "save_model", "ModelFileError", "IncompatibleWeightsError",
           "LoadReport", "get_num_threads", "set_num_threads", "threads", "openmp_enabled",
           "__version__"]
