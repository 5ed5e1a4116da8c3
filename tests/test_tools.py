"""The tools around the kernels: `mcconv plan`, the suites, `mcconv bench` and `mcconv tune`.

Nothing here times anything for real: bench and tune run with a FAKE timer (on the CPU through
Triton's interpreter, with tiny shapes), so these tests check structure, arithmetic and files.
"""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

import mcconv
from mcconv import _plan, ops, registry, tiles
from mcconv.tools import bench, gpus, suites, tune
from mcconv.tools import plan as planner
from mcconv.tools.cli import main
from mcconv.tools.problems import layer_tensors
from mcconv.tools.suites import conv

H100 = gpus.GPUS["h100-sxm"]
TINY = [conv("tiny3x3", 1, 8, 6, 8, 3), conv("tiny1x1", 1, 8, 6, 16, 1), conv("tinydw", 1, 8, 6, 8, 3, groups=8)]
SMALL_CANDIDATES = {
    "conv_direct": [dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=8, num_warps=4, num_stages=2),
                    dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16, GROUP_M=8, num_warps=4, num_stages=2)],
    "gemm_1x1": [dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=8, num_warps=4, num_stages=2),
                 dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16, GROUP_M=8, num_warps=2, num_stages=2)],
    "depthwise": [dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1),
                  dict(BLOCK_M=32, BLOCK_N=16, num_warps=4, num_stages=1)],
}


FORWARD = ["conv_direct", "gemm_1x1", "depthwise"]  # the forward kernels' tables (gemm_1x1 also serves 1x1 dgrad)


class FakeTimer:
    """Calls the function once (so it must run) and returns ever smaller times: the last one timed wins."""

    def __init__(self):
        self.calls = 0

    def __call__(self, fn):
        fn()
        self.calls += 1
        return 1.0 / self.calls


@pytest.fixture
def fresh_tables():
    """Forget cached tile tables and plans before and after a test that writes tables."""
    def clear():
        tiles.load_table.cache_clear()
        _plan._plans.clear()

    clear()
    yield
    clear()


# ----------------------------------------------------------------------------------- plan

def test_plan_numbers_for_a_resnet_layer():
    layer = conv("l1.conv2", 32, 64, 56, 64, 3)
    a = planner.analyze(layer, "float16", "channels_last", "h100-sxm")
    assert a.output_shape == (32, 64, 56, 56)
    assert a.flops == 2 * 32 * 64 * 56 * 56 * 64 * 9 == 7_398_752_256
    act = 32 * 64 * 56 * 56
    assert a.bytes_by_tensor == {"input": 2 * act, "weight": 2 * 64 * 64 * 9, "output": 2 * act}
    assert a.intensity == pytest.approx(7_398_752_256 / (4 * act + 2 * 64 * 64 * 9))
    assert a.ridge == pytest.approx(989.4 / 3.35)
    assert a.intensity < a.ridge and a.bound == "memory"  # 287 FLOP/B against a ridge of 295
    assert a.roofline_tflops == pytest.approx(a.intensity * 3.35)
    assert a.dispatch.kernel == "conv_direct"
    assert a.device_name == "NVIDIA_H100_80GB_HBM3"


def test_plan_bound_follows_dtype_and_kernel():
    seed = suites.seed()[0]
    fp32 = planner.analyze(seed, "float32", "channels_last", "h100-sxm")
    assert fp32.peak_key == "tf32" and fp32.peak_tflops == 494.7  # torch's default: TF32 convolutions
    assert fp32.bound == "compute" and fp32.roofline_tflops == 494.7
    dw = planner.analyze(conv("dw", 32, 144, 56, 144, 3, groups=144), "float16", "contiguous", "a100")
    assert dw.dispatch.kernel == "depthwise" and not dw.tensor_cores
    assert dw.peak_tflops == 19.5 and dw.bound == "memory"  # no tensor cores: the FP32 CUDA-core roof
    with_bias = planner.analyze(seed, "float16", "channels_last", "h200", bias=True, activation="relu")
    assert with_bias.bytes_by_tensor["bias"] == 2 * 128 and with_bias.gpu.bandwidth_tbs == 4.8


