"""conv3d's depth-axis kernel (kernels/conv3d_fwd.py, mcconv/ops/forward3d.py) against float64 torch.

Calls of 16 or more input channels per group take it; the `depth_everywhere` fixture lowers that
threshold to 1 so that test_conv3d.py's odd cases (every padding form, strides and dilations
along depth, groups, depthwise, kernels as large as the input) run on it too. Its gradients are
the depth im2col's (the gather recomputed in the backward); they are checked here through the
custom op ``mcconv::conv3d`` (opcheck, torch.compile). Shapes are tiny: Triton's interpreter.
"""
import sys

import pytest
import torch
import torch.nn.functional as F

import mcconv
from mcconv.ops import forward3d
from reference import DEVICE, DTYPES, assert_conv_close
from test_conv3d import (CASES, CL3, GRAD_CASES, LAYOUTS, _randn, check_compiled_matches_eager, check_gradients,
                         ref64)

DEPTH = "conv3d_direct"


@pytest.fixture
def depth_everywhere(monkeypatch):
    """Every conv3d call with at least one input channel per group on the depth kernel."""
    monkeypatch.setattr(forward3d, "DEPTH_MIN_CHANNELS", 1)


def _kernel(x, w, **options):
    return mcconv.explain3d(x, w, **options).kernel


