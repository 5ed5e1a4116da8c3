"""`mcconv inspect` (mcconv/tools/inspect.py) and the structure of every kernel it reports.

The compile checks hold the kernels' structure: each launch of a few representative calls
(3x3, 1x1, depthwise, stride 2; fp16 and tf32; forward and backward; sm_90, and sm_80 once)
must compile without spills, use wgmma on sm_90 wherever it uses tensor cores, load its dot
operands asynchronously, keep its declared loop trip counts in step with its SASS loop nest,
and stay within today's issue pressure (a change that makes a kernel worse fails here).

Compiling needs TRITON_INTERPRET unset, and conftest sets it on CPU-only machines before triton
is imported, so every compile runs in ONE subprocess (a shared Triton cache for its CLI runs)
whose JSON the tests share. About a minute and a half on 2 cores; skipped when this triton
cannot compile for NVIDIA GPUs.
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
from mcconv.tools import gpus
from mcconv.tools import inspect as inspect_tool
from mcconv.tools.suites import Conv3dLayer, ConvTranspose2dLayer, conv
from reference import COMPILE_PREAMBLE, COMPILE_SKIP


# (label, layer, dtype, direction, gpu): the representative calls, all channels_last with a bias.
CASES = [
    ("3x3", conv("c3", 8, 64, 28, 64, 3), "float16", "all", "h100-sxm", "relu"),
    ("3x3 s2", conv("c3s2", 8, 64, 28, 128, 3, stride=2), "float16", "all", "h100-sxm", None),
    ("1x1", conv("c1", 8, 64, 28, 128, 1), "float16", "all", "h100-sxm", None),
    ("1x1 24", conv("c1k24", 8, 96, 28, 24, 1), "float16", "all", "h100-sxm", None),  # MobileNetV2's project
    ("dw", conv("dw", 8, 96, 28, 96, 3, groups=96), "float16", "all", "h100-sxm", "silu"),
    ("dw s2", conv("dws2", 8, 96, 28, 96, 3, stride=2, groups=96), "float16", "all", "h100-sxm", None),
    ("3x3 tf32", conv("c3", 8, 64, 28, 64, 3), "tf32", "all", "h100-sxm", None),
    ("1x1 tf32", conv("c1", 8, 64, 28, 128, 1), "tf32", "all", "h100-sxm", None),
    ("3x3 a100", conv("c3", 8, 64, 28, 64, 3), "float16", "forward", "a100", None),
    # a split forward (512 channels at 7x7: 16 tiles on 132 SMs) and its epilogue pass
    ("3x3 split", conv("c5", 8, 512, 7, 512, 3), "float16", "forward", "h100-sxm", None),
    # conv3d on the depth kernel; its backward is the depth im2col's 2-D kernels
    ("3x3x3", Conv3dLayer("c3d", 2, 64, 8, 14, 14, 128, 3, 3, 3, padding=(1, 1, 1)), "float16", "all", "h100-sxm",
     "relu"),
    # conv_transpose2d: the input-gradient kernel with its epilogue (bias, silu) fused
    ("transposed", ConvTranspose2dLayer("up", 8, 64, 14, 14, 32, 4, 4, (2, 2), (1, 1)), "float16", "forward",
     "h100-sxm", "silu"),
    # channel counts whose fp16 rows are not whole 16-byte copies (8-byte ones): a 100-channel
    # output (its stores spilled 5.6-7.4 KB), input, and a DCGAN-like 100-channel code
    ("k100", conv("k100", 8, 64, 28, 100, 3), "float16", "forward", "h100-sxm", "relu"),
    ("c100", conv("c100", 8, 100, 28, 256, 3), "float16", "all", "h100-sxm", None),
    ("code", ConvTranspose2dLayer("code", 64, 100, 1, 1, 128, 4, 4), "float16", "forward", "h100-sxm", None),
    # the RGB stem: the forward's few-channel fold; the input gradient's phases as columns (sub-pixel)
    ("stem", conv("stem", 8, 3, 56, 64, 7, stride=2), "float16", "all", "h100-sxm", None),
    # a generator's RGB output layer: the sub-pixel kernel with its epilogue (bias, silu)
    ("rgb", ConvTranspose2dLayer("rgb", 8, 64, 28, 28, 3, 4, 4, (2, 2), (1, 1)), "float16", "forward", "h100-sxm",
     "silu"),
]

# The subprocess: every case through mcconv.tools.inspect, the reference GEMM, then the command
# lines (inspect with --json/--markdown/--save/--details, plan --inspect) against the same cache.
SCRIPT = COMPILE_PREAMBLE + textwrap.dedent("""
    import contextlib, io, os
    from mcconv.tools import inspect as I
    from mcconv.tools.cli import main
    from mcconv.tools.suites import Conv, Conv3dLayer, ConvTranspose2dLayer
    out, cases = {"cases": {}}, json.loads(sys.argv[1])
    for label, layer, dtype, direction, gpu, activation in cases:
        kind = Conv3dLayer if "kd" in layer else ConvTranspose2dLayer if "output_padding" in layer else Conv
        layer = kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in layer.items()})
        records = I.inspect_layer(layer, dtype, "channels_last", gpu, bias=True, activation=activation,
                                  direction=direction)
        rows = []
        for r in records:
            row = r.as_dict(report=False)
            rep = r.report
            row["mma_kind"] = rep.mma_kind if rep else None
            row["buffers"] = rep.buffers if rep else None
            row["ctas_per_sm"] = rep.occupancy.ctas_per_sm if rep and rep.occupancy else None
            loop = rep.main_loop if rep else None
            row["loads"] = [(ld.kind, ld.width, ld.operand) for ld in loop.loads] if loop else []
            row["uses_dot"] = r.dispatch is not None and __import__("mcconv").registry.get(r.kernel).uses_dot
            rows.append(row)
        out["cases"][label] = rows
    out["reference"] = I.reference_record("h100").as_dict(report=False)
    tmp = sys.argv[2]
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        out["inspect_rc"] = main(["inspect", "--input", "8,64,28,28", "--weight", "64,64,3,3", "--padding", "1",
                                  "--bias", "--activation", "relu", "--direction", "all", "--details", "--reference",
                                  "--json", os.path.join(tmp, "c3.json"), "--markdown", os.path.join(tmp, "c3.md"),
                                  "--save", os.path.join(tmp, "save")])
    out["inspect_text"] = text.getvalue()
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        out["plan_rc"] = main(["plan", "--input", "8,64,28,28", "--weight", "64,64,3,3", "--padding", "1",
                               "--inspect", "--json"])
    out["plan_json"] = text.getvalue()
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        main(["plan", "--input", "8,96,28,28", "--weight", "96,1,3,3", "--padding", "1", "--groups", "96",
              "--inspect"])
    out["plan_text"] = text.getvalue()
    print("INSPECT-JSON " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inspect")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp / "triton-cache")  # real compiles, and no other cache written
    cases = [(label, {f: getattr(layer, f) for f in layer.__dataclass_fields__}, dtype, direction, gpu, act)
             for label, layer, dtype, direction, gpu, act in CASES]
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cases), str(tmp)], env=env, capture_output=True,
                          text=True, timeout=900)
    if proc.returncode == COMPILE_SKIP:
        pytest.skip(proc.stdout.strip().removeprefix("SKIP: "))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("INSPECT-JSON "))
    result = json.loads(line.removeprefix("INSPECT-JSON "))
    result["tmp"] = str(tmp)
    return result


