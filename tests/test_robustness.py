"""What makes a library trusted beyond single calls (issue 11): threads, bounded memory, no user
tensor kept alive, bitwise determinism, the tensors' device rather than the current one."""
import contextlib
import gc
import threading
import weakref

import pytest
import torch
import torch.nn.functional as F

import mcconv
from mcconv import _backend, _plan, ops
from reference import DEVICE, assert_conv_close, reference_conv2d

# (input shape, weight shape, options, dtype): different kernels, dtypes and options.
CALLS = [
    ((2, 5, 7, 6), (6, 5, 3, 3), dict(padding=1, activation="relu"), torch.float32),
    ((1, 8, 5, 5), (8, 1, 3, 3), dict(padding=1, groups=8), torch.float16),
    ((2, 6, 4, 5), (7, 6, 1, 1), dict(activation="silu"), torch.float32),
    ((3, 4, 9, 9), (4, 2, 3, 2), dict(stride=2, groups=2, padding=(1, 0)), torch.float16),
]


# ------------------------------------------------------------------------------ concurrency

@pytest.mark.parametrize("fresh_plans", [False, True], ids=["warm", "racing-first-calls"])
def test_calls_from_many_threads(fresh_plans, monkeypatch):
    """Threads running different convolutions at once, forward and backward, first calls racing to
    build plans (and, under the interpreter, serialised launches): every result is right."""
    if fresh_plans:
        monkeypatch.setattr(_plan, "_plans", {})
    errors, barrier = [], threading.Barrier(8)

    def work(index):
        try:
            x_shape, w_shape, opts, dtype = CALLS[index % len(CALLS)]
            g = torch.Generator().manual_seed(index)
            x = torch.randn(x_shape, generator=g).to(DEVICE, dtype).requires_grad_()
            w = (torch.randn(w_shape, generator=g) / 3).to(DEVICE, dtype).requires_grad_()
            barrier.wait()
            for _ in range(2):
                y = mcconv.conv2d(x, w, **opts)
                assert_conv_close(y, reference_conv2d(x, w, **opts), dtype, w_shape[1] * w_shape[2] * w_shape[3])
                y.float().sum().backward()
            assert x.grad is not None and w.grad is not None and torch.isfinite(w.grad.float()).all()
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(f"thread {index}: {type(err).__name__}: {err}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, "\n".join(errors)


def test_interpreter_launches_are_serialised():
    """Triton's interpreter is not thread-safe: its launches hold one lock (the GPU needs none)."""
    assert _backend.launch_guard(torch.device("cpu")) is _backend._interpreter_lock


# ----------------------------------------------------------------------- the tensors' device

def test_launch_guard_selects_the_tensors_device(monkeypatch):
    """Triton launches on the current device; mcconv makes the tensors' device current when it is not."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    guard = _backend.launch_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1  # entered only around the launch
    assert isinstance(_backend.launch_guard(torch.device("cuda", 0)), contextlib.nullcontext)
    assert isinstance(_backend.launch_guard(torch.device("cuda")), contextlib.nullcontext)


@pytest.mark.gpu
def test_tensors_on_another_gpu_than_the_current_one():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    x = torch.randn(2, 8, 9, 9, device="cuda:1", requires_grad=True)
    w = torch.randn(8, 8, 3, 3, device="cuda:1", requires_grad=True)
    with torch.cuda.device(0):
        y = mcconv.conv2d(x, w, padding=1)
        y.sum().backward()
    assert y.device == x.device
    assert_conv_close(y, reference_conv2d(x, w, padding=1), torch.float32, 72)
    ref_x, ref_w = torch.autograd.grad(F.conv2d(x.double(), w.double(), padding=1).sum(), (x, w))
    assert_conv_close(x.grad, ref_x, torch.float32, 72) and assert_conv_close(w.grad, ref_w, torch.float32, 162)


# --------------------------------------------------------------------------- bounded memory

def test_plan_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(_plan, "_plans", {})
    monkeypatch.setattr(_plan, "MAX_PLANS", 64)
    w = torch.empty(4, 3, 3, 3, device="meta")
    for size in range(8, 8 + 200):  # distinct shapes, planned (meta tensors: nothing runs)
        mcconv.explain(torch.empty(1, 3, size, 5, device="meta"), w)
    assert 0 < len(_plan._plans) <= 64


def test_no_user_tensor_is_kept_alive():
    """After a forward and backward, dropping the tensors frees them: no cache holds one."""
    x = torch.randn(2, 4, 6, 6, device=DEVICE, requires_grad=True)
    w = torch.randn(5, 4, 3, 3, device=DEVICE, requires_grad=True)
    b = torch.randn(5, device=DEVICE, requires_grad=True)
    r = torch.randn(2, 5, 6, 6, device=DEVICE)
    y = mcconv.conv2d(x, w, b, padding=1, activation="gelu", residual=r)
    y.sum().backward()
    with torch.no_grad():
        mcconv.conv2d(x, w, b, padding=1)
    refs = [weakref.ref(t) for t in (x, w, b, r, y, x.grad, w.grad)]
    del x, w, b, r, y
    gc.collect()
    assert all(ref() is None for ref in refs)


def test_memory_stays_flat_over_many_shapes_and_weights(monkeypatch):
    """Many distinct shapes and weights: the plan cache stays within its bound, nothing else grows."""
    monkeypatch.setattr(_plan, "_plans", {})
    monkeypatch.setattr(_plan, "MAX_PLANS", 32)
    gc.collect()
    before = len(gc.get_objects())
    for i in range(120):
        x = torch.randn(1, 2, 4 + i % 40, 5, device=DEVICE)
        w = torch.randn(3, 2, 1 + i % 3, 3, device=DEVICE)
        mcconv.conv2d(x, w, padding=1)
    gc.collect()
    assert len(_plan._plans) <= 32
    assert len(gc.get_objects()) - before < 5000  # a few plans' worth, not one per call


# ------------------------------------------------------------------------------ determinism

@pytest.mark.parametrize("index", range(len(CALLS)))
def test_forward_and_every_gradient_are_bitwise_reproducible(index):
    x_shape, w_shape, opts, dtype = CALLS[index]
    x = torch.randn(x_shape, device=DEVICE).to(dtype)
    w = torch.randn(w_shape, device=DEVICE).to(dtype)
    b = torch.randn(w_shape[0], device=DEVICE).to(dtype)

    def run():
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        y = mcconv.conv2d(*leaves, **opts)
        return (y, *torch.autograd.grad(y, leaves, torch.ones_like(y)))

    first = run()
    for _ in range(2):
        assert all(torch.equal(a, c) for a, c in zip(first, run()))


def test_deterministic_algorithms_mode_is_welcome():
    """torch.use_deterministic_algorithms(True) changes nothing: mcconv is deterministic anyway."""
    x, w = torch.randn(1, 3, 5, 5, device=DEVICE), torch.randn(4, 3, 3, 3, device=DEVICE)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        y = mcconv.conv2d(x.requires_grad_(), w, padding=1)
        y.sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(y, mcconv.conv2d(x.detach(), w, padding=1))


def test_capture_records_without_running():
    """mcconv.ops.capture(): what inspect compiles is what a call would launch, on meta tensors."""
    x, w = torch.empty(2, 8, 9, 9, device="meta"), torch.empty(8, 8, 3, 3, device="meta")
    with ops.capture() as launches:
        y = ops.conv2d_forward(x, w, padding=1)
        ops.conv2d_weight_grad(y, x, w.shape, padding=1)
    names = [fn.__name__ for fn, *_ in launches]
    assert names[0] == "conv2d_fwd_kernel" and names[1] == "conv2d_wgrad_kernel"
