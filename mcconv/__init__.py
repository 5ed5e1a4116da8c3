"""mcconv: Triton GPU kernels for multi-channel 2-D convolution.

``import mcconv`` queries no GPU and decorates no kernel; the kernels are loaded on the first
call, so ``TRITON_INTERPRET=1`` may be set until then to run them on the CPU.
"""
from ._launch import Dispatch, explain
from ._validate import ACTIVATIONS
from .functional import conv2d
from .nn import Conv2d, ConvertReport, convert
from .seed import corr2d, corr2d_multi_in, corr2d_multi_in_out, corr2d_multi_in_out_1x1

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "Conv2d",
    "ConvertReport",
    "Dispatch",
    "conv2d",
    "convert",
    "corr2d",
    "corr2d_multi_in",
    "corr2d_multi_in_out",
    "corr2d_multi_in_out_1x1",
    "explain",
]
