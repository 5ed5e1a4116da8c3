"""The weight gradient (wgrad): dL/dw from dL/dz and the forward's input.

Operands, in every weight-gradient kernel's pointer order: dL/dz, input x, dL/dw (or its fp32
partial sums). The reduction runs over every output pixel (N*P*Q, long) while the output is
small, so it is split over ``plan.split`` programs into fp32 partial sums [split, *weight_shape]
that ``split_sum_kernel`` adds in increasing order: the same inputs give bitwise the same
gradient on every run (no atomics; the split follows the shapes and the GPU model only).
The result is contiguous.

| kernel            | runs when                 | device code               |
|-------------------|---------------------------|---------------------------|
| `depthwise_wgrad` | groups == in-channels > 1 | kernels/depthwise_bwd.py  |
| `conv_wgrad`      | everything else           | kernels/conv2d_wgrad.py   |
"""
import math

import torch

from .. import _backend, _plan
from .._spec import ConvArgumentError, ConvSpec, check_like, check_tensor
from ..registry import WEIGHT_GRAD, Kernel, dispatch, register

SPLIT_SUM_BLOCK = 1024  # a memory-bound pass over about two waves of tiles: one block size serves


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _geometry(spec) -> tuple:
    return (*spec.stride, spec.padding[0], spec.padding[2], *spec.dilation)


def _partial_stride(spec, split: int) -> int:
    """Elements between two programs' partial buffers; 0 when a single program writes dW itself."""
    return math.prod(spec.weight_shape) if split > 1 else 0


