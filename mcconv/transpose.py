"""Transposed convolution: :func:`conv_transpose2d` and :func:`conv_transpose1d`.

The forward of a transposed convolution is the input gradient of the ordinary convolution it
transposes: for ``w`` of shape ``(C_in, C_out / groups, kH, kW)``, ``conv_transpose2d(x, w)`` is
dL/dinput of ``conv2d(input, w)`` (``input`` of shape ``(N, C_out, H_out, W_out)``) given
dL/dz = ``x``. It runs on mcconv's input-gradient kernels (mcconv/ops/input_grad.py), with
``H_out = (H - 1) * stride - 2 * padding + dilation * (kH - 1) + output_padding + 1``, and
``y = act(conv_transpose2d(x, w) + bias + residual)`` is ONE launch: the bias (per output
channel), the residual (the output's shape, any strides) and the activation are the kernel's
epilogue, the forward convolution's (``conv_dgrad``, or ``conv_dgrad_subpixel`` for few output
channels at a stride, e.g. a generator's RGB layer; ``gemm_1x1_dgrad`` for 1x1 stride-1 calls,
whose split reduction applies it in its second pass; ``depthwise_dgrad`` for one output channel
per group, the depthwise forward's). As for the input gradient, ``conv_dgrad`` reads and writes
channels_last: an NCHW input is copied before the launch and the output after it.

Its backward, by the same duality, from dL/dz (dL/dy through the activation, fused with the bias
sum): dL/dx is the ordinary convolution of dL/dz with ``w`` (mcconv's forward kernels), dL/dw the
weight gradient of that convolution with the roles of the tensors exchanged (its ``grad_z = x``,
its ``input = dL/dz``), dL/dbias the sum of dL/dz, dL/dresidual = dL/dz.

Custom ops, with fake implementations, autograd and autocast, so that ``torch.library.opcheck``
and ``torch.compile(fullgraph=True)`` see one node (``padding`` and ``output_padding`` as
(height, width) pairs, ``output_padding < stride`` per axis; ``activation`` "none" or a name):

* ``mcconv::conv_transpose2d(input, weight, bias?, stride, padding, output_padding, dilation,
  groups, activation="none", residual?=None) -> y``;
* ``mcconv::conv_transpose2d_preact(...same...) -> (y, z)``, z the pre-activation, stored by the
  same launch (``STORE_PREACT``): :func:`conv_transpose2d` takes it when a gradient will be taken
  through silu, gelu or hardswish, whose derivatives read z. Storing z costs one more write of the
  output; recomputing it would cost a second transposed convolution in the backward, which only
  a direct call of ``mcconv::conv_transpose2d`` with such an activation pays.

torch also accepts ``stride <= output_padding < dilation``; the op never sees it: such a call is
the same transposed convolution of the input padded with ``output_padding // stride`` zero
rows (columns) at the bottom (right) and ``output_padding % stride``.
"""
import operator
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._autograd import (_NO_ACT, _act, _activation_backward, _autocast_cast, _autocast_dtype, _plain_eager,
                        activation_grad_op, conv2d_bias_grad_op, conv2d_op, conv2d_weight_grad_op)
from ._plan import contiguous_strides
from ._spec import (ConvArgumentError, ConvTypeError, _is_int, _positive_int, check_like, check_tensor,
                    output_channels_last)
from .epilogue import activation as _activation
from .ops import input_grad


# --------------------------------------------------------------------------- shapes

def _pad4(padding) -> tuple:
    """(height, width) padding -> mcconv's (top, bottom, left, right)."""
    ph, pw = padding
    return (ph, ph, pw, pw)


def _output_shape(input_shape, weight_shape, stride, padding, output_padding, dilation, groups) -> list:
    """The transposed convolution's output shape (3-D for an unbatched 3-D input)."""
    *lead, _, h, w = input_shape
    size = [(n - 1) * s - 2 * p + d * (k - 1) + o + 1
            for n, s, p, d, k, o in zip((h, w), stride, padding, dilation, weight_shape[2:], output_padding)]
    return [*lead, weight_shape[1] * groups, *size]


# --------------------------------------------------------------------------- the custom ops