def _plan(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """The depth kernel's plan of a call (mcconv.conv3d the function hides its module's name)."""
    module = sys.modules["mcconv.conv3d"]
    options = module._validated(x, w, b, stride, padding, dilation, groups, None)[4]
    return forward3d.plan(module._describe(x, w, b, None, None, options), x, w)


# --------------------------------------------------------------------------- dispatch

def test_dispatch_rule_by_channels_per_group():
    x = torch.empty(2, 32, 4, 6, 6, device="meta")
    assert _kernel(x, torch.empty(8, 32, 3, 3, 3, device="meta"), padding=1) == DEPTH
    assert _kernel(x, torch.empty(8, 16, 3, 3, 3, device="meta"), groups=2) == DEPTH  # 16 per group
    assert _kernel(x, torch.empty(8, 8, 3, 3, 3, device="meta"), groups=4) == "conv_direct"  # im2col: 24 channels
    assert _kernel(x, torch.empty(32, 1, 3, 3, 3, device="meta"), groups=32) == "conv_direct"  # depthwise: im2col
    small = torch.empty(2, 3, 4, 6, 6, device="meta")
    assert _kernel(small, torch.empty(8, 3, 3, 3, 3, device="meta")) == "conv_direct"  # RGB clip: im2col
    # explain3d's forward record of the depth kernel is 3-D; its backward records are the im2col's
    records = mcconv.explain3d(x, torch.empty(8, 32, 3, 3, 3, device="meta"), torch.empty(8, device="meta"),
                               padding=1, direction="all")
    assert records[0].kernel == DEPTH and records[0].output_shape == (2, 8, 4, 6, 6)
    assert records[0].memory_format == "contiguous"
    assert _kernel(x.to(memory_format=torch.channels_last_3d), torch.empty(8, 32, 3, 3, 3, device="meta")) == DEPTH
    assert mcconv.explain3d(x.to(memory_format=torch.channels_last_3d), torch.empty(8, 32, 1, 1, 1, device="meta")
                            ).memory_format == "channels_last_3d"
    assert [r.kernel for r in records[1:]] == ["bias_act_grad", "conv_dgrad", "conv_wgrad"]


# --------------------------------------------------------------------------- values

@pytest.mark.parametrize("c, k, kernel, spatial, options", CASES.values(), ids=CASES.keys())
def test_forward_cases_match_float64_torch(depth_everywhere, c, k, kernel, spatial, options):
    groups = options.get("groups", 1)
    x, w, b = _randn(2, c, *spatial), _randn(k, c // groups, *kernel), _randn(k)
    assert _kernel(x, w, **options) == DEPTH
    y = mcconv.conv3d(x, w, b, **options)
    torch_y = F.conv3d(x.cpu(), w.cpu(), b.cpu(), **options)
    assert y.shape == torch_y.shape and y.stride() == torch_y.stride()
    assert_conv_close(y, ref64(x, w, b, **options), torch.float32, w[0].numel())


# Tap counts around the kernel's per-row tap bit sets: 32-bit, 64-bit, and coordinate compares
# past 64 taps; padding on every axis so that every kind of tap test matters.
TAPS = {"27-taps": ((3, 3, 3), 32), "64-taps": ((4, 4, 4), 64), "75-taps": ((3, 5, 5), 0)}


@pytest.mark.parametrize("kernel, bits", TAPS.values(), ids=TAPS.keys())
def test_tap_bit_modes(kernel, bits):
    x = _randn(1, 16, 4, 7, 6).to(memory_format=CL3)
    w, b = _randn(16, 16, *kernel) / 8, _randn(16)
    options = dict(padding=(2, 1, 2), dilation=(1, 2, 1))
    plan = _plan(x, w, b, **options)
    assert plan.meta["TAP_BITS"] == bits
    y = mcconv.conv3d(x, w, b, **options)
    assert_conv_close(y, ref64(x, w, b, **options), torch.float32, w[0].numel())


@pytest.mark.parametrize("activation", [None, *mcconv.ACTIVATIONS])
def test_epilogue_bias_residual_activation(activation):
    # 24 output channels: the last column tile is cut; the residual in three layouts
    x, w, b = _randn(2, 16, 3, 4, 5).to(memory_format=CL3), _randn(24, 16, 2, 3, 3) / 4, _randn(24)
    shape = ref64(x, w, padding=(1, 1, 0)).shape
    for r in (_randn(shape), _randn(shape).to(memory_format=CL3), _randn(shape).transpose(0, 2).contiguous()
              .transpose(0, 2)):
        y = mcconv.conv3d(x, w, b, padding=(1, 1, 0), activation=activation, residual=r)
        assert_conv_close(y, ref64(x, w, b, padding=(1, 1, 0), activation=activation, residual=r), torch.float32,
                          w[0].numel())


@pytest.mark.parametrize("k, groups, y_align", [(20, 1, 4), (20, 2, 2), (19, 1, 1)])
def test_output_row_alignment_from_the_host(depth_everywhere, k, groups, y_align):
    """Y_ALIGN (R_ALIGN alike; conv2d's rule): channels_last_3d rows and the channels of a group in
    multiples of that many elements (fp32: at most 4), so the epilogue stores whole vectors."""
    x, w, b = _randn(2, 16, 3, 4, 5).to(memory_format=CL3), _randn(k, 16 // groups, 2, 3, 3) / 4, _randn(k)
    r = _randn(ref64(x, w, padding=1, groups=groups).shape).to(memory_format=CL3)
    assert _plan(x, w, b, padding=1, groups=groups).meta["Y_ALIGN"] == y_align
    y = mcconv.conv3d(x, w, b, padding=1, groups=groups, activation="relu", residual=r)
    assert_conv_close(y, ref64(x, w, b, padding=1, groups=groups, activation="relu", residual=r), torch.float32,
                      w[0].numel())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes(dtype):
    x = _randn(2, 32, 3, 5, 4, dtype=dtype).to(memory_format=CL3)
    w, b = (_randn(16, 32, 3, 3, 2) / 8).to(dtype), _randn(16, dtype=dtype)
    y = mcconv.conv3d(x, w, b, padding=1, stride=(1, 2, 1), activation="relu")
    assert y.dtype == dtype and _kernel(x, w, padding=1) == DEPTH
    assert_conv_close(y, ref64(x, w, b, padding=1, stride=(1, 2, 1), activation="relu"), dtype, w[0].numel())


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUTS.keys())
def test_layouts_values_and_output_strides_like_torch(depth_everywhere, layout):
    x, w = LAYOUTS[layout]()
    b = _randn(6)
    single = x.dim() == 4 or x.shape[0] == 1
    measure = (lambda t: t.cpu().half()) if single else (lambda t: t.cpu())
    expected = F.conv3d(measure(x), measure(w), measure(b), padding=(1, 0, 1))
    y = mcconv.conv3d(x, w, b, padding=(1, 0, 1))
    assert y.shape == expected.shape
    assert y.stride() == expected.stride(), f"mcconv {y.stride()}, torch {expected.stride()}"
    assert_conv_close(y, ref64(x, w, b, padding=(1, 0, 1)), torch.float32, w[0].numel())


def test_weight_read_through_its_strides_without_the_copy(monkeypatch):
    monkeypatch.setenv("MCCONV_PACK_WEIGHTS", "0")
    x, w = _randn(1, 16, 3, 4, 3), _randn(17, 16, 3, 1, 2)  # a shape no other test plans
    plan = _plan(x, w, padding=1)
    assert not plan.pack_weight and plan.meta["W_ALIGN"] == 1
    assert_conv_close(mcconv.conv3d(x, w, padding=1), ref64(x, w, padding=1), torch.float32, w[0].numel())


def test_unbatched_and_empty_batch_like_torch():
    x, w, b = _randn(16, 3, 4, 5), _randn(8, 16, 3, 2, 3), _randn(8)
    r = _randn(8, 3, 4, 5)
    expected = F.conv3d(x.cpu(), w.cpu(), b.cpu(), padding="same")
    y = mcconv.conv3d(x, w, b, padding="same", residual=r, activation="gelu")
    assert y.shape == expected.shape and y.stride() == expected.stride()
    assert_conv_close(y, ref64(x, w, b, padding="same", residual=r, activation="gelu"), torch.float32, w[0].numel())
    empty = _randn(0, 16, 3, 4, 5)
    assert mcconv.conv3d(empty, w, b).shape == F.conv3d(empty.cpu(), w.cpu(), b.cpu()).shape


def test_changed_weights_and_inputs_are_seen():
    """No result derived from a tensor's values is kept between calls (the per-call weight copy
    included): every way of changing the weight or the input changes the output."""
    x, w = _randn(1, 16, 3, 3, 3), _randn(8, 16, 2, 2, 2)
    m = mcconv.Conv3d(16, 8, 2, bias=False).to(DEVICE)
    with torch.no_grad():
        m.weight.copy_(w)
    for change in (lambda: m.weight.data.copy_(torch.randn_like(w)), lambda: m.weight.data.mul_(-2),
                   lambda: x.add_(1.0)):
        with torch.no_grad():
            change()
            y = m(x)
        assert_conv_close(y, ref64(x, m.weight), torch.float32, w[0].numel())


# --------------------------------------------------------------------------- gradients and the op

@pytest.mark.parametrize("options, groups, activation, layout", GRAD_CASES.values(), ids=GRAD_CASES.keys())
def test_gradients_match_float64_torch(depth_everywhere, options, groups, activation, layout):
    check_gradients(3, 6, options, groups, activation, layout, kernel=DEPTH)


def test_gradients_at_sixteen_channels_gelu_groups():
    check_gradients(32, 16, dict(stride=(1, 2, 1), padding=1), 2, "gelu", CL3, kernel=DEPTH)


@pytest.mark.parametrize("layout", ["contiguous", "cl3d"])
def test_opcheck(layout):
    x = _randn(2, 16, 3, 4, 3)
    if layout == "cl3d":
        x = x.to(memory_format=CL3)
    w, b, r = _randn(8, 8, 2, 3, 1) / 4, _randn(8), _randn(2, 8, 2, 2, 3)
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), [1, 2, 1], [0, 0, 1, 0, 0, 0], [1, 1, 1], 2,
            "relu", r.requires_grad_())
    torch.library.opcheck(torch.ops.mcconv.conv3d.default, args)


