"""A stand-in for ``python -m mcconv bench|tune`` on a machine without a GPU: for tests only.

``benchmarks/gpu_run.py`` runs this instead of the CLI when MCCONV_GPU_RUN_FAKE names a fake
device, so that a whole GPU run (stages, logs, archive, summary, laying in) can be exercised on
a CPU. What is real: the command line (``mcconv.tools.cli``: its parser checks every option that
gpu_run.py passes), ``bench_command`` and ``tune_command`` with their output, JSON, PNG and
tile-table writing, and the kernels (through Triton's interpreter). What is fake: CUDA's
presence and device name, the timers (stubs: mcconv 1.0 ms against torch 1.25 ms in bench,
ever smaller times in tune), and the layers (each suite replaced by tiny ones of the same kinds).

    MCCONV_GPU_RUN_FAKE=FAKE_GPU TRITON_INTERPRET=1 python benchmarks/fake_gpu.py bench --suite seed --json s.json
"""
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

# Tile candidates small enough for the interpreter (the packaged ones take minutes there).
SMALL_CANDIDATES = {
    "conv_direct": [dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=8, num_warps=4, num_stages=2),
                    dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16, GROUP_M=8, num_warps=4, num_stages=2)],
    "gemm_1x1": [dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=8, num_warps=4, num_stages=2),
                 dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16, GROUP_M=8, num_warps=2, num_stages=2)],
    "depthwise": [dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1),
                  dict(BLOCK_M=32, BLOCK_N=16, num_warps=4, num_stages=1)],
}
FORWARD_TABLES = ["conv_direct", "gemm_1x1", "depthwise"]


def tiny_suites():
    from mcconv.tools.suites import conv

    return {
        "resnet50": [conv("l1.0.conv2", 1, 8, 6, 8, 3), conv("l1.0.conv1", 1, 8, 6, 16, 1)],
        "mobilenetv2": [conv("dw8_6_s1", 1, 8, 6, 8, 3, groups=8), conv("pw8_16_6", 1, 8, 6, 16, 1)],
        "seed": [conv("seed_5x5", 1, 4, 8, 4, 5)],
        "deepbench": [conv("train02", 1, 4, 6, 8, 3)],
    }


def install_fakes(device_name: str) -> None:
    """Patch CUDA's presence, the device, the suites and the timers; the commands stay real."""
    import torch

    from mcconv.tools import bench, gpus, tune

    torch_name = device_name.replace("_", " ")
    torch.cuda.is_available = lambda: True
    torch.cuda.get_device_name = lambda *a, **k: torch_name
    gpus.current_gpu = lambda: (torch_name, gpus.GPUS["h100-sxm"])  # an H100's peaks: rooflines get drawn

    suites = tiny_suites()

    def get_suite(name, batch=None):
        layers = suites[name]
        return [layer.with_batch(batch) for layer in layers] if batch else list(layers)

    bench.get_suite = tune.get_suite = get_suite

    calls = [0]

    def bench_timer(fn):  # called for mcconv, then torch, layer after layer
        calls[0] += 1
        return 1.0 if calls[0] % 2 else 1.25

    real_run_rows = bench.run_rows

    def run_rows(layers, *args, **kwargs):
        kwargs.update(device="cpu", timer=bench_timer, graph_timer=None)
        return real_run_rows(layers, *args, **kwargs)

    bench.run_rows = run_rows

    tune_calls = [0]

    def tune_timer(fn):
        tune_calls[0] += 1
        return 1.0 / tune_calls[0]

    real_tune = tune.tune

    def fake_tune(layers, dtypes=("float16",), **kwargs):
        kwargs.update(device="cpu", timer=tune_timer, candidates=SMALL_CANDIDATES, compile_workers=0,
                      limits=tune.ResourceLimits(gpus.GPUS["h100-sxm"].smem_per_block), show_progress=False)
        kwargs["kernels"] = kwargs.get("kernels") or FORWARD_TABLES
        return real_tune(layers, dtypes, **kwargs)

    tune.tune = fake_tune


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("bench", "tune"):
        print("fake_gpu.py: expected `bench ...` or `tune ...` (mcconv's own options)", file=sys.stderr)
        return 2
    install_fakes(os.environ.get("MCCONV_GPU_RUN_FAKE") or "FAKE_GPU")
    from mcconv.tools.cli import main as cli_main

    print(f"[fake_gpu.py: stub timings, tiny layers, device {os.environ.get('MCCONV_GPU_RUN_FAKE') or 'FAKE_GPU'}]",
          flush=True)
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
