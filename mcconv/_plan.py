"""Plans: everything about a launch that depends only on shapes, strides, dtypes and options.

A :class:`Plan` is one kernel launch decided: the kernel (from the registry), its tile
configuration and where that came from, grid, scalar arguments and constexprs, the output's
shape and strides. Every operation (forward and each gradient) builds the same type and keeps
it in the one cache here, keyed by its call's metadata, so a repeated call costs a key, a dict
lookup and the launch. Plans hold no tensors and nothing derived from tensor *values*.
"""
import functools
import types
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from . import _backend, tiles
from ._spec import Conv3dSpec
from .registry import Kernel

INT32_LIMIT = 2**31
MAX_PLANS = 4096  # the cache is cleared when full: bounded memory, whatever the caller's shapes


@dataclass(frozen=True)
class Dispatch:
    """What a launch runs, for people: kernel, tile configuration and where it came from."""

    kernel: str  # a name in mcconv.registry.KERNELS
    operation: str  # "forward", "input_grad", "weight_grad" or "bias_act_grad"
    config: Mapping[str, int]  # block sizes, num_warps, num_stages ({} under MCCONV_AUTOTUNE=1)
    config_source: str  # "table ...", "nearest in ...", "heuristic default", "forced" or "autotune"
    key: str  # the tile-table key: dtype and bucketed (M, N, R)
    output_shape: tuple
    memory_format: str  # "contiguous", "channels_last" or (a 5-D output) "channels_last_3d"
    index_bits: int  # 32, or 64 when a tensor spans 2**31 elements or more
    dot_precision: str | None  # fp32 only: "tf32" or "ieee"; None for 16-bit dtypes and dot-free kernels
    packed_weight: bool = False  # the call first packs the weight into a (KH, KW, C/g, K) copy
    split: int = 1  # programs sharing one reduction (weight and bias gradients)

    def __str__(self) -> str:
        tiles_text = " ".join(f"{k}={v}" for k, v in self.config.items()) or "(autotuned)"
        return (f"{self.kernel}: {tiles_text} [{self.config_source}]; output {self.output_shape} "
                f"{self.memory_format}, int{self.index_bits} offsets"
                + (", packed weight" if self.packed_weight else "")
                + (f", split {self.split}" if self.split > 1 else "")
                + (f", fp32 dot {self.dot_precision}" if self.dot_precision else ""))


@dataclass(frozen=True, eq=False)
class Plan:
    """One launch decided (see the module docstring); ``run`` belongs to the operation's module."""

    kernel: Kernel
    spec: object  # the ConvSpec
    device: torch.device
    target: tuple  # (tile-table device name, SM count) of the GPU planned for
    config: Mapping[str, int]
    source: str
    key: str
    limits: Mapping[str, int]
    fn: object  # the JITFunction, or triton's Autotuner under MCCONV_AUTOTUNE=1
    grid: tuple | Callable
    args: tuple  # the scalar arguments after the pointers, in signature order
    meta: Mapping  # constexprs, tile configuration and launch options
    out_shape: tuple
    out_strides: tuple
    index_64: bool
    channels_last: bool = False  # the output's memory format
    launch: bool = True  # False when there is nothing to compute (empty output or reduction)
    split: int = 1
    pack_weight: bool = False
    extra: Mapping = field(default_factory=dict)  # operation-specific facts
    rebuild: Callable | None = field(default=None, repr=False)  # build(..., forced=config)

    @property
    def dispatch(self) -> Dispatch:
        fp32 = self.spec.dtype == torch.float32 and self.kernel.uses_dot
        return Dispatch(self.kernel.name, self.kernel.operation, types.MappingProxyType(dict(self.config)),
                        self.source, self.key, tuple(self.out_shape),
                        _format_name(self.channels_last, isinstance(self.spec, Conv3dSpec)), 64 if self.index_64 else 32,
                        self.meta.get("DOT_PRECISION") if fp32 else None, self.pack_weight, self.split)

    def with_config(self, config: Mapping[str, int]) -> "Plan":
        """The same launch with a forced tile configuration (for ``mcconv tune`` and ``inspect``)."""
        return self.rebuild(forced=dict(config))


