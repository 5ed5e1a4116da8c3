"""mcconv.conv3d / mcconv.Conv3d: torch.nn.functional.conv3d's semantics. These cases have fewer
than 16 channels per group, so they run as the depth im2col over the 2-D kernels;
tests/test_conv3d_depth.py runs them (and more) on the depth-axis kernel.

Values and gradients against float64 torch; output strides and every error against what CPU
torch 2.13 does (each error test first runs torch and asserts that it raises); the module, its
state dict and mcconv.convert. Shapes are tiny: the suite runs the kernels through Triton's
interpreter on the CPU.
"""
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mcconv
from reference import DEVICE, DTYPES, assert_conv_close

ACT = {name: a.reference for name, a in mcconv.ACTIVATIONS.items()}
CL3 = torch.channels_last_3d


def conv3d_reference(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, activation=None, residual=None):
    """act(F.conv3d(x, w, b) + residual) in torch, differentiable."""
    y = F.conv3d(x, w, b, stride, padding, dilation, groups)
    if residual is not None:
        y = y + residual
    return y if activation is None else ACT[activation](y)


def ref64(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, activation=None, residual=None):
    """float64 torch on the values mcconv received."""
    def f64(t):
        return None if t is None else t.detach().double().cpu()

    return conv3d_reference(f64(x), f64(w), f64(b), stride, padding, dilation, groups, activation, f64(residual))


def torch_error(call):
    """The exception torch raises for ``call``, asserting that it raises."""
    with pytest.raises(Exception) as info:
        call()
    return info.value


def _randn(*shape, **kw):
    return torch.randn(*shape, device=DEVICE, **kw)


# --------------------------------------------------------------------------- values

# (C, K, kernel (kD, kH, kW), input (D, H, W), options): odd, non-cubic sizes; every padding form;
# stride, dilation (depth too) and groups incl. depthwise (multiplier 1 and 2).
CASES = {
    "plain": (3, 5, (2, 3, 1), (5, 4, 6), {}),
    "stride-pad-int": (3, 4, (3, 3, 3), (5, 6, 5), dict(stride=2, padding=1)),
    "stride-triple-pad-triple": (2, 3, (3, 2, 3), (6, 5, 6), dict(stride=(2, 1, 3), padding=(2, 0, 1))),
    "pad-1tuple": (3, 2, (2, 2, 2), (3, 4, 3), dict(padding=(1,))),
    "dilation-depth": (3, 4, (3, 2, 2), (6, 4, 5), dict(dilation=(2, 1, 2), padding=(1, 1, 0))),
    "dilation-stride-depth": (2, 3, (2, 3, 1), (6, 5, 3), dict(dilation=3, stride=(2, 1, 1), padding=1)),
    "same-odd": (3, 4, (3, 1, 3), (4, 5, 3), dict(padding="same")),
    "same-even-dilated": (3, 4, (2, 2, 3), (5, 4, 6), dict(padding="same", dilation=(2, 1, 2))),
    "valid-stride": (3, 4, (2, 2, 2), (5, 5, 4), dict(padding="valid", stride=(1, 2, 1))),
    "groups2": (4, 6, (2, 3, 2), (4, 5, 4), dict(groups=2, padding=(1, 1, 0))),
    "depthwise": (5, 5, (3, 3, 3), (4, 4, 5), dict(groups=5, padding=1)),
    "depthwise-mult2-strided": (3, 6, (3, 2, 3), (6, 5, 6), dict(groups=3, stride=2, padding=(1, 0, 1))),
    "1x1x1": (5, 3, (1, 1, 1), (3, 4, 2), {}),
    "1x1x1-strided-depth": (4, 3, (1, 1, 1), (5, 3, 3), dict(stride=(2, 1, 1))),
    "kernel-spans-input": (2, 3, (3, 4, 2), (3, 4, 2), {}),
}


