"""The forward convolution: ``y = act(conv2d(x, w) + bias + residual)`` in one kernel.

Operands, in every forward kernel's pointer order: input x, weight w, bias, output y,
pre-activation z (stored only when the backward needs it), residual r.

| kernel        | runs when                                  | device code              |
|---------------|--------------------------------------------|--------------------------|
| `gemm_1x1`    | 1x1 kernel, stride 1, no padding           | kernels/conv1x1_gemm.py  |
| `depthwise`   | groups == in-channels > 1                  | kernels/depthwise.py     |
| `conv_direct` | everything else (implicit GEMM)            | kernels/conv2d_fwd.py    |
"""
import math

import torch

from .. import _backend, _pack, _plan
from .._spec import describe
from ..registry import FORWARD, Kernel, dispatch, register


def _epilogue(spec) -> dict:
    act = spec.activation
    return {"HAS_BIAS": spec.has_bias, "ACTIVATION": None if act is None else act.device(),
            "STORE_PREACT": False, "HAS_RESIDUAL": spec.has_residual}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@register
class Gemm1x1(Kernel):
    name = "gemm_1x1"
    operation = FORWARD
    jit_name = "conv1x1_gemm_kernel"
    about = "1x1 convolution as a GEMM [N*H*W, C/g] x [C/g, K/g] per group"

    def applies(self, spec):
        return spec.is_1x1_gemm

    def features(self, spec):
        return spec.n * spec.p * spec.q, spec.k_per_group, spec.c_per_group

    def limits(self, spec):
        return {"BLOCK_M": spec.n * spec.p * spec.q, "BLOCK_N": spec.k_per_group, "BLOCK_K": spec.c_per_group}

    def grid(self, spec, config, split=1):
        m = spec.n * spec.p * spec.q
        return (_cdiv(m, config["BLOCK_M"]) * _cdiv(spec.k_per_group, config["BLOCK_N"]), spec.groups)

    def arguments(self, spec, strides, split=1):
        w = strides["w"]
        # The weight as a [C/g, K/g] matrix per group: reduction along dim 1, columns along dim 0.
        return ((spec.n, spec.p, spec.q, spec.c_per_group, spec.k_per_group, *strides["x"],
                 w[0], w[1], spec.k_per_group * w[0], *strides["y"], *strides["r"]), _epilogue(spec))

    def loop_trips(self, spec, config, split=1):
        # kernels/conv1x1_gemm.py: `for c0 in range(0, C_PER_GROUP, BLOCK_K)`
        return [_cdiv(spec.c_per_group, config["BLOCK_K"])]


