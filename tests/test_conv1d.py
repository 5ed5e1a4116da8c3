"""mcconv.conv1d / mcconv.Conv1d: torch.nn.functional.conv1d's semantics on the 2-D kernels.

Values and gradients against float64 torch; every error against what CPU torch 2.13 does (each
test first runs torch and asserts that it raises, so the expectation is measured, not guessed);
the 2-D view is a view (no copy of the input); the module, its state dict and mcconv.convert.
Shapes are tiny: the suite runs the kernels through Triton's interpreter on the CPU.
"""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import mcconv
from reference import DEVICE, DTYPES, assert_conv_close

FP32_TOL = dict(rtol=1e-4, atol=1e-5)
ACT = {name: a.reference for name, a in mcconv.ACTIVATIONS.items()}


def ref64(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, activation=None, residual=None):
    """float64 torch on the values mcconv received; a (left, right) padding pads first."""
    def f64(t):
        return None if t is None else t.detach().double().cpu()

    return conv1d_reference(f64(x), f64(w), f64(b), stride, padding, dilation, groups, activation, f64(residual))


def conv1d_reference(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, activation=None, residual=None):
    """act(F.conv1d(x, w, b) + residual) in torch, differentiable; a (left, right) padding pads first."""
    if isinstance(padding, tuple) and len(padding) == 2:
        x, padding = F.pad(x, padding), 0
    y = F.conv1d(x, w, b, stride, padding, dilation, groups)
    if residual is not None:
        y = y + residual
    return y if activation is None else ACT[activation](y)


def torch_error(call):
    """The exception torch raises for ``call``, asserting that it raises."""
    with pytest.raises(Exception) as info:
        call()
    return info.value


# --------------------------------------------------------------------------- values

# (C, K, kW, L, options): odd sizes; padding of every form; groups incl. depthwise (multiplier 1, 2).
CASES = {
    "plain": (3, 5, 3, 11, {}),
    "stride2-pad1": (3, 5, 3, 12, dict(stride=2, padding=1)),
    "stride3-dil2": (4, 3, 3, 17, dict(stride=3, dilation=2)),
    "pad-1tuple": (3, 5, 4, 9, dict(padding=(2,))),
    "pad-left-right": (3, 5, 3, 9, dict(padding=(2, 0))),
    "same-odd": (3, 5, 5, 9, dict(padding="same")),
    "same-even-dil2": (3, 5, 4, 10, dict(padding="same", dilation=2)),
    "valid-stride2": (3, 5, 3, 10, dict(padding="valid", stride=(2,))),
    "groups2": (4, 6, 3, 9, dict(groups=2, padding=1)),
    "depthwise": (5, 5, 5, 11, dict(groups=5, padding=2)),
    "depthwise-mult2-stride2": (3, 6, 3, 12, dict(groups=3, stride=2, padding=1, dilation=2)),
    "1x1": (5, 3, 1, 7, {}),
    "kernel-spans-input": (2, 3, 7, 7, {}),
}


