"""conv_dgrad (kernels/conv2d_dgrad.py) after the rework: the flattened (tap, channel block) loop,
the phase's tap progressions, the weight and dY layouts the call chooses, and the forward's
epilogue as an option (a transposed convolution through the kernel itself).

Everything against float64 torch on the CPU (Triton's interpreter; natively on a GPU). Shapes stay
tiny: under the interpreter the time grows with the number of programs and loop iterations.
"""
import pytest
import torch
import torch.nn.functional as F

import mcconv
from mcconv import ACTIVATIONS, _pack, _plan, ops
from mcconv.ops import input_grad
from reference import DEVICE, DTYPES, assert_conv_close, backward_config, reference_input_grad


@pytest.fixture
def phase_blocks(monkeypatch, fresh_plans):
    """Strided input gradients of few channels on conv_dgrad's blocks of phase tiles: the
    sub-pixel kernel, which takes them by default, is tested in test_conv_dgrad_subpixel.py."""
    monkeypatch.setattr(input_grad.ConvDgradSubpixel, "applies", lambda self, spec: False)


def _weight(shape, dtype, layout):
    w = torch.randn(shape, device=DEVICE).to(dtype)
    if layout == "channels_last":
        return w.to(memory_format=torch.channels_last)
    if layout == "k_major":  # (KH, KW, C/g, K) memory: read in place, as B^T
        return _pack.dgrad_packed(w)
    return w


