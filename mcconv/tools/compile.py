"""Compile a Triton kernel launch for a chosen NVIDIA GPU on a machine without one.

``compile_launch(fn, args, kwargs, target)`` compiles exactly what ``fn[grid](*args, **kwargs)``
would compile on that GPU: it goes through Triton's own ``JITFunction.run(..., warmup=True)``,
so the specialisation (pointer dtypes and 16-byte alignment, ints equal to 1 turned into
constants, divisibility by 16), the constexprs (including ``@triton.jit`` functions passed as
constexpr values) and ``num_warps``/``num_stages`` are Triton's, not a re-implementation. The
only thing faked is the CUDA driver, which Triton asks for the target, device and stream before
compiling: :func:`compile_only_driver` swaps in a stand-in for the duration of the call and then
restores whatever was active (none at all on a CPU-only machine). ptxas, cuobjdump and nvdisasm
ship in the triton wheel, so no CUDA toolkit is needed either.

The result, :class:`Compiled`, holds the TTGIR, PTX, cubin and (lazily) the SASS and the
cubin's resource usage; :mod:`mcconv.tools.sass` analyses it.

TRITON_INTERPRET must be unset when the kernels are decorated: interpreted kernels have no
compiler behind them.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget

__all__ = ["H100", "A100", "Compiled", "ResourceUsage", "compile_launch", "compile_only_driver",
           "parse_resource_usage", "resolve_target", "tool_path"]

H100 = GPUTarget("cuda", 90, 32)
A100 = GPUTarget("cuda", 80, 32)

# Names accepted by resolve_target (besides GPUTarget objects and bare capabilities such as 90).
_TARGET_NAMES = {"h100": H100, "h200": H100, "hopper": H100, "a100": A100, "ampere": A100}


def resolve_target(target) -> GPUTarget:
    """A GPUTarget from a GPUTarget, a capability (90, "sm_90", "sm_90a", "cuda:90") or a name ("h100", "a100")."""
    if isinstance(target, GPUTarget):
        return target
    if isinstance(target, int) and not isinstance(target, bool):
        return GPUTarget("cuda", target, 32)
    if isinstance(target, str):
        name = target.strip().lower()
        if name in _TARGET_NAMES:
            return _TARGET_NAMES[name]
        match = re.fullmatch(r"(?:cuda:|sm_?)?(\d{2,3})a?", name)
        if match:
            return GPUTarget("cuda", int(match.group(1)), 32)
    raise ValueError(f"target: expected a GPUTarget, a compute capability such as 90 or 'sm_80', "
                     f"or one of {sorted(_TARGET_NAMES)}; got {target!r}")


# ------------------------------------------------------------------------------- the driver swap

class _CompileOnlyDriver:
    """Answers what JITFunction.run asks the CUDA driver before compiling; never launches.

    Triton keeps one compile cache *per device id*, and fixes that cache's target the first time
    the id is seen, so every target gets its own (negative, never a real GPU's) device id: an
    sm_80 compile can then never be served an sm_90 kernel, and vice versa.
    """

    def __init__(self, target: GPUTarget, device: int):
        self.target = target
        self.device = device

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return self.device

    def get_current_stream(self, device=None):
        return 0


_SWAP_LOCK = threading.RLock()
_DEVICE_IDS: dict = {}  # (backend, arch, warp_size) -> device id of the stand-in driver
_MISSING = object()


def _device_id(target: GPUTarget) -> int:
    key = (target.backend, target.arch, target.warp_size)
    with _SWAP_LOCK:
        return _DEVICE_IDS.setdefault(key, -1000 - len(_DEVICE_IDS))


@contextlib.contextmanager
def compile_only_driver(target=H100):
    """Make a compile-only stand-in the active Triton driver for ``target``; restore the real one on exit.

    The driver active before (or none: Triton creates its default lazily, and on a CPU-only
    machine creating it would fail) is put back even when compiling raises. Swaps are serialised
    by a lock, since the active driver is process-global.
    """
    from triton.runtime.driver import driver

    target = resolve_target(target)
    with _SWAP_LOCK:
        # The private slot, not `driver.active`: reading `active` would create the default driver.
        saved = getattr(driver, "_active", _MISSING)
        driver.set_active(_CompileOnlyDriver(target, _device_id(target)))
        try:
            yield target
        finally:
            if saved is _MISSING:  # a triton without the slot: fall back to its own reset
                with contextlib.suppress(Exception):
                    driver.reset_active()
            else:
                driver._active = saved


# ------------------------------------------------------------------------------- tools

def tool_path(name: str) -> str:
    """Path of an NVIDIA tool (``ptxas``, ``cuobjdump``, ``nvdisasm``) as this triton uses it.

    ``triton.knobs.nvidia.<name>.path`` (triton 3.6 and 3.9 have it; it honours
    TRITON_<NAME>_PATH), else the triton wheel's ``backends/nvidia/bin``, else ``$PATH``. (Which
    ptxas Triton itself runs depends on the target: triton 3.9 assembles sm_90 with its
    ``ptxas-blackwell``. Nothing here re-assembles, so that never matters.)
    """
    with contextlib.suppress(Exception):
        from triton import knobs

        path = getattr(knobs.nvidia, name).path
        if path and os.path.exists(path):
            return path
    with contextlib.suppress(Exception):
        import triton.backends.nvidia as nvidia_backend

        path = Path(nvidia_backend.__file__).parent / "bin" / name
        if path.exists():
            return str(path)
    path = shutil.which(name)
    if path:
        return path
    raise FileNotFoundError(f"{name}: not in this triton wheel ({triton.__version__}) nor on PATH")


def _run_tool(name: str, *args: str) -> str:
    result = subprocess.run([tool_path(name), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{name} {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


@contextlib.contextmanager
def _cubin_file(cubin: bytes):
    with tempfile.TemporaryDirectory(prefix="mcconv-sass-") as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        yield str(path)


# ------------------------------------------------------------------------------- results

@dataclass(frozen=True)
class ResourceUsage:
    """What the cubin asks of an SM, per thread (registers, local memory) and per CTA (static shared).

    ``registers``, ``stack_bytes``, ``local_bytes`` and ``static_shared_bytes`` are cuobjdump's
    ``--dump-resource-usage`` of the very cubin Triton produced (REG, STACK, LOCAL, SHARED):
    nothing is re-assembled, so nothing can differ from what runs. cuobjdump does not break
    local memory down into spills, so ``spill_store_bytes``/``spill_load_bytes`` are the bytes
    moved by the SASS's ``STL``/``LDL`` instructions (each counted once, by width), which is what
    ``ptxas -v`` reports as "bytes spill stores/loads": Triton declares no local arrays, so all
    of its local-memory traffic is spilling. (Re-running ``ptxas -v`` on the PTX would need
    Triton's exact ptxas flags, which change between versions, and a second assembly.)
    """

    registers: int
    stack_bytes: int
    local_bytes: int
    static_shared_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int


_RESOURCE_RE = re.compile(r"Function\s+(\S+?):?\s*\n\s*(REG:.*)")


def parse_resource_usage(text: str, name: str | None = None) -> dict:
    """cuobjdump ``--dump-resource-usage`` output -> {"REG": int, "STACK": int, ...} for one function."""
    found = {}
    for match in _RESOURCE_RE.finditer(text):
        fields = dict(re.findall(r"([A-Z_]+(?:\[\d+\])?):(\d+)", match.group(2)))
        found[match.group(1)] = {k: int(v) for k, v in fields.items()}
    if not found:
        raise ValueError("no function in cuobjdump's resource usage output")
    return found.get(name) or next(iter(found.values()))


class Compiled:
    """A kernel compiled for one target: IRs, cubin, SASS and resource usage.

    Attributes: ``name``, ``target`` (GPUTarget), ``num_warps``, ``num_stages``, ``num_ctas``,
    ``shared`` (dynamic shared memory per CTA, bytes: Triton's metadata.shared), ``ttgir``,
    ``ptx``, ``cubin`` (bytes), ``sass`` (text, disassembled on first use), ``resources``
    (:class:`ResourceUsage`, read on first use) and the shortcuts ``registers``,
    ``spill_store_bytes``, ``spill_load_bytes``, ``stack_bytes``. ``compile_seconds`` is the wall
    time of the call that produced it (near zero when Triton's on-disk cache had it).
    """

    def __init__(self, kernel, target: GPUTarget, compile_seconds: float = 0.0):
        self.kernel = kernel  # triton's CompiledKernel
        self.target = target
        self.compile_seconds = compile_seconds
        meta = kernel.metadata
        self.name = meta.name
        self.num_warps = meta.num_warps
        self.num_stages = meta.num_stages
        self.num_ctas = getattr(meta, "num_ctas", 1)
        self.shared = getattr(meta, "shared", 0)
        self.triton_version = triton.__version__

    def __repr__(self) -> str:
        return (f"Compiled({self.name}, sm_{self.target.arch}, num_warps={self.num_warps}, "
                f"num_stages={self.num_stages}, shared={self.shared})")

    @property
    def arch(self) -> str:
        return f"sm_{self.target.arch}"

    @property
    def ttgir(self) -> str:
        return self.kernel.asm["ttgir"]

    @property
    def ptx(self) -> str:
        return self.kernel.asm["ptx"]

    @property
    def cubin(self) -> bytes:
        return self.kernel.asm["cubin"]

    @functools.cached_property
    def sass(self) -> str:
        """The SASS, from the wheel's nvdisasm with source-line annotations (``-c -g``).

        nvdisasm labels branch targets (``.L_x_N``), which makes basic blocks explicit; should it
        fail, ``cuobjdump -sass`` (targets as addresses) is used: the parser reads both.
        """
        with _cubin_file(self.cubin) as path:
            try:
                return _run_tool("nvdisasm", "-c", "-g", path)
            except (RuntimeError, FileNotFoundError):
                return _run_tool("cuobjdump", "-sass", path)

    @functools.cached_property
    def resources(self) -> ResourceUsage:
        with _cubin_file(self.cubin) as path:
            usage = parse_resource_usage(_run_tool("cuobjdump", "--dump-resource-usage", path), self.name)
        from .sass import local_memory_bytes  # the SASS parser lives with the analysis

        stores, loads = local_memory_bytes(self.sass)
        return ResourceUsage(registers=usage.get("REG", 0), stack_bytes=usage.get("STACK", 0),
                             local_bytes=usage.get("LOCAL", 0), static_shared_bytes=usage.get("SHARED", 0),
                             spill_store_bytes=stores, spill_load_bytes=loads)

    @property
    def registers(self) -> int:
        return self.resources.registers

    @property
    def spill_store_bytes(self) -> int:
        return self.resources.spill_store_bytes

    @property
    def spill_load_bytes(self) -> int:
        return self.resources.spill_load_bytes

    @property
    def stack_bytes(self) -> int:
        return self.resources.stack_bytes

    def as_dict(self) -> dict:
        """Launch-relevant facts as plain JSON-able values (no IR text)."""
        return {"name": self.name, "target": self.arch, "num_warps": self.num_warps,
                "num_stages": self.num_stages, "num_ctas": self.num_ctas, "shared": self.shared,
                "triton": self.triton_version, "resources": asdict(self.resources)}

    def save(self, directory) -> dict:
        """Write ``<name>.ttgir``, ``.ptx``, ``.cubin`` and ``.sass`` into ``directory`` (created if needed).

        Returns {suffix: Path}.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = {}
        for suffix, content in (("ttgir", self.ttgir), ("ptx", self.ptx), ("cubin", self.cubin), ("sass", self.sass)):
            path = directory / f"{self.name}.{suffix}"
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
            written[suffix] = path
        return written


# ------------------------------------------------------------------------------- compiling

_COMPILED: dict = {}  # id(triton CompiledKernel) -> Compiled (the kernel is kept alive by both caches)
_CACHE_LOCK = threading.Lock()


def compile_launch(fn, args=(), kwargs=None, target=H100) -> Compiled:
    """Compile ``fn[grid](*args, **kwargs)`` for ``target`` without launching it (no GPU needed).

    ``fn`` is a ``@triton.jit`` JITFunction; ``args``/``kwargs`` are exactly what the launch would
    pass: tensors (CPU or ``meta``: only dtype and data pointer alignment matter), ints, floats,
    constexprs (also ``@triton.jit`` functions), ``num_warps``/``num_stages`` among ``kwargs``.
    ``target``: a GPUTarget or anything :func:`resolve_target` accepts (default H100, sm_90).

    Cached in-process per (kernel, specialisation, target): Triton's own per-device kernel cache
    answers repeated launches (each target has its own stand-in device id), and the same
    :class:`Compiled` object, with its SASS and resource usage already read, is returned for it.
    """
    from triton.runtime.jit import JITFunction

    if not isinstance(fn, JITFunction):
        raise TypeError(f"fn: expected a @triton.jit JITFunction, got {type(fn).__name__}"
                        + (" (TRITON_INTERPRET is set: interpreted kernels cannot be compiled)"
                           if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") else ""))
    target = resolve_target(target)
    start = time.perf_counter()
    with compile_only_driver(target):
        kernel = fn.run(*args, grid=(1,), warmup=True, **dict(kwargs or {}))
    elapsed = time.perf_counter() - start
    with _CACHE_LOCK:
        compiled = _COMPILED.get(id(kernel))
        if compiled is None or compiled.kernel is not kernel:
            compiled = _COMPILED[id(kernel)] = Compiled(kernel, target, elapsed)
    return compiled
