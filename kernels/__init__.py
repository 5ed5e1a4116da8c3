"""mcconv's Triton device code (installed as ``mcconv._kernels``).

Only ``@triton.jit`` functions live here; what each kernel is for, when it runs and with which
arguments is declared host-side in ``mcconv/ops/``. Importing this package decorates the
kernels, so ``TRITON_INTERPRET`` must be set before the first import (and before triton's) for
the interpreter to take effect.
"""
from . import activations
from .conv1x1_gemm import conv1x1_gemm_kernel
from .conv2d_dgrad import conv2d_dgrad_kernel
from .conv2d_fwd import conv2d_fwd_kernel, conv2d_split_epilogue_kernel
from .conv2d_wgrad import conv2d_wgrad_kernel
from .conv3d_fwd import conv3d_fwd_kernel
from .depthwise import conv2d_depthwise_kernel
from .depthwise_bwd import depthwise_dgrad_kernel, depthwise_wgrad_kernel
from .reduce import bias_act_grad_kernel, split_sum_kernel

__all__ = ["activations", "conv1x1_gemm_kernel", "conv2d_dgrad_kernel", "conv2d_fwd_kernel",
           "conv2d_split_epilogue_kernel", "conv2d_wgrad_kernel", "conv3d_fwd_kernel",
           "conv2d_depthwise_kernel", "depthwise_dgrad_kernel", "depthwise_wgrad_kernel", "bias_act_grad_kernel",
           "split_sum_kernel"]
