"""``mcconv inspect``: what the compiler makes of every kernel launch of a convolution, on a target GPU, without one.

For a convolution (or a suite of them), a direction and a GPU model, this plans the call as the
library would on that GPU (its tile table, else the default tiles; the split rule for its SM
count: :func:`mcconv.plans` with ``device_name`` and ``sm_count``), records the launches the
operations would make (:func:`mcconv.ops.capture`, on ``meta`` tensors: exactly the kernels,
specialisations and constexprs the library would launch, ``split_sum`` included), compiles each
for the GPU's architecture (:func:`mcconv.tools.compile.compile_launch`: no GPU, no CUDA toolkit)
and reads its SASS (:func:`mcconv.tools.sass.analyze`). Per launch it reports:

- tensor-core instruction and shape (wgmma ``m64nNk16``, ``mma.sync`` or none);
- the main loop's global loads (cp.async with width, TMA, or synchronous LDG, per ``tl.dot``
  operand) and pipeline buffers;
- registers, spilled bytes, shared memory, CTAs and warps per SM and what limits them;
- the main loop's instruction mix (mma, global, shared, integer, uniform, float, control, other);
- issue pressure: (main-loop instructions x num_warps / 4) over the tensor-core cycles of the
  iteration's MMAs at the target's dense peak (sm_90: 4096 fp16/bf16 FLOP per clock per SM, 2048
  tf32; sm_80: 2048, 1024). Above 1 the loop cannot feed the tensor cores even with perfect
  latency hiding;
- effective pressure: the same over the whole reduction of one tile, the instructions that repeat
  per tap or per outer iteration included, with the loop trip counts the kernel declares
  (:meth:`mcconv.registry.Kernel.loop_trips`) for this shape;
- for kernels without MMA (depthwise, reductions, IEEE fp32): warp instructions per element and
  issue time over memory time for the whole launch (issue: warp instructions / (4 sub-partitions x
  SMs x clock); memory: each tensor the launch touches moved once at the datasheet bandwidth);
- an issue-bound ceiling: peak / max(1, effective pressure) for tensor-core kernels; for the
  others the FLOPs over the issue time (at most the peak). ``mcconv plan --inspect`` shows it
  beside the roofline.

Everything is static: instruction counts per pass through the code, not measurements.

Command line::

    mcconv inspect --input 32,64,56,56 --weight 64,64,3,3 --padding 1 [--direction all] [--gpu a100]
    mcconv inspect --suite resnet50 --direction all --dtype tf32 [--json out.json] [--markdown out.md]
    mcconv inspect ... --details          # every figure, per distinct compile
    mcconv inspect ... --save DIR         # each kernel's TTGIR, PTX, cubin and SASS
    mcconv inspect ... --reference        # the reference GEMM's figures beside the library's

Python: ``mcconv.inspect(x, w, b, stride, padding, ..., direction="all", gpu="a100")`` returns one
:class:`LaunchRecord` per launch (``as_dict()``, ``summary()``, ``details()``, ``save(dir)``).

TRITON_INTERPRET must be unset in the process (interpreted kernels cannot be compiled).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field

import torch

from . import gpus

__all__ = ["TARGETS", "GpuTarget", "LaunchRecord", "resolve_target", "inspect", "inspect3d", "inspect_transpose2d",
           "inspect_layer",
           "inspect_suite",
           "reference_record", "fp32_mode", "plan_ceiling", "plan_ceiling_lines", "markdown_table", "use_kernels",
           "inspect_command"]


# ------------------------------------------------------------------------------- GPU models

@dataclass(frozen=True)
class GpuTarget:
    """What inspect needs of a GPU model beyond its datasheet peaks (mcconv.tools.gpus): SMs, the
    clock its peak figures assume, compute capability."""

    key: str  # a key of mcconv.tools.gpus.GPUS
    sm_count: int
    clock_ghz: float
    arch: int  # compute capability as an integer: 90, 80

    def spec(self) -> gpus.GpuSpec:
        return gpus.GPUS[self.key]


# SM counts: NVIDIA H100 Tensor Core GPU Architecture whitepaper (H100 SXM5 132 SMs, PCIe 114),
# H200 product brief (the H100 SXM5 die: 132 SMs), NVIDIA A100 Tensor Core GPU Architecture
# whitepaper (108 SMs). Clocks: the boost clock at which the datasheet's dense tensor peaks in
# mcconv.tools.gpus are computed, peak / (SMs x dense FLOP per clock per SM: 4096 fp16 on sm_90,
# 2048 on sm_80): H100 SXM5 989.4 TFLOP/s -> 1.83 GHz (the whitepaper's 1830 MHz), H100 PCIe
# 756.5 -> 1.62 GHz, H100 NVL 835.5 -> 1.545 GHz, A100 312 -> 1.41 GHz (the whitepaper's 1410
# MHz), so that issue time and tensor-core time use the same clock.
TARGETS = {
    "h100-sxm": GpuTarget("h100-sxm", 132, 1.83, 90),
    "h100-pcie": GpuTarget("h100-pcie", 114, 1.62, 90),
    "h100-nvl": GpuTarget("h100-nvl", 132, 1.545, 90),
    "h200": GpuTarget("h200", 132, 1.83, 90),
    "a100-sxm-80gb": GpuTarget("a100-sxm-80gb", 108, 1.41, 80),
    "a100-sxm-40gb": GpuTarget("a100-sxm-40gb", 108, 1.41, 80),
    "a100-pcie-80gb": GpuTarget("a100-pcie-80gb", 108, 1.41, 80),
    "a100-pcie-40gb": GpuTarget("a100-pcie-40gb", 108, 1.41, 80),
}


def resolve_target(gpu: str | None) -> GpuTarget:
    """The target for a --gpu key, alias or torch device name (default: h100-sxm)."""
    spec = gpus.find_gpu(gpu or gpus.DEFAULT_GPU)
    if spec is None or spec.key not in TARGETS:
        known = ", ".join(sorted(TARGETS))
        raise ValueError(f"gpu: expected one of {known} (or an alias such as h100, a100, or a torch device name), "
                         f"got {gpu!r}")
    return TARGETS[spec.key]


# ------------------------------------------------------------------------------- records

_LEGEND = """\
legend: MMA = tensor-core instruction (wgmma mMnNkK: Hopper warpgroup MMA; mma.sync: Ampere-style; none)
        loads = main-loop global loads per tl.dot operand A/B: cp.asyncN (asynchronous, N bytes/thread),
                tma, ldgN (synchronous LDG); "N buf" = shared-memory pipeline buffers per operand
        regs/thread, spilled bytes (STL+LDL), dynamic shared memory per CTA
        occupancy = CTAs/warps resident per SM (what limits them: regs, smem, warps, ctas)
        loop a MMA : b = MMA and other instructions per main-loop iteration (one warp)
        pressure = main-loop issue cycles per SM sub-partition / its MMA cycles at the dense peak
        (>1: issue-bound); eff = the same over one tile's whole reduction (trip counts from the shape)
        no-MMA kernels: warp instructions per element, issue time / memory time (>1: issue-bound)
        ceiling = issue-bound TFLOP/s: peak / max(1, eff) (no MMA: FLOPs / issue time, at most the peak)"""


@dataclass
class LaunchRecord:
    """One kernel launch of a call, compiled for a target GPU and analysed.

    ``dispatch`` is the plan's :class:`mcconv.Dispatch` (None for the split_sum pass and the
    reference GEMM); ``report`` the :class:`mcconv.tools.sass.KernelReport`; ``nest`` the
    :class:`mcconv.tools.sass.NestPressure` over one tile's reduction (None when the kernel declares
    no trip counts or they do not match its SASS loops, said in ``notes``).
    """

    layer: str | None
    direction: str  # "forward" or "backward" ("reference" for the reference GEMM)
    operation: str  # forward, input_grad, weight_grad, bias_act_grad, split_sum, split_epilogue, reference
    kernel: str  # registry name, "split_sum", "split_epilogue" (a split forward's second pass) or "matmul_reference"
    jit_name: str
    dispatch: object | None
    grid: tuple
    gpu: GpuTarget
    dtype: str  # "float16", "bfloat16", "tf32" (fp32 on tensor cores), "float32"
    trips: list
    report: object | None  # KernelReport (None when the compile failed)
    nest: object | None
    flops: int | None  # of the convolution (each direction's kernels do the forward's FLOPs); None: not a conv
    bytes: int  # each tensor the launch touches, once
    elements: int  # elements of the tensor the kernel produces or streams (see `element_unit`)
    element_unit: str
    variant: str  # the compile's hash (names its --save folder); "" when it failed
    error: str | None = None
    notes: list = field(default_factory=list)
    compiled: object | None = field(default=None, repr=False)

    # -- figures

    @property
    def has_mma(self) -> bool:
        return self.report is not None and self.report.mma_kind != "none"

    @property
    def pressure(self) -> float | None:
        return None if self.report is None else self.report.issue_pressure

    @property
    def effective_pressure(self) -> float | None:
        return None if self.nest is None else self.nest.pressure

    @property
    def peak_tflops(self) -> float:
        """The GPU's dense peak for this launch's math: tensor cores when it has MMAs, else fp32 CUDA cores."""
        spec = self.gpu.spec()
        if self.has_mma:
            return spec.peak_tflops("tf32" if self.dtype in ("tf32", "float32") else self.dtype)
        return spec.fp32_tflops

    @property
    def warp_instructions(self) -> int | None:
        """Warp instructions the whole launch issues: CTAs x num_warps x (one tile's nest + code outside it)."""
        if self.nest is None or self.report is None:
            return None
        ctas = math.prod(self.grid) if isinstance(self.grid, tuple) else 0
        return ctas * self.report.num_warps * (self.nest.instructions + self.nest.outside_instructions)

    @property
    def warp_instructions_per_element(self) -> float | None:
        wi = self.warp_instructions
        return None if wi is None or not self.elements else wi / self.elements

    @property
    def issue_seconds(self) -> float | None:
        wi = self.warp_instructions
        return None if wi is None else wi / (4 * self.gpu.sm_count * self.gpu.clock_ghz * 1e9)

    @property
    def memory_seconds(self) -> float:
        return self.bytes / (self.gpu.spec().bandwidth_tbs * 1e12)

    @property
    def issue_memory_ratio(self) -> float | None:
        """Issue time over memory time of the whole launch (mcconv.tools.sass.issue_memory_ratio)."""
        wi = self.warp_instructions
        if wi is None or not self.bytes:
            return None
        from .sass import issue_memory_ratio

        return issue_memory_ratio(wi, self.bytes, self.gpu.sm_count, self.gpu.clock_ghz * 1e9,
                                  self.gpu.spec().bandwidth_tbs * 1e12)

    @property
    def ceiling_tflops(self) -> float | None:
        """Issue-bound ceiling: peak / max(1, effective pressure) with MMAs (the main loop's pressure
        when the nest is unknown); without, the FLOPs over the issue time, at most the peak."""
        if self.report is None:
            return None
        if self.has_mma:
            p = self.effective_pressure if self.effective_pressure is not None else self.pressure
            return None if p is None else self.peak_tflops / max(1.0, p)
        issue = self.issue_seconds
        if not self.flops or not issue:
            return None
        return min(self.peak_tflops, self.flops / issue / 1e12)

    # -- output

    @property
    def tiles(self) -> str:
        """Tile configuration, compactly: 128x64x32 g8 w4 s3 (BLOCK_M x BLOCK_N x BLOCK_K, GROUP_M, warps, stages)."""
        config = dict(self.dispatch.config) if self.dispatch is not None else {}
        if not config:
            return f"w{self.report.num_warps} s{self.report.num_stages}" if self.report else "-"
        blocks = "x".join(str(config[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if k in config)
        extra = [f"g{config['GROUP_M']}"] if "GROUP_M" in config else []
        extra += [f"w{config.get('num_warps', '?')}", f"s{config.get('num_stages', '?')}"]
        split = f" split {self.dispatch.split}" if self.dispatch.split > 1 else ""
        return f"{blocks} {' '.join(extra)}{split}"

    def loads_text(self) -> str:
        if self.report is None or self.report.main_loop is None:
            return "no main loop"
        return self.report._loads_text()

    def figures_text(self) -> str:
        """What the summary line adds to mcconv.tools.sass's: effective pressure, or (no MMA) the
        whole launch's issue figures; then the ceiling."""
        if self.has_mma:
            parts = [f"eff {_num(self.effective_pressure)}"]
        else:
            parts = [f"{_num(self.warp_instructions_per_element)} warp instr/elem",
                     f"issue/memory {_num(self.issue_memory_ratio)}"]
        ceiling = self.ceiling_tflops
        if ceiling is not None:
            parts.append(f"ceiling {ceiling:.4g} TFLOP/s")
        return " | ".join(parts)

    def summary(self) -> str:
        """One line: who, then mcconv.tools.sass's summary, then pressure, over the reduction, ceiling."""
        head = f"{_SHORT.get(self.direction, self.direction)} {self.kernel} {self.tiles}"
        if self.layer:
            head = f"{self.layer} {head}"
        if self.report is None:
            return f"{head} | FAILED: {self.error}"
        return f"{head} | {self.report.summary()} | {self.figures_text()}"

    def details(self) -> str:
        """Several lines: the dispatch, the KernelReport's details, the nest and the whole-launch figures."""
        out = [f"== {self.layer + ' ' if self.layer else ''}{self.direction} {self.kernel} ({self.jit_name}) "
               f"on {self.gpu.spec().title}, {self.dtype}"]
        if self.dispatch is not None:
            out.append(f"dispatch: {self.dispatch}")
        out.append(f"grid {self.grid}, variant {self.variant or '-'}")
        if self.report is None:
            out.append(f"FAILED: {self.error}")
            return "\n".join(out)
        out.append(self.report.details())
        if self.nest is not None:
            n = self.nest
            levels = "; ".join(f"level {i} [{lv['start']:#06x}..{lv['end']:#06x}] {lv['own_instructions']} own instr "
                               f"x {lv['executions']}" for i, lv in enumerate(n.levels))
            out.append(f"over one tile's reduction, trip counts {n.trip_counts} "
                       f"(innermost first): {levels}; {n.peeled_iterations} peeled; {n.instructions} instr per warp "
                       f"+ {n.outside_instructions} outside the nest"
                       + (f"; effective pressure {_num(n.pressure)}" if self.has_mma else ""))
        wi = self.warp_instructions
        if wi is not None:
            out.append(f"whole launch: {wi:,} warp instructions ({_num(self.warp_instructions_per_element)} per "
                       f"{self.element_unit} element), {self.bytes:,} B; issue {self.issue_seconds * 1e6:.3g} us "
                       f"vs memory {self.memory_seconds * 1e6:.3g} us at {self.gpu.spec().bandwidth_tbs} TB/s "
                       f"(ratio {_num(self.issue_memory_ratio)})")
        ceiling = self.ceiling_tflops
        if ceiling is not None:
            out.append(f"issue-bound ceiling {ceiling:.4g} TFLOP/s (peak {self.peak_tflops:g})")
        out.extend(f"note: {n}" for n in self.notes)
        return "\n".join(out)

    def as_dict(self, report: bool = True) -> dict:
        """JSON-ready: identity, dispatch, the nest, the derived figures and (``report``) the whole
        KernelReport; without it, a document lists each variant's report once (see ``variant``)."""
        from .sass import _jsonable

        d = self.dispatch
        return _jsonable({
            "layer": self.layer, "direction": self.direction, "operation": self.operation, "kernel": self.kernel,
            "jit_name": self.jit_name, "gpu": self.gpu.key, "target": f"sm_{self.gpu.arch}", "dtype": self.dtype,
            "config": dict(d.config) if d is not None else None,
            "config_source": d.config_source if d is not None else None,
            "split": d.split if d is not None else None, "index_bits": d.index_bits if d is not None else None,
            "grid": list(self.grid) if isinstance(self.grid, tuple) else None, "trip_counts": list(self.trips),
            "variant": self.variant, "error": self.error, "summary": self.summary(),
            "mma": None if self.report is None else (f"{self.report.mma_kind} {self.report.mma_shape}"
                                                      if self.has_mma else "none"),
            "async_loads": self.async_loads, "registers": None if self.report is None else self.report.registers,
            "spill_bytes": None if self.report is None else
            self.report.spill_store_bytes + self.report.spill_load_bytes,
            "pressure": self.pressure, "effective_pressure": self.effective_pressure,
            "ceiling_tflops": self.ceiling_tflops, "peak_tflops": self.peak_tflops, "flops": self.flops,
            "bytes": self.bytes, "elements": self.elements, "element_unit": self.element_unit,
            "warp_instructions": self.warp_instructions,
            "warp_instructions_per_element": self.warp_instructions_per_element,
            "issue_memory_ratio": self.issue_memory_ratio,
            "nest": None if self.nest is None else asdict(self.nest),
            **({"report": None if self.report is None else self.report.as_dict()} if report else {}),
            "notes": list(self.notes),
        })

    @property
    def async_loads(self) -> str | None:
        """"all" when every main-loop global load is cp.async or TMA, "none", "some", or None without a loop."""
        loop = None if self.report is None else self.report.main_loop
        if loop is None or not loop.loads:
            return None
        kinds = {ld.kind != "sync" for ld in loop.loads}
        return "all" if kinds == {True} else "none" if kinds == {False} else "some"

    def save(self, directory) -> dict:
        """Write this launch's TTGIR, PTX, cubin and SASS under ``directory/sm_XX/<jit name>-<variant>/``."""
        if self.compiled is None:
            return {}
        folder = os.path.join(directory, f"sm_{self.gpu.arch}", f"{self.jit_name}-{self.variant}")
        return {k: str(v) for k, v in self.compiled.save(folder).items()}


_SHORT = {"forward": "fwd", "backward": "bwd", "reference": "ref"}


def _num(value) -> str:
    if value is None:
        return "?"
    if isinstance(value, float) and not math.isfinite(value):
        return "inf"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


# ------------------------------------------------------------------------------- compiling

def use_kernels(directory: str) -> None:
    """Compile the device code in ``directory`` (a ``kernels/`` folder, e.g. of another checkout)
    instead of the installed ``mcconv._kernels``: must run before anything loads the kernels."""
    import importlib.util

    directory = os.path.abspath(directory)
    init = os.path.join(directory, "__init__.py")
    if not os.path.exists(init):
        raise ValueError(f"--kernels: no __init__.py in {directory}")
    loaded = sys.modules.get("mcconv._kernels")
    if loaded is not None:
        if os.path.dirname(os.path.abspath(loaded.__file__)) == directory:
            return
        raise RuntimeError("--kernels: mcconv's kernels are already loaded from "
                           f"{os.path.dirname(loaded.__file__)}")
    spec = importlib.util.spec_from_file_location("mcconv._kernels", init, submodule_search_locations=[directory])
    module = importlib.util.module_from_spec(spec)
    sys.modules["mcconv._kernels"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["mcconv._kernels"]
        raise


def _check_compilable() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("mcconv inspect compiles the kernels: unset TRITON_INTERPRET (interpreted kernels "
                           "cannot be compiled); run it in a process without the interpreter")


_ANALYSES: dict = {}  # id(Compiled) -> KernelReport (Compiled objects live in compile.py's cache)


def _compile(fn, args, kwargs, arch: int):
    """(Compiled, KernelReport) of one launch; identical compiles are answered from the caches."""
    from .compile import compile_launch
    from .sass import analyze

    compiled = compile_launch(fn, args, kwargs, arch)
    report = _ANALYSES.get(id(compiled))
    if report is None:
        report = analyze(compiled)
        _ANALYSES[id(compiled)] = report
    return compiled, report


def _variant(compiled) -> str:
    return str(getattr(compiled.kernel, "hash", "") or getattr(compiled.kernel.metadata, "hash", ""))[:12]


def _record(*, layer, direction, operation, kernel, jit_name, dispatch, fn, grid, args, kwargs, target, dtype,
            trips, flops, elements, element_unit) -> LaunchRecord:
    tensors = {id(a): a for a in args if isinstance(a, torch.Tensor)}
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    grid = tuple(grid) if isinstance(grid, (tuple, list)) else (grid,) if isinstance(grid, int) else grid
    record = LaunchRecord(layer, direction, operation, kernel, jit_name, dispatch, grid, target, dtype, list(trips),
                          None, None, flops, nbytes, elements, element_unit, "")
    try:
        compiled, report = _compile(fn, args, kwargs, target.arch)
    except Exception as err:  # noqa: BLE001 - a launch that does not compile is a finding, not a crash
        record.error = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
        return record
    record.compiled, record.report, record.variant = compiled, report, _variant(compiled)
    if report.main_loop is None:
        record.notes.append("no main loop found: no pressure")
    elif not trips:
        record.notes.append("the kernel declares no loop trip counts (Kernel.loop_trips): no effective pressure")
    else:
        try:
            record.nest = report.nest_pressure(trips)
        except ValueError as err:
            # Triton makes an int argument equal to 1 a constant, so a loop of one iteration (one
            # channel: `range(0, 1, BLOCK_K)`) may be compiled away: its level is then no SASS loop.
            fewer = [t for t in trips if t != 1]
            try:
                if not fewer or fewer == list(trips):
                    raise err
                record.nest = report.nest_pressure(fewer)
                record.notes.append(f"levels of one iteration are no SASS loop here: trip counts {fewer}")
            except ValueError:
                record.notes.append(f"trip counts {list(trips)} do not fit the SASS loop nest: {err}")
    return record


# ------------------------------------------------------------------------------- launches of a call

def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _meta(t):
    return None if t is None else torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=t.dtype,
                                                      device="meta")


def _capture(plan, x, w, b, residual, grad_y, preact: bool):
    """The launches ``plan``'s operation makes, recorded on meta tensors."""
    from mcconv import ops
    from mcconv.ops import bias_act, forward, input_grad, weight_grad
    from mcconv.registry import BIAS_ACT_GRAD, FORWARD, INPUT_GRAD

    operation = plan.kernel.operation
    with ops.capture() as launches:
        if operation == FORWARD:
            forward.run(plan, x, w, b, residual, preact=preact)
        elif operation == INPUT_GRAD:
            input_grad.run(plan, grad_y, w)
        elif operation == BIAS_ACT_GRAD:
            bias_act.run(plan, grad_y, grad_y if plan.spec.activation is not None else None)
        else:
            weight_grad.run(plan, grad_y, x)
    return launches


def inspect(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None, residual=None,
            direction: str = "forward", gpu: str | None = None, layer: str | None = None) -> list[LaunchRecord]:
    """Every kernel launch of ``mcconv.conv2d(...)`` (and, with ``direction`` "backward" or "all",
    of its backward) as the library would make it on ``gpu``, compiled for that GPU and analysed.

    Arguments as :func:`mcconv.explain` (tensors may be on the ``meta`` device; only shapes,
    strides and dtypes are read); fp32 uses TF32 when torch would (``torch.backends.cudnn.conv.
    fp32_precision``). ``gpu``: a key of :data:`TARGETS` or an alias (``h100``, ``a100``; default
    h100-sxm). Needs no GPU, but a triton with its NVIDIA backend, and TRITON_INTERPRET unset.
    Returns one :class:`LaunchRecord` per launch, in launch order (forward, then the backward's
    bias/activation, input-gradient, weight-gradient and split-sum launches).
    """
    import mcconv
    from mcconv import _backend
    from mcconv.registry import BIAS_ACT_GRAD, FORWARD, INPUT_GRAD

    _check_compilable()
    target = resolve_target(gpu)
    gpu_spec = target.spec()
    x, w, b, r = _meta(input), _meta(weight), _meta(bias), _meta(residual)
    where = {"device_name": gpu_spec.table_name, "sm_count": target.sm_count}
    conv = (stride, padding, dilation, groups)
    fwd = mcconv.plans(x, w, b, *conv, activation=activation, residual=r, **where)[0]
    plans = mcconv.plans(x, w, b, *conv, activation=activation, residual=r, direction=direction, **where)
    # The backward's dL/dy is laid out as the forward's output (as mcconv.plans takes it).
    grad_y = torch.empty_strided(fwd.out_shape, fwd.out_strides, dtype=x.dtype, device="meta")
    dtype = _dtype_name(x.dtype)
    if x.dtype == torch.float32:
        dtype = "tf32" if _backend.uses_tf32(x.dtype, x.device) else "float32"
    records = []
    for plan in plans:
        if not plan.launch:
            continue
        op = plan.kernel.operation
        # Training stores the pre-activation when the activation's derivative reads it.
        act = plan.spec.activation if op == FORWARD else None
        preact = direction != "forward" and act is not None and act.needs_preact
        for fn, grid, args, kwargs in _capture(plan, x, w, b, r, grad_y, preact):
            if fn is plan.fn:
                if op in (FORWARD, INPUT_GRAD):
                    elements, unit = math.prod(plan.out_shape), "output"
                else:
                    elements, unit = math.prod(grad_y.shape), "dL/dy"
                records.append(_record(
                    layer=layer, direction="forward" if op == FORWARD else "backward", operation=op,
                    kernel=plan.kernel.name, jit_name=fn.__name__, dispatch=plan.dispatch, fn=fn, grid=grid,
                    args=args, kwargs=kwargs, target=target, dtype=dtype,
                    trips=plan.kernel.loop_trips(plan.spec, plan.config, plan.split),
                    flops=None if op == BIAS_ACT_GRAD else fwd.spec.flops, elements=elements, element_unit=unit))
            else:  # the fixed-order sum of split partials (kernels/reduce.py: `for _ in range(0, SPLIT)`;
                # a split forward's: conv2d_split_epilogue_kernel, the same loop, then the epilogue)
                name = "split_epilogue" if fn.__name__ == "conv2d_split_epilogue_kernel" else "split_sum"
                records.append(_record(
                    layer=layer, direction="forward" if op == FORWARD else "backward", operation=name, kernel=name,
                    jit_name=fn.__name__, dispatch=None, fn=fn, grid=grid, args=args, kwargs=kwargs, target=target,
                    dtype=dtype, trips=[int(args[2])], flops=None, elements=int(args[3]), element_unit="output"))
    return records


def inspect3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None,
              residual=None, direction: str = "forward", gpu: str | None = None,
              layer: str | None = None) -> list[LaunchRecord]:
    """:func:`inspect` for a ``mcconv.conv3d(...)`` call (arguments as :func:`mcconv.explain3d`).

    Calls of 16 or more input channels per group: the depth kernel's forward launch
    (``conv3d_direct``), then with ``direction`` "backward" or "all" the backward launches of
    the depth im2col's 2-D call, which is what its gradient runs (the gather and scatter copies
    around them are torch's; silu's and gelu's extra forward launch, which recomputes the
    pre-activation, is not listed). Other calls: :func:`inspect` of the depth im2col's 2-D call.
    """
    from mcconv import _backend, ops
    from mcconv.conv3d import _describe, _validated, _views, takes_depth_kernel
    from mcconv.epilogue import activation as activation_of
    from mcconv.ops import forward3d

    _check_compilable()
    x, w, b, r, options = _validated(_meta(input), _meta(weight), _meta(bias), stride, padding, dilation, groups,
                                     _meta(residual))
    spec = _describe(x, w, b, r, activation_of(activation), options)
    x2, w2, b2, *conv2, r2, _ = _views(x, w, b, r, options)
    if not takes_depth_kernel(spec):
        return inspect(x2, w2, b2, *conv2, activation=activation, residual=r2, direction=direction, gpu=gpu,
                       layer=layer)
    records = []
    if direction != "backward":
        target = resolve_target(gpu)
        plan = forward3d.plan(spec, x, w, r, device_name=target.spec().table_name, sm_count=target.sm_count)
        dtype = _dtype_name(x.dtype)
        if x.dtype == torch.float32:
            dtype = "tf32" if _backend.uses_tf32(x.dtype, x.device) else "float32"
        with ops.capture() as launches:
            forward3d.run(plan, x, w, b, r)
        for fn, grid, args, kwargs in launches:
            records.append(_record(
                layer=layer, direction="forward", operation=plan.kernel.operation, kernel=plan.kernel.name,
                jit_name=fn.__name__, dispatch=plan.dispatch, fn=fn, grid=grid, args=args, kwargs=kwargs,
                target=target, dtype=dtype, trips=plan.kernel.loop_trips(plan.spec, plan.config), flops=spec.flops,
                elements=math.prod(plan.out_shape), element_unit="output"))
    if direction != "forward":
        records += inspect(x2, w2, b2, *conv2, activation=activation, residual=r2, direction="backward", gpu=gpu,
                           layer=layer)
    return records


def inspect_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                        activation=None, residual=None, direction: str = "forward", gpu: str | None = None,
                        layer: str | None = None) -> list[LaunchRecord]:
    """:func:`inspect` for a ``mcconv.conv_transpose2d(...)`` call (arguments as
    :func:`mcconv.explain_transpose2d`): its forward's launches, the input-gradient kernel with the
    fused epilogue (and the split epilogue pass of a split 1x1). Forward only: its backward's
    kernels are those of the convolution it transposes (inspect that convolution)."""
    from mcconv import _backend, ops
    from mcconv.ops import input_grad
    from mcconv.transpose import plan_transpose2d

    if direction != "forward":
        raise ValueError(f"direction: inspect of a transposed convolution is forward only, got {direction!r}")
    _check_compilable()
    target = resolve_target(gpu)
    x, w, b, r = _meta(input), _meta(weight), _meta(bias), _meta(residual)
    plan, x = plan_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation, activation=activation,
                               residual=r, device_name=target.spec().table_name, sm_count=target.sm_count)
    dtype = _dtype_name(x.dtype)
    if x.dtype == torch.float32:
        dtype = "tf32" if _backend.uses_tf32(x.dtype, x.device) else "float32"
    with ops.capture() as launches:
        input_grad.run(plan, x, w, b, r)
    records = []
    for fn, grid, args, kwargs in launches:
        main = fn is plan.fn
        name = plan.kernel.name if main else "split_epilogue"
        records.append(_record(
            layer=layer, direction="forward", operation="forward" if main else name, kernel=name,
            jit_name=fn.__name__, dispatch=plan.dispatch if main else None, fn=fn, grid=grid, args=args,
            kwargs=kwargs, target=target, dtype=dtype,
            trips=plan.kernel.loop_trips(plan.spec, plan.config, plan.split) if main else [int(args[2])],
            flops=plan.spec.flops if main else None, elements=math.prod(plan.out_shape), element_unit="output"))
    return records


