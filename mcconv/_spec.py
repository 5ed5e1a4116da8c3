"""One description of a convolution call: arguments normalised and validated once.

:class:`ConvSpec` is what every part of mcconv starts from -- the forward and backward plans,
``explain``, the custom ops' fakes and the tools: sizes, stride, padding (top, bottom, left,
right), dilation, groups, dtype, the epilogue (bias, residual, activation) and the output's
memory format. It is built by :func:`describe` from a call's tensors and options, or by
:meth:`ConvSpec.from_shapes` from shapes alone, and raises for anything torch would refuse.

Errors are catchable both as mcconv documents them and as torch raises them: argument errors
are :class:`ConvArgumentError` (a ``ValueError`` and a ``RuntimeError``), wrong types, dtypes and
devices :class:`ConvTypeError` (a ``TypeError`` and a ``RuntimeError``). Each message names the
argument, what was expected and what came.
"""
import operator
from dataclasses import dataclass

import torch

from .epilogue import Activation, activation as _activation

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class ConvArgumentError(ValueError, RuntimeError):
    """A bad argument value or shape. A ValueError, and a RuntimeError as torch raises for the same."""


class ConvTypeError(TypeError, RuntimeError):
    """A wrong type, dtype or device. A TypeError, and a RuntimeError as torch raises for dtypes."""


def check_groups(c: int, weight_shape: tuple, groups) -> int:
    """``groups`` checked against the input's ``c`` channels and the weight ``(K, C/groups, ...)``
    (any number of kernel axes: conv1d, conv2d and conv3d share it); returns it as an int."""
    k, c_per_group = weight_shape[:2]
    groups = _positive_int("groups", groups)
    if k < 1:
        raise ConvArgumentError(f"weight: expected at least one output channel (dimension 0), "
                                f"got shape {weight_shape}")
    if c % groups:
        raise ConvArgumentError(f"groups: expected a divisor of in_channels={c}, got {groups}")
    if k % groups:
        raise ConvArgumentError(f"groups: expected a divisor of out_channels={k} (weight.shape[0]), got {groups}")
    if c_per_group * groups != c:
        raise ConvArgumentError(f"weight: expected shape[1] == in_channels / groups = {c} / {groups}, "
                                f"got weight of shape {weight_shape} for an input of {c} channels")
    return groups


