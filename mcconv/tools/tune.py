"""``mcconv tune``: sweep tile configurations per kernel and shape bucket, write the tile tables.

For every layer of a suite and every dtype, the kernels its forward and backward launch and
their table keys come from the library's own plans (:func:`mcconv.plans`); each key not
yet in the table is tuned once: the kernel's candidates (plus its default), fitted to the
problem as the runtime fits them, minus those that cannot fit on the GPU (shared memory,
accumulator registers), are compiled (in parallel where Triton allows), timed with a forced
configuration, and the fastest one whose result matches torch's is written to
``<out_dir>/<kernel>/<device_name>.json``: merged with the entries there, atomically, after
every key, so an interrupted or budget-bounded run resumes where it stopped.
"""
import contextlib
import datetime
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import mcconv
from mcconv import ops, registry, tiles

from . import gpus
from .bench import TOLERANCE, relative_error
from .problems import DTYPES, LAYOUTS, layer_tensors
from .progress import progress
from .suites import SUITES, Conv, get_suite
# Accumulator registers per thread (fp32 BLOCK_M*BLOCK_N spread over 32*num_warps threads): beyond
# half of the 255-register limit the operands and addresses spill.
MAX_ACCUMULATOR_REGS = 128
_ELEMENT_BYTES = {"float16": 2, "bfloat16": 2, "tf32": 4, "float32": 4}


@dataclass(frozen=True)
class ResourceLimits:
    """What a tile configuration may use on the target GPU."""

    smem_bytes: int  # shared memory per block (opt-in maximum)
    max_accumulator_regs: int = MAX_ACCUMULATOR_REGS


def resource_limits(spec: gpus.GpuSpec | None = None) -> ResourceLimits:
    """The current CUDA device's limits, else ``spec``'s, else the H100's."""
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        smem = getattr(props, "shared_memory_per_block_optin", None)
        if smem:
            return ResourceLimits(int(smem))
    spec = spec or gpus.GPUS[gpus.DEFAULT_GPU]
    return ResourceLimits(spec.smem_per_block)


def estimate_shared_memory(kernel: str, config: dict, element_bytes: int) -> int:
    """Bytes of shared memory a configuration needs, estimated from its block sizes.

    tl.dot kernels buffer an A (BLOCK_M x BLOCK_K) and a B (BLOCK_K x BLOCK_N) tile per pipeline
    stage; the depthwise kernel has no dot, at most an fp32 tile for a layout conversion.
    """
    bm, bn = config["BLOCK_M"], config["BLOCK_N"]
    if "BLOCK_K" not in config:
        return bm * bn * 4
    bk = config["BLOCK_K"]
    return max(1, config.get("num_stages", 1)) * (bm * bk + bk * bn) * element_bytes


def accumulator_registers(config: dict) -> float:
    """fp32 accumulator registers per thread: BLOCK_M*BLOCK_N / (32 * num_warps)."""
    return config["BLOCK_M"] * config["BLOCK_N"] / (32 * config.get("num_warps", 4))


def prune(kernel: str, configs, dtype_key: str, limits: ResourceLimits):
    """Split configurations into (fitting, [(config, reason), ...]) before anything is compiled."""
    element_bytes = _ELEMENT_BYTES[dtype_key]
    kept, pruned = [], []
    for config in configs:
        smem = estimate_shared_memory(kernel, config, element_bytes)
        regs = accumulator_registers(config)
        if smem > limits.smem_bytes:
            pruned.append((config, f"shared memory ~{smem} B > {limits.smem_bytes} B"))
        elif regs > limits.max_accumulator_regs:
            pruned.append((config, f"accumulator {regs:.0f} regs/thread > {limits.max_accumulator_regs}"))
        else:
            kept.append(config)
    return kept, pruned


def candidate_configs(kernel: str, extents: dict, override=None) -> list[dict]:
    """The kernel's candidates and default, fitted to the problem as the runtime fits them, deduplicated."""
    raw = list(override) if override is not None else [*tiles.candidates(kernel),
                                                       dict(tiles.kernel_spec(kernel)["default"])]
    seen, out = set(), []
    cap = tiles.max_num_warps(kernel)
    for config in raw:
        if cap is not None and config.get("num_warps", 0) > cap:
            continue  # the kernel's warp cap (tiles.max_num_warps): never timed, never written
        fitted = tiles.fit(config, extents)
        key = tuple(sorted(fitted.items()))
        if key not in seen:
            seen.add(key)
            out.append(fitted)
    return out


