"""Compile every kernel variant that mcconv launches natively for an H100 (sm_90), without a GPU.

Triton's interpreter, which runs the test suite on CPU-only machines, accepts code that the
real compiler rejects (tl.dot tiles under 16, mixed dtypes, loop-carried type changes). This
script drives mcconv's own launch paths -- ``mcconv.conv2d`` forward and autograd backward, and
the launchers of :mod:`mcconv.ops` -- on small CPU tensors and on shape-only ``meta`` tensors
(for the int64-offset variants), with ``JITFunction.run`` replaced by a recorder. Each
distinct launch is then compiled by Triton's own ``JITFunction.run(..., warmup=True)`` against a
stand-in driver that reports an sm_90 target, so the specialisation (pointer dtypes, ints equal
to 1 turned into constants, divisibility), constexprs and num_warps/num_stages are exactly
those of a launch on the GPU (the H100's SM count and tile tables included). ptxas ships in the
triton wheel; no CUDA driver is needed. Every kernel declared in ``mcconv.registry`` must be
launched by some driven call: a new kernel without a case here fails the check.

Run by tests/test_native_compile.py, but usable by hand::

    python tests/native_compile.py [--shard I/N] [--candidates] [--list] [-v]

TRITON_INTERPRET must be unset (the kernels must be decorated as JITFunctions). Exit status:
0 when every variant compiled, 1 when some failed (each reported with kernel, constexprs and
argument types), 77 with a "SKIP: reason" line when this triton cannot compile for NVIDIA.
A kernel that compiles but needs more shared memory than an H100 block may have counts as failed.

Not exercised by default: the autotuning candidates: ``--candidates`` compiles each of them once
per tile table and dtype mode (several minutes; triton's autotuner and ``mcconv tune`` skip the
candidates that run out of shared memory, which this reports as failures).
"""
import argparse
import itertools
import os
import re
import sys
import time
import traceback

SKIP_STATUS = 77
# Largest dynamic shared memory one block may use on sm_90 (227 KiB): a kernel over it compiles
# but fails to launch (triton's OutOfResources), so it counts as a failure here.
SM90_MAX_SHARED = 232448


def _skip(reason: str):
    print(f"SKIP: {reason}", flush=True)
    sys.exit(SKIP_STATUS)


if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("native_compile.py: unset TRITON_INTERPRET (the interpreter's kernels cannot be compiled)")

import triton  # noqa: E402

try:
    from triton.backends import backends as _triton_backends
    from triton.backends.compiler import GPUTarget
except ImportError as err:  # pragma: no cover - a triton without the backend registry
    _skip(f"triton {triton.__version__} lacks triton.backends ({err})")
if "nvidia" not in _triton_backends:
    _skip(f"triton {triton.__version__} has no NVIDIA backend")
try:
    from triton import knobs

    knobs.nvidia.ptxas.path  # noqa: B018 - raises where triton cannot find a ptxas
except Exception as err:  # noqa: BLE001 - any failure to locate ptxas means: cannot compile here
    _skip(f"triton {triton.__version__}: no usable ptxas ({type(err).__name__}: {err})")

import torch  # noqa: E402
from triton.runtime.driver import driver as _driver  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
H100_NAME = "NVIDIA_H100_80GB_HBM3"  # torch's device name, spaces as underscores (tile-table file name)
H100_SMS = 132


class _CompileOnlyDriver:
    """Answers what JITFunction.run asks the CUDA driver before compiling; never launches."""

    def get_current_target(self):
        return TARGET

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


# ------------------------------------------------------------------------------- recording

_ORIGINAL_RUN = JITFunction.run
_launches = []  # (key, JITFunction, args, kwargs, context) in launch order
_context = ""  # which call of the library is being driven, for the failure report
_mode = ""  # the dtype mode being driven (a key of MODES)
_tuners = {}  # id(Autotuner) -> number, under --candidates


