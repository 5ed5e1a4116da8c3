"""mcconv's convolution as PyTorch custom operators (``torch.ops.mcconv.*``), autograd and autocast.

The forward and every backward piece are opaque custom ops with fake (meta) implementations,
so autograd, ``torch.compile(fullgraph=True)`` (forward *and* the traced backward graph) and
``torch.library.opcheck`` all see mcconv as single nodes whose Triton kernels run at execution
time. Gradients are computed by the Triton kernels of :mod:`mcconv.ops`.

Ops (``padding`` is always the normalised ``(top, bottom, left, right)``; ``activation`` is
``"none"`` or a name in :data:`mcconv.epilogue.ACTIVATIONS`; inputs may be unbatched 3-D):

* ``mcconv::conv2d(input, weight, bias?, stride, padding, dilation, groups, activation, residual?=None) -> y``:
  ``act(conv2d(input, weight) + bias + residual)``, the residual (the output's shape, any
  strides) added in the kernel's epilogue; its gradient is dL/dz.
* ``mcconv::conv2d_preact(...same...) -> (y, z)``: also returns the pre-activation ``z``, which
  an activation whose derivative reads z needs; :func:`conv2d` uses it when a gradient will be taken.
* ``mcconv::conv2d_input_grad``, ``mcconv::conv2d_weight_grad``, ``mcconv::conv2d_bias_grad``,
  ``mcconv::activation_grad``, ``mcconv::activation_bias_grad``: the backward kernels (no
  double backward).

Autocast: under ``torch.autocast("cuda" | "cpu", dtype=float16 | bfloat16)`` the convolution
ops cast their floating-point tensors to the autocast dtype, as ``aten::conv2d`` does.
"""
from typing import Optional

import torch
from torch import Tensor

from . import ops
from ._plan import contiguous_strides, follows_channels_last
from ._spec import ConvSpec, describe, output_channels_last
from .epilogue import activation as _activation
from .ops import forward

_NO_ACT = "none"  # the schema's spelling of activation=None


def _act(activation: str):
    return None if activation == _NO_ACT else activation


def _empty_output(input: Tensor, weight: Tensor, stride, padding, dilation, groups) -> Tensor:
    """An output tensor laid out as the forward launcher lays it out (one rule: mcconv._spec)."""
    spec = ConvSpec.from_shapes(input.shape, weight.shape, stride, padding, dilation, groups)
    cl = output_channels_last(input.shape, input.stride(), weight.shape, weight.stride())
    shape = spec.output_shape
    return torch.empty_strided(shape, contiguous_strides(shape, cl), dtype=input.dtype, device=input.device)


# --------------------------------------------------------------------------- forward ops

@torch.library.custom_op("mcconv::conv2d", mutates_args=())
def conv2d_op(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: list[int], padding: list[int],
              dilation: list[int], groups: int, activation: str, residual: Optional[Tensor] = None) -> Tensor:
    """``act(conv2d(input, weight) + bias + residual)`` with normalised arguments (see the module docstring)."""
    return ops.conv2d_forward(input, weight, bias, tuple(stride), tuple(padding), tuple(dilation), groups,
                              _act(activation), residual=residual)


@conv2d_op.register_fake
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups, activation, residual=None):
    return _empty_output(input, weight, stride, padding, dilation, groups)


@torch.library.custom_op("mcconv::conv2d_preact", mutates_args=())
def conv2d_preact_op(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: list[int],
                     padding: list[int], dilation: list[int], groups: int,
                     activation: str, residual: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """``(y, z)``: the activated output and the pre-activation ``z = conv2d(input, weight) + bias (+ residual)``."""
    y, z = ops.conv2d_forward(input, weight, bias, tuple(stride), tuple(padding), tuple(dilation), groups,
                              _act(activation), residual=residual, return_preact=True)
    if z is y:  # no activation: y == z, but a custom op's outputs may not alias each other
        z = y.clone()
    return y, z


@conv2d_preact_op.register_fake
def _conv2d_preact_fake(input, weight, bias, stride, padding, dilation, groups, activation, residual=None):
    return (_empty_output(input, weight, stride, padding, dilation, groups),
            _empty_output(input, weight, stride, padding, dilation, groups))


# --------------------------------------------------------------------------- backward ops
# Each returns the layout that mcconv.ops documents (channels_last dL/dinput and dL/dz when
# grad_z / grad_y suggests channels_last, else contiguous); the fakes state it, and _in_layout
# only guards it, since under torch.compile a custom op's real strides must match its fake's.

def _format_of(t: Tensor):
    return torch.channels_last if follows_channels_last(t) else torch.contiguous_format


def _in_layout(t: Tensor, memory_format) -> Tensor:
    return t if t.is_contiguous(memory_format=memory_format) else t.contiguous(memory_format=memory_format)


def _empty_like_layout(t: Tensor) -> Tensor:
    return torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=_format_of(t))


