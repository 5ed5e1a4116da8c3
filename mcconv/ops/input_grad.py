"""The input gradient (dgrad): dL/dx from dL/dz (z the convolution's output before the
activation) and the weight.

Operands, in every input-gradient kernel's pointer order: dL/dz, weight, dL/dx (output).
The result is laid out channels_last when dL/dz is (torch's suggested format), else contiguous.

| kernel            | runs when                          | device code                                 |
|-------------------|------------------------------------|---------------------------------------------|
| `gemm_1x1_dgrad`  | 1x1 kernel, stride 1, no padding   | kernels/conv1x1_gemm.py (W read transposed) |
| `depthwise_dgrad` | groups == in-channels > 1          | kernels/depthwise_bwd.py                    |
| `conv_dgrad`      | everything else                    | kernels/conv2d_dgrad.py                     |

`gemm_1x1_dgrad` reads `gemm_1x1`'s tile table: the same GEMM as the forward's.
"""
import math

import torch

from .. import _backend, _plan
from .._spec import ConvArgumentError, ConvSpec, check_like, check_tensor
from ..registry import INPUT_GRAD, Kernel, dispatch, register


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _geometry(spec) -> tuple:
    return (*spec.stride, spec.padding[0], spec.padding[2], *spec.dilation)


def _phase_taps(spec) -> int:
    """Taps that reach the rows of the stride phase with the most of them (kernels/common.py's
    transposed_tap): the taps a tile of that phase runs; the others are skipped whole (loop_trips)."""
    def most(size, stride, pad, dil, taps):
        return max(sum((ph + pad - t * dil) % stride == 0 for t in range(taps)) for ph in range(min(stride, size)))

    return (most(spec.h, spec.stride[0], spec.padding[0], spec.dilation[0], spec.kh)
            * most(spec.w, spec.stride[1], spec.padding[2], spec.dilation[1], spec.kw))


@register
class Gemm1x1Dgrad(Kernel):
    name = "gemm_1x1_dgrad"
    operation = INPUT_GRAD
    jit_name = "conv1x1_gemm_kernel"
    table = "gemm_1x1"  # the same GEMM as the forward's: [N*H*W, K/g] x [K/g, C/g]
    about = "input gradient of a 1x1 convolution: the GEMM dX = dY @ W per group"

    def applies(self, spec):
        return spec.is_1x1_gemm

    def features(self, spec):
        return spec.n * spec.h * spec.w, spec.c_per_group, spec.k_per_group

    def limits(self, spec):
        return {"BLOCK_M": spec.n * spec.h * spec.w, "BLOCK_N": spec.c_per_group, "BLOCK_K": spec.k_per_group}

    def grid(self, spec, config, split=1):
        return (_cdiv(spec.n * spec.h * spec.w, config["BLOCK_M"]) * _cdiv(spec.c_per_group, config["BLOCK_N"]),
                spec.groups)

    def pointers(self, grad_z, weight, grad_input):
        # The GEMM's forward pointers (x, w, bias, y, z, residual): no bias, z or residual is read.
        return grad_z, weight, weight, grad_input, grad_input, grad_input

    def arguments(self, spec, strides, split=1):
        w = strides["w"]
        # dY plays the GEMM's X (reduction: K/g), dX its Y (columns: C/g); W's rows (out channels)
        # are the reduction, its columns (in channels) the GEMM's columns; groups step along W's rows.
        return ((spec.n, spec.h, spec.w, spec.k_per_group, spec.c_per_group, *strides["dy"], w[1], w[0],
                 spec.k_per_group * w[0], *strides["dx"], 0, 0, 0, 0),
                {"HAS_BIAS": False, "ACTIVATION": None, "STORE_PREACT": False, "HAS_RESIDUAL": False})

    def loop_trips(self, spec, config, split=1):
        # kernels/conv1x1_gemm.py: `for c0 in range(0, C_PER_GROUP, BLOCK_K)`, here over K/g
        return [_cdiv(spec.k_per_group, config["BLOCK_K"])]