def _spec(value):
    """How triton specialises one argument (close enough to dedupe launches; triton decides)."""
    if hasattr(value, "data_ptr"):
        return ("*" + str(value.dtype).removeprefix("torch."), value.data_ptr() % 16 == 0)
    if isinstance(value, bool) or not isinstance(value, int):
        return value
    if value == 1:
        return 1  # triton turns ints equal to 1 into constants
    return ("i32" if -2**31 <= value < 2**31 else "i64", value % 16 == 0)


def _recording_run(self, *args, grid, warmup, **kwargs):
    """Stands in for every kernel launch: remember it, launch nothing."""
    names = list(self.arg_names)
    constexprs = {names[i] for i in self.constexprs}
    bound = {**dict(zip(names, args)), **kwargs}
    # Constexprs and launch options by value, the other arguments by their specialisation.
    key = (self.__name__, tuple(sorted((k, v if k in constexprs or k not in names else _spec(v))
                                       for k, v in bound.items())))
    _launches.append((key, self, args, kwargs, _context))


def _autotuner_run(self, *args, **kwargs):
    """Under MCCONV_AUTOTUNE=1: every config triton.autotune would benchmark is a launch.

    Each candidate is compiled once per tile table (autotuner) and dtype mode, for the first case
    that launches it, not once per case: the candidate lists are long, and the epilogue and
    layout variants are already covered with the tile tables' configs.
    """
    global _context
    context = _context
    tuner = _tuners.setdefault(id(self), len(_tuners))  # in order of first use: the same in every shard
    for config in self.configs:
        options = config.all_kwargs()
        _context = f"{context}; candidate {options}"
        first = len(_launches)
        self.fn.run(*args, **kwargs, **options)
        for i in range(first, len(_launches)):
            key, *rest = _launches[i]
            _launches[i] = ((key[0], tuner, _mode, tuple(sorted(options.items()))), *rest)
    _context = context


def describe(fn, args, kwargs) -> str:
    """Kernel name, launch options, constexprs, pointer dtypes and the ints specialised to 1."""
    names = list(fn.arg_names)
    bound = dict(zip(names, args))
    options = {k: v for k, v in kwargs.items() if k not in names}
    constexprs = {k: v for k, v in kwargs.items() if k in names}
    pointers = {k: str(v.dtype).removeprefix("torch.") for k, v in bound.items() if hasattr(v, "data_ptr")}
    ones = [k for k, v in bound.items() if isinstance(v, int) and not isinstance(v, bool) and v == 1]
    return (f"{fn.__name__} {options}\n    constexprs: {constexprs}\n    pointers: {pointers}\n"
            f"    ints == 1: {ones}")


# ------------------------------------------------------------------------------- the calls

MODES = {  # name -> (dtype, whether fp32 convolutions use TF32)
    "float16": (torch.float16, False),
    "bfloat16": (torch.bfloat16, False),
    "tf32": (torch.float32, True),
    "float32": (torch.float32, False),  # ieee tl.dot
}
def _activations():
    from mcconv import ACTIVATIONS

    return (None, *ACTIVATIONS)
LAYOUTS = ("contiguous", "channels_last")

# (label, input shape, weight shape, stride, padding, dilation, groups). Channel counts of 64
# keep the default tiles unshrunk; the smaller ones give the tiles shrunk to the problem.
GEOMETRIES = [
    ("direct 3x3", (2, 64, 9, 9), (64, 64, 3, 3), 1, 1, 1, 1),
    ("direct 3x3 stride 2, dilated, asymmetric padding", (2, 24, 11, 11), (40, 24, 3, 3), 2, (1, 0, 2, 1),
     (2, 1), 1),
    ("grouped 3x3", (2, 32, 9, 9), (32, 8, 3, 3), 1, "same", 1, 4),
    ("1x1 gemm", (2, 64, 9, 9), (64, 64, 1, 1), 1, 0, 1, 1),
    ("1x1 stride 2", (2, 16, 9, 9), (32, 16, 1, 1), 2, 0, 1, 1),
    ("depthwise 3x3", (2, 32, 9, 9), (32, 1, 3, 3), 1, 1, 1, 32),
    ("depthwise x2 5x5 stride 2", (2, 16, 11, 11), (32, 1, 5, 5), 2, 2, 1, 16),
    ("unbatched, small image (one wgrad split)", (16, 4, 4), (32, 16, 3, 3), 1, 1, 1, 1),
    # one output column per lane with a dilated window: unread window columns (a tuple holding
    # None there failed to compile for the GPU)
    ("depthwise 3x3 dilation 2, one output column", (2, 8, 5, 3), (8, 1, 3, 3), 1, 1, 2, 8),
]