@contextlib.contextmanager
def fp32_mode(mode: str | None):
    """Within: fp32 convolutions use TF32 (``mode`` "tf32") or IEEE fp32 ("float32"), as torch's
    convolution setting says; None leaves the setting alone. Restored on exit."""
    if mode not in ("tf32", "float32"):
        yield
        return
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        saved = conv.fp32_precision
        conv.fp32_precision = "tf32" if mode == "tf32" else "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = saved
    else:
        saved = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = mode == "tf32"
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = saved


def inspect_layer(layer, dtype: str = "float16", layout: str = "channels_last", gpu: str | None = None, *,
                  bias: bool = False, activation: str | None = None, direction: str = "forward",
                  name: str | None = None) -> list[LaunchRecord]:
    """:func:`inspect` (:func:`inspect3d` for a conv3d layer) of a layer of
    :mod:`mcconv.tools.suites`; ``dtype`` also takes "tf32"."""
    from .problems import layer_tensors

    torch_dtype = "float32" if dtype == "tf32" else dtype
    compile_call = {"conv3d": inspect3d, "conv_transpose2d": inspect_transpose2d}.get(layer.op, inspect)
    with fp32_mode(dtype if torch_dtype == "float32" else None):
        x, w, b = layer_tensors(layer, torch_dtype, layout, bias=bias)
        return compile_call(x, w, b, *layer.conv_args, activation=activation, direction=direction, gpu=gpu,
                            layer=layer.name if name is None else name)


