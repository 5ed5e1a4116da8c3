"""conv3d: the depth-axis kernel (kernels/conv3d_fwd.py, mcconv/ops/forward3d.py) for layers of
16 or more input channels per group, else a depth im2col onto the 2-D kernels.

The depth im2col (also the depth kernel's gradient): the input, padded along depth, is
gathered into ``(N * D_out, C * kD, H, W)`` -- for each output depth ``d_o`` the ``kD`` input
depth slices it reads, channel index ``c * kD + kd`` -- and the weight ``(K, C/g, kD, kH, kW)``
is viewed as ``(K, C/g * kD, kH, kW)`` with the same channel order (group g's channels stay
contiguous), so that one 2-D convolution over height and width with ``groups`` groups computes
every output depth at once. The gather is a copy of ``kD`` times the (depth-padded, depth-strided)
input; the output ``(N * D_out, K, P, Q)`` is laid back out as ``(N, K, D_out, P, Q)``.

Arguments are validated here, in 3-D terms, before anything is copied, so that errors name what
the caller gave; what conv2d checks afterwards it words without shapes.
"""
import operator
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _autograd, _backend
from ._plan import follows_channels_last, option_key, tensor_key
from ._spec import (Conv3dSpec, ConvArgumentError, ConvTypeError, _is_int, check_groups, check_like, check_tensor,
                    check_types)
from .epilogue import activation as _activation
from .ops import forward3d


# --------------------------------------------------------------------------- argument normalisation

def _ints_3d(name: str, value, lengths, what: str) -> tuple:
    if _is_int(value):
        return (operator.index(value),)
    if isinstance(value, (tuple, list)):  # torch.Size is a tuple
        if not all(_is_int(v) for v in value):
            raise ConvTypeError(f"{name}: expected {what} of ints, got {value!r}")
        if len(value) not in lengths:
            raise ConvArgumentError(f"{name}: expected {what} of ints (conv3d has three spatial axes: depth, "
                                    f"height, width), got {value!r}")
        return tuple(operator.index(v) for v in value)
    raise ConvTypeError(f"{name}: expected {what} of ints, got {type(value).__name__} {value!r}")


def _triple(name: str, value) -> tuple:
    """stride or dilation of conv3d: an int, a 1-tuple or a (depth, height, width) triple, each >= 1."""
    values = _ints_3d(name, value, (1, 3), "an int or a (depth, height, width) triple")
    if min(values) < 1:
        raise ConvArgumentError(f"{name}: expected values >= 1, got {value!r}")
    return values * 3 if len(values) == 1 else values