def _grad_z(shape, dtype, layout):
    t = torch.randn(shape, device=DEVICE).to(dtype)
    if layout == "channels_last" and t.dim() == 4:
        return t.to(memory_format=torch.channels_last)
    if layout == "strided":
        wide = torch.zeros((*shape[:-1], 2 * shape[-1]), device=DEVICE, dtype=dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t


def _output_shape(input_shape, w_shape, stride, padding, dilation, groups):
    return mcconv.ConvSpec.from_shapes(input_shape, w_shape, stride, padding, dilation, groups).output_shape


def check_dgrad(input_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, dtype=torch.float32,
                layout="channels_last", weight_layout="channels_last", config=None):
    w = _weight(w_shape, dtype, weight_layout)
    gz = _grad_z(_output_shape(input_shape, w_shape, stride, padding, dilation, groups), dtype, layout)
    plan = input_grad.plan(gz, w, input_shape, stride, padding, dilation, groups)
    assert plan.kernel.name == "conv_dgrad"
    if config is not None:
        plan = plan.with_config(config)
    dx = input_grad.run(plan, gz, w)
    assert dx.shape == tuple(input_shape) and dx.dtype == dtype
    assert dx.stride() == plan.out_strides
    k, _, kh, kw = w_shape
    assert_conv_close(dx, reference_input_grad(gz, w, input_shape, stride, padding, dilation, groups), dtype,
                      reduction_length=(k // groups) * kh * kw)
    return plan


# (input shape, weight shape, stride, padding, dilation, groups): the phase's taps as progressions
GEOMETRIES = {
    "s2-d2": ((1, 4, 9, 10), (4, 4, 3, 3), 2, 2, 2, 1),  # gcd 2: odd phases meet no tap at all
    "s3-d2": ((1, 3, 11, 10), (5, 3, 3, 4), 3, (2, 1), 2, 1),  # tap step 3, inverse of 2 mod 3
    "s4-d2-asym": ((1, 4, 13, 12), (4, 4, 5, 3), (4, 2), (3, 0, 1, 2), (2, 3), 1),
    "s2x3-d3x2": ((2, 3, 10, 11), (4, 3, 3, 3), (2, 3), (1, 2), (3, 2), 1),
    "groups3-s2": ((1, 6, 9, 8), (9, 2, 3, 3), 2, 1, 1, 3),
    "1x1-s2": ((2, 8, 7, 6), (16, 8, 1, 1), 2, 0, 1, 1),
    "7x7-s1": ((1, 3, 9, 9), (4, 3, 7, 7), 1, 3, 1, 1),  # 49 taps: int64 bit sets
    "9x8-s1": ((1, 2, 10, 9), (3, 2, 9, 8), 1, (4, 4), 1, 1),  # 72 taps: no bit set, p and q compared
    "pad-beyond": ((1, 2, 4, 5), (3, 2, 2, 3), 1, 3, 1, 1),
}


@pytest.mark.parametrize("name", GEOMETRIES)
def test_phase_tap_progressions(name, phase_blocks):
    check_dgrad(*GEOMETRIES[name])


@pytest.mark.parametrize("name", ["s2-d2", "s3-d2", "7x7-s1"])
def test_phase_tap_progressions_contiguous(name, phase_blocks):
    check_dgrad(*GEOMETRIES[name], layout="contiguous", weight_layout="contiguous")


def test_tap_bits_modes():
    def bits(w_shape, stride=1):
        gz = torch.empty(_output_shape((1, 4, 20, 20), w_shape, stride, 0, 1, 1), device="meta")
        return input_grad.plan(gz, torch.empty(w_shape, device="meta"), (1, 4, 20, 20), stride).meta["TAP_BITS"]

    assert bits((4, 4, 3, 3)) == 32
    assert bits((4, 4, 7, 7)) == 64 and bits((4, 4, 7, 7), stride=2) == 32  # 49 taps; 16 in the fullest phase
    assert bits((4, 4, 9, 8)) == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("weight_layout", ["channels_last", "contiguous", "k_major"])
def test_loop_over_taps_and_channel_blocks(dtype, weight_layout):
    """Forced small blocks: several row and column tiles per phase (the last ones cut), three
    channel blocks per tap (the last cut: K/g = 40 with BLOCK_K = 16), every tap transition."""
    config = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4, "num_stages": 3}
    plan = check_dgrad((1, 20, 7, 9), (40, 20, 3, 2), 2, (1, 0), (1, 2), dtype=dtype, weight_layout=weight_layout,
                       config=config)
    # the fullest phase: 2 taps along h (3 taps, stride 2) x 2 along w (dilation 2: even phases only), 3 blocks
    assert plan.kernel.loop_trips(plan.spec, plan.config) == [2 * 2 * 3]
    assert not plan.meta["ONE_K_BLOCK"]  # three blocks a tap: the block counter stays


def test_even_blocks_compile_their_masks_out():
    """K/g and C/g multiples of the blocks (no channel mask), with groups and two channel blocks per tap."""
    config = {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}
    plan = check_dgrad((2, 64, 5, 6), (64, 32, 3, 3), 1, 1, 1, 2, dtype=torch.float16, config=config)
    assert plan.meta["K_ALIGN"] % 16 == 0 and plan.meta["C_ALIGN"] % 16 == 0


def test_narrow_rows_shrink_wide_tiles():
    """Rows in 8-byte copies (100 fp16 channels) spilled 128x128 tiles: dX's take 64-row tiles,
    dL/dy's (DCGAN's code layer) 32 output channels a step; 64 columns keep the full tile."""
    assert backward_config("conv_dgrad", 128, 100)["BLOCK_K"] == 32
    assert backward_config("conv_dgrad", 64, 100)["BLOCK_K"] == 64
    assert backward_config("conv_dgrad", 128, 96)["BLOCK_K"] == 64
    assert backward_config("conv_dgrad", 100, 256)["BLOCK_M"] == 64
    assert backward_config("conv_dgrad", 96, 256)["BLOCK_M"] == 128


def test_tall_64_column_input_gradients_take_256_row_tiles():
    """64 input channels over 2**16 rows or more (ResNet-50's 64-channel 3x3 at batch 128 here):
    256x64x32 tiles (pressure 0.555 against 0.652 at 128x64x64, sm_90); fewer rows, more
    columns, tf32, 8-byte dL/dy rows or a transposed convolution's epilogue (they spilled) keep
    128 rows."""
    tall = backward_config("conv_dgrad", 64, 64, n=128)
    assert (tall["BLOCK_M"], tall["BLOCK_N"], tall["BLOCK_K"]) == (256, 64, 32)
    assert backward_config("conv_dgrad", 64, 64)["BLOCK_M"] == 128
    assert backward_config("conv_dgrad", 128, 64, n=128)["BLOCK_M"] == 128
    assert backward_config("conv_dgrad", 64, 100, n=128)["BLOCK_M"] == 128  # 8-byte dL/dy copies
    x = torch.empty(128, 64, 28, 28, device="meta").to(memory_format=torch.channels_last)
    w = torch.empty(64, 64, 3, 3, device="meta").to(memory_format=torch.channels_last)
    assert mcconv.explain_transpose2d(x.half(), w.half(), padding=1).config["BLOCK_M"] == 256
    assert mcconv.explain_transpose2d(x.half(), w.half(), torch.empty(64, device="meta").half(), padding=1,
                                      activation="silu").config["BLOCK_M"] == 128
    assert mcconv.explain_transpose2d(x, w, padding=1).config["BLOCK_M"] == 128  # fp32


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_channel_strided_grad_z_and_grad_input(layout, phase_blocks):
    """dY with strided channels is read from a channels_last copy; dX is written channels_last and
    returned in the layout of dY's format (contiguous)."""
    plan = check_dgrad((2, 6, 7, 8), (5, 6, 3, 3), 2, 1, 1, 1, layout=layout, weight_layout="contiguous")
    assert plan.extra["copy_grad_z"] and plan.extra["grad_input_strides"] != plan.out_strides
    assert plan.pack_weight


def test_unbatched(phase_blocks):
    x_shape, w_shape, *opts = GEOMETRIES["s3-d2"]
    for layout in ("channels_last", "contiguous"):
        check_dgrad(x_shape[1:], w_shape, *opts, layout=layout)


def test_int64_offsets(monkeypatch, phase_blocks):
    monkeypatch.setattr(_plan, "INT32_LIMIT", 1)
    for name in ("s2-d2", "groups3-s2", "7x7-s1"):
        assert check_dgrad(*GEOMETRIES[name]).index_64


@pytest.mark.parametrize("weight_layout, dtype, packed", [
    ("channels_last", torch.float16, False),  # c contiguous, 16-byte rows: read in place (N-major)
    ("channels_last", torch.bfloat16, False),
    ("contiguous", torch.float16, True),  # neither channel axis contiguous: (KH, KW, C/g, K) copy
    ("k_major", torch.float16, False),  # already K-major
    ("k_major", torch.float32, False),
])
def test_weight_layout_choice(weight_layout, dtype, packed, fresh_plans):
    w = _weight((32, 16, 3, 3), dtype, weight_layout).to("meta")
    gz = torch.empty(2, 32, 8, 8, dtype=dtype, device="meta").to(memory_format=torch.channels_last)
    plan = input_grad.plan(gz, w, (2, 16, 8, 8), padding=1)
    assert plan.pack_weight is packed and plan.dispatch.packed_weight is packed
    assert plan.meta["W_K_MAJOR"] is (packed or weight_layout == "k_major")


def test_tf32_and_narrow_weights_are_packed(fresh_plans):
    from mcconv.tools.inspect import fp32_mode

    gz = torch.empty(2, 32, 8, 8, device="meta").to(memory_format=torch.channels_last)
    w = torch.empty(32, 16, 3, 3, device="meta").to(memory_format=torch.channels_last)
    with fp32_mode("float32"):
        assert not input_grad.plan(gz, w, (2, 16, 8, 8), padding=1).pack_weight  # IEEE fp32: in place
    with fp32_mode("tf32"):  # wgmma takes tf32 operands K-major only
        plan = input_grad.plan(gz, w, (2, 16, 8, 8), padding=1)
        assert plan.spec.tf32 and plan.pack_weight and plan.meta["W_K_MAJOR"]
    # the RGB stem's dgrad: C = 3, channels_last rows of 6 bytes: packed (K-major rows of 64 x 2 bytes)
    w3 = torch.empty(64, 3, 7, 7, dtype=torch.float16, device="meta").to(memory_format=torch.channels_last)
    gz3 = torch.empty(1, 64, 8, 8, dtype=torch.float16, device="meta").to(memory_format=torch.channels_last)
    assert input_grad.plan(gz3, w3, (1, 3, 16, 16), 2, 3).pack_weight


def test_pack_switch_off_reads_in_place(monkeypatch, fresh_plans):
    monkeypatch.setenv(_pack.PACK_ENV, "0")
    check_dgrad(*GEOMETRIES["s2-d2"], weight_layout="contiguous")
    assert not any(p.pack_weight for p in _plan._plans.values())


def test_packed_copy_follows_weight_writes(fresh_plans):
    """The per-call copy is made from the weight's current values (.data writes included)."""
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    gz = torch.randn(1, 4, 5, 5, device=DEVICE)
    first = ops.conv2d_input_grad(gz, w, (1, 3, 5, 5), padding=1)
    w.data.mul_(2)
    second = ops.conv2d_input_grad(gz, w, (1, 3, 5, 5), padding=1)
    assert input_grad.plan(gz, w, (1, 3, 5, 5), padding=1).pack_weight
    torch.testing.assert_close(second, 2 * first)


# ------------------------------------------------------------------ the epilogue (transposed conv)

def transposed_conv(x, w, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                    activation=None, residual=None, preact=False, config=None):
    """F.conv_transpose2d(x, w, bias, ...) followed by activation(. + residual), through conv_dgrad.

    A transposed convolution is the input gradient of conv2d with weight w (in_channels of the
    transposed convolution = the conv2d's out_channels) for dL/dz = x; the kernel's epilogue then
    adds the bias by output column (the input channel c of the input gradient), the residual,
    and applies the activation; with `preact` it also stores z = conv + bias + residual.
    Returns y, or (y, z).
    """
    n, cin, h, wd = x.shape
    _, cout_g, kh, kw = w.shape
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    oph, opw = (output_padding, output_padding) if isinstance(output_padding, int) else output_padding
    out_shape = (n, cout_g * groups, (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1,
                 (wd - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1)
    # conv2d(out, w, padding) maps out_shape onto x's shape (output_padding: rows its floor drops)
    plan = input_grad.plan(x, w, out_shape, stride, (ph, pw), dilation, groups)
    if config is not None:
        plan = plan.with_config(config)
    kernel = plan.kernel
    strides = {"dy": _plan.batched(x.stride()), "w": tuple(w.stride()),
               "dx": _plan.contiguous_strides(out_shape, channels_last=True),
               "r": tuple(residual.stride()) if residual is not None else (0, 0, 0, 0)}
    scalars, meta = kernel.arguments(plan.spec, strides)
    meta = {**plan.meta, **meta, "HAS_BIAS": bias is not None, "ACTIVATION": activation,
            "STORE_PREACT": preact, "HAS_RESIDUAL": residual is not None}
    y = torch.empty_strided(out_shape, strides["dx"], dtype=x.dtype, device=x.device)
    z = torch.empty_like(y) if preact else y
    args = (x, w, bias if bias is not None else w, y, z, residual if residual is not None else y,
            *scalars, *plan.args[-3:])  # the autotune buckets come last
    plan.fn[plan.grid](*args, **meta)
    return (y, z) if preact else y


@pytest.mark.parametrize("activation", ["silu", "relu"])
@pytest.mark.parametrize("case", [
    dict(stride=2, padding=1, output_padding=1),
    dict(stride=(3, 2), padding=(2, 0), output_padding=(1, 0), dilation=(1, 2)),
    dict(stride=2, padding=1, groups=2),
])
def test_transposed_convolution_with_bias_and_activation(activation, case, phase_blocks):
    from mcconv import _kernels

    groups = case.get("groups", 1)
    x = torch.randn(2, 6, 5, 4, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(6, 10 // groups, 3, 3, device=DEVICE).to(memory_format=torch.channels_last)
    b = torch.randn(10, device=DEVICE)
    y = transposed_conv(x, w, b, activation=getattr(_kernels.activations, activation), **case)
    ref = F.conv_transpose2d(x.double().cpu(), w.double().cpu(), b.double().cpu(), **case)
    ref = ACTIVATIONS[activation].reference(ref)
    assert y.shape == ref.shape
    assert_conv_close(y, ref, torch.float32, reduction_length=6 // groups * 9)


def test_transposed_convolution_residual_and_preact():
    from mcconv import _kernels

    x = torch.randn(1, 8, 4, 5, device=DEVICE).to(torch.float16).to(memory_format=torch.channels_last)
    w = torch.randn(8, 16, 2, 2, device=DEVICE).to(torch.float16).to(memory_format=torch.channels_last)
    b = torch.randn(16, device=DEVICE).to(torch.float16)
    r = torch.randn(1, 16, 8, 10, device=DEVICE).to(torch.float16)  # contiguous: its own strides
    y, z = transposed_conv(x, w, b, stride=2, activation=_kernels.activations.gelu, residual=r, preact=True)
    ref_z = F.conv_transpose2d(x.double().cpu(), w.double().cpu(), b.double().cpu(), stride=2) + r.double().cpu()
    assert_conv_close(z, ref_z, torch.float16, reduction_length=8 * 4)
    assert_conv_close(y, ACTIVATIONS["gelu"].reference(ref_z), torch.float16, reduction_length=8 * 4)


def test_input_gradient_compiles_the_epilogue_out():
    gz = torch.empty(2, 8, 5, 5, device="meta")
    plan = input_grad.plan(gz, torch.empty(8, 4, 3, 3, device="meta"), (2, 4, 5, 5), padding=1)
    assert {plan.meta[k] for k in ("HAS_BIAS", "STORE_PREACT", "HAS_RESIDUAL")} == {False}
    assert plan.meta["ACTIVATION"] is None