def _format_name(channels_last: bool, volume: bool) -> str:
    """The output's memory format as torch names it (a conv3d output's channels_last is channels_last_3d)."""
    return "contiguous" if not channels_last else "channels_last_3d" if volume else "channels_last"


_plans: dict = {}


def cached(key, build: Callable[[], Plan]) -> Plan:
    """The plan under ``key``, built (and validated) on the first call of a kind.

    ``key`` holds the call's metadata only; an unhashable key (a list among the options, say)
    builds without caching. Thread-safe without a lock: a race builds a plan twice, harmlessly.
    """
    try:
        return _plans[key]
    except KeyError:
        pass
    except TypeError:
        return build()
    plan = build()
    remember(key, plan)
    return plan


def remember(key, plan: Plan) -> None:
    if len(_plans) >= MAX_PLANS:
        _plans.clear()
    _plans[key] = plan


def target_of(device: torch.device, device_name: str | None = None, sm_count: int | None = None) -> tuple:
    """(tile-table device name, SM count) to plan for: the given ones, else the tensors' GPU's."""
    return (device_name or _backend.device_name(device), sm_count or _backend.sm_count(device))


def option_key(value):
    """An option as a cache key that tells 1, 1.0 and True apart (they hash alike, validate differently).

    ints, strings and tuples of ints (the common spellings) are their own keys; anything else is
    keyed with its type(s), so that it is validated on its own.
    """
    kind = type(value)
    if kind is int or kind is str or value is None:
        return value
    if kind is tuple or kind is list:
        if kind is tuple and all(type(v) is int for v in value):
            return value
        return (kind, *value, *map(type, value))
    return (kind, value)


def tensor_key(t):
    """A tensor's metadata for a cache key (None stays None); raises AttributeError for non-tensors."""
    return None if t is None else (t.shape, t.stride(), t.dtype, t.device)


def span(shape, strides) -> int:
    """Elements between a tensor's first and last addressable element, inclusive."""
    if any(s == 0 for s in shape):
        return 0
    return 1 + sum((s - 1) * abs(st) for s, st in zip(shape, strides))


def needs_int64(*shapes_and_strides) -> bool:
    """Whether any (shape, strides) pair spans 2**31 elements or more: the kernels' INDEX_64."""
    return max((span(s, st) for s, st in shapes_and_strides), default=0) >= INT32_LIMIT


def contiguous_strides(shape, channels_last: bool = False) -> tuple:
    """Strides of a new tensor of ``shape`` (3-D or 4-D), channels_last or not."""
    if len(shape) == 3:
        c, h, w = shape
        return (1, w * c, c) if channels_last else (h * w, w, 1)
    n, c, h, w = shape
    if channels_last:
        return (h * w * c, 1, w * c, c)
    return (c * h * w, h * w, w, 1)


def batched(strides) -> tuple:
    """A 3-D tensor's strides read as a batch of one: its batch stride is never multiplied by n > 0."""
    return (0, *strides) if len(strides) == 3 else tuple(strides)


@functools.lru_cache(maxsize=None)
def autotuned(kernel: Kernel):
    """The kernel wrapped in triton.autotune over its candidates, keyed by the bucketed shape."""
    import triton

    configs = [triton.Config({k: v for k, v in c.items() if k not in tiles.LAUNCH_OPTIONS},
                             num_warps=c["num_warps"], num_stages=c["num_stages"])
               for c in tiles.candidates(kernel.table_name)]
    return triton.autotune(configs=configs, key=["bucket_m", "bucket_n", "bucket_r"])(kernel.jit())