@register
class DepthwiseDgrad(Kernel):
    name = "depthwise_dgrad"
    operation = INPUT_GRAD
    jit_name = "depthwise_dgrad_kernel"
    uses_dot = False
    about = "input gradient of a depthwise convolution, element-wise, rows split by stride phase"

    def applies(self, spec):
        return spec.is_depthwise

    def features(self, spec):
        return spec.n * spec.h * spec.w, spec.c, spec.taps * (spec.k // spec.c)

    def limits(self, spec):
        return {"BLOCK_M": spec.n * spec.h * spec.w, "BLOCK_N": spec.c}

    def grid(self, spec, config, split=1):
        sh, sw = spec.stride
        phase_rows = spec.n * _cdiv(spec.h, sh) * _cdiv(spec.w, sw)
        return (_cdiv(phase_rows, config["BLOCK_M"]) * sh * sw, _cdiv(spec.c, config["BLOCK_N"]))

    def arguments(self, spec, strides, split=1):
        w = strides["w"]
        return ((spec.n, spec.c, spec.h, spec.w, spec.k, spec.p, spec.q, spec.kh, spec.kw, *_geometry(spec),
                 *strides["dy"], w[0], w[2], w[3], *strides["dx"]), {"CHANNEL_MULT": spec.k // spec.c})

    def loop_trips(self, spec, config, split=1):
        # kernels/depthwise_bwd.py: `for j in range(0, CHANNEL_MULT)` under `if tap_ok` in `for tap in
        # range(0, KH * KW)`, counting the taps of the fullest phase; a constexpr range of one
        # iteration compiles to no loop, so multiplier 1 leaves the tap loop alone.
        mult = spec.k // spec.c
        return [mult, _phase_taps(spec)] if mult > 1 else [_phase_taps(spec)]


@register
class ConvDgrad(Kernel):
    name = "conv_dgrad"
    operation = INPUT_GRAD
    jit_name = "conv2d_dgrad_kernel"
    about = "input gradient as the transposed implicit GEMM, rows split by stride phase (no zero insertion)"

    def features(self, spec):
        return spec.n * spec.h * spec.w, spec.c_per_group, spec.k_per_group * spec.taps

    def limits(self, spec):
        return {"BLOCK_M": spec.n * spec.h * spec.w, "BLOCK_N": spec.c_per_group, "BLOCK_K": spec.k_per_group}

    def grid(self, spec, config, split=1):
        sh, sw = spec.stride
        # Rows are split by stride phase: per phase at most cdiv(H, sh) x cdiv(W, sw) pixels.
        phase_rows = spec.n * _cdiv(spec.h, sh) * _cdiv(spec.w, sw)
        return (_cdiv(phase_rows, config["BLOCK_M"]) * _cdiv(spec.c_per_group, config["BLOCK_N"]) * sh * sw,
                spec.groups)

    def arguments(self, spec, strides, split=1):
        return ((spec.n, spec.c_per_group, spec.h, spec.w, spec.k_per_group, spec.p, spec.q, spec.kh, spec.kw,
                 *_geometry(spec), *strides["dy"], *strides["w"], *strides["dx"]), {})

    def loop_trips(self, spec, config, split=1):
        # kernels/conv2d_dgrad.py: `for k0 in range(0, K_PER_GROUP, BLOCK_K)` under `if tap_ok` in
        # `for tap in range(0, KH * KW)`: the taps of the fullest stride phase (all taps at stride 1)
        return [_cdiv(spec.k_per_group, config["BLOCK_K"]), _phase_taps(spec)]


# ------------------------------------------------------------------------------------ plans

def plan(grad_z, weight, input_shape, stride=1, padding=0, dilation=1, groups=1,
         device_name: str | None = None, sm_count: int | None = None) -> _plan.Plan:
    """The cached plan of an input gradient; validates on the first call of a kind."""
    try:
        tf32 = _backend.uses_tf32(grad_z.dtype, grad_z.device)
        key = (INPUT_GRAD, _plan.tensor_key(grad_z), _plan.tensor_key(weight), tuple(input_shape),
               _plan.option_key(stride), _plan.option_key(padding), _plan.option_key(dilation),
               _plan.option_key(groups), tf32, device_name, sm_count)
    except (AttributeError, TypeError):
        _check(grad_z, weight, input_shape)
        raise
    return _plan.cached(key, lambda: _build(grad_z, weight, tuple(input_shape), stride, padding, dilation, groups,
                                            tf32, device_name, sm_count))


def _check(grad_z, weight, input_shape) -> tuple:
    check_tensor("grad_z", grad_z, (3, 4))
    check_tensor("weight", weight, (4,), "a 4-D (out_channels, in_channels/groups, kH, kW)")
    check_like("weight", weight, "grad_z", grad_z)
    try:
        input_shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ConvArgumentError(f"input_shape: expected a sequence of ints, got {input_shape!r}") from None
    if len(input_shape) != grad_z.dim():
        raise ConvArgumentError(f"input_shape: expected {grad_z.dim()} sizes like grad_z, got {input_shape}")
    return input_shape


def _build(grad_z, weight, input_shape, stride, padding, dilation, groups, tf32, device_name, sm_count):
    input_shape = _check(grad_z, weight, input_shape)
    spec = ConvSpec.from_shapes(input_shape, weight.shape, stride, padding, dilation, groups, dtype=grad_z.dtype,
                                tf32=tf32)
    if tuple(grad_z.shape) != spec.output_shape:
        raise ConvArgumentError(f"grad_z: expected the convolution's output shape {spec.output_shape}, "
                                f"got {tuple(grad_z.shape)}")
    kernel = dispatch(INPUT_GRAD, spec)
    channels_last = _plan.follows_channels_last(grad_z)
    out_strides = _plan.contiguous_strides(input_shape, channels_last)
    spans = [(grad_z.shape, grad_z.stride()), (weight.shape, weight.stride()), (input_shape, out_strides)]
    strides = {"dy": _plan.batched(grad_z.stride()), "w": tuple(weight.stride()), "dx": _plan.batched(out_strides)}
    return _plan.build(kernel, spec, grad_z.device, _plan.target_of(grad_z.device, device_name, sm_count), strides,
                       out_shape=input_shape, out_strides=out_strides, spans=lambda split: spans,
                       channels_last=channels_last, launch=math.prod(input_shape) > 0)


def run(plan: _plan.Plan, grad_z, weight):
    """Launch an input-gradient plan; returns dL/dx."""
    dx = torch.empty_strided(plan.out_shape, plan.out_strides, dtype=grad_z.dtype, device=grad_z.device)
    if not plan.launch:
        return dx.zero_()  # an empty reduction (no output channels) sums to zero
    if grad_z.device.type != "cuda":
        _backend.check_runnable(grad_z.device)
    with _backend.launch_guard(grad_z.device):
        _backend.launch(plan.fn, plan.grid, (*plan.kernel.pointers(grad_z, weight, dx), *plan.args), plan.meta)
    return dx