@dataclass
class Problem:
    """One (tile table, key) to tune, with closures that launch it and compute torch's result."""

    kernel: str  # the tile table's name (a kernel's, or the kernel whose tables it shares)
    key: str
    dtype: str  # table dtype key
    layer: Conv
    extents: dict  # block name -> problem extent, as the runtime fits configs
    run: Callable[[dict], torch.Tensor] | None = None  # launch with a forced config
    reference: Callable[[], torch.Tensor] | None = None
    warmup: Callable[[dict], object] | None = None  # compile only
    build: Callable[[], None] | None = field(default=None, repr=False)  # allocates the tensors

    def ensure_built(self) -> None:
        if self.run is None and self.build is not None:
            self.build()


def tunable_kernels() -> list[str]:
    """The tile tables tune writes: one per kernel, except kernels that share another's."""
    return registry.table_names()


@contextlib.contextmanager
def _compile_only():
    """Within this block Triton compiles kernels instead of launching them (JITFunction.warmup)."""
    from triton.runtime.jit import JITFunction

    original = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        return original(self, *args, grid=grid, warmup=True, **kwargs)

    JITFunction.run = run
    try:
        yield
    finally:
        JITFunction.run = original


def layer_problems(layer, dtype: str, layout: str, device, kernels=None, *, skip_forward=False) -> list[Problem]:
    """The problems of a layer: each kernel its forward and backward launch (bias included, so
    that the bias gradient's reduction is tuned too), with tensors allocated only when tuned.
    A conv3d layer: see :func:`conv3d_problems`."""
    if layer.op == "conv3d":
        return conv3d_problems(layer, dtype, layout, device, kernels)
    if layer.op == "conv_transpose2d":  # the input gradient of the convolution it transposes: that one's kernels
        return layer_problems(layer.forward_layer(), dtype, layout, device, kernels, skip_forward=skip_forward)
    # Shapes only (meta tensors) for a GPU, whose rules they follow; off the GPU (tests with a fake
    # timer) the interpreter's rules differ (no TF32), so the keys come from real CPU tensors.
    probe = _probe(device)
    x, w, b = layer_tensors(layer, dtype, layout, bias=True, device=probe)
    args = (layer.stride, layer.padding, layer.dilation, layer.groups)
    found = []
    for plan in mcconv.plans(x, w, b, *args, direction="all"):
        table = plan.kernel.table_name
        if (kernels is not None and table not in kernels) or (skip_forward and plan.kernel.operation == registry.FORWARD):
            continue
        problem = Problem(table, plan.key, plan.spec.dtype_key, layer, dict(plan.limits))
        problem.build = _builder(problem, plan.kernel.operation, layer, dtype, layout, device, args)
        found.append(problem)
    return found


def _probe(device) -> str:
    return "meta" if torch.device(device).type == "cuda" else device


def _conv3d_plan(layer, x, w):
    from mcconv.conv3d import _describe, _validated
    from mcconv.ops import forward3d

    options = _validated(x, w, None, *layer.conv_args, None)[4]
    return forward3d.plan(_describe(x, w, None, None, None, options), x, w)


def conv3d_problems(layer, dtype: str, layout: str, device, kernels=None) -> list[Problem]:
    """A conv3d layer's problems: the depth kernel's forward, tuned on the 3-D call itself (it
    writes conv_direct's table, which it shares), when the call takes that kernel; and the 2-D
    problems of its depth im2col (:meth:`Conv3dLayer.im2col_layer`), which its gradient runs
    (and its forward, for fewer than 16 channels per group)."""
    from mcconv.conv3d import takes_depth_kernel
    from mcconv.ops import forward3d

    depth = takes_depth_kernel(layer.spec)
    found = layer_problems(layer.im2col_layer(DTYPES[dtype].itemsize), dtype, layout, device, kernels,
                           skip_forward=depth)
    if not depth:
        return found
    x, w, _ = layer_tensors(layer, dtype, layout, device=_probe(device))
    plan = _conv3d_plan(layer, x, w)
    if kernels is not None and plan.kernel.table_name not in kernels:
        return found
    problem = Problem(plan.kernel.table_name, plan.key, plan.spec.dtype_key, layer, dict(plan.limits))

    def build():
        x, w, _ = layer_tensors(layer, dtype, layout, device=device)
        base = _conv3d_plan(layer, x, w)

        def run(config):
            return forward3d.run(base.with_config(config), x, w)

        def warmup(config):
            with _compile_only():
                run(config)

        problem.run, problem.warmup = run, warmup
        problem.reference = lambda: F.conv3d(x, w, None, *layer.conv_args)

    problem.build = build
    return [problem, *found]


