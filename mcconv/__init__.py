"""mcconv: Triton GPU kernels for multi-channel 2-D convolution.

``import mcconv`` imports neither triton nor the kernels and queries no GPU; the kernels are
loaded on the first call, so ``TRITON_INTERPRET=1`` may be set until then (if nothing else has
imported triton) to run them on the CPU.

Public surface: :func:`conv2d`, :class:`Conv2d`, :func:`convert`, :func:`conversion_report`,
:func:`explain`, the textbook's functions, :data:`ACTIVATIONS` (the fused activations) and the
error classes. Tools and advanced users: :mod:`mcconv.registry` (the kernels), :mod:`mcconv.tiles`
(tile tables), :mod:`mcconv.ops` (launchers without autograd), :mod:`mcconv.epilogue`.
"""
from ._explain import Dispatch, explain, plans
from ._spec import ConvArgumentError, ConvSpec, ConvTypeError
from .epilogue import ACTIVATIONS
from .functional import conv2d
from .nn import Conv2d, ConvertReport, conversion_report, convert
from .seed import corr2d, corr2d_multi_in, corr2d_multi_in_out, corr2d_multi_in_out_1x1

__version__ = "0.2.0"

__all__ = [
    "ACTIVATIONS",
    "Conv2d",
    "ConvArgumentError",
    "ConvSpec",
    "ConvTypeError",
    "ConvertReport",
    "Dispatch",
    "conv2d",
    "conversion_report",
    "convert",
    "corr2d",
    "corr2d_multi_in",
    "corr2d_multi_in_out",
    "corr2d_multi_in_out_1x1",
    "explain",
    "plans",
]