@dataclass(frozen=True)
class ConvSpec:
    """A 2-D convolution after normalisation: 4-D NCHW logical sizes and every option.

    Unbatched (3-D) calls are described as a batch of one (``unbatched`` records it); the
    padding is always ``(top, bottom, left, right)``.
    """

    n: int
    c: int
    h: int
    w: int
    k: int
    kh: int
    kw: int
    groups: int
    stride: tuple
    padding: tuple  # (top, bottom, left, right)
    dilation: tuple
    p: int
    q: int
    dtype: torch.dtype | None = None
    unbatched: bool = False
    has_bias: bool = False
    has_residual: bool = False
    activation: Activation | None = None
    channels_last: bool = False  # the output's memory format (torch's rule, see output_channels_last)
    tf32: bool = False  # fp32 dots in TF32 (torch's convolution setting at the call)

    # ------------------------------------------------------------------------ derived sizes
    @property
    def c_per_group(self) -> int:
        return self.c // self.groups

    @property
    def k_per_group(self) -> int:
        return self.k // self.groups

    @property
    def taps(self) -> int:
        return self.kh * self.kw

    @property
    def output_channels(self) -> int:
        """K, except 0 for an input without channels: torch returns (N, 0, P, Q) then."""
        return self.k if self.c else 0

    @property
    def is_1x1_gemm(self) -> bool:
        """1x1 kernel, stride 1, no padding: a plain GEMM over pixels."""
        return (self.kh, self.kw, self.stride, self.padding) == (1, 1, (1, 1), (0, 0, 0, 0))

    @property
    def is_depthwise(self) -> bool:
        """One input channel per group (groups == in-channels), any channel multiplier."""
        return self.groups == self.c and self.groups > 1

    @property
    def input_shape(self) -> tuple:
        """The input's shape as the caller gave it (3-D when unbatched)."""
        return (self.c, self.h, self.w) if self.unbatched else (self.n, self.c, self.h, self.w)

    @property
    def weight_shape(self) -> tuple:
        return (self.k, self.c_per_group, self.kh, self.kw)

    @property
    def output_shape(self) -> tuple:
        """The output's shape as the caller gets it (3-D when unbatched)."""
        shape = (self.output_channels, self.p, self.q)
        return shape if self.unbatched else (self.n, *shape)

    @property
    def flops(self) -> int:
        """2*N*K*P*Q*(C/groups)*KH*KW: multiplications and additions counted separately."""
        return 2 * self.n * self.output_channels * self.p * self.q * self.c_per_group * self.taps

    @property
    def dot_precision(self) -> str:
        """tl.dot's input precision: "ieee" for fp32 without TF32, else "tf32" (ignored for 16-bit)."""
        return "ieee" if self.dtype == torch.float32 and not self.tf32 else "tf32"

    @property
    def dtype_key(self) -> str:
        """The tile tables' dtype: "tf32" for fp32 computed in TF32, else the dtype's name."""
        return "tf32" if self.tf32 else str(self.dtype).removeprefix("torch.")

    @classmethod
    def from_shapes(cls, input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1, **options):
        """The spec of a convolution given by shapes (no tensors); ``options`` set the other fields."""
        input_shape = tuple(input_shape)
        weight_shape = tuple(weight_shape)
        _check_rank("input", input_shape, (3, 4), "a 3-D (C, H, W) or 4-D (N, C, H, W)")
        _check_rank("weight", weight_shape, (4,), "a 4-D (out_channels, in_channels/groups, kH, kW)")
        unbatched = len(input_shape) == 3
        n, c, h, w = (1, *input_shape) if unbatched else input_shape
        k, c_per_group, kh, kw = weight_shape
        groups = check_groups(c, weight_shape, groups)
        if min(kh, kw) < 1:
            raise ConvArgumentError(f"weight: expected a kernel of at least 1x1, got {kh}x{kw}")
        if min(h, w) < 1 and n > 0 and c > 0:  # torch's rule: an empty image only in an empty batch
            raise ConvArgumentError(f"input: expected a non-empty image (only the batch or the channels may be 0), "
                                    f"got shape {input_shape}")
        stride = int_pair("stride", stride)
        dilation = int_pair("dilation", dilation)
        padding = padding_4(padding, (kh, kw), stride, dilation)
        span_h = dilation[0] * (kh - 1) + 1
        span_w = dilation[1] * (kw - 1) + 1
        padded = (h + padding[0] + padding[1], w + padding[2] + padding[3])
        if padded[0] < span_h or padded[1] < span_w:
            raise ConvArgumentError(f"input: the padded input is {padded[0]}x{padded[1]} but the (dilated) kernel "
                                    f"spans {span_h}x{span_w}: the kernel can't be larger than the padded input "
                                    f"(input {input_shape}, padding {padding} (top, bottom, left, right))")
        p = (padded[0] - span_h) // stride[0] + 1
        q = (padded[1] - span_w) // stride[1] + 1
        return cls(n, c, h, w, k, kh, kw, groups, stride, padding, dilation, p, q, unbatched=unbatched, **options)


@dataclass(frozen=True)
class Conv3dSpec:
    """A 3-D convolution after :mod:`mcconv.conv3d`'s validation: 5-D NCDHW logical sizes and every
    option (what the depth-axis kernel's plan starts from; unbatched calls as a batch of one).
    ``stride`` and ``dilation`` are (depth, height, width), ``padding`` (front, back, top, bottom,
    left, right); ``od``, ``p``, ``q`` are the output's depth, height and width."""

    n: int
    c: int
    d: int
    h: int
    w: int
    k: int
    kd: int
    kh: int
    kw: int
    groups: int
    stride: tuple
    padding: tuple
    dilation: tuple
    od: int
    p: int
    q: int
    dtype: torch.dtype | None = None
    unbatched: bool = False
    has_bias: bool = False
    has_residual: bool = False
    activation: Activation | None = None
    channels_last: bool = False  # channels_last_3d output (torch's rule, as for 2-D)
    tf32: bool = False

    c_per_group = ConvSpec.c_per_group
    k_per_group = ConvSpec.k_per_group
    dot_precision = ConvSpec.dot_precision
    dtype_key = ConvSpec.dtype_key

    @property
    def taps(self) -> int:
        return self.kd * self.kh * self.kw

    @property
    def pixels(self) -> int:
        """Output voxels, N * OD * P * Q: the implicit GEMM's rows."""
        return self.n * self.od * self.p * self.q

    @property
    def weight_shape(self) -> tuple:
        return (self.k, self.c_per_group, self.kd, self.kh, self.kw)

    @property
    def output_shape(self) -> tuple:
        """The output's shape as the caller gets it (4-D when unbatched)."""
        shape = (self.k if self.c else 0, self.od, self.p, self.q)
        return shape if self.unbatched else (self.n, *shape)

    @property
    def flops(self) -> int:
        return 2 * self.pixels * (self.k if self.c else 0) * self.c_per_group * self.taps


