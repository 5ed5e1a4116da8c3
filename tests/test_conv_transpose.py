"""mcconv.conv_transpose2d/1d and mcconv.ConvTranspose2d/1d: torch's transposed convolutions on the
input-gradient kernels, the bias, residual and activation fused into their epilogue.

Values and gradients (input, weight, bias, residual) against float64 torch on the very values
mcconv received, every activation with and without bias and residual on each kernel the op can
launch; the forward as one launch (recorded, not run); errors against what CPU torch raises (each
error case first asserts that torch raises); the modules' state dicts both ways, ``output_size``,
``mcconv.convert``; the custom ops under ``torch.library.opcheck`` and
``torch.compile(fullgraph=True)``. Shapes are tiny: on the CPU the kernels run through Triton's
interpreter.
"""
import copy
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mcconv
from reference import DEVICE, DTYPES, ON_GPU, unit_roundoff

OPS = torch.ops.mcconv
COMPILE_BACKEND = "inductor" if ON_GPU or shutil.which("g++") else "aot_eager"
ACT = {name: a.reference for name, a in mcconv.ACTIVATIONS.items()}


def f64(t):
    return None if t is None else t.detach().double().cpu().requires_grad_(t.requires_grad)


def reference(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, activation=None,
              residual=None, dims=2):
    """act(F.conv_transpose{dims}d(x, w, b) + residual), differentiable (pass float64 leaves)."""
    conv = F.conv_transpose2d if dims == 2 else F.conv_transpose1d
    y = conv(x, w, b, stride, padding, output_padding, groups, dilation)
    if residual is not None:
        y = y + residual
    return y if activation is None else ACT[activation](y)


def assert_close(actual, expected, dtype, length):
    """Tolerance by dtype and reduction length (see reference.assert_conv_close), with the margin
    test_autograd uses for the extra rounding of an unfused bias, residual or activation."""
    u = unit_roundoff(dtype)
    torch.testing.assert_close(actual.detach().double().cpu(), expected.detach().double(), rtol=8 * u,
                               atol=8 * u * math.sqrt(length) + 1e-5)


