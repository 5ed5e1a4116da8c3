"""mcconv: Triton GPU kernels for multi-channel 2-D convolution.

``import mcconv`` imports neither triton nor the kernels and queries no GPU; the kernels are
loaded on the first call, so ``TRITON_INTERPRET=1`` may be set until then (if nothing else has
imported triton) to run them on the CPU.

Public surface: :func:`conv2d`, :class:`Conv2d`, :func:`conv1d`, :class:`Conv1d` (on the 2-D kernels),
:func:`conv3d`, :class:`Conv3d` (a depth-axis kernel, or a depth im2col over the 2-D kernels),
:func:`conv_transpose2d`, :class:`ConvTranspose2d`, :func:`conv_transpose1d`, :class:`ConvTranspose1d`
(on the input-gradient kernels),
:func:`convert`, :func:`conversion_report`, :func:`fold_batchnorm`,
:func:`explain` (and :func:`explain1d`, :func:`explain3d`, :func:`explain_transpose2d`), the textbook's
functions, :data:`ACTIVATIONS` (the fused activations) and the error classes. Tools and advanced users:
:mod:`mcconv.registry` (the kernels), :mod:`mcconv.tiles`
(tile tables), :mod:`mcconv.ops` (launchers without autograd), :mod:`mcconv.epilogue`, and
:func:`inspect` (``mcconv.tools.inspect.inspect``, imported on first access: compiles a call's
kernels for a named GPU and reads their SASS; needs no GPU, but TRITON_INTERPRET unset).
"""
from ._explain import Dispatch, explain, plans
from ._spec import Conv3dSpec, ConvArgumentError, ConvSpec, ConvTypeError
from .epilogue import ACTIVATIONS
from .conv3d import conv3d, conv3d_views, explain3d
from .functional import conv1d, conv1d_views, conv2d, explain1d
from .fold import FoldReport, fold_batchnorm
from .nn import (Conv1d, Conv2d, Conv3d, ConvertReport, ConvTranspose1d, ConvTranspose2d, conversion_report,
                 convert)
from .transpose import conv_transpose1d, conv_transpose2d, explain_transpose2d
from .seed import corr2d, corr2d_multi_in, corr2d_multi_in_out, corr2d_multi_in_out_1x1

__version__ = "0.2.0"


def __getattr__(name):
    """``mcconv.inspect``: a tool, not the library, so imported on first access (``import mcconv``
    stays free of triton and of the tools)."""
    if name == "inspect":
        from .tools.inspect import inspect

        globals()["inspect"] = inspect
        return inspect
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ACTIVATIONS",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "Conv3dSpec",
    "ConvArgumentError",
    "ConvSpec",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTypeError",
    "ConvertReport",
    "Dispatch",
    "FoldReport",
    "conv1d",
    "conv1d_views",
    "conv2d",
    "conv3d",
    "conv3d_views",
    "conv_transpose1d",
    "conv_transpose2d",
    "conversion_report",
    "convert",
    "corr2d",
    "corr2d_multi_in",
    "corr2d_multi_in_out",
    "corr2d_multi_in_out_1x1",
    "explain",
    "explain1d",
    "explain3d",
    "explain_transpose2d",
    "fold_batchnorm",
    "plans",
]