def _output_channels_last(input, weight) -> bool:
    """torch's layout of the output: channels_last when the input or the weight suggests it (an
    unbatched input read as its unsqueeze(0)), as for mcconv.conv2d and CUDA/CPU conv_transpose2d."""
    return output_channels_last(input.shape, input.stride(), weight.shape, weight.stride())


def _conv_transpose2d_impl(input, weight, bias, stride, padding, output_padding, dilation, groups, activation,
                           residual, preact=False):
    """The input-gradient launch with the epilogue: y, or (y, z) with ``preact``."""
    shape = _output_shape(input.shape, weight.shape, stride, padding, output_padding, dilation, groups)
    plan = input_grad.plan(input, weight, tuple(shape), tuple(stride), _pad4(padding), tuple(dilation), groups,
                           bias=bias, activation=_act(activation), residual=residual,
                           channels_last=_output_channels_last(input, weight))
    return input_grad.run(plan, input, weight, bias, residual, preact=preact)


def _empty_output(input, weight, stride, padding, output_padding, dilation, groups) -> Tensor:
    shape = _output_shape(input.shape, weight.shape, stride, padding, output_padding, dilation, groups)
    strides = contiguous_strides(shape, _output_channels_last(input, weight))
    return torch.empty_strided(shape, strides, dtype=input.dtype, device=input.device)


@torch.library.custom_op("mcconv::conv_transpose2d", mutates_args=())
def conv_transpose2d_op(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: list[int],
                        padding: list[int], output_padding: list[int], dilation: list[int], groups: int,
                        activation: str = _NO_ACT, residual: Optional[Tensor] = None) -> Tensor:
    """``act(conv_transpose2d(input, weight) + bias + residual)`` in one input-gradient launch
    (normalised arguments: pairs, ``output_padding < stride``; activation "none" or a name)."""
    return _conv_transpose2d_impl(input, weight, bias, stride, padding, output_padding, dilation, groups,
                                  activation, residual)


@conv_transpose2d_op.register_fake
def _conv_transpose2d_fake(input, weight, bias, stride, padding, output_padding, dilation, groups,
                           activation=_NO_ACT, residual=None):
    return _empty_output(input, weight, stride, padding, output_padding, dilation, groups)