def _records(compiled):
    return [(label, r) for label, rows in compiled["cases"].items() for r in rows]


# ------------------------------------------------------------------------------- what is launched

# The launches of each case, in order: the library's dispatch and split rule on the target (an
# H100's 132 SMs split these weight and bias gradients, hence the split_sum passes; the depthwise
# weight gradient is not split here: its rule keeps >= 16 row iterations a program).
EXPECTED_KERNELS = {
    "3x3": ["conv_direct", "bias_act_grad", "split_sum", "conv_dgrad", "conv_wgrad", "split_sum"],
    "3x3 s2": ["conv_direct", "bias_act_grad", "split_sum", "conv_dgrad", "conv_wgrad", "split_sum"],
    "1x1": ["gemm_1x1", "bias_act_grad", "split_sum", "gemm_1x1_dgrad", "conv_wgrad", "split_sum"],
    "1x1 24": ["gemm_1x1", "bias_act_grad", "split_sum", "gemm_1x1_dgrad", "conv_wgrad", "split_sum"],
    "dw": ["depthwise", "bias_act_grad", "split_sum", "depthwise_dgrad", "depthwise_wgrad"],
    "dw s2": ["depthwise", "bias_act_grad", "split_sum", "depthwise_dgrad", "depthwise_wgrad"],
    "3x3 tf32": ["conv_direct", "bias_act_grad", "split_sum", "conv_dgrad", "conv_wgrad", "split_sum"],
    "1x1 tf32": ["gemm_1x1", "bias_act_grad", "split_sum", "gemm_1x1_dgrad", "conv_wgrad", "split_sum"],
    "3x3 a100": ["conv_direct"],
    "3x3 split": ["conv_direct", "split_epilogue"],
    "3x3x3": ["conv3d_direct", "bias_act_grad", "split_sum", "conv_dgrad", "conv_wgrad", "split_sum"],
    "transposed": ["conv_dgrad"],
    "k100": ["conv_direct"],
    "c100": ["conv_direct", "bias_act_grad", "split_sum", "conv_dgrad", "conv_wgrad", "split_sum"],
    "code": ["conv_dgrad"],
    "stem": ["conv_direct", "bias_act_grad", "split_sum", "conv_dgrad_subpixel", "conv_wgrad", "split_sum"],
    "rgb": ["conv_dgrad_subpixel"],
}


