"""Every kernel variant mcconv launches compiles natively for an H100 (sm_90), with or without a GPU.

The rest of the suite runs the kernels through Triton's interpreter on CPU-only machines, and
the interpreter accepts code that the real compiler rejects (tl.dot tiles under 16, mixed
dtypes, loop-carried type changes). This test runs tests/native_compile.py, which compiles each
distinct launch of the library's forward and backward paths for sm_90 with the triton wheel's
own ptxas, in subprocesses: the kernels of this process are the interpreter's. The variants are
sharded over the available cores.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("native_compile.py")
SKIP_STATUS = 77  # native_compile.py: this triton has no NVIDIA backend or no ptxas
TIMEOUT_S = 900


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _report(outputs) -> str:
    """The FAILED blocks of the shards' outputs, or their tails when a shard died otherwise."""
    blocks = []
    for out in outputs:
        lines = out.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("FAILED "):
                end = i + 1
                while end < len(lines) and lines[end].startswith("    "):
                    end += 1
                blocks.append("\n".join(lines[i:end]))
    if blocks:
        return f"{len(blocks)} kernel variant(s) failed to compile for sm_90:\n\n" + "\n\n".join(blocks)
    return "native_compile.py failed before compiling:\n" + "\n---\n".join(
        "\n".join(out.splitlines()[-60:]) for out in outputs)


def test_every_launched_kernel_variant_compiles_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # PYTHONPATH unchanged
    # A fresh cache: every variant goes through the compiler, and no other cache is written to.
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    shards = max(1, min(_cores(), 8))
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), f"--shard={i}/{shards}"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(shards)]
    outputs = []
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    codes = [proc.returncode for proc in procs]
    if all(code == SKIP_STATUS for code in codes):
        reasons = [line for line in outputs[0].splitlines() if line.startswith("SKIP: ")]
        pytest.skip(reasons[0][len("SKIP: "):] if reasons else "no NVIDIA backend or ptxas in this triton")
    if any(code != 0 for code in codes):
        pytest.fail(_report(outputs), pytrace=False)
