"""The 1x1 GEMM kernel (kernels/conv1x1_gemm.py) after its rework: gemm_1x1 and gemm_1x1_dgrad.

- The alignment facts the host derives (mcconv.ops.forward.Gemm1x1.gemm_arguments) and the
  kernel turns into tl.multiple_of / tl.max_contiguous hints are checked element by element
  against the tensors' real addresses, for many layouts: a false hint would be a misaligned
  vector access on the GPU, which Triton's interpreter cannot show.
- Results of the new paths through the interpreter: 24-channel rows (alignment only the host
  can prove), NCHW operands (pixels contiguous), group offsets that are not 16-byte multiples,
  channel and spatial slices, unbatched inputs, the epilogue, reduction tails, wrapped rows and
  columns; the input gradient with dL/dz in several layouts; the split reduction's partials.
- The compiled structure on sm_90 (a subprocess without the interpreter, skipped where this
  triton cannot compile for NVIDIA): 16-byte cp.async for both operands where the layouts
  allow it, wgmma, no spills, issue pressure, the split variant.
"""
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import mcconv
from mcconv import _plan
from mcconv.ops import forward, input_grad
from reference import COMPILE_PREAMBLE, COMPILE_SKIP, assert_conv_close, reference_conv2d

H100 = dict(device_name="NVIDIA_H100_80GB_HBM3", sm_count=132)


# ------------------------------------------------------------------------------- alignment facts