def test_inspect_compiles_every_launch_the_library_would_make(compiled):
    for label, rows in compiled["cases"].items():
        assert [r["kernel"] for r in rows] == EXPECTED_KERNELS[label], label
        for r in rows:
            assert r["error"] is None, (label, r["kernel"], r["error"])
            assert r["variant"], (label, r["kernel"])
    # the training forward of silu stores the pre-activation: another variant than inference's
    dw = compiled["cases"]["dw"][0]
    assert dw["config"] and dw["target"] == "sm_90" and dw["dtype"] == "float16"
    assert compiled["cases"]["3x3 tf32"][0]["dtype"] == "tf32"
    # a split forward's epilogue pass is the forward's; conv3d's backward launches are the im2col's
    assert [r["direction"] for r in compiled["cases"]["3x3 split"]] == ["forward", "forward"]
    assert [r["direction"] for r in compiled["cases"]["3x3x3"]] == ["forward"] + ["backward"] * 5


def test_no_launched_variant_spills(compiled):
    spills = [(label, r["kernel"], r["spill_bytes"]) for label, r in _records(compiled) if r["spill_bytes"]]
    assert not spills


def test_tensor_core_kernels_use_wgmma_on_sm90_and_mma_sync_on_sm80(compiled):
    for label, r in _records(compiled):
        if not r["uses_dot"]:
            assert r["mma_kind"] == "none", (label, r["kernel"])
        elif r["target"] == "sm_90":
            assert r["mma_kind"] == "wgmma", (label, r["kernel"], r["mma"])
            assert r["mma"].endswith("k16" if r["dtype"] == "float16" else "k8"), (label, r["kernel"], r["mma"])
        else:
            assert r["mma_kind"] == "mma.sync", (label, r["kernel"], r["mma"])


