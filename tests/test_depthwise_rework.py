"""The depthwise kernels after the rework (kernels/depthwise.py, kernels/depthwise_bwd.py): the
lane walk (COLS output columns per lane, bands of rows, carried window rows), the tap-vector
weight load, both tile orientations (channels-last, NCHW), the row loop of large windows and
channel multipliers, the stride phases of the input gradient with their missing taps, and the
weight gradient's tap groups, NCHW sub-blocks and split.

Everything against float64 torch on the CPU (Triton's interpreter; natively on a GPU). Shapes stay
tiny: under the interpreter the time grows with the number of programs and steps. The last test
compiles a few launches for sm_90 (no GPU needed) and checks the rework's static figures.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import mcconv
from mcconv import _plan, ops
from mcconv.ops import forward, input_grad, weight_grad
from mcconv.ops.forward import Depthwise
from reference import COMPILE_PREAMBLE, COMPILE_SKIP, DEVICE, assert_conv_close, reference_conv2d



def _tensor(shape, dtype, layout):
    t = torch.randn(shape, device=DEVICE).to(dtype)
    if layout == "channels_last" and t.dim() == 4:
        return t.to(memory_format=torch.channels_last)
    if layout == "strided":  # every other column of a wider tensor: no 16-byte alignment fact holds
        wide = torch.zeros((*shape[:-1], 2 * shape[-1]), device=DEVICE, dtype=dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t


def _pad_args(padding):
    if isinstance(padding, tuple) and len(padding) == 4:
        top, bottom, left, right = padding
        return (left, right, top, bottom), 0
    return None, padding


def _reference_grads(x, w, gz, stride, padding, dilation, groups):
    x64 = x.detach().double().cpu().requires_grad_()
    w64 = w.detach().double().cpu().requires_grad_()
    pad, conv_pad = _pad_args(padding)
    z = F.conv2d(F.pad(x64, pad) if pad else x64, w64, None, stride, conv_pad, dilation, groups)
    z.backward(gz.detach().double().cpu())
    return x64.grad, w64.grad


# (N, C, H, W, multiplier, kernel, stride, padding, dilation): each exercises a part of the walk
GEOMETRIES = {
    "3x3-cols4": (2, 16, 9, 12, 1, (3, 3), 1, 1, 1),  # Q = 12: COLS 4, carried rows, unroll 2
    "3x3-cols2-bands": (1, 16, 21, 10, 1, (3, 3), 1, 1, 1),  # COLS 2, several bands, a partial last one
    "3x3-q7": (2, 24, 7, 7, 1, (3, 3), 1, 1, 1),  # Q = 7: lanes of 4 columns, one wasted
    "3x3-s2": (2, 16, 11, 13, 1, (3, 3), 2, 1, 1),  # one carried row; dgrad phases of 1 and 2 taps
    "s2-d2": (1, 8, 10, 9, 1, (3, 3), 2, 2, 2),  # dilation divides the stride: carried; gcd 2 phases
    "s1-d2": (1, 8, 9, 9, 1, (3, 3), 1, 2, 2),  # dilation 2 at stride 1: no row shared
    "s3-k2": (1, 8, 10, 11, 1, (2, 2), 3, 0, 1),  # dgrad phases without any tap
    "asym-pad": (2, 8, 8, 7, 1, (3, 3), 2, (0, 2, 1, 0), 1),
    "5x3-stride21": (1, 8, 9, 9, 1, (5, 3), (2, 1), (2, 1), (1, 2)),
    "5x5-rows": (1, 8, 8, 9, 1, (5, 5), 1, 2, 1),  # 25 taps: the row loop (forward), tap groups (wgrad)
    "7x7-rows": (1, 8, 9, 8, 1, (7, 7), 2, 3, 1),
    "mult2": (2, 4, 8, 7, 2, (3, 3), 1, 1, 1),  # dgrad's row loop over (multiplier, slot row)
    "mult3-s2": (1, 3, 9, 8, 3, (3, 3), 2, 1, 1),
    "k24": (1, 24, 6, 8, 1, (3, 3), 1, 1, 1),  # 24 channels: a masked channel block of 16, 8-aligned
    "k40": (1, 40, 5, 6, 1, (3, 3), 1, 1, 1),
    "narrow": (2, 8, 3, 2, 1, (3, 3), 1, 1, 1),  # Q = 2 < COLS
    "1x1-image": (2, 8, 1, 1, 1, (3, 3), 1, 1, 1),
}


def _check_all(name, dtype=torch.float32, layout="channels_last", bias=True, activation=None, residual=False,
               config=None):
    n, c, h, w_, mult, (kh, kw), stride, padding, dilation = GEOMETRIES[name]
    x = _tensor((n, c, h, w_), dtype, layout)
    w = _tensor((c * mult, 1, kh, kw), dtype, "contiguous")
    b = torch.randn(c * mult, device=DEVICE).to(dtype) if bias else None
    z_shape = mcconv.ConvSpec.from_shapes(x.shape, w.shape, stride, padding, dilation, c).output_shape
    r = _tensor(z_shape, dtype, layout) if residual else None
    fplan = forward.plan(x, w, b, stride, padding, dilation, c, activation, r)
    assert fplan.kernel.name == "depthwise"
    if config is not None:
        fplan = fplan.with_config(config)
    y, z = forward.run(fplan, x, w, b, r, preact=True)
    ref_z = reference_conv2d(x, w, b, stride, padding, dilation, c)
    if r is not None:
        ref_z = ref_z + r.double().cpu()
    assert_conv_close(z, ref_z, dtype, reduction_length=kh * kw)
    if activation is not None:
        assert_conv_close(y, mcconv.ACTIVATIONS[activation].reference(ref_z), dtype, reduction_length=kh * kw)

    gz = _tensor(z_shape, dtype, layout)
    ref_dx, ref_dw = _reference_grads(x, w, gz, stride, padding, dilation, c)
    dplan = input_grad.plan(gz, w, x.shape, stride, padding, dilation, c)
    wplan = weight_grad.plan(gz, x, w.shape, stride, padding, dilation, c)
    assert (dplan.kernel.name, wplan.kernel.name) == ("depthwise_dgrad", "depthwise_wgrad")
    if config is not None:
        dplan, wplan = dplan.with_config(config), wplan.with_config(config)
    dx = input_grad.run(dplan, gz, w)
    assert dx.stride() == dplan.out_strides
    assert_conv_close(dx, ref_dx, dtype, reduction_length=mult * kh * kw)
    dw = weight_grad.run(wplan, gz, x)
    assert_conv_close(dw, ref_dw, dtype, reduction_length=gz.numel() // (c * mult))


@pytest.mark.parametrize("name", GEOMETRIES)
def test_geometries_channels_last(name, fresh_plans):
    _check_all(name)


@pytest.mark.parametrize("name", ["3x3-cols4", "3x3-s2", "s3-k2", "5x5-rows", "mult2", "k24"])
def test_geometries_nchw(name, fresh_plans):
    """NCHW: [channels, lanes] tiles; the weight gradient's 32-lane sub-blocks."""
    _check_all(name, layout="contiguous")