def _make(n, c_in, size, c_out, kernel, groups=1, bias=True, dtype=torch.float32):
    x = torch.randn((c_in, *size) if n is None else (n, c_in, *size), device=DEVICE).to(dtype)
    fan = c_in // groups * math.prod(kernel)
    w = (torch.randn(c_in, c_out // groups, *kernel, device=DEVICE) / math.sqrt(fan)).to(dtype)
    b = torch.randn(c_out, device=DEVICE).to(dtype) if bias else None
    return x, w, b


def _check_values_and_grads(fn, x, w, b, options, dtype, dims=2, residual=None):
    """Forward and every gradient against float64 torch."""
    leaves = [t.requires_grad_() for t in (x, w, b, residual) if t is not None]
    y = fn(x, w, b, **options, residual=residual)
    assert y.dtype == dtype
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, gy)
    leaves64 = [f64(t) for t in leaves]
    it = iter(leaves64)
    x64, w64 = next(it), next(it)
    b64 = next(it) if b is not None else None
    r64 = next(it) if residual is not None else None
    act = options.get("activation")
    y64 = reference(x64, w64, b64, **{k: v for k, v in options.items() if k != "activation"}, dims=dims,
                    residual=r64)
    y64 = y64 * (y.detach().cpu() > 0) if act == "relu" else y64 if act is None else ACT[act](y64)
    assert y.shape == y64.shape
    grads64 = torch.autograd.grad(y64, leaves64, gy.double().cpu())
    groups = options.get("groups", 1)
    c_in, c_out_g = w.shape[0], w.shape[1]
    taps = math.prod(w.shape[2:])
    pixels = y64.numel() // y64.shape[-dims - 1]
    assert_close(y, y64, dtype, c_in // groups * taps)
    lengths = [c_out_g * taps, pixels, pixels, 1]
    for got, want, leaf, length in zip(grads, grads64, leaves, lengths):
        assert got.shape == leaf.shape and got.dtype == leaf.dtype
        assert_close(got, want, dtype, length)
    return y


# --------------------------------------------------------------------------- 2-D values and gradients

# (N, C_in, (H, W), C_out, kernel, options): odd sizes, every option.
CASES = {
    "plain": (2, 3, (5, 6), 4, (3, 3), {}),
    "stride2-pad1-outpad1-nobias": (2, 4, (5, 7), 3, (3, 2), dict(stride=2, padding=1, output_padding=1, bias=False)),
    "stride3-outpad21-dil12-groups2": (2, 4, (5, 5), 6, (3, 3),
                                       dict(stride=3, padding=(1, 0), output_padding=(2, 1), dilation=(1, 2),
                                            groups=2)),
    "depthwise-x2-stride12-nobias": (2, 4, (5, 6), 8, (3, 3),
                                     dict(groups=4, stride=(1, 2), padding=1, output_padding=(0, 1), bias=False)),
    "outpad-at-least-stride": (2, 3, (5, 5), 3, (2, 3), dict(stride=1, dilation=3, output_padding=2, padding=1)),
    "unbatched-stride2": (None, 3, (5, 6), 5, (3, 3), dict(stride=2, output_padding=1)),
}


@pytest.mark.parametrize("n, c_in, size, c_out, kernel, options", CASES.values(), ids=CASES.keys())
def test_values_and_gradients_match_float64_torch(n, c_in, size, c_out, kernel, options):
    options = dict(options)
    x, w, b = _make(n, c_in, size, c_out, kernel, options.get("groups", 1), bias=options.pop("bias", True))
    _check_values_and_grads(mcconv.conv_transpose2d, x, w, b, options, torch.float32)


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.float32], ids=str)
def test_half_precision_values_and_gradients(dtype):
    x, w, b = _make(2, 4, (5, 5), 6, (3, 3), groups=2, dtype=dtype)
    r = torch.randn(2, 6, 10, 10, device=DEVICE).to(dtype).to(memory_format=torch.channels_last)
    _check_values_and_grads(mcconv.conv_transpose2d, x, w, b,
                            dict(stride=2, padding=1, output_padding=1, groups=2, activation="silu"), dtype,
                            residual=r)


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_residual_and_activation(activation):
    x, w, b = _make(2, 3, (5, 6), 4, (3, 3))
    residual = torch.randn(2, 4, 10, 18, device=DEVICE)
    y = _check_values_and_grads(mcconv.conv_transpose2d, x, w, b,
                                dict(stride=(2, 3), padding=1, output_padding=(1, 2), activation=activation),
                                torch.float32, residual=residual)
    with torch.no_grad():  # the inference path (no op dispatch) composes the same epilogue
        y_inf = mcconv.conv_transpose2d(x, w, b, (2, 3), 1, (1, 2), activation=activation, residual=residual)
    torch.testing.assert_close(y_inf, y, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- the fused epilogue

# One case per kernel the op launches: conv_dgrad, conv_dgrad_subpixel (few output channels at a
# stride), gemm_1x1_dgrad (1x1, stride 1) and depthwise_dgrad (one output channel per group), each
# with the epilogue in its own store.
KERNEL_CASES = {
    "conv_dgrad": (2, 4, (3, 4), 12, (3, 3), dict(stride=2, padding=1, output_padding=1)),
    "conv_dgrad_subpixel": (2, 4, (3, 4), 3, (3, 3), dict(stride=2, padding=1, output_padding=1)),
    "gemm_1x1_dgrad": (2, 6, (3, 4), 4, (1, 1), dict(groups=2)),
    "depthwise_dgrad": (2, 4, (3, 4), 4, (3, 3), dict(stride=2, groups=4)),
}
# (bias, residual layout): each activation without and with either, the residual's layouts rotating
EPILOGUES = {"bias": (True, None), "residual-contiguous": (False, "contiguous"),
             "bias-residual-channels_last": (True, "channels_last"), "residual-strided-view": (False, "strided")}
ACTIVATION_NAMES = [None, *mcconv.ACTIVATIONS]


def _residual(shape, layout):
    if layout is None:
        return None
    if layout == "strided":  # every other column of a wider buffer: no dense layout
        return torch.randn(*shape[:-1], 2 * shape[-1], device=DEVICE)[..., ::2]
    r = torch.randn(shape, device=DEVICE)
    return r.to(memory_format=torch.channels_last) if layout == "channels_last" else r


@pytest.mark.parametrize("epilogue", EPILOGUES)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_fused_epilogue_values_and_gradients(activation, epilogue):
    """act(conv_transpose2d(x, w) + bias + residual) and its gradients (x, w, bias, residual)
    against float64 torch; the kernel rotates so that each activation meets all three."""
    has_bias, layout = EPILOGUES[epilogue]
    kernel = list(KERNEL_CASES)[(ACTIVATION_NAMES.index(activation) + list(EPILOGUES).index(epilogue))
                                % len(KERNEL_CASES)]
    n, c_in, size, c_out, k, conv = KERNEL_CASES[kernel]
    x, w, b = _make(n, c_in, size, c_out, k, conv.get("groups", 1), bias=has_bias)
    dispatch = mcconv.explain_transpose2d(x, w, b, **conv, activation=activation)
    assert dispatch.kernel == kernel
    r = _residual(dispatch.output_shape, layout)
    y = _check_values_and_grads(mcconv.conv_transpose2d, x, w, b, dict(conv, activation=activation),
                                torch.float32, residual=r)
    assert y.stride() == F.conv_transpose2d(x.detach(), w.detach(), None, **conv).stride()  # torch's layout


@pytest.mark.parametrize("kernel", KERNEL_CASES)
@pytest.mark.parametrize("train", [False, True], ids=["inference", "training"])
def test_forward_is_one_launch(kernel, train):
    """The forward, with bias, residual and activation (and for training silu's pre-activation z,
    which its derivative reads), is one launch of the input-gradient kernel, its epilogue
    constexprs on."""
    n, c_in, size, c_out, k, options = KERNEL_CASES[kernel]
    x, w, b = _make(n, c_in, size, c_out, k, options.get("groups", 1))
    x = x.to(memory_format=torch.channels_last).requires_grad_(train)  # channels_last: no layout copies either
    r = torch.randn(F.conv_transpose2d(x.detach(), w, b, **options).shape, device=DEVICE)
    with mcconv.ops.capture() as launches:  # records the launches; nothing runs
        mcconv.conv_transpose2d(x, w, b, **options, activation="silu", residual=r)
    assert len(launches) == 1
    fn, _, args, meta = launches[0]
    assert fn.__name__ == {"conv_dgrad": "conv2d_dgrad_kernel", "conv_dgrad_subpixel": "conv2d_dgrad_kernel",
                           "gemm_1x1_dgrad": "conv1x1_gemm_kernel",
                           "depthwise_dgrad": "depthwise_dgrad_kernel"}[kernel]
    assert meta["HAS_BIAS"] and meta["HAS_RESIDUAL"] and meta["STORE_PREACT"] == train
    assert meta["ACTIVATION"] is mcconv.ACTIVATIONS["silu"].device()
    # pointers: (dL/dz = x, w, bias, y, z, residual); z is y's own tensor only when not stored
    assert args[2] is b and args[5] is r and (args[4] is not args[3]) == train


# depthwise_dgrad's own paths: tiles [lanes, channels] for a channels_last input, [channels, lanes]
# for NCHW; a channel multiplier (C_in = m * C_out, groups = C_out) takes its row loop; stride 3
# with a 2-row kernel leaves stride phases that no tap reaches (bias + residual alone there);
# dilation; unbatched; fp16. (N, C_out, multiplier, size, kernel, options, input layout, dtype);
# each case takes one activation, bias and residual layout (EPILOGUES) rotating.
DEPTHWISE_CASES = {
    "nchw-stride2": (2, 4, 1, (3, 4), (3, 3), dict(stride=2, padding=1, output_padding=1), "contiguous", torch.float32),
    "channels_last-stride1": (2, 4, 1, (3, 4), (3, 3), dict(padding=1), "channels_last", torch.float32),
    "x2-channels_last-stride3-dil12": (2, 2, 2, (3, 3), (2, 3), dict(stride=3, dilation=(1, 2), output_padding=(2, 1)),
                                       "channels_last", torch.float32),
    "x2-unbatched-nchw-dil2": (None, 3, 2, (4, 3), (3, 3), dict(dilation=2, padding=1), "contiguous", torch.float32),
    "fp16-channels_last-stride12": (2, 8, 1, (3, 4), (3, 3), dict(stride=(1, 2), padding=1, output_padding=(0, 1)),
                                    "channels_last", torch.float16),
}


@pytest.mark.parametrize("case", DEPTHWISE_CASES)
def test_depthwise_fused_epilogue_values_and_gradients(case):
    """depthwise_dgrad with the epilogue in its store, on each of its paths, against float64 torch
    (values; gradients of x, w, bias, residual); the pre-activation z stored by the launch where the
    activation's derivative reads it."""
    n, c_out, mult, size, k, conv, layout, dtype = DEPTHWISE_CASES[case]
    i = list(DEPTHWISE_CASES).index(case)
    activation = ACTIVATION_NAMES[i % len(ACTIVATION_NAMES)]
    has_bias, r_layout = EPILOGUES[list(EPILOGUES)[i % len(EPILOGUES)]]
    conv = dict(conv, groups=c_out)
    x, w, b = _make(n, c_out * mult, size, c_out, k, c_out, bias=has_bias, dtype=dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    dispatch = mcconv.explain_transpose2d(x, w, b, **conv, activation=activation)
    assert dispatch.kernel == "depthwise_dgrad"
    r = _residual(dispatch.output_shape, r_layout)
    r = None if r is None else r.to(dtype)
    with mcconv.ops.capture() as launches:  # the training forward: one launch, z stored where read
        mcconv.conv_transpose2d(x.requires_grad_(), w, b, **conv, activation=activation, residual=r)
    (fn, _, args, meta), = launches
    assert fn.__name__ == "depthwise_dgrad_kernel" and meta["HAS_BIAS"] == has_bias
    assert meta["HAS_RESIDUAL"] == (r is not None) and meta["CHANNELS_LAST"] == (layout == "channels_last")
    assert meta["STORE_PREACT"] == (activation is not None and mcconv.ACTIVATIONS[activation].needs_preact)
    assert meta["ROW_LOOP"] == (mult > 1)
    y = _check_values_and_grads(mcconv.conv_transpose2d, x.detach(), w, b, dict(conv, activation=activation),
                                dtype, residual=r)
    assert y.stride() == F.conv_transpose2d(x.detach().float(), w.detach().float(), None, **conv).stride()


def test_split_1x1_applies_the_epilogue_in_its_second_pass(monkeypatch):
    """On an H100's 132 SMs a 1x1 transposed convolution with a long reduction over few tiles
    splits it: fp32 partials, then the split epilogue pass adds them in order and applies bias,
    residual and activation, and stores z."""
    from mcconv import _backend, _plan

    monkeypatch.setattr(_plan, "_plans", {})
    monkeypatch.setattr(_backend, "sm_count", lambda device: 132)
    x, w, b = _make(2, 1024, (3, 3), 24, (1, 1))
    r = _residual((2, 24, 3, 3), "strided")
    assert mcconv.explain_transpose2d(x, w, b, activation="gelu", residual=r).split > 1
    args = (x, w, b, [1, 1], [0, 0], [0, 0], [1, 1], 1, "gelu", r)
    with mcconv.ops.capture() as launches:
        OPS.conv_transpose2d_preact(*args)
    assert [fn.__name__ for fn, *_ in launches] == ["conv1x1_gemm_kernel", "conv2d_split_epilogue_kernel"]
    y, z = OPS.conv_transpose2d_preact(*args)
    z64 = F.conv_transpose2d(f64(x), f64(w), f64(b)) + f64(r)
    assert_close(z, z64, torch.float32, 1024)
    assert_close(y, F.gelu(z64), torch.float32, 1024)


@pytest.mark.parametrize("use", ["y-recomputed-z", "y-and-z"])
def test_op_gradients_through_the_preactivation(use):
    """torch.ops.mcconv.conv_transpose2d with an activation whose derivative reads z recomputes z
    in its backward (mcconv.conv_transpose2d takes the preact op instead); the preact op's z may
    take a gradient of its own, added to the activation's."""
    x, w, b = _make(2, 3, (4, 3), 4, (3, 3))
    r = torch.randn(2, 4, 9, 7, device=DEVICE)
    leaves = [t.requires_grad_() for t in (x, w, b, r)]
    args = (x, w, b, [2, 2], [0, 0], [0, 0], [1, 1], 1, "gelu", r)
    gy, gz = torch.randn(2, 4, 9, 7, device=DEVICE), torch.randn(2, 4, 9, 7, device=DEVICE)
    if use == "y-recomputed-z":
        loss = (OPS.conv_transpose2d(*args) * gy).sum()
    else:
        y, z = OPS.conv_transpose2d_preact(*args)
        loss = (y * gy).sum() + (z * gz).sum()
    grads = torch.autograd.grad(loss, leaves)
    leaves64 = [f64(t) for t in leaves]
    z64 = F.conv_transpose2d(*leaves64[:3], stride=2) + leaves64[3]
    loss64 = (F.gelu(z64) * gy.double()).sum() + (0 if use == "y-recomputed-z" else (z64 * gz.double()).sum())
    for got, want, length in zip(grads, torch.autograd.grad(loss64, leaves64), [36, 126, 126, 1]):
        assert_close(got, want, torch.float32, length)


def test_output_padding_is_applied():
    """output_padding adds rows/columns at the bottom/right that the input still reaches when
    output_padding <= padding: both the shape and those values must follow it."""
    x, w, b = _make(1, 3, (4, 5), 2, (3, 3))
    y0 = mcconv.conv_transpose2d(x, w, b, stride=2, padding=1)
    y1 = mcconv.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1)
    assert y0.shape == (1, 2, 7, 9) and y1.shape == (1, 2, 8, 10)
    expected = F.conv_transpose2d(f64(x), f64(w), f64(b), stride=2, padding=1, output_padding=1)
    assert_close(y1, expected, torch.float32, 27)
    last_row = expected[..., -1, :] - f64(b).view(1, -1, 1)
    assert last_row.abs().max() > 0.1  # the input reaches the added row: ignoring it could not pass
    torch.testing.assert_close(y1[..., :-1, :-1], y0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["x-channels_last", "w-channels_last", "w-permuted", "unbatched-w-channels_last"])
def test_layouts_values_and_output_strides_like_torch(layout):
    x, w, b = _make(None if layout.startswith("unbatched") else 2, 4, (5, 5), 3, (3, 3))
    if layout == "x-channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout.endswith("w-channels_last"):
        w = w.to(memory_format=torch.channels_last)
    else:
        w = w.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    y = mcconv.conv_transpose2d(x, w, b, stride=2)
    assert y.stride() == F.conv_transpose2d(x.cpu(), w.cpu(), b.cpu(), stride=2).stride()
    assert_close(y, F.conv_transpose2d(f64(x), f64(w), f64(b), stride=2), torch.float32, 36)


@pytest.mark.parametrize("c_in, groups", [(3, 1), (2, 2)], ids=["conv_dgrad", "depthwise_dgrad"])
def test_empty_batch_like_torch(c_in, groups):
    x, w, b = _make(0, c_in, (4, 4), 2, (3, 3), groups)
    y = mcconv.conv_transpose2d(x, w, b, stride=2, groups=groups)
    assert y.shape == F.conv_transpose2d(x.cpu(), w.cpu(), b.cpu(), stride=2, groups=groups).shape == (0, 2, 9, 9)
    r = torch.zeros(0, 2, 9, 9, device=DEVICE, requires_grad=True)
    y = mcconv.conv_transpose2d(x.requires_grad_(), w.requires_grad_(), b, stride=2, groups=groups, activation="gelu",
                                residual=r)
    assert y.shape == (0, 2, 9, 9)
    gx, gw, gr = torch.autograd.grad(y.sum(), (x, w, r))
    assert gx.shape == x.shape and gr.shape == r.shape and gw.abs().sum() == 0  # no pixels: zero


# --------------------------------------------------------------------------- 1-D


@pytest.mark.parametrize("n, options", [
    (2, dict(stride=2, padding=1, output_padding=1, groups=2, dilation=2)),
    (None, dict(stride=3, output_padding=2, activation="silu")),
], ids=["groups2-stride2-dil2", "unbatched-stride3-silu"])
def test_conv_transpose1d_values_and_gradients(n, options):
    x, w, b = _make(n, 4, (7,), 6, (3,), options.get("groups", 1))
    _check_values_and_grads(mcconv.conv_transpose1d, x, w, b, options, torch.float32, dims=1)


def test_conv_transpose1d_non_contiguous_input_and_residual():
    x = torch.randn(2, 9, 3, device=DEVICE).transpose(1, 2)  # (N, C, L) view of an (N, L, C) buffer
    w = torch.randn(3, 4, 3, device=DEVICE) / 3
    r = torch.randn(2, 4, 18, device=DEVICE)
    y = mcconv.conv_transpose1d(x, w, None, 2, 1, 1, residual=r, activation="hardswish")
    expected = F.hardswish(F.conv_transpose1d(f64(x), f64(w), None, 2, 1, 1) + f64(r))
    assert_close(y, expected, torch.float32, 9)


# --------------------------------------------------------------------------- errors

F32, F16 = torch.float32, torch.float16
# name -> (x shape, w shape, b shape, x dtype, options, mcconv's class, the argument named)
ERRORS = {
    "outpad-not-below-stride": ((1, 4, 5, 5), (4, 3, 3, 3), None, F32, dict(stride=2, output_padding=2),
                                ValueError, "output_padding"),
    "outpad-stride1": ((1, 4, 5, 5), (4, 3, 3, 3), None, F32, dict(output_padding=1), ValueError, "output_padding"),
    "outpad-negative": ((1, 4, 5, 5), (4, 3, 3, 3), None, F32, dict(output_padding=-1), ValueError,
                        "output_padding"),
    "padding-negative": ((1, 4, 5, 5), (4, 3, 3, 3), None, F32, dict(padding=-1), ValueError, "padding"),
    "padding-same": ((1, 4, 5, 5), (4, 3, 3, 3), None, F32, dict(padding="same"), TypeError, "padding"),
    "output-too-small": ((1, 4, 2, 2), (4, 3, 3, 3), None, F32, dict(padding=3), ValueError, "input"),
    "stride-0": ((1, 4, 5, 5), (4, 3, 3, 3), None, F32, dict(stride=0), ValueError, "stride"),
    "stride-3-values": ((1, 4, 5, 5), (4, 3, 3, 3), None, F32, dict(stride=(1, 2, 1)), ValueError, "stride"),
    "stride-float": ((1, 4, 5, 5), (4, 3, 3, 3), None, F32, dict(stride=2.0), TypeError, "stride"),
    "dilation-0": ((1, 4, 5, 5), (4, 3, 3, 3), None, F32, dict(dilation=0), ValueError, "dilation"),
    "groups-not-dividing": ((1, 4, 5, 5), (4, 3, 3, 3), None, F32, dict(groups=3), ValueError, "groups"),
    "channels-mismatch": ((1, 4, 5, 5), (3, 3, 3, 3), None, F32, {}, ValueError, "weight"),
    "bias-size": ((1, 4, 5, 5), (4, 3, 3, 3), (4,), F32, {}, ValueError, "bias"),
    "input-2d": ((5, 5), (4, 3, 3, 3), None, F32, {}, ValueError, "input"),
    "input-empty-image": ((1, 4, 0, 5), (4, 3, 3, 3), None, F32, {}, ValueError, "input"),
    "dtype-mismatch": ((1, 4, 5, 5), (4, 3, 3, 3), None, F16, {}, TypeError, "weight"),
}


@pytest.mark.parametrize("x_shape, w_shape, b_shape, dtype, options, documented, name", ERRORS.values(),
                         ids=ERRORS.keys())
def test_errors_like_torch(x_shape, w_shape, b_shape, dtype, options, documented, name):
    x = torch.randn(x_shape, device=DEVICE).to(dtype)
    w = torch.randn(w_shape, device=DEVICE)
    b = None if b_shape is None else torch.randn(b_shape, device=DEVICE).to(w.dtype)
    with pytest.raises(Exception) as theirs:
        F.conv_transpose2d(x.cpu(), w.cpu(), None if b is None else b.cpu(), **options)
    assert isinstance(theirs.value, (RuntimeError, TypeError))
    with pytest.raises(RuntimeError if documented is ValueError else TypeError) as info:
        mcconv.conv_transpose2d(x, w, b, **options)
    assert isinstance(info.value, documented) and str(info.value).startswith(f"{name}: "), str(info.value)


def test_epilogue_and_1d_errors_name_the_argument():
    x, w = torch.randn(1, 4, 5, 5, device=DEVICE), torch.randn(4, 3, 3, 3, device=DEVICE)
    with pytest.raises(ValueError, match="^activation: "):
        mcconv.conv_transpose2d(x, w, activation="tanh")
    with pytest.raises(ValueError, match=r"^residual: .*\(1, 3, 7, 7\)"):
        mcconv.conv_transpose2d(x, w, residual=torch.zeros(1, 3, 5, 5, device=DEVICE))
    x1, w1 = torch.randn(1, 4, 5, device=DEVICE), torch.randn(4, 3, 3, device=DEVICE)
    with pytest.raises(RuntimeError):
        F.conv_transpose1d(x1.cpu(), w1.cpu(), stride=(2, 1))
    with pytest.raises(ValueError, match="^stride: "):
        mcconv.conv_transpose1d(x1, w1, stride=(2, 1))
    with pytest.raises(ValueError, match="^output_padding: "):
        mcconv.conv_transpose1d(x1, w1, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="^weight: .*3-D"):
        mcconv.conv_transpose1d(x1, w1.unsqueeze(-1))
    with pytest.raises(TypeError, match="^input: .*float64"):  # torch runs float64; mcconv does not
        mcconv.conv_transpose2d(x.double(), w.double())


# --------------------------------------------------------------------------- modules


def test_module_state_dict_both_ways_output_size_unbatched_and_residual():
    theirs = nn.ConvTranspose2d(4, 6, (3, 2), stride=2, padding=1, groups=2, dilation=(1, 2), device=DEVICE)
    ours = mcconv.ConvTranspose2d(4, 6, (3, 2), stride=2, padding=1, groups=2, dilation=(1, 2), device=DEVICE,
                                  activation="relu")
    assert theirs.state_dict().keys() == ours.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    back = nn.ConvTranspose2d(4, 6, (3, 2), stride=2, padding=1, groups=2, dilation=(1, 2), device=DEVICE)
    back.load_state_dict(ours.state_dict())
    for name, t in back.state_dict().items():
        torch.testing.assert_close(t, theirs.state_dict()[name], rtol=0, atol=0)
    assert "mcconv.ConvTranspose2d(4, 6" in repr(ours) and "activation='relu'" in repr(ours)
    x = torch.randn(2, 4, 5, 4, device=DEVICE)
    for size in (None, [10, 8], (2, 6, 9, 8)):  # output_size picks output_padding, as in torch
        y, y_ref = ours(x, output_size=size), F.relu(theirs(x, output_size=size))
        assert y.shape == y_ref.shape
        torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="output size"):
        ours(x, output_size=[12, 8])
    r = torch.randn(6, 10, 8, device=DEVICE)
    torch.testing.assert_close(ours(x[0], [10, 8], residual=r), F.relu(theirs(x[0], [10, 8]) + r),
                               rtol=1e-4, atol=1e-5)  # unbatched, residual
    with pytest.raises(ValueError, match="activation"):
        mcconv.ConvTranspose2d(4, 6, 3, activation="tanh")