@pytest.mark.parametrize("c, k, kw, length, options", CASES.values(), ids=CASES.keys())
def test_forward_matches_float64_torch(c, k, kw, length, options):
    groups = options.get("groups", 1)
    x = torch.randn(2, c, length, device=DEVICE)
    w = torch.randn(k, c // groups, kw, device=DEVICE)
    b = torch.randn(k, device=DEVICE)
    y = mcconv.conv1d(x, w, b, **options)
    expected = ref64(x, w, b, **options)
    if not (isinstance(options.get("padding"), tuple) and len(options["padding"]) == 2):
        assert y.shape == F.conv1d(x.cpu(), w.cpu(), b.cpu(), **options).shape  # torch's own shape
    assert y.dtype == x.dtype and y.is_contiguous()
    assert_conv_close(y, expected, torch.float32, w[0].numel())


@pytest.mark.parametrize("activation", [None, *mcconv.ACTIVATIONS])
def test_bias_residual_activation_fused(activation):
    x, w, b = torch.randn(2, 3, 9, device=DEVICE), torch.randn(4, 3, 3, device=DEVICE), torch.randn(4, device=DEVICE)
    r = torch.randn(2, 9, 4, device=DEVICE).transpose(1, 2)  # a residual of any strides
    y = mcconv.conv1d(x, w, b, padding=1, activation=activation, residual=r)
    assert_conv_close(y, ref64(x, w, b, padding=1, activation=activation, residual=r), torch.float32, 9)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes(dtype):
    x, w = torch.randn(2, 4, 10, device=DEVICE, dtype=dtype), torch.randn(6, 4, 3, device=DEVICE, dtype=dtype)
    b = torch.randn(6, device=DEVICE, dtype=dtype)
    y = mcconv.conv1d(x, w, b, padding=1, activation="relu")
    assert y.dtype == dtype
    assert_conv_close(y, ref64(x, w, b, padding=1, activation="relu"), dtype, 12)


def test_unbatched_like_torch():
    x, w, b = torch.randn(3, 8, device=DEVICE), torch.randn(4, 3, 3, device=DEVICE), torch.randn(4, device=DEVICE)
    r = torch.randn(4, 8, device=DEVICE)
    expected_shape = F.conv1d(x.cpu(), w.cpu(), b.cpu(), padding="same").shape
    y = mcconv.conv1d(x, w, b, padding="same", residual=r, activation="silu")
    assert y.shape == expected_shape == (4, 8)
    assert_conv_close(y, ref64(x, w, b, padding="same", residual=r, activation="silu"), torch.float32, 9)


def _nlc(n, c, length):
    return torch.randn(n, length, c, device=DEVICE).transpose(1, 2)  # (N, L, C) read as (N, C, L)


# Input layouts; the output layout must be torch's (measured on each, below).
LAYOUTS = {
    "contiguous": lambda: torch.randn(2, 4, 9, device=DEVICE),
    "nlc-transposed": lambda: _nlc(2, 4, 9),
    "sliced-L": lambda: torch.randn(2, 4, 18, device=DEVICE)[..., ::2],
    "sliced-C": lambda: torch.randn(2, 8, 9, device=DEVICE)[:, ::2],
    "batch-expanded": lambda: torch.randn(1, 4, 9, device=DEVICE).expand(2, 4, 9),
    "nlc-L1": lambda: _nlc(2, 4, 1),  # is_contiguous(): torch's view of it suggests channels_last
    "unbatched-transposed": lambda: torch.randn(9, 4, device=DEVICE).t(),
}
KERNELS = {"direct": (6, 1, 3), "1x1": (6, 1, 1), "depthwise-mult2": (8, 4, 3)}  # K, groups, kW


@pytest.mark.parametrize("kind", KERNELS, ids=KERNELS.keys())
@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUTS.keys())
def test_input_layouts_values_and_output_strides_like_torch(layout, kind):
    x = LAYOUTS[layout]()
    k, groups, kw = KERNELS[kind]
    w = torch.randn(k, 4 // groups, kw, device=DEVICE)
    if x.shape[-1] < kw:
        x = torch.randn(2, 4, kw, device=DEVICE)
    expected = F.conv1d(x.cpu(), w.cpu(), groups=groups)
    y = mcconv.conv1d(x, w, groups=groups)
    assert y.shape == expected.shape
    assert y.stride() == expected.stride(), f"mcconv {y.stride()}, torch {expected.stride()}"
    assert_conv_close(y, ref64(x, w, groups=groups), torch.float32, w[0].numel())


def test_channels_last_like_weight_gives_torchs_output_strides():
    # A (K, kW, C)-transposed weight suggests channels_last once viewed 4-D; torch's output then is
    # (N, K, Q) with strides (Q*K, 1, K), on CPU (measured) and CUDA (cuDNN: the same view4d rule).
    w = torch.randn(6, 3, 4, device=DEVICE).transpose(1, 2)
    for x in (torch.randn(2, 4, 9, device=DEVICE), _nlc(2, 4, 9), torch.randn(4, 9, device=DEVICE)):
        expected = F.conv1d(x.cpu(), w.cpu())
        y = mcconv.conv1d(x, w)
        assert y.stride() == expected.stride()
        assert_conv_close(y, ref64(x, w), torch.float32, 12)


def test_empty_batch_and_zero_channels_like_torch():
    w = torch.randn(6, 4, 3, device=DEVICE)
    for x, w_ in ((torch.randn(0, 4, 9, device=DEVICE), w), (torch.randn(0, 4, 0, device=DEVICE), w),
                  (torch.randn(1, 0, 9, device=DEVICE), torch.randn(6, 0, 3, device=DEVICE))):
        opts = dict(padding=2) if x.shape[-1] == 0 else {}
        assert mcconv.conv1d(x, w_, **opts).shape == F.conv1d(x.cpu(), w_.cpu(), **opts).shape


# --------------------------------------------------------------------------- gradients

GRAD_CASES = {
    "direct-silu": (dict(padding=1), 1, "silu"),
    "strided-dilated-relu": (dict(stride=2, dilation=2, padding=(1, 2)), 1, "relu"),
    "depthwise-mult2-gelu": (dict(padding="same"), 3, "gelu"),
    "1x1": ({}, 1, None),
}


@pytest.mark.parametrize("options, groups, activation", GRAD_CASES.values(), ids=GRAD_CASES.keys())
def test_gradients_match_float64_torch(options, groups, activation):
    c, k, kw = 3, 6, 3 if options else 1
    x = _nlc(2, c, 10).requires_grad_()  # a non-contiguous input: its gradient flows back through the view
    w = torch.randn(k, c // groups, kw, device=DEVICE, requires_grad=True)
    b = torch.randn(k, device=DEVICE, requires_grad=True)
    r = torch.randn(ref64(x, w, groups=groups, **options).shape, device=DEVICE, requires_grad=True)
    y = mcconv.conv1d(x, w, b, groups=groups, activation=activation, residual=r, **options)
    leaves64 = [t.detach().double().cpu().requires_grad_() for t in (x, w, b, r)]
    y64 = conv1d_reference(*leaves64[:3], groups=groups, activation=activation, residual=leaves64[3],
                           **options)
    gy = torch.randn(y.shape, device=DEVICE)
    grads = torch.autograd.grad(y, (x, w, b, r), gy)
    grads64 = torch.autograd.grad(y64, leaves64, gy.double().cpu())
    assert_conv_close(y, y64, torch.float32, w[0].numel())
    for got, want, t in zip(grads, grads64, (x, w, b, r)):
        assert got.shape == t.shape
        assert_conv_close(got, want, torch.float32, 2 * y.shape[-1] * k)


def _chain(x, w1, b1, w2):
    """a 'same' silu conv1d, then a depthwise one with a channel multiplier of 2."""
    y = mcconv.conv1d(x, w1, b1, padding="same", activation="silu")
    return mcconv.conv1d(y, w2, None, padding=1, groups=y.shape[1])


def test_compile_fullgraph_and_autocast():
    x = _nlc(2, 4, 9).requires_grad_()
    leaves = [x, torch.randn(4, 4, 3, device=DEVICE) / 3, torch.randn(4, device=DEVICE),
              torch.randn(8, 1, 3, device=DEVICE) / 2]
    leaves = [x] + [t.requires_grad_() for t in leaves[1:]]
    # aot_eager: traces forward and backward through the custom ops' fakes, without a C++ build
    compiled = torch.compile(_chain, fullgraph=True, dynamic=False, backend="aot_eager")
    out, out_eager = compiled(*leaves), _chain(*leaves)
    torch.testing.assert_close(out, out_eager, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), leaves)
    grads_eager = torch.autograd.grad(out_eager.square().sum(), leaves)
    for got, want in zip(grads, grads_eager):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    x, w, b = leaves[:3]
    with torch.autocast(DEVICE, dtype=torch.float16):  # aten::conv1d's rule: float16 operands
        y = mcconv.conv1d(x, w, b, padding=1)
        y_ref = F.conv1d(x, w, b, padding=1)
    assert y.dtype == y_ref.dtype == torch.float16
    (gw,) = torch.autograd.grad(y.float().sum(), w)
    assert gw.dtype == torch.float32
    assert_conv_close(y, ref64(x.half(), w.half(), b.half(), padding=1), torch.float16, 12)


# --------------------------------------------------------------------------- the view: kernels, no copy

def test_dispatch_through_the_2d_view():
    x = torch.randn(2, 6, 11, device="meta")
    cases = {  # weight, groups, padding, kernel
        "depthwise": ((6, 1, 5), 6, 2, "depthwise"),
        "depthwise-multiplier-2": ((12, 1, 3), 6, 1, "depthwise"),
        "1x1": ((4, 6, 1), 1, 0, "gemm_1x1"),
        "direct": ((4, 6, 3), 1, 1, "conv_direct"),
        "grouped": ((4, 3, 3), 2, 1, "conv_direct"),
    }
    for name, (w_shape, groups, padding, kernel) in cases.items():
        w = torch.randn(w_shape, device="meta")
        d = mcconv.explain1d(x, w, groups=groups, padding=padding)
        assert d.kernel == kernel, name
        assert d.output_shape == (2, w_shape[0], 1, F.conv1d(torch.empty(2, 6, 11), torch.empty(w_shape),
                                                             groups=groups, padding=padding).shape[-1])
        views = mcconv.conv1d_views(x, w, None, 1, padding, 1, groups)
        assert mcconv.explain(*views[:7]) == d  # the same as mcconv.explain on the 4-D view
        assert views[0].shape == (2, 6, 1, 11) and views[1].shape == (*w_shape[:2], 1, w_shape[2])
        assert views[3:6] == ((1, 1), (0, 0, padding, padding), (1, 1))


class _OpLog(TorchDispatchMode):
    """Records each op that reaches the dispatcher (ops inside mcconv's op run without the mode)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((str(func), args))
        return func(*args, **(kwargs or {}))


NO_COPY_LAYOUTS = {"contiguous": LAYOUTS["contiguous"], "nlc-transposed": LAYOUTS["nlc-transposed"],
                   "sliced-L": LAYOUTS["sliced-L"], "unbatched": lambda: torch.randn(4, 9, device=DEVICE)}


@pytest.mark.parametrize("layout", NO_COPY_LAYOUTS, ids=NO_COPY_LAYOUTS.keys())
def test_the_kernel_reads_the_input_in_place(layout, monkeypatch):
    x = NO_COPY_LAYOUTS[layout]()
    w, b = torch.randn(6, 4, 3, device=DEVICE), torch.randn(6, device=DEVICE)

    def assert_is_view_of_x(t):
        assert t.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() and t.data_ptr() == x.data_ptr()
        assert t.shape == (*x.shape[:-1], 1, x.shape[-1])
        assert (t.stride()[:-2], t.stride()[-1]) == (x.stride()[:-1], x.stride()[-1])

    # Through the custom op (what autograd and torch.compile run): no op but views before it.
    with _OpLog() as log:
        y = mcconv.conv1d(x, w, b, padding=1)
    names = [name for name, _ in log.calls]
    op = next(i for i, name in enumerate(names) if name.startswith("mcconv."))
    assert set(names[:op]) <= {"aten.unsqueeze.default", "aten.transpose.int"}, names
    assert_is_view_of_x(log.calls[op][1][0])
    assert_conv_close(y, ref64(x, w, b, padding=1), torch.float32, 12)

    # The eager inference path launches the plan directly: the launcher gets the same view.
    seen = []
    run = mcconv.ops.forward.run
    monkeypatch.setattr(mcconv.ops.forward, "run", lambda plan, input, *a, **k: seen.append(input) or run(
        plan, input, *a, **k))
    mcconv.conv1d(x, w, b, padding=1)
    assert len(seen) == 1
    assert_is_view_of_x(seen[0])


# --------------------------------------------------------------------------- errors

F32, F16, F64 = torch.float32, torch.float16, torch.float64
# Every case: torch's F.conv1d raises RuntimeError (asserted; CPU torch 2.13's message quoted);
# mcconv raises its documented class, which is also a RuntimeError, with a message that starts
# with the argument's name, shows the 1-D shapes the caller gave (``mentions``) and never the
# 4-D view's. (x_shape, w_shape, bias_shape, dtypes, options, name, documented, mentions)
ERRORS = {
    # "Expected 2D (unbatched) or 3D (batched) input to conv1d, but got input of size: [1, 2, 4, 9]"
    "input-4d": ((1, 2, 4, 9), (6, 4, 3), None, (F32, F32), {}, "input", ValueError, "(1, 2, 4, 9)"),
    "input-1d": ((9,), (6, 4, 3), None, (F32, F32), {}, "input", ValueError, "(9,)"),
    # "Expected 4-dimensional input for 4-dimensional weight [6, 4, 3, 1], but got 3-dimensional input ..."
    "weight-4d": ((2, 4, 9), (6, 4, 3, 1), None, (F32, F32), {}, "weight", ValueError,
                  "expected a 3-D (out_channels, in_channels/groups, kW) tensor, got 4-D with shape (6, 4, 3, 1)"),
    # "weight should have at least three dimensions"
    "weight-2d": ((2, 4, 9), (6, 4), None, (F32, F32), {}, "weight", ValueError, "(6, 4)"),
    # "Calculated padded input size per channel: (2). Kernel size: (3). Kernel size can't be greater ..."
    "kernel-larger-than-input": ((2, 4, 2), (6, 4, 3), None, (F32, F32), {}, "input", ValueError, "(2, 4, 2)"),
    "dilated-kernel-larger-than-input": ((2, 4, 9), (6, 4, 3), None, (F32, F32), dict(dilation=5), "input",
                                         ValueError, "spans 11"),
    "unbatched-kernel-larger": ((4, 2), (6, 4, 3), None, (F32, F32), {}, "input", ValueError, "(4, 2)"),
    # "Only zero batch or zero channel inputs are supported, but got input shape: [1, 4, 1, 0]" (torch's
    # own message shows its 4-D view; mcconv's the 1-D shape)
    "length-0-padded": ((1, 4, 0), (6, 4, 3), None, (F32, F32), dict(padding=2), "input", ValueError, "(1, 4, 0)"),
    # "Input type (torch.FloatTensor) and weight type (torch.DoubleTensor) should be the same ..."
    "float32-input-float64-weight": ((2, 4, 9), (6, 4, 3), None, (F32, F64), {}, "weight", TypeError, None),
    "float16-input-float32-weight": ((2, 4, 9), (6, 4, 3), None, (F16, F32), {}, "weight", TypeError, None),
    # "Input type (float) and bias type (c10::Half) should be the same"
    "float32-input-float16-bias": ((2, 4, 9), (6, 4, 3), (6,), (F32, F32, F16), {}, "bias", TypeError, None),
    # "Given weight of size [6, 4, 3], expected bias to be 1-dimensional with 6 elements, but got bias of size [5]"
    "bias-wrong-length": ((2, 4, 9), (6, 4, 3), (5,), (F32, F32), {}, "bias", ValueError, "(5,)"),
    "bias-2d": ((2, 4, 9), (6, 4, 3), (6, 1), (F32, F32), {}, "bias", ValueError, "(6, 1)"),
    "bias-0d": ((2, 4, 9), (6, 4, 3), (), (F32, F32), {}, "bias", ValueError, "()"),
    # "Given groups=3, weight of size [6, 2, 3], expected input[2, 4, 9] to have 6 channels, but got 4 ..."
    "groups-not-dividing-in-channels": ((2, 4, 9), (6, 2, 3), None, (F32, F32), dict(groups=3), "groups", ValueError,
                                        "in_channels=4"),
    # "Given groups=2, expected weight to be divisible by 2 at dimension 0, but got weight of size [[5, 2, 3]]"
    "groups-not-dividing-out-channels": ((2, 4, 9), (5, 2, 3), None, (F32, F32), dict(groups=2), "groups",
                                         ValueError, "out_channels=5"),
    # "non-positive groups is not supported"
    "groups-0": ((2, 4, 9), (6, 4, 3), None, (F32, F32), dict(groups=0), "groups", ValueError, None),
    "groups-negative": ((2, 4, 9), (6, 4, 3), None, (F32, F32), dict(groups=-1), "groups", ValueError, None),
    # "Given groups=1, weight of size [6, 3, 3], expected input[2, 4, 9] to have 3 channels, but got 4 channels"
    "channel-mismatch": ((2, 4, 9), (6, 3, 3), None, (F32, F32), {}, "weight", ValueError, "(6, 3, 3)"),
    # "Given groups=1, expected weight to be at least 1 at dimension 0, but got weight of size [0, 4, 3]"
    "weight-0-out-channels": ((2, 4, 9), (0, 4, 3), None, (F32, F32), {}, "weight", ValueError, "(0, 4, 3)"),
    # CPU: oneDNN's "could not create a primitive descriptor for the convolution forward propagation primitive"
    "weight-0-kernel": ((2, 4, 9), (6, 4, 0), None, (F32, F32), {}, "weight", ValueError, "(6, 4, 0)"),
    # "negative padding is not supported"
    "padding-negative": ((2, 4, 9), (6, 4, 3), None, (F32, F32), dict(padding=-1), "padding", ValueError, None),
    # torch: "expected padding to be a single integer value or a list of 1 values ..." (mcconv takes
    # (left, right) pairs, but not negative ones)
    "padding-pair-negative": ((2, 4, 9), (6, 4, 3), None, (F32, F32), dict(padding=(0, -1)), "padding", ValueError,
                              None),
    "padding-3-tuple": ((2, 4, 9), (6, 4, 3), None, (F32, F32), dict(padding=(1, 1, 1)), "padding", ValueError,
                        None),
    "padding-4-tuple": ((2, 4, 9), (6, 4, 3), None, (F32, F32), dict(padding=(1, 1, 1, 1)), "padding", ValueError,
                        None),  # conv2d's (top, bottom, left, right) is not conv1d's
    "padding-empty": ((2, 4, 9), (6, 4, 3), None, (F32, F32), dict(padding=()), "padding", ValueError, None),
    # "Invalid padding string: 'full'"
    "padding-unknown-string": ((2, 4, 9), (6, 4, 3), None, (F32, F32), dict(padding="full"), "padding", ValueError,
                               None),
    "padding-SAME": ((2, 4, 9), (6, 4, 3), None, (F32, F32), dict(padding="SAME"), "padding", ValueError, None),
    # "padding='same' is not supported for strided convolutions"
    "padding-same-with-stride-2": ((2, 4, 9), (6, 4, 3), None, (F32, F32), dict(padding="same", stride=2),
                                   "padding", ValueError, None),
    # "non-positive stride is not supported"
    "stride-0": ((2, 4, 9), (6, 4, 3), None, (F32, F32), dict(stride=0), "stride", ValueError, None),
    "stride-negative": ((2, 4, 9), (6, 4, 3), None, (F32, F32), dict(stride=(-1,)), "stride", ValueError, None),
    # "expected stride to be a single integer value or a list of 1 values to match the convolution dimensions, ..."
    "stride-pair": ((2, 4, 9), (6, 4, 3), None, (F32, F32), dict(stride=(1, 1)), "stride", ValueError, None),
    "stride-empty": ((2, 4, 9), (6, 4, 3), None, (F32, F32), dict(stride=[]), "stride", ValueError, None),
    # "non-positive dilation is not supported"
    "dilation-0": ((2, 4, 9), (6, 4, 3), None, (F32, F32), dict(dilation=0), "dilation", ValueError, None),
    "dilation-negative": ((2, 4, 9), (6, 4, 3), None, (F32, F32), dict(dilation=-1), "dilation", ValueError, None),
    # "expected dilation to be a single integer value or a list of 1 values ..."
    "dilation-pair": ((2, 4, 9), (6, 4, 3), None, (F32, F32), dict(dilation=(1, 1)), "dilation", ValueError, None),
}
ENTRIES = {
    "conv1d": lambda x, w, b=None, **o: mcconv.conv1d(x, w, b, **o),
    "conv1d-autograd": lambda x, w, b=None, **o: mcconv.conv1d(x, w.detach().requires_grad_(), b, **o),
    "explain1d": lambda x, w, b=None, **o: mcconv.explain1d(x, w, b, **o),
}


def _error_case(x_shape, w_shape, b_shape, dtypes):
    x = torch.randn(x_shape, device=DEVICE).to(dtypes[0])
    w = torch.randn(w_shape, device=DEVICE).to(dtypes[1])
    b = None if b_shape is None else torch.randn(b_shape, device=DEVICE).to(dtypes[-1])
    return x, w, b


def _view_shapes(*tensors):
    """How each tensor's 4-D view (a unit axis before the last) would print: never in a message."""
    return [str((*t.shape[:-1], 1, t.shape[-1])) for t in tensors if t is not None and t.dim() >= 1]


@pytest.mark.parametrize("entry", ENTRIES.values(), ids=ENTRIES.keys())
@pytest.mark.parametrize("x_shape, w_shape, b_shape, dtypes, options, name, documented, mentions", ERRORS.values(),
                         ids=ERRORS.keys())
def test_errors_like_torch_in_conv1d_terms(x_shape, w_shape, b_shape, dtypes, options, name, documented, mentions,
                                           entry):
    x, w, b = _error_case(x_shape, w_shape, b_shape, dtypes)
    assert isinstance(torch_error(lambda: F.conv1d(x.cpu(), w.cpu(), None if b is None else b.cpu(), **options)),
                      RuntimeError)
    with pytest.raises(RuntimeError) as info:
        entry(x, w, b, **options)
    message = str(info.value)
    assert isinstance(info.value, documented), f"{type(info.value).__mro__} lacks {documented.__name__}"
    assert message.startswith(f"{name}: "), message
    assert mentions is None or mentions in message, message
    assert not any(view in message for view in _view_shapes(x, w)), message
    assert "kH" not in message and "top, bottom" not in message, message


# torch's F.conv1d takes int / int[] only: a float, a bool or None raises TypeError ("conv1d()
# received an invalid combination of arguments"). (option, bad value, an int of equal hash or None)
NON_INTEGER = {
    "stride-1.0": ("stride", 1.0, 1),
    "stride-(2.0,)": ("stride", (2.0,), (2,)),
    "stride-True": ("stride", True, 1),
    "stride-None": ("stride", None, None),
    "stride-np.float64": ("stride", np.float64(1.0), 1),
    "padding-1.0": ("padding", 1.0, 1),
    "padding-True": ("padding", True, 1),
    "padding-(1.0,)": ("padding", (1.0,), (1,)),
    "padding-None": ("padding", None, None),
    "dilation-1.0": ("dilation", 1.0, 1),
    "groups-1.0": ("groups", 1.0, 1),
    "groups-True": ("groups", True, 1),
    "groups-None": ("groups", None, None),
}


@pytest.mark.parametrize("option, bad, good", NON_INTEGER.values(), ids=NON_INTEGER.keys())
def test_non_integer_arguments_raise_type_error_even_after_a_valid_call(option, bad, good):
    x, w = torch.randn(1, 4, 9, device=DEVICE), torch.randn(6, 4, 3, device=DEVICE)
    assert isinstance(torch_error(lambda: F.conv1d(x.cpu(), w.cpu(), **{option: bad})), TypeError)
    if good is not None:  # 1.0 == 1 and hash(1.0) == hash(1): a cache keyed on the value must not let it in
        mcconv.conv1d(x, w, **{option: good})
    for entry in (mcconv.conv1d, mcconv.explain1d):
        with pytest.raises(TypeError, match=f"^{option}: ") as info:
            entry(x, w, **{option: bad})
        assert isinstance(info.value, RuntimeError)


def test_non_tensor_arguments_raise_type_error():
    x, w = torch.randn(1, 4, 9, device=DEVICE), torch.randn(6, 4, 3, device=DEVICE)
    assert isinstance(torch_error(lambda: F.conv1d([1.0], w.cpu())), TypeError)
    assert isinstance(torch_error(lambda: F.conv1d(x.cpu(), [1.0])), TypeError)
    for args, name in (((x.tolist(), w), "input"), ((x, w.tolist()), "weight"), ((x, w, [1.0] * 6), "bias")):
        with pytest.raises(TypeError, match=f"^{name}: "):
            mcconv.conv1d(*args)


def test_residual_and_activation_errors_name_conv1d_shapes():
    x, w = torch.randn(2, 4, 9, device=DEVICE), torch.randn(6, 4, 3, device=DEVICE)
    for bad in (torch.randn(2, 6, 1, 7, device=DEVICE), torch.randn(2, 6, 9, device=DEVICE),
                torch.randn(6, 7, device=DEVICE)):
        with pytest.raises(ValueError, match=r"^residual: expected the output's shape \(2, 6, 7\)") as info:
            mcconv.conv1d(x, w, residual=bad)
        assert isinstance(info.value, RuntimeError)
    with pytest.raises(TypeError, match="^residual: "):
        mcconv.conv1d(x, w, residual=torch.randn(2, 6, 7, device=DEVICE).half())
    with pytest.raises(TypeError, match="^residual: "):
        mcconv.conv1d(x, w, residual=[0.0])
    with pytest.raises(ValueError, match=r"^residual: expected the output's shape \(6, 9\)"):
        mcconv.conv1d(x[0], w, padding=1, residual=torch.randn(6, 7, device=DEVICE))
    with pytest.raises(ValueError, match="^activation: "):
        mcconv.conv1d(x, w, activation="tanh")


# Spellings torch accepts (measured below): 1-element sequences, numpy integers, 0-dim integer
# tensors, torch.Size; "same" with a unit stride of any spelling; "valid" with any stride.
ACCEPTED = {
    "stride=(2,)": dict(stride=(2,)),
    "stride=[2]": dict(stride=[2]),
    "stride=np.int64(2)": dict(stride=np.int64(2)),
    "stride=tensor(2)": dict(stride=torch.tensor(2)),
    "stride=torch.Size([2])": dict(stride=torch.Size([2])),
    "padding=[1]": dict(padding=[1]),
    "padding=np.int32(1)": dict(padding=np.int32(1)),
    "dilation=(np.int64(2),)": dict(dilation=(np.int64(2),)),
    "groups=np.int64(2)": dict(groups=np.int64(2)),
    "groups=tensor(2)": dict(groups=torch.tensor(2)),
    "same-with-stride=(1,)": dict(padding="same", stride=(1,)),
    "same-with-stride=np.int64(1)": dict(padding="same", stride=np.int64(1)),
    "valid-with-stride=2": dict(padding="valid", stride=2),
    "huge-stride": dict(stride=2**40),
}


@pytest.mark.parametrize("options", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_argument_spellings_torch_accepts_are_accepted(options):
    x, w = torch.randn(1, 4, 10, device=DEVICE), torch.randn(6, 4 // int(options.get("groups", 1)), 3, device=DEVICE)
    expected = F.conv1d(x.cpu(), w.cpu(), **options)  # torch accepts it
    y = mcconv.conv1d(x, w, **options)
    assert y.shape == expected.shape
    assert_conv_close(y, ref64(x, w, **options), torch.float32, w[0].numel())


# --------------------------------------------------------------------------- the module

def test_module_matches_nn_conv1d_construction():
    kwargs = dict(stride=2, padding=1, dilation=2, groups=2, bias=True, padding_mode="zeros")
    torch.manual_seed(3)
    ours = mcconv.Conv1d(4, 6, 3, **kwargs, activation="silu", device=DEVICE)
    torch.manual_seed(3)
    theirs = nn.Conv1d(4, 6, 3, **kwargs, device=DEVICE)
    assert isinstance(ours, nn.Conv1d)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in theirs.named_parameters()]
    for a, b in zip(ours.parameters(), theirs.parameters()):  # same initialisation code, same draws
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert repr(ours).startswith("mcconv.Conv1d(4, 6, kernel_size=(3,)") and "activation='silu'" in repr(ours)
    assert mcconv.Conv1d(2, 2, 1, dtype=torch.float16).weight.dtype == torch.float16
    with pytest.raises(ValueError, match="^activation: "):
        mcconv.Conv1d(2, 2, 3, activation="tanh")
    with pytest.raises(ValueError):  # nn.Conv1d's own check: "padding='same' is not supported for strided ..."
        mcconv.Conv1d(2, 2, 3, stride=2, padding="same")


@pytest.mark.parametrize("activation", [None, "gelu"])
def test_state_dict_loads_both_ways(activation):
    theirs = nn.Conv1d(3, 4, 3, padding=1, device=DEVICE)
    ours = mcconv.Conv1d(3, 4, 3, padding=1, device=DEVICE, activation=activation)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 7, device=DEVICE)
    act = (lambda t: t) if activation is None else ACT[activation]
    torch.testing.assert_close(ours(x), act(theirs(x)), **FP32_TOL)
    back = nn.Conv1d(3, 4, 3, padding=1, device=DEVICE)
    back.load_state_dict(ours.state_dict())
    assert ours.state_dict().keys() == back.state_dict().keys() == theirs.state_dict().keys()
    for name, t in back.state_dict().items():
        torch.testing.assert_close(t, theirs.state_dict()[name], rtol=0, atol=0)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding, stride, dilation", [((2,), 2, 1), ("same", 1, 2)], ids=["pad2-stride2", "same-dil2"])
def test_padding_modes_forward_and_gradients(padding_mode, padding, stride, dilation):
    theirs = nn.Conv1d(3, 4, 3, stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode,
                       device=DEVICE)
    ours = mcconv.Conv1d(3, 4, 3, stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode,
                         device=DEVICE)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 8, device=DEVICE, requires_grad=True)
    y, y_ref = ours(x), theirs(x)
    torch.testing.assert_close(y, y_ref, **FP32_TOL)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, ours.weight, ours.bias), gy)
    grads_ref = torch.autograd.grad(y_ref, (x, theirs.weight, theirs.bias), gy)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, **FP32_TOL)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_module_left_right_padding_residual_and_unbatched(padding_mode):
    ours = mcconv.Conv1d(3, 4, 3, padding=(2, 0), padding_mode=padding_mode, activation="relu", device=DEVICE)
    x, r = torch.randn(2, 3, 8, device=DEVICE), torch.randn(2, 4, 8, device=DEVICE)
    mode = "constant" if padding_mode == "zeros" else padding_mode
    expected = F.relu(F.conv1d(F.pad(x, (2, 0), mode=mode), ours.weight, ours.bias) + r)  # causal conv + residual
    torch.testing.assert_close(ours(x, residual=r), expected, **FP32_TOL)
    torch.testing.assert_close(ours(x[0], residual=r[0]), expected[0], **FP32_TOL)  # unbatched (C, L)


