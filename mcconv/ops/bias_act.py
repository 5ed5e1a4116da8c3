"""The epilogue's backward: dL/dz = dL/dy * act'(.) and/or the bias gradient, in one pass.

Operands, in the kernel's pointer order: dL/dy, the saved tensor the activation's derivative
reads (y or z, see mcconv.epilogue), dL/dz (output), dL/dbias (output, or its fp32 partial
sums [split, K] that ``split_sum_kernel`` adds in a fixed order). dL/dz is laid out
channels_last when dL/dy is, else contiguous; dL/dbias is (K,).

| kernel          | runs when | device code         |
|-----------------|-----------|---------------------|
| `bias_act_grad` | always    | kernels/reduce.py   |
"""
import math
from dataclasses import dataclass

import torch

from .. import _backend, _plan
from .._spec import ConvArgumentError, ConvTypeError, check_tensor
from ..epilogue import Activation, activation as _activation
from ..registry import BIAS_ACT_GRAD, Kernel, dispatch, register
from .weight_grad import split_sum


@dataclass(frozen=True)
class EpilogueGradSpec:
    """What the epilogue's backward computes, over a (N, K, P, Q) gradient (3-D when unbatched)."""

    n: int
    k: int
    p: int
    q: int
    dtype: torch.dtype
    activation: Activation | None
    store_grad: bool  # write dL/dz (an activation's derivative applies)
    reduce_bias: bool  # sum dL/dz per channel
    unbatched: bool = False

    @property
    def dtype_key(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@register
class BiasActGrad(Kernel):
    name = "bias_act_grad"
    operation = BIAS_ACT_GRAD
    jit_name = "bias_act_grad_kernel"
    uses_dot = False
    about = "dL/dz = dL/dy * act'(y or z) and/or its per-channel sum, the pixels split over programs"

    def features(self, spec):
        return spec.n * spec.p * spec.q, spec.k, 1

    def limits(self, spec):
        return {"BLOCK_M": spec.n * spec.p * spec.q, "BLOCK_N": spec.k}

    def grid(self, spec, config, split=1):
        return (_cdiv(spec.k, config["BLOCK_N"]), split)

    def split(self, spec, config, sm_count):
        pixels = spec.n * spec.p * spec.q
        if spec.reduce_bias:
            return _plan.split_count(_cdiv(spec.k, config["BLOCK_N"]), _cdiv(pixels, config["BLOCK_M"]), sm_count)
        return max(1, min(_cdiv(pixels, config["BLOCK_M"]), 65535))  # element-wise: one tile of pixels each

    def arguments(self, spec, strides, split=1):
        act = spec.activation
        return ((spec.n, spec.k, spec.p, spec.q, *strides["gy"], *strides["saved"], *strides["gz"],
                 spec.k if split > 1 else 0),
                {"ACTIVATION_GRAD": None if act is None else act.device_grad(), "STORE_GRAD": spec.store_grad,
                 "REDUCE_BIAS": spec.reduce_bias})

    def loop_trips(self, spec, config, split=1):
        # kernels/reduce.py: `for r0 in range(start, end, BLOCK_M)` over one program's share of the pixels
        return [_cdiv(_cdiv(spec.n * spec.p * spec.q, split), config["BLOCK_M"])]


def plan(grad_y, saved, activation, reduce_bias: bool, device_name: str | None = None,
         sm_count: int | None = None, grad_name: str = "grad_y") -> _plan.Plan:
    """The cached plan of the epilogue's backward (activation None: the bias sum only).

    ``grad_name`` is what errors call ``grad_y`` (the bias gradient's caller calls it grad_z).
    """
    try:
        key = (BIAS_ACT_GRAD, _plan.tensor_key(grad_y), _plan.tensor_key(saved), activation, reduce_bias,
               device_name, sm_count)
    except (AttributeError, TypeError):
        _check(grad_y, saved, activation, grad_name)
        raise
    return _plan.cached(key, lambda: _build(grad_y, saved, activation, reduce_bias, device_name, sm_count,
                                            grad_name))


def _check(grad_y, saved, activation, grad_name) -> Activation | None:
    act = _activation(activation)
    check_tensor(grad_name, grad_y, (3, 4))
    if act is not None and saved is None:
        raise ConvArgumentError(f"saved: the backward of {act.name!r} needs the forward's "
                                f"{'pre-activation z' if act.needs_preact else 'output y'}, got None")
    if act is not None:
        check_tensor("saved", saved, (3, 4))
        if saved.shape != grad_y.shape:
            raise ConvArgumentError(f"saved: expected {grad_name}'s shape {tuple(grad_y.shape)}, "
                                    f"got {tuple(saved.shape)}")
        if saved.device != grad_y.device:
            raise ConvTypeError(f"saved: expected {grad_name}'s device {grad_y.device}, got {saved.device}")
    return act


def _build(grad_y, saved, activation, reduce_bias, device_name, sm_count, grad_name):
    act = _check(grad_y, saved, activation, grad_name)
    shape = tuple(grad_y.shape)
    unbatched = len(shape) == 3
    n, k, p, q = (1, *shape) if unbatched else shape
    spec = EpilogueGradSpec(n, k, p, q, grad_y.dtype, act, act is not None, reduce_bias, unbatched)
    kernel = dispatch(BIAS_ACT_GRAD, spec)
    channels_last = _plan.follows_channels_last(grad_y)
    gz_strides = _plan.contiguous_strides(shape, channels_last)
    saved_strides = (0, 0, 0, 0) if act is None else _plan.batched(saved.stride())

    operands = [(shape, grad_y.stride()), (shape, gz_strides)]  # metadata: no tensor is kept
    if act is not None:
        operands.append((shape, saved.stride()))

    def spans(split):
        return [*operands, ((split * k,), (1,))]

    strides = {"gy": _plan.batched(grad_y.stride()), "saved": saved_strides, "gz": _plan.batched(gz_strides)}
    return _plan.build(kernel, spec, grad_y.device, _plan.target_of(grad_y.device, device_name, sm_count), strides,
                       out_shape=shape, out_strides=gz_strides, spans=spans, channels_last=channels_last,
                       launch=math.prod(shape) > 0)


def run(plan: _plan.Plan, grad_y, saved=None):
    """Launch an epilogue-backward plan: ``(dL/dz, dL/dbias)``; dL/dz is grad_y itself without an
    activation, dL/dbias None unless the plan reduces the bias."""
    spec = plan.spec
    grad_z = (torch.empty_strided(plan.out_shape, plan.out_strides, dtype=grad_y.dtype, device=grad_y.device)
              if spec.store_grad else grad_y)
    grad_b = torch.empty((spec.k,), dtype=grad_y.dtype, device=grad_y.device) if spec.reduce_bias else None
    if not plan.launch:
        if grad_b is not None:
            grad_b.zero_()  # an empty reduction sums to zero
        return grad_z, grad_b
    if grad_y.device.type != "cuda":
        _backend.check_runnable(grad_y.device)
    target = grad_b
    if grad_b is None:
        target = grad_z  # not written (REDUCE_BIAS=False): any pointer
    elif plan.split > 1:
        target = torch.empty((plan.split, spec.k), dtype=torch.float32, device=grad_y.device)
    with _backend.launch_guard(grad_y.device):
        _backend.launch(plan.fn, plan.grid, (grad_y, grad_y if saved is None else saved, grad_z, target, *plan.args),
                        plan.meta)
        if grad_b is not None and plan.split > 1:
            split_sum(target, grad_b, plan.index_64)
    return grad_z, grad_b