def _padding_3d(padding, kernel, stride, dilation) -> tuple:
    """conv3d's padding as (front, back, top, bottom, left, right): an int, a 1-tuple, a
    (depth, height, width) triple, "valid" or "same"."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * 6
        if padding == "same":
            if stride != (1, 1, 1):
                raise ConvArgumentError(f"padding: 'same' needs stride 1 (as in torch), got stride {stride}")
            pads = ()
            for k, d in zip(kernel, dilation):  # as torch: the odd element (even kernels) at the far side
                total = d * (k - 1)
                pads += (total // 2, total - total // 2)
            return pads
        raise ConvArgumentError(f"padding: expected an int, a (depth, height, width) triple, 'same' or 'valid', "
                                f"got {padding!r}")
    values = _ints_3d("padding", padding, (1, 3), "an int or a (depth, height, width) triple")
    if min(values) < 0:
        raise ConvArgumentError(f"padding: expected non-negative values, got {padding!r}")
    pd, ph, pw = values * 3 if len(values) == 1 else values
    return (pd, pd, ph, ph, pw, pw)


def _check_3d(input_shape, weight_shape, residual_shape, stride, padding, dilation, groups) -> tuple:
    """Validate a conv3d call's shapes and options in 3-D terms; returns ``(stride, padding
    (front, back, top, bottom, left, right), dilation, groups, (D_out, P, Q))``."""
    unbatched = len(input_shape) == 4
    n, c, d, h, w = (1, *input_shape) if unbatched else input_shape
    k, c_per_group, kd, kh, kw = weight_shape
    groups = check_groups(c, weight_shape, groups)
    if min(kd, kh, kw) < 1:
        raise ConvArgumentError(f"weight: expected a kernel of at least 1x1x1, got {kd}x{kh}x{kw} "
                                f"(shape {weight_shape})")
    if min(d, h, w) < 1 and n > 0 and c > 0:  # torch's rule: an empty volume only in an empty batch
        raise ConvArgumentError(f"input: expected a non-empty volume (only the batch or the channels may be 0), "
                                f"got shape {input_shape}")
    stride = _triple("stride", stride)
    dilation = _triple("dilation", dilation)
    pads = _padding_3d(padding, (kd, kh, kw), stride, dilation)
    spans = tuple(di * (ki - 1) + 1 for di, ki in zip(dilation, (kd, kh, kw)))
    padded = tuple(size + pads[2 * i] + pads[2 * i + 1] for i, size in enumerate((d, h, w)))
    if any(p < s for p, s in zip(padded, spans)):
        raise ConvArgumentError(f"input: the padded input is {'x'.join(map(str, padded))} but the (dilated) kernel "
                                f"spans {'x'.join(map(str, spans))}: the kernel can't be larger than the padded "
                                f"input (input {input_shape}, padding {pads} (front, back, top, bottom, left, "
                                f"right), dilation {dilation})")
    out_spatial = tuple((p - s) // st + 1 for p, s, st in zip(padded, spans, stride))
    if residual_shape is not None:
        out = (k if c else 0, *out_spatial)
        out = out if unbatched else (n, *out)
        if residual_shape != out:
            raise ConvArgumentError(f"residual: expected the output's shape {out} (no broadcasting), "
                                    f"got {residual_shape}")
    return stride, pads, dilation, groups, out_spatial


_checked: dict = {}  # (shapes, option keys) -> normalised options: validated once per kind of call
_MAX_CHECKED = 4096  # then cleared: bounded, whatever the caller's shapes


def _options(input_shape, weight_shape, residual_shape, stride, padding, dilation, groups) -> tuple:
    """:func:`_check_3d`, cached as conv1d's check is (keys tell 1, 1.0 and True apart); not
    under ``torch.compile``, which traces it once."""
    args = (input_shape, weight_shape, residual_shape, stride, padding, dilation, groups)
    if torch.compiler.is_compiling():
        return _check_3d(*args)
    key = (input_shape, weight_shape, residual_shape, option_key(stride), option_key(padding),
           option_key(dilation), option_key(groups))
    try:
        return _checked[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable option: validate without caching
        return _check_3d(*args)
    options = _check_3d(*args)
    if len(_checked) >= _MAX_CHECKED:
        _checked.clear()
    _checked[key] = options
    return options


def _channels_last_3d_like(shape, strides) -> bool:
    """torch's ``is_channels_last_strides_3d`` (what ``suggest_memory_format`` reads): strides
    ordered C < W < H < D < N, ambiguous cases contiguous."""
    if len(shape) != 5 or strides[1] == 0:
        return False
    smallest = 0
    for d in (1, 4, 3, 2, 0):
        if shape[d] == 0 or strides[d] < smallest:
            return False
        if d == 0 and smallest == strides[1]:
            return False
        smallest = strides[d] * (shape[d] if shape[d] > 1 else 1)
    return True


def _new_strides(shape, channels_last: bool) -> tuple:
    """The strides of ``torch.empty(shape)`` (5-D), channels_last_3d or contiguous."""
    if channels_last:
        n, c, d, h, w = shape
        return (d * h * w * c, 1, h * w * c, w * c, c)
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


# --------------------------------------------------------------------------- validation, once

def _validated(input, weight, bias, stride, padding, dilation, groups, residual) -> tuple:
    """A conv3d call checked in 3-D terms (errors name conv3d's arguments as given): ``(input,
    weight, bias, residual, (stride, pads, dilation, groups, (D_out, P, Q)))``, the tensors cast
    to the autocast dtype first under autocast, as ``aten::conv3d`` does."""
    check_types(input, weight, bias, residual)
    if input.dim() not in (4, 5):
        raise ConvArgumentError(f"input: expected a 4-D (C, D, H, W) or 5-D (N, C, D, H, W) tensor, got "
                                f"{input.dim()}-D with shape {tuple(input.shape)}")
    if weight.dim() != 5:
        raise ConvArgumentError(f"weight: expected a 5-D (out_channels, in_channels/groups, kD, kH, kW) tensor, "
                                f"got {weight.dim()}-D with shape {tuple(weight.shape)}")
    cast_to = _autograd._autocast_dtype(input.device.type)
    if cast_to is not None:  # validate (and gather) in the dtype the kernel will run in
        device_type = input.device.type
        input = _autograd._autocast_cast(input, device_type, cast_to)
        weight = _autograd._autocast_cast(weight, device_type, cast_to)
        bias = None if bias is None else _autograd._autocast_cast(bias, device_type, cast_to)
        residual = None if residual is None else _autograd._autocast_cast(residual, device_type, cast_to)
    check_tensor("input", input)
    check_like("weight", weight, "input", input)
    options = _options(tuple(input.shape), tuple(weight.shape), None if residual is None else tuple(residual.shape),
                       stride, padding, dilation, groups)
    k = weight.shape[0]
    if bias is not None:
        check_like("bias", bias, "input", input)
        if bias.dim() != 1 or bias.shape[0] != k:
            raise ConvArgumentError(f"bias: expected a 1-D tensor of {k} elements (out_channels), "
                                    f"got shape {tuple(bias.shape)}")
    if residual is not None:
        check_like("residual", residual, "input", input)
    return input, weight, bias, residual, options


def _output_channels_last(input, weight) -> bool:
    """torch's rule for the output's format (conv2d's, in 3-D): channels_last_3d when the input (an
    unbatched one as torch's unsqueeze(0) lays it out) or the weight suggests channels_last_3d.
    (CPU torch 2.13 makes an exception for float32 batches of one, which come out contiguous.)"""
    x = input.unsqueeze(0) if input.dim() == 4 else input
    return (_channels_last_3d_like(tuple(x.shape), x.stride())
            or _channels_last_3d_like(tuple(weight.shape), weight.stride()))


def spec_from_shapes(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1, **options) -> Conv3dSpec:
    """The :class:`Conv3dSpec` of a conv3d call given by shapes (no tensors), validated as
    :func:`conv3d` validates it; ``options`` set the other fields (dtype, activation, ...)."""
    input_shape, weight_shape = tuple(input_shape), tuple(weight_shape)
    if len(input_shape) not in (4, 5) or len(weight_shape) != 5:
        raise ConvArgumentError(f"input, weight: expected (N, C, D, H, W) or (C, D, H, W) and (K, C/g, kD, kH, kW) "
                                f"shapes, got {input_shape} and {weight_shape}")
    stride, pads, dilation, groups, (d_out, p, q) = _options(input_shape, weight_shape, None, stride, padding,
                                                             dilation, groups)
    unbatched = len(input_shape) == 4
    n, c, d, h, w = (1, *input_shape) if unbatched else input_shape
    k, _, kd, kh, kw = weight_shape
    return Conv3dSpec(n, c, d, h, w, k, kd, kh, kw, groups, tuple(stride), tuple(pads), tuple(dilation), d_out, p, q,
                      unbatched=unbatched, **options)


def _describe(input, weight, bias, residual, activation, options, tf32=None) -> Conv3dSpec:
    """The :class:`Conv3dSpec` of a validated call (``options`` as :func:`_validated` returns them)."""
    stride, pads, dilation, groups, (d_out, p, q) = options
    unbatched = input.dim() == 4
    n, c, d, h, w = (1, *input.shape) if unbatched else input.shape
    k, _, kd, kh, kw = weight.shape
    if tf32 is None:
        tf32 = _backend.uses_tf32(input.dtype, input.device)
    return Conv3dSpec(n, c, d, h, w, k, kd, kh, kw, groups, tuple(stride), tuple(pads), tuple(dilation), d_out, p, q,
                      dtype=input.dtype, unbatched=unbatched, has_bias=bias is not None,
                      has_residual=residual is not None, activation=activation,
                      tf32=bool(tf32) and input.dtype == torch.float32,
                      channels_last=_output_channels_last(input, weight))


def takes_depth_kernel(spec: Conv3dSpec) -> bool:
    """Whether a call runs on the depth-axis kernel (kernels/conv3d_fwd.py) rather than the depth
    im2col: DEPTH_MIN_CHANNELS or more input channels per group. With fewer (an RGB clip, a
    depthwise layer), the kernel's channel blocks would leave most tensor-core lanes idle, while
    the im2col's ``C * kD`` channels per group fill them (and reach the 2-D few-channel fold)."""
    return spec.c_per_group >= forward3d.DEPTH_MIN_CHANNELS


# --------------------------------------------------------------------------- the depth im2col

def _gather(x, kd: int, stride_d: int, pads_d: tuple, dil_d: int, d_out: int, channels_last: bool,
            channels: int = 0) -> Tensor:
    """The depth im2col of a 5-D input: ``(N * D_out, C * kD, H, W)``, channel ``c * kD + kd``
    holding input depth ``d_out * stride_d + kd * dil_d`` (depth-padded), channels_last or
    contiguous; with ``channels`` > C * kD, zero channels follow up to that many."""
    n, c, _, h, w = x.shape
    if pads_d[0] or pads_d[1]:
        x = F.pad(x, (0, 0, 0, 0, pads_d[0], pads_d[1]))
    span = dil_d * (kd - 1) + 1
    # (N, C, D_out, H, W, span) -> every dilation-th element of each window: (N, C, D_out, H, W, kD)
    windows = x.unfold(2, span, stride_d)[..., ::dil_d]
    if channels > c * kd:  # one copy into a zero-filled buffer of the padded channel count
        if channels_last:  # (N * D_out, H, W, channels) <- (N, D_out, H, W, C, kD)
            out = x.new_zeros((n * d_out, h, w, channels))
            out[..., :c * kd].unflatten(-1, (c, kd)).unflatten(0, (n, d_out)).copy_(windows.permute(0, 2, 3, 4, 1, 5))
            return out.permute(0, 3, 1, 2)
        out = x.new_zeros((n * d_out, channels, h, w))  # (N * D_out, channels, H, W) <- (N, D_out, C, kD, H, W)
        out[:, :c * kd].unflatten(1, (c, kd)).unflatten(0, (n, d_out)).copy_(windows.permute(0, 2, 1, 5, 3, 4))
        return out
    if channels_last:  # (N, D_out, H, W, C, kD): a channels_last (N * D_out, C * kD, H, W)
        x2 = windows.permute(0, 2, 3, 4, 1, 5).reshape(n * d_out, h, w, c * kd).permute(0, 3, 1, 2)
        return x2.contiguous(memory_format=torch.channels_last)
    # (N, D_out, C, kD, H, W): a contiguous (N * D_out, C * kD, H, W)
    return windows.permute(0, 2, 1, 5, 3, 4).reshape(n * d_out, c * kd, h, w).contiguous()


def im2col_channels(channels: int, groups: int, itemsize: int) -> int:
    """The depth im2col's channel count for ``channels`` = C * kD: rounded up to whole 16 bytes
    per pixel (zero channels, zero weights) for a single group of more channels than the 2-D
    kernels' few-channel fold takes. A pixel row of, say, 9 fp16 channels (an RGB clip's kD = 3
    im2col) is 18 bytes: no vector load can take it, and conv_direct's tap loop falls back to
    synchronous 2-byte loads; 16 channels are 32 bytes, two 16-byte cp.async."""
    from .ops.forward import FOLD_MAX_CHANNELS

    vector = max(1, 16 // itemsize)
    if groups != 1 or channels <= FOLD_MAX_CHANNELS or channels % vector == 0:
        return channels
    return -(-channels // vector) * vector


def _scatter(cols_grad, input_shape, kd: int, stride_d: int, pads_d: tuple, dil_d: int, d_out: int,
             channels_last: bool) -> Tensor:
    """The adjoint of :func:`_gather`: each ``(N * D_out, C * kD, H, W)`` column gradient added
    back to the input depth it was gathered from (in fp32), as a tensor of ``input_shape``."""
    n, c, d, h, w = input_shape
    cols = cols_grad.reshape(n, d_out, c, kd, h, w)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    padded = torch.empty((n, c, d + pads_d[0] + pads_d[1], h, w), dtype=torch.float32, device=cols_grad.device,
                         memory_format=fmt).zero_()
    last = (d_out - 1) * stride_d + 1
    for j in range(kd):
        padded[:, :, j * dil_d:j * dil_d + last:stride_d] += cols[:, :, :, j].transpose(1, 2)
    return padded[:, :, pads_d[0]:pads_d[0] + d].to(cols_grad.dtype, memory_format=fmt)


def conv3d_views(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, residual=None) -> tuple:
    """The :func:`mcconv.conv2d` arguments of a :func:`conv3d` call as a depth im2col, and how to
    lay its output back out: ``(input2d, weight2d, bias, stride, padding, dilation, groups,
    residual2d, layout)`` where ``input2d`` is the depth im2col ``(N * D_out, C * kD, H, W)`` (a
    copy; one group's channels zero-padded to whole 16 bytes per pixel, see :func:`im2col_channels`),
    ``weight2d`` is ``(K, C/g * kD, kH, kW)`` (zero-padded alike), stride/dilation are the (height, width)
    pairs, padding is ``(top, bottom, left, right)`` and ``layout`` is ``(N, D_out, unbatched,
    channels_last_3d)``. (Calls with DEPTH_MIN_CHANNELS or more channels per group run on the
    depth kernel instead; this is still their 2-D form for the tools and their gradient's.)

    Validates the call in 3-D terms first (errors name conv3d's arguments as given). Under
    autocast the tensors are cast to the autocast dtype first, as ``aten::conv3d`` does.
    """
    input, weight, bias, residual, options = _validated(input, weight, bias, stride, padding, dilation, groups,
                                                        residual)
    return _views(input, weight, bias, residual, options)


def _views(input, weight, bias, residual, options) -> tuple:
    stride, pads, dilation, groups, (d_out, _, _) = options
    unbatched = input.dim() == 4
    x = input.unsqueeze(0) if unbatched else input
    channels_last = _output_channels_last(input, weight)
    k, kd = weight.shape[0], weight.shape[2]
    channels = im2col_channels(x.shape[1] * kd, groups, x.element_size())
    x2 = _gather(x, kd, stride[0], pads[:2], dilation[0], d_out, channels_last, channels)
    w2 = weight.reshape(k, weight.shape[1] * kd, *weight.shape[3:])  # channel c * kD + kd, as x2's
    if channels > x.shape[1] * kd:  # zero weights for the zero channels (one group)
        w2 = F.pad(w2, (0, 0, 0, 0, 0, channels - w2.shape[1]))
    if not channels_last:
        w2 = w2.contiguous()  # its strides must not make conv2d's output channels_last
    r2 = None
    if residual is not None:  # (N, K, D_out, P, Q) -> (N * D_out, K, P, Q), any strides
        r = residual.unsqueeze(0) if unbatched else residual
        r2 = r.transpose(1, 2).reshape(x.shape[0] * d_out, r.shape[1], *r.shape[3:])
    return (x2, w2, bias, stride[1:], pads[2:], dilation[1:], groups, r2, (x.shape[0], d_out, unbatched, channels_last))


# --------------------------------------------------------------------------- the depth kernel's op

def _spec_of_op(input, weight, bias, stride, padding, dilation, groups, activation, residual) -> Conv3dSpec:
    """The spec of a ``mcconv::conv3d`` call (batched, normalised options: validated by conv3d())."""
    n, c, d, h, w = input.shape
    k, _, kd, kh, kw = weight.shape
    out = tuple((size + padding[2 * i] + padding[2 * i + 1] - dilation[i] * (kk - 1) - 1) // stride[i] + 1
                for i, (size, kk) in enumerate(((d, kd), (h, kh), (w, kw))))
    options = (tuple(stride), tuple(padding), tuple(dilation), groups, out)
    return _describe(input, weight, bias, residual, _activation(_autograd._act(activation)), options)


@torch.library.custom_op("mcconv::conv3d", mutates_args=())
def conv3d_op(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: list[int], padding: list[int],
              dilation: list[int], groups: int, activation: str, residual: Optional[Tensor] = None) -> Tensor:
    """``act(conv3d(input, weight) + bias + residual)`` on the depth kernel: a 5-D input, padding
    ``(front, back, top, bottom, left, right)``, activation ``"none"`` or a name (as ``mcconv::conv2d``)."""
    spec = _spec_of_op(input, weight, bias, stride, padding, dilation, groups, activation, residual)
    return forward3d.run(forward3d.plan(spec, input, weight, residual), input, weight, bias, residual)


@conv3d_op.register_fake
def _conv3d_fake(input, weight, bias, stride, padding, dilation, groups, activation, residual=None):
    spec = _spec_of_op(input, weight, bias, stride, padding, dilation, groups, activation, residual)
    shape = spec.output_shape
    return torch.empty_strided(shape, forward3d.contiguous_strides(shape, spec.channels_last), dtype=input.dtype,
                               device=input.device)


def _setup_conv3d(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, activation, residual = inputs
    act = _activation(_autograd._act(activation))
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.activation = activation
    ctx.shapes = (tuple(input.shape), tuple(weight.shape))
    ctx.channels_last = _output_channels_last(input, weight)
    # silu's and gelu's derivatives read z: the backward recomputes it (one more forward launch)
    # rather than every forward storing it.
    ctx.recompute_z = act is not None and act.needs_preact
    needs = ctx.needs_input_grad
    keep = ctx.recompute_z
    ctx.save_for_backward(input if needs[1] or keep else None, weight if needs[0] or keep else None,
                          bias if keep else None, residual if keep else None,
                          output if act is not None and not keep else None)


def _as_4d(t: Tensor) -> Tensor:
    """(N, K, D, P, Q) as (N, K, D * P, Q) (a view for channels_last_3d and contiguous tensors):
    the shape the 2-D activation and bias-gradient ops take."""
    n, k, d, p, q = t.shape
    return t.reshape(n, k, d * p, q)


def _backward_conv3d(ctx, grad_y):
    """dL/dz through the activation (and dL/dbias) on 4-D views, then dL/dinput and dL/dweight as
    the depth im2col's gradients: its gather recomputed, the 2-D gradient kernels, its scatter."""
    input, weight, bias, residual, saved = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv_args
    if ctx.recompute_z:
        saved = conv3d_op(input, weight, bias, stride, padding, dilation, groups, _autograd._NO_ACT, residual)
    grad_z, grad_bias = _autograd._activation_backward(ctx, _as_4d(grad_y),
                                                       None if saved is None else _as_4d(saved))
    grad_z = grad_z.reshape(grad_y.shape)
    input_shape, weight_shape = ctx.shapes
    n, c, _, h, w = input_shape
    k, cg, kd, kh, kw = weight_shape
    d_out, p, q = grad_z.shape[2:]
    needs = ctx.needs_input_grad
    grad_input = grad_weight = None
    if needs[0] or needs[1]:
        grad2 = grad_z.transpose(1, 2).reshape(n * d_out, k, p, q)
        conv2 = (stride[1:], padding[2:], dilation[1:], groups)
        if needs[0]:
            w2 = weight.reshape(k, cg * kd, kh, kw)
            cols = _autograd.conv2d_input_grad_op(grad2, w2, [n * d_out, c * kd, h, w], *conv2)
            grad_input = _scatter(cols, input_shape, kd, stride[0], padding[:2], dilation[0], d_out,
                                  ctx.channels_last)
        if needs[1]:
            cols = _gather(input, kd, stride[0], padding[:2], dilation[0], d_out, follows_channels_last(grad2))
            grad_weight = _autograd.conv2d_weight_grad_op(grad2, cols, [k, cg * kd, kh, kw], *conv2)
            grad_weight = grad_weight.reshape(weight_shape)
    grad_residual = grad_z if len(needs) > 8 and needs[8] else None
    return grad_input, grad_weight, grad_bias, None, None, None, None, None, grad_residual


conv3d_op.register_autograd(_backward_conv3d, setup_context=_setup_conv3d)


# --------------------------------------------------------------------------- the entry point

def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None,
           residual=None):
    """3-D convolution with the semantics of ``torch.nn.functional.conv3d``, plus a fused residual
    add and activation.

    Args:
        input: ``(N, C, D, H, W)`` or unbatched ``(C, D, H, W)``; float16, bfloat16 or float32;
            any strides.
        weight: ``(K, C / groups, kD, kH, kW)``, same dtype and device.
        bias: optional ``(K,)``.
        stride, dilation: int, 1-tuple or (depth, height, width) triple, >= 1.
        padding: int, 1-tuple, (depth, height, width) triple, ``"valid"`` or ``"same"`` (stride
            1; the extra element of even kernels goes to the back/bottom/right, as in torch).
        groups: divides both C and K (``groups == C``: depthwise).
        activation: None or a name in :data:`mcconv.ACTIVATIONS`, applied in the epilogue.
        residual: optional tensor of exactly the output's shape, any strides, added in fp32 in
            the epilogue before the activation.

    Returns:
        ``act(conv3d(input, weight) + bias + residual)``: ``(N, K, D_out, P, Q)`` (``(K, D_out,
        P, Q)`` unbatched) in the input's dtype, channels_last_3d when the input or the weight
        suggests channels_last_3d (torch's rule, as for conv2d; CPU torch alone returns float32
        batches of one contiguous), else contiguous.

    Raises:
        mcconv.ConvArgumentError / mcconv.ConvTypeError (each also a RuntimeError) for anything
        ``F.conv3d`` refuses, naming conv3d's argument.

    Two ways to run, chosen per call (:func:`takes_depth_kernel`; :func:`explain3d` says which):

    - 16 or more input channels per group: the depth-axis kernel (kernels/conv3d_fwd.py), an
      implicit GEMM over (n, d, p, q) voxels and (kd, kh, kw, c) reductions that reads the
      input in place when it is channels_last_3d (other layouts: one channels_last_3d copy per
      call). Its gradients are the depth im2col's (below), the gather recomputed in the backward
      instead of kept from the forward.
    - fewer (an RGB clip, depthwise layers): a depth im2col over the 2-D kernels. The input,
      padded along depth, is copied into ``(N * D_out, C * kD, H, W)`` -- about ``kD /
      stride_d`` times the input's memory -- and one :func:`mcconv.conv2d` call with the weight
      viewed as ``(K, C/g * kD, kH, kW)`` computes every output depth (:func:`conv3d_views`).

    Autograd (input, weight, bias, residual), ``torch.compile(fullgraph=True)`` and autocast
    work on both.
    """
    input, weight, bias, residual, options, spec = _call(input, weight, bias, stride, padding, dilation, groups,
                                                         activation, residual)
    if takes_depth_kernel(spec):
        return _depth_kernel(spec, input, weight, bias, residual)
    x2, w2, b, stride, padding, dilation, groups, r2, layout = _views(input, weight, bias, residual, options)
    n, d_out, unbatched, channels_last = layout
    y2 = _autograd.conv2d(x2, w2, b, stride, padding, dilation, groups, activation, r2)
    y = y2.reshape(n, d_out, *y2.shape[1:]).transpose(1, 2)  # (N, K, D_out, P, Q)
    if y.stride() != _new_strides(tuple(y.shape), channels_last):  # torch's strides, size-1 axes included
        y = y.clone(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
    return y.squeeze(0) if unbatched else y


_calls: dict = {}  # a call's metadata -> (options, spec): validated and described once per kind of call


def _call(input, weight, bias, stride, padding, dilation, groups, activation, residual) -> tuple:
    """``(input, weight, bias, residual, options, spec)`` of a conv3d call: validated (raising for
    anything torch refuses) and described on the first call of a kind, then found by the call's
    metadata, as conv2d's plans are (nothing derived from tensor values). Under autocast (the
    tensors are cast first) and ``torch.compile`` (traced once) it is not cached."""
    key = None
    if isinstance(input, Tensor) and isinstance(weight, Tensor) and not torch.compiler.is_compiling() \
            and _autograd._autocast_dtype(input.device.type) is None:
        try:
            key = (input.shape, input.stride(), input.dtype, input.device, weight.shape, weight.stride(), weight.dtype,
                   weight.device, tensor_key(bias), tensor_key(residual), option_key(stride), option_key(padding),
                   option_key(dilation), option_key(groups), activation, _backend.uses_tf32(input.dtype, input.device))
            found = _calls[key]
            return (input, weight, bias, residual, *found)
        except KeyError:
            pass
        except (AttributeError, TypeError):  # not tensors, or an unhashable option: validation says what
            key = None
    act = _activation(activation)  # validates before anything is copied
    input, weight, bias, residual, options = _validated(input, weight, bias, stride, padding, dilation, groups,
                                                        residual)
    found = (options, _describe(input, weight, bias, residual, act, options))
    if key is not None:
        if len(_calls) >= _MAX_CHECKED:
            _calls.clear()
        _calls[key] = found
    return (input, weight, bias, residual, *found)


def _depth_kernel(spec, input, weight, bias, residual):
    """The depth kernel: launched directly for inference on plain tensors (the op's dispatch costs
    tens of microseconds), else through ``mcconv::conv3d`` (autograd, compile, fake tensors)."""
    needs_grad = torch.is_grad_enabled() and (
        input.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
        or (residual is not None and residual.requires_grad))
    if not (needs_grad or torch.compiler.is_compiling()) and _autograd._plain_eager(input, weight, bias, residual):
        return forward3d.run(forward3d.plan(spec, input, weight, residual), input, weight, bias, residual)
    unbatched = spec.unbatched
    x = input.unsqueeze(0) if unbatched else input
    r = residual.unsqueeze(0) if unbatched and residual is not None else residual
    act = _autograd._NO_ACT if spec.activation is None else spec.activation.name
    y = conv3d_op(x, weight, bias, list(spec.stride), list(spec.padding), list(spec.dilation), spec.groups, act, r)
    return y.squeeze(0) if unbatched else y


def explain3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None,
              residual=None, device_name=None, direction="forward"):
    """:func:`mcconv.explain` for a :func:`conv3d` call. The depth kernel's forward reports
    ``conv3d_direct`` with the 3-D output shape; the depth im2col's launches, and every call's
    backward (the im2col's 2-D gradient kernels), report the 2-D call's shapes, ``(N * D_out, K,
    P, Q)``. Tensors may be on the ``meta`` device."""
    from ._explain import explain

    act = _activation(activation)
    input, weight, bias, residual, options = _validated(input, weight, bias, stride, padding, dilation, groups,
                                                        residual)
    x2, w2, b, stride, padding, dilation, groups, r2, _ = _views(input, weight, bias, residual, options)
    found = explain(x2, w2, b, stride, padding, dilation, groups, activation=activation, residual=r2,
                    device_name=device_name, direction=direction)
    spec = _describe(input, weight, bias, residual, act, options)
    if not takes_depth_kernel(spec) or direction == "backward":
        return found
    depth = forward3d.plan(spec, input, weight, residual, device_name=device_name).dispatch
    return depth if direction == "forward" else [depth, *found[1:]]
