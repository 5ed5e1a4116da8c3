"""A converted model trains under DistributedDataParallel (and FSDP2) with two processes, gloo
backend, on the CPU through Triton's interpreter: same losses and gradients as one process."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("distributed_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(mode: str, world: int, folder) -> dict:
    out = folder / f"{mode}.pt"
    port = _free_port()
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(rank), str(world), str(port), str(out), mode],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(world)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    if any(p.returncode for p in procs):
        pytest.fail(f"{mode} workers failed:\n" + "\n---\n".join(log[-3000:] for log in logs), pytrace=False)
    return torch.load(out)


pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="the CPU (gloo) path; GPU runs would use NCCL, not set up here")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, the whole batch: the reference."""
    return _run("single", 1, tmp_path_factory.mktemp("single"))


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_train_like_one(mode, single, tmp_path):
    parallel = _run(mode, 2, tmp_path)
    torch.testing.assert_close(torch.tensor(parallel["losses"]), torch.tensor(single["losses"]), rtol=1e-5,
                               atol=1e-6)
    for a, b in zip(parallel["grads"], single["grads"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
