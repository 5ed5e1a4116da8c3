"""Regression: every way a user changes a weight is seen by the next call.

A packed-weight cache keyed on the weight's identity, storage and version counter returned the
old weights' result after a write through ``.data`` (max error 25 against torch). Each idiom
below changes the weight between two calls and checks the second against float64 torch, and
that it differs from the first by far more than the tolerance (so a stale result cannot pass).
"""
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

import mcconv
from reference import DEVICE, assert_conv_close, reference_conv2d

REDUCTION = 8 * 3 * 3


def _module():
    torch.manual_seed(0)
    return mcconv.Conv2d(8, 16, 3, padding=1).to(DEVICE)


def _check(m, x, before):
    y = m(x)
    assert_conv_close(y, reference_conv2d(x, m.weight, m.bias, padding=1), torch.float32, REDUCTION)
    assert (y - before).abs().max() > 0.5, "the weight change did not change the result"


def _data_copy(m):
    m.weight.data.copy_(torch.randn_like(m.weight))


def _data_slice(m):
    m.weight.data[:] = torch.randn_like(m.weight)


def _copy_no_grad(m):
    with torch.no_grad():
        m.weight.copy_(torch.randn_like(m.weight))


def _load_state_dict(m):
    m.load_state_dict({"weight": torch.randn_like(m.weight), "bias": m.bias.detach().clone()})


def _swap_data(m):
    m.weight.data = torch.randn_like(m.weight)


def _swap_data_same_address(m):
    # A new tensor object over the very same memory, with new values: identity changes, pointer does not.
    storage = m.weight.data
    storage.copy_(torch.randn_like(storage))
    m.weight.data = storage.view(storage.shape)


def _optimizer_step(m):
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with torch.enable_grad():
        m(torch.randn(2, 8, 9, 9, device=DEVICE)).sum().backward()
    opt.step()


def _ema_update(m):
    with torch.no_grad():
        m.weight.data.mul_(0.0).add_(torch.randn_like(m.weight))


IDIOMS = [_data_copy, _data_slice, _copy_no_grad, _load_state_dict, _swap_data, _swap_data_same_address,
          _optimizer_step, _ema_update]


@pytest.mark.parametrize("change", IDIOMS, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_module_sees_every_weight_change(change, grad):
    m = _module()
    x = torch.randn(2, 8, 9, 9, device=DEVICE)
    with torch.set_grad_enabled(grad):
        before = m(x).detach()
        change(m)
        _check(m, x, before)


def test_parametrized_weight():
    """torch.nn.utils.parametrize: the weight is recomputed from the original on every access."""
    m = _module()
    x = torch.randn(2, 8, 9, 9, device=DEVICE)

    class Scale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.factor = 1.0

        def forward(self, w):
            return w * self.factor

    scale = Scale()
    parametrize.register_parametrization(m, "weight", scale)
    with torch.no_grad():
        before = m(x)
        scale.factor = -3.0
        _check(m, x, before)
        m.parametrizations.weight.original.data.copy_(torch.randn_like(m.weight))
        _check(m, x, before)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_functional_weight_written_through_data(memory_format):
    """mcconv.conv2d on a plain tensor whose values change through .data between calls."""
    x = torch.randn(1, 8, 6, 6, device=DEVICE)
    w = torch.randn(16, 8, 3, 3, device=DEVICE).to(memory_format=memory_format)
    first = mcconv.conv2d(x, w, padding=1)
    w.data[:] = torch.randn_like(w)
    second = mcconv.conv2d(x, w, padding=1)
    assert_conv_close(second, F.conv2d(x.double(), w.double(), padding=1), torch.float32, REDUCTION)
    assert (second - first).abs().max() > 0.5


def test_weight_at_a_recycled_address():
    """A freed weight's memory reused by a new weight of the same shape: the new values count."""
    x = torch.randn(1, 8, 6, 6, device=DEVICE)
    results = []
    for seed in range(3):
        torch.manual_seed(seed)
        w = torch.randn(16, 8, 3, 3, device=DEVICE)
        y = mcconv.conv2d(x, w, padding=1)
        assert_conv_close(y, F.conv2d(x.double(), w.double(), padding=1), torch.float32, REDUCTION)
        results.append(y)
        del w
    assert (results[0] - results[1]).abs().max() > 0.5