# ---------------------------------------------------------------------------------- options

def _is_int(value) -> bool:
    """An integer as torch's argument parser takes one: int, a numpy integer, a 0-dim integer
    tensor (anything with __index__), never a bool or a float."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not value.is_floating_point() and not value.is_complex() \
            and value.dtype != torch.bool
    if isinstance(value, float):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _positive_int(name: str, value) -> int:
    if not _is_int(value):
        raise ConvTypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    value = operator.index(value)
    if value < 1:
        raise ConvArgumentError(f"{name}: expected a positive int, got {value}")
    return value


def _ints(name: str, value, lengths) -> tuple:
    """An int, or a sequence (tuple, list, torch.Size) of ints of one of ``lengths``."""
    if _is_int(value):
        return (operator.index(value),)
    if isinstance(value, (tuple, list)):
        if not all(_is_int(v) for v in value):
            raise ConvTypeError(f"{name}: expected ints, got {value!r}")
        if len(value) not in lengths:
            raise ConvArgumentError(f"{name}: expected an int or {' or '.join(map(str, lengths))} ints, got {value!r}")
        return tuple(operator.index(v) for v in value)
    raise ConvTypeError(f"{name}: expected an int or a tuple of ints, got {type(value).__name__} {value!r}")


def int_pair(name: str, value) -> tuple:
    """stride or dilation: an int, or 1 or 2 ints, each >= 1, as (height, width)."""
    values = _ints(name, value, (1, 2))
    if min(values) < 1:
        raise ConvArgumentError(f"{name}: expected values >= 1, got {value!r}")
    return values * 2 if len(values) == 1 else values


def padding_4(padding, kernel, stride, dilation) -> tuple:
    """Padding as (top, bottom, left, right): an int, 1 or 2 ints, a 4-tuple, "valid" or "same"."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ConvArgumentError(f"padding: 'same' needs stride 1 (as in torch), got stride {stride}")
            # As torch: total d*(k-1), the odd pixel (even kernels) on the bottom/right side.
            total_h = dilation[0] * (kernel[0] - 1)
            total_w = dilation[1] * (kernel[1] - 1)
            return (total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2)
        raise ConvArgumentError(f"padding: expected an int, a pair, a 4-tuple, 'same' or 'valid', got {padding!r}")
    values = _ints("padding", padding, (1, 2, 4))
    if min(values) < 0:
        raise ConvArgumentError(f"padding: expected non-negative values, got {padding!r}")
    if len(values) == 4:  # (top, bottom, left, right): an mcconv extension for asymmetric padding
        return values
    ph, pw = values * 2 if len(values) == 1 else values
    return (ph, ph, pw, pw)


def _check_rank(name, shape, ranks, what) -> None:
    if len(shape) not in ranks:
        raise ConvArgumentError(f"{name}: expected {what} tensor, got {len(shape)}-D with shape {tuple(shape)}")


# ---------------------------------------------------------------------------------- tensors

def check_tensor(name: str, t, ranks=None, what: str = "") -> None:
    """A torch.Tensor of a float dtype mcconv runs (and of one of ``ranks``, when given)."""
    if not isinstance(t, torch.Tensor):
        raise ConvTypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if ranks is not None:
        _check_rank(name, t.shape, ranks, what or "a " + " or ".join(f"{r}-D" for r in ranks))
    if t.dtype not in FLOAT_DTYPES:
        raise ConvTypeError(f"{name}: expected dtype float16, bfloat16 or float32, got {t.dtype}")


