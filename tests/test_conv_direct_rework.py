"""conv_direct's reworked paths (kernels/conv2d_fwd.py), against a float64 torch reference.

- the tap loop: one flattened loop over (tap, channel block) with per-row tap bit sets
  (TAP_BITS 32, 64) or coordinate compares (TAP_BITS 0, more than 64 taps), alignment facts
  from the host (X_ALIGN, W_ALIGN, C_ALIGN), partial channel blocks;
- the few-channel fold (FOLD_CP): a padded channels_last copy of the input and a (K, KH, RUN)
  weight, (kw, c) folded into one reduction run per kernel row, ROWS rows per step;
- the per-call copies: NCHW inputs to channels_last, channel-strided weights to channels_last;
- the split reduction (SPLIT > 1) with the epilogue after the fixed-order sum, planned here for
  an H100's 132 SMs (the interpreter has no SM count, so the library does not split there).

Every option of the forward meets each path: stride, padding (4-tuples, "same"), dilation,
groups, bias, residual, activations, the pre-activation store, int64 offsets, both memory
formats, non-contiguous views, unbatched inputs, fp32 / fp16 / bf16.
"""
import pytest
import torch

import mcconv
from mcconv import _backend, _plan
from mcconv.ops import forward
from reference import COMPILE_PREAMBLE, COMPILE_SKIP, DEVICE, assert_conv_close, reference_conv2d

HALF = [pytest.param(torch.float16, id="float16"), pytest.param(torch.bfloat16, id="bfloat16")]


@pytest.fixture
def fresh_plans(monkeypatch):
    monkeypatch.setattr(_plan, "_plans", {})


@pytest.fixture
def h100_split(monkeypatch):
    """Plan as on an H100 (132 SMs): small problems have few tiles, so the forward splits."""
    monkeypatch.setattr(_plan, "_plans", {})
    monkeypatch.setattr(_backend, "sm_count", lambda device: 132)