# Shape-only (meta) problems of 2**31 elements or more: the INDEX_64 variants.
HUGE_CASES = [
    ("direct 3x3 stride 2, int64", "float16", "contiguous", (1, 64, 2**12, 2**13), (32, 64, 3, 3), 2, 1, 1, 1),
    ("1x1 gemm, int64", "tf32", "channels_last", (1, 64, 2**12, 2**13), (64, 64, 1, 1), 1, 0, 1, 1),
    ("depthwise x2, int64", "bfloat16", "channels_last", (1, 64, 2**12, 2**13), (128, 1, 3, 3), 1, 1, 1, 64),
]


def _tensor(shape, dtype, layout, device="cpu", requires_grad=False):
    t = torch.empty(shape, dtype=dtype, device=device)
    if layout == "channels_last" and len(shape) == 4:
        t = t.to(memory_format=torch.channels_last)
    if layout == "channels_last" and len(shape) == 5:
        t = t.to(memory_format=torch.channels_last_3d)
    return t.requires_grad_(requires_grad)


# conv3d calls of 16+ channels per group (the depth kernel): (label, input, weight, stride,
# padding, dilation, groups); 27, 64 and 75 taps (32-bit, 64-bit and no tap bit sets).
GEOMETRIES_3D = [
    ("conv3d 3x3x3", (2, 64, 4, 9, 9), (64, 64, 3, 3, 3), 1, 1, 1, 1),
    ("conv3d 1x3x3 stride (1, 2, 2), grouped", (2, 32, 4, 9, 9), (48, 16, 1, 3, 3), (1, 2, 2), (0, 1, 1), 1, 2),
    ("conv3d 4x4x4", (1, 16, 5, 6, 6), (24, 16, 4, 4, 4), 1, 1, 1, 1),
    ("conv3d 3x5x5 dilated", (1, 16, 5, 9, 9), (16, 16, 3, 5, 5), 1, 2, (1, 1, 2), 1),
]
# One int64 case: the depth kernel's offsets past 2**31 elements (meta tensors, launchers direct).
HUGE_3D = ("conv3d 3x3x3, int64", "bfloat16", "channels_last", (1, 32, 64, 2**10, 2**10), (32, 32, 3, 3, 3), 1, 1,
           1, 1)


def drive_conv3d_paths(mcconv, backend):
    """mcconv.conv3d on the depth kernel: every dtype mode in both layouts (a geometry each, an
    activation, bias and residual rotating), forward and autograd; then the int64 case."""
    global _context, _mode
    from mcconv.ops import forward3d

    conv3d = sys.modules["mcconv.conv3d"]
    activations = _activations()
    for i, ((mode, (dtype, tf32)), layout) in enumerate(itertools.product(MODES.items(), LAYOUTS)):
        backend.uses_tf32 = lambda dtype, device, tf32=tf32: tf32 and dtype == torch.float32
        _mode = mode
        label, x_shape, w_shape, stride, padding, dilation, groups = GEOMETRIES_3D[i % len(GEOMETRIES_3D)]
        activation = activations[i % len(activations)]
        train = i % 3 == 0
        _context = f"mcconv.conv3d {mode} {layout} {label}, activation={activation}"
        x = _tensor(x_shape, dtype, layout, requires_grad=train)
        w = _tensor(w_shape, dtype, "contiguous", requires_grad=train)
        b = _tensor((w_shape[0],), dtype, "contiguous") if i % 2 else None
        out_shape = mcconv.explain3d(x, w, b, stride, padding, dilation, groups).output_shape
        r = _tensor(out_shape, dtype, layout) if i % 4 < 2 else None
        with torch.set_grad_enabled(train):
            y = mcconv.conv3d(x, w, b, stride, padding, dilation, groups, activation=activation, residual=r)
        if train:
            y.backward(torch.empty_like(y))
    label, mode, layout, x_shape, w_shape, stride, padding, dilation, groups = HUGE_3D
    dtype, tf32 = MODES[mode]
    backend.uses_tf32 = lambda dtype, device, tf32=tf32: tf32 and dtype == torch.float32
    _mode, _context = mode, f"{mode} {layout} {label}"
    x = _tensor(x_shape, dtype, layout, device="meta")
    w = _tensor(w_shape, dtype, "contiguous", device="meta")
    options = conv3d._validated(x, w, None, stride, padding, dilation, groups, None)[4]
    spec = conv3d._describe(x, w, None, None, mcconv.ACTIVATIONS["relu"], options)
    forward3d.run(forward3d.plan(spec, x, w), x, w, preact=True)