def inspect_suite(layers, dtype: str = "float16", layout: str = "channels_last", gpu: str | None = None, *,
                  bias: bool = False, activation: str | None = None, direction: str = "forward",
                  progress: bool = False) -> list[LaunchRecord]:
    """:func:`inspect_layer` over layers, in order (identical compiles are made once)."""
    from .progress import progress as bar

    records = []
    status = bar(len(layers), "inspect", enabled=progress)
    for layer in layers:
        records += inspect_layer(layer, dtype, layout, gpu, bias=bias, activation=activation, direction=direction)
        status.update(1)
    status.close()
    return records


def reference_record(gpu: str | None = None, m: int = 4096, n: int = 4096, k: int = 4096) -> LaunchRecord:
    """The reference fp16 GEMM (kernels/matmul_reference.py, Triton's tutorial GEMM: 128x128x64, 8 warps,
    3 stages) compiled for ``gpu`` and analysed like the library's launches: the yardstick."""
    from .sass import reference_launch

    _check_compilable()
    target = resolve_target(gpu)
    fn, args, kwargs = reference_launch(m, n, k)
    grid = (math.ceil(m / kwargs["BLOCK_SIZE_M"]) * math.ceil(n / kwargs["BLOCK_SIZE_N"]),)
    record = _record(layer=f"GEMM {m}x{n}x{k}", direction="reference", operation="reference",
                     kernel="matmul_reference", jit_name=fn.__name__, dispatch=None, fn=fn, grid=grid, args=args,
                     kwargs=kwargs, target=target, dtype="float16", trips=[math.ceil(k / kwargs["BLOCK_SIZE_K"])],
                     flops=2 * m * n * k, elements=m * n, element_unit="output")
    return record