def _builder(problem: Problem, operation: str, layer: Conv, dtype: str, layout: str, device, args):
    """Allocates a problem's tensors and sets its run, warmup and reference closures."""

    def build():
        x, w, b = layer_tensors(layer, dtype, layout, bias=True, device=device)
        y = F.conv2d(x, w, b, *args)
        grad = torch.randn_like(y)  # laid out as the forward's output, as autograd passes it
        plan_of = {
            registry.FORWARD: lambda: mcconv.plans(x, w, None, *args)[0],
            registry.INPUT_GRAD: lambda: ops.input_grad.plan(grad, w, x.shape, *args),
            registry.WEIGHT_GRAD: lambda: ops.weight_grad.plan(grad, x, w.shape, *args),
            registry.BIAS_ACT_GRAD: lambda: ops.bias_act.plan(grad, None, None, True),
        }[operation]
        launch = {
            registry.FORWARD: lambda p: ops.forward.run(p, x, w),
            registry.INPUT_GRAD: lambda p: ops.input_grad.run(p, grad, w),
            registry.WEIGHT_GRAD: lambda p: ops.weight_grad.run(p, grad, x),
            registry.BIAS_ACT_GRAD: lambda p: ops.bias_act.run(p, grad)[1],
        }[operation]
        base = plan_of()

        def run(config):
            return launch(base.with_config(config))

        def warmup(config):
            with _compile_only():
                run(config)

        def reference():
            if operation == registry.FORWARD:
                return F.conv2d(x, w, None, *args)
            if operation == registry.BIAS_ACT_GRAD:
                return grad.float().sum(dim=[d for d in range(grad.dim()) if d != 1]).to(grad.dtype)
            xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
            dx, dw = torch.autograd.grad(F.conv2d(xr, wr, None, *args), (xr, wr), grad)
            return dx if operation == registry.INPUT_GRAD else dw

        problem.run, problem.warmup, problem.reference = run, warmup, reference

    return build


# ------------------------------------------------------------------------------------ tables

def default_out_dir() -> Path:
    """The repository's autotune_configs/ in a source checkout, else $MCCONV_CONFIG_DIR or ./autotune_configs."""
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and (repo / "autotune_configs" / "__init__.py").is_file():
        return repo / "autotune_configs"
    return Path(os.environ.get(tiles.CONFIG_DIR_ENV) or "autotune_configs")


def table_path(out_dir, kernel: str, device_name: str) -> Path:
    return Path(out_dir) / kernel / f"{device_name}.json"