def drive_public_paths(mcconv, backend):
    """mcconv.conv2d, inference and autograd, over dtype modes x layouts x geometries.

    Half of that product keeps the compile time in bounds: each geometry meets each dtype mode in
    one layout and each layout in two modes. Activation and bias rotate so that each geometry and
    each mode meet every activation, and each geometry every activation/bias pair.
    """
    global _context, _mode
    for (m, mode), (l, layout), (g, geometry) in itertools.product(
            enumerate(MODES), enumerate(LAYOUTS), enumerate(GEOMETRIES)):
        if (g + m + l) % 2:
            continue
        dtype, tf32 = MODES[mode]
        backend.uses_tf32 = lambda dtype, device, tf32=tf32: tf32 and dtype == torch.float32
        _mode = mode
        label, x_shape, w_shape, stride, padding, dilation, groups = geometry
        activations = _activations()
        activation = activations[(g + m) % len(activations)]
        has_bias = (g // 2 + m) % 2 == 0
        residual = (g + 2 * m) % 3 == 0  # the fused residual input: a third of the cases
        for train in (False, True):
            _context = (f"mcconv.conv2d {mode} {layout} {label}, activation={activation}, bias={has_bias}"
                        f"{', residual' if residual else ''}{', forward + backward' if train else ''}")
            x = _tensor(x_shape, dtype, layout, requires_grad=train)
            w = _tensor(w_shape, dtype, "contiguous", requires_grad=train)
            b = _tensor((w_shape[0],), dtype, "contiguous", requires_grad=train) if has_bias else None
            extra = {}
            if residual:  # any strides are accepted: the input's layout, or contiguous under another
                out_shape = mcconv.explain(x, w, b, stride, padding, dilation, groups).output_shape
                extra["residual"] = _tensor(out_shape, dtype, layout if train else "contiguous",
                                            requires_grad=train)
            with torch.set_grad_enabled(train):
                y = mcconv.conv2d(x, w, b, stride, padding, dilation, groups, activation=activation, **extra)
            if train:
                y.backward(torch.empty_like(y))


def drive_int64_paths(mcconv, ops, backend):
    """The launchers on meta tensors of 2**31+ elements: forward (with the pre-activation store)
    and every gradient, each with INDEX_64=True as the library decides it."""
    global _context, _mode
    for label, mode, layout, x_shape, w_shape, stride, padding, dilation, groups in HUGE_CASES:
        dtype, tf32 = MODES[mode]
        backend.uses_tf32 = lambda dtype, device, tf32=tf32: tf32 and dtype == torch.float32
        _mode = mode
        conv = (stride, padding, dilation, groups)
        _context = f"{mode} {layout} {label}"
        x = _tensor(x_shape, dtype, layout, device="meta")
        w = _tensor(w_shape, dtype, "contiguous", device="meta")
        b = _tensor((w_shape[0],), dtype, "contiguous", device="meta")
        residual = _tensor(mcconv.explain(x, w, b, *conv).output_shape, dtype, layout, device="meta")
        y, z = ops.conv2d_forward(x, w, b, *conv, activation="gelu", residual=residual, return_preact=True)
        ops.conv2d_input_grad(y, w, x_shape, *conv)
        ops.conv2d_weight_grad(y, x, w_shape, *conv)
        ops.activation_bias_grad(y, z, "silu")
        ops.activation_grad(y, y, "relu")
        ops.conv2d_bias_grad(y)


# conv_transpose2d: (label, input, weight, options): conv_dgrad, gemm_1x1_dgrad and its split (H100)
TRANSPOSE_GEOMETRIES = [
    ("transposed 3x3 stride 2", (2, 64, 9, 9), (64, 64, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ("transposed 3x3 to 24 channels", (2, 40, 9, 9), (40, 24, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ("transposed 1x1", (2, 64, 8, 8), (64, 64, 1, 1), {}),
    ("transposed 1x1, split", (2, 2048, 3, 3), (2048, 48, 1, 1), {}),
    ("transposed depthwise 3x3 stride 2", (2, 32, 9, 9), (32, 1, 3, 3),
     dict(stride=2, padding=1, output_padding=1, groups=32)),
    ("transposed depthwise 3x3", (2, 32, 9, 9), (32, 1, 3, 3), dict(padding=1, groups=32)),
    # a generator's RGB output (sub-pixel), on an odd image: its runs cross the right edge
    ("transposed 4x4 to RGB", (2, 64, 9, 9), (64, 3, 4, 4), dict(stride=2, padding=1, output_padding=1)),
]


def drive_transpose_paths(mcconv, backend):
    """mcconv.conv_transpose2d: the input-gradient kernels with their epilogue on (and the split
    1x1's epilogue pass), every dtype mode in both layouts, activation, bias and residual layout
    rotating, inference and autograd (the pre-activation store)."""
    global _context, _mode
    activations = _activations()
    combos = itertools.product(enumerate(MODES.items()), enumerate(LAYOUTS), enumerate(TRANSPOSE_GEOMETRIES))
    # half of the product, as drive_public_paths: each geometry meets each mode in one layout
    combos = [(mode, layout, geometry) for (m, mode), (l, layout), (g, geometry) in combos if (m + l + g) % 2 == 0]
    for i, ((mode, (dtype, tf32)), layout, (label, x_shape, w_shape, options)) in enumerate(combos):
        backend.uses_tf32 = lambda dtype, device, tf32=tf32: tf32 and dtype == torch.float32
        _mode = mode
        activation = activations[i % len(activations)]
        train = i % 2 == 1
        _context = f"mcconv.conv_transpose2d {mode} {layout} {label}, activation={activation}, train={train}"
        x = _tensor(x_shape, dtype, layout, requires_grad=train)
        w = _tensor(w_shape, dtype, "contiguous", requires_grad=train)
        b = _tensor((w_shape[1] * options.get("groups", 1),), dtype, "contiguous") if i % 3 else None
        out_shape = mcconv.explain_transpose2d(x, w, b, **options).output_shape
        r = _tensor(out_shape, dtype, (layout, "contiguous", "channels_last")[i % 3]) if i % 4 else None
        with torch.set_grad_enabled(train):
            y = mcconv.conv_transpose2d(x, w, b, **options, activation=activation, residual=r)
        if train:
            y.backward(torch.empty_like(y))


def collect(candidates: bool):
    """Import mcconv with launches recorded, drive its launch paths, return the recorded launches."""
    JITFunction.run = _recording_run
    Autotuner.run = _autotuner_run
    # The tile-table configs by default, whatever the caller's environment says.
    os.environ["MCCONV_AUTOTUNE"] = "1" if candidates else "0"
    import mcconv
    from mcconv import _backend, ops

    if _backend.interpreted():
        sys.exit("native_compile.py: mcconv's kernels were decorated by the interpreter")
    # The launchers refuse CPU and meta tensors outside the interpreter; these launches never run.
    _backend.check_runnable = lambda device: None
    # An H100's tile tables (where the repository has them) and split rule, as on the GPU.
    _backend.device_name = lambda device: H100_NAME
    _backend.sm_count = lambda device: H100_SMS
    drive_public_paths(mcconv, _backend)
    drive_int64_paths(mcconv, ops, _backend)
    drive_conv3d_paths(mcconv, _backend)
    drive_transpose_paths(mcconv, _backend)
    return list(_launches)


def unlaunched_kernels(launches) -> list:
    """Kernels declared in mcconv.registry that no driven call launched."""
    from mcconv import registry

    launched = {key[0] for key, *_ in launches}
    return sorted(k.name for k in registry.KERNELS.values() if k.jit().__name__ not in launched)


# ------------------------------------------------------------------------------- compiling

def compile_launch(fn, args, kwargs):
    """Compile one launch for sm_90 through triton's own launch path (warmup: compile only)."""
    kernel = _ORIGINAL_RUN(fn, *args, grid=(1,), warmup=True, **kwargs)
    shared = getattr(kernel.metadata, "shared", 0)
    if shared > SM90_MAX_SHARED:
        raise RuntimeError(f"needs {shared} bytes of shared memory; sm_90 allows {SM90_MAX_SHARED}")


def explain_error(err, max_lines=40) -> list:
    """A compiler error as a short device-side traceback: each call site of the nested
    CompilationErrors (function, line, code), then the innermost error's message."""
    lines, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        src, node = getattr(err, "src", None), getattr(err, "node", None)
        lineno = getattr(node, "lineno", None)
        if src and lineno:  # triton's CompilationError: the jitted function's source and the failing node
            name = re.search(r"def\s+(\w+)", src)
            code = src.split("\n")[lineno - 1].strip() if lineno <= src.count("\n") + 1 else ""
            lines.append(f"in {name.group(1) if name else '?'} (its line {lineno}): {code}")
            message = getattr(err, "error_message", None)
        else:
            message = "".join(traceback.format_exception_only(type(err), err)).strip()
        nxt = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
        if nxt is None and message:
            lines.extend(str(message).splitlines()[-max_lines:])
        err = nxt
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shard", default="0/1", help="I/N: compile every N-th distinct variant from the I-th")
    parser.add_argument("--candidates", action="store_true",
                        help="also every autotuning candidate (MCCONV_AUTOTUNE=1): much slower")
    parser.add_argument("--list", action="store_true", help="list the variants, compile nothing")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each variant as it compiles")
    opts = parser.parse_args(argv)
    shard, shards = map(int, opts.shard.split("/"))

    _driver.set_active(_CompileOnlyDriver())
    start = time.perf_counter()
    try:
        launches = collect(opts.candidates)
    except BaseException:
        print(f"native_compile.py: the library failed while driving: {_context}", flush=True)
        raise
    missing = unlaunched_kernels(launches)
    if missing:
        print(f"FAILED coverage: no driven call launches the declared kernel(s) {missing}; add a case", flush=True)
        return 1
    distinct = {}
    for key, fn, args, kwargs, context in launches:
        distinct.setdefault(key, (fn, args, kwargs, context))
    variants = list(distinct.values())
    mine = variants[shard::shards]
    print(f"triton {triton.__version__}: {len(launches)} launches, {len(variants)} distinct variants; "
          f"shard {shard}/{shards} compiles {len(mine)} for sm_90 "
          f"(collected in {time.perf_counter() - start:.1f} s)", flush=True)
    if opts.list:
        for fn, args, kwargs, context in mine:
            print(describe(fn, args, kwargs) + f"\n    from: {context}")
        return 0

    failures = []
    for fn, args, kwargs, context in mine:
        t0 = time.perf_counter()
        try:
            compile_launch(fn, args, kwargs)
        except Exception as err:  # noqa: BLE001 - report every failing variant, not just the first
            failures.append(f"FAILED {describe(fn, args, kwargs)}\n    from: {context}\n"
                            + "\n".join("    | " + line for line in explain_error(err)))
            print(failures[-1], flush=True)
            continue
        if opts.verbose:
            print(f"ok {time.perf_counter() - t0:5.2f}s {describe(fn, args, kwargs)}", flush=True)
    print(f"{len(mine) - len(failures)} of {len(mine)} variants compiled for sm_90, {len(failures)} failed, "
          f"in {time.perf_counter() - start:.1f} s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