def test_tensor_core_kernels_load_their_operands_asynchronously(compiled):
    """Every global load of a tensor-core main loop is cp.async into a pipeline of >= 2 buffers,
    for both dot operands (channels_last; 24 channels too: the host tells the kernels the
    alignment that 24 * 2 bytes allows)."""
    for label, r in _records(compiled):
        if not r["uses_dot"]:
            continue
        assert r["async_loads"] == "all", (label, r["kernel"], r["loads"])
        assert {operand for _, _, operand in r["loads"]} == {"A", "B"}, (label, r["kernel"], r["loads"])
        assert r["buffers"] >= 2, (label, r["kernel"])


def test_loop_trip_counts_fit_every_kernels_sass_nest(compiled):
    """Kernel.loop_trips describes the loops around each main loop; a mismatch leaves no nest (and a note)."""
    for label, r in _records(compiled):
        assert r["trip_counts"], (label, r["kernel"])
        assert r["nest"] is not None, (label, r["kernel"], r["notes"])
        assert len(r["nest"]["levels"]) == len(r["trip_counts"]), (label, r["kernel"])
        assert r["warp_instructions"] > 0 and r["bytes"] > 0


# Today's figures (the kernels after the rework of issue 10), per case and launch in the order
# of EXPECTED_KERNELS: (main-loop pressure, effective pressure) for tensor-core kernels, (warp
# instructions per element, issue/memory ratio) for the others; the larger of triton 3.9.0's and
# 3.6.0's, rounded up. A figure above today's by more than MARGIN fails: a change made a kernel
# worse. (Before the rework, e.g. "3x3": conv_direct (0.704, 1.46), conv_wgrad (2.93, 2.93), the
# depthwise forward (3.12, 1.81): benchmarks/static/before-*.)
TODAY = {  # the launches of EXPECTED_KERNELS, in order
    "3x3": [(0.59, 0.59), (0.668, 0.577), (104.0, 3.66), (0.629, 0.629), (0.708, 0.708), (5.56, 0.215)],
    "3x3 s2": [(0.28, 0.28), (0.48, 0.826), (16.2, 2.16), (0.594, 0.594), (0.747, 0.747), (1.84, 0.246)],
    "1x1": [(0.225, 0.225), (0.48, 0.826), (51.7, 1.83), (0.43, 0.43), (0.375, 0.375), (6.46, 0.229)],
    "1x1 24": [(0.836, 0.836), (3.04, 5.22), (557.0, 19.7), (0.403, 0.403), (0.719, 0.719), (8.61, 0.305)],
    "dw": [(1.17, 0.676), (1.22, 1.05), (68.9, 2.44), (0.633, 0.548), (0.61, 0.528)],
    "dw s2": [(1.11, 0.382), (0.48, 0.826), (21.6, 2.88), (0.842, 1.17), (1.13, 0.392)],
    "3x3 tf32": [(0.532, 0.532), (0.674, 0.582), (106.0, 3.66), (0.61, 0.61), (0.958, 0.958), (5.6, 0.211)],
    "1x1 tf32": [(0.225, 0.225), (0.674, 0.582), (52.7, 1.83), (0.407, 0.407), (0.676, 0.676), (6.59, 0.229)],
    "3x3 a100": [(0.44, 0.44)],
    "3x3 split": [(0.28, 0.28), (0.762, 0.147)],
    "3x3x3": [(0.325, 0.325), (0.668, 0.577), (28.0, 1.95), (0.329, 0.329), (0.407, 0.407), (3.24, 0.225)],
    "transposed": [(1.1, 1.1)],
    "k100": [(0.426, 0.426)],
    "c100": [(0.516, 0.516), (0.48, 0.826), (25.9, 0.914), (0.579, 0.579), (0.692, 0.692), (3.95, 0.221)],
    "code": [(0.68, 0.68)],
    "stem": [(0.485, 0.485), (0.48, 0.826), (104.0, 3.66), (0.579, 0.579), (0.708, 0.708), (9.17, 0.245)],
    "rgb": [(0.571, 0.571)],
}
MARGIN = 1.05


def _figures(r):
    if r["mma_kind"] not in (None, "none"):
        return r["pressure"], r["effective_pressure"]
    return r["warp_instructions_per_element"], r["issue_memory_ratio"]