@torch.library.custom_op("mcconv::conv_transpose2d_preact", mutates_args=())
def conv_transpose2d_preact_op(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: list[int],
                               padding: list[int], output_padding: list[int], dilation: list[int], groups: int,
                               activation: str = _NO_ACT,
                               residual: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """``(y, z)``: :func:`conv_transpose2d_op`'s y and its pre-activation ``z = conv_transpose2d(input,
    weight) + bias (+ residual)``, both stored by the same launch (silu's, gelu's and hardswish's
    derivatives read z)."""
    y, z = _conv_transpose2d_impl(input, weight, bias, stride, padding, output_padding, dilation, groups,
                                  activation, residual, preact=True)
    if z is y:  # no activation: y == z, but a custom op's outputs may not alias each other
        z = y.clone()
    return y, z


@conv_transpose2d_preact_op.register_fake
def _conv_transpose2d_preact_fake(input, weight, bias, stride, padding, output_padding, dilation, groups,
                                  activation=_NO_ACT, residual=None):
    return (_empty_output(input, weight, stride, padding, output_padding, dilation, groups),
            _empty_output(input, weight, stride, padding, output_padding, dilation, groups))


# The backward: dL/dz through the activation (fused with the bias sum, mcconv._autograd's ops),
# then, by duality, dL/dx the convolution this op transposes applied to dL/dz, dL/dw that
# convolution's weight gradient with the roles exchanged, dL/dresidual = dL/dz. Input indices:
# (input, weight, bias, stride, padding, output_padding, dilation, groups, activation, residual).

def _setup(ctx, inputs, saved_act, keep_operands=False):
    input, weight, bias, stride, padding, output_padding, dilation, groups, activation, residual = inputs
    ctx.conv_args = (list(stride), list(_pad4(padding)), list(dilation), groups)
    ctx.transpose_args = (stride, padding, output_padding, dilation, groups)
    ctx.activation = activation
    ctx.weight_shape = list(weight.shape)
    needs = ctx.needs_input_grad
    # dL/dx needs the weight, dL/dw the input: keep only what will be used (a backward that
    # recomputes z needs both, and the bias and residual).
    ctx.save_for_backward(input if needs[1] or keep_operands else None,
                          weight if needs[0] or keep_operands else None, saved_act,
                          residual if keep_operands else None)


def _transpose_grads(ctx, grad_z, grad_bias):
    """The op's input gradients given dL/dz: only those autograd asks for."""
    input, weight = ctx.saved_tensors[:2]
    stride, padding, dilation, groups = ctx.conv_args
    needs = ctx.needs_input_grad
    grad_input = grad_weight = None
    if needs[0]:  # the convolution this op transposes, applied to dL/dz
        grad_input = conv2d_op(grad_z, weight, None, stride, padding, dilation, groups, _NO_ACT)
    if needs[1]:  # the convolution's weight gradient, roles exchanged: its dL/dz is x, its input our dL/dz
        grad_weight = conv2d_weight_grad_op(input, grad_z, ctx.weight_shape, stride, padding, dilation, groups)
    # The dispatcher drops trailing default arguments (activation "none", residual None) and their flags.
    grad_residual = grad_z if len(needs) > 9 and needs[9] else None
    return grad_input, grad_weight, grad_bias, None, None, None, None, None, None, grad_residual


def _setup_conv_transpose2d(ctx, inputs, output):
    act = _activation(inputs[8])
    # A derivative that reads y gets y; one that reads z, through this op (conv_transpose2d() takes
    # the preact op instead; this serves direct calls of torch.ops.mcconv.conv_transpose2d),
    # recomputes z in the backward: the bias is saved for it.
    ctx.recompute_z = act is not None and act.needs_preact
    saved = output if act is not None and not act.needs_preact else inputs[2] if ctx.recompute_z else None
    _setup(ctx, inputs, saved, keep_operands=ctx.recompute_z)


def _backward_conv_transpose2d(ctx, grad_y):
    saved = ctx.saved_tensors[2]
    if ctx.recompute_z:
        input, weight, bias, residual = ctx.saved_tensors
        saved = conv_transpose2d_op(input, weight, bias, *ctx.transpose_args, _NO_ACT, residual)
    return _transpose_grads(ctx, *_activation_backward(ctx, grad_y, saved))


def _setup_conv_transpose2d_preact(ctx, inputs, output):
    ctx.set_materialize_grads(False)  # z is usually discarded: None for its gradient, not zeros
    act = _activation(inputs[8])
    y, z = output
    _setup(ctx, inputs, None if act is None else z if act.needs_preact else y)


def _backward_conv_transpose2d_preact(ctx, grad_y, grad_z_out):
    if grad_z_out is None:
        if grad_y is None:
            return (None,) * 10
        return _transpose_grads(ctx, *_activation_backward(ctx, grad_y, ctx.saved_tensors[2]))
    # z was used too: its gradient adds to the activation's, and the bias sums the total.
    grad_z = grad_z_out
    if grad_y is not None:
        if ctx.activation != _NO_ACT:
            grad_y = activation_grad_op(grad_y, ctx.saved_tensors[2], ctx.activation)
        grad_z = grad_z + grad_y
    return _transpose_grads(ctx, grad_z, conv2d_bias_grad_op(grad_z) if ctx.needs_input_grad[2] else None)


conv_transpose2d_op.register_autograd(_backward_conv_transpose2d, setup_context=_setup_conv_transpose2d)
conv_transpose2d_preact_op.register_autograd(_backward_conv_transpose2d_preact,
                                             setup_context=_setup_conv_transpose2d_preact)


def _register_autocast(op, name: str, device_type: str, lib) -> None:
    key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    keyset = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

    def kernel(_keyset, input, weight, bias, stride, padding, output_padding, dilation, groups, activation=_NO_ACT,
               residual=None):
        dtype = torch.get_autocast_dtype(device_type)  # the context's dtype, as mcconv::conv2d
        with torch._C._ExcludeDispatchKeyGuard(keyset):
            return op(_autocast_cast(input, device_type, dtype), _autocast_cast(weight, device_type, dtype),
                      _autocast_cast(bias, device_type, dtype), stride, padding, output_padding, dilation, groups,
                      activation, _autocast_cast(residual, device_type, dtype))

    lib.impl(name, kernel, key, with_keyset=True)


_lib = torch.library.Library("mcconv", "FRAGMENT")  # kept alive: owns the autocast registrations
for _name, _opdef in (("conv_transpose2d", conv_transpose2d_op), ("conv_transpose2d_preact",
                                                                   conv_transpose2d_preact_op)):
    for _device_type in ("cuda", "cpu"):
        _register_autocast(_opdef, _name, _device_type, _lib)


# --------------------------------------------------------------------------- validation

def _ints(name: str, value, dims: int, low: int) -> tuple:
    """An int or a sequence of 1 or ``dims`` ints, each >= ``low``, as a ``dims``-tuple."""
    what = "an int" if dims == 1 else f"an int or {dims} ints"
    if _is_int(value):
        values = (operator.index(value),)
    elif isinstance(value, (tuple, list)):
        if not all(_is_int(v) for v in value):
            raise ConvTypeError(f"{name}: expected {what}, got {value!r}")
        if len(value) not in (1, dims):
            raise ConvArgumentError(f"{name}: expected {what} (one per spatial axis), got {value!r}")
        values = tuple(operator.index(v) for v in value)
    else:
        raise ConvTypeError(f"{name}: expected {what}, got {type(value).__name__} {value!r}")
    if min(values) < low:
        raise ConvArgumentError(f"{name}: expected values >= {low}, got {value!r}")
    return values * dims if len(values) == 1 else values


def _validate(input, weight, bias, residual, stride, padding, output_padding, dilation, groups, activation,
              dims: int) -> tuple:
    """Check a ``conv_transpose{dims}d`` call as torch would, naming the argument in its own
    (1-D or 2-D) terms; ``(stride, padding, output_padding, dilation, groups, activation)``, each
    option a ``dims``-tuple."""
    axes = "L" if dims == 1 else "H, W"
    check_tensor("input", input, (dims + 1, dims + 2), f"a {dims + 1}-D (C, {axes}) or {dims + 2}-D (N, C, {axes})")
    if not isinstance(weight, Tensor):
        raise ConvTypeError(f"weight: expected a torch.Tensor, got {type(weight).__name__}")
    check_like("weight", weight, "input", input)
    if weight.dim() != dims + 2:
        kernel = "kW" if dims == 1 else "kH, kW"
        raise ConvArgumentError(f"weight: expected a {dims + 2}-D (in_channels, out_channels/groups, {kernel}) "
                                f"tensor, got {weight.dim()}-D with shape {tuple(weight.shape)}")
    act = _activation(activation)
    groups = _positive_int("groups", groups)
    stride = _ints("stride", stride, dims, 1)
    dilation = _ints("dilation", dilation, dims, 1)
    if isinstance(padding, str):
        raise ConvTypeError(f"padding: expected an int or a tuple of ints (transposed convolutions take no "
                            f"'same' or 'valid', as in torch), got {padding!r}")
    padding = _ints("padding", padding, dims, 0)
    output_padding = _ints("output_padding", output_padding, dims, 0)
    if any(o >= max(s, d) for o, s, d in zip(output_padding, stride, dilation)):
        raise ConvArgumentError(f"output_padding: expected values smaller than stride or dilation (as torch), "
                                f"got output_padding {output_padding} for stride {stride} and dilation {dilation}")
    shape, wshape = tuple(input.shape), tuple(weight.shape)
    n, c = (1, shape[0]) if input.dim() == dims + 1 else shape[:2]
    if wshape[0] < 1:
        raise ConvArgumentError(f"weight: expected at least one input channel (dimension 0), got shape {wshape}")
    if wshape[0] != c:
        raise ConvArgumentError(f"weight: expected shape[0] == in_channels = {c} (a transposed convolution's weight "
                                f"is (in_channels, out_channels/groups, ...)), got weight of shape {wshape}")
    if c % groups:
        raise ConvArgumentError(f"groups: expected a divisor of in_channels={c}, got {groups}")
    if min(wshape[2:]) < 1:
        raise ConvArgumentError(f"weight: expected a kernel of at least one tap per axis, got shape {wshape}")
    if min(shape[-dims:]) < 1 and n > 0 and c > 0:  # torch's rule: an empty image only in an empty batch
        raise ConvArgumentError(f"input: expected a non-empty {'signal' if dims == 1 else 'image'} (only the batch "
                                f"or the channels may be 0), got shape {shape}")
    size = [(length - 1) * s - 2 * p + d * (k - 1) + o + 1
            for length, s, p, d, k, o in zip(shape[-dims:], stride, padding, dilation, wshape[2:], output_padding)]
    if min(size) < 1:
        raise ConvArgumentError(f"input: the output size {tuple(size)} is too small (input {shape}, weight {wshape}, "
                                f"stride {stride}, padding {padding}, output_padding {output_padding}, dilation "
                                f"{dilation})")
    out_shape = (*shape[:-dims - 1], wshape[1] * groups, *size)
    if bias is not None:
        check_like("bias", bias, "input", input)
        if bias.dim() != 1 or bias.shape[0] != out_shape[-dims - 1]:
            raise ConvArgumentError(f"bias: expected a 1-D tensor of {out_shape[-dims - 1]} elements (out_channels "
                                    f"= weight.shape[1] * groups), got shape {tuple(bias.shape)}")
    if residual is not None:
        check_like("residual", residual, "input", input)
        if tuple(residual.shape) != out_shape:
            raise ConvArgumentError(f"residual: expected the output's shape {out_shape} (no broadcasting), "
                                    f"got {tuple(residual.shape)}")
    return stride, padding, output_padding, dilation, groups, act


def _autocast(input, weight, bias, residual) -> tuple:
    """Cast as aten's convolutions do under autocast, before the checks see the dtypes."""
    if isinstance(input, Tensor) and isinstance(weight, Tensor):
        cast_to = _autocast_dtype(input.device.type)
        if cast_to is not None:
            device_type = input.device.type
            input = _autocast_cast(input, device_type, cast_to)
            weight = _autocast_cast(weight, device_type, cast_to)
            if isinstance(bias, Tensor):
                bias = _autocast_cast(bias, device_type, cast_to)
            if isinstance(residual, Tensor):
                residual = _autocast_cast(residual, device_type, cast_to)
    return input, weight, bias, residual


# --------------------------------------------------------------------------- entry points

def _run(input, weight, bias, residual, stride, padding, output_padding, dilation, groups, act) -> Tensor:
    """The validated 2-D call: the launch itself for eager inference, else one of the ops (the
    preact op when a gradient will be taken through an activation whose derivative reads z)."""
    extra = [o // s for o, s in zip(output_padding, stride)]
    if any(extra):  # stride <= output_padding < dilation: zero rows/columns of input (module docstring)
        input = F.pad(input, (0, extra[1], 0, extra[0]))
        output_padding = tuple(o % s for o, s in zip(output_padding, stride))
    args = (list(stride), list(padding), list(output_padding), list(dilation), groups,
            _NO_ACT if act is None else act.name, residual)
    needs_grad = torch.is_grad_enabled() and (
        input.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
        or (residual is not None and residual.requires_grad))
    if not (torch.compiler.is_compiling() or needs_grad) and _plain_eager(input, weight, bias, residual):
        return _conv_transpose2d_impl(input, weight, bias, *args)  # skips the op's Python dispatch
    if needs_grad and act is not None and act.needs_preact:
        return conv_transpose2d_preact_op(input, weight, bias, *args)[0]
    return conv_transpose2d_op(input, weight, bias, *args)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     activation=None, residual=None):
    """2-D transposed convolution with the semantics of ``torch.nn.functional.conv_transpose2d``
    (same argument order), plus a residual add and an activation.

    Args:
        input: ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``; float16, bfloat16 or float32;
            CUDA (or CPU under ``TRITON_INTERPRET=1``); any strides.
        weight: ``(C_in, C_out / groups, kH, kW)``, same dtype and device.
        bias: optional ``(C_out,)``.
        stride, dilation: int or pair, >= 1.
        padding: int or pair, >= 0 (no ``"same"``/``"valid"``, as in torch).
        output_padding: int or pair, each smaller than the axis' stride or dilation.
        groups: divides C_in (and C_out = weight.shape[1] * groups).
        activation: None or a name in :data:`mcconv.ACTIVATIONS`.
        residual: optional tensor of exactly the output's shape, same dtype and device.

    Returns:
        ``act(conv_transpose2d(input, weight) + bias + residual)``: ``(N, C_out, H_out, W_out)``
        with ``H_out = (H - 1) * stride - 2 * padding + dilation * (kH - 1) + output_padding + 1``.

    One launch of an input-gradient kernel with the bias, residual and activation fused into its
    epilogue (``mcconv::conv_transpose2d``, a custom op with autograd for input, weight, bias and
    residual; see the module docstring), depthwise calls included. Raises
    :class:`mcconv.ConvArgumentError` / :class:`mcconv.ConvTypeError`, naming the argument, for
    what torch refuses.
    """
    input, weight, bias, residual = _autocast(input, weight, bias, residual)
    stride, padding, output_padding, dilation, groups, act = _validate(
        input, weight, bias, residual, stride, padding, output_padding, dilation, groups, activation, dims=2)
    return _run(input, weight, bias, residual, stride, padding, output_padding, dilation, groups, act)


def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     activation=None, residual=None):
    """1-D transposed convolution with the semantics of ``torch.nn.functional.conv_transpose1d``,
    plus a residual add and an activation (fused, as :func:`conv_transpose2d`'s), on the 2-D path.

    ``input`` ``(N, C_in, L)`` or ``(C_in, L)``, ``weight`` ``(C_in, C_out / groups, kW)``; the
    options are ints or 1-tuples. Validated in 1-D terms, then run as :func:`conv_transpose2d`
    on views of unit height (input ``(N, C_in, 1, L)``, weight ``(C_in, C_out/g, 1, kW)``, options
    on the width axis), without copying the input.
    """
    from .functional import _input_view

    input, weight, bias, residual = _autocast(input, weight, bias, residual)
    (s,), (p,), (o,), (d,), groups, act = _validate(
        input, weight, bias, residual, stride, padding, output_padding, dilation, groups, activation, dims=1)
    y = _run(_input_view(input), weight.unsqueeze(-2), bias, None if residual is None else residual.unsqueeze(-2),
             (1, s), (0, p), (0, o), (1, d), groups, act)
    return y.squeeze(-2)


