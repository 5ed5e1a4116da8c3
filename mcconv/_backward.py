"""Backward launchers: every gradient of the convolution, computed by mcconv's Triton kernels.

* :func:`conv2d_input_grad` (dgrad): the transposed convolution of dL/dz with the weight, by
  ``conv2d_igemm_kernel`` with ``TRANSPOSED`` (the forward's source; 1x1 stride-1 layers as its
  ``IS_1X1`` GEMM) or, for depthwise layers, ``depthwise_dgrad_kernel``.
* :func:`conv2d_weight_grad` (wgrad): ``conv2d_wgrad_kernel`` / ``depthwise_wgrad_kernel``, the
  N*P*Q-long reduction split over programs into fp32 partial sums that ``split_sum_kernel`` adds
  in a fixed order.
* :func:`conv2d_bias_grad`, :func:`activation_grad`, :func:`activation_bias_grad`:
  ``bias_act_grad_kernel`` (dL/dz = dL/dy * act'(z) and/or its per-channel sum).

No atomics: the same inputs give bitwise the same gradients on every run (on one GPU model: the
split count follows the number of SMs). As in :mod:`mcconv._launch`, everything that depends only
on shapes, strides, dtypes and options is computed once into a cached plan; tile configurations
come from ``autotune_configs/<kernel>/`` through :func:`mcconv._config.select_config`.
"""
import functools
import math
import types
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
import triton

from . import _backend, _config, _launch
from ._launch import Dispatch, _channels_last, _hashable, _out_strides, _span
from ._validate import FLOAT_DTYPES, check_activation, conv_geometry

_PREACT = ("silu", "gelu")  # activations whose derivative needs z, not y
_SPLIT_SUM_BLOCK = 1024
_MAX_GRID_YZ = 65535  # CUDA's limit on grid axes 1 and 2


def needs_preact(activation) -> bool:
    """Whether the activation's backward needs the pre-activation z (silu, gelu) rather than y.

    relu's derivative is read off y (y > 0 exactly where z > 0); None (or "none") needs nothing.
    """
    if activation == "none":
        return False
    check_activation(activation)
    return activation in _PREACT


# ------------------------------------------------------------------------------------- plans

@dataclass(frozen=True)
class _GradPlan:
    dispatch: Dispatch
    kernel: object  # a JITFunction, or triton's Autotuner under MCCONV_AUTOTUNE=1
    grid: tuple | Callable
    scalars: tuple  # every kernel argument after the pointers, in signature order
    meta: dict  # constexpr meta-parameters and launch options
    out_shape: tuple
    out_strides: tuple
    split: int  # programs sharing one reduction; > 1: fp32 partial buffer + split_sum_kernel
    index_64: bool
    launch: bool  # False when there is nothing to compute (empty output or empty reduction)


_plans: dict = {}


