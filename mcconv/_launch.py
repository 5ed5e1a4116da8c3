"""Forward launchers: validate, dispatch, choose a tile configuration, allocate, launch.

Everything that depends only on the shapes, strides, dtypes and options of a call is computed
once into a :class:`_Plan` and cached, so a repeated call costs one key build, one dict lookup,
one allocation and the kernel launch.
"""
import functools
import types
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import triton

from . import _backend, _config, _pack
from ._validate import ConvGeometry, check_activation, check_residual, check_tensors, conv_geometry

_INT32_LIMIT = 2**31
_MAX_PLANS = 4096


@dataclass(frozen=True)
class Dispatch:
    """What a convolution call runs: kernel, tile configuration and where that came from."""

    kernel: str  # a name in _config.KERNELS: "conv_direct", "gemm_1x1", "depthwise" (forward) or a backward one
    config: Mapping[str, int]  # block sizes, num_warps, num_stages ({} under MCCONV_AUTOTUNE=1)
    config_source: str  # "table ...", "nearest in ...", "heuristic default" or "autotune"
    output_shape: tuple
    memory_format: str  # "contiguous" or "channels_last"
    index_bits: int  # 32, or 64 when a tensor spans 2**31 elements or more
    dot_precision: str | None  # "ieee" or "tf32" for the tl.dot kernels, None for depthwise
    packed_weight: bool = False  # the call packs the weight into a (KH, KW, C/g, K) copy first (mcconv._pack)

    def __str__(self) -> str:
        tiles = " ".join(f"{k}={v}" for k, v in self.config.items()) or "(autotuned)"
        return (f"{self.kernel}: {tiles} [{self.config_source}]; output {self.output_shape} "
                f"{self.memory_format}, int{self.index_bits} offsets"
                + (", packed weight" if self.packed_weight else "")
                + (f", dot {self.dot_precision}" if self.dot_precision else ""))


@dataclass(frozen=True)
class _Plan:
    dispatch: Dispatch
    geometry: ConvGeometry
    kernel: object  # a JITFunction, or triton's Autotuner under MCCONV_AUTOTUNE=1
    grid: tuple | Callable
    scalars: tuple  # every kernel argument after the six pointers, in signature order
    meta: dict  # constexpr meta-parameters and launch options
    out_shape: tuple
    out_strides: tuple
    launch: bool  # False for empty outputs
    pack_weight: bool = False  # launch with _pack.packed(weight), whose strides are in `scalars`


def _span(shape, strides) -> int:
    """Elements between a tensor's first and last addressable element, inclusive."""
    if any(s == 0 for s in shape):
        return 0
    return 1 + sum((s - 1) * abs(st) for s, st in zip(shape, strides))


def _out_strides(shape, channels_last: bool) -> tuple:
    if len(shape) == 3:
        c, h, w = shape
        return (h * w, w, 1)
    n, c, h, w = shape
    if channels_last:
        return (h * w * c, 1, w * c, c)
    return (c * h * w, h * w, w, 1)


# Tile-table name -> @triton.jit function in mcconv._kernels (several names may share a kernel).
_KERNEL_FUNCTIONS = {
    "conv_direct": "conv2d_igemm_kernel",
    "gemm_1x1": "conv2d_igemm_kernel",
    "depthwise": "conv2d_depthwise_kernel",
    "conv_dgrad": "conv2d_igemm_kernel",  # TRANSPOSED=True
    "conv_wgrad": "conv2d_wgrad_kernel",
    "depthwise_dgrad": "depthwise_dgrad_kernel",
    "depthwise_wgrad": "depthwise_wgrad_kernel",
    "bias_act_grad": "bias_act_grad_kernel",
}


def _jit_kernel(kernel_name: str):
    from mcconv import _kernels  # imported on first use so that `mcconv demo` can set TRITON_INTERPRET first

    return getattr(_kernels, _KERNEL_FUNCTIONS[kernel_name])