def test_issue_pressure_stays_within_todays_values(compiled):
    worse = []
    for label, rows in compiled["cases"].items():
        for i, (r, today) in enumerate(zip(rows, TODAY[label])):
            for name, value, limit in zip(("pressure", "over the reduction"), _figures(r), today):
                if value is None or value > limit * MARGIN:
                    worse.append(f"{label} #{i} {r['kernel']}: {name} {value} > today's {limit} (+5 %)")
    assert not worse, "\n".join(worse)
    assert set(TODAY) == set(compiled["cases"]) and all(len(TODAY[k]) == len(EXPECTED_KERNELS[k]) for k in TODAY)


def test_reference_gemm_through_inspect(compiled):
    ref = compiled["reference"]
    assert (ref["mma"], ref["async_loads"], ref["spill_bytes"]) == ("wgmma m64n128k16", "all", 0)
    assert 0.35 <= ref["pressure"] <= 0.55 and ref["effective_pressure"] == pytest.approx(ref["pressure"])
    assert ref["ceiling_tflops"] == pytest.approx(989.4)


# ------------------------------------------------------------------------------- command lines

def test_inspect_command_outputs(compiled):
    assert compiled["inspect_rc"] == 0
    text = compiled["inspect_text"]
    lines = text.splitlines()
    assert lines[0].startswith("mcconv inspect: H100 SXM5 80GB (sm_90, 132 SMs")
    assert lines[1].startswith("GEMM 4096x4096x4096 ref matmul_reference")
    assert lines[2].startswith("conv fwd conv_direct ") and "wgmma m64n64k16" in lines[2] and "ceiling" in lines[2]
    assert "legend:" in text and "main loop [" in text and "effective pressure" in text
    doc = json.load(open(os.path.join(compiled["tmp"], "c3.json")))
    assert [r["kernel"] for r in doc["records"]] == EXPECTED_KERNELS["3x3"]
    assert set(doc["variants"]) == {r["variant"] for r in doc["records"]}
    assert doc["target"] == "sm_90" and doc["reference"]["kernel"] == "matmul_reference"
    md = open(os.path.join(compiled["tmp"], "c3.md")).read()
    assert "mcconv inspect --input 8,64,28,28 --weight 64,64,3,3 --padding 1" in md
    assert md.count("\n| ") == 2 + 6  # header, reference, six launches
    for r in doc["records"] + [doc["reference"]]:
        folder = os.path.join(compiled["tmp"], "save", "sm_90", f"{r['jit_name']}-{r['variant']}")
        for suffix in ("ttgir", "ptx", "cubin", "sass"):
            assert os.path.getsize(os.path.join(folder, f"{r['jit_name']}.{suffix}")) > 0


def test_plan_shows_the_issue_bound_ceiling(compiled):
    assert compiled["plan_rc"] == 0
    plan = json.loads(compiled["plan_json"])
    assert plan["kernel"] == "conv_direct" and plan["issue_error"] is None
    assert 0 < plan["issue_ceiling_tflops"] <= plan["peak_tflops"]
    assert plan["effective_pressure"] >= plan["issue_pressure"] > 0
    text = compiled["plan_text"]
    assert "roofline ceiling" in text and "compiled  fwd depthwise 64x16" in text and "issue-bound ceiling" in text


# ------------------------------------------------------------------------------- no compiler

def _plan(*shapes, **options):
    x = torch.empty(shapes[0], device="meta", dtype=torch.float16).to(memory_format=torch.channels_last)
    w = torch.empty(shapes[1], device="meta", dtype=torch.float16)
    return mcconv.plans(x, w, None, direction="all", device_name="NVIDIA_H100_80GB_HBM3", sm_count=132, **options)