def test_module_1d_matches_nn_and_trains():
    theirs = nn.ConvTranspose1d(3, 4, 3, stride=2, padding=1, output_padding=1, device=DEVICE)
    ours = mcconv.ConvTranspose1d(3, 4, 3, stride=2, padding=1, output_padding=1, device=DEVICE)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 6, device=DEVICE, requires_grad=True)
    y, y_ref = ours(x, output_size=[11]), theirs(x, output_size=[11])
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, ours.weight, ours.bias), gy)
    grads_ref = torch.autograd.grad(y_ref, (x, theirs.weight, theirs.bias), gy)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours(x[1]), theirs(x[1]), rtol=1e-4, atol=1e-5)  # unbatched


class _ScaledConvTranspose2d(nn.ConvTranspose2d):
    """A subclass with its own forward: convert must leave it alone."""

    def forward(self, x, output_size=None):
        return 2 * super().forward(x, output_size)


class _EncoderDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)
        self.scaled = _ScaledConvTranspose2d(3, 2, 1)
        self.line = nn.ConvTranspose1d(2, 2, 2, stride=2)

    def forward(self, x):
        y = self.scaled(self.up(F.relu(self.down(x))))
        return self.line(y.flatten(2))


def test_convert_mixed_model_keeps_state_dict_and_reports():
    model = _EncoderDecoder().to(DEVICE)
    original = copy.deepcopy(model)
    params = list(model.parameters())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert mcconv.convert(model) is model
    assert type(model.down) is mcconv.Conv2d and type(model.up) is mcconv.ConvTranspose2d
    assert type(model.line) is mcconv.ConvTranspose1d and type(model.scaled) is _ScaledConvTranspose2d
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert model.state_dict().keys() == state.keys()
    for name, t in model.state_dict().items():
        torch.testing.assert_close(t, state[name], rtol=0, atol=0)
    report = mcconv.conversion_report(model)
    assert report.converted == ["down", "up", "line"] and list(report.left_alone) == ["scaled"]
    assert "subclass of nn.ConvTranspose2d" in report.left_alone["scaled"]
    assert report.kinds == {"down": "Conv2d", "up": "ConvTranspose2d", "scaled": "ConvTranspose2d",
                            "line": "ConvTranspose1d"}
    assert str(report).startswith("mcconv: 1 Conv2d and 1 ConvTranspose1d and 1 ConvTranspose2d layer(s) run")
    assert "mcconv.ConvTranspose2d(4, 3" in repr(model)
    x = torch.randn(2, 3, 5, 6, device=DEVICE)
    torch.testing.assert_close(model(x), original(x), rtol=1e-4, atol=1e-5)
    original.load_state_dict(model.state_dict())  # and back
    assert mcconv.conversion_report(mcconv.convert(model)) == report  # idempotent