def _inputs(n, c, hw, k, kernel, dtype, groups=1, channels_last=False, bias=True, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(n, c, *hw).to(DEVICE, dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = (torch.randn(k, c // groups, *kernel) / (c // groups * kernel[0] * kernel[1]) ** 0.5).to(DEVICE, dtype)
    b = torch.randn(k).to(DEVICE, dtype) if bias else None
    return x, w, b


def _check(x, w, b=None, residual=None, **options):
    y = mcconv.conv2d(x, w, b, residual=residual, **options)
    activation = options.pop("activation", None)
    expected = reference_conv2d(x, w, b, **options)
    if residual is not None:
        expected = expected + residual.detach().double().cpu()
    if activation is not None:
        from mcconv import ACTIVATIONS

        expected = ACTIVATIONS[activation].reference(expected)
    assert y.shape == expected.shape and y.dtype == x.dtype
    assert_conv_close(y, expected, x.dtype, w.shape[1] * w.shape[2] * w.shape[3])
    return y


def _plan_of(x, w, b=None, **options):
    return mcconv.plans(x, w, b, **options)[0]


# ----------------------------------------------------------------------------- the tap loop

@pytest.mark.filterwarnings("ignore:Using padding=.same.")
@pytest.mark.parametrize("kernel, taps_bits", [((3, 3), 32), ((7, 7), 64), ((9, 9), 0), ((1, 33), 64), ((2, 40), 0)])
def test_tap_validity_bit_sets_and_compares(kernel, taps_bits, fresh_plans):
    x, w, b = _inputs(2, 12, (11, 13), 10, kernel, torch.float16, channels_last=True)
    options = dict(padding="same", activation="relu")
    plan = _plan_of(x, w, b, **options)
    assert plan.meta["TAP_BITS"] == taps_bits and plan.meta["FOLD_CP"] == 0
    _check(x, w, b, **options)


@pytest.mark.parametrize("c, layout, x_align", [(24, "channels_last", 8), (20, "channels_last", 4),
                                                (19, "channels_last", 1), (32, "contiguous", 8)])
def test_alignment_facts_from_the_host(c, layout, x_align, fresh_plans):
    """24 channels: 16-byte pixel rows (fp16) the compiler cannot see from the strides; 19: none.
    An NCHW input is read from its channels_last copy, whose rows are aligned."""
    x, w, b = _inputs(2, c, (9, 7), 16, (3, 3), torch.float16, channels_last=layout == "channels_last")
    options = dict(stride=(2, 1), padding=(1, 0, 2, 1))
    plan = _plan_of(x, w, b, **options)
    assert plan.meta["X_ALIGN"] == x_align and plan.meta["W_ALIGN"] == min(x_align, 8) or c == 19
    assert plan.meta["C_ALIGN"] == c & -c
    assert plan.extra.get("input_copy") == (None if layout == "channels_last" else "channels_last")
    assert plan.pack_weight  # a contiguous (K, C, 3, 3) weight: channels at stride 9
    _check(x, w, b, **options)


@pytest.mark.parametrize("k, groups, y_align", [(24, 1, 8), (20, 1, 4), (12, 2, 2), (19, 1, 1)])
def test_output_row_alignment_from_the_host(k, groups, y_align, fresh_plans):
    """Y_ALIGN / R_ALIGN: the channels_last output's (residual's) rows, the group's first channel
    included, in multiples of that many elements (12 channels in 2 groups: 6 a group, so 2).
    Without the fact a K = 100 output stored 2 bytes at a time and spilled kilobytes."""
    x, w, b = _inputs(2, 8, (5, 7), k, (3, 3), torch.float16, groups=groups, channels_last=True)
    r = torch.randn(2, k, 5, 7, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    plan = _plan_of(x, w, b, residual=r, padding=1, groups=groups)
    assert (plan.meta["Y_ALIGN"], plan.meta["R_ALIGN"], plan.meta["Y_RUN"]) == (y_align, y_align, 1)
    _check(x, w, b, residual=r, padding=1, groups=groups, activation="relu")
    assert _plan_of(x.contiguous(), w, b, padding=1, groups=groups).meta["Y_ALIGN"] == 1  # NCHW: along pixels


def test_narrow_channel_rows_take_smaller_tiles():
    """Rows in copies under 16 bytes (fp16 channels not a multiple of 8) cost an address each:
    half the channel block for such inputs (C = 36), 64 rows for such outputs wider than 64
    channels (K = 100); both spilled at the full tile (mcconv inspect, sm_90)."""
    def config(c, k, **options):
        x = torch.empty(8, c, 28, 28, dtype=torch.float16, device="meta").to(memory_format=torch.channels_last)
        w = torch.empty(k, c, 3, 3, dtype=torch.float16, device="meta").to(memory_format=torch.channels_last)
        return _plan_of(x, w, torch.empty(k, dtype=torch.float16, device="meta"), padding=1, **options).config

    assert config(36, 36, stride=2)["BLOCK_K"] == 32 and config(40, 64)["BLOCK_K"] == 64
    assert config(64, 100, activation="relu")["BLOCK_M"] == 64 and config(64, 96, activation="relu")["BLOCK_M"] == 128


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
def test_nchw_input_and_channels_last_weight(dtype, fresh_plans):
    """An NCHW input is converted per call; a channels_last weight is read in place and makes
    the output channels_last (torch's rule)."""
    x, w, b = _inputs(2, 16, (9, 9), 24, (3, 3), dtype)
    w = w.to(memory_format=torch.channels_last)
    plan = _plan_of(x, w, b, padding=1)
    assert plan.extra["input_copy"] == "channels_last" and not plan.pack_weight
    y = _check(x, w, b, padding=1, dilation=(1, 2))
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_natural_weight_layout_without_packing(monkeypatch, fresh_plans):
    """MCCONV_PACK_WEIGHTS=0: the weight is read through its (K, C, kH, kW) strides (gathers)."""
    monkeypatch.setenv("MCCONV_PACK_WEIGHTS", "0")
    x, w, b = _inputs(2, 16, (9, 9), 24, (3, 3), torch.float16, channels_last=True)
    plan = _plan_of(x, w, b, padding=1)
    assert not plan.pack_weight and plan.meta["W_ALIGN"] == 1
    _check(x, w, b, padding=1)


@pytest.mark.parametrize("view", ["x-channel-slice", "x-transposed", "w-transposed"])
def test_non_contiguous_views(view, fresh_plans):
    x, w, b = _inputs(2, 20, (9, 9), 12, (3, 3), torch.float16, channels_last=True)
    if view == "x-channel-slice":  # channels at unit stride, pixel stride 40: read in place
        x = torch.cat([x, x], dim=1)[:, 3:23]
        assert "input_copy" not in _plan_of(x, w, b, padding=1).extra
    elif view == "x-transposed":
        x = x.transpose(2, 3)
    else:
        w = w.transpose(2, 3)
    _check(x, w, b, padding=1, activation="gelu")


def test_unbatched_and_empty_batch(fresh_plans):
    x, w, b = _inputs(1, 16, (7, 9), 8, (3, 2), torch.float16)
    y = _check(x[0], w, b, padding="same")
    assert y.dim() == 3
    empty = mcconv.conv2d(x[:0], w, b, padding="same")
    assert empty.shape == (0, 8, 7, 9)


def test_int64_offsets(monkeypatch):
    monkeypatch.setattr(_plan, "INT32_LIMIT", 1)
    monkeypatch.setattr(_plan, "_plans", {})
    for c in (16, 3):  # the tap loop and the fold
        x, w, b = _inputs(2, c, (9, 7), 8, (3, 3), torch.float16, channels_last=True)
        r = torch.randn(2, 8, 5, 4, device=DEVICE, dtype=torch.float16)
        assert mcconv.explain(x, w, b, stride=2, padding=1).index_bits == 64
        _check(x, w, b, residual=r, stride=2, padding=1, activation="silu")


# ----------------------------------------------------------------------------- the fold

@pytest.mark.parametrize("dtype", HALF)
def test_stem(dtype, fresh_plans):
    """ResNet-50's stem: 7x7, stride 2, padding 3, three channels (two kernel rows per step)."""
    x, w, b = _inputs(2, 3, (23, 20), 16, (7, 7), dtype)
    plan = _plan_of(x, w, b, stride=2, padding=3)
    assert (plan.meta["FOLD_CP"], plan.meta["FOLD_RUN"], plan.extra["input_copy"]) == (4, 32, "fold")
    assert plan.pack_weight and plan.kernel.loop_trips(plan.spec, plan.config) == [4]
    _check(x, w, b, stride=2, padding=3, activation="relu")
    _check(x.to(memory_format=torch.channels_last), w, b, stride=2, padding=3)


@pytest.mark.parametrize("c, groups, kernel, options", [
    (1, 1, (3, 3), dict(padding=1)),
    (2, 1, (5, 3), dict(stride=(1, 2), padding=(2, 0, 1, 3))),
    (8, 1, (3, 3), dict(padding="same", dilation=2)),
    (6, 2, (3, 5), dict(stride=2, padding=(0, 1, 2, 2), dilation=(2, 1))),
    (15, 3, (2, 2), dict(padding="same")),
    (4, 1, (1, 1), dict(stride=2)),  # 1x1 stride 2: the run is shorter than a 16-wide block
    (3, 1, (5, 27), dict(padding=(2, 2, 13, 13))),  # a run of 108 (128 padded): the widest folded
])
def test_fold_options(c, groups, kernel, options, fresh_plans):
    x, w, b = _inputs(2, c, (11, 13), 12, kernel, torch.float16, groups=groups)
    plan = _plan_of(x, w, b, groups=groups, **options)
    assert plan.meta["FOLD_CP"] > 0
    _check(x, w, b, groups=groups, activation="hardswish", **options)


def test_fold_limits_and_block_choice(fresh_plans):
    x, w, _ = _inputs(1, 3, (9, 9), 8, (3, 33), torch.float16)  # run 33 * 4 > 128: the tap loop
    assert _plan_of(x, w, padding=(1, 16)).meta["FOLD_CP"] == 0
    x, w, _ = _inputs(1, 9, (9, 9), 8, (3, 3), torch.float16)  # 9 channels: the tap loop
    assert _plan_of(x, w, padding=1).meta["FOLD_CP"] == 0
    x, w, _ = _inputs(1, 3, (9, 9), 8, (3, 3), torch.float16)
    plan = _plan_of(x, w, padding=1)
    # run 16 (3 taps of 4 channels), 3 rows: the block shrinks to bucket(3 * 16) = 64 at most
    assert plan.meta["FOLD_RUN"] == 16 and plan.config["BLOCK_K"] <= 64
    for block_k, trips in ((16, [3]), (32, [2]), (64, [1])):
        assert plan.kernel.loop_trips(plan.spec, {"BLOCK_K": block_k}) == [trips[0]]
        forced = plan.with_config({**plan.config, "BLOCK_K": block_k})
        y = forward.run(forced, x, w)
        assert_conv_close(y, reference_conv2d(x, w, padding=1), torch.float16, 27)


def test_fold_reads_the_current_weights(fresh_plans):
    x, w, b = _inputs(1, 3, (8, 8), 4, (3, 3), torch.float16)
    first = mcconv.conv2d(x, w, b, padding=1)
    w.data.mul_(-2)  # bumps no version counter
    second = _check(x, w, b, padding=1)
    assert (first - second).abs().max() > 0.5


@pytest.mark.parametrize("dtype", HALF)
def test_fold_training(dtype, fresh_plans):
    """The training forward stores the pre-activation (silu) from the fold; gradients follow."""
    x, w, b = _inputs(2, 3, (9, 9), 8, (3, 3), dtype)
    x.requires_grad_(True)
    y = mcconv.conv2d(x, w, b, padding=1, activation="silu")
    y.float().sum().backward()
    ref_x = x.detach().double().requires_grad_(True)
    torch.nn.functional.silu(torch.nn.functional.conv2d(ref_x, w.double(), b.double(), padding=1)).sum().backward()
    assert_conv_close(x.grad, ref_x.grad, dtype, 8 * 9)


# ----------------------------------------------------------------------------- the split

def test_split_rule():
    r50 = 512 * 9  # ResNet-50's 3x3 at 7x7: 4608 products per output element, 72 steps of 64 channels
    assert forward._split_plan(104, 72, r50, 132) == 1  # 128x64 tiles: more than half the SMs busy
    assert forward._split_plan(52, 72, r50, 132) == 3  # 128x128 tiles
    assert forward._split_plan(52, 32, r50, 132) == 2  # each share keeps >= 16 steps
    assert forward._split_plan(10, 18, 576, 132) == 1  # a short reduction: the partials cost more
    assert forward._split_plan(132, 72, r50, 132) == 1
    assert forward._split_plan(8, 72, r50, None) == 1  # no GPU: no split


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_split_reduction(dtype, channels_last, h100_split):
    x, w, b = _inputs(2, 192, (4, 3), 24, (5, 5), dtype, groups=2, channels_last=channels_last)
    r = torch.randn(2, 24, 4, 3, device=DEVICE, dtype=dtype)
    options = dict(padding=2, groups=2)
    plan = _plan_of(x, w, b, residual=r, **options)
    assert plan.split > 1 and plan.meta["SPLIT"] == plan.split and plan.grid[2] == plan.split
    steps = 25 * -(-96 // plan.config["BLOCK_K"])
    assert plan.kernel.loop_trips(plan.spec, plan.config, plan.split) == [-(-steps // plan.split)]
    with _backend.capture() as launches:
        forward.run(plan, x, w, b, r)
    assert [fn.__name__ for fn, *_ in launches] == ["conv2d_fwd_kernel", "conv2d_split_epilogue_kernel"]
    y = _check(x, w, b, residual=r, activation="gelu", **options)
    assert torch.equal(y, mcconv.conv2d(x, w, b, residual=r, activation="gelu", **options))  # fixed order


def test_split_stores_the_pre_activation(h100_split):
    x, w, b = _inputs(1, 128, (5, 5), 16, (5, 5), torch.float16, channels_last=True)
    plan = _plan_of(x, w, b, padding=2, activation="silu")
    assert plan.split > 1
    y, z = forward.run(plan, x, w, b, preact=True)
    expected_z = reference_conv2d(x, w, b, padding=2)
    assert_conv_close(z, expected_z, torch.float16, 128 * 25)
    assert_conv_close(y, torch.nn.functional.silu(expected_z), torch.float16, 128 * 25)


def test_split_int64(monkeypatch, h100_split):
    monkeypatch.setattr(_plan, "INT32_LIMIT", 1)
    x, w, b = _inputs(1, 128, (5, 5), 16, (5, 5), torch.float16)
    plan = _plan_of(x[0], w, b, padding=2)
    assert plan.split > 1 and plan.index_64
    _check(x[0], w, b, padding=2, activation="relu")


# ----------------------------------------------------------------------------- host facts

def test_alignment_helpers():
    assert forward._pow2_dividing(64, 3584, 64 * 56, cap=8) == 8
    assert forward._pow2_dividing(24, 24 * 9, cap=8) == 8
    assert forward._pow2_dividing(20, 40, cap=8) == 4
    assert forward._pow2_dividing(0, 0, cap=8) == 8  # no offset to spoil it
    assert forward._pow2_dividing(19, cap=8) == 1
    assert forward._reachable((1, 5, 1, 3), (7, 1, 9, 5)) == (0, 1, 0, 5)


# ----------------------------------------------------------------------------- native compiles

# Launches the interpreter cannot vouch for, compiled for an H100 (sm_90) in a subprocess without
# TRITON_INTERPRET (tests/native_compile.py's geometries split nothing and fold nothing in tf32):
# (label, layer, dtype, layout, activation, expected kernels).
NATIVE_CASES = [
    ("stem fp16", "conv1", "float16", "channels_last", "relu", ["conv_direct"]),
    ("stem tf32 nchw", "conv1", "tf32", "contiguous", "silu", ["conv_direct"]),
    ("split bf16", "l4.0.conv2", "bfloat16", "channels_last", "relu", ["conv_direct", "split_epilogue"]),
    ("64x128 bf16 gelu", "l4.0.conv2", "bfloat16", "channels_last", "gelu", ["conv_direct"]),
    ("nchw runs fp16", "l1.0.conv2", "float16", "contiguous", "hardswish", ["conv_direct"]),
]

NATIVE_SCRIPT = COMPILE_PREAMBLE + """
from mcconv.tools import inspect as I
from mcconv.tools.suites import get_suite
layers = {l.name: l for l in get_suite("resnet50")}
out = {}
for label, name, dtype, layout, act, _ in json.loads(sys.argv[1]):
    rows = []
    for r in I.inspect_layer(layers[name], dtype, layout, "h100-sxm", bias=True, activation=act, direction="forward"):
        loop = r.report.main_loop if r.report else None
        rows.append({"kernel": r.kernel, "error": r.error, "spills": r.as_dict(report=False)["spill_bytes"],
                     "mma": r.report.mma_kind if r.report else None, "async": r.async_loads,
                     "pressure": r.effective_pressure, "warps": r.report.occupancy.warps_per_sm if r.report else 0,
                     "loads": [(ld.kind, ld.width) for ld in loop.loads] if loop else []})
    out[label] = rows
print("NATIVE-JSON " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("native") / "triton-cache")
    proc = subprocess.run([sys.executable, "-c", NATIVE_SCRIPT, json.dumps(NATIVE_CASES)], env=env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode == COMPILE_SKIP:
        pytest.skip(proc.stdout.strip().removeprefix("SKIP: "))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("NATIVE-JSON "))
    return json.loads(line.removeprefix("NATIVE-JSON "))


@pytest.mark.parametrize("case", NATIVE_CASES, ids=[c[0] for c in NATIVE_CASES])
def test_native_compile_structure(case, native):
    """Compiles for sm_90; wgmma; every main-loop load cp.async of >= 8 bytes; no spills;
    >= 8 resident warps; effective issue pressure within the rework's goals (0.6, tf32 0.8)."""
    label, _, dtype, _, _, kernels = case
    rows = native[label]
    assert [r["kernel"] for r in rows] == kernels
    for r in rows:
        assert r["error"] is None and r["spills"] == 0, r
        if r["kernel"] == "conv_direct":
            assert r["mma"] == "wgmma" and r["async"] == "all", r
            assert all(width >= 8 for _, width in r["loads"]), r
            assert r["warps"] >= 8 and r["pressure"] <= (0.8 if dtype == "tf32" else 0.6), r
