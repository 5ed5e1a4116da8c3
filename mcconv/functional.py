"""The public convolution function."""
from . import _autograd


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None,
           residual=None):
    """2-D convolution with the semantics of ``torch.nn.functional.conv2d``, plus a fused residual
    add and activation.

    Args:
        input: ``(N, C, H, W)`` or unbatched ``(C, H, W)``; float16, bfloat16 or float32; CUDA
            (or CPU under ``TRITON_INTERPRET=1``). Any strides. The output is channels_last when
            the input or the weight is (torch's rule for CUDA convolutions), else contiguous.
        weight: ``(K, C / groups, kH, kW)``, same dtype and device.
        bias: optional ``(K,)``.
        stride, dilation: int or pair, >= 1.
        padding: int, pair, ``(top, bottom, left, right)``, ``"valid"`` or ``"same"`` (stride 1;
            the extra pixel of even kernels goes bottom/right, as in torch).
        groups: divides both C and K.
        activation: None or a name in :data:`mcconv.ACTIVATIONS` (``"relu"``, ``"silu"``, ``"gelu"``
            (erf form), ...), applied after the bias (and residual) in the kernel's epilogue.
        residual: optional tensor of exactly the output's shape (no broadcasting), same dtype and
            device, any strides (contiguous, channels_last, a view), added in fp32 in the
            epilogue before the activation -- a ResNet block's ``act(conv(x) + b + shortcut)``
            without a separate add kernel.

    Returns:
        ``act(conv2d(input, weight) + bias + residual)`` in the input's dtype, accumulated in fp32.

    Raises:
        mcconv.ConvArgumentError (a ValueError and a RuntimeError) or mcconv.ConvTypeError (a
        TypeError and a RuntimeError) for anything torch's conv2d refuses, naming the argument.

    Differentiable in input, weight, bias and residual (Triton backward kernels), traceable by
    ``torch.compile(fullgraph=True)`` and autocast-aware: after describing and validating the
    call it calls the custom op ``torch.ops.mcconv.conv2d`` (``conv2d_preact`` when the
    activation's derivative needs z); eager inference without autograd skips the op's dispatch
    and launches the kernel directly.
    """
    return _autograd.conv2d(input, weight, bias, stride, padding, dilation, groups, activation, residual)
