"""The reworked weight-gradient kernel (kernels/conv2d_wgrad.py, mcconv/ops/weight_grad.py's ConvWgrad).

Its paths against float64 torch through the launcher: the per-tap rectangle walk (carries, flat
operands, the peeled partial step, channel wrap-around, SWAP), FOLD (taps folded into the tile's
columns: the stem's 3 channels, 64 x 64 x 3 x 3-like layers; window classes at every border; an
NCHW input copied to channels_last; unbatched; int64), split counts 1..many, determinism, and
IEEE specials through FOLD's discarded window columns. Then the host rules without a launch
(orientation, FOLD's parameters and classes, the split, slots and grid). Last, one subprocess
compiles a few of the new variants for sm_90 (structure and issue pressure; skipped without
an NVIDIA-capable triton). Shapes stay tiny: the interpreter's time grows with the programs.
"""
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import mcconv
from mcconv import _plan, ops
from mcconv.ops import weight_grad
from reference import COMPILE_PREAMBLE, COMPILE_SKIP, DEVICE, assert_conv_close, backward_config

WGRAD = weight_grad.ConvWgrad
H100 = {"device_name": "NVIDIA_H100_80GB_HBM3", "sm_count": 132}


def _pad(x, padding):
    if isinstance(padding, tuple) and len(padding) == 4:
        top, bottom, left, right = padding
        return F.pad(x, (left, right, top, bottom)), 0
    return x, padding


def _reference(x, w_shape, gz, stride, padding, dilation, groups):
    xr, pad = _pad(x.detach().double().cpu(), padding)
    g = gz.detach().double().cpu()
    if xr.dim() == 3:
        xr, g = xr.unsqueeze(0), g.unsqueeze(0)
    return torch.nn.grad.conv2d_weight(xr, w_shape, g, stride, pad, dilation, groups)


def _tensors(x_shape, w_shape, stride, padding, dilation, groups, dtype, layout):
    x = torch.randn(x_shape, device=DEVICE).to(dtype)
    xr, pad = _pad(x.double(), padding)
    y_shape = F.conv2d(xr.cpu() if xr.dim() == 4 else xr.cpu().unsqueeze(0), torch.zeros(w_shape, dtype=torch.float64),
                       None, stride, pad, dilation, groups).shape
    gz = torch.randn(y_shape if x.dim() == 4 else y_shape[1:], device=DEVICE).to(dtype)
    if layout == "channels_last" and x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)
        gz = gz.to(memory_format=torch.channels_last)
    return x, gz


def _wgrad_plan():
    return next(p for p in _plan._plans.values() if p.kernel.name == "conv_wgrad")


def check(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, dtype=torch.float32, layout="channels_last"):
    """dL/dw against float64 torch; returns the launch's plan."""
    _plan._plans.clear()
    x, gz = _tensors(x_shape, w_shape, stride, padding, dilation, groups, dtype, layout)
    dw = ops.conv2d_weight_grad(gz, x, w_shape, stride, padding, dilation, groups)
    assert dw.shape == tuple(w_shape) and dw.dtype == dtype and dw.is_contiguous()
    pixels = gz.numel() // w_shape[0]
    assert_conv_close(dw, _reference(x, w_shape, gz, stride, padding, dilation, groups), dtype, pixels)
    return _wgrad_plan()


# ------------------------------------------------------------------------------- numerics

