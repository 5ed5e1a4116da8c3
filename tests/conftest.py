"""Run the suite natively on a GPU when there is one, else through Triton's interpreter.

TRITON_INTERPRET must be set before triton is first imported, hence here, before any test
module imports mcconv.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (bf16 tl.dot and >2**31-element tensors "
                                       "are not meaningful under Triton's interpreter)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def fresh_plans():
    """An empty plan cache for the test (plans built under a monkeypatched rule do not leak)."""
    from mcconv import _plan

    _plan._plans.clear()
    yield
    _plan._plans.clear()