@torch.library.custom_op("mcconv::conv2d_input_grad", mutates_args=())
def conv2d_input_grad_op(grad_z: Tensor, weight: Tensor, input_shape: list[int], stride: list[int],
                         padding: list[int], dilation: list[int], groups: int) -> Tensor:
    """dL/dinput of the convolution, given dL/dz."""
    grad = ops.conv2d_input_grad(grad_z, weight, tuple(input_shape), tuple(stride), tuple(padding),
                                       tuple(dilation), groups)
    return _in_layout(grad, _format_of(grad_z))


@conv2d_input_grad_op.register_fake
def _input_grad_fake(grad_z, weight, input_shape, stride, padding, dilation, groups):
    return torch.empty(input_shape, dtype=grad_z.dtype, device=grad_z.device, memory_format=_format_of(grad_z))


@torch.library.custom_op("mcconv::conv2d_weight_grad", mutates_args=())
def conv2d_weight_grad_op(grad_z: Tensor, input: Tensor, weight_shape: list[int], stride: list[int],
                          padding: list[int], dilation: list[int], groups: int) -> Tensor:
    """dL/dweight of the convolution, given dL/dz (contiguous)."""
    grad = ops.conv2d_weight_grad(grad_z, input, tuple(weight_shape), tuple(stride), tuple(padding),
                                        tuple(dilation), groups)
    return _in_layout(grad, torch.contiguous_format)


@conv2d_weight_grad_op.register_fake
def _weight_grad_fake(grad_z, input, weight_shape, stride, padding, dilation, groups):
    return grad_z.new_empty(weight_shape)


@torch.library.custom_op("mcconv::conv2d_bias_grad", mutates_args=())
def conv2d_bias_grad_op(grad_z: Tensor) -> Tensor:
    """dL/dbias: ``grad_z`` summed over batch and pixels."""
    return ops.conv2d_bias_grad(grad_z)


@conv2d_bias_grad_op.register_fake
def _bias_grad_fake(grad_z):
    return grad_z.new_empty((grad_z.shape[-3],))


@torch.library.custom_op("mcconv::activation_grad", mutates_args=())
def activation_grad_op(grad_y: Tensor, saved: Tensor, activation: str) -> Tensor:
    """dL/dz from dL/dy; ``saved`` is y for relu and z for silu/gelu."""
    if activation == _NO_ACT:  # the launcher returns grad_y itself; an op's output may not alias
        return grad_y.clone(memory_format=_format_of(grad_y))
    return _in_layout(ops.activation_grad(grad_y, saved, activation), _format_of(grad_y))


@activation_grad_op.register_fake
def _activation_grad_fake(grad_y, saved, activation):
    return _empty_like_layout(grad_y)


@torch.library.custom_op("mcconv::activation_bias_grad", mutates_args=())
def activation_bias_grad_op(grad_y: Tensor, saved: Tensor, activation: str) -> tuple[Tensor, Tensor]:
    """``(dL/dz, dL/dbias)`` in one pass over ``grad_y`` (relu, silu or gelu)."""
    grad_z, grad_b = ops.activation_bias_grad(grad_y, saved, activation)
    if grad_z is grad_y:  # activation "none": dL/dz is grad_y itself
        grad_z = grad_y.clone(memory_format=_format_of(grad_y))
    return _in_layout(grad_z, _format_of(grad_y)), grad_b


@activation_bias_grad_op.register_fake
def _activation_bias_grad_fake(grad_y, saved, activation):
    return _empty_like_layout(grad_y), grad_y.new_empty((grad_y.shape[-3],))


# --------------------------------------------------------------------------- autograd
# No double backward: the backward ops have no autograd formulas of their own.

