"""The 3-D forward convolution with a depth axis: ``y = act(conv3d(x, w) + bias + residual)`` in one kernel.

| kernel          | runs when                                                   | device code           |
|-----------------|-------------------------------------------------------------|-----------------------|
| `conv3d_direct` | conv3d with >= DEPTH_MIN_CHANNELS input channels per group  | kernels/conv3d_fwd.py |

mcconv/conv3d.py validates a call, describes it (:class:`mcconv._spec.Conv3dSpec`) and decides
between this kernel and its depth im2col onto the 2-D kernels (few channels per group, where
the im2col's ``C * kD`` channels fill the tensor cores' reduction better). The plan is the one
:class:`mcconv._plan.Plan` type, in the one plan cache; the tiles are conv_direct's (the same
loop with one more axis, the same (M, N, R) features).
"""
import math

import torch

from .. import _backend, _pack, _plan
from .._spec import Conv3dSpec
from ..registry import FORWARD, Kernel, register
from .forward import ConvDirect, _cdiv, _epilogue, _pow2_dividing, _reachable, _row_align, _vector

DEPTH_MIN_CHANNELS = 16  # input channels per group from which conv3d takes the depth kernel


@register
class Conv3dDirect(Kernel):
    """kernels/conv3d_fwd.py's conv3d_fwd_kernel: conv_direct's tap loop with a depth axis.

    Operands as conv_direct reads them, in 3-D: the input channels_last_3d (a per-call copy of
    any other layout), the weight with its input channels at unit stride ((K, kD, kH, kW, C/g),
    a channels_last_3d weight read in place; other weights copied per call unless
    MCCONV_PACK_WEIGHTS=0). Outputs and residuals of any strides (an NCDHW output stores element
    by element: its tiles are capped at 64 x 64)."""

    name = "conv3d_direct"
    operation = FORWARD
    jit_name = "conv3d_fwd_kernel"
    table = "conv_direct"
    about = "3-D direct convolution as an implicit GEMM [N*D*P*Q, KD*KH*KW*C/g] x [KD*KH*KW*C/g, K/g] per group"

    def applies(self, spec):
        return isinstance(spec, Conv3dSpec)  # 2-D calls never reach it: conv_direct takes them all first

    def features(self, spec):
        return spec.pixels, spec.k_per_group, spec.c_per_group * spec.taps

    def limits(self, spec):
        limits = {"BLOCK_M": spec.pixels, "BLOCK_N": spec.k_per_group, "BLOCK_K": spec.c_per_group}
        if spec.dtype is None:
            return limits
        limits["BLOCK_K"] = min(spec.c_per_group, ConvDirect.BLOCK_K_BYTES // spec.dtype.itemsize)
        heavy = (spec.activation.name if spec.activation else None) not in ConvDirect.LIGHT_ACTIVATIONS
        if not spec.channels_last:  # element-wise stores (conv_direct's NCHW rule without pixel runs)
            limits["BLOCK_M"] = min(limits["BLOCK_M"], 64)
            limits["BLOCK_N"] = min(limits["BLOCK_N"], 64)
            if spec.dtype.itemsize > 2 and (heavy or spec.has_residual):
                # fp32 operands, a 5-D residual and silu/gelu: 255 registers and 16 spilled bytes at
                # BLOCK_K 32 (triton 3.9); 16 keeps them in registers
                limits["BLOCK_K"] = min(limits["BLOCK_K"], 16)
        elif (heavy or spec.has_residual or spec.dtype.itemsize > 2) and spec.k_per_group > 64:
            limits["BLOCK_M"] = min(limits["BLOCK_M"], 64)
        return limits

    def grid(self, spec, config, split=1):
        return (_cdiv(spec.pixels, config["BLOCK_M"]) * _cdiv(spec.k_per_group, config["BLOCK_N"]), spec.groups)

    def arguments(self, spec, strides, split=1):
        vec = _vector(spec)
        x = _reachable((spec.n, spec.c, spec.d, spec.h, spec.w), strides["x"])  # c: the group offset too
        w = _reachable(spec.weight_shape, strides["w"])
        taps = spec.taps
        out = (spec.n, spec.k, spec.od, spec.p, spec.q)
        meta = {"KD": spec.kd, "KH": spec.kh, "KW": spec.kw,
                "TAP_BITS": 32 if taps <= 32 else 64 if taps <= 64 else 0,
                "X_ALIGN": _pow2_dividing(x[0], *x[2:], spec.c_per_group * (spec.groups > 1), cap=vec)
                if x[1] == 1 else 1,
                "W_ALIGN": _pow2_dividing(w[0], *w[2:], cap=vec) if w[1] == 1 else 1,
                "C_ALIGN": _pow2_dividing(spec.c_per_group, cap=256),
                "Y_DENSE": _dense_voxels(spec, strides["y"]),
                "R_DENSE": spec.has_residual and _dense_voxels(spec, strides["r"]),
                "Y_ALIGN": _row_align(spec, out, strides["y"], vec),
                "R_ALIGN": _row_align(spec, out, strides["r"], vec) if spec.has_residual else 1}
        front, _, top, _, left, _ = spec.padding
        return ((spec.n, spec.c_per_group, spec.d, spec.h, spec.w, spec.k_per_group, spec.od, spec.p, spec.q,
                 *spec.stride, front, top, left, *spec.dilation, *x, *w, *strides["y"], *strides["r"]),
                {**meta, **_epilogue(spec)})

    def loop_trips(self, spec, config, split=1):
        return [spec.taps * _cdiv(spec.c_per_group, config["BLOCK_K"])]


KERNEL = Conv3dDirect.name


def _dense_voxels(spec, strides) -> bool:
    """Whether an output-shaped operand's (batched strides (n, k, d, h, w)) voxel m = ((n * OD + d)
    * P + p) * Q + q sits at m * (its w stride): each pixel axis steps by the next one's extent
    (a channels_last_3d tensor); axes of one element never move an address."""
    sn, _, sd, sh, sw = strides
    return all(size == 1 or stride == step for size, stride, step in (
        (spec.n, sn, spec.od * spec.p * spec.q * sw), (spec.od, sd, spec.p * spec.q * sw), (spec.p, sh, spec.q * sw)))


def contiguous_strides(shape, channels_last: bool) -> tuple:
    """Strides of a new 5-D tensor of ``shape``, channels_last_3d or contiguous."""
    n, c, d, h, w = shape
    if channels_last:
        return (d * h * w * c, 1, h * w * c, w * c, c)
    return (c * d * h * w, d * h * w, h * w, w, 1)


def _batched(strides) -> tuple:
    return (0, *strides) if len(strides) == 4 else tuple(strides)


def plan(spec: Conv3dSpec, input, weight, residual=None, device_name: str | None = None,
         sm_count: int | None = None) -> _plan.Plan:
    """The cached plan of a validated conv3d call (``spec``) on these tensors' layouts."""
    key = (KERNEL, spec, input.stride(), input.device, weight.stride(), _plan.tensor_key(residual), device_name,
           sm_count)
    return _plan.cached(key, lambda: _build(spec, input, weight, residual, device_name, sm_count))


def _build(spec, input, weight, residual, device_name, sm_count):
    kernel = Conv3dDirect()
    x_shape = (spec.n, spec.c, spec.d, spec.h, spec.w)
    x_strides = _batched(input.stride())
    copy_input = spec.c_per_group > 1 and x_strides[1] != 1
    if copy_input:  # channels at unit stride: one read and write of the input, then 16-byte rows
        x_strides = contiguous_strides(x_shape, True)
    w_strides = tuple(weight.stride())
    pack = _pack.enabled() and spec.c_per_group > 1 and w_strides[1] != 1
    if pack:
        w_strides = contiguous_strides(spec.weight_shape, True)
    out_shape = spec.output_shape
    out_strides = contiguous_strides((spec.n, *out_shape[-4:]), spec.channels_last)
    if spec.unbatched:
        out_strides = out_strides[1:]
    r_strides = (0,) * 5 if residual is None else _batched(residual.stride())
    operands = [(input.shape, input.stride()), (x_shape, x_strides), (weight.shape, weight.stride()),
                (spec.weight_shape, w_strides), (out_shape, out_strides)]
    if residual is not None:
        operands.append((residual.shape, residual.stride()))
    strides = {"x": x_strides, "w": w_strides, "y": _batched(out_strides), "r": r_strides}
    return _plan.build(kernel, spec, input.device, _plan.target_of(input.device, device_name, sm_count), strides,
                       out_shape=out_shape, out_strides=out_strides, spans=lambda split: operands,
                       channels_last=spec.channels_last, launch=math.prod(out_shape) > 0, pack_weight=pack,
                       extra={"input_copy": "channels_last_3d"} if copy_input else {})


def _channels_last_3d(t: torch.Tensor) -> torch.Tensor:
    """A fresh channels_last_3d copy of a 5-D tensor, or of a 4-D (C, D, H, W) one."""
    if t.dim() == 4:
        return t.unsqueeze(0).contiguous(memory_format=torch.channels_last_3d).squeeze(0)
    return t.contiguous(memory_format=torch.channels_last_3d)


def run(plan: _plan.Plan, input, weight, bias=None, residual=None, preact: bool = False):
    """Launch a conv3d plan: ``y``, or ``(y, z)`` with ``preact`` (z is y without an activation).
    The copies the plan asks for are made here, per call, from the tensors' current values."""
    y = torch.empty_strided(plan.out_shape, plan.out_strides, dtype=input.dtype, device=input.device)
    store_z = preact and plan.spec.activation is not None
    z = torch.empty_strided(plan.out_shape, plan.out_strides, dtype=input.dtype, device=input.device) if store_z else y
    if plan.launch:
        if input.device.type != "cuda":
            _backend.check_runnable(input.device)
        if plan.extra:
            input = _channels_last_3d(input)
        if plan.pack_weight:
            weight = _channels_last_3d(weight)
        bias = weight if bias is None else bias.contiguous()
        meta = {**plan.meta, "STORE_PREACT": True} if store_z else plan.meta
        residual = weight if residual is None else residual
        if _backend.CAPTURING[0]:
            _backend.launch(plan.fn, plan.grid, (input, weight, bias, y, z, residual, *plan.args), meta)
        else:
            with _backend.launch_guard(input.device):
                plan.fn[plan.grid](input, weight, bias, y, z, residual, *plan.args, **meta)
    return (y, z) if preact else y