# ------------------------------------------------------------------------------- plan's ceiling

def plan_ceiling(analysis, *, activation: str | None = None) -> dict:
    """The forward launch's issue figures for ``mcconv plan --inspect`` (an ``Analysis`` of
    mcconv.tools.plan): {"issue_pressure", "effective_pressure", "issue_ceiling_tflops",
    "issue_memory_ratio", "summary"}; {"issue_error": text} when it cannot compile."""
    if analysis.gpu is None or analysis.gpu.key not in TARGETS:
        return {"issue_error": f"no SM count and clock for {analysis.device_name} in mcconv.tools.inspect.TARGETS"}
    try:
        dtype = analysis.dtype
        if dtype == "float32":
            dtype = "tf32" if analysis.dispatch.dot_precision == "tf32" else "float32"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")  # triton 3.9's notice
            records = inspect_layer(analysis.layer, dtype, analysis.layout, analysis.gpu.key,
                                    bias="bias" in analysis.bytes_by_tensor, activation=activation, name="")
    except Exception as err:  # noqa: BLE001 - plan works without the compiler; say why there is no ceiling
        return {"issue_error": f"{type(err).__name__}: {err}"}
    rec = records[0]
    return {"issue_pressure": rec.pressure, "effective_pressure": rec.effective_pressure,
            "issue_ceiling_tflops": rec.ceiling_tflops, "issue_memory_ratio": rec.issue_memory_ratio,
            "warp_instructions_per_element": rec.warp_instructions_per_element, "summary": rec.summary(),
            "issue_error": rec.error}