MODULE_ERRORS = {  # nn.Conv1d raises RuntimeError for each (messages as above)
    "input-4d": ((1, 1, 4, 9), F32, ValueError, "input"),
    "input-1d": ((9,), F32, ValueError, "input"),
    "input-too-short": ((1, 4, 2), F32, ValueError, "input"),
    "input-channel-mismatch": ((1, 3, 9), F32, ValueError, "weight"),
    "input-float64": ((1, 4, 9), F64, TypeError, "input"),
    "input-float16": ((1, 4, 9), F16, TypeError, "weight"),
}


@pytest.mark.parametrize("x_shape, dtype, documented, name", MODULE_ERRORS.values(), ids=MODULE_ERRORS.keys())
def test_module_errors_like_torch(x_shape, dtype, documented, name):
    x = torch.randn(x_shape, device=DEVICE).to(dtype)
    assert isinstance(torch_error(lambda: nn.Conv1d(4, 6, 3)(x.cpu())), RuntimeError)
    with pytest.raises(RuntimeError) as info:
        mcconv.Conv1d(4, 6, 3, device=DEVICE)(x)
    assert isinstance(info.value, documented) and str(info.value).startswith(f"{name}: "), str(info.value)


# --------------------------------------------------------------------------- convert

class _ScaledConv1d(nn.Conv1d):
    """A subclass with its own forward: convert must leave it alone."""

    def forward(self, x):
        return 2 * super().forward(x)