@register
class Depthwise(Kernel):
    name = "depthwise"
    operation = FORWARD
    jit_name = "conv2d_depthwise_kernel"
    uses_dot = False
    about = "depthwise convolution (groups == C, any channel multiplier), element-wise on the CUDA cores"

    def applies(self, spec):
        return spec.is_depthwise

    def features(self, spec):
        return spec.n * spec.p * spec.q, spec.k, spec.taps

    def limits(self, spec):
        return {"BLOCK_M": spec.n * spec.p * spec.q, "BLOCK_N": spec.k}

    def grid(self, spec, config, split=1):
        return (_cdiv(spec.n * spec.p * spec.q, config["BLOCK_M"]), _cdiv(spec.k, config["BLOCK_N"]))

    def arguments(self, spec, strides, split=1):
        w = strides["w"]
        return ((spec.n, spec.c, spec.h, spec.w, spec.k, spec.p, spec.q, spec.kh, spec.kw, *spec.stride,
                 spec.padding[0], spec.padding[2], *spec.dilation, *strides["x"], w[0], w[2], w[3],
                 *strides["y"], *strides["r"]), {"CHANNEL_MULT": spec.k // spec.c, **_epilogue(spec)})

    def loop_trips(self, spec, config, split=1):
        return [spec.taps]  # kernels/depthwise.py: `for tap in range(0, KH * KW)`, its only loop


@register
class ConvDirect(Kernel):
    name = "conv_direct"
    operation = FORWARD
    jit_name = "conv2d_fwd_kernel"
    about = "direct convolution as an implicit GEMM [N*P*Q, KH*KW*C/g] x [KH*KW*C/g, K/g] per group"

    def features(self, spec):
        return spec.n * spec.p * spec.q, spec.k_per_group, spec.c_per_group * spec.taps

    def limits(self, spec):
        return {"BLOCK_M": spec.n * spec.p * spec.q, "BLOCK_N": spec.k_per_group, "BLOCK_K": spec.c_per_group}

    def grid(self, spec, config, split=1):
        m = spec.n * spec.p * spec.q
        return (_cdiv(m, config["BLOCK_M"]) * _cdiv(spec.k_per_group, config["BLOCK_N"]), spec.groups)

    def arguments(self, spec, strides, split=1):
        return ((spec.n, spec.c_per_group, spec.h, spec.w, spec.k_per_group, spec.p, spec.q, spec.kh, spec.kw,
                 *spec.stride, spec.padding[0], spec.padding[2], *spec.dilation, *strides["x"], *strides["w"],
                 *strides["y"], *strides["r"]), _epilogue(spec))

    def loop_trips(self, spec, config, split=1):
        # kernels/conv2d_fwd.py: reduce_channels' `for c0 in range(0, C_PER_GROUP, BLOCK_K)`, called
        # in `for tap in range(0, KH * KW)`
        return [_cdiv(spec.c_per_group, config["BLOCK_K"]), spec.taps]


# ------------------------------------------------------------------------------------ plans

def plan(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None, residual=None,
         device_name: str | None = None, sm_count: int | None = None) -> _plan.Plan:
    """The cached plan of a forward call; validates (and raises) on the first call of a kind.

    ``device_name`` and ``sm_count`` plan for another GPU model than the tensors' (explain, inspect).
    """
    try:
        tf32 = _backend.uses_tf32(input.dtype, input.device)
        key = (FORWARD, input.shape, input.stride(), input.dtype, input.device, weight.shape, weight.stride(),
               weight.dtype, weight.device, _plan.tensor_key(bias), _plan.tensor_key(residual),
               _plan.option_key(stride), _plan.option_key(padding), _plan.option_key(dilation),
               _plan.option_key(groups), activation, tf32, device_name, sm_count)
    except (AttributeError, TypeError):  # not tensors: validation raises the error that says so
        describe(input, weight, bias, stride, padding, dilation, groups, activation, residual)
        raise
    return _plan.cached(key, lambda: _build(input, weight, bias, stride, padding, dilation, groups, activation,
                                            residual, tf32, device_name, sm_count))


def _build(input, weight, bias, stride, padding, dilation, groups, activation, residual, tf32, device_name,
           sm_count):
    spec = describe(input, weight, bias, stride, padding, dilation, groups, activation, residual, tf32=tf32)
    kernel = dispatch(FORWARD, spec)
    out_shape = spec.output_shape
    out_strides = _plan.contiguous_strides(out_shape, spec.channels_last)
    w_strides = tuple(weight.stride())
    pack = kernel.name == "conv_direct" and _pack.worth_packing(w_strides) and _pack.enabled()
    if pack:
        w_strides = _pack.packed_strides(tuple(weight.shape))
    r_strides = (0, 0, 0, 0) if residual is None else _plan.batched(residual.stride())  # placeholders without one
    spans = [(input.shape, input.stride()), (weight.shape, w_strides), (out_shape, out_strides)]
    if residual is not None:
        spans.append((residual.shape, residual.stride()))
    strides = {"x": _plan.batched(input.stride()), "w": w_strides, "y": _plan.batched(out_strides), "r": r_strides}
    result = _plan.build(kernel, spec, input.device, _plan.target_of(input.device, device_name, sm_count), strides,
                         out_shape=out_shape, out_strides=out_strides, spans=lambda split: spans,
                         channels_last=spec.channels_last, launch=math.prod(out_shape) > 0, pack_weight=pack)
    if device_name is None and sm_count is None:
        # The custom op calls back with the normalised arguments: let that find this plan too.
        _plan.remember((FORWARD, input.shape, input.stride(), input.dtype, input.device, weight.shape,
                        weight.stride(), weight.dtype, weight.device, _plan.tensor_key(bias),
                        _plan.tensor_key(residual), spec.stride, spec.padding, spec.dilation, spec.groups, activation,
                        tf32, None, None), result)
    return result


def run(plan: _plan.Plan, input, weight, bias=None, residual=None, preact: bool = False):
    """Launch a forward plan: ``y``, or ``(y, z)`` with ``preact`` (z is y without an activation)."""
    y = torch.empty_strided(plan.out_shape, plan.out_strides, dtype=input.dtype, device=input.device)
    store_z = preact and plan.spec.activation is not None
    z = torch.empty_strided(plan.out_shape, plan.out_strides, dtype=input.dtype, device=input.device) if store_z else y
    if plan.launch:
        if input.device.type != "cuda":
            _backend.check_runnable(input.device)
        if plan.pack_weight:
            weight = _pack.packed(weight)
        # The kernels index the bias with unit stride; a strided view (e.g. b[::2]) needs a copy.
        bias = weight if bias is None else bias.contiguous()
        meta = {**plan.meta, "STORE_PREACT": True} if store_z else plan.meta
        residual = weight if residual is None else residual  # any pointer without one
        if _backend.CAPTURING[0]:
            _backend.launch(plan.fn, plan.grid, (input, weight, bias, y, z, residual, *plan.args), meta)
        else:  # the inference hot path: straight to Triton
            with _backend.launch_guard(input.device):
                plan.fn[plan.grid](input, weight, bias, y, z, residual, *plan.args, **meta)
    return (y, z) if preact else y
