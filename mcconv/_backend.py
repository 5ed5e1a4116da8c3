"""Where kernels run: Triton's interpreter or a CUDA device.

Nothing here runs at import: ``import mcconv`` imports neither triton nor the kernels and
queries no GPU, so ``TRITON_INTERPRET=1`` may still be set after ``import mcconv`` (a notebook
habit), as long as nothing else imported triton first.
"""
import contextlib
import functools
import os
import threading

import torch

from ._spec import ConvTypeError


class BackendError(RuntimeError):
    """The kernels cannot run as the environment asks (for example TRITON_INTERPRET set too late)."""


@functools.lru_cache(maxsize=None)
def _decorated() -> tuple[bool, bool]:
    """(mcconv's kernels interpreted, triton's own library interpreted): each was decided by
    TRITON_INTERPRET when it was decorated (triton's at its import, mcconv's at first use)."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    from mcconv import _kernels

    kernels = isinstance(_kernels.conv2d_fwd_kernel, InterpretedFunction)
    if kernels:
        _fix_interpreter_bf16_dot()
    return kernels, isinstance(tl.cdiv, InterpretedFunction)


def _fix_interpreter_bf16_dot() -> None:
    """Make Triton's interpreter multiply bf16 tiles correctly.

    The interpreter keeps bf16 values as their uint16 bit patterns and its tl.dot multiplies
    those integers (a silently wrong result). Widening the bits to fp32 (exact: bf16 is fp32's
    upper half) before the product fixes it for every kernel, so no kernel needs a workaround.
    """
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder.create_dot, "mcconv_bf16_fix", False):
        return
    original = builder.create_dot

    def widen(handle):
        if handle.dtype != tl.bfloat16:
            return handle
        return interpreter.TensorHandle((handle.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def create_dot(self, a, b, d, *args, **kwargs):
        return original(self, widen(a), widen(b), d, *args, **kwargs)

    create_dot.mcconv_bf16_fix = True
    builder.create_dot = create_dot


def interpreted() -> bool:
    """True when mcconv's kernels run under Triton's interpreter (TRITON_INTERPRET=1).

    Decided by the kernels themselves, since Triton reads the variable when it decorates them.
    Raises :class:`BackendError` when the variable and the kernels disagree: set after triton
    (or mcconv's kernels) were loaded, the interpreter would fail deep inside a kernel.
    """
    kernels, library = _decorated()
    wanted = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if not wanted == kernels == library:
        _mismatch(wanted, library)
    return kernels


def _mismatch(wanted: bool, triton_interpreted: bool) -> None:
    if wanted and not triton_interpreted:
        raise BackendError(
            "TRITON_INTERPRET=1 was set after triton was imported, so triton's own functions were built for the "
            "GPU and its interpreter cannot run mcconv's kernels. Set TRITON_INTERPRET=1 before anything imports "
            "triton (first line of the notebook or script, or in the shell: TRITON_INTERPRET=1 python ...) and "
            "restart the Python process.")
    if wanted:
        raise BackendError(
            "TRITON_INTERPRET=1 was set after mcconv's kernels were loaded for the GPU. Set it before the first "
            "convolution (ideally before importing anything) and restart the Python process.")
    raise BackendError(
        "TRITON_INTERPRET was unset after mcconv's kernels were loaded for Triton's interpreter. Restart the "
        "Python process without it to run on the GPU.")


_capture = threading.local()  # .launches: a list while capture() records this thread's launches
CAPTURING = [0]  # captures active in any thread: the launch path's cheap test before the thread-local


@contextlib.contextmanager
def capture():
    """Record the kernel launches made in this thread instead of running them; yields the list of
    ``(jit_function, grid, args, kwargs)``. Tensors may then be on any device, ``meta`` included."""
    outer = getattr(_capture, "launches", None)
    _capture.launches = launches = []
    CAPTURING[0] += 1
    try:
        yield launches
    finally:
        CAPTURING[0] -= 1
        _capture.launches = outer


def launch(fn, grid, args: tuple, kwargs) -> None:
    """``fn[grid](*args, **kwargs)``, or its record under :func:`capture`."""
    launches = getattr(_capture, "launches", None) if CAPTURING[0] else None
    if launches is None:
        fn[grid](*args, **kwargs)
    else:
        launches.append((fn, grid, args, dict(kwargs)))


def check_runnable(device: torch.device) -> None:
    """CUDA tensors run natively; CPU tensors only under Triton's interpreter (any device under capture)."""
    if CAPTURING[0] and getattr(_capture, "launches", None) is not None:
        return
    if device.type == "cuda":
        if interpreted():
            raise ConvTypeError("input: got a CUDA tensor, but TRITON_INTERPRET=1 runs mcconv's kernels through "
                                "Triton's interpreter on CPU tensors; unset it to run on the GPU")
        return
    if device.type == "cpu":
        if interpreted():
            return
        raise ConvTypeError("input: got a CPU tensor, but mcconv's kernels need a CUDA device. To run them on "
                            "the CPU, set TRITON_INTERPRET=1 in the environment before importing triton or "
                            "mcconv (Triton's interpreter; slow, for testing)")
    raise ConvTypeError(f"input: expected a CUDA tensor (or a CPU tensor under TRITON_INTERPRET=1), "
                        f"got device {device}")


# Triton's interpreter is not thread-safe (a kernel launched from several threads at once fails
# with InterpreterError): launches through it are serialised. Native launches need no lock.
_interpreter_lock = threading.Lock()


def launch_guard(device: torch.device):
    """The context a launch on ``device`` needs: the interpreter's lock on the CPU; on CUDA the
    tensors' device made current when it is not (Triton launches on the current device), else nothing."""
    if device.type != "cuda":
        return _interpreter_lock
    if device.index is not None and device.index != torch.cuda.current_device():
        return torch.cuda.device(device.index)
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def device_name(device: torch.device) -> str | None:
    """GPU model as torch reports it, spaces as underscores (the tile tables' file name)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_name(device).replace(" ", "_")


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int | None:
    """Streaming multiprocessors of a CUDA device (None off the GPU)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).multi_processor_count


# The flag objects are plain module attributes (no GPU query); resolving them once keeps the
# per-call check to one property read in the default state.
_CUDNN = torch.backends.cudnn
_CONV_FLAGS = getattr(_CUDNN, "conv", None)
_HAS_FP32_PRECISION = _CONV_FLAGS is not None and hasattr(_CONV_FLAGS, "fp32_precision")


def conv_uses_tf32() -> bool:
    """Whether torch would use TF32 for an fp32 convolution right now.

    Follows the newer ``fp32_precision`` settings (conv, then cuDNN, then global; "none" defers
    to the next level) where torch has them, else ``torch.backends.cudnn.allow_tf32``.
    """
    if not _HAS_FP32_PRECISION:
        return bool(_CUDNN.allow_tf32)
    precision = _CONV_FLAGS.fp32_precision
    if precision == "none":
        precision = _CUDNN.fp32_precision
        if precision == "none":
            precision = torch.backends.fp32_precision
    return precision == "tf32"


def uses_tf32(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether mcconv's fp32 dots run in TF32 for tensors of ``dtype`` on ``device``: fp32, torch's
    convolution setting, and not on the CPU (Triton's interpreter has no TF32). Meta tensors
    plan for a GPU, so they follow torch's setting."""
    return dtype == torch.float32 and device.type != "cpu" and conv_uses_tf32()


def autotune_requested() -> bool:
    """MCCONV_AUTOTUNE=1 asks for Triton's autotuner over the candidate list."""
    return os.environ.get("MCCONV_AUTOTUNE", "0") == "1"