@pytest.mark.parametrize("c, k, kernel, spatial, options", CASES.values(), ids=CASES.keys())
def test_forward_matches_float64_torch(c, k, kernel, spatial, options):
    groups = options.get("groups", 1)
    x, w, b = _randn(2, c, *spatial), _randn(k, c // groups, *kernel), _randn(k)
    y = mcconv.conv3d(x, w, b, **options)
    expected = ref64(x, w, b, **options)
    torch_y = F.conv3d(x.cpu(), w.cpu(), b.cpu(), **options)
    assert y.shape == torch_y.shape and y.stride() == torch_y.stride()
    assert y.dtype == x.dtype and y.is_contiguous()
    assert_conv_close(y, expected, torch.float32, w[0].numel())


@pytest.mark.parametrize("activation", [None, "relu", "silu"])
def test_bias_residual_activation_fused(activation):
    x, w, b = _randn(2, 3, 4, 5, 4), _randn(4, 3, 2, 3, 3), _randn(4)
    for r in (_randn(2, 4, 5, 5, 4), _randn(2, 4, 5, 5, 4).to(memory_format=CL3),
              _randn(4, 5, 2, 5, 4).permute(2, 0, 1, 3, 4)):  # residuals of any strides
        y = mcconv.conv3d(x, w, b, padding=(1, 1, 1), activation=activation, residual=r)
        assert_conv_close(y, ref64(x, w, b, padding=(1, 1, 1), activation=activation, residual=r), torch.float32,
                          w[0].numel())


def test_residual_is_added_before_the_activation():
    x, w = _randn(1, 2, 3, 3, 3), _randn(3, 2, 1, 1, 1)
    r = torch.full((1, 3, 3, 3, 3), -1e3, device=DEVICE)
    y = mcconv.conv3d(x, w, residual=r, activation="relu")
    assert torch.all(y == 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes(dtype):
    x, w, b = _randn(2, 4, 3, 5, 4, dtype=dtype), _randn(6, 4, 2, 3, 2, dtype=dtype), _randn(6, dtype=dtype)
    y = mcconv.conv3d(x, w, b, padding=1, activation="relu")
    assert y.dtype == dtype
    assert_conv_close(y, ref64(x, w, b, padding=1, activation="relu"), dtype, w[0].numel())


def test_unbatched_like_torch():
    x, w, b = _randn(3, 4, 5, 3), _randn(4, 3, 2, 3, 3), _randn(4)
    r = _randn(4, 4, 5, 3)
    expected = F.conv3d(x.cpu(), w.cpu(), b.cpu(), padding="same")
    y = mcconv.conv3d(x, w, b, padding="same", residual=r, activation="silu")
    assert y.shape == expected.shape == (4, 4, 5, 3) and y.stride() == expected.stride()
    assert_conv_close(y, ref64(x, w, b, padding="same", residual=r, activation="silu"), torch.float32, w[0].numel())


# Layouts of (input, weight); the output's strides must be torch's: channels_last_3d when the input
# (unbatched: as torch's unsqueeze(0) lays it out) or the weight suggests it, measured on CPU torch
# 2.13 in float16 for batches of one and unbatched inputs (in float32 CPU torch alone returns those
# contiguous, a CPU backend's choice that cuDNN does not make), in float32 otherwise.
LAYOUTS = {
    "contiguous": lambda: (_randn(2, 4, 4, 5, 3), _randn(6, 4, 2, 3, 2)),
    "input-cl3d": lambda: (_randn(2, 4, 4, 5, 3).to(memory_format=CL3), _randn(6, 4, 2, 3, 2)),
    "weight-cl3d": lambda: (_randn(2, 4, 4, 5, 3), _randn(6, 4, 2, 3, 2).to(memory_format=CL3)),
    "both-cl3d": lambda: (_randn(2, 4, 4, 5, 3).to(memory_format=CL3), _randn(6, 4, 2, 3, 2).to(memory_format=CL3)),
    "input-cl3d-channel-sliced": lambda: (_randn(2, 8, 4, 5, 3).to(memory_format=CL3)[:, ::2], _randn(6, 4, 2, 3, 2)),
    "input-depth-sliced": lambda: (_randn(2, 4, 8, 5, 3)[:, :, ::2], _randn(6, 4, 2, 3, 2)),
    "weight-1x1x1-cl3d": lambda: (_randn(2, 4, 4, 5, 3), _randn(6, 4, 1, 1, 1).to(memory_format=CL3)),
    "batch-1-input-cl3d": lambda: (_randn(1, 4, 4, 5, 3).to(memory_format=CL3), _randn(6, 4, 2, 3, 2)),
    "batch-1-weight-cl3d": lambda: (_randn(1, 4, 4, 5, 3), _randn(6, 4, 2, 3, 2).to(memory_format=CL3)),
    "unbatched-input-cl3d": lambda: (_randn(2, 4, 4, 5, 3).to(memory_format=CL3)[0], _randn(6, 4, 2, 3, 2)),
    "unbatched-weight-cl3d": lambda: (_randn(4, 4, 5, 3), _randn(6, 4, 2, 3, 2).to(memory_format=CL3)),
}


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUTS.keys())
def test_layouts_values_and_output_strides_like_torch(layout):
    x, w = LAYOUTS[layout]()
    b = _randn(6)
    single = x.dim() == 4 or x.shape[0] == 1
    measure = (lambda t: t.cpu().half()) if single else (lambda t: t.cpu())
    expected = F.conv3d(measure(x), measure(w), measure(b), padding=(1, 0, 1))
    y = mcconv.conv3d(x, w, b, padding=(1, 0, 1))
    assert y.shape == expected.shape
    assert y.stride() == expected.stride(), f"mcconv {y.stride()}, torch {expected.stride()}"
    assert_conv_close(y, ref64(x, w, b, padding=(1, 0, 1)), torch.float32, w[0].numel())


def test_empty_batch_and_zero_channels_like_torch():
    w = _randn(6, 4, 2, 3, 3)
    for x, w_, opts in ((_randn(0, 4, 3, 4, 5), w, {}), (_randn(0, 4, 0, 4, 5), w, dict(padding=1)),
                        (_randn(1, 0, 3, 4, 5), _randn(6, 0, 2, 3, 3), {})):
        assert mcconv.conv3d(x, w_, **opts).shape == F.conv3d(x.cpu(), w_.cpu(), **opts).shape


# --------------------------------------------------------------------------- gradients

GRAD_CASES = {  # options, groups, activation, input layout
    "strided-dilated-silu-cl3d": (dict(stride=(2, 1, 2), dilation=(2, 1, 1), padding=(2, 1, 0)), 1, "silu", CL3),
    "depthwise-mult2-same-even": (dict(padding="same"), 3, "relu", torch.contiguous_format),
}


@pytest.mark.parametrize("options, groups, activation, layout", GRAD_CASES.values(), ids=GRAD_CASES.keys())
def test_gradients_match_float64_torch(options, groups, activation, layout):
    check_gradients(3, 6, options, groups, activation, layout)


def check_gradients(c, k, options, groups, activation, layout, kernel=None):
    """Values and the gradients of input, weight, bias and residual against float64 torch, for a
    (2, c, 5, 4, 4) input and (k, c / groups, 2, 3, 2) weight; ``kernel``: the forward's, checked."""
    x = _randn(2, c, 5, 4, 4).to(memory_format=layout).requires_grad_()
    w = (_randn(k, c // groups, 2, 3, 2) / math.sqrt(c)).requires_grad_()
    b = _randn(k, requires_grad=True)
    if kernel is not None:
        assert mcconv.explain3d(x, w, groups=groups, **options).kernel == kernel
    r = _randn(ref64(x, w, groups=groups, **options).shape, requires_grad=True)
    y = mcconv.conv3d(x, w, b, groups=groups, activation=activation, residual=r, **options)
    leaves64 = [t.detach().double().cpu().requires_grad_() for t in (x, w, b, r)]
    y64 = conv3d_reference(*leaves64[:3], groups=groups, activation=activation, residual=leaves64[3], **options)
    gy = _randn(y.shape)
    grads = torch.autograd.grad(y, (x, w, b, r), gy)
    grads64 = torch.autograd.grad(y64, leaves64, gy.double().cpu())
    assert_conv_close(y, y64, torch.float32, w[0].numel())
    for got, want, t in zip(grads, grads64, (x, w, b, r)):
        assert got.shape == t.shape
        assert_conv_close(got, want, torch.float32, y[:, 0].numel() * k)


def _chain(x, w1, b1, w2, r):
    """a 'same' silu conv3d with a residual, then a strided depthwise one."""
    y = mcconv.conv3d(x, w1, b1, padding="same", activation="silu", residual=r)
    return mcconv.conv3d(y, w2, None, stride=(2, 1, 1), padding=1, groups=y.shape[1])


def test_compile_fullgraph_forward_and_backward():
    check_compiled_matches_eager(_chain, [_randn(1, 3, 4, 3, 3), _randn(4, 3, 2, 3, 1) / 3, _randn(4),
                                          _randn(4, 1, 3, 3, 3) / 2, _randn(1, 4, 4, 3, 3)])


def check_compiled_matches_eager(fn, leaves):
    """``fn`` under torch.compile(fullgraph=True): outputs and gradients of every leaf as eager's."""
    leaves = [t.requires_grad_() for t in leaves]
    # aot_eager: traces forward and backward through the custom ops' fakes, without a C++ build
    compiled = torch.compile(fn, fullgraph=True, dynamic=False, backend="aot_eager")
    out, out_eager = compiled(*leaves), fn(*leaves)
    torch.testing.assert_close(out, out_eager, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), leaves)
    grads_eager = torch.autograd.grad(out_eager.square().sum(), leaves)
    for got, want in zip(grads, grads_eager):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_autocast_casts_like_aten_conv3d():
    x, w, b = _randn(1, 3, 3, 4, 4), _randn(4, 3, 2, 2, 2, requires_grad=True), _randn(4)
    with torch.autocast(DEVICE, dtype=torch.float16):
        y = mcconv.conv3d(x, w, b, padding=1)
        y_ref = F.conv3d(x, w, b, padding=1)
    assert y.dtype == y_ref.dtype == torch.float16
    (gw,) = torch.autograd.grad(y.float().sum(), w)
    assert gw.dtype == torch.float32
    assert_conv_close(y, ref64(x.half(), w.half(), b.half(), padding=1), torch.float16, 24)


# --------------------------------------------------------------------------- the 2-D call

def test_explain3d_and_the_im2col_views():
    x = torch.randn(2, 6, 5, 7, 7, device="meta")
    cases = {  # weight, groups, padding, the 2-D call's kernel
        # depthwise with kD > 1: kD channels per group in the 2-D call, a grouped direct convolution
        "depthwise-kd3": ((6, 1, 3, 3, 3), 6, 1, "conv_direct"),
        "depthwise-kd1": ((12, 1, 1, 3, 3), 6, 1, "depthwise"),
        "1x1x1": ((4, 6, 1, 1, 1), 1, 0, "gemm_1x1"),
        "kd2-1x1": ((4, 6, 2, 1, 1), 1, 0, "gemm_1x1"),  # C * kD channels of a 1x1: a GEMM
        "direct": ((4, 6, 3, 3, 3), 1, 1, "conv_direct"),
    }
    for name, (w_shape, groups, padding, kernel) in cases.items():
        w = torch.randn(w_shape, device="meta")
        d = mcconv.explain3d(x, w, groups=groups, padding=padding)
        assert d.kernel == kernel, name
        out = F.conv3d(torch.empty(2, 6, 5, 7, 7), torch.empty(w_shape), groups=groups, padding=padding).shape
        assert d.output_shape == (2 * out[2], out[1], *out[3:]), name
        views = mcconv.conv3d_views(x, w, None, 1, padding, 1, groups)
        assert mcconv.explain(*views[:7]) == d
        # one group's 18 fp32 channels (72 bytes a pixel) are padded to 20 (80 bytes): 16-byte loads
        channels = 20 if name == "direct" else 6 * w_shape[2]
        assert views[0].shape == (2 * out[2], channels, 7, 7)
        assert views[1].shape == (w_shape[0], channels // groups, *w_shape[3:])
        assert views[3:7] == ((1, 1), (padding,) * 4, (1, 1), groups)


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL3], ids=["contiguous", "cl3d"])
def test_im2col_channel_padding_rule_and_values(layout):
    """One group of more channels than the 2-D fold takes, in rows that are not whole 16 bytes
    (9 fp16 channels: an RGB clip at kD = 3), gets zero channels and zero weights up to whole
    16 bytes, so that the 2-D kernel's rows load with 16-byte cp.async; the result is unchanged."""
    im2col_channels = sys.modules["mcconv.conv3d"].im2col_channels
    assert [im2col_channels(c, 1, 2) for c in (8, 9, 15, 16, 24, 27)] == [8, 16, 16, 16, 24, 32]
    assert [im2col_channels(c, 1, 4) for c in (9, 12, 18)] == [12, 12, 20]
    assert im2col_channels(9, 3, 2) == 9  # groups: never padded
    x = _randn(2, 3, 5, 6, 5, dtype=torch.float16).to(memory_format=layout)
    w, b = _randn(8, 3, 3, 3, 3, dtype=torch.float16), _randn(8, dtype=torch.float16)
    x2, w2 = mcconv.conv3d_views(x, w, b, padding=1)[:2]
    assert x2.shape[1] == w2.shape[1] == 16 and not x2[:, 9:].any() and not w2[:, 9:].any()
    assert mcconv.explain3d(x, w, b, padding=1).kernel == "conv_direct"
    y = mcconv.conv3d(x, w, b, padding=1, activation="relu")
    assert_conv_close(y, ref64(x, w, b, padding=1, activation="relu"), torch.float16, 81)
    xg, wg = x.float().requires_grad_(), w.float().requires_grad_()
    gy = _randn(y.shape)
    grads = torch.autograd.grad(mcconv.conv3d(xg, wg, padding=1), (xg, wg), gy)
    x64, w64 = (t.detach().double().cpu().requires_grad_() for t in (xg, wg))
    want = torch.autograd.grad(F.conv3d(x64, w64, padding=1), (x64, w64), gy.double().cpu())
    for got, expected in zip(grads, want):
        assert_conv_close(got, expected, torch.float32, 81 * 8)


def test_im2col_channel_order_is_c_times_kd_plus_kd():
    x = torch.arange(2 * 3 * 5 * 2 * 2, dtype=torch.float32).reshape(2, 3, 5, 2, 2)
    w = torch.randn(4, 3, 2, 1, 1)
    x2, w2 = mcconv.conv3d_views(x, w, stride=(2, 1, 1), padding=(1, 0, 0), dilation=(2, 1, 1))[:2]
    xp = F.pad(x, (0, 0, 0, 0, 1, 1))  # depth 7; windows start at 0, 2, 4; taps at +0, +2
    assert x2.shape == (2 * 3, 3 * 2, 2, 2)
    for n in range(2):
        for do in range(3):
            for c in range(3):
                for kd in range(2):
                    torch.testing.assert_close(x2[n * 3 + do, c * 2 + kd], xp[n, c, 2 * do + 2 * kd])
    torch.testing.assert_close(w2[:, 1 * 2 + 1], w[:, 1, 1])


# --------------------------------------------------------------------------- errors

F32, F16, F64 = torch.float32, torch.float16, torch.float64
X, W = (2, 4, 5, 5, 5), (6, 4, 3, 3, 3)
# Every case: torch's F.conv3d raises (asserted); mcconv raises its documented class, which is also
# a RuntimeError, with a message that starts with the argument's name and shows the 3-D shapes the
# caller gave (``mentions``). (x_shape, w_shape, bias_shape, dtypes, options, name, documented, mentions)
ERRORS = {
    "input-3d": ((4, 5, 5), W, None, (F32, F32), {}, "input", ValueError, "(4, 5, 5)"),
    "input-6d": ((1, 2, 4, 5, 5, 5), W, None, (F32, F32), {}, "input", ValueError, "(1, 2, 4, 5, 5, 5)"),
    "weight-4d": (X, (6, 4, 3, 3), None, (F32, F32), {}, "weight", ValueError, "(6, 4, 3, 3)"),
    "weight-6d": (X, (6, 4, 3, 3, 3, 1), None, (F32, F32), {}, "weight", ValueError, "(6, 4, 3, 3, 3, 1)"),
    "kernel-larger-than-input-depth": ((2, 4, 2, 5, 5), W, None, (F32, F32), {}, "input", ValueError,
                                       "(2, 4, 2, 5, 5)"),
    "kernel-larger-than-input-width": ((2, 4, 5, 5, 2), W, None, (F32, F32), {}, "input", ValueError, "5x5x2"),
    "dilated-kernel-larger": (X, W, None, (F32, F32), dict(dilation=(3, 1, 1)), "input", ValueError, "spans 7x3x3"),
    "unbatched-kernel-larger": ((4, 5, 2, 5), W, None, (F32, F32), {}, "input", ValueError, "(4, 5, 2, 5)"),
    "depth-0": ((1, 4, 0, 5, 5), W, None, (F32, F32), dict(padding=2), "input", ValueError, "(1, 4, 0, 5, 5)"),
    "float32-input-float64-weight": (X, W, None, (F32, F64), {}, "weight", TypeError, None),
    "float16-input-float32-weight": (X, W, None, (F16, F32), {}, "weight", TypeError, None),
    "float32-input-float16-bias": (X, W, (6,), (F32, F32, F16), {}, "bias", TypeError, None),
    "bias-wrong-length": (X, W, (5,), (F32, F32), {}, "bias", ValueError, "(5,)"),
    "bias-2d": (X, W, (6, 1), (F32, F32), {}, "bias", ValueError, "(6, 1)"),
    "groups-not-dividing-in-channels": (X, (6, 2, 3, 3, 3), None, (F32, F32), dict(groups=3), "groups", ValueError,
                                        "in_channels=4"),
    "groups-not-dividing-out-channels": (X, (5, 2, 3, 3, 3), None, (F32, F32), dict(groups=2), "groups", ValueError,
                                         "out_channels=5"),
    "groups-0": (X, W, None, (F32, F32), dict(groups=0), "groups", ValueError, None),
    "channel-mismatch": (X, (6, 3, 3, 3, 3), None, (F32, F32), {}, "weight", ValueError, "(6, 3, 3, 3, 3)"),
    "weight-0-out-channels": (X, (0, 4, 3, 3, 3), None, (F32, F32), {}, "weight", ValueError, "(0, 4, 3, 3, 3)"),
    "padding-negative": (X, W, None, (F32, F32), dict(padding=-1), "padding", ValueError, None),
    "padding-triple-negative": (X, W, None, (F32, F32), dict(padding=(0, 1, -1)), "padding", ValueError, None),
    "padding-pair": (X, W, None, (F32, F32), dict(padding=(1, 1)), "padding", ValueError, None),
    "padding-6-tuple": (X, W, None, (F32, F32), dict(padding=(1,) * 6), "padding", ValueError, None),
    "padding-unknown-string": (X, W, None, (F32, F32), dict(padding="full"), "padding", ValueError, None),
    "padding-same-with-stride-2": (X, W, None, (F32, F32), dict(padding="same", stride=(1, 2, 1)), "padding",
                                   ValueError, None),
    "stride-0": (X, W, None, (F32, F32), dict(stride=0), "stride", ValueError, None),
    "stride-negative-depth": (X, W, None, (F32, F32), dict(stride=(-1, 1, 1)), "stride", ValueError, None),
    "stride-pair": (X, W, None, (F32, F32), dict(stride=(1, 1)), "stride", ValueError, None),
    "dilation-0": (X, W, None, (F32, F32), dict(dilation=(1, 0, 1)), "dilation", ValueError, None),
    "dilation-4-tuple": (X, W, None, (F32, F32), dict(dilation=(1, 1, 1, 1)), "dilation", ValueError, None),
}
ENTRIES = {
    "conv3d": lambda x, w, b=None, **o: mcconv.conv3d(x, w, b, **o),
    "conv3d-autograd": lambda x, w, b=None, **o: mcconv.conv3d(x, w.detach().requires_grad_(), b, **o),
    "explain3d": lambda x, w, b=None, **o: mcconv.explain3d(x, w, b, **o),
}


@pytest.mark.parametrize("entry", ENTRIES.values(), ids=ENTRIES.keys())
@pytest.mark.parametrize("x_shape, w_shape, b_shape, dtypes, options, name, documented, mentions", ERRORS.values(),
                         ids=ERRORS.keys())
def test_errors_like_torch_in_conv3d_terms(x_shape, w_shape, b_shape, dtypes, options, name, documented, mentions,
                                           entry):
    x = _randn(x_shape).to(dtypes[0])
    w = _randn(w_shape).to(dtypes[1])
    b = None if b_shape is None else _randn(b_shape).to(dtypes[-1])
    assert isinstance(torch_error(lambda: F.conv3d(x.cpu(), w.cpu(), None if b is None else b.cpu(), **options)),
                      RuntimeError)
    with pytest.raises(RuntimeError) as info:
        entry(x, w, b, **options)
    message = str(info.value)
    assert isinstance(info.value, documented), f"{type(info.value).__mro__} lacks {documented.__name__}"
    assert message.startswith(f"{name}: "), message
    assert mentions is None or mentions in message, message
    assert "(top, bottom, left, right)" not in message and "groups, kH, kW)" not in message, message  # no 2-D terms


# torch's F.conv3d takes int / int[] only: a float, a bool or None raises TypeError.
NON_INTEGER = {
    "stride-1.0": ("stride", 1.0, 1),
    "stride-(1, 2.0, 1)": ("stride", (1, 2.0, 1), (1, 2, 1)),
    "stride-True": ("stride", True, 1),
    "padding-1.0": ("padding", 1.0, 1),
    "padding-None": ("padding", None, None),
    "dilation-(1.0,)": ("dilation", (1.0,), (1,)),
    "groups-1.0": ("groups", 1.0, 1),
    "groups-True": ("groups", True, 1),
}


@pytest.mark.parametrize("option, bad, good", NON_INTEGER.values(), ids=NON_INTEGER.keys())
def test_non_integer_arguments_raise_type_error_even_after_a_valid_call(option, bad, good):
    x, w = _randn(1, 4, 4, 4, 4), _randn(2, 4, 3, 3, 3)
    assert isinstance(torch_error(lambda: F.conv3d(x.cpu(), w.cpu(), **{option: bad})), TypeError)
    if good is not None:  # 1.0 == 1 and hash(1.0) == hash(1): the validation cache must not let it in
        mcconv.conv3d(x, w, **{option: good})
    for entry in (mcconv.conv3d, mcconv.explain3d):
        with pytest.raises(TypeError, match=f"^{option}: ") as info:
            entry(x, w, **{option: bad})
        assert isinstance(info.value, RuntimeError)


def test_float64_is_refused_naming_the_input():  # torch runs it; mcconv's kernels do not (as conv2d)
    with pytest.raises(TypeError, match="^input: expected dtype float16, bfloat16 or float32"):
        mcconv.conv3d(_randn(1, 2, 3, 3, 3, dtype=F64), _randn(2, 2, 1, 1, 1, dtype=F64))


def test_non_tensor_arguments_raise_type_error():
    x, w = _randn(1, 4, 3, 3, 3), _randn(6, 4, 1, 1, 1)
    for args, name in (((x.tolist(), w), "input"), ((x, w.tolist()), "weight"), ((x, w, [1.0] * 6), "bias")):
        with pytest.raises(TypeError, match=f"^{name}: "):
            mcconv.conv3d(*args)


def test_residual_and_activation_errors_name_conv3d_shapes():
    x, w = _randn(2, 4, 4, 5, 3), _randn(6, 4, 2, 3, 1)
    for bad in (_randn(2 * 3, 6, 3, 3), _randn(2, 6, 4, 5, 3), _randn(6, 3, 3, 3)):
        with pytest.raises(ValueError, match=r"^residual: expected the output's shape \(2, 6, 3, 3, 3\)") as info:
            mcconv.conv3d(x, w, residual=bad)
        assert isinstance(info.value, RuntimeError)
    with pytest.raises(TypeError, match="^residual: "):
        mcconv.conv3d(x, w, residual=_randn(2, 6, 3, 3, 3).half())
    with pytest.raises(TypeError, match="^residual: "):
        mcconv.conv3d(x, w, residual=[0.0])
    with pytest.raises(ValueError, match=r"^residual: expected the output's shape \(6, 3, 3, 3\)"):
        mcconv.conv3d(x[0], w, residual=_randn(6, 4, 3, 3))
    with pytest.raises(ValueError, match="^activation: "):
        mcconv.conv3d(x, w, activation="tanh")


ACCEPTED = {  # spellings torch accepts (measured below)
    "stride=(2,)": dict(stride=(2,)),
    "stride=[1, 2, 1]": dict(stride=[1, 2, 1]),
    "stride=np.int64(2)": dict(stride=np.int64(2)),
    "padding=tensor(1)": dict(padding=torch.tensor(1)),
    "padding=torch.Size([1, 0, 1])": dict(padding=torch.Size([1, 0, 1])),
    "dilation=(np.int64(2), 1, 1)": dict(dilation=(np.int64(2), 1, 1)),
    "groups=np.int64(2)": dict(groups=np.int64(2)),
    "same-with-stride=(1, 1, 1)": dict(padding="same", stride=(1, 1, 1)),
    "valid-with-stride=2": dict(padding="valid", stride=2),
    "huge-stride": dict(stride=2**40),
}


@pytest.mark.parametrize("options", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_argument_spellings_torch_accepts_are_accepted(options):
    x = _randn(1, 4, 5, 4, 4)
    w = _randn(4, 4 // int(options.get("groups", 1)), 2, 3, 2)
    expected = F.conv3d(x.cpu(), w.cpu(), **options)  # torch accepts it
    y = mcconv.conv3d(x, w, **options)
    assert y.shape == expected.shape
    assert_conv_close(y, ref64(x, w, **options), torch.float32, w[0].numel())


# --------------------------------------------------------------------------- the module

def test_module_matches_nn_conv3d_construction_and_forward():
    kwargs = dict(stride=(2, 1, 1), padding=(1, 0, 1), dilation=(1, 1, 2), groups=2, bias=True)
    torch.manual_seed(3)
    ours = mcconv.Conv3d(4, 6, (2, 3, 2), **kwargs, activation="silu", device=DEVICE)
    torch.manual_seed(3)
    theirs = nn.Conv3d(4, 6, (2, 3, 2), **kwargs, device=DEVICE)
    assert isinstance(ours, nn.Conv3d)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in theirs.named_parameters()]
    for a, b in zip(ours.parameters(), theirs.parameters()):  # same initialisation code, same draws
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert repr(ours).startswith("mcconv.Conv3d(4, 6") and "activation='silu'" in repr(ours)
    x = _randn(2, 4, 5, 5, 6)
    r = _randn(theirs(x).shape)
    assert_conv_close(ours(x, residual=r), F.silu(theirs(x).double() + r.double()), torch.float32, 24)
    with pytest.raises(ValueError, match="^activation: "):
        mcconv.Conv3d(4, 6, 3, activation="tanh")


def test_state_dict_loads_both_ways():
    theirs = nn.Conv3d(3, 5, (1, 3, 2), padding=1, device=DEVICE)
    ours = mcconv.Conv3d(3, 5, (1, 3, 2), padding=1, activation="relu", device=DEVICE)
    ours.load_state_dict(theirs.state_dict())
    x = _randn(2, 3, 3, 4, 4)
    assert_conv_close(ours(x), F.relu(theirs(x).double()), torch.float32, 18)
    back = nn.Conv3d(3, 5, (1, 3, 2), padding=1, device=DEVICE)
    back.load_state_dict(ours.state_dict())
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    torch.testing.assert_close(back(x), theirs(x), rtol=0, atol=0)


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_padding_modes_like_torch(padding_mode):
    theirs = nn.Conv3d(2, 3, (3, 2, 3), padding=(1, 1, 2), padding_mode=padding_mode, device=DEVICE)
    ours = mcconv.Conv3d(2, 3, (3, 2, 3), padding=(1, 1, 2), padding_mode=padding_mode, device=DEVICE)
    ours.load_state_dict(theirs.state_dict())
    for x in (_randn(2, 2, 3, 4, 4), _randn(2, 3, 4, 4)):  # batched and unbatched
        assert_conv_close(ours(x), theirs(x), torch.float32, 18)


class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv3d(2, 4, 3, padding=1)
        self.body = nn.Sequential(nn.Conv3d(4, 4, (1, 3, 3), padding=(0, 1, 1), groups=4), nn.ReLU())
        self.head = nn.Conv2d(4 * 3, 3, 1)

    def forward(self, x):
        y = self.body(self.stem(x))  # (N, 4, 3, H, W)
        return self.head(y.flatten(1, 2))


def test_convert_a_model_mixing_conv2d_and_conv3d():
    model = _Mixed().to(DEVICE)
    x = _randn(2, 2, 3, 4, 5)
    expected = model(x).detach()
    assert mcconv.conversion_report(model).swapped == 0
    assert mcconv.convert(model) is model
    assert type(model.stem) is mcconv.Conv3d and type(model.body[0]) is mcconv.Conv3d
    assert type(model.head) is mcconv.Conv2d
    report = mcconv.conversion_report(model)
    assert report.converted == ["stem", "body.0", "head"] and not report.left_alone
    assert report.kinds == {"stem": "Conv3d", "body.0": "Conv3d", "head": "Conv2d"}
    assert "2 Conv3d" in str(report) and "1 Conv2d" in str(report)
    assert "mcconv.Conv3d" in repr(model)
    assert_conv_close(model(x), expected, torch.float32, 4 * 27)


def test_convert_leaves_conv3d_subclasses_and_float64_alone():
    class Custom(nn.Conv3d):
        pass

    model = nn.Sequential(Custom(2, 2, 1), nn.Conv3d(2, 2, 1).double())
    mcconv.convert(model)
    assert type(model[0]) is Custom and type(model[1]) is nn.Conv3d
    report = mcconv.conversion_report(model)
    assert set(report.left_alone) == {"0", "1"} and report.kinds == {"0": "Conv3d", "1": "Conv3d"}