def read_entries(path: Path) -> dict:
    """A table's entries ({} when the file does not exist); a corrupt file is an error, not overwritten."""
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text())["entries"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a tile table ({err!r}); move it away to tune into this folder") from None


def write_entries(path: Path, kernel: str, device_name: str, new_entries: dict, versions: dict | None = None) -> None:
    """Merge entries into a table file: re-read, update, write a temporary file beside it, os.replace.

    ``versions`` ({"triton": ..., "torch": ...}) names the software the entries were tuned with,
    when that was another machine (laying a GPU run's archive in); default: this process's.
    """
    import triton

    path.parent.mkdir(parents=True, exist_ok=True)
    entries = read_entries(path)
    entries.update(new_entries)
    versions = {"triton": triton.__version__, "torch": torch.__version__, **(versions or {})}
    doc = {
        "kernel": kernel, "device": device_name, "triton": versions["triton"], "torch": versions["torch"],
        "updated": _now(), "dtypes": sorted({k.split("/", 1)[0] for k in entries}),
        "entries": {k: entries[k] for k in sorted(entries)},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # readers see the old table or the new one, never half of one
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------ tuning

def precompile(problem: Problem, configs, workers: int) -> str:
    """Compile the candidates before timing them; best effort, says how.

    Triton's ``AsyncCompileMode`` (where the installed Triton has it) compiles the
    ``JITFunction.warmup`` calls on a thread pool; otherwise the warmups themselves run on the
    pool (ptxas runs as a separate process, so even GIL-bound threads overlap). Failures are
    ignored here: the timing pass compiles again and skips what does not build.
    """
    if workers <= 1 or problem.warmup is None or not torch.cuda.is_available():
        return "none"

    def quiet(config):
        try:
            problem.warmup(config)
        except Exception:  # noqa: BLE001 - reported by the timing pass
            pass

    mode = getattr(__import__("triton"), "AsyncCompileMode", None)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        if mode is not None:
            try:
                context = mode(pool, ignore_errors=True)
            except TypeError:
                context = mode(pool)
            try:
                with context:
                    for config in configs:
                        quiet(config)
                return f"triton.AsyncCompileMode, {workers} threads"
            except Exception:  # noqa: BLE001 - fall back to plain threads
                pass
        list(pool.map(quiet, configs))
    return f"warmup on {workers} threads"


@dataclass
class TuneReport:
    """What a tune run did."""

    tuned: list = field(default_factory=list)  # (kernel, key, config, ms)
    skipped: list = field(default_factory=list)  # (kernel, key, why)
    failed: list = field(default_factory=list)  # (kernel, key, why)
    unavailable: dict = field(default_factory=dict)  # kernel -> why
    remaining: list = field(default_factory=list)  # (kernel, key) left when the budget ran out
    paths: set = field(default_factory=set)
    compile_method: str = "none"


def _problems(layers, dtypes, layout, device, kernels):
    """Unique (kernel, key) problems in suite order; the first layer of a bucket represents it."""
    seen, out = set(), []
    for dtype in dtypes:
        for layer in layers:
            for p in layer_problems(layer, dtype, layout, device, kernels):
                if (p.kernel, p.key) not in seen:
                    seen.add((p.kernel, p.key))
                    out.append(p)
    return out


def tune(layers, dtypes=("float16",), *, device_name: str, out_dir, layout="channels_last", device=None,
         timer=None, kernels=None, budget_s=None, force=False, candidates=None, limits=None,
         compile_workers=None, show_progress=True, log=print) -> TuneReport:
    """Tune every (kernel, shape bucket) of ``layers`` and write the winners' tables.

    Args:
        layers: :class:`mcconv.suites.Conv` problems; dtypes: "float16", "bfloat16", "float32".
        device_name: the table's name (torch's device name, spaces as underscores).
        out_dir: folder of ``<kernel>/<device_name>.json`` tables (merged, written atomically).
        timer: ``timer(fn) -> ms``; default ``triton.testing.do_bench`` (needs CUDA).
        kernels: restrict to these kernel names; budget_s: stop starting work after this long.
        force: retune keys already in the table; candidates: {kernel: [config, ...]} override.
        limits: :class:`ResourceLimits` for pruning (default: this GPU's, else the H100's).
        compile_workers: threads for parallel precompilation (default: up to 8 on CUDA, else 0).
    """
    start = time.monotonic()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if timer is None:
        if torch.device(device).type != "cuda":
            raise RuntimeError("tuning times kernels and needs a CUDA device (or pass timer=)")
        import triton.testing

        timer = triton.testing.do_bench
    limits = limits or resource_limits()
    workers = compile_workers if compile_workers is not None else (min(8, os.cpu_count() or 1)
                                                                   if torch.device(device).type == "cuda" else 0)
    report = TuneReport()
    available = tunable_kernels()
    wanted = [k for k in (kernels or available) if k in available]
    for k in kernels or ():
        if k not in available:
            report.unavailable.setdefault(k, f"unknown tile table; known: {available}")

    todo = []
    for p in _problems(layers, dtypes, layout, device, wanted):
        if not force and p.key in read_entries(table_path(out_dir, p.kernel, device_name)):
            report.skipped.append((p.kernel, p.key, "already tuned"))
            continue
        configs = candidate_configs(p.kernel, p.extents, (candidates or {}).get(p.kernel))
        kept, pruned = prune(p.kernel, configs, p.dtype, limits)
        todo.append((p, kept, pruned))
    log(f"tune: {len(todo)} keys to tune, {len(report.skipped)} already tuned; "
        f"{sum(len(k) for _, k, _ in todo)} configurations to time, "
        f"{sum(len(pr) for _, _, pr in todo)} pruned as too large for the GPU")

    bar = progress(sum(len(k) for _, k, _ in todo), "tune", enabled=show_progress)
    for index, (p, kept, pruned) in enumerate(todo):
        if budget_s is not None and time.monotonic() - start > budget_s:
            report.remaining = [(q.kernel, q.key) for q, _, _ in todo[index:]]
            break
        bar.set_postfix_str(f"{p.kernel} {p.key}")
        entry, why = _tune_one(p, kept, pruned, timer, workers, report, bar, start, budget_s)
        if entry is None:
            if why == "budget":
                report.remaining = [(q.kernel, q.key) for q, _, _ in todo[index:]]
                break
            report.failed.append((p.kernel, p.key, why))
            log(f"tune: {p.kernel} {p.key}: no configuration kept ({why})")
            continue
        path = table_path(out_dir, p.kernel, device_name)
        write_entries(path, p.kernel, device_name, {p.key: entry})
        report.paths.add(path)
        report.tuned.append((p.kernel, p.key, entry["config"], entry["ms"]))
        p.run = p.warmup = p.reference = None  # free the problem's tensors
    bar.close()
    return report


def _tune_one(p: Problem, kept, pruned, timer, workers, report, bar, start, budget_s):
    """(entry, "") for the fastest correct configuration, else (None, why)."""
    p.ensure_built()
    if workers > 1:
        report.compile_method = precompile(p, kept, workers)
    timed, failures = [], []
    for config in kept:
        if budget_s is not None and time.monotonic() - start > budget_s:
            return None, "budget"
        try:
            p.run(config)  # compiles on first use; a config that cannot build or launch raises here
            timed.append((timer(lambda c=config: p.run(c)), config))
        except Exception as err:  # noqa: BLE001 - skip configurations that fail to compile or launch
            failures.append((config, f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"))
        bar.update(1)
    if not timed:
        return None, f"all {len(kept)} configurations failed" + (f", e.g. {failures[0][1]}" if failures else "")
    timed.sort(key=lambda t: t[0])
    reference = p.reference()
    tolerance = TOLERANCE[p.dtype]
    default = tiles.fit(dict(tiles.kernel_spec(p.kernel)["default"]), p.extents)
    default_ms = next((ms for ms, c in timed if c == default), None)
    for ms, config in timed:
        err = relative_error(p.run(config), reference)
        if err <= tolerance:
            return {"config": config, "ms": ms, "default_ms": default_ms, "layer": p.layer.name,
                    "shape": p.layer.describe(), "dtype": p.dtype, "timed": len(timed), "pruned": len(pruned),
                    "failed": len(failures), "rel_error": err, "updated": _now()}, ""
        failures.append((config, f"wrong result (relative error {err:.2e} > {tolerance})"))
    return None, f"no timed configuration matched torch (best: {failures[-len(timed)][1]})"


# ------------------------------------------------------------------------------------ command

def tune_command(args) -> int:
    """Sweep tile configurations for a suite's shapes on this GPU and write its tile tables.

    Needs a CUDA GPU. Resumable (tuned keys are skipped unless --force) and bounded (--budget-s).
    """
    if not torch.cuda.is_available():
        print("mcconv tune: tuning times kernels and needs a CUDA GPU; none was found", file=sys.stderr)
        return 2
    layers = []
    for name in args.suite:
        layers += get_suite(name, args.batch)
    device_name = torch.cuda.get_device_name().replace(" ", "_")
    out_dir = Path(args.out_dir) if args.out_dir else default_out_dir()
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = args.fp32 == "tf32"  # selects the "tf32" or "float32" table rows
    try:
        report = tune(layers, args.dtype, device_name=device_name, out_dir=out_dir, layout=args.layout,
                      kernels=args.kernel, budget_s=args.budget_s, force=args.force,
                      compile_workers=args.compile_workers)
    finally:
        torch.backends.cudnn.allow_tf32 = previous
    for kernel, why in report.unavailable.items():
        print(f"  {kernel}: not tuned: {why}")
    for kernel, key, config, ms in report.tuned:
        print(f"  {kernel} {key}: {' '.join(f'{k}={v}' for k, v in config.items())} ({ms:.4f} ms)")
    for kernel, key, why in report.failed:
        print(f"  {kernel} {key}: FAILED: {why}")
    print(f"tuned {len(report.tuned)}, skipped {len(report.skipped)} already tuned, failed {len(report.failed)}; "
          f"precompilation: {report.compile_method}")
    for path in sorted(report.paths):
        print(f"wrote {path}")
    if report.remaining:
        print(f"budget spent: {len(report.remaining)} keys left; run the same command again to resume")
    return 1 if report.failed else 0


def _configure(p) -> None:
    p.add_argument("--suite", nargs="+", choices=sorted(SUITES), default=["resnet50"], help="layers to tune for")
    p.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["float16"], help="dtypes to tune for")
    p.add_argument("--fp32", choices=("tf32", "ieee"), default="tf32",
                   help="float32 precision to tune for (tf32: torch's cuDNN default)")
    p.add_argument("--layout", choices=LAYOUTS, default="channels_last", help="memory format of input and weight")
    p.add_argument("--batch", type=int, help="batch size (default: each suite's own)")
    p.add_argument("--kernel", nargs="+", help="only these tile tables (default: all)")
    p.add_argument("--budget-s", type=float, help="stop starting new work after this many seconds")
    p.add_argument("--force", action="store_true", help="retune keys already in the table")
    p.add_argument("--out-dir", help="folder for <kernel>/<device>.json (default: the checkout's "
                   "autotune_configs/, else $MCCONV_CONFIG_DIR or ./autotune_configs)")
    p.add_argument("--compile-workers", type=int, help="threads for parallel precompilation (default: up to 8)")


tune_command.configure = _configure