def _setup(ctx, inputs, saved_act, keep_operands=False):
    input, weight, bias, stride, padding, dilation, groups, activation, residual = inputs
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.activation = activation
    ctx.shapes = (list(input.shape), list(weight.shape))
    # dL/dinput needs the weight, dL/dweight the input: keep only what will be used (a frozen
    # layer's input is not held on to).
    needs = ctx.needs_input_grad
    # The residual only matters to a backward that recomputes z (its gradient is dL/dz).
    ctx.save_for_backward(input if needs[1] or keep_operands else None,
                          weight if needs[0] or keep_operands else None, saved_act,
                          residual if keep_operands else None)


def _activation_backward(ctx, grad_y, saved):
    """``(dL/dz, dL/dbias or None)``; the bias sum is fused into the activation's pass."""
    activation, need_bias = ctx.activation, ctx.needs_input_grad[2]
    if activation == _NO_ACT:
        return grad_y, conv2d_bias_grad_op(grad_y) if need_bias else None
    if need_bias:
        return activation_bias_grad_op(grad_y, saved, activation)
    return activation_grad_op(grad_y, saved, activation), None


def _conv_grads(ctx, grad_z, grad_bias):
    """The op's input gradients, given dL/dz: only those autograd asks for.

    dL/dresidual is dL/dz itself (z = conv + bias + residual), of the output's shape and dtype.
    """
    input, weight = ctx.saved_tensors[:2]
    input_shape, weight_shape = ctx.shapes
    stride, padding, dilation, groups = ctx.conv_args
    grad_input = grad_weight = None
    if ctx.needs_input_grad[0]:
        grad_input = conv2d_input_grad_op(grad_z, weight, input_shape, stride, padding, dilation, groups)
    if ctx.needs_input_grad[1]:
        grad_weight = conv2d_weight_grad_op(grad_z, input, weight_shape, stride, padding, dilation, groups)
    # The dispatcher drops a trailing residual=None from the op's arguments, and with it its flag.
    needs = ctx.needs_input_grad
    grad_residual = grad_z if len(needs) > 8 and needs[8] else None
    return grad_input, grad_weight, grad_bias, None, None, None, None, None, grad_residual


def _setup_conv2d(ctx, inputs, output):
    act = _activation(inputs[7])
    # A derivative that reads y gets y. One that reads z, through this op (conv2d() uses
    # conv2d_preact instead; this serves direct calls of torch.ops.mcconv.conv2d), recomputes z
    # in the backward, hence the bias is saved.
    ctx.recompute_z = act is not None and act.needs_preact
    saved = output if act is not None and not act.needs_preact else inputs[2] if ctx.recompute_z else None
    _setup(ctx, inputs, saved, keep_operands=ctx.recompute_z)


def _backward_conv2d(ctx, grad_y):
    saved = ctx.saved_tensors[2]
    if ctx.recompute_z:
        input, weight, bias, residual = ctx.saved_tensors
        saved = conv2d_op(input, weight, bias, *ctx.conv_args, _NO_ACT, residual)
    return _conv_grads(ctx, *_activation_backward(ctx, grad_y, saved))


def _setup_conv2d_preact(ctx, inputs, output):
    # z is usually discarded by the caller: take None for its gradient rather than a zero tensor.
    ctx.set_materialize_grads(False)
    act = _activation(inputs[7])
    y, z = output
    _setup(ctx, inputs, None if act is None else z if act.needs_preact else y)


def _backward_conv2d_preact(ctx, grad_y, grad_z_out):
    if grad_z_out is None:
        if grad_y is None:
            return (None,) * 9
        return _conv_grads(ctx, *_activation_backward(ctx, grad_y, ctx.saved_tensors[2]))
    # z was used too: its gradient adds to the activation's, and the bias sums the total.
    grad_z = grad_z_out
    if grad_y is not None:
        if ctx.activation != _NO_ACT:
            grad_y = activation_grad_op(grad_y, ctx.saved_tensors[2], ctx.activation)
        grad_z = grad_z + grad_y
    return _conv_grads(ctx, grad_z, conv2d_bias_grad_op(grad_z) if ctx.needs_input_grad[2] else None)


conv2d_op.register_autograd(_backward_conv2d, setup_context=_setup_conv2d)
conv2d_preact_op.register_autograd(_backward_conv2d_preact, setup_context=_setup_conv2d_preact)


# --------------------------------------------------------------------------- autocast

