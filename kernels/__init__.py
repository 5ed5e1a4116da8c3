"""mcconv's Triton device code (installed as ``mcconv._kernels``).

Only ``@triton.jit`` functions live here; validation, configuration and launching are in
``mcconv``. Importing this package decorates the kernels, so ``TRITON_INTERPRET`` must be set
before the first import for the interpreter to take effect.
"""
from .conv2d_igemm import conv2d_igemm_kernel
from .depthwise import conv2d_depthwise_kernel

__all__ = ["conv2d_igemm_kernel", "conv2d_depthwise_kernel"]
