"""cnncli: convolutional neural networks on the CPU.

The compiled convolution and pooling kernels are reached through
``cnncli.functional``; ``cnncli.gradcheck`` checks gradients by finite
differences.
"""

import os

# OpenMP workers spin-wait after each parallel region: libgomp's default spin
# lasts several milliseconds on current CPUs, longer than the NumPy work
# between two kernels of a model, whose core it steals (measured: a LeNet
# forward at 2 threads took 60 ms instead of 35). A short spin keeps
# back-to-back kernels as fast. Set before the kernels load libgomp; a
# setting of the user's own wins.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"

from cnncli import functional, gradcheck  # noqa: E402  (after the OpenMP setting)
from cnncli.functional import get_num_threads, openmp_enabled, set_num_threads, threads  # noqa: E402

__version__ = "0.1.0"

__all__ = ["functional", "gradcheck", "get_num_threads", "set_num_threads", "threads",
           "openmp_enabled", "__version__"]