def plan_ceiling_lines(figures: dict, roofline_tflops: float | None) -> list[str]:
    """The lines ``mcconv plan --inspect`` prints."""
    if figures.get("issue_error"):
        return [f"issue     not available: {figures['issue_error']}"]
    ceiling = figures.get("issue_ceiling_tflops")
    lines = [f"compiled  {figures['summary']}"]
    if figures.get("issue_pressure") is not None:
        text = (f"issue     pressure {_num(figures['issue_pressure'])} per main-loop iteration, "
                f"{_num(figures['effective_pressure'])} over a tile's reduction")
    else:
        text = (f"issue     {_num(figures.get('warp_instructions_per_element'))} warp instructions per output "
                f"element, issue/memory time {_num(figures.get('issue_memory_ratio'))}")
    if ceiling is not None:
        text += f": issue-bound ceiling {ceiling:.4g} TFLOP/s"
        if roofline_tflops:
            text += f" beside the roofline's {roofline_tflops:.4g}"
            text += " (issue-bound)" if ceiling < roofline_tflops else ""
    lines.append(text)
    return lines


# ------------------------------------------------------------------------------- output

_MD_HEAD = ("| layer | dir | kernel | tiles | MMA | async loads | regs | spills (B) | occupancy | pressure "
            "| eff. pressure | ceiling TFLOP/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def _md_row(r: LaunchRecord) -> str:
    rep, who = r.report, f"| {r.layer} | {_SHORT.get(r.direction, r.direction)} | {r.kernel} | {r.tiles} |"
    if rep is None:
        return f"{who} FAILED: {r.error} | | | | | | | |"
    mma = f"{rep.mma_kind} {rep.mma_shape}" if r.has_mma else "none"
    loads = r.loads_text()
    occ = (f"{rep.occupancy.ctas_per_sm} CTA / {rep.occupancy.warps_per_sm} warps ({', '.join(rep.occupancy.limiters)})"
           if rep.occupancy else "?")
    if r.has_mma:
        pressure, eff = _num(r.pressure), _num(r.effective_pressure)
    else:
        pressure = f"{_num(r.warp_instructions_per_element)} instr/elem"
        eff = f"issue/mem {_num(r.issue_memory_ratio)}"
    ceiling = r.ceiling_tflops
    spills = rep.spill_store_bytes + rep.spill_load_bytes
    return (f"{who} {mma} | {loads} | {rep.registers} | {spills} | {occ} | {pressure} | {eff} | "
            f"{'-' if ceiling is None else f'{ceiling:.4g}'} |")


def markdown_table(records, *, title: str, command: str, meta: dict, reference: LaunchRecord | None = None) -> str:
    """A short markdown report: the command, the setting, one row per launch (the reference first)."""
    lines = [f"# {title}", "", "Made by:", "", "```bash", command, "```", ""]
    lines.append(", ".join(f"{k}: {v}" for k, v in meta.items()))
    lines += ["", "Static figures from the SASS (see `mcconv inspect --help` and mcconv/tools/inspect.py): "
              "pressure = main-loop issue cycles per SM sub-partition over its tensor-core cycles at the dense peak "
              "(> 1: issue-bound); eff. pressure = over one tile's whole reduction; kernels without MMA show warp "
              "instructions per element and issue time / memory time; ceiling = issue-bound TFLOP/s.", "", _MD_HEAD]
    if reference is not None:
        lines.append(_md_row(reference))
    lines += [_md_row(r) for r in records]
    return "\n".join(lines) + "\n"


def _document(records, reference, *, command, meta, seconds) -> dict:
    return {"tool": "mcconv inspect", "command": command, **meta, "seconds": round(seconds, 1),
            "launches": len(records), "distinct_compiles": len({r.variant for r in records if r.variant}),
            "reference": None if reference is None else reference.as_dict(),
            "records": [r.as_dict(report=False) for r in records],
            "variants": {r.variant: r.report.as_dict() for r in records if r.report is not None}}


def _print_text(records, reference, *, details: bool, legend: bool, header: str) -> None:
    print(header)
    for r in ([reference] if reference is not None else []) + list(records):
        print(r.summary())
    if legend:
        print(_LEGEND)
    if details:
        seen = set()
        for r in ([reference] if reference is not None else []) + list(records):
            key = (r.variant, tuple(r.trips), r.layer)
            if key in seen:
                continue
            seen.add(key)
            print()
            print(r.details())


# ------------------------------------------------------------------------------- command line

DTYPE_CHOICES = ("float16", "bfloat16", "tf32", "float32")


def inspect_command(args) -> int:
    """What the compiler makes of each kernel launch of a convolution on a target GPU: tensor-core
    instruction, asynchronous loads and pipeline buffers, registers, spills, occupancy, the main
    loop's instruction mix and issue pressure, and the issue-bound ceiling. Needs no GPU (the
    triton wheel's ptxas and nvdisasm do the work); each distinct compile takes a few seconds,
    identical ones are made once. Figures are static, not measured: see mcconv/tools/inspect.py.
    """
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        if "triton" in sys.modules:
            print("mcconv inspect: TRITON_INTERPRET is set and triton is loaded for the interpreter; "
                  "run inspect in a process without it", file=sys.stderr)
            return 2
        os.environ.pop("TRITON_INTERPRET")  # compiling is the whole point: never the interpreter here
    warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
    from .plan import layer_from_args
    from .suites import get_suite

    try:
        if args.kernels:
            use_kernels(args.kernels)
        target = resolve_target(args.gpu)
        if args.suite:
            layers = get_suite(args.suite, args.batch)
        elif args.input and args.weight:
            layers = [layer_from_args(args, name="conv")]
        else:
            raise ValueError("give --input and --weight, or --suite")
    except (ValueError, TypeError, RuntimeError) as err:
        print(f"mcconv inspect: {err}", file=sys.stderr)
        return 2
    try:
        from triton.backends import backends

        if "nvidia" not in backends:
            raise RuntimeError("this triton has no NVIDIA backend")
        from .compile import tool_path

        for tool in ("ptxas", "cuobjdump", "nvdisasm"):
            tool_path(tool)
    except Exception as err:  # noqa: BLE001 - any reason this triton cannot compile for NVIDIA
        print(f"mcconv inspect: cannot compile here: {type(err).__name__}: {err}", file=sys.stderr)
        return 3

    import triton

    start = time.perf_counter()
    try:
        reference = reference_record(target.key) if args.reference else None
        records = inspect_suite(layers, args.dtype, args.layout, target.key, bias=args.bias,
                                activation=args.activation, direction=args.direction,
                                progress=len(layers) > 1 and sys.stderr.isatty())
    except (ValueError, TypeError) as err:
        print(f"mcconv inspect: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    spec = target.spec()
    meta = {"gpu": spec.title, "gpu_key": target.key, "target": f"sm_{target.arch}", "sm_count": target.sm_count,
            "clock_ghz": target.clock_ghz, "triton": triton.__version__, "torch": torch.__version__,
            "dtype": args.dtype, "layout": args.layout, "direction": args.direction,
            "suite": args.suite, "bias": args.bias, "activation": args.activation,
            "kernels": os.path.abspath(args.kernels) if args.kernels else None}
    command = "mcconv inspect " + " ".join(shlex.quote(a) for a in getattr(args, "argv", []) or _argv(args))
    distinct = len({r.variant for r in records if r.variant})
    failed = [r for r in records if r.error]
    if args.save:
        saved = set()
        for r in ([reference] if reference else []) + records:
            if r.variant not in saved:
                saved.add(r.variant)
                r.save(args.save)
    if args.markdown:
        title = (f"mcconv inspect: {args.suite or 'conv'} {args.direction}, {args.dtype} {args.layout}, "
                 f"{spec.title} (sm_{target.arch})")
        timing = {"seconds": f"{seconds:.0f}", "launches": len(records), "distinct compiles": distinct}
        with open(args.markdown, "w") as f:
            f.write(markdown_table(records, title=title, command=command, meta={**{k: v for k, v in meta.items()
                                                                                  if v not in (None, False)},
                                                                               **timing},
                                   reference=reference))
    if args.json:
        doc = _document(records, reference, command=command, meta=meta, seconds=seconds)
        text = json.dumps(doc, indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    if args.json != "-":
        header = (f"mcconv inspect: {spec.title} (sm_{target.arch}, {target.sm_count} SMs, {target.clock_ghz} GHz), "
                  f"triton {triton.__version__}, {args.dtype} {args.layout}, {args.direction}: {len(records)} "
                  f"launches, {distinct} distinct compiles, {seconds:.1f} s")
        _print_text(records, reference, details=args.details, legend=not args.no_legend, header=header)
        for path in (args.json, args.markdown):
            if path:
                print(f"wrote {path}")
    return 1 if failed else 0


def _argv(args) -> list:
    """The options that reproduce ``args`` (for the command line written into --markdown and --json)."""
    out = []
    if args.suite:
        out += ["--suite", args.suite] + (["--batch", str(args.batch)] if args.batch else [])
    else:
        out += ["--input", args.input, "--weight", args.weight]
        for name in ("stride", "padding", "dilation"):
            value = getattr(args, name)
            if value not in ("1", "0") or (name == "padding" and value != "0"):
                out += [f"--{name}", value]
        if args.groups != 1:
            out += ["--groups", str(args.groups)]
    out += ["--direction", args.direction, "--dtype", args.dtype, "--layout", args.layout, "--gpu", args.gpu]
    if args.bias:
        out.append("--bias")
    if args.activation:
        out += ["--activation", args.activation]
    if args.reference:
        out.append("--reference")
    if args.kernels:
        out += ["--kernels", args.kernels]
    if args.json:
        out += ["--json"] + ([] if args.json == "-" else [args.json])
    if args.markdown:
        out += ["--markdown", args.markdown]
    return out


def _configure(p) -> None:
    from mcconv import ACTIVATIONS

    from .problems import LAYOUTS
    from .suites import SUITES

    p.add_argument("--input", help="input shape N,C,H,W (e.g. 32,64,56,56); N,C,D,H,W for conv3d")
    p.add_argument("--weight", help="weight shape K,C/groups,KH,KW (e.g. 64,64,3,3); K,C/groups,KD,KH,KW for conv3d")
    p.add_argument("--stride", default="1", help="int, 'h,w' (conv3d: 'd,h,w')")
    p.add_argument("--padding", default="0", help="int, 'h,w', 'top,bottom,left,right', 'same' or 'valid' "
                   "(conv3d: int, 'd,h,w', 'same', 'valid')")
    p.add_argument("--dilation", default="1", help="int or 'h,w' (conv3d: 'd,h,w')")
    p.add_argument("--groups", type=int, default=1, help="channel groups")
    p.add_argument("--transposed", action="store_true",
                   help="a transposed convolution (conv_transpose2d, forward only): weight C,K/groups,KH,KW")
    p.add_argument("--output-padding", default="0", help="with --transposed: int or 'h,w'")
    p.add_argument("--suite", choices=sorted(SUITES), help="every layer of a suite instead of one convolution")
    p.add_argument("--batch", type=int, help="with --suite: batch size (default: the suite's own)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="float16",
                   help="float16, bfloat16, tf32 (fp32 on tensor cores) or float32 (IEEE fp32 dots)")
    p.add_argument("--layout", choices=LAYOUTS, default="channels_last", help="memory format of input and weight")
    p.add_argument("--bias", action="store_true", help="with a bias (K elements)")
    p.add_argument("--activation", choices=sorted(ACTIVATIONS), help="fused activation (default: none)")
    p.add_argument("--direction", choices=("forward", "backward", "all"), default="forward",
                   help="the forward's launch, the backward's, or both")
    p.add_argument("--gpu", default=gpus.DEFAULT_GPU, help="target GPU: " + ", ".join(sorted(TARGETS))
                   + " (aliases h100, h200, a100)")
    p.add_argument("--details", action="store_true", help="every figure of each launch (instruction mix, loads, "
                   "loops, occupancy limits, the nest)")
    p.add_argument("--no-legend", action="store_true", help="omit the legend after the one-line summaries")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH", help="JSON to PATH, or to stdout alone")
    p.add_argument("--markdown", metavar="PATH", help="write a short markdown table (with the command)")
    p.add_argument("--save", metavar="DIR", help="write each launch's TTGIR, PTX, cubin and SASS under "
                   "DIR/sm_XX/<kernel>-<variant>/")
    p.add_argument("--reference", action="store_true", help="also the reference GEMM (kernels/matmul_reference.py, "
                   "4096^3 fp16, Triton's tutorial tiles), the instrument's yardstick")
    p.add_argument("--kernels", metavar="DIR", help="compile the device code of DIR (a kernels/ folder, e.g. of "
                   "another checkout) instead of the installed kernels: before/after figures")


inspect_command.configure = _configure