@functools.lru_cache(maxsize=None)
def _autotuned_kernel(kernel_name: str):
    """The kernel wrapped in triton.autotune over its candidates, keyed by the bucketed shape."""
    configs = [
        triton.Config({k: v for k, v in c.items() if k not in _config.LAUNCH_OPTIONS},
                      num_warps=c["num_warps"], num_stages=c["num_stages"])
        for c in _config.candidates(kernel_name)
    ]
    return triton.autotune(configs=configs, key=["bucket_m", "bucket_n", "bucket_r"])(_jit_kernel(kernel_name))


def _choose_kernel(g: ConvGeometry) -> str:
    if g.is_1x1_gemm:
        return "gemm_1x1"
    if g.is_depthwise:
        return "depthwise"
    return "conv_direct"


def tile_problem(kernel_name: str, g: ConvGeometry) -> tuple[tuple, dict]:
    """A kernel's tile-table features (M, N, R) and the extents that cap its block sizes."""
    m = g.n * g.p * g.q
    if kernel_name == "depthwise":
        return (m, g.k, g.kh * g.kw), {"BLOCK_M": m, "BLOCK_N": g.k}
    reduction = g.c_per_group * (1 if kernel_name == "gemm_1x1" else g.kh * g.kw)
    return (m, g.k_per_group, reduction), {"BLOCK_M": m, "BLOCK_N": g.k_per_group, "BLOCK_K": g.c_per_group}


def _grid(kernel_name: str, g: ConvGeometry, config: Mapping[str, int]) -> tuple:
    m = g.n * g.p * g.q
    if kernel_name == "depthwise":
        return (triton.cdiv(m, config["BLOCK_M"]), triton.cdiv(g.k, config["BLOCK_N"]))
    return (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(g.k_per_group, config["BLOCK_N"]), g.groups)


def _build_plan(x_shape, x_strides, w_shape, w_strides, dtype, device, channels_last, has_bias,
                stride, padding, dilation, groups, activation, tf32, device_name, r_strides=None) -> _Plan:
    """``r_strides``: the residual's strides (it has the output's shape), None without one."""
    g = conv_geometry(tuple(x_shape), tuple(w_shape), stride, padding, dilation, groups)
    unbatched = len(x_shape) == 3
    out_shape = g.output_shape[1:] if unbatched else g.output_shape
    channels_last = channels_last and not unbatched
    out_strides = _out_strides(out_shape, channels_last)
    # A 3-D input is read as a batch of one; its (absent) batch stride is never multiplied by n > 0.
    x4_strides = (0, *x_strides) if unbatched else tuple(x_strides)
    y4_strides = (0, *out_strides) if unbatched else out_strides
    if r_strides is None:
        r4_strides = (0, 0, 0, 0)  # placeholders: HAS_RESIDUAL is False
    else:
        r4_strides = (0, *r_strides) if unbatched else tuple(r_strides)

    kernel_name = _choose_kernel(g)
    features, limits = tile_problem(kernel_name, g)
    pack_weight = kernel_name == "conv_direct" and _pack.worth_packing(w_strides) and _pack.enabled()
    if pack_weight:
        w_strides = _pack.packed_strides(w_shape)
    dtype_key = "tf32" if tf32 else str(dtype).removeprefix("torch.")
    index_64 = max(_span(x_shape, x_strides), _span(w_shape, w_strides), _span(out_shape, out_strides),
                   0 if r_strides is None else _span(out_shape, r_strides)) >= _INT32_LIMIT
    buckets = tuple(_config.bucket(f) for f in features)

    meta = {"HAS_BIAS": has_bias, "ACTIVATION": activation or "none", "STORE_PREACT": False, "INDEX_64": index_64,
            "HAS_RESIDUAL": r_strides is not None}
    dot_precision = None
    if kernel_name == "depthwise":
        meta["CHANNEL_MULT"] = g.k // g.c
        sizes = (g.n, g.c, g.h, g.w, g.k)
        w_args = (w_strides[0], w_strides[2], w_strides[3])
    else:
        dot_precision = "ieee" if dtype == torch.float32 and not tf32 else "tf32"
        meta["IS_1X1"] = kernel_name == "gemm_1x1"
        meta["TRANSPOSED"] = False
        meta["DOT_PRECISION"] = dot_precision
        # The interpreter's bf16 tl.dot is silently wrong: compute bf16 products in fp32 there.
        meta["DOT_IN_FP32"] = dtype == torch.bfloat16 and _backend.interpreted()
        sizes = (g.n, g.c_per_group, g.h, g.w, g.k_per_group)
        w_args = tuple(w_strides)
    scalars = (*sizes, g.p, g.q, g.kh, g.kw, *g.stride, g.padding[0], g.padding[2], *g.dilation,
               *x4_strides, *w_args, *y4_strides, *r4_strides, *buckets)

    autotune = _backend.autotune_requested()
    if autotune and _backend.interpreted():
        warnings.warn("mcconv: MCCONV_AUTOTUNE=1 is ignored under Triton's interpreter, which cannot "
                      "benchmark; using the tile table or the heuristic default", RuntimeWarning, stacklevel=4)
        autotune = False
    if autotune:
        kernel, config, source = _autotuned_kernel(kernel_name), {}, "autotune"
        grid = functools.partial(_grid, kernel_name, g)
    else:
        config, source = _config.select_config(kernel_name, device_name, dtype_key, *features, limits)
        kernel = _jit_kernel(kernel_name)
        grid = _grid(kernel_name, g, config)
        meta.update(config)

    dispatch = Dispatch(kernel=kernel_name, config=types.MappingProxyType(dict(config)), config_source=source,
                        output_shape=tuple(out_shape), memory_format="channels_last" if channels_last else "contiguous",
                        index_bits=64 if index_64 else 32, dot_precision=dot_precision, packed_weight=pack_weight)
    return _Plan(dispatch, g, kernel, grid, scalars, meta, tuple(out_shape), out_strides,
                 launch=all(s > 0 for s in out_shape), pack_weight=pack_weight)