# --------------------------------------------------------------------------- op, compile, autocast


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "w-channels_last"])
def test_opcheck(layout):
    x = torch.randn(2, 4, 3, 4, device=DEVICE)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(4, 3, 2, 3, device=DEVICE)  # groups 2: C_out = 6
    if layout == "w-channels_last":
        w = w.to(memory_format=torch.channels_last)
    b = torch.randn(6, device=DEVICE)
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), [2, 1], [1, 0], [1, 0], [1, 2], 2)
    torch.library.opcheck(OPS.conv_transpose2d.default, args)


@pytest.mark.parametrize("op", ["conv_transpose2d", "conv_transpose2d_preact"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_opcheck_with_activation_and_residual(op, activation):
    x = torch.randn(2, 4, 3, 4, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(4, 3, 2, 3, device=DEVICE)
    b = torch.randn(6, device=DEVICE)
    r = torch.randn(2, 6, 5, 8, device=DEVICE)  # contiguous under a channels_last output: its own strides
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), [2, 1], [1, 0], [1, 0], [1, 2], 2,
            activation, r.requires_grad_())
    torch.library.opcheck(getattr(OPS, op).default, args)


def test_opcheck_depthwise_with_activation_and_residual():
    """The preact op (z stored by the launch) on depthwise_dgrad with its epilogue: an NCHW input,
    channel multiplier 2, a channels_last residual."""
    x = torch.randn(1, 4, 2, 3, device=DEVICE)
    w = torch.randn(4, 1, 3, 3, device=DEVICE)  # groups 2: C_out = 2, one output channel per group
    b = torch.randn(2, device=DEVICE)
    r = torch.randn(1, 2, 4, 6, device=DEVICE).to(memory_format=torch.channels_last)
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), [2, 2], [1, 1], [1, 1], [1, 1], 2,
            "gelu", r.requires_grad_())
    assert mcconv.explain_transpose2d(x, w, b, 2, 1, 1, 2, activation="gelu", residual=r).kernel == "depthwise_dgrad"
    torch.library.opcheck(OPS.conv_transpose2d_preact.default, args)