def _cached(key, build):
    """The plan under `key`, built (and validated) on the first call of a kind."""
    try:
        return _plans[key]
    except KeyError:
        pass
    except TypeError:  # unhashable options: validate and build, do not cache
        return build()
    plan = build()
    if len(_plans) >= _launch._MAX_PLANS:
        _plans.clear()
    _plans[key] = plan
    return plan


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _split_count(tiles: int, steps: int, device: torch.device) -> int:
    """Programs that share one reduction of `steps` block steps, given `tiles` output tiles.

    Enough programs for about two waves on the GPU, each keeping >= 4 steps so that the partial
    sums stay a small fraction of the traffic. Under the interpreter a few splits (the partial
    path is then exercised by the tests at little cost). A function of the shapes only, hence
    deterministic.
    """
    if device.type == "cuda":
        target, min_steps = 2 * _sm_count(device), 4
    else:
        target, min_steps = 32, 1
    split = triton.cdiv(target, max(tiles, 1))
    return max(1, min(split, steps // min_steps, _MAX_GRID_YZ))


def _choose(kernel_name, features, limits, dtype, tf32, device_name, forced):
    """(config, source, autotune): a forced config, the tile table's, or triton.autotune's."""
    if forced is not None:
        return dict(forced), "forced", False
    dtype_key = "tf32" if tf32 else str(dtype).removeprefix("torch.")
    config, source = _config.select_config(kernel_name, device_name, dtype_key, *features, limits)
    # The forward already warned once when MCCONV_AUTOTUNE=1 is ignored under the interpreter.
    autotune = _backend.autotune_requested() and not _backend.interpreted()
    return config, ("autotune" if autotune else source), autotune


def _finish(kernel_name, config, source, autotune, grid_fn, scalars, meta, *, out_shape, out_strides, split,
            index_64, launch, channels_last, dot_precision) -> _GradPlan:
    """Kernel, grid and meta of a plan: the table's config, or triton.autotune over the candidates."""
    if autotune:
        kernel, grid, config = _launch._autotuned_kernel(kernel_name), grid_fn, {}
    else:
        kernel, grid = _launch._jit_kernel(kernel_name), grid_fn(config)
        meta = {**meta, **config}
    dispatch = Dispatch(kernel=kernel_name, config=types.MappingProxyType(dict(config)), config_source=source,
                        output_shape=tuple(out_shape), memory_format="channels_last" if channels_last else "contiguous",
                        index_bits=64 if index_64 else 32, dot_precision=dot_precision)
    return _GradPlan(dispatch, kernel, grid, tuple(scalars), meta, tuple(out_shape), tuple(out_strides), split,
                     index_64, launch)


def _dot_meta(dtype, tf32) -> dict:
    precision = "ieee" if dtype == torch.float32 and not tf32 else "tf32"
    # The interpreter's bf16 tl.dot is silently wrong: compute bf16 products in fp32 there.
    return {"DOT_PRECISION": precision, "DOT_IN_FP32": dtype == torch.bfloat16 and _backend.interpreted()}


def _batched(shape, strides):
    """A 3-D (C, H, W) tensor read as a batch of one: its batch stride is never multiplied by n > 0."""
    return ((1, *shape), (0, *strides)) if len(shape) == 3 else (tuple(shape), tuple(strides))


def _check_output_grad(grad_z_shape, g, unbatched):
    expected = g.output_shape[1:] if unbatched else g.output_shape
    if tuple(grad_z_shape) != tuple(expected):
        raise ValueError(f"grad_z: expected the convolution's output shape {tuple(expected)}, "
                         f"got {tuple(grad_z_shape)}")


def _tile_problem(kind: str, g) -> tuple[str, tuple, dict]:
    """(kernel name, tile-table features (M, N, R), block name -> extent) of a gradient of `g`.

    kind: "dgrad", "wgrad" or "bias" (bias_act_grad). See each candidates.json's "about".
    """
    if kind == "bias":
        pixels = g.n * g.p * g.q
        return "bias_act_grad", (pixels, g.k, 1), {"BLOCK_M": pixels, "BLOCK_N": g.k}
    if kind == "dgrad":
        pixels = g.n * g.h * g.w
        if g.is_depthwise:
            return ("depthwise_dgrad", (pixels, g.c, g.kh * g.kw * (g.k // g.c)),
                    {"BLOCK_M": pixels, "BLOCK_N": g.c})
        taps = 1 if g.is_1x1_gemm else g.kh * g.kw
        return ("conv_dgrad", (pixels, g.c_per_group, g.k_per_group * taps),
                {"BLOCK_M": pixels, "BLOCK_N": g.c_per_group, "BLOCK_K": g.k_per_group})
    pixels = g.n * g.p * g.q
    if g.is_depthwise:
        return "depthwise_wgrad", (pixels, g.k, g.kh * g.kw), {"BLOCK_M": pixels, "BLOCK_N": g.k}
    return ("conv_wgrad", (g.k_per_group, g.c_per_group * g.kh * g.kw, pixels),
            {"BLOCK_M": g.k_per_group, "BLOCK_N": g.c_per_group, "BLOCK_K": pixels})


def _dgrad_plan(gz_shape, gz_strides, w_shape, w_strides, input_shape, dtype, channels_last, stride, padding,
                dilation, groups, tf32, device, device_name, forced=None) -> _GradPlan:
    g = conv_geometry(tuple(input_shape), tuple(w_shape), stride, padding, dilation, groups)
    unbatched = len(input_shape) == 3
    _check_output_grad(gz_shape, g, unbatched)
    channels_last = channels_last and not unbatched
    out_shape = tuple(input_shape)
    out_strides = _out_strides(out_shape, channels_last)
    _, gz4 = _batched(gz_shape, gz_strides)
    _, dx4 = _batched(out_shape, out_strides)
    index_64 = max(_span(gz_shape, gz_strides), _span(w_shape, w_strides),
                   _span(out_shape, out_strides)) >= _launch._INT32_LIMIT
    sh, sw = g.stride
    pixels = g.n * g.h * g.w
    # Rows are split by stride phase: per phase at most cdiv(H, sh) x cdiv(W, sw) pixels.
    phase_rows = g.n * triton.cdiv(g.h, sh) * triton.cdiv(g.w, sw)
    geometry = (*g.stride, g.padding[0], g.padding[2], *g.dilation)
    name, features, limits = _tile_problem("dgrad", g)
    if g.is_depthwise:
        def grid_fn(cfg):
            return (triton.cdiv(phase_rows, cfg["BLOCK_M"]) * sh * sw, triton.cdiv(g.c, cfg["BLOCK_N"]))

        scalars = (g.n, g.c, g.h, g.w, g.k, g.p, g.q, g.kh, g.kw, *geometry,
                   *gz4, w_strides[0], w_strides[2], w_strides[3], *dx4)
        meta = {"CHANNEL_MULT": g.k // g.c, "INDEX_64": index_64}
        dot_precision = None
    else:
        is_1x1 = g.is_1x1_gemm

        def grid_fn(cfg):
            cols = triton.cdiv(g.c_per_group, cfg["BLOCK_N"])
            if is_1x1:
                return (triton.cdiv(pixels, cfg["BLOCK_M"]) * cols, g.groups)
            return (triton.cdiv(phase_rows, cfg["BLOCK_M"]) * cols * sh * sw, g.groups)

        # The forward kernel with the roles exchanged: it reads dL/dz (K/groups channels per group,
        # P x Q) and writes dL/dx (C/groups columns per group, H x W); the weight's out/in
        # channel strides are swapped so that its rows are read as [K, C] per tap.
        # No residual (HAS_RESIDUAL False): its four strides are placeholders.
        scalars = (g.n, g.k_per_group, g.p, g.q, g.c_per_group, g.h, g.w, g.kh, g.kw, *geometry,
                   *gz4, w_strides[1], w_strides[0], w_strides[2], w_strides[3], *dx4, 0, 0, 0, 0)
        meta = {"HAS_BIAS": False, "ACTIVATION": "none", "STORE_PREACT": False, "IS_1X1": is_1x1,
                "TRANSPOSED": True, "INDEX_64": index_64, "HAS_RESIDUAL": False, **_dot_meta(dtype, tf32)}
        dot_precision = meta["DOT_PRECISION"]
    scalars = (*scalars, *(_config.bucket(f) for f in features))
    config, source, autotune = _choose(name, features, limits, dtype, tf32, device_name, forced)
    return _finish(name, config, source, autotune, grid_fn, scalars, meta, out_shape=out_shape,
                   out_strides=out_strides, split=1, index_64=index_64, launch=all(s > 0 for s in out_shape),
                   channels_last=channels_last, dot_precision=dot_precision)


def _wgrad_plan(gz_shape, gz_strides, x_shape, x_strides, weight_shape, dtype, stride, padding, dilation, groups,
                tf32, device, device_name, forced=None) -> _GradPlan:
    g = conv_geometry(tuple(x_shape), tuple(weight_shape), stride, padding, dilation, groups)
    unbatched = len(x_shape) == 3
    _check_output_grad(gz_shape, g, unbatched)
    out_shape = tuple(weight_shape)
    out_strides = _out_strides(out_shape, False)  # a contiguous weight gradient
    numel = math.prod(out_shape)
    _, gz4 = _batched(gz_shape, gz_strides)
    _, x4 = _batched(x_shape, x_strides)
    pixels = g.n * g.p * g.q
    geometry = (*g.stride, g.padding[0], g.padding[2], *g.dilation)
    name, features, limits = _tile_problem("wgrad", g)
    if g.is_depthwise:
        tiles_of = lambda cfg: triton.cdiv(g.k, cfg["BLOCK_N"]) * g.kh * g.kw  # noqa: E731
        steps_of = lambda cfg: triton.cdiv(pixels, cfg["BLOCK_M"])  # noqa: E731
        grid_of = lambda cfg, split: (triton.cdiv(g.k, cfg["BLOCK_N"]), g.kh * g.kw, split)  # noqa: E731
        sizes = (g.n, g.c, g.h, g.w, g.k, g.p, g.q, g.kh, g.kw, *geometry, *gz4, *x4)
        target_strides = (out_strides[0], out_strides[2], out_strides[3])  # k, kh, kw
        meta = {"CHANNEL_MULT": g.k // g.c}
        dot_precision = None
    else:
        def tiles_of(cfg):
            return (triton.cdiv(g.k_per_group, cfg["BLOCK_M"]) * triton.cdiv(g.c_per_group, cfg["BLOCK_N"])
                    * g.kh * g.kw * g.groups)

        steps_of = lambda cfg: triton.cdiv(pixels, cfg["BLOCK_K"])  # noqa: E731

        def grid_of(cfg, split):
            return (triton.cdiv(g.k_per_group, cfg["BLOCK_M"]) * triton.cdiv(g.c_per_group, cfg["BLOCK_N"])
                    * g.kh * g.kw, g.groups, split)

        sizes = (g.n, g.c_per_group, g.h, g.w, g.k_per_group, g.p, g.q, g.kh, g.kw, *geometry, *gz4, *x4)
        target_strides = tuple(out_strides)  # k, c, kh, kw
        meta = {"IS_1X1": g.is_1x1_gemm, **_dot_meta(dtype, tf32)}
        dot_precision = meta["DOT_PRECISION"]
    config, source, autotune = _choose(name, features, limits, dtype, tf32, device_name, forced)
    # The split follows the table's (or default) blocks, also when triton.autotune picks others:
    # the kernel derives its share of the pixels from the grid, so any blocks remain correct.
    split = _split_count(tiles_of(config), steps_of(config), device) if pixels else 1
    index_64 = max(_span(gz_shape, gz_strides), _span(x_shape, x_strides), split * numel) >= _launch._INT32_LIMIT
    # Partial sums [split, *weight_shape] (fp32, contiguous), or dW itself when split == 1.
    scalars = (*sizes, numel if split > 1 else 0, *target_strides, *(_config.bucket(f) for f in features))
    meta = {**meta, "INDEX_64": index_64}
    return _finish(name, config, source, autotune, functools.partial(_grid_with_split, grid_of, split), scalars,
                   meta, out_shape=out_shape, out_strides=out_strides, split=split, index_64=index_64,
                   launch=numel > 0 and pixels > 0, channels_last=False, dot_precision=dot_precision)


def _grid_with_split(grid_of, split, cfg):
    return grid_of(cfg, split)


def _bias_act_plan(gy_shape, gy_strides, saved_strides, dtype, channels_last, activation, store_grad,
                   reduce_bias, device, device_name, forced=None) -> _GradPlan:
    (n, k, p, q), gy4 = _batched(gy_shape, gy_strides)
    s4 = _batched(gy_shape, saved_strides)[1] if saved_strides is not None else (0, 0, 0, 0)
    unbatched = len(gy_shape) == 3
    channels_last = channels_last and not unbatched
    gz_strides = _out_strides(tuple(gy_shape), channels_last)
    _, gz4 = _batched(gy_shape, gz_strides)
    pixels = n * p * q
    _, features, limits = _tile_problem("bias", types.SimpleNamespace(n=n, k=k, p=p, q=q))
    config, source, autotune = _choose("bias_act_grad", features, limits, dtype, False, device_name, forced)
    if reduce_bias:
        split = _split_count(triton.cdiv(k, config["BLOCK_N"]), triton.cdiv(pixels, config["BLOCK_M"]), device)
    else:  # element-wise only: one tile of pixels per program
        split = max(1, min(triton.cdiv(pixels, config["BLOCK_M"]), _MAX_GRID_YZ))
    spans = [_span(gy_shape, gy_strides), _span(gy_shape, gz_strides), split * k]
    if saved_strides is not None:
        spans.append(_span(gy_shape, saved_strides))
    index_64 = max(spans) >= _launch._INT32_LIMIT
    scalars = (n, k, p, q, *gy4, *s4, *gz4, k if split > 1 else 0, *(_config.bucket(f) for f in features))
    meta = {"ACTIVATION": activation or "none", "STORE_GRAD": store_grad, "REDUCE_BIAS": reduce_bias,
            "INDEX_64": index_64}
    grid_of = lambda cfg, split: (triton.cdiv(k, cfg["BLOCK_N"]), split)  # noqa: E731
    return _finish("bias_act_grad", config, source, autotune, functools.partial(_grid_with_split, grid_of, split),
                   scalars, meta, out_shape=tuple(gy_shape), out_strides=gz_strides, split=split, index_64=index_64,
                   launch=pixels > 0 and k > 0, channels_last=channels_last, dot_precision=None)


# ------------------------------------------------------------------------------- validation

def _check_tensor(name, t, dims=(3, 4)):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in dims:
        raise ValueError(f"{name}: expected a {' or '.join(f'{d}-D' for d in dims)} tensor, "
                         f"got {t.dim()}-D with shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float16, bfloat16 or float32, got {t.dtype}")


def _check_pair(name, t, ref_name, ref):
    """Same dtype and device as `ref` (tl.dot takes operands of one dtype)."""
    if t.dtype != ref.dtype:
        raise TypeError(f"{name}: expected {ref_name}'s dtype {ref.dtype}, got {t.dtype}")
    if t.device != ref.device:
        raise TypeError(f"{name}: expected {ref_name}'s device {ref.device}, got {t.device}")


def _shape(name, shape, dims) -> tuple:
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a sequence of ints, got {shape!r}") from None
    if len(shape) not in dims:
        raise ValueError(f"{name}: expected {' or '.join(map(str, dims))} sizes, got {shape}")
    return shape


def _tf32(dtype) -> bool:
    return dtype == torch.float32 and _backend.conv_uses_tf32()


def _device_name(device):
    return _backend.device_name(device)


# ---------------------------------------------------------------------------------- launches

def _launch_dgrad(plan, grad_z, weight, forced_kernel=None, warmup=False):
    dx = torch.empty_strided(plan.out_shape, plan.out_strides, dtype=grad_z.dtype, device=grad_z.device)
    if plan.launch:
        kernel = forced_kernel or plan.kernel
        if plan.dispatch.kernel == "conv_dgrad":
            # conv2d_igemm_kernel(x, w, bias, y, z, residual): no bias, no pre-activation store,
            # no residual.
            args = (grad_z, weight, weight, dx, dx, dx, *plan.scalars)
        else:
            args = (grad_z, weight, dx, *plan.scalars)
        if warmup:
            kernel.warmup(*args, grid=plan.grid, **plan.meta)
        else:
            kernel[plan.grid](*args, **plan.meta)
    return dx


def _split_sum(partial, out, split, index_64):
    """out = partial.sum(0) in increasing split order (deterministic), cast to out's dtype."""
    from mcconv import _kernels

    total = out.numel()
    # A memory-bound pass over a buffer of about two waves of tiles: one fixed block size serves.
    _kernels.split_sum_kernel[(triton.cdiv(total, _SPLIT_SUM_BLOCK),)](
        partial, out, split, total, BLOCK=_SPLIT_SUM_BLOCK, INDEX_64=index_64, num_warps=4)


def _launch_reduction(plan, pointers, out, zero_when_empty=True, warmup=False, forced_kernel=None):
    """Run a split-reduction plan into `out`: directly when split == 1, else via fp32 partials."""
    if not plan.launch:
        if zero_when_empty:
            out.zero_()  # an empty reduction sums to zero
        return out
    kernel = forced_kernel or plan.kernel
    target = out if plan.split == 1 else torch.empty((plan.split, *out.shape), dtype=torch.float32,
                                                     device=out.device)
    args = (*pointers, target, *plan.scalars)
    if warmup:
        kernel.warmup(*args, grid=plan.grid, **plan.meta)
        return out
    kernel[plan.grid](*args, **plan.meta)
    if plan.split > 1:
        _split_sum(target, out, plan.split, plan.index_64)
    return out


# ------------------------------------------------------------------------------- public API

def conv2d_input_grad(grad_z, weight, input_shape, stride=1, padding=0, dilation=1, groups=1):
    """dL/dinput of ``conv2d(input, weight)`` given dL/dz (z the convolution's output, before activation).

    Args:
        grad_z: ``(N, K, P, Q)`` or unbatched ``(K, P, Q)``, any strides.
        weight: ``(K, C / groups, kH, kW)``, grad_z's dtype and device, any strides.
        input_shape: the input's shape ``(N, C, H, W)`` or ``(C, H, W)``.
        stride, padding, dilation, groups: as for :func:`mcconv.conv2d` (int, pair, 4-tuple
            ``(top, bottom, left, right)``, ``"same"``, ``"valid"``).

    Returns:
        A tensor of ``input_shape`` in grad_z's dtype; channels_last when grad_z is.
    """
    _check_tensor("grad_z", grad_z)
    _check_tensor("weight", weight, dims=(4,))
    _check_pair("weight", weight, "grad_z", grad_z)
    input_shape = _shape("input_shape", input_shape, (3, 4))
    if len(input_shape) != grad_z.dim():
        raise ValueError(f"input_shape: expected {grad_z.dim()} sizes like grad_z, got {input_shape}")
    _launch.check_runnable(grad_z.device)
    tf32 = _tf32(grad_z.dtype)
    cl = _channels_last(grad_z)
    key = ("dgrad", grad_z.shape, grad_z.stride(), grad_z.dtype, grad_z.device, cl, weight.shape, weight.stride(),
           input_shape, _hashable(stride), _hashable(padding), _hashable(dilation), groups, tf32)
    plan = _cached(key, lambda: _dgrad_plan(tuple(grad_z.shape), grad_z.stride(), tuple(weight.shape),
                                            weight.stride(), input_shape, grad_z.dtype, cl, _hashable(stride),
                                            _hashable(padding), _hashable(dilation), groups, tf32, grad_z.device,
                                            _device_name(grad_z.device)))
    return _launch_dgrad(plan, grad_z, weight)


def conv2d_weight_grad(grad_z, input, weight_shape, stride=1, padding=0, dilation=1, groups=1):
    """dL/dweight of ``conv2d(input, weight)`` given dL/dz.

    Args:
        grad_z: ``(N, K, P, Q)`` or unbatched ``(K, P, Q)``, input's dtype and device, any strides.
        input: the forward's input ``(N, C, H, W)`` or ``(C, H, W)``, any strides.
        weight_shape: ``(K, C / groups, kH, kW)``.
        stride, padding, dilation, groups: as for :func:`mcconv.conv2d`.

    Returns:
        A contiguous tensor of ``weight_shape`` in input's dtype, summed in fp32 in a fixed
        order (bitwise reproducible).
    """
    _check_tensor("input", input)
    _check_tensor("grad_z", grad_z)
    _check_pair("grad_z", grad_z, "input", input)
    weight_shape = _shape("weight_shape", weight_shape, (4,))
    if grad_z.dim() != input.dim():
        raise ValueError(f"grad_z: expected a {input.dim()}-D tensor like input, got {grad_z.dim()}-D")
    _launch.check_runnable(input.device)
    tf32 = _tf32(input.dtype)
    key = ("wgrad", grad_z.shape, grad_z.stride(), input.shape, input.stride(), input.dtype, input.device,
           weight_shape, _hashable(stride), _hashable(padding), _hashable(dilation), groups, tf32)
    plan = _cached(key, lambda: _wgrad_plan(tuple(grad_z.shape), grad_z.stride(), tuple(input.shape),
                                            input.stride(), weight_shape, input.dtype, _hashable(stride),
                                            _hashable(padding), _hashable(dilation), groups, tf32, input.device,
                                            _device_name(input.device)))
    out = torch.empty(plan.out_shape, dtype=input.dtype, device=input.device)
    return _launch_reduction(plan, (grad_z, input), out)


def _bias_act(grad_y, saved, activation, store_grad, reduce_bias):
    _check_tensor("grad_y" if store_grad else "grad_z", grad_y)
    if saved is not None:
        _check_tensor("saved", saved)
        if saved.shape != grad_y.shape:
            raise ValueError(f"saved: expected grad_y's shape {tuple(grad_y.shape)}, got {tuple(saved.shape)}")
        if saved.device != grad_y.device:
            raise TypeError(f"saved: expected grad_y's device {grad_y.device}, got {saved.device}")
    _launch.check_runnable(grad_y.device)
    cl = _channels_last(grad_y)
    saved_strides = None if saved is None else saved.stride()
    key = ("bias_act", grad_y.shape, grad_y.stride(), grad_y.dtype, grad_y.device, cl, saved_strides,
           None if saved is None else saved.dtype, activation, store_grad, reduce_bias)
    plan = _cached(key, lambda: _bias_act_plan(tuple(grad_y.shape), grad_y.stride(), saved_strides, grad_y.dtype,
                                               cl, activation, store_grad, reduce_bias, grad_y.device,
                                               _device_name(grad_y.device)))
    return plan, _run_bias_act(plan, grad_y, saved)


def _run_bias_act(plan, grad_y, saved, forced_kernel=None, warmup=False):
    meta = plan.meta
    grad_z = (torch.empty_strided(plan.out_shape, plan.out_strides, dtype=grad_y.dtype, device=grad_y.device)
              if meta["STORE_GRAD"] else grad_y)
    k = plan.out_shape[-3]
    grad_b = torch.empty((k,), dtype=grad_y.dtype, device=grad_y.device) if meta["REDUCE_BIAS"] else None
    if not plan.launch:
        if grad_b is not None:
            grad_b.zero_()
        return grad_z, grad_b
    kernel = forced_kernel or plan.kernel
    target = grad_b
    if grad_b is None:
        target = grad_z  # not written (REDUCE_BIAS=False): any pointer
    elif plan.split > 1:
        target = torch.empty((plan.split, k), dtype=torch.float32, device=grad_y.device)
    args = (grad_y, grad_y if saved is None else saved, grad_z, target, *plan.scalars)
    if warmup:
        kernel.warmup(*args, grid=plan.grid, **meta)
        return grad_z, grad_b
    kernel[plan.grid](*args, **meta)
    if grad_b is not None and plan.split > 1:
        _split_sum(target, grad_b, plan.split, plan.index_64)
    return grad_z, grad_b


def conv2d_bias_grad(grad_z):
    """dL/dbias: grad_z ``(N, K, P, Q)`` (or ``(K, P, Q)``) summed over n, p, q per channel.

    Returns a ``(K,)`` tensor in grad_z's dtype, summed in fp32 in a fixed order.
    """
    return _bias_act(grad_z, None, None, store_grad=False, reduce_bias=True)[1][1]


def activation_grad(grad_y, saved, activation):
    """dL/dz = dL/dy * act'(z) for the fused activation of ``mcconv.conv2d``.

    ``saved`` is the forward's output y for "relu" and its pre-activation z for "silu" and "gelu"
    (see :func:`needs_preact` and ``conv2d_forward(..., return_preact=True)``); it may be None
    for activation None, which returns grad_y itself. The result has grad_y's dtype and shape,
    channels_last when grad_y is.
    """
    if activation is None or activation == "none":
        return grad_y
    check_activation(activation)
    if saved is None:
        raise ValueError(f"saved: the backward of {activation!r} needs "
                         f"{'z (the pre-activation)' if activation in _PREACT else 'y'}, got None")
    return _bias_act(grad_y, saved, activation, store_grad=True, reduce_bias=False)[1][0]


def activation_bias_grad(grad_y, saved, activation):
    """``(dL/dz, dL/dbias)`` in one pass over grad_y: :func:`activation_grad` fused with
    :func:`conv2d_bias_grad`. The bias gradient sums the fp32 dL/dz before its rounding to grad_y's
    dtype."""
    if activation == "none":
        activation = None
    check_activation(activation)
    if activation is not None and saved is None:
        raise ValueError(f"saved: the backward of {activation!r} needs a saved tensor, got None")
    # Without an activation dL/dz is grad_y itself: only the sum is computed.
    return _bias_act(grad_y, saved if activation else None, activation, store_grad=activation is not None,
                     reduce_bias=True)[1]


# --------------------------------------------------------------------------------- tuning hook

def tune_problems(input, weight, stride=1, padding=0, dilation=1, groups=1) -> list[dict]:
    """The backward kernels of one layer as problems for ``mcconv tune`` (forced configurations).

    Returns dicts with ``kernel`` (a name in ``_config.KERNELS``), ``features`` (the table's
    M, N, R), ``limits`` (block name -> extent), ``run(config) -> Tensor``, ``warmup(config)``
    (compile only) and ``reference() -> Tensor`` (torch's gradient). The input gradient, the
    weight gradient and the bias gradient (bias_act_grad's reduction) are tuned with a random
    dL/dz laid out like the input.
    """
    device, dtype = input.device, input.dtype
    tf32 = _tf32(dtype)
    name = _device_name(device)
    g = conv_geometry(tuple(input.shape), tuple(weight.shape), stride, padding, dilation, groups)
    cl = _channels_last(input)
    z_shape = g.output_shape[1:] if input.dim() == 3 else g.output_shape
    grad_z = torch.randn(z_shape, device=device, dtype=dtype)
    if cl:
        grad_z = grad_z.to(memory_format=torch.channels_last)
    norm = (g.stride, g.padding, g.dilation, groups)

    def torch_grads():
        x = input.detach().requires_grad_()
        w = weight.detach().requires_grad_()
        top, bottom, left, right = g.padding
        z = F.conv2d(F.pad(x, (left, right, top, bottom)), w, None, g.stride, 0, g.dilation, groups)
        z.backward(grad_z)
        return x.grad, w.grad

    def memo(build):
        plans = {}

        def get(config):
            key = tuple(sorted(config.items()))
            if key not in plans:
                plans[key] = build(config)
            return plans[key]
        return get

    dgrad = memo(lambda cfg: _dgrad_plan(tuple(grad_z.shape), grad_z.stride(), tuple(weight.shape), weight.stride(),
                                         tuple(input.shape), dtype, cl, *norm, tf32, device, name, forced=cfg))
    wgrad = memo(lambda cfg: _wgrad_plan(tuple(grad_z.shape), grad_z.stride(), tuple(input.shape), input.stride(),
                                         tuple(weight.shape), dtype, *norm, tf32, device, name, forced=cfg))
    bias = memo(lambda cfg: _bias_act_plan(tuple(grad_z.shape), grad_z.stride(), None, dtype, cl, None, False, True,
                                           device, name, forced=cfg))

    def run_wgrad(config, warmup=False):
        out = torch.empty(tuple(weight.shape), dtype=dtype, device=device)
        return _launch_reduction(wgrad(config), (grad_z, input), out, warmup=warmup)

    problems = []
    for kind, run, reference in (
        ("dgrad", lambda cfg, warmup=False: _launch_dgrad(dgrad(cfg), grad_z, weight, warmup=warmup),
         lambda: torch_grads()[0]),
        ("wgrad", run_wgrad, lambda: torch_grads()[1]),
        ("bias", lambda cfg, warmup=False: _run_bias_act(bias(cfg), grad_z, None, warmup=warmup)[1],
         lambda: grad_z.float().sum(dim=tuple(d for d in range(grad_z.dim()) if d != grad_z.dim() - 3)).to(dtype)),
    ):
        kernel, features, limits = _tile_problem(kind, g)
        problems.append({"kernel": kernel, "features": features, "limits": limits, "run": run,
                         "warmup": functools.partial(run, warmup=True), "reference": reference})
    return problems