# (input, weight, stride, padding, dilation, groups): FOLD cases (one group, no dilation, taps > 1,
# few input channels or few channels both ways, rows of W*C elements 8-byte aligned or better).
FOLD_CASES = {
    "stem": ((1, 3, 20, 24), (8, 3, 7, 7), 2, 3, 1, 1),  # fp16: 4 window phases, border classes
    "stem-asymmetric": ((2, 3, 21, 16), (8, 3, 5, 3), (2, 1), (2, 1, 0, 2), 1, 1),
    "pad-beyond-kernel": ((1, 3, 9, 8), (4, 3, 3, 3), 1, (4, 1, 0, 3), 1, 1),  # rows with no tap at all
    "small-3x3": ((2, 16, 9, 10), (16, 16, 3, 3), 1, 1, 1, 1),  # 64 x 64 x 3 x 3-like: C % VEC == 0
    "small-3x3-s2": ((1, 16, 11, 8), (8, 16, 3, 3), 2, 1, 1, 1),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("name", FOLD_CASES)
def test_fold(name, dtype):
    plan = check(*FOLD_CASES[name], dtype=dtype)
    assert plan.meta["FOLD_WIDTH"] > 0 and not plan.meta["SWAP"]


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_fold_copies_other_layouts_to_channels_last(layout):
    x_shape, w_shape, *opts = FOLD_CASES["stem"]
    _plan._plans.clear()
    x, gz = _tensors(x_shape, w_shape, *opts, torch.float16, "contiguous")
    if layout == "strided":  # every other column of a wider tensor
        wide = torch.zeros((*x.shape[:-1], 2 * x.shape[-1]), dtype=x.dtype, device=DEVICE)
        wide[..., ::2] = x
        x = wide[..., ::2]
    dw = ops.conv2d_weight_grad(gz, x, w_shape, *opts)
    plan = _wgrad_plan()
    assert plan.meta["FOLD_WIDTH"] > 0 and plan.extra["channels_last_input"]
    assert_conv_close(dw, _reference(x, w_shape, gz, *opts), torch.float16, gz.numel() // w_shape[0])


def test_fold_unbatched():
    x_shape, w_shape, *opts = FOLD_CASES["stem"]
    plan = check(x_shape[1:], w_shape, *opts, dtype=torch.float16, layout="contiguous")
    assert plan.meta["FOLD_WIDTH"] > 0


# The stem's classes through the asymmetric stem (8 window phases): a launch of "stem" takes the
# interpreter about 20 s.
@pytest.mark.parametrize("name, split", [("stem-asymmetric", 2), ("small-3x3", 1), ("small-3x3", 2),
                                         ("small-3x3", 9)])
def test_fold_any_split_is_bitwise_reproducible(monkeypatch, name, split):
    monkeypatch.setattr(_plan, "split_count", lambda tiles, steps, sm_count: split)
    x_shape, w_shape, *opts = FOLD_CASES[name]
    plan = check(x_shape, w_shape, *opts, dtype=torch.float16)
    assert plan.split == split and plan.grid[2] == WGRAD().slots(plan.spec, split) >= 2
    x, gz = _tensors(x_shape, w_shape, *opts, torch.float16, "channels_last")
    first = ops.conv2d_weight_grad(gz, x, w_shape, *opts)
    assert torch.equal(first, ops.conv2d_weight_grad(gz, x, w_shape, *opts))


def test_narrow_channel_rows_halve_the_pixel_step_of_128x128_tiles():
    """An operand in 8-byte copies (C = 100 in fp16), each with its own carried pixel offset: a
    128x128 tile takes 32 pixels a step (64 spilled 336-428 B); narrower tiles keep 64."""
    assert backward_config("conv_wgrad", 100, 256)["BLOCK_K"] == 32
    assert backward_config("conv_wgrad", 100, 64)["BLOCK_K"] == 64
    assert backward_config("conv_wgrad", 96, 256)["BLOCK_K"] == 64


def test_fold_int64(monkeypatch):
    monkeypatch.setattr(_plan, "INT32_LIMIT", 1)
    assert check(*FOLD_CASES["small-3x3"], dtype=torch.float16).index_64  # the stem's classes alike, slower


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("special", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_fold_specials_stay_in_their_taps(special):
    """A window holds its pixel's run and its neighbours' channels (columns FOLD discards): an Inf
    or NaN there must reach exactly the dL/dw entries float64 torch puts it in."""
    x_shape, w_shape, *opts = FOLD_CASES["stem"]
    _plan._plans.clear()
    x, gz = _tensors(x_shape, w_shape, *opts, torch.float32, "channels_last")
    x[0, 1, 7, 9] = special
    dw = ops.conv2d_weight_grad(gz, x, w_shape, *opts)
    assert _wgrad_plan().meta["FOLD_WIDTH"] > 0
    expected = _reference(x, w_shape, gz, *opts)
    for test in (torch.isnan, torch.isinf):
        assert torch.equal(test(dw.cpu()), test(expected)), test.__name__
    assert torch.isinf(expected).any() or torch.isnan(expected).any()


# The per-tap walk: (input, weight, stride, padding, dilation, groups)
TAP_CASES = {
    "swap-wrap": ((2, 24, 5, 7), (8, 24, 1, 1), 1, 0, 1, 1),  # C > K: input channels on the rows
    "swap-3x3": ((1, 96, 6, 5), (8, 96, 3, 3), 1, 1, 1, 1),
    "1x1-s2-strided-x": ((2, 16, 9, 8), (24, 16, 1, 1), 2, 0, 1, 1),  # flat dL/dy, carried x
    "dilated": ((1, 8, 10, 9), (8, 8, 3, 3), 1, 2, 2, 1),  # no FOLD: dilation
    "groups": ((2, 16, 7, 7), (16, 8, 3, 3), 1, 1, 1, 2),  # no FOLD: groups
    "tiny-image-many-rows": ((5, 8, 3, 2), (8, 4, 2, 2), 1, (1, 0, 0, 1), 1, 2),  # steps span images
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("name", TAP_CASES)
def test_tap_walk(name, dtype):
    plan = check(*TAP_CASES[name], dtype=dtype)
    assert plan.meta["FOLD_WIDTH"] == 0
    spec = plan.spec
    assert plan.meta["SWAP"] == (spec.c_per_group > spec.k_per_group)


def test_flat_operands_follow_the_strides():
    """FLAT_* only where the operand's pixels are one progression: dense 1x1 stride 1, not a view."""
    plan = check((2, 16, 5, 6), (12, 16, 1, 1), dtype=torch.float16)
    assert plan.meta["FLAT_DY"] and plan.meta["FLAT_X"] and plan.meta["VEC_X"] == 8
    plan = check((2, 16, 5, 6), (12, 16, 1, 1), dtype=torch.float16, layout="contiguous")  # NCHW
    assert not plan.meta["FLAT_DY"] and not plan.meta["FLAT_X"] and plan.meta["VEC_X"] == 1
    plan = check(*TAP_CASES["1x1-s2-strided-x"], dtype=torch.float16)
    assert plan.meta["FLAT_DY"] and not plan.meta["FLAT_X"]


@pytest.mark.parametrize("split", [1, 3, 7])
def test_partial_steps_and_splits(monkeypatch, split):
    """Shares that end inside a step (the peeled, masked step) with any split."""
    monkeypatch.setattr(_plan, "split_count", lambda tiles, steps, sm_count: split)
    plan = check((3, 8, 7, 5), (8, 4, 3, 3), 1, 1, 1, 2, dtype=torch.float32)
    assert plan.split == split and plan.grid[2] == split


def test_int64_tap_walk(monkeypatch):
    monkeypatch.setattr(_plan, "INT32_LIMIT", 1)
    for name in ("swap-3x3", "tiny-image-many-rows"):
        assert check(*TAP_CASES[name]).index_64


# ------------------------------------------------------------------------------- host rules

def _h100_plan(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, dtype=torch.float16,
               channels_last=True):
    x = torch.empty(x_shape, device="meta", dtype=dtype)
    w = torch.empty(w_shape, device="meta", dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    plans = mcconv.plans(x, w, None, stride, padding, dilation, groups, direction="backward", **H100)
    return next(p for p in plans if p.kernel.name == "conv_wgrad")


def test_stem_folds_its_taps_into_224_columns():
    plan = _h100_plan((32, 3, 224, 224), (64, 3, 7, 7), 2, 3)
    width, period, vec = WGRAD().fold(plan.spec)
    assert (width, period, vec) == (32, 4, 8)  # 21-element runs in 16-byte aligned windows, 4 phases
    assert plan.meta["FOLD_WIDTH"] == 32 and plan.meta["VEC_X"] == 8
    # 7 rows x 32 = 224 columns in two 128-column tiles (a 256-column tile spills with triton 3.6)
    assert (plan.config["BLOCK_M"], plan.config["BLOCK_N"]) == (64, 128) and plan.grid[:2] == (2, 1)


def test_small_channel_3x3_folds_and_large_ones_do_not():
    assert WGRAD().fold(_h100_plan((32, 64, 56, 56), (64, 64, 3, 3), 1, 1).spec) == (192, 1, 8)
    assert WGRAD().fold(_h100_plan((32, 128, 28, 28), (128, 128, 3, 3), 1, 1).spec) is None
    assert WGRAD().fold(_h100_plan((32, 64, 56, 56), (64, 64, 1, 1)).spec) is None
    assert WGRAD().fold(_h100_plan((8, 3, 32, 32), (8, 3, 3, 3), 1, 2, dilation=2).spec) is None


@pytest.mark.parametrize("geometry", [
    ((32, 3, 224, 224), (64, 3, 7, 7), 2, 3),
    ((2, 3, 21, 16), (8, 3, 5, 3), (2, 1), (2, 1, 0, 2)),
    ((1, 3, 9, 8), (4, 3, 3, 3), 1, (4, 1, 0, 3)),
    ((3, 16, 9, 10), (16, 16, 3, 3), 1, 1),
    ((1, 5, 12, 16), (8, 5, 4, 4), 3, 2),
])
def test_fold_classes_partition_the_pixels_by_window_offset(geometry):
    """From the definition: interior rows read KH rows inside the image, interior columns a window
    inside the row; every border row and column is a class of its own, the interior columns one per
    phase. The classes' sizes are the host's (in the kernel's order), and within a class the window
    sits at one offset from the pixel's run (tap row shift, element shift), holding all of it."""
    x_shape, w_shape, stride, padding = geometry
    spec = mcconv.ConvSpec.from_shapes(x_shape, w_shape, stride, padding, dtype=torch.float16)
    kernel = WGRAD()
    width, period, vec = kernel.fold(spec)
    (sh, sw), pt, pl, c = spec.stride, spec.padding[0], spec.padding[2], spec.c
    rows, cols, offsets = {}, {}, {}
    for p in range(spec.p):
        ih0 = p * sh - pt
        rows[p] = "in" if ih0 >= 0 and ih0 + spec.kh <= spec.h else p
    inner = [q for q in range(spec.q) if (q * sw - pl) * c >= 0
             and (q * sw - pl) * c // vec * vec + width <= spec.w * c]
    for q in range(spec.q):
        cols[q] = ("in", (q - inner[0]) % period) if q in inner else q
    for p in range(spec.p):
        ih0 = p * sh - pt
        row0 = min(max(ih0, 0), spec.h - spec.kh)
        for q in range(spec.q):
            e0 = (q * sw - pl) * c
            w0 = min(max(e0 // vec * vec, 0), spec.w * c - width)
            assert w0 % vec == 0 and w0 + width <= spec.w * c and 0 <= row0 <= spec.h - spec.kh
            assert w0 <= max(e0, 0) and min(e0 + spec.kw * c, spec.w * c) <= w0 + width
            offsets.setdefault((rows[p], cols[q]), set()).add((row0 - ih0, e0 - w0))
    assert all(len(found) == 1 for found in offsets.values())
    counts = sorted(spec.n * sum(1 for p in rows for q in cols if (rows[p], cols[q]) == key) for key in offsets)
    assert counts == sorted(size for size in kernel.fold_classes(spec) if size)
    assert sum(kernel.fold_classes(spec)) == spec.n * spec.p * spec.q


def test_split_keeps_two_waves_and_fold_slots_near_the_split():
    for x_shape, w_shape, stride, padding in [((32, 64, 56, 56), (64, 64, 1, 1), 1, 0),
                                              ((32, 3, 224, 224), (64, 3, 7, 7), 2, 3),
                                              ((32, 512, 14, 14), (512, 512, 3, 3), 2, 1)]:
        plan = _h100_plan(x_shape, w_shape, stride, padding)
        programs = math.prod(plan.grid)
        pixels = plan.spec.n * plan.spec.p * plan.spec.q
        # about two waves of 132 SMs (FOLD: the classes' shares, sized to total about the split)
        assert programs >= 0.9 * 2 * 132 or programs * 256 > pixels * plan.grid[0], (w_shape, plan.grid)
        assert plan.grid[2] <= plan.split + 4  # FOLD: the classes' rounding costs few extra buffers


def test_narrow_layers_keep_a_warpgroups_rows():
    """MobileNetV2's 24- and 16-channel sides: the wider side on BLOCK_M >= 64 (wgmma's rows)."""
    for x_shape, w_shape in [((32, 96, 56, 56), (24, 96, 1, 1)), ((32, 32, 112, 112), (16, 32, 1, 1)),
                             ((32, 16, 112, 112), (96, 16, 1, 1))]:
        plan = _h100_plan(x_shape, w_shape)
        assert plan.config["BLOCK_M"] >= 64 and plan.config["BLOCK_N"] >= 16
        assert plan.meta["SWAP"] == (x_shape[1] > w_shape[0])


def test_loop_trips_of_the_walk():
    plan = _h100_plan((8, 64, 28, 28), (128, 64, 3, 3), 1, 1)
    pixels = 8 * 28 * 28
    assert plan.kernel.loop_trips(plan.spec, plan.config, 5) == [math.ceil(math.ceil(pixels / 5) / plan.config["BLOCK_K"])]


# ------------------------------------------------------------------------------- compiled for sm_90

SCRIPT = COMPILE_PREAMBLE + textwrap.dedent("""
    from mcconv.tools import inspect as I
    from mcconv.tools.suites import conv
    out = {}
    for label, layer, dtype in [("stem", conv("stem", 8, 3, 64, 64, 7, stride=2, padding=3), "float16"),
                                ("3x3 c64", conv("c3", 8, 64, 28, 64, 3), "bfloat16"),
                                ("1x1 24", conv("c1", 8, 96, 28, 24, 1), "float16"),
                                ("3x3 c128 tf32", conv("c3", 8, 128, 14, 128, 3), "tf32")]:
        recs = [r for r in I.inspect_layer(layer, dtype, "channels_last", "h100-sxm", direction="backward")
                if r.kernel == "conv_wgrad"]
        out[label] = [dict(r.as_dict(report=False), mma_kind=r.report.mma_kind if r.report else None) for r in recs]
    print("WGRAD-JSON " + json.dumps(out, default=str))
""")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("wgrad") / "triton-cache")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode == COMPILE_SKIP:
        pytest.skip(proc.stdout.strip().removeprefix("SKIP: "))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("WGRAD-JSON "))
    return json.loads(line.removeprefix("WGRAD-JSON "))


def test_compiled_structure(compiled):
    """wgmma (64 rows) with every main-loop load cp.async, no spills, >= 8 warps an SM, and the
    issue pressure of the rework (fp16/bf16 <= 0.6 where a tile is 64 columns or more; tf32 <= 0.8).
    The FOLD layers (the stem, 64 x 64 x 3 x 3) at 0.72: their 128-column tiles (64 x 256 reached
    0.55 but spills with triton 3.6; see ConvWgrad.limits)."""
    limits = {"stem": 0.72, "3x3 c64": 0.72, "1x1 24": 0.8, "3x3 c128 tf32": 0.8}
    for label, records in compiled.items():
        (r,) = records
        assert r["error"] is None and r["mma_kind"] == "wgmma", (label, r["mma"])
        assert r["async_loads"] == "all" and r["spill_bytes"] == 0, (label, r["async_loads"], r["spill_bytes"])
        assert r["effective_pressure"] <= limits[label], (label, r["effective_pressure"])


def _elementwise_wgrad(x, w_shape, gz, stride, padding, dilation):
    """float64 dL/dw as the definition's sum of products over the zero-padded input, element by
    element (no BLAS, whose kernels may skip zero operands, so that 0 * inf gives NaN)."""
    xr, pad = _pad(x.detach().double().cpu(), padding)
    cols = F.unfold(xr, w_shape[2:], dilation=dilation, padding=pad, stride=stride)  # (N, C*KH*KW, P*Q)
    g = gz.detach().double().cpu().flatten(2)  # (N, K, P*Q)
    return (g[:, :, None, :] * cols[:, None, :, :]).sum((0, 3)).view(w_shape)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("where", [(0, 1, 0, 0), (1, 0, 2, 4), (0, 2, 3, 1)], ids=["corner", "edge", "interior"])
def test_nonfinite_grad_gives_nan_through_the_padding(where):
    """A NaN or Inf in dL/dz reaches dL/dw as the definition puts it: times the zero padding too
    (0 * inf = NaN; torch's CPU paths differ among themselves here, its autograd through a padded
    F.conv2d gives these NaNs), while the kernel walks only in-image pixels and the wrapper
    restores them (stride 2, dilation 2, asymmetric padding: taps that read padding on one side)."""
    x_shape, w_shape, opts = (2, 4, 9, 11), (3, 4, 3, 3), ((2, 2), (2, 1, 0, 3), (2, 2), 1)
    x, gz = _tensors(x_shape, w_shape, *opts, torch.float32, "channels_last")
    gz = gz.clone()
    gz[where] = float("inf")
    dw = ops.conv2d_weight_grad(gz, x, w_shape, *opts)
    expected = _elementwise_wgrad(x, w_shape, gz, *opts[:3])
    assert torch.equal(torch.isnan(dw), torch.isnan(expected))
    assert torch.equal(torch.isinf(dw), torch.isinf(expected)) and torch.isinf(dw).any()
    assert torch.isnan(dw).any() == (where != (0, 2, 3, 1))  # the interior pixel meets no padding
    finite = torch.isfinite(expected)
    assert_conv_close(dw[finite], expected[finite], torch.float32, gz.numel() // w_shape[0])