def explain_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                        activation=None, residual=None, device_name: str | None = None):
    """Which kernel and tile configuration :func:`conv_transpose2d` would launch for these
    arguments: a :class:`mcconv.Dispatch` of its input-gradient kernel (``conv_dgrad``;
    ``conv_dgrad_subpixel`` for few output channels at a stride; ``gemm_1x1_dgrad`` for 1x1
    stride-1 calls; ``depthwise_dgrad`` for one output channel per
    group), the bias, residual and activation in its epilogue. Tensors may be on the ``meta``
    device (shapes only); ``device_name`` selects another GPU model's tile table. Raises what the
    convolution raises for bad arguments."""
    return plan_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation,
                            activation=activation, residual=residual, device_name=device_name)[0].dispatch


def plan_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     activation=None, residual=None, device_name: str | None = None, sm_count: int | None = None):
    """``(plan, input)``: the input-gradient plan a :func:`conv_transpose2d` call launches, and the
    input it launches on (zero-padded where ``output_padding >= stride``); for explain and the
    tools (``mcconv.ops.input_grad.run(plan, input, weight, bias, residual)`` is the launch)."""
    stride, padding, output_padding, dilation, groups, act = _validate(
        input, weight, bias, residual, stride, padding, output_padding, dilation, groups, activation, dims=2)
    extra = [o // s for o, s in zip(output_padding, stride)]
    if any(extra):  # as _run: zero rows/columns of input for output_padding >= stride
        input = F.pad(input, (0, extra[1], 0, extra[0]))  # free on meta tensors; explain is no hot path
        output_padding = tuple(o % s for o, s in zip(output_padding, stride))
    shape = _output_shape(input.shape, weight.shape, stride, padding, output_padding, dilation, groups)
    plan = input_grad.plan(input, weight, tuple(shape), tuple(stride), _pad4(padding), tuple(dilation), groups,
                           device_name=device_name, sm_count=sm_count, bias=bias,
                           activation=None if act is None else act.name, residual=residual,
                           channels_last=_output_channels_last(input, weight))
    return plan, input