def _pixel_offsets(sizes, strides, count):
    """Offsets of flat pixels m = (n * P + p) * Q + q, as kernels/common.py's split_pixels walks them."""
    n_, p_, q_ = sizes
    out = []
    for m in range(count):
        q = m % q_
        rest = m // q_
        out.append((rest // p_) * strides[0] + (rest % p_) * strides[1] + q * strides[2])
    return out


def _check_rows_operand(label, pix, count, channel_stride, channels, groups, layout, align, output):
    """The facts of kernels/conv1x1_gemm.py's hinted_offsets for an activation-like operand."""
    if layout == 0:
        return
    assert align > 1, label
    if layout == 1:  # channels contiguous: every row (and group) offset a multiple of align
        assert channel_stride == 1, label
        for g in range(groups):
            assert all((off + g * channels) % align == 0 for off in pix), (label, g)
        if output:  # the store mask along the channels holds per vector
            assert channels % align == 0, label
    else:  # pixels contiguous in aligned runs of `align`, which never wrap mid-run
        assert count % align == 0, label
        for m0 in range(0, count, align):
            assert pix[m0] % align == 0 and pix[m0:m0 + align] == list(range(pix[m0], pix[m0] + align)), (label, m0)
        assert all(((g * channels + c) * channel_stride) % align == 0
                   for g in range(groups) for c in range(channels)), label


def _check_weight(label, w, red, cols, groups, layout, align):
    wk, wc, wg = w
    if layout == 1:  # columns contiguous, wrapping at `cols`
        assert wk == 1 and cols % align == 0, label
        assert all((g * wg + k * wc) % align == 0 for g in range(groups) for k in range(red)), label
    elif layout == 2:  # the reduction contiguous
        assert wc == 1, label
        assert all((g * wg + j * wk) % align == 0 for g in range(groups) for j in range(cols)), label


def _check_plan(label, plan, x_shape, x_strides, y_strides, r_strides=None):
    """The plan's scalars and facts against the operands' own (unmerged) addressing."""
    args, meta = plan.args, plan.meta
    sizes, red, cols = args[0:3], args[3], args[4]
    xs, sxc, ys, syk = (args[5], args[7], args[8]), args[6], (args[12], args[14], args[15]), args[13]
    n, _, h, w = x_shape
    count = n * h * w
    groups = plan.spec.groups
    xb, yb = _plan.batched(x_strides), _plan.batched(y_strides)
    x_pix = _pixel_offsets(sizes, xs, count)
    y_pix = _pixel_offsets(sizes, ys, count)
    assert x_pix == _pixel_offsets((n, h, w), (xb[0], xb[2], xb[3]), count), label  # merging keeps every address
    assert y_pix == _pixel_offsets((n, h, w), (yb[0], yb[2], yb[3]), count), label
    assert (sxc, syk) == (xb[1], yb[1]), label
    _check_rows_operand(label + " x", x_pix, count, sxc, red, groups, meta["X_LAYOUT"], meta["X_ALIGN"], False)
    _check_rows_operand(label + " y", y_pix, count, syk, cols, groups, meta["Y_LAYOUT"], meta["Y_ALIGN"], True)
    if r_strides is not None:
        rb = _plan.batched(r_strides)
        r_pix = _pixel_offsets(sizes, (args[16], args[18], args[19]), count)
        assert r_pix == _pixel_offsets((n, h, w), (rb[0], rb[2], rb[3]), count), label
        _check_rows_operand(label + " r", r_pix, count, args[17], cols, groups, meta["R_LAYOUT"], meta["R_ALIGN"],
                            True)
    _check_weight(label + " w", args[9:12], red, cols, groups, meta["W_LAYOUT"], meta["W_ALIGN"])
    assert red % meta["C_ALIGN"] == 0, label


def _layouts():
    """(label, x, w, residual or None): views of every kind the library reads in place."""
    def cl(t):
        return t.to(memory_format=torch.channels_last)

    e = dict(device="meta", dtype=torch.float16)
    yield "nhwc c24", cl(torch.empty(2, 24, 5, 7, **e)), torch.empty(40, 24, 1, 1, **e), None
    yield "nhwc c16 k24", cl(torch.empty(3, 16, 4, 4, **e)), torch.empty(24, 16, 1, 1, **e), None
    yield "nchw hw24", torch.empty(2, 20, 4, 6, **e), torch.empty(12, 20, 1, 1, **e), None
    yield "nchw hw35", torch.empty(3, 12, 5, 7, **e), torch.empty(8, 12, 1, 1, **e), None
    yield "nchw hw196", torch.empty(2, 8, 14, 14, **e), torch.empty(16, 8, 1, 1, **e), None
    yield "groups3 c24", cl(torch.empty(2, 72, 3, 5, **e)), torch.empty(48, 24, 1, 1, **e), None
    yield "groups2 nchw", torch.empty(2, 12, 4, 4, **e), torch.empty(10, 6, 1, 1, **e), None
    yield "channel slice", cl(torch.empty(2, 48, 6, 6, **e))[:, 8:32], torch.empty(16, 24, 1, 1, **e), None
    yield "odd channel slice", cl(torch.empty(2, 30, 3, 3, **e))[:, 3:27], torch.empty(16, 24, 1, 1, **e), None
    yield "spatial crop nchw", torch.empty(2, 16, 9, 12, **e)[:, :, 1:, 2:], torch.empty(8, 16, 1, 1, **e), None
    yield "spatial crop nhwc", cl(torch.empty(2, 24, 6, 6, **e))[:, :, 1:, :5], torch.empty(8, 24, 1, 1, **e), None
    yield "transposed hw", torch.empty(2, 16, 6, 8, **e).transpose(2, 3), torch.empty(8, 16, 1, 1, **e), None
    yield "batch expand", torch.empty(1, 24, 4, 4, **e).expand(3, -1, -1, -1), torch.empty(8, 24, 1, 1, **e), None
    yield "unbatched", torch.empty(24, 5, 6, **e), torch.empty(16, 24, 1, 1, **e), None
    yield "one pixel", torch.empty(3, 24, 1, 1, **e), torch.empty(16, 24, 1, 1, **e), None
    yield "weight slice", cl(torch.empty(2, 32, 4, 4, **e)), torch.empty(24, 40, 1, 1, **e)[:, 4:36], None
    yield "weight transposed", cl(torch.empty(2, 32, 4, 4, **e)), torch.empty(32, 24, 1, 1, **e).transpose(0, 1), None
    yield ("residual nchw", cl(torch.empty(2, 24, 4, 4, **e)), torch.empty(16, 24, 1, 1, **e),
           torch.empty(2, 16, 4, 4, **e))
    yield ("residual slice", cl(torch.empty(2, 24, 4, 4, **e)), torch.empty(16, 24, 1, 1, **e),
           cl(torch.empty(2, 20, 4, 4, **e))[:, 2:18])
    f = dict(device="meta", dtype=torch.float32)
    yield "fp32 nhwc c24", cl(torch.empty(2, 24, 5, 7, **f)), torch.empty(40, 24, 1, 1, **f), None
    yield "fp32 nchw hw49", torch.empty(2, 12, 7, 7, **f), torch.empty(8, 12, 1, 1, **f), None


def _read_strides(plan, t, copied):
    """The strides the kernel reads ``t`` through: its own, or its per-call channels_last copy's."""
    if not copied:
        return t.stride()
    shape = t.shape if t.dim() == 4 else (1, *t.shape)
    return _plan.contiguous_strides(tuple(shape), True)


@pytest.mark.parametrize("split", [1, 3])
def test_alignment_facts_hold_for_every_element(split, monkeypatch):
    """Every fact behind a hint (forward and input gradient, split partials too) against the real addresses."""
    for cls in (forward.Gemm1x1, input_grad.Gemm1x1Dgrad):
        monkeypatch.setattr(cls, "split", lambda self, spec, config, sm_count: split)
    monkeypatch.setattr(_plan, "_plans", {})
    for label, x, w, r in _layouts():
        groups = x.shape[-3] // w.shape[1]
        fwd = forward.plan(x, w, None, groups=groups, residual=r, **H100)
        assert fwd.kernel.name == "gemm_1x1" and fwd.split == split, label
        x4 = x if x.dim() == 4 else x.unsqueeze(0)
        y_strides = fwd.out_strides
        if split > 1:  # the partial buffer [split, N*P*Q, K]
            n, k, p, q = (fwd.out_shape if len(fwd.out_shape) == 4 else (1, *fwd.out_shape))
            y_strides = (p * q * k, 1, q * k, k)
        x_read = _read_strides(fwd, x, fwd.extra.get("input_copy") == "channels_last")
        _check_plan(label, fwd, x4.shape, x_read, y_strides, None if r is None else r.stride())
        for gz_layout in ("same", "channels_last", "contiguous"):
            gz = torch.empty_strided(fwd.out_shape, fwd.out_strides, device="meta", dtype=x.dtype)
            if gz_layout == "contiguous":
                gz = gz.contiguous()
            elif gz_layout == "channels_last":
                gz = _cl(gz)
            dgrad = input_grad.plan(gz, w, tuple(x.shape), groups=groups, **H100)
            assert dgrad.kernel.name == "gemm_1x1_dgrad", label
            gz4 = gz if gz.dim() == 4 else gz.unsqueeze(0)
            dx_strides = dgrad.out_strides
            if split > 1:
                dx_strides = (x4.shape[2] * x4.shape[3] * x4.shape[1], 1, x4.shape[3] * x4.shape[1], x4.shape[1])
            gz_read = _read_strides(dgrad, gz, dgrad.extra["copy_grad_z"])
            _check_plan(f"{label} dgrad {gz_layout}", dgrad, gz4.shape, gz_read, dx_strides)


def test_facts_reach_the_layouts_that_matter():
    """The facts are not just true but useful: 16-byte facts for MobileNetV2's 24-channel rows,
    NCHW pixel runs, the input gradient's N-major weight."""
    e = dict(device="meta", dtype=torch.float16)
    x = torch.empty(2, 24, 8, 8, **e).to(memory_format=torch.channels_last)
    fwd = forward.plan(x, torch.empty(144, 24, 1, 1, **e), None, **H100)
    assert (fwd.meta["X_LAYOUT"], fwd.meta["X_ALIGN"], fwd.meta["W_LAYOUT"], fwd.meta["W_ALIGN"]) == (1, 8, 2, 8)
    assert fwd.meta["C_ALIGN"] == 8 and fwd.args[:3] == (1, 1, 2 * 8 * 8)  # dense NHWC: one pixel axis
    gz = torch.empty(2, 24, 8, 8, **e).to(memory_format=torch.channels_last)
    dgrad = input_grad.plan(gz, torch.empty(24, 144, 1, 1, **e), (2, 144, 8, 8), **H100)
    assert (dgrad.meta["X_LAYOUT"], dgrad.meta["X_ALIGN"], dgrad.meta["W_LAYOUT"], dgrad.meta["W_ALIGN"]) == (1, 8, 1, 8)
    nchw = forward.plan(torch.empty(2, 64, 28, 28, **e), torch.empty(128, 64, 1, 1, **e), None, **H100)
    assert (nchw.meta["X_LAYOUT"], nchw.meta["X_ALIGN"], nchw.meta["Y_LAYOUT"], nchw.meta["Y_ALIGN"]) == (2, 8, 2, 8)
    assert nchw.args[:3] == (2, 1, 28 * 28)  # (h, w) merged, n kept
    needs_copy = forward.Gemm1x1.needs_row_copy
    assert not needs_copy(nchw.spec, (2, 28, 28), (64 * 784, 784, 28, 1), nchw.out_strides)
    odd = forward.plan(torch.empty(2, 64, 7, 7, **e), torch.empty(128, 64, 1, 1, **e), None, **H100)
    assert needs_copy(odd.spec, (2, 7, 7), (64 * 49, 49, 7, 1), odd.out_strides)
    # ... so the plan reads a channels_last copy: 16-byte channel rows, and still an NCHW output
    assert odd.extra["input_copy"] == "channels_last" and odd.meta["X_LAYOUT"] == 1 and odd.meta["X_ALIGN"] == 8
    assert odd.out_strides == (128 * 49, 49, 7, 1)
    assert not needs_copy(fwd.spec, (2, 8, 8), (24 * 64, 1, 8 * 24, 24), fwd.out_strides)


def test_reduction_block_is_capped_at_128_bytes_per_row():
    """fp16 keeps the default's BLOCK_K 64; fp32 (tf32) rows stop at 32 elements: 3 stages of
    128x128 tiles in 96 KiB, two CTAs per SM."""
    for dtype, block_k in ((torch.float16, 64), (torch.float32, 32)):
        x = torch.empty(8, 256, 14, 14, device="meta", dtype=dtype).to(memory_format=torch.channels_last)
        w = torch.empty(256, 256, 1, 1, device="meta", dtype=dtype)
        for p in mcconv.plans(x, w, None, direction="all", **H100):
            if p.kernel.name.startswith("gemm_1x1"):
                assert (p.config["BLOCK_M"], p.config["BLOCK_N"], p.config["BLOCK_K"]) == (128, 128, block_k)
                assert p.kernel.loop_trips(p.spec, p.config, 1) == [256 // block_k]
                assert p.kernel.loop_trips(p.spec, p.config, 3) == [math.ceil(256 // block_k / 3)]


def test_epilogues_that_spilled_take_64_row_tiles():
    """Tiles over 64 output columns store 64 rows at a time where 128 spilled: silu/gelu, and
    channels_last rows not in 16-byte copies (YOLO's 255-channel head); the input gradient (a
    transposed 1x1's epilogue) likewise by dX's channels. Weights whose rows are not 8-byte
    copies are packed K-major for the input gradient (no 2-byte loads)."""
    def forward_rows(k, activation=None, channels_last=True):
        x = torch.empty(16, 256, 52, 52, device="meta", dtype=torch.float16)
        x = x.to(memory_format=torch.channels_last) if channels_last else x
        w = torch.empty(k, 256, 1, 1, device="meta", dtype=torch.float16)
        b = torch.empty(k, device="meta", dtype=torch.float16)
        return forward.plan(x, w, b, activation=activation, **H100).config["BLOCK_M"]

    assert forward_rows(256) == forward_rows(256, "relu") == 128
    assert forward_rows(256, "gelu") == forward_rows(256, "silu") == 64
    assert forward_rows(255) == forward_rows(252) == 64
    assert forward_rows(255, channels_last=False) == 128  # NCHW stores along the pixels
    gz = torch.empty(16, 256, 52, 52, device="meta", dtype=torch.float16).to(memory_format=torch.channels_last)
    plan = input_grad.plan(gz, torch.empty(256, 255, 1, 1, device="meta", dtype=torch.float16),
                           (16, 255, 52, 52), **H100)
    assert plan.kernel.name == "gemm_1x1_dgrad" and plan.config["BLOCK_M"] == 64 and plan.pack_weight
    plan = input_grad.plan(gz, torch.empty(256, 256, 1, 1, device="meta", dtype=torch.float16),
                           (16, 256, 52, 52), **H100)
    assert plan.config["BLOCK_M"] == 128 and not plan.pack_weight


def test_split_rule():
    split_for = forward.Gemm1x1.split_for
    assert split_for(52, 32, 132) == 2  # ResNet-50 l4.1.conv1 at batch 32: one wave of 104 programs
    assert split_for(26, 9, 132) == 1  # too short a reduction to share
    assert split_for(208, 64, 132) == 1 and split_for(10, 100, None) == 1
    assert split_for(10, 100, 132) == 12


# ------------------------------------------------------------------------------- results (interpreter)

def _cl(t):
    return t.to(memory_format=torch.channels_last) if t.dim() == 4 else t


FORWARD_CASES = {
    # name: (x shape, k, groups, layout, options)
    "nhwc-c24-k40": ((2, 24, 7, 9), 40, 1, "cl", dict(bias=True, activation="relu")),
    "nhwc-c24-k24": ((3, 24, 5, 5), 24, 1, "cl", dict(bias=False)),
    "nchw-hw24": ((2, 20, 4, 6), 12, 1, "nchw", dict(bias=True)),
    "nchw-hw35": ((3, 12, 5, 7), 8, 1, "nchw", dict(bias=True, activation="silu")),
    "groups3-c24": ((2, 72, 5, 5), 48, 3, "cl", dict(bias=True)),
    "groups2-nchw": ((2, 12, 4, 4), 10, 2, "nchw", dict(bias=True)),
    "channel-slice": ((2, 24, 6, 6), 16, 1, "slice", dict(bias=True)),
    "spatial-crop": ((2, 16, 8, 10), 8, 1, "crop", dict(bias=False)),
    "unbatched": ((24, 5, 6), 16, 1, "nchw", dict(bias=True)),
    "k-tail-200": ((1, 200, 3, 5), 24, 1, "cl", dict(bias=True)),
    "even-k-128-rows-300": ((3, 128, 10, 10), 16, 1, "cl", dict(bias=False)),
    "residual-nchw": ((2, 24, 4, 4), 16, 1, "cl", dict(bias=True, residual="nchw", activation="gelu")),
}


def _make_input(shape, layout, dtype):
    if layout == "slice":  # a channels_last slice of channels, offset by 4 (8 bytes in fp16)
        n, c, h, w = shape
        return _cl(torch.randn(n, c + 8, h, w, dtype=dtype))[:, 4:4 + c]
    if layout == "crop":  # NCHW with the rows and columns cut: no pixel axes merge
        n, c, h, w = shape
        return torch.randn(n, c, h + 1, w + 2, dtype=dtype)[:, :, 1:, 2:]
    x = torch.randn(shape, dtype=dtype)
    return _cl(x) if layout == "cl" else x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("name", list(FORWARD_CASES))
def test_forward_layouts(name, dtype):
    shape, k, groups, layout, options = FORWARD_CASES[name]
    x = _make_input(shape, layout, dtype)
    c = shape[-3]
    w = torch.randn(k, c // groups, 1, 1, dtype=dtype) / math.sqrt(c // groups)
    b = torch.randn(k, dtype=dtype) if options.get("bias") else None
    act = options.get("activation")
    assert mcconv.explain(x, w, b, groups=groups).kernel == "gemm_1x1"
    expected = reference_conv2d(x, w, b, groups=groups, activation=None)
    residual = None
    if options.get("residual"):
        residual = torch.randn(expected.shape, dtype=dtype)
        expected = expected + residual.double()
    if act:
        expected = mcconv.ACTIVATIONS[act].reference(expected)
    y = mcconv.conv2d(x, w, b, groups=groups, activation=act, residual=residual)
    assert_conv_close(y, expected, dtype, c // groups)


DGRAD_CASES = {
    # name: (input shape, k, groups, dL/dz layout)
    "nhwc-k24": ((2, 40, 5, 7), 24, 1, "cl"),
    "nhwc-c24": ((2, 24, 5, 7), 40, 1, "cl"),
    "nchw-hw24": ((2, 20, 4, 6), 12, 1, "nchw"),
    "nchw-hw35": ((2, 12, 5, 7), 16, 1, "nchw"),
    "groups3": ((2, 72, 3, 5), 48, 3, "cl"),
    "slice": ((2, 16, 4, 4), 24, 1, "slice"),
    "unbatched": ((24, 5, 6), 16, 1, "nchw"),
    "k-tail-200": ((1, 24, 3, 5), 200, 1, "cl"),
    "k-major-weight": ((2, 40, 5, 7), 24, 1, "cl"),  # the layout of a per-call (KH, KW, C/g, K) packing
    "odd-channels": ((2, 7, 5, 6), 16, 1, "cl"),  # 7-element weight rows: packed K-major per call
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("name", list(DGRAD_CASES))
def test_input_gradient_layouts(name, dtype):
    shape, k, groups, layout = DGRAD_CASES[name]
    c = shape[-3]
    w = torch.randn(k, c // groups, 1, 1, dtype=dtype) / math.sqrt(k // groups)
    if name == "k-major-weight":
        w = w.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)
        assert w.stride()[0] == 1
    out_shape = (*shape[:-3], k, *shape[-2:])
    gz = _make_input(out_shape, layout, dtype)
    dx = mcconv.ops.conv2d_input_grad(gz, w, shape, groups=groups)
    xd = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.conv2d(xd, w.double(), groups=groups).backward(gz.double())
    assert mcconv.plans(torch.empty(shape, dtype=dtype, device="meta"), w.to("meta"), groups=groups,
                        direction="all")[1].kernel.name == "gemm_1x1_dgrad"
    assert_conv_close(dx, xd.grad, dtype, k // groups)


@pytest.mark.parametrize("role", ["forward", "input_grad"])
@pytest.mark.parametrize("split", [2, 3])
def test_split_partials_sum_to_the_result(role, split, monkeypatch):
    """SPLIT > 1: each program's fp32 partial of its share of the reduction blocks (the last share
    empty for 4 blocks over 3), laid out [split, N*P*Q, K]; their sum in order is the GEMM."""
    monkeypatch.setattr(forward.Gemm1x1 if role == "forward" else input_grad.Gemm1x1Dgrad, "split",
                        lambda self, spec, config, sm_count: split)
    monkeypatch.setattr(_plan, "_plans", {})
    c, k, groups = (200, 24, 1) if role == "forward" else (24, 200, 1)
    x = _cl(torch.randn(2, c, 3, 5))
    w = torch.randn(k, c // groups, 1, 1) / math.sqrt(200)
    if role == "forward":
        plan = forward.plan(x, w, None, groups=groups)
        gz, m_shape = None, (2 * 3 * 5, k)
        expected = reference_conv2d(x, w, groups=groups)
    else:
        gz = _cl(torch.randn(2, k, 3, 5))
        plan = input_grad.plan(gz, w, tuple(x.shape), groups=groups)
        m_shape = (2 * 3 * 5, c)
        xd = torch.zeros(x.shape, dtype=torch.float64, requires_grad=True)
        torch.nn.functional.conv2d(xd, w.double(), groups=groups).backward(gz.double())
        expected = xd.grad
    plan = plan.with_config({**plan.config, "BLOCK_K": 64})  # 4 blocks: shares of 2, 2, 0 (or 2, 2)
    assert plan.split == split and plan.meta["SPLIT"] == split and plan.grid[2] == split
    partial = torch.full((split, *m_shape), float("nan"))
    a = x if role == "forward" else gz
    plan.fn[plan.grid](a, w, w, partial, partial, w, *plan.args, **plan.meta)
    total = partial[0].clone()
    for s in range(1, split):
        total += partial[s]
    got = total.reshape(2, 3, 5, -1).permute(0, 3, 1, 2)
    assert_conv_close(got, expected, torch.float32, 200)


@pytest.mark.parametrize("hw, copies", [(7, True), (8, False)], ids=["7x7-copied", "8x8-in-place"])
def test_nchw_rows_that_load_badly_are_copied_to_channels_last(hw, copies, monkeypatch):
    """An NCHW fp16 operand whose pixel runs are not 8-byte aligned (7x7 maps: 49 pixels) is read
    from a per-call channels_last copy, in the forward (the input) and the input gradient (dL/dz);
    8x8 maps are read in place. Both match float64 torch, and the output keeps torch's layout."""
    monkeypatch.setattr(_plan, "_plans", {})
    x = torch.randn(2, 32, hw, hw, dtype=torch.float16)
    w = (torch.randn(48, 32, 1, 1) / math.sqrt(32)).to(torch.float16)
    fwd = forward.plan(x, w, None)
    assert fwd.kernel.name == "gemm_1x1" and (fwd.extra.get("input_copy") == "channels_last") == copies
    y = mcconv.conv2d(x, w)
    assert y.is_contiguous()
    assert_conv_close(y, reference_conv2d(x, w), torch.float16, 32)
    gz = torch.randn(2, 48, hw, hw, dtype=torch.float16)
    dgrad = input_grad.plan(gz, w, tuple(x.shape))
    assert dgrad.kernel.name == "gemm_1x1_dgrad" and dgrad.extra["copy_grad_z"] == copies
    xd = torch.zeros(x.shape, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.conv2d(xd, w.double()).backward(gz.double())
    assert_conv_close(input_grad.run(dgrad, gz, w), xd.grad, torch.float16, 48)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_forward_split_finishes_with_the_epilogue_pass(layout, monkeypatch):
    """On an H100 (132 SMs) a 1x1 layer with one tile and a long reduction splits it: fp32
    partials, then conv2d_split_epilogue_kernel adds them in order and applies bias, residual and
    activation (and stores the pre-activation for training), as the unsplit kernel would."""
    from mcconv import _backend

    monkeypatch.setattr(_plan, "_plans", {})
    monkeypatch.setattr(_backend, "sm_count", lambda device: 132)
    torch.manual_seed(0)
    x = torch.randn(2, 2048, 3, 3)
    if layout == "channels_last":
        x = _cl(x)
    w = torch.randn(48, 1024, 1, 1) / 32
    b, r = torch.randn(48), torch.randn(2, 48, 3, 3)
    plan = forward.plan(x, w, b, groups=2, activation="silu", residual=r)
    assert plan.kernel.name == "gemm_1x1" and plan.split == 4 and plan.grid[2] == 4  # 32 steps of 64 over 4
    with _backend.capture() as launches:  # records the launches (without running them)
        forward.run(plan, x, w, b, r, preact=True)
    assert [fn.__name__ for fn, *_ in launches] == ["conv1x1_gemm_kernel", "conv2d_split_epilogue_kernel"]
    y, z = forward.run(plan, x, w, b, r, preact=True)
    expected_z = reference_conv2d(x, w, b, groups=2) + r.double()
    assert_conv_close(z, expected_z, torch.float32, 1024)
    assert_conv_close(y, torch.nn.functional.silu(expected_z), torch.float32, 1024)
    assert torch.equal(y, mcconv.conv2d(x, w, b, groups=2, activation="silu", residual=r))  # a fixed order


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "unbatched"])
def test_input_gradient_split_sums_into_dx(layout, monkeypatch):
    """gemm_1x1_dgrad splits a long reduction over few tiles too (132 SMs): fp32 partials, then the
    split epilogue pass (epilogue off) writes dL/dx in its layout."""
    from mcconv import _backend

    monkeypatch.setattr(_plan, "_plans", {})
    monkeypatch.setattr(_backend, "sm_count", lambda device: 132)
    torch.manual_seed(0)
    gz = torch.randn(2, 2048, 3, 3)
    if layout == "channels_last":
        gz = _cl(gz)
    elif layout == "unbatched":
        gz = gz[0]
    w = torch.randn(2048, 24, 1, 1) / 32
    x_shape = (*gz.shape[:-3], 48, 3, 3)
    plan = input_grad.plan(gz, w, x_shape, groups=2)
    assert plan.kernel.name == "gemm_1x1_dgrad" and plan.split == 4  # 1024 out-channels a group: 32 steps of 32
    with _backend.capture() as launches:  # records the launches (without running them)
        input_grad.run(plan, gz, w)
    assert [fn.__name__ for fn, *_ in launches] == ["conv1x1_gemm_kernel", "conv2d_split_epilogue_kernel"]
    dx = input_grad.run(plan, gz, w)
    xd = torch.zeros(x_shape, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.conv2d(xd, w.double(), groups=2).backward(gz.double())
    assert dx.shape == x_shape and dx.stride() == plan.out_strides
    assert_conv_close(dx, xd.grad, torch.float32, 1024)


# ------------------------------------------------------------------------------- compiled (sm_90)

SCRIPT = COMPILE_PREAMBLE + textwrap.dedent("""
    import torch, mcconv
    from mcconv import _plan
    from mcconv.ops import forward, input_grad
    from mcconv.tools import inspect as I
    target = I.resolve_target("h100-sxm")
    where = dict(device_name=target.spec().table_name, sm_count=target.sm_count)

    def record(label, plan, a, w, out):
        fn, grid, args = plan.fn, plan.grid, (a, w, w, out, out, w, *plan.args)
        r = I._record(layer=label, direction="-", operation=plan.kernel.operation, kernel=plan.kernel.name,
                      jit_name=fn.__name__, dispatch=plan.dispatch, fn=fn, grid=grid, args=args, kwargs=dict(plan.meta),
                      target=target, dtype="-", trips=plan.kernel.loop_trips(plan.spec, plan.config, plan.split),
                      flops=None, elements=1, element_unit="-")
        rep = r.report
        loop = rep.main_loop if rep else None
        return {"error": r.error, "packed_weight": plan.pack_weight, "mma": f"{rep.mma_kind} {rep.mma_shape}" if rep else None,
                "loads": sorted({(ld.kind, ld.width, ld.operand) for ld in loop.loads}) if loop else [],
                "spills": rep.spill_store_bytes + rep.spill_load_bytes if rep else None,
                "warps": rep.occupancy.warps_per_sm if rep else None, "pressure": r.pressure,
                "effective": r.effective_pressure}

    out = {}
    cases = [("c24 k144", (8, 24, 28, 28), 144, "channels_last", "float16"),
             ("c96 k24", (8, 96, 28, 28), 24, "channels_last", "float16"),
             ("c64 k128", (8, 64, 28, 28), 128, "channels_last", "float16"),
             ("c64 k128 bf16", (8, 64, 28, 28), 128, "channels_last", "bfloat16"),
             ("c64 k128 nchw", (8, 64, 28, 28), 128, "contiguous", "float16"),
             ("c64 k128 tf32", (8, 64, 28, 28), 128, "channels_last", "tf32")]
    for label, shape, k, layout, dtype in cases:
        tdtype = torch.float32 if dtype == "tf32" else getattr(torch, dtype)
        with I.fp32_mode("tf32" if dtype == "tf32" else None):
            x = torch.empty(shape, device="meta", dtype=tdtype)
            x = x.to(memory_format=torch.channels_last) if layout == "channels_last" else x
            w = torch.empty(k, shape[1], 1, 1, device="meta", dtype=tdtype)
            fwd = forward.plan(x, w, None, **where)
            y = torch.empty_strided(fwd.out_shape, fwd.out_strides, device="meta", dtype=tdtype)
            dgrad = input_grad.plan(y, w, shape, **where)
            dx = torch.empty_strided(dgrad.out_shape, dgrad.out_strides, device="meta", dtype=tdtype)
            out[label + " fwd"] = record(label, fwd, x, w, y)
            wp = w.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1) if dgrad.pack_weight else w
            out[label + " dgrad"] = record(label, dgrad, y, wp, dx)
    # the split variant: 52 tiles of ResNet-50's l4.1.conv1 at batch 32, shared by 2 programs each
    forward.Gemm1x1.split = lambda self, spec, config, sm: self.split_for(52, 32, sm)
    _plan._plans.clear()
    x = torch.empty(32, 2048, 7, 7, device="meta", dtype=torch.float16).to(memory_format=torch.channels_last)
    w = torch.empty(512, 2048, 1, 1, device="meta", dtype=torch.float16)
    fwd = forward.plan(x, w, None, **where)
    part = torch.empty((fwd.split, 32 * 49, 512), device="meta", dtype=torch.float32)
    out["split"] = {**record("split", fwd, x, w, part), "split": fwd.split}
    print("GEMM-JSON " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gemm1x1")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp / "triton-cache")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode == COMPILE_SKIP:
        pytest.skip(proc.stdout.strip().removeprefix("SKIP: "))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("GEMM-JSON "))
    return json.loads(line.removeprefix("GEMM-JSON "))


def test_compiled_launches_use_wgmma_and_16_byte_copies(compiled):
    for label, r in compiled.items():
        assert r["error"] is None, (label, r["error"])
        assert r["mma"].startswith("wgmma"), (label, r["mma"])
        assert r["spills"] == 0 and r["warps"] >= 8, (label, r)
        loads = [tuple(ld) for ld in r["loads"]]
        assert {op for _, _, op in loads} == {"A", "B"}, (label, loads)
        assert all(kind == "cp.async" for kind, _, _ in loads), (label, loads)
        if label == "c64 k128 tf32 dgrad" and not r["packed_weight"]:
            # W[k, c] read in place is N-major: tf32 wgmma transposes it with 4-byte copies
            assert set(loads) == {("cp.async", 16, "A"), ("cp.async", 4, "B")}, (label, loads)
        else:
            assert all(width == 16 for _, width, _ in loads), (label, loads)


def test_compiled_issue_pressure(compiled):
    """Tiles of 64 or more columns stay under the tutorial GEMM's 0.44 (fp16/bf16) and the
    issue's 0.8 (tf32); 24-column tiles (memory-bound layers) under 1."""
    for label, r in compiled.items():
        small = label.startswith("c96 k24 fwd") or label == "c24 k144 dgrad"
        limit = 1.0 if small else 0.8 if "tf32" in label else 0.45
        assert r["effective"] is not None and r["effective"] <= limit, (label, r["effective"])
    assert compiled["split"]["split"] == 2
