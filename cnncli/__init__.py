"""cnncli: convolutional neural networks on the CPU.

The compiled convolution and pooling kernels are reached through
``cnncli.functional``; ``cnncli.gradcheck`` checks gradients by finite
differences.
"""

from cnncli import functional, gradcheck
from cnncli.functional import get_num_threads, openmp_enabled, set_num_threads, threads

__version__ = "0.1.0"

__all__ = ["functional", "gradcheck", "get_num_threads", "set_num_threads", "threads",
           "openmp_enabled", "__version__"]