def test_loop_trips_follow_the_device_code():
    fwd, dgrad, wgrad = _plan((8, 96, 28, 28), (64, 96, 3, 3), padding=1)
    # one flattened loop over (tap, channel block): 9 taps x 3 blocks of 32, a third each under a split of 3
    assert fwd.kernel.loop_trips(fwd.spec, {"BLOCK_K": 32}) == [27]
    assert fwd.kernel.loop_trips(fwd.spec, {"BLOCK_K": 32}, 3) == [9]
    assert dgrad.kernel.loop_trips(dgrad.spec, {"BLOCK_K": 32}) == [18]  # stride 1: 9 taps x 2 blocks of 64 out-channels
    pixels = 8 * 28 * 28
    assert wgrad.kernel.loop_trips(wgrad.spec, {"BLOCK_K": 64}, 7) == [math.ceil(math.ceil(pixels / 7) / 64)]
    # stride 2, 3x3, padding 1: the fullest phase (odd rows and columns) takes 2 x 2 taps, 1 block each
    _, dgrad, _ = _plan((8, 16, 28, 28), (32, 16, 3, 3), stride=2, padding=1)
    assert dgrad.kernel.loop_trips(dgrad.spec, {"BLOCK_K": 32}) == [4]
    # depthwise, channel multiplier 2: the row loop (multiplier x kernel rows) inside the band's rows
    fwd, dgrad, wgrad = _plan((8, 16, 28, 28), (32, 1, 5, 5), stride=2, padding=2, groups=16)
    assert fwd.kernel.loop_trips(fwd.spec, fwd.config) == [5, 4]
    assert dgrad.kernel.loop_trips(dgrad.spec, dgrad.config) == [6, 4]
    assert wgrad.kernel.loop_trips(wgrad.spec, wgrad.config, 2) == [7, 1]
    gemm = _plan((8, 64, 28, 28), (32, 64, 1, 1))
    assert [p.kernel.name for p in gemm] == ["gemm_1x1", "gemm_1x1_dgrad", "conv_wgrad"]
    assert gemm[0].kernel.loop_trips(gemm[0].spec, {"BLOCK_K": 16}) == [4]
    assert gemm[1].kernel.loop_trips(gemm[1].spec, {"BLOCK_K": 16}) == [2]  # reduces over the 32 out-channels
    # the stem (C=3): taps and channels folded, 4 padded channels x 7 taps in runs of 32, two kernel rows a step
    stem = _plan((8, 3, 224, 224), (64, 3, 7, 7), stride=2, padding=3)[0]
    assert (stem.meta["FOLD_CP"], stem.meta["FOLD_RUN"]) == (4, 32)
    assert stem.kernel.loop_trips(stem.spec, {"BLOCK_K": 64}) == [4]
    from mcconv.registry import Kernel

    assert Kernel().loop_trips(fwd.spec, {}) == []  # the default: unknown


def test_gpu_targets_agree_with_the_datasheet_peaks():
    per_clock = {90: 4096, 80: 2048}  # dense fp16 FLOP per clock per SM
    for key, target in inspect_tool.TARGETS.items():
        spec = gpus.GPUS[key]
        peak = target.sm_count * per_clock[target.arch] * target.clock_ghz * 1e9 / 1e12
        assert peak == pytest.approx(spec.tensor_tflops["float16"], rel=0.01), key
    assert inspect_tool.resolve_target("a100").arch == 80 and inspect_tool.resolve_target(None).key == "h100-sxm"
    with pytest.raises(ValueError, match="gpu"):
        inspect_tool.resolve_target("no-such-gpu")


def test_mcconv_inspect_is_a_lazy_attribute():
    code = ("import sys, mcconv; assert 'mcconv.tools.inspect' not in sys.modules and 'triton' not in sys.modules; "
            "f = mcconv.inspect; assert f.__module__ == 'mcconv.tools.inspect' and 'triton' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    with pytest.raises(AttributeError):
        mcconv.no_such_attribute  # noqa: B018


def test_inspect_refuses_the_interpreter():
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("the interpreter is not active in this process")
    x = torch.empty(1, 4, 8, 8, device="meta")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        mcconv.inspect(x, torch.empty(4, 4, 3, 3, device="meta"))
