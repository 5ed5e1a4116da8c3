"""Device formulas of the fused epilogue's activations, each with its derivative.

A kernel receives one of these functions itself as a constexpr (``ACTIVATION``, or
``ACTIVATION_GRAD`` in the backward), so no kernel lists the activations. The host-side
definition of each (name, torch reference, which tensor the derivative reads) is in
``mcconv/epilogue.py``; an activation named ``f`` there has ``f`` and ``f_grad`` here.

Every formula propagates NaN as torch does: comparisons are written so that a NaN takes the
branch that keeps it (``x < 0`` is false for NaN), never ``tl.maximum``, which drops NaN.
Derivatives return fp32.
"""
import triton
import triton.language as tl


@triton.jit
def relu(x):
    return tl.where(x < 0.0, 0.0, x)


@triton.jit
def relu_grad(y):
    """From the output y (y > 0 exactly where z > 0). As torch's threshold_backward: 0 where
    y <= 0, else 1, so a NaN output passes the gradient through."""
    return tl.where(y.to(tl.float32) <= 0.0, 0.0, 1.0)


@triton.jit
def silu(x):
    return x * tl.sigmoid(x)


@triton.jit
def silu_grad(z):
    z = z.to(tl.float32)
    s = tl.sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


@triton.jit
def gelu(x):
    # erf form, torch.nn.functional.gelu's default (approximate="none").
    return 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))


@triton.jit
def gelu_grad(z):
    # d/dz [z * Phi(z)] = Phi(z) + z * phi(z), Phi/phi the standard normal cdf/pdf.
    z = z.to(tl.float32)
    cdf = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476))
    pdf = 0.3989422804014327 * tl.exp(-0.5 * z * z)
    return cdf + z * pdf


@triton.jit
def hardswish(x):
    # x * relu6(x + 3) / 6 (MobileNetV3), clamped with comparisons that keep NaN.
    r = tl.where(x + 3.0 < 0.0, 0.0, x + 3.0)
    r = tl.where(r > 6.0, 6.0, r)
    return x * r / 6.0


@triton.jit
def hardswish_grad(z):
    # As torch's CUDA hardswish_backward: 0 up to -3, z/3 + 1/2 below 3, else (3 on, and NaN) 1.
    z = z.to(tl.float32)
    return tl.where(z <= -3.0, 0.0, tl.where(z < 3.0, z / 3.0 + 0.5, 1.0))