@register
class DepthwiseWgrad(Kernel):
    name = "depthwise_wgrad"
    operation = WEIGHT_GRAD
    jit_name = "depthwise_wgrad_kernel"
    uses_dot = False
    about = "weight gradient of a depthwise convolution, one tap per program, pixels split over programs"

    def applies(self, spec):
        return spec.is_depthwise

    def features(self, spec):
        return spec.n * spec.p * spec.q, spec.k, spec.taps

    def limits(self, spec):
        return {"BLOCK_M": spec.n * spec.p * spec.q, "BLOCK_N": spec.k}

    def grid(self, spec, config, split=1):
        return (_cdiv(spec.k, config["BLOCK_N"]), spec.taps, split)

    def split(self, spec, config, sm_count):
        pixels = spec.n * spec.p * spec.q
        tiles = _cdiv(spec.k, config["BLOCK_N"]) * spec.taps
        return _plan.split_count(tiles, _cdiv(pixels, config["BLOCK_M"]), sm_count) if pixels else 1

    def arguments(self, spec, strides, split=1):
        dw = strides["dw"]
        return ((spec.n, spec.c, spec.h, spec.w, spec.k, spec.p, spec.q, spec.kh, spec.kw, *_geometry(spec),
                 *strides["dy"], *strides["x"], _partial_stride(spec, split), dw[0], dw[2], dw[3]),
                {"CHANNEL_MULT": spec.k // spec.c})

    def loop_trips(self, spec, config, split=1):
        # kernels/depthwise_bwd.py: `for r0 in range(start, end, BLOCK_M)` over one program's share
        return [_cdiv(_cdiv(spec.n * spec.p * spec.q, split), config["BLOCK_M"])]


@register
class ConvWgrad(Kernel):
    name = "conv_wgrad"
    operation = WEIGHT_GRAD
    jit_name = "conv2d_wgrad_kernel"
    about = "weight gradient as a GEMM [K/g, N*P*Q] x [N*P*Q, C/g] per tap, the pixels split over programs"

    def features(self, spec):
        return spec.k_per_group, spec.c_per_group * spec.taps, spec.n * spec.p * spec.q

    def limits(self, spec):
        return {"BLOCK_M": spec.k_per_group, "BLOCK_N": spec.c_per_group, "BLOCK_K": spec.n * spec.p * spec.q}

    def _tiles(self, spec, config):
        return _cdiv(spec.k_per_group, config["BLOCK_M"]) * _cdiv(spec.c_per_group, config["BLOCK_N"]) * spec.taps

    def grid(self, spec, config, split=1):
        return (self._tiles(spec, config), spec.groups, split)

    def split(self, spec, config, sm_count):
        pixels = spec.n * spec.p * spec.q
        tiles = self._tiles(spec, config) * spec.groups
        return _plan.split_count(tiles, _cdiv(pixels, config["BLOCK_K"]), sm_count) if pixels else 1

    def arguments(self, spec, strides, split=1):
        return ((spec.n, spec.c_per_group, spec.h, spec.w, spec.k_per_group, spec.p, spec.q, spec.kh, spec.kw,
                 *_geometry(spec), *strides["dy"], *strides["x"], _partial_stride(spec, split), *strides["dw"]),
                {"IS_1X1": spec.is_1x1_gemm})

    def loop_trips(self, spec, config, split=1):
        # kernels/conv2d_wgrad.py: `for r0 in range(start, end, BLOCK_K)` over one program's share
        # of the pixels (common.py's chunk_bounds: cdiv(cdiv(pixels, split), BLOCK_K) blocks)
        return [_cdiv(_cdiv(spec.n * spec.p * spec.q, split), config["BLOCK_K"])]


# ------------------------------------------------------------------------------------ plans

def plan(grad_z, input, weight_shape, stride=1, padding=0, dilation=1, groups=1,
         device_name: str | None = None, sm_count: int | None = None) -> _plan.Plan:
    """The cached plan of a weight gradient; validates on the first call of a kind."""
    try:
        tf32 = _backend.uses_tf32(input.dtype, input.device)
        key = (WEIGHT_GRAD, _plan.tensor_key(grad_z), _plan.tensor_key(input), tuple(weight_shape),
               _plan.option_key(stride), _plan.option_key(padding), _plan.option_key(dilation),
               _plan.option_key(groups), tf32, device_name, sm_count)
    except (AttributeError, TypeError):
        _check(grad_z, input, weight_shape)
        raise
    return _plan.cached(key, lambda: _build(grad_z, input, weight_shape, stride, padding, dilation, groups, tf32,
                                            device_name, sm_count))


def _check(grad_z, input, weight_shape) -> tuple:
    check_tensor("input", input, (3, 4))
    check_tensor("grad_z", grad_z, (3, 4))
    check_like("grad_z", grad_z, "input", input)
    if grad_z.dim() != input.dim():
        raise ConvArgumentError(f"grad_z: expected a {input.dim()}-D tensor like input, got {grad_z.dim()}-D")
    try:
        weight_shape = tuple(int(s) for s in weight_shape)
    except (TypeError, ValueError):
        raise ConvArgumentError(f"weight_shape: expected a sequence of ints, got {weight_shape!r}") from None
    if len(weight_shape) != 4:
        raise ConvArgumentError(f"weight_shape: expected 4 sizes, got {weight_shape}")
    return weight_shape


def _build(grad_z, input, weight_shape, stride, padding, dilation, groups, tf32, device_name, sm_count):
    weight_shape = _check(grad_z, input, weight_shape)
    spec = ConvSpec.from_shapes(input.shape, weight_shape, stride, padding, dilation, groups, dtype=input.dtype,
                                tf32=tf32)
    if tuple(grad_z.shape) != spec.output_shape:
        raise ConvArgumentError(f"grad_z: expected the convolution's output shape {spec.output_shape}, "
                                f"got {tuple(grad_z.shape)}")
    kernel = dispatch(WEIGHT_GRAD, spec)
    out_strides = _plan.contiguous_strides(weight_shape)
    numel = math.prod(weight_shape)

    operands = [(grad_z.shape, grad_z.stride()), (input.shape, input.stride())]  # metadata: no tensor is kept

    def spans(split):
        return [*operands, ((split * numel,), (1,))]

    strides = {"dy": _plan.batched(grad_z.stride()), "x": _plan.batched(input.stride()), "dw": out_strides}
    return _plan.build(kernel, spec, input.device, _plan.target_of(input.device, device_name, sm_count), strides,
                       out_shape=weight_shape, out_strides=out_strides, spans=spans,
                       launch=numel > 0 and spec.n * spec.p * spec.q > 0)


def split_sum(partial, out, index_64: bool):
    """out = partial.sum(0) over its leading (split) axis in increasing order, cast to out's dtype."""
    from mcconv._kernels import split_sum_kernel

    total = out.numel()
    _backend.launch(split_sum_kernel, (_cdiv(total, SPLIT_SUM_BLOCK),), (partial, out, partial.shape[0], total),
                    {"BLOCK": SPLIT_SUM_BLOCK, "INDEX_64": index_64, "num_warps": 4})


def run(plan: _plan.Plan, grad_z, input):
    """Launch a weight-gradient plan; returns dL/dw (contiguous, the input's dtype)."""
    out = torch.empty(plan.out_shape, dtype=input.dtype, device=input.device)
    if not plan.launch:
        return out.zero_()  # an empty reduction sums to zero
    if input.device.type != "cuda":
        _backend.check_runnable(input.device)
    target = out if plan.split == 1 else torch.empty((plan.split, *out.shape), dtype=torch.float32,
                                                     device=out.device)
    with _backend.launch_guard(input.device):
        _backend.launch(plan.fn, plan.grid, (grad_z, input, target, *plan.args), plan.meta)
        if plan.split > 1:
            split_sum(target, out, plan.index_64)
    return out
