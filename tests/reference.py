"""Plain-torch references and tolerances shared by the test modules."""
import math

import torch
import torch.nn.functional as F

from mcconv import ACTIVATIONS

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"

# The head of every compile-for-sm_90 subprocess script in the tests (run without the interpreter):
# exit COMPILE_SKIP (77) with a "SKIP: reason" line when this triton cannot compile for NVIDIA GPUs.
COMPILE_SKIP = 77
COMPILE_PREAMBLE = """import json, sys, warnings
warnings.filterwarnings("ignore")
try:
    from triton.backends import backends
    assert "nvidia" in backends, "this triton has no NVIDIA backend"
    from mcconv.tools.compile import tool_path
    for tool in ("ptxas", "cuobjdump", "nvdisasm"):
        tool_path(tool)
except Exception as err:
    print(f"SKIP: {type(err).__name__}: {err}")
    sys.exit(77)
"""
# On the CPU the suite runs through Triton's interpreter, whose bf16 tl.dot mcconv avoids.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])



def reference_conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, activation=None):
    """float64 CPU reference of act(conv2d(x, w) + b) on the very values mcconv received."""
    pad = padding
    if isinstance(padding, (tuple, list)) and len(padding) == 4:  # mcconv's (top, bottom, left, right)
        top, bottom, left, right = padding
        x = F.pad(x, (left, right, top, bottom))
        pad = 0
    y = F.conv2d(x.detach().double().cpu(), w.detach().double().cpu(),
                 None if b is None else b.detach().double().cpu(),
                 stride=stride, padding=pad, dilation=dilation, groups=groups)
    return y if activation is None else ACTIVATIONS[activation].reference(y)


def reference_input_grad(grad_z, w, input_shape, stride=1, padding=0, dilation=1, groups=1):
    """float64 dL/dx of conv2d on the CPU (padding as mcconv takes it, 4-tuples included)."""
    x = torch.zeros(input_shape, dtype=torch.float64, requires_grad=True)
    xin = x
    if isinstance(padding, tuple) and len(padding) == 4:
        top, bottom, left, right = padding
        xin, padding = F.pad(x, (left, right, top, bottom)), 0
    z = F.conv2d(xin, w.double().cpu(), None, stride, padding, dilation, groups)
    z.backward(grad_z.double().cpu())
    return x.grad


def unit_roundoff(dtype: torch.dtype, device: str = DEVICE) -> float:
    """Relative rounding error of one operand or output element in mcconv's arithmetic."""
    if dtype == torch.float32:
        from mcconv._backend import conv_uses_tf32

        # TF32 keeps 10 mantissa bits on the GPU when torch would use it; the interpreter is IEEE.
        return 2.0 ** -11 if device == "cuda" and conv_uses_tf32() else 2.0 ** -23
    return {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}[dtype]


def assert_conv_close(actual, expected, dtype, reduction_length: int, device: str = DEVICE):
    """Tolerance by dtype and reduction length.

    Each output rounds once to `dtype` (relative error u) and sums `reduction_length` products of
    operands rounded to the dot's precision; random-sign rounding errors grow like sqrt(length).
    """
    u = unit_roundoff(dtype, device)
    rtol = 4 * u
    atol = 4 * u * math.sqrt(reduction_length) + 1e-6
    torch.testing.assert_close(actual.detach().double().cpu(), expected.double(), rtol=rtol, atol=atol)


def backward_config(kernel: str, c: int, k: int, kh: int = 3, n: int = 8) -> dict:
    """The tile of backward launch `kernel` of an fp16 channels_last 3x3 (kh) conv2d of c -> k
    channels on n 28 x 28 images, as planned for an H100's 132 SMs (meta tensors: no compute)."""
    import mcconv

    x = torch.empty(n, c, 28, 28, dtype=torch.float16, device="meta").to(memory_format=torch.channels_last)
    w = torch.empty(k, c, kh, kh, dtype=torch.float16, device="meta").to(memory_format=torch.channels_last)
    plans = mcconv.plans(x, w, padding=kh // 2, direction="backward", sm_count=132)
    return next(p.config for p in plans if p.kernel.name == kernel)