def _decoder(x, w1, b1, w2, r):
    y = mcconv.conv_transpose2d(x, w1, b1, stride=2, padding=1, output_padding=1, activation="silu")
    return mcconv.conv_transpose1d(y.flatten(2), w2, None, stride=2, residual=r)


def test_compile_fullgraph_forward_and_backward():
    x = torch.randn(2, 3, 4, 3, device=DEVICE)
    params = [torch.randn(3, 2, 3, 3, device=DEVICE) / 4, torch.randn(2, device=DEVICE),
              torch.randn(2, 2, 2, device=DEVICE) / 2, torch.randn(2, 2, 96, device=DEVICE)]
    leaves = [x.requires_grad_()] + [p.requires_grad_() for p in params]
    compiled = torch.compile(_decoder, fullgraph=True, dynamic=False, backend=COMPILE_BACKEND)
    out = compiled(*leaves)
    grads = torch.autograd.grad(out.square().sum(), leaves)
    out_eager = _decoder(*leaves)
    grads_eager = torch.autograd.grad(out_eager.square().sum(), leaves)
    torch.testing.assert_close(out, out_eager, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, grads_eager):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(ON_GPU, reason="CPU autocast")
def test_autocast_cpu_float16():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, requires_grad=True)
    r = torch.randn(2, 2, 9, 9, requires_grad=True)  # float32: cast with the rest
    with torch.autocast("cpu", dtype=torch.float16):
        y = mcconv.conv_transpose2d(x, w, stride=2, activation="relu", residual=r)
    assert y.dtype == torch.float16
    y_ref = F.relu(F.conv_transpose2d(x.detach().half().double(), w.detach().half().double(), stride=2)
                   + r.detach().half().double())
    assert_close(y, y_ref, torch.float16, 27)
    gw, gr = torch.autograd.grad(y.float().sum(), (w, r))
    assert gw.dtype == gr.dtype == torch.float32


