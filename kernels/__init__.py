"""mcconv's Triton device code (installed as ``mcconv._kernels``).

Only ``@triton.jit`` functions live here; validation, configuration and launching are in
``mcconv``. Importing this package decorates the kernels, so ``TRITON_INTERPRET`` must be set
before the first import for the interpreter to take effect.
"""
from .conv2d_igemm import conv2d_igemm_kernel
from .conv2d_wgrad import conv2d_wgrad_kernel
from .depthwise import conv2d_depthwise_kernel
from .depthwise_bwd import depthwise_dgrad_kernel, depthwise_wgrad_kernel
from .reduce import bias_act_grad_kernel, split_sum_kernel

__all__ = ["conv2d_igemm_kernel", "conv2d_depthwise_kernel", "conv2d_wgrad_kernel", "depthwise_dgrad_kernel",
           "depthwise_wgrad_kernel", "bias_act_grad_kernel", "split_sum_kernel"]
