"""Where kernels run: Triton's interpreter or a CUDA device. Nothing here queries a GPU at import."""
import functools
import os

import torch

try:  # Triton >= 3.0 decorates kernels as InterpretedFunction when TRITON_INTERPRET=1
    from triton.runtime.interpreter import InterpretedFunction as _InterpretedFunction
except ImportError:  # pragma: no cover - very old Triton
    _InterpretedFunction = ()


@functools.lru_cache(maxsize=None)
def interpreted() -> bool:
    """True when mcconv's kernels were decorated under Triton's interpreter (TRITON_INTERPRET=1).

    Decided by the kernels themselves, because Triton reads the variable when it decorates them:
    setting it after ``mcconv._kernels`` was imported has no effect.
    """
    from mcconv._kernels import conv2d_igemm_kernel

    return isinstance(conv2d_igemm_kernel, _InterpretedFunction)


@functools.lru_cache(maxsize=None)
def device_name(device: torch.device) -> str | None:
    """GPU model as torch reports it, spaces as underscores (the tile tables' file name)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_name(device).replace(" ", "_")


# The flag objects are plain module attributes (no GPU query); resolving them once keeps the
# per-call check to one property read in the default state.
_CUDNN = torch.backends.cudnn
_CONV_FLAGS = getattr(_CUDNN, "conv", None)
_HAS_FP32_PRECISION = _CONV_FLAGS is not None and hasattr(_CONV_FLAGS, "fp32_precision")


def conv_uses_tf32() -> bool:
    """Whether torch would use TF32 for an fp32 convolution right now.

    Follows the newer ``fp32_precision`` settings (conv, then cuDNN, then global; "none" defers
    to the next level) where torch has them, else ``torch.backends.cudnn.allow_tf32``.
    """
    if not _HAS_FP32_PRECISION:
        return bool(_CUDNN.allow_tf32)
    precision = _CONV_FLAGS.fp32_precision
    if precision == "none":
        precision = _CUDNN.fp32_precision
        if precision == "none":
            precision = torch.backends.fp32_precision
    return precision == "tf32"


def autotune_requested() -> bool:
    """MCCONV_AUTOTUNE=1 asks for Triton's autotuner over the candidate list."""
    return os.environ.get("MCCONV_AUTOTUNE", "0") == "1"