def build(kernel: Kernel, spec, device: torch.device, target: tuple, strides: Mapping, *,
          out_shape, out_strides, spans: Callable[[int], list], channels_last: bool = False, launch: bool = True,
          pack_weight: bool = False, extra=None, forced: Mapping | None = None) -> Plan:
    """A plan for ``kernel``: tile configuration (forced, table, default or autotune), grid, arguments.

    ``target`` is (device name, SM count) of the GPU planned for: its tile table and its split
    rule (see :func:`target_of`). ``strides`` maps the kernel's operands to their strides (as
    the kernel will read them); ``spans(split)`` lists (shape, strides) of every tensor the
    launch touches, for INDEX_64.
    """
    device_name, sm_count = target
    features = kernel.features(spec)
    limits = kernel.limits(spec)
    key = tiles.shape_key(spec.dtype_key, *features)
    autotune = forced is None and _backend.autotune_requested()
    if autotune and device.type != "cuda":
        warnings.warn("mcconv: MCCONV_AUTOTUNE=1 is ignored off the GPU (Triton's interpreter cannot "
                      "benchmark); using the tile table or the heuristic default", RuntimeWarning, stacklevel=2)
        autotune = False
    if forced is not None:
        config, source = dict(forced), "forced"
    else:
        config, source = tiles.select_config(kernel.table_name, device_name, spec.dtype_key, *features, limits)
    # Under autotune the split follows the table's (or default) blocks; the kernels derive their
    # share of a reduction from the grid, so any blocks the autotuner picks remain correct.
    split = kernel.split(spec, config, sm_count)
    index_64 = needs_int64(*spans(split))
    scalars, meta = kernel.arguments(spec, strides, split)
    meta = {"INDEX_64": index_64, **meta}
    if kernel.uses_dot:
        meta["DOT_PRECISION"] = spec.dot_precision
    if autotune:
        fn, grid, config, source = autotuned(kernel), functools.partial(kernel.grid, spec, split=split), {}, "autotune"
    else:
        fn, grid = kernel.jit(), kernel.grid(spec, config, split)
        meta.update(config)
    meta.update(kernel.tile_constexprs(spec, config))  # config {} under autotune: the general case
    rebuild = functools.partial(build, kernel, spec, device, target, strides, out_shape=out_shape,
                                out_strides=out_strides, spans=spans, channels_last=channels_last, launch=launch,
                                pack_weight=pack_weight, extra=extra)
    buckets = tuple(tiles.bucket(f) for f in features)
    return Plan(kernel, spec, device, target, types.MappingProxyType(config), source, key,
                types.MappingProxyType(limits),
                fn, grid, (*scalars, *buckets), meta, tuple(out_shape), tuple(out_strides), index_64,
                channels_last=channels_last, launch=launch, split=split, pack_weight=pack_weight,
                extra=types.MappingProxyType(dict(extra or {})), rebuild=rebuild)


_MAX_GRID_YZ = 65535  # CUDA's limit on grid axes 1 and 2


def split_count(tiles: int, steps: int, sm_count: int | None) -> int:
    """Programs that share one reduction of ``steps`` block steps, given ``tiles`` output tiles.

    Enough programs for about two waves on a GPU of ``sm_count`` SMs, each keeping >= 4 steps so
    that the partial sums stay a small fraction of the traffic. Without a GPU (``sm_count``
    None: the interpreter) a few splits, so that the tests exercise the partial path at little
    cost. A function of the shapes and the GPU model only, hence deterministic.
    """
    if sm_count:
        target, min_steps = 2 * sm_count, 4
    else:
        target, min_steps = 32, 1
    split = -(-target // max(tiles, 1))
    return max(1, min(split, steps // min_steps, _MAX_GRID_YZ))


def follows_channels_last(t: torch.Tensor) -> bool:
    """Whether a gradient computed from ``t`` is laid out channels_last: ``t`` is 4-D and its
    strides suggest channels_last (torch's suggest_memory_format); 3-D gradients are contiguous."""
    from ._spec import channels_last_like

    return t.dim() == 4 and channels_last_like(tuple(t.shape), tuple(t.stride()))