def check_types(input, weight, bias=None, residual=None) -> None:
    """``input`` and ``weight`` are tensors, ``bias`` and ``residual`` tensors or None: what the
    entry points of conv1d and conv3d check before they read any shape (messages as check_tensor's
    and check_like's)."""
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise ConvTypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    for name, t in (("residual", residual), ("bias", bias)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise ConvTypeError(f"{name}: expected a torch.Tensor or None, got {type(t).__name__}")


def check_like(name: str, t, ref_name: str, ref: torch.Tensor) -> None:
    """``t`` is a tensor of ``ref``'s dtype on ``ref``'s device (tl.dot takes one dtype)."""
    if not isinstance(t, torch.Tensor):
        raise ConvTypeError(f"{name}: expected a torch.Tensor or None, got {type(t).__name__}")
    if t.dtype != ref.dtype:
        raise ConvTypeError(f"{name}: expected {ref_name}'s dtype {ref.dtype}, got {t.dtype}")
    if t.device != ref.device:
        raise ConvTypeError(f"{name}: expected {ref_name}'s device {ref.device}, got {t.device}")


def channels_last_like(shape, strides) -> bool:
    """torch's ``is_channels_last_strides_2d``: strides ordered C < W < H < N, ambiguous cases NCHW.

    This is what ``Tensor.suggest_memory_format()`` reads, so it also accepts channels_last
    tensors sliced along H or W, not only exactly channels_last-contiguous ones.
    """
    if len(shape) != 4 or strides[1] == 0:
        return False
    smallest = 0
    for d in (1, 3, 2, 0):
        if shape[d] == 0 or strides[d] < smallest:
            return False
        if d == 0 and smallest == strides[1]:
            return False  # N111 tensors and the like: ambiguous, NCHW
        smallest = strides[d] * (shape[d] if shape[d] > 1 else 1)
    return True


def _batched_strides(shape, strides) -> tuple:
    """A 3-D tensor's strides after torch's unsqueeze(0): the new batch stride is size[0] * stride[0]."""
    return (shape[0] * strides[0], *strides) if len(shape) == 3 else tuple(strides)


def output_channels_last(input_shape, input_strides, weight_shape, weight_strides) -> bool:
    """torch's rule for a CUDA convolution's output format (cuDNN's suggested format): channels_last
    when the input or the weight suggests channels_last; unbatched inputs are read as torch's
    unsqueeze(0) lays them out."""
    x_shape = (1, *input_shape) if len(input_shape) == 3 else tuple(input_shape)
    return (channels_last_like(x_shape, _batched_strides(input_shape, input_strides))
            or channels_last_like(tuple(weight_shape), tuple(weight_strides)))


def describe(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None, residual=None,
             *, tf32: bool = False) -> ConvSpec:
    """Validate a call of ``mcconv.conv2d`` and describe it; raises for anything torch would refuse."""
    check_tensor("input", input, (3, 4), "a 3-D (C, H, W) or 4-D (N, C, H, W)")
    if not isinstance(weight, torch.Tensor):
        raise ConvTypeError(f"weight: expected a torch.Tensor, got {type(weight).__name__}")
    check_like("weight", weight, "input", input)
    act = _activation(activation)
    spec = ConvSpec.from_shapes(
        input.shape, weight.shape, stride, padding, dilation, groups, dtype=input.dtype, has_bias=bias is not None,
        has_residual=residual is not None, activation=act, tf32=tf32 and input.dtype == torch.float32,
        channels_last=output_channels_last(input.shape, input.stride(), weight.shape, weight.stride()))
    if bias is not None:
        check_like("bias", bias, "input", input)
        if bias.dim() != 1 or bias.shape[0] != spec.k:
            raise ConvArgumentError(f"bias: expected a 1-D tensor of {spec.k} elements (out_channels), "
                                    f"got shape {tuple(bias.shape)}")
    if residual is not None:
        check_like("residual", residual, "input", input)
        if tuple(residual.shape) != spec.output_shape:
            raise ConvArgumentError(f"residual: expected the output's shape {spec.output_shape} (no broadcasting), "
                                    f"got {tuple(residual.shape)}")
    return spec