_plans: dict = {}


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def _channels_last(t: torch.Tensor) -> bool:
    """torch's rule of thumb: a channels_last input gives a channels_last output."""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def get_plan(input, weight, bias, stride, padding, dilation, groups, activation, device_name=None,
             residual=None) -> _Plan:
    """The cached plan of a call; validates everything on the first call of a kind."""
    try:
        tf32 = input.dtype == torch.float32 and _backend.conv_uses_tf32()
        key = (input.shape, input.stride(), input.dtype, input.device, _channels_last(input),
               weight.shape, weight.stride(), weight.dtype, weight.device,
               None if bias is None else (bias.shape, bias.dtype, bias.device),
               _hashable(stride), _hashable(padding), _hashable(dilation), groups, activation, tf32, device_name,
               None if residual is None else (residual.shape, residual.stride(), residual.dtype, residual.device))
        return _plans[key]
    except KeyError:
        pass
    except (AttributeError, TypeError):
        key = None  # not tensors, or unhashable options: validate below
    check_tensors(input, weight, bias)
    check_activation(activation)
    if residual is not None:
        g = conv_geometry(tuple(input.shape), tuple(weight.shape), _hashable(stride), _hashable(padding),
                          _hashable(dilation), groups)
        check_residual(residual, input, g.output_shape[1:] if input.dim() == 3 else g.output_shape)
    tf32 = input.dtype == torch.float32 and _backend.conv_uses_tf32()
    device = input.device
    plan = _build_plan(tuple(input.shape), tuple(input.stride()), tuple(weight.shape), tuple(weight.stride()),
                       input.dtype, device, _channels_last(input),
                       bias is not None, _hashable(stride), _hashable(padding), _hashable(dilation), groups,
                       activation, tf32, device_name or _backend.device_name(device),
                       None if residual is None else tuple(residual.stride()))
    if key is not None:
        if len(_plans) >= _MAX_PLANS:
            _plans.clear()
        _plans[key] = plan
    return plan