@pytest.mark.parametrize("name", ["3x3-cols4", "3x3-s2", "mult2"])
def test_geometries_strided_views(name, fresh_plans):
    _check_all(name, layout="strided", bias=False)


@pytest.mark.parametrize("name", ["3x3-cols4", "3x3-s2", "k24"])
def test_fp16(name, fresh_plans):
    _check_all(name, dtype=torch.float16)


@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("name", ["3x3-cols4", "3x3-q7"])
def test_epilogue_options(name, activation, fresh_plans):
    """bias, residual, activation and the pre-activation store of the training forward."""
    _check_all(name, activation=activation, residual=True)


@pytest.mark.parametrize("config", [{"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1},
                                    {"BLOCK_M": 16, "BLOCK_N": 64, "num_warps": 4, "num_stages": 1},
                                    {"BLOCK_M": 128, "BLOCK_N": 16, "num_warps": 8, "num_stages": 1}])
def test_other_tiles(config, fresh_plans):
    for name, layout in (("3x3-cols4", "channels_last"), ("3x3-s2", "contiguous")):
        _check_all(name, layout=layout, config=config)


def test_unbatched_and_mixed_layouts(fresh_plans):
    x = torch.randn(8, 9, 10, device=DEVICE)  # unbatched: batch stride 0
    w = torch.randn(8, 1, 3, 3, device=DEVICE)
    y = mcconv.conv2d(x, w, None, 1, 1, 1, 8)
    assert_conv_close(y, reference_conv2d(x[None], w, None, 1, 1, 1, 8)[0], torch.float32, 9)
    # NCHW input, channels_last weight: a channels_last output from [channels, lanes] tiles
    x = torch.randn(2, 8, 9, 10, device=DEVICE)
    wc = w.to(memory_format=torch.channels_last)
    y = mcconv.conv2d(x, wc, None, 2, 1, 1, 8)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_conv_close(y, reference_conv2d(x, w, None, 2, 1, 1, 8), torch.float32, 9)


def test_int64_offsets(monkeypatch, fresh_plans):
    monkeypatch.setattr(_plan, "INT32_LIMIT", 1)
    for name in ("3x3-s2", "mult2", "5x5-rows"):
        _check_all(name)
    assert {plan.dispatch.index_bits for plan in _plan._plans.values()} == {64}


@pytest.mark.parametrize("split", [1, 2, 5])
def test_wgrad_split_is_deterministic(monkeypatch, split, fresh_plans):
    monkeypatch.setattr(_plan, "split_count", lambda tiles, steps, sm_count: split)
    x = torch.randn(2, 16, 13, 12, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(16, 1, 3, 3, device=DEVICE)
    gz = torch.randn(2, 16, 13, 12, device=DEVICE).to(memory_format=torch.channels_last)
    plan = weight_grad.plan(gz, x, w.shape, 1, 1, 1, 16).with_config(
        {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1})  # several lane blocks to share
    assert plan.split == split
    dw = weight_grad.run(plan, gz, x)
    _, ref_dw = _reference_grads(x, w, gz, 1, 1, 1, 16)
    assert_conv_close(dw, ref_dw, torch.float32, reduction_length=2 * 13 * 12)
    assert torch.equal(dw, weight_grad.run(plan, gz, x))


def test_wgrad_cut_channel_blocks_take_32_lanes():
    """Channel counts that cut a 16-channel block (C = 100, 104, 24) spilled the weight
    gradient at 64 lanes: 32 lanes a block there; whole blocks (C = 96) keep 64."""
    def lanes(c, dtype=torch.float16):
        x = torch.empty(32, c, 28, 28, dtype=dtype, device="meta").to(memory_format=torch.channels_last)
        gz = torch.empty_like(x)
        plan = weight_grad.plan(gz, x, (c, 1, 3, 3), 1, 1, 1, c, device_name="NVIDIA_H100_80GB_HBM3", sm_count=132)
        assert plan.kernel.name == "depthwise_wgrad"
        return plan.config["BLOCK_M"]

    assert lanes(100) == lanes(104) == lanes(24) == lanes(100, torch.float32) == 32
    assert lanes(96) == lanes(144) == 64


def test_dgrad_missing_taps_meet_no_infinity(fresh_plans):
    """At stride 2 a phase has fewer taps than slots; a slot that is no tap is skipped, not
    multiplied by a zero weight, so an infinite dY reaches only the pixels torch reaches."""
    gz = torch.randn(1, 4, 5, 5, device=DEVICE)
    gz[0, 1, 2, 2] = float("inf")
    w = torch.rand(4, 1, 3, 3, device=DEVICE) + 0.5
    dx = ops.conv2d_input_grad(gz, w, (1, 4, 10, 10), 2, 1, 1, 4)
    ref = torch.nn.grad.conv2d_input((1, 4, 10, 10), w.double(), gz.double(), 2, 1, 1, 4)
    assert torch.equal(torch.isnan(dx), torch.isnan(ref)) and torch.equal(torch.isinf(dx), torch.isinf(ref))
    finite = torch.isfinite(ref)
    assert_conv_close(dx[finite], ref[finite], torch.float32, reduction_length=9)


def test_host_rules_agree_with_the_kernels():
    from mcconv._kernels.depthwise import carried_rows, row_shift, unroll_rows, window_columns

    for kh in (1, 2, 3, 5):
        for stride in (1, 2, 3):
            for dil in (1, 2, 3):
                taps = kh * 3
                row_loop = taps > Depthwise.MAX_REGISTER_TAPS
                assert Depthwise.unroll(kh, stride, dil, taps) == unroll_rows(kh, stride, dil, row_loop)
                carry = carried_rows(kh, stride, dil, row_loop)
                assert 0 <= carry < kh or kh == carry == 0
                if carry:  # the rows carried to the next output row are the ones it reads again
                    shift = row_shift(kh, stride, dil)
                    assert {(r + shift) * dil for r in range(carry)} <= {r * dil + stride for r in range(kh)}
    for width in (1, 2, 3, 7, 12, 14, 56, 112):
        cols = Depthwise.cols(width, 3, 1, 1)
        assert 1 <= cols <= 4 and (width % cols == 0 or cols == 4 or width < 4)
        assert window_columns(cols, 3, 2, 1) <= Depthwise.MAX_WINDOW
    for rows, unroll in ((112, 2), (7, 1), (7, 2), (1, 2), (14, 1)):
        band = Depthwise.band_rows(32, rows, rows, 144, 4, unroll)
        assert band % unroll == 0 and Depthwise.MIN_BAND <= band or band >= rows
        assert band <= max(Depthwise.MAX_BAND, unroll)


def test_plans_declare_their_loops():
    x = torch.empty(8, 96, 28, 28, device="meta", dtype=torch.float16).to(memory_format=torch.channels_last)
    w = torch.empty(96, 1, 3, 3, device="meta", dtype=torch.float16)
    fwd, dgrad, wgrad = mcconv.plans(x, w, None, 1, 1, 1, 96, direction="all", device_name="NVIDIA_H100_80GB_HBM3",
                                     sm_count=132)
    band = fwd.args[9]
    assert fwd.kernel.loop_trips(fwd.spec, fwd.config) == [-(-band // 2)]  # 2 output rows per iteration
    assert fwd.meta["COLS"] == 4 and fwd.meta["CHANNELS_LAST"] and fwd.meta["X_ALIGN"] == 16
    assert len(dgrad.kernel.loop_trips(dgrad.spec, dgrad.config)) == 1
    assert len(wgrad.kernel.loop_trips(wgrad.spec, wgrad.config, wgrad.split)) == 2
    # large windows and channel multipliers add the row loop
    w5 = torch.empty(192, 1, 5, 5, device="meta", dtype=torch.float16)
    fwd, dgrad, _ = mcconv.plans(x, w5, None, 1, 2, 1, 96, direction="all")
    assert fwd.meta["ROW_LOOP"] and len(fwd.kernel.loop_trips(fwd.spec, fwd.config)) == 2
    assert dgrad.meta["ROW_LOOP"] and dgrad.kernel.loop_trips(dgrad.spec, dgrad.config)[0] == 2 * 5


# ------------------------------------------------------------------------------- compiled for sm_90

SCRIPT = COMPILE_PREAMBLE + textwrap.dedent("""
    from mcconv.tools import inspect as I
    from mcconv.tools.suites import conv
    out = []
    for label, c, h, s, layout in json.loads(sys.argv[1]):
        for r in I.inspect_layer(conv(label, 32, c, h, c, 3, stride=s, groups=c), "float16", layout, "h100-sxm",
                                 direction="all"):
            if r.kernel.startswith("depthwise"):
                out.append({"label": label, "kernel": r.kernel, "error": r.error, "notes": r.notes,
                            "per_element": r.warp_instructions_per_element,
                            "spills": r.report.spill_store_bytes + r.report.spill_load_bytes if r.report else None,
                            "warps": r.report.occupancy.warps_per_sm if r.report else None})
    print("DW-JSON " + json.dumps(out))
""")


# Not yet at the goal of 1.0: the stride-2 weight gradient (triton 3.9: 1.33 warp instructions per
# output element, 3.6: see benchmarks/static/after-mobilenetv2-float16.md). A bound, so that it
# cannot get worse unseen.
PER_ELEMENT = {("dw192_28_s2", "depthwise_wgrad"): 1.4}


def test_static_figures_for_sm90(tmp_path):
    """MobileNetV2's depthwise layers (two of them) compiled for an H100: every launch at most 1.0
    warp instruction per output element (PER_ELEMENT's exception aside) (3x3 fp16, channels-last), no spills, >= 8 warps per SM;
    the NCHW launches without spills."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    cases = [("dw144_56_s1", 144, 56, 1, "channels_last"), ("dw192_28_s2", 192, 28, 2, "channels_last"),
             ("dw144_56_nchw", 144, 56, 1, "contiguous")]
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cases)], env=env, capture_output=True, text=True,
                          timeout=900)
    if proc.returncode == COMPILE_SKIP:
        pytest.skip(proc.stdout.strip().removeprefix("SKIP: "))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("DW-JSON ")).removeprefix("DW-JSON "))
    assert len(rows) == 9
    for r in rows:
        assert r["error"] is None and r["spills"] == 0 and r["warps"] >= 8, r
        if not r["label"].endswith("nchw"):
            assert r["per_element"] is not None and r["per_element"] <= PER_ELEMENT.get((r["label"], r["kernel"]), 1.0), r