class _Mixed(nn.Module):
    """conv1d -> depthwise conv1d (reflect) -> a Conv1d subclass -> outer product -> conv2d."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(3, 4, 3, padding=1)
        self.dw = nn.Conv1d(4, 8, 3, padding=1, groups=4, padding_mode="reflect")
        self.scaled = _ScaledConv1d(8, 2, 1)
        self.conv2 = nn.Conv2d(2, 3, 3, padding=1)
        self.spare = nn.Conv1d(2, 2, 1).double()  # not used by forward; float64: left to torch

    def forward(self, x):
        y = self.scaled(F.relu(self.dw(F.relu(self.conv1(x)))))
        return self.conv2(y.unsqueeze(-1) * y.unsqueeze(-2))


def test_convert_swaps_conv1d_and_conv2d_and_reports_both():
    model = _Mixed().to(DEVICE).eval()
    original = copy.deepcopy(model)
    params = list(model.parameters())
    report = mcconv.conversion_report(model)
    assert report.converted == [] and len(report.left_alone) == 5
    assert mcconv.convert(model) is model
    report = mcconv.conversion_report(model)
    assert report.converted == ["conv1", "dw", "conv2"]
    assert list(report.left_alone) == ["scaled", "spare"]
    assert "subclass of nn.Conv1d" in report.left_alone["scaled"] and "float64" in report.left_alone["spare"]
    assert report.kinds == {"conv1": "Conv1d", "dw": "Conv1d", "scaled": "Conv1d", "conv2": "Conv2d",
                            "spare": "Conv1d"}
    assert str(report).startswith("mcconv: 2 Conv1d and 1 Conv2d layer(s) run on mcconv, 2 left to torch")
    assert type(model.conv1) is mcconv.Conv1d and type(model.conv2) is mcconv.Conv2d
    assert type(model.scaled) is _ScaledConv1d and type(model.spare) is nn.Conv1d
    assert "mcconv.Conv1d(4, 8, kernel_size=(3,)" in repr(model)
    assert all(a is b for a, b in zip(model.parameters(), params))  # same Parameter objects
    x = torch.randn(2, 3, 6, device=DEVICE)
    torch.testing.assert_close(model(x), original(x), **FP32_TOL)
    assert mcconv.conversion_report(mcconv.convert(model)) == report  # idempotent
    single = mcconv.convert(nn.Conv1d(2, 3, 3).to(DEVICE))  # the model itself is a Conv1d
    assert type(single) is mcconv.Conv1d and mcconv.conversion_report(single).converted == [""]