def test_explain_names_the_input_gradient_kernel():
    """explain_transpose2d says what conv_transpose2d launches, on meta tensors too; its errors are the call's."""
    e = dict(device="meta", dtype=torch.float16)
    x, w = torch.empty(2, 16, 7, 7, **e), torch.empty(16, 8, 3, 3, **e)
    d = mcconv.explain_transpose2d(x, w, stride=2, padding=1, output_padding=1)
    assert d.kernel == "conv_dgrad_subpixel" and tuple(d.output_shape) == (2, 8, 14, 14)  # 8 channels at stride 2
    assert mcconv.explain_transpose2d(x, torch.empty(16, 8, 1, 1, **e)).kernel == "gemm_1x1_dgrad"
    # output_padding >= stride (below the dilation): the call pads the input, and so does explain
    d = mcconv.explain_transpose2d(x, w, stride=1, padding=1, output_padding=1, dilation=2)
    assert d.kernel == "conv_dgrad" and tuple(d.output_shape) == (2, 8, 10, 10) == tuple(F.conv_transpose2d(
        torch.zeros(2, 16, 7, 7), torch.zeros(16, 8, 3, 3), stride=1, padding=1, output_padding=1, dilation=2).shape)
    with pytest.raises(mcconv.ConvArgumentError, match="output_padding"):
        mcconv.explain_transpose2d(x, w, stride=2, output_padding=2)
    # the epilogue is the kernel's; the output follows torch's layout (here the weight's channels_last)
    d = mcconv.explain_transpose2d(x, w.to(memory_format=torch.channels_last), torch.empty(8, **e), stride=2,
                                   activation="gelu", residual=torch.empty(2, 8, 15, 15, **e))
    assert d.kernel == "conv_dgrad_subpixel" and d.memory_format == "channels_last"
    assert mcconv.explain_transpose2d(x, torch.empty(16, 1, 3, 3, **e), groups=16).kernel == "depthwise_dgrad"