def test_plan_command(capsys):
    assert main(["plan", "--input", "32,64,56,56", "--weight", "64,64,3,3", "--stride", "1", "--padding", "1",
                 "--groups", "1", "--dtype", "float16", "--layout", "channels_last",
                 "--gpu", "NVIDIA_H100_80GB_HBM3"]) == 0
    out = capsys.readouterr().out
    assert "7,398,752,256" in out and "memory-bound" in out and "conv_direct" in out and "H100" in out
    assert main(["plan", "--input", "1,128,256,256", "--weight", "128,128,5,5", "--padding", "same",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["flops"] == 53_687_091_200 and doc["output_shape"] == [1, 128, 256, 256]
    assert main(["plan", "--input", "1,2,3", "--weight", "1,1,1,1"]) == 2
    assert main(["plan", "--input", "1,4,8,8", "--weight", "4,4,3,3", "--gpu", "no-such-gpu"]) == 2
    assert "no peak figures" in capsys.readouterr().err


def test_gpu_lookup():
    assert gpus.find_gpu("NVIDIA H100 80GB HBM3") is H100
    assert gpus.find_gpu("nvidia_h100_80gb_hbm3") is H100
    assert gpus.find_gpu("h100") is H100
    assert gpus.find_gpu("NVIDIA GeForce RTX 4090") is None
    assert H100.ridge("float16") == pytest.approx(295.3, abs=0.1)


# ----------------------------------------------------------------------------------- suites

def test_seed_suite_is_53_7_gflop():
    (layer,) = suites.get_suite("seed")
    assert layer.output_shape == (1, 128, 256, 256)
    assert layer.flops == 53_687_091_200
    assert round(layer.flops / 1e9, 1) == 53.7


def test_suite_sizes():
    resnet = suites.get_suite("resnet50")
    assert len(resnet) == 23
    assert len({(c.input_shape, c.weight_shape, c.stride, c.padding) for c in resnet}) == 23
    assert sum(c.count for c in resnet) == 53  # 49 convolutions in the blocks and stem + 4 downsamples
    assert all(c.n == 32 for c in resnet)
    # v1.5: the stride sits on the 3x3 convolutions; the strided 1x1 ones are the downsamples
    assert all(c.kh == 3 or "downsample" in c.name or c.name == "conv1" for c in resnet if c.stride != (1, 1))

    mbv2 = suites.get_suite("mobilenetv2")
    dw = [c for c in mbv2 if c.groups > 1]
    assert len(dw) == 10 and all(c.groups == c.c == c.k and c.kh == 3 for c in dw)
    assert {(c.c, c.h, c.stride[0]) for c in dw} == {
        (32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (192, 28, 2),
        (384, 14, 1), (576, 14, 1), (576, 14, 2), (960, 7, 1)}
    assert sum(c.count for c in dw) == 17  # one per inverted-residual block
    assert all(c.kh == 1 for c in mbv2 if c.groups == 1) and len(mbv2) - len(dw) == 19

    deep = suites.get_suite("deepbench")
    assert "subset" in suites.deepbench.__doc__ and len(deep) == 26
    assert suites.get_suite("resnet50", batch=4)[0].n == 4
    speech = suites.get_suite("speech1d")
    assert len(speech) == 19 and all(c.h == c.kh == 1 for c in speech)  # 1-D: the unit-height view
    assert [c.output_hw[1] for c in speech[:7]] == [3199, 1599, 799, 399, 199, 99, 49]  # wav2vec 2.0's lengths
    video = suites.get_suite("video3d")
    assert len(video) == 8 and video[0].input_shape == (4, 3, 16, 112, 112)  # 4 RGB clips of 16 frames
    assert sum(layer.flops for layer in video) == 2 * sum(  # C3D: 2 * N*K*D*P*Q * C*27
        4 * k * d * h * h * c * 27 for _, c, d, h, k in suites._C3D)
    for layer in resnet + mbv2 + deep + speech + video:  # every layer is valid and mcconv derives its shape alike
        x, w, _ = layer_tensors(layer, "float16", "channels_last")
        assert x.is_contiguous(memory_format=layer.memory_format)
        dispatch = layer.explain(x, w, None)
        if layer.op == "conv3d" and dispatch.kernel != "conv3d_direct":  # the depth im2col's 2-D record
            n, k, d, p, q = layer.output_shape
            assert dispatch.output_shape == (n * d, k, p, q)
        else:
            assert dispatch.output_shape == layer.output_shape
    # the 3-D layers: conv1a (3 channels) on the depth im2col, the others on the depth kernel; the
    # im2col's 2-D problem has the same FLOPs (9 channels padded to 16 for fp16 loads)
    assert [layer.explain(*layer_tensors(layer, "float16", "channels_last")[:2]).kernel for layer in video] == \
        ["conv_direct"] + ["conv3d_direct"] * 7
    flat = video[0].im2col_layer(2)
    assert flat.input_shape == (4 * 16, 16, 112, 112) and flat.output_shape == (4 * 16, 64, 112, 112)
    assert video[1].im2col_layer(2).c == 64 * 3  # the depth kernel's gradient gathers unpadded
    with pytest.raises(ValueError, match="suite"):
        suites.get_suite("vgg")


def test_parse_shape():
    layer = suites.parse_shape("32,64,56,56:64,64,3,3:2:1")
    assert (layer.stride, layer.padding, layer.groups) == ((2, 2), (1, 1), 1)
    layer = suites.parse_shape("2,32,8,14,14:64,32,3,3,3:1:1")
    assert layer.op == "conv3d" and layer.output_shape == (2, 64, 8, 14, 14) and layer.padding == (1, 1, 1)
    assert layer.describe() == "2x32x8x14x14 * 64x32x3x3x3 s1 p1"
    assert suites.parse_shape("8,32,14,14:32,1,3,3:1:1:32").groups == 32
    with pytest.raises(ValueError, match="--shape"):
        suites.parse_shape("8,32,14:32,1,3,3")


# ----------------------------------------------------------------------------------- bench

def test_bench_dry_run_on_cpu(capsys):
    assert main(["bench", "--suite", "mobilenetv2", "--dry-run", "--gpu", "h100-sxm"]) == 0
    out = capsys.readouterr().out
    kernels = [line.split()[-4] for line in out.splitlines()[2:-1]]
    assert kernels.count("depthwise") == 10 and kernels.count("gemm_1x1") == 19
    assert "29 layers" in out and out.startswith("float16, channels_last")
    assert all(len(line) <= 120 for line in out.splitlines())
    assert main(["bench", "--shape", "8,16,14,14:32,16,3,3:1:1", "--dry-run"]) == 0
    assert "conv_direct" in capsys.readouterr().out
    assert main(["bench", "--suite", "video3d", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("conv3d_direct") == 7 and "4x3x16x112x112 * 64x3x3x3x3" in out


def test_plan_of_a_conv3d_call(capsys):
    assert main(["plan", "--input", "2,32,8,14,14", "--weight", "64,32,3,3,3", "--padding", "1", "--bias"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("conv3d    input (2, 32, 8, 14, 14)") and "(front, back, top, bottom, left, right)" in out
    flops = 2 * 2 * 64 * 8 * 14 * 14 * 32 * 27
    assert f"{flops:,} = 2*N*K*D*P*Q*(C/groups)*KD*KH*KW" in out and "conv3d_direct" in out
    assert main(["plan", "--input", "2,32,8,14,14", "--weight", "64,32,3,3"]) == 2
    assert "--input, --weight" in capsys.readouterr().err


def test_bench_rows_of_a_conv3d_layer_on_cpu():
    """bench's checks and timing loop on conv3d layers (depth kernel and depth im2col), fake timer."""
    layers = [suites.Conv3dLayer("depth", 1, 16, 3, 4, 4, 8, 2, 3, 3, padding=(1, 1, 1)),
              suites.Conv3dLayer("im2col", 1, 3, 3, 4, 4, 8, 3, 3, 3, padding=(1, 1, 1))]
    for direction in ("forward", "backward"):
        rows = bench.run_rows(layers, "float32", "channels_last", direction=direction, device="cpu",
                              timer=FakeTimer(), activation="relu")
        assert [r["status"] for r in rows] == ["ok", "ok"], rows
        assert [r["kernel"] for r in rows] == ["conv3d_direct", "conv_direct"]
        assert all(r["rel_error"] < 1e-4 for r in rows)


def test_transposed_layers_plan_bench_and_tune(capsys):
    """conv_transpose2d calls in the tools: the decoder2d suite, plan --transposed, bench's checked
    rows (fake timer), and tune's problems (those of the convolution it transposes)."""
    dec = suites.get_suite("decoder2d")
    assert [layer.output_shape for layer in dec[:5]] == [(64, 512, 4, 4), (64, 256, 8, 8), (64, 128, 16, 16),
                                                        (64, 64, 32, 32), (64, 3, 64, 64)]  # DCGAN's 64x64 RGB
    assert dec[5].output_shape == (8, 512, 56, 56) and len(dec) == 9
    for layer in dec:  # FLOPs: each input pixel times each weight
        assert layer.flops == 2 * math.prod(layer.input_shape) * math.prod(layer.weight_shape[1:])
        x, w, _ = layer_tensors(layer, "float16", "channels_last")
        assert layer.explain(x, w).output_shape == layer.output_shape
    assert main(["plan", "--transposed", "--input", "2,64,7,7", "--weight", "64,32,4,4", "--stride", "2",
                 "--padding", "1", "--output-padding", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("conv_transpose2d input (2, 64, 7, 7)") and "output    (2, 32, 15, 15)" in out
    assert "conv_dgrad" in out
    tiny = [suites.ConvTranspose2dLayer("up", 1, 8, 3, 4, 6, 3, 3, (2, 2), (1, 1), (1, 0)),
            suites.ConvTranspose2dLayer("up1x1", 1, 16, 3, 3, 8, 1, 1)]
    for direction in ("forward", "backward"):
        rows = bench.run_rows(tiny, "float32", "channels_last", direction=direction, device="cpu",
                              timer=FakeTimer(), activation="relu")
        assert [r["status"] for r in rows] == ["ok", "ok"], rows
        assert [r["kernel"] for r in rows] == ["conv_dgrad_subpixel", "gemm_1x1_dgrad"]
    problems = tune.layer_problems(tiny[0], "float32", "channels_last", "cpu")
    assert [p.key for p in problems] == [p.key for p in tune.layer_problems(tiny[0].forward_layer(), "float32",
                                                                             "channels_last", "cpu")]


def test_tune_problems_of_a_conv3d_layer():
    """The depth kernel's forward is tuned on the 3-D call (conv_direct's table, which it shares);
    its gradient's kernels on the depth im2col's 2-D problem."""
    depth = suites.Conv3dLayer("depth", 2, 32, 4, 8, 8, 64, 3, 3, 3, padding=(1, 1, 1))
    problems = tune.layer_problems(depth, "float16", "channels_last", "cpu")
    assert [p.kernel for p in problems] == ["conv_direct", "bias_act_grad", "conv_dgrad", "conv_wgrad"]
    assert problems[0].layer is depth and problems[0].key == tiles.shape_key("float16", 2 * 4 * 64, 64, 32 * 27)
    assert problems[2].layer.input_shape == (2 * 4, 32 * 3, 8, 8)
    stem = suites.Conv3dLayer("stem", 1, 3, 4, 8, 8, 16, 3, 3, 3, padding=(1, 1, 1))
    assert [p.kernel for p in tune.layer_problems(stem, "float16", "channels_last", "cpu")][0] == "conv_direct"
    problems[0].ensure_built()
    y = problems[0].run(SMALL_CANDIDATES["conv_direct"][1])
    torch.testing.assert_close(y.float(), problems[0].reference().float(), rtol=2e-2, atol=2e-2)


def test_bench_and_tune_refuse_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--suite", "seed"]) == 2
    assert "need a CUDA GPU" in capsys.readouterr().err
    assert main(["tune", "--suite", "seed"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- tune

def test_a_plan_with_a_forced_config_runs_those_tiles():
    x = torch.randn(1, 8, 6, 6, device=bench_device())
    w = torch.randn(8, 8, 3, 3, device=x.device) / 72 ** 0.5  # unit outputs: TF32 on a GPU stays within 1e-2
    config = SMALL_CANDIDATES["conv_direct"][1]
    plan = mcconv.plans(x, w, None, 1, 1)[0].with_config(config)
    assert plan.dispatch.config_source == "forced" and dict(plan.config) == config
    y = ops.forward.run(plan, x, w)
    torch.testing.assert_close(y, F.conv2d(x, w, padding=1), rtol=1e-2, atol=1e-2)
    # the normal path still follows the table / default, untouched by the forced plan
    assert dict(mcconv.explain(x, w, padding=1).config) != config


def bench_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def test_prune_oversized_configs():
    big = dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)
    limits = tune.ResourceLimits(H100.smem_per_block)
    assert tune.estimate_shared_memory("conv_direct", big, 4) == 3 * (128 * 64 + 64 * 256) * 4  # 288 KiB
    kept, pruned = tune.prune("conv_direct", [big], "tf32", limits)
    assert not kept and "shared memory" in pruned[0][1]
    kept, pruned = tune.prune("conv_direct", [big], "float16", limits)  # 144 KiB in fp16 fits
    assert kept == [big] and not pruned
    hot = dict(BLOCK_M=256, BLOCK_N=256, BLOCK_K=16, GROUP_M=8, num_warps=4, num_stages=1)
    assert tune.accumulator_registers(hot) == 512
    kept, pruned = tune.prune("conv_direct", [hot], "float16", limits)
    assert not kept and "regs/thread" in pruned[0][1]
    # every packaged candidate fits an H100 in fp16
    for kernel in registry.table_names():
        kept, pruned = tune.prune(kernel, tiles.candidates(kernel), "float16", limits)
        assert not pruned


def test_tune_writes_a_resumable_merged_table(tmp_path):
    out = tmp_path / "tables"
    other = {"float16/M=1024/N=1024/R=1024": {"config": dict(SMALL_CANDIDATES["conv_direct"][0])}}
    tune.write_entries(out / "conv_direct" / "FAKE_GPU.json", "conv_direct", "FAKE_GPU", other)
    timer = FakeTimer()
    report = tune.tune(TINY, ["float32"], device_name="FAKE_GPU", out_dir=out, timer=timer,
                       kernels=FORWARD, candidates=SMALL_CANDIDATES, compile_workers=0, show_progress=False, log=lambda *a: None)
    # per layer, its forward, then its 1x1 input gradient (the same GEMM, another key of gemm_1x1's table)
    assert [k for k, *_ in report.tuned] == ["conv_direct", "gemm_1x1", "gemm_1x1", "depthwise"] and not report.failed
    # two candidates each, but tinydw's walk has 3 lanes (6 columns, 2 per lane): both depthwise
    # candidates shrink to the same 16-lane tile, timed once
    assert timer.calls == 7
    doc = json.loads((out / "conv_direct" / "FAKE_GPU.json").read_text())
    assert {"kernel", "device", "triton", "torch", "updated", "entries"} <= set(doc)
    key = tiles.shape_key("float32", 1 * 6 * 6, 8, 8 * 9)
    assert set(doc["entries"]) == {key, *other}  # merged: the entry that was there is kept
    entry = doc["entries"][key]
    assert entry["config"] == SMALL_CANDIDATES["conv_direct"][1]  # timed last: the fake timer's fastest
    assert entry["timed"] == 2 and entry["layer"] == "tiny3x3" and entry["dtype"] == "float32"
    assert sorted(os.listdir(out / "conv_direct")) == ["FAKE_GPU.json"]  # no temporary file left

    again = FakeTimer()
    report = tune.tune(TINY, ["float32"], device_name="FAKE_GPU", out_dir=out, timer=again,
                       kernels=FORWARD, candidates=SMALL_CANDIDATES, compile_workers=0, show_progress=False, log=lambda *a: None)
    assert again.calls == 0 and len(report.skipped) == 4 and not report.tuned  # resumed: nothing to do
    report = tune.tune(TINY[:1], ["float32"], device_name="FAKE_GPU", out_dir=out, timer=FakeTimer(), force=True,
                       kernels=FORWARD, candidates=SMALL_CANDIDATES, compile_workers=0, show_progress=False, log=lambda *a: None)
    assert len(report.tuned) == 1


def test_tune_skips_failing_configs_and_respects_the_budget(tmp_path, monkeypatch):
    real = ops.forward.run

    def flaky(plan, *args, **kwargs):
        if plan.config["BLOCK_M"] == 32:
            raise RuntimeError("out of resources: shared memory")
        return real(plan, *args, **kwargs)

    monkeypatch.setattr(ops.forward, "run", flaky)
    report = tune.tune(TINY[:1], ["float32"], device_name="FAKE_GPU", out_dir=tmp_path, timer=FakeTimer(),
                       kernels=FORWARD, candidates=SMALL_CANDIDATES, compile_workers=0, show_progress=False, log=lambda *a: None)
    ((kernel, key, config, ms),) = report.tuned
    assert config["BLOCK_M"] == 16
    assert json.loads((tmp_path / kernel / "FAKE_GPU.json").read_text())["entries"][key]["failed"] == 1

    report = tune.tune(TINY, ["float16"], device_name="FAKE_GPU", out_dir=tmp_path / "b", timer=FakeTimer(),
                       budget_s=0, kernels=FORWARD, candidates=SMALL_CANDIDATES, compile_workers=0, show_progress=False,
                       log=lambda *a: None)
    assert not report.tuned and len(report.remaining) == 4 and not (tmp_path / "b").exists()


def test_atomic_write_keeps_the_old_table_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "gemm_1x1" / "FAKE_GPU.json"
    tune.write_entries(path, "gemm_1x1", "FAKE_GPU", {"float16/M=64/N=64/R=64": {"config": {"BLOCK_M": 16}}})
    before = path.read_text()

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        tune.write_entries(path, "gemm_1x1", "FAKE_GPU", {"float16/M=128/N=64/R=64": {"config": {"BLOCK_M": 32}}})
    assert path.read_text() == before and os.listdir(path.parent) == ["FAKE_GPU.json"]
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a tile table"):
        tune.read_entries(path)


def test_runtime_picks_up_a_tuned_table(tmp_path, monkeypatch, fresh_tables):
    monkeypatch.setenv(tiles.CONFIG_DIR_ENV, str(tmp_path))
    report = tune.tune(TINY, ["float32"], device_name="FAKE_GPU", out_dir=tmp_path, timer=FakeTimer(),
                       kernels=FORWARD, candidates=SMALL_CANDIDATES, compile_workers=0, show_progress=False, log=lambda *a: None)
    tiles.load_table.cache_clear()
    _plan._plans.clear()
    forward = [report.tuned[i] for i in (0, 1, 3)]  # the 1x1 layer's input gradient is entry 2
    for (kernel, key, config, _), layer in zip(forward, TINY):
        x, w, _ = layer_tensors(layer, "float32", "channels_last", device=bench_device())
        d = mcconv.explain(x, w, None, layer.stride, layer.padding, layer.dilation, layer.groups,
                           device_name="FAKE_GPU")
        assert d.kernel == kernel and d.config_source == f"table FAKE_GPU.json [{key}]"
        assert dict(d.config) == config
        dtype, dims = tiles._parse_key(key)
        assert tiles.select_config(kernel, "FAKE_GPU", dtype, *dims, {})[0] == config
    x, w, _ = layer_tensors(TINY[0], "float32", "channels_last", device=bench_device())
    assert mcconv.explain(x, w, padding=1, device_name="OTHER_GPU").config_source == "heuristic default"


def test_tunable_kernels_and_default_out_dir():
    assert tune.tunable_kernels() == registry.table_names()
    assert set(FORWARD) | {"conv_dgrad", "conv_wgrad", "bias_act_grad"} <= set(tune.tunable_kernels())
    assert tune.default_out_dir().name == "autotune_configs"
    assert tune.candidate_configs("conv_direct", {"BLOCK_M": 36, "BLOCK_N": 8, "BLOCK_K": 8})[0]["BLOCK_N"] == 16


@pytest.mark.gpu
def test_tune_and_bench_for_real_on_the_gpu(tmp_path):
    """On a GPU: real timers, parallel precompilation, one small layer each."""
    layer = conv("small", 8, 64, 28, 64, 3)
    report = tune.tune([layer], ["float16"], device_name="TEST_GPU", out_dir=tmp_path, compile_workers=4,
                       kernels=["conv_direct"], candidates={"conv_direct": tiles.candidates("conv_direct")[:4]},
                       show_progress=False)
    assert len(report.tuned) == 1 and report.compile_method != "none"
    rows = bench.run_rows([layer], "float16", "channels_last")
    assert rows[0]["status"] == "ok" and rows[0]["mcconv_ms"] > 0