def _autocast_cast(t, device_type: str, dtype: torch.dtype):
    """aten's rule for lower-precision ops: floating tensors of that device, except float64."""
    if t is not None and t.is_floating_point() and t.device.type == device_type and t.dtype != torch.float64:
        return t.to(dtype)
    return t


def _register_autocast(op, name: str, device_type: str, lib) -> None:
    key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    keyset = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

    def kernel(_keyset, input, weight, bias, stride, padding, dilation, groups, activation, residual=None):
        # Unlike torch.library.register_autocast (one fixed dtype), follow the context's dtype.
        dtype = torch.get_autocast_dtype(device_type)
        with torch._C._ExcludeDispatchKeyGuard(keyset):
            return op(_autocast_cast(input, device_type, dtype), _autocast_cast(weight, device_type, dtype),
                      _autocast_cast(bias, device_type, dtype), stride, padding, dilation, groups, activation,
                      _autocast_cast(residual, device_type, dtype))

    lib.impl(name, kernel, key, with_keyset=True)


_lib = torch.library.Library("mcconv", "FRAGMENT")  # kept alive: owns the autocast registrations
for _name, _opdef in (("conv2d", conv2d_op), ("conv2d_preact", conv2d_preact_op)):
    for _device_type in ("cuda", "cpu"):
        _register_autocast(_opdef, _name, _device_type, _lib)


# --------------------------------------------------------------------------- Python entry point

def _autocast_dtype(device_type: str):
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except (RuntimeError, TypeError):  # a device type without autocast (e.g. meta)
        pass
    return None


_PLAIN = (Tensor, torch.nn.Parameter)


def _plain_eager(input, weight, bias, residual=None) -> bool:
    """Plain tensors, real devices, no dispatch/function mode, functorch transform or JIT trace
    active: calling the launcher is then exactly what the op would do. Anything else (FakeTensor,
    meta, subclasses, vmap, make_fx, FlopCounterMode, ...) goes through the op and its fake."""
    return (type(input) in _PLAIN and type(weight) in _PLAIN and (bias is None or type(bias) in _PLAIN)
            and (residual is None or type(residual) in _PLAIN)
            and input.device.type != "meta" and torch._C._len_torch_dispatch_stack() == 0
            and not torch._C._is_torch_function_mode_enabled()
            and not torch._C._are_functorch_transforms_active()
            and torch._C._get_tracing_state() is None)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None, residual=None):
    """:func:`mcconv.conv2d`: describe and validate the call once, then run the convolution.

    Eager: the forward plan (cached per kind of call, validated when built) describes the call.
    Without a gradient to take (inference, plain tensors) it launches directly; with one it
    calls ``mcconv::conv2d``, or ``mcconv::conv2d_preact`` when the activation's derivative
    reads z. Under ``torch.compile`` always an op. Under autocast the tensors are cast first, as
    ``aten::conv2d`` casts them, so that the dtype checks see what the kernel will run in.
    """
    if isinstance(input, Tensor) and isinstance(weight, Tensor):
        cast_to = _autocast_dtype(input.device.type)
        if cast_to is not None:  # validate the dtypes the op will run in, as aten::conv2d would
            device_type = input.device.type
            input = _autocast_cast(input, device_type, cast_to)
            weight = _autocast_cast(weight, device_type, cast_to)
            bias = _autocast_cast(bias, device_type, cast_to) if isinstance(bias, Tensor) else bias
            if isinstance(residual, Tensor):
                residual = _autocast_cast(residual, device_type, cast_to)
    compiling = torch.compiler.is_compiling()
    if compiling:
        spec = describe(input, weight, bias, stride, padding, dilation, groups, activation, residual)
    else:
        plan = forward.plan(input, weight, bias, stride, padding, dilation, groups, activation, residual)
        spec = plan.spec
    needs_grad = torch.is_grad_enabled() and (
        input.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
        or (residual is not None and residual.requires_grad))
    if not (compiling or needs_grad) and _plain_eager(input, weight, bias, residual):
        # Inference on plain tensors: the op's Python dispatch would add tens of microseconds per call.
        return forward.run(plan, input, weight, bias, residual)
    act = _NO_ACT if spec.activation is None else spec.activation.name
    args = (spec.stride, spec.padding, spec.dilation, spec.groups, act)
    if needs_grad and spec.activation is not None and spec.activation.needs_preact:
        return conv2d_preact_op(input, weight, bias, *args, residual)[0]
    return conv2d_op(input, weight, bias, *args, residual)