def check_runnable(device: torch.device) -> None:
    """CUDA tensors run natively; CPU tensors only under Triton's interpreter."""
    if device.type == "cuda":
        return
    if device.type == "cpu":
        if _backend.interpreted():
            return
        raise TypeError("input: got a CPU tensor, but mcconv's kernels need a CUDA device. To run them on "
                        "the CPU, set TRITON_INTERPRET=1 in the environment before importing mcconv "
                        "(Triton's interpreter; slow, for testing)")
    raise TypeError(f"input: expected a CUDA tensor (or a CPU tensor under TRITON_INTERPRET=1), got device {device}")


def conv2d_forward(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None,
                   return_preact=False, residual=None):
    """Launch the forward convolution (no autograd): ``act(conv2d(input, weight) + bias + residual)``.

    ``residual`` (optional) is a tensor of exactly the output's shape, the input's dtype and
    device and any strides, added in fp32 in the epilogue before the activation.
    With ``return_preact=True`` returns ``(y, z)``, z = conv2d(input, weight) + bias (+ residual)
    before the activation, stored by the same kernel's epilogue (silu's and gelu's backward need
    it). Without an activation z *is* y (the same tensor).
    """
    plan = get_plan(input, weight, bias, stride, padding, dilation, groups, activation, residual=residual)
    if input.device.type != "cuda":
        check_runnable(input.device)
    y = torch.empty_strided(plan.out_shape, plan.out_strides, dtype=input.dtype, device=input.device)
    store_z = return_preact and activation is not None
    z = torch.empty_strided(plan.out_shape, plan.out_strides, dtype=input.dtype, device=input.device) if store_z else y
    if plan.launch:
        # The kernels index the bias with unit stride; a strided view (e.g. b[::2]) needs a copy.
        bias = weight if bias is None else bias.contiguous()
        meta = {**plan.meta, "STORE_PREACT": True} if store_z else plan.meta
        if plan.pack_weight:
            weight = _pack.packed(weight)
        plan.kernel[plan.grid](input, weight, bias, y, z, weight if residual is None else residual,
                               *plan.scalars, **meta)
    return (y, z) if return_preact else y


def launch_with_config(config: Mapping[str, int], input, weight, bias=None, stride=1, padding=0, dilation=1,
                       groups=1, activation=None, *, warmup: bool = False):
    """The forward convolution with a forced tile configuration, bypassing the tile table.

    For ``mcconv tune``: ``config`` holds the dispatched kernel's block sizes, ``num_warps`` and
    ``num_stages`` (see ``autotune_configs/<kernel>/candidates.json``). With ``warmup=True`` the
    kernel is only compiled (Triton's ``JITFunction.warmup``) and the unwritten output returned.
    """
    plan = get_plan(input, weight, bias, stride, padding, dilation, groups, activation)
    check_runnable(input.device)
    y = torch.empty_strided(plan.out_shape, plan.out_strides, dtype=input.dtype, device=input.device)
    if plan.launch:
        kernel = _jit_kernel(plan.dispatch.kernel)  # never the autotuner: the config is forced
        grid = _grid(plan.dispatch.kernel, plan.geometry, config)
        if plan.pack_weight:
            weight = _pack.packed(weight)
        args = (input, weight, weight if bias is None else bias.contiguous(), y, y, weight, *plan.scalars)
        meta = {**plan.meta, **config}
        if warmup:
            kernel.warmup(*args, grid=grid, **meta)
        else:
            kernel[grid](*args, **meta)
    return y


def explain(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None,
            residual=None, device_name: str | None = None) -> Dispatch:
    """Which kernel and tile configuration ``mcconv.conv2d`` would use for these arguments.

    Tensors may be on the ``meta`` device (shapes only). ``device_name`` (e.g.
    ``"NVIDIA_H100_80GB_HBM3"``) selects another GPU model's tile table than the tensors' device.
    A ``residual`` is fused into the same kernel's epilogue (it changes no dispatch); it is
    validated like the convolution's. Raises the same errors as the convolution for bad arguments.
    """
    return get_plan(input, weight, bias, stride, padding, dilation, groups, activation, device_name,
                    residual=residual).dispatch
