"""Argument checking and normalisation, shared by the forward and backward launchers.

Every error names the argument, what was expected and what was given; nothing is computed
for bad input.
"""
from dataclasses import dataclass

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
ACTIVATIONS = (None, "relu", "silu", "gelu")


@dataclass(frozen=True)
class ConvGeometry:
    """A convolution's sizes after normalisation (4-D, NCHW logical order)."""

    n: int
    c: int
    h: int
    w: int
    k: int
    kh: int
    kw: int
    groups: int
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, bottom, left, right
    dilation: tuple[int, int]
    p: int
    q: int

    @property
    def c_per_group(self) -> int:
        return self.c // self.groups

    @property
    def k_per_group(self) -> int:
        return self.k // self.groups

    @property
    def is_1x1_gemm(self) -> bool:
        """1x1 kernel, stride 1, no padding: a plain GEMM over pixels."""
        return (self.kh, self.kw, self.stride, self.padding) == (1, 1, (1, 1), (0, 0, 0, 0))

    @property
    def is_depthwise(self) -> bool:
        """One input channel per group (groups == in-channels), any channel multiplier."""
        return self.groups == self.c and self.groups > 1

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.k, self.p, self.q)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def pair(name: str, value) -> tuple[int, int]:
    """An int or a pair of ints, as torch.nn.functional.conv2d takes them."""
    if _is_int(value):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        return (value[0], value[1])
    raise ValueError(f"{name}: expected an int or a pair of ints, got {value!r}")


def _check_optional_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or None, got {type(t).__name__}")


def _check_like_input(name: str, t: torch.Tensor, input: torch.Tensor) -> None:
    """Every tensor argument runs in the input's dtype on the input's device."""
    if t.dtype != input.dtype:
        raise TypeError(f"{name}: expected the input's dtype {input.dtype}, got {t.dtype}")
    if t.device != input.device:
        raise TypeError(f"{name}: expected the input's device {input.device}, got {t.device}")


def check_tensors(input, weight, bias) -> None:
    """Types, ranks, dtypes and devices of the tensor arguments."""
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if input.dim() not in (3, 4):
        raise ValueError(f"input: expected a 3-D (C, H, W) or 4-D (N, C, H, W) tensor, "
                         f"got {input.dim()}-D with shape {tuple(input.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"weight: expected a 4-D (out_channels, in_channels/groups, kH, kW) tensor, "
                         f"got {weight.dim()}-D with shape {tuple(weight.shape)}")
    if input.dtype not in FLOAT_DTYPES:
        raise TypeError(f"input: expected dtype float16, bfloat16 or float32, got {input.dtype}")
    _check_like_input("weight", weight, input)
    if bias is not None:
        _check_optional_tensor("bias", bias)
        _check_like_input("bias", bias, input)
        if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias: expected a 1-D tensor of {weight.shape[0]} elements (out_channels), "
                             f"got shape {tuple(bias.shape)}")


def _padding(padding, kernel, dilation, stride) -> tuple[int, int, int, int]:
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding: 'same' needs stride 1, got stride {stride}")
            # As torch: total d*(k-1), the odd pixel (even kernels) on the bottom/right side.
            total_h = dilation[0] * (kernel[0] - 1)
            total_w = dilation[1] * (kernel[1] - 1)
            return (total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2)
        raise ValueError(f"padding: expected an int, a pair, a 4-tuple, 'same' or 'valid', got {padding!r}")
    if isinstance(padding, (tuple, list)) and len(padding) == 4 and all(_is_int(v) for v in padding):
        pads = tuple(padding)  # (top, bottom, left, right): an mcconv extension for asymmetric padding
    else:
        ph, pw = pair("padding", padding)
        pads = (ph, ph, pw, pw)
    if min(pads) < 0:
        raise ValueError(f"padding: expected non-negative values, got {padding!r}")
    return pads


def output_size(h, w, kh, kw, padding, stride, dilation) -> tuple:
    """Output height and width; ``padding`` is (top, bottom, left, right)."""
    return ((h + padding[0] + padding[1] - dilation[0] * (kh - 1) - 1) // stride[0] + 1,
            (w + padding[2] + padding[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1)


def conv_geometry(input_shape, weight_shape, stride, padding, dilation, groups) -> ConvGeometry:
    """Check the non-tensor arguments against the shapes and derive the output size."""
    if len(input_shape) == 3:
        input_shape = (1, *input_shape)
    n, c, h, w = input_shape
    k, c_per_group, kh, kw = weight_shape
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"groups: expected a positive int, got {groups!r}")
    if c % groups:
        raise ValueError(f"groups: expected a divisor of in_channels={c}, got {groups}")
    if k % groups:
        raise ValueError(f"groups: expected a divisor of out_channels={k} (weight.shape[0]), got {groups}")
    if c_per_group * groups != c:
        raise ValueError(f"weight: expected shape[1] == in_channels / groups = {c} / {groups} = {c // groups}, "
                         f"got weight of shape {tuple(weight_shape)}")
    if min(kh, kw) < 1:
        raise ValueError(f"weight: expected a kernel of at least 1x1, got {kh}x{kw}")
    stride = pair("stride", stride)
    dilation = pair("dilation", dilation)
    if min(stride) < 1:
        raise ValueError(f"stride: expected values >= 1, got {stride}")
    if min(dilation) < 1:
        raise ValueError(f"dilation: expected values >= 1, got {dilation}")
    pads = _padding(padding, (kh, kw), dilation, stride)
    p, q = output_size(h, w, kh, kw, pads, stride, dilation)
    if p < 1 or q < 1:
        raise ValueError(f"input: the output would be {p}x{q} (below 1x1) for a {h}x{w} input, "
                         f"{kh}x{kw} kernel, padding {pads} (top, bottom, left, right), "
                         f"stride {stride}, dilation {dilation}")
    return ConvGeometry(n, c, h, w, k, kh, kw, groups, stride, pads, dilation, p, q)


def check_residual(residual, input, output_shape) -> None:
    """The fused residual: a tensor of exactly the output's shape (no broadcasting), the input's
    dtype and device; any strides. ``input`` has passed :func:`check_tensors`."""
    _check_optional_tensor("residual", residual)
    _check_like_input("residual", residual, input)
    if tuple(residual.shape) != tuple(output_shape):
        raise ValueError(f"residual: expected the output's shape {tuple(output_shape)} (no broadcasting), "
                         f"got {tuple(residual.shape)}")


def check_activation(activation) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of None, 'relu', 'silu', 'gelu', got {activation!r}")