def _block(x, w1, b1, w2, r):
    y = mcconv.conv3d(x, w1, b1, padding="same", activation="silu", residual=r)
    return mcconv.conv3d(y, w2, None, stride=(2, 1, 1), padding=1, groups=2)


def test_compile_fullgraph_forward_and_backward():
    check_compiled_matches_eager(_block, [_randn(1, 16, 4, 3, 3), _randn(32, 16, 2, 3, 1) / 8, _randn(32),
                                          _randn(16, 16, 3, 3, 3) / 8, _randn(1, 32, 4, 3, 3)])


class _Mixed(torch.nn.Module):
    """1-D, 2-D, 3-D (depth kernel: 16 channels) and transposed layers in one model."""

    def __init__(self):
        super().__init__()
        self.clip = torch.nn.Conv3d(16, 16, 3, padding=1)
        self.frame = torch.nn.Conv2d(16, 8, 3, padding=1)
        self.up = torch.nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.line = torch.nn.Conv1d(4, 4, 3, padding=1)
        self.line_up = torch.nn.ConvTranspose1d(4, 2, 2, stride=2)

    def forward(self, x):  # (N, 16, D, H, W)
        y = self.clip(x).mean(2)  # (N, 16, H, W)
        y = self.up(self.frame(y))  # (N, 4, 2H, 2W)
        return self.line_up(self.line(y.flatten(2)))


def test_convert_a_model_mixing_1d_2d_3d_and_transposed_layers():
    model = _Mixed().to(DEVICE)
    x = _randn(2, 16, 3, 4, 4)
    expected = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    mcconv.convert(model)
    report = mcconv.conversion_report(model)
    assert report.converted == ["clip", "frame", "up", "line", "line_up"] and not report.left_alone
    assert type(model.clip) is mcconv.Conv3d and type(model.line_up) is mcconv.ConvTranspose1d
    assert model.state_dict().keys() == state.keys()
    assert _kernel(x, model.clip.weight, padding=1) == DEPTH
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
