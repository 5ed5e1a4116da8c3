"""Bad arguments raise ValueError (TypeError for types, dtypes and devices) naming the argument;
both are RuntimeErrors too, as torch raises.

Checked through both entry points, mcconv.conv2d and mcconv.explain, which must agree; the
arguments are validated before anything is allocated or launched.
"""
import numpy as np
import pytest
import torch

import mcconv
from mcconv import _backend
from reference import DEVICE


def args(x_shape=(2, 4, 5, 5), w_shape=(6, 4, 3, 3), bias=None, x_dtype=torch.float32, w_dtype=None,
         w_device=None, **options):
    """(input, weight, bias) and options for one call, with one thing changed from a valid call."""
    x = torch.zeros(x_shape, dtype=x_dtype, device=DEVICE)
    w = torch.zeros(w_shape, dtype=w_dtype or x_dtype, device=w_device or DEVICE)
    return (x, w, bias), options


def bias(*shape, dtype=torch.float32, device=DEVICE):
    """A zero bias of the given shape."""
    return torch.zeros(shape, dtype=dtype, device=device)


BAD_VALUES = {
    "channel-mismatch": (args(w_shape=(6, 3, 3, 3)), "weight"),
    "groups-not-dividing-in-channels": (args(w_shape=(6, 2, 3, 3), groups=3), "groups"),
    "groups-not-dividing-out-channels": (args(w_shape=(5, 2, 3, 3), groups=2), "groups"),
    "groups-zero": (args(groups=0), "groups"),
    "stride-zero": (args(stride=0), "stride"),
    "stride-pair-zero": (args(stride=(1, 0)), "stride"),
    "stride-triple": (args(stride=(1, 1, 1)), "stride"),
    "dilation-zero": (args(dilation=0), "dilation"),
    "dilation-pair-negative": (args(dilation=(-1, 1)), "dilation"),
    "padding-negative": (args(padding=-1), "padding"),
    "padding-pair-negative": (args(padding=(0, -1)), "padding"),
    "padding-4-tuple-negative": (args(padding=(0, 0, -1, 0)), "padding"),
    "padding-3-tuple": (args(padding=(1, 1, 1)), "padding"),
    "padding-unknown-string": (args(padding="full"), "padding"),
    "padding-same-with-stride": (args(padding="same", stride=2), "padding"),
    "output-below-1x1": (args(x_shape=(2, 4, 2, 5)), "input"),
    "output-below-1x1-by-dilation": (args(x_shape=(2, 4, 5, 5), dilation=3), "input"),
    "input-2d": (args(x_shape=(4, 5)), "input"),
    "input-5d": (args(x_shape=(1, 2, 4, 5, 5)), "input"),
    "weight-3d": (args(w_shape=(4, 3, 3)), "weight"),
    "weight-empty-kernel": (args(w_shape=(6, 4, 0, 3)), "weight"),
    "bias-wrong-length": (args(bias=bias(5)), "bias"),
    "bias-2d": (args(bias=bias(6, 1)), "bias"),
    "activation-unknown": (args(activation="tanh"), "activation"),
    "activation-capitalised": (args(activation="ReLU"), "activation"),
}

BAD_TYPES = {
    "groups-float": (args(groups=1.0), "groups"),  # torch raises TypeError for these too
    "groups-bool": (args(groups=True), "groups"),
    "stride-float": (args(stride=1.5), "stride"),
    "stride-bool-pair": (args(stride=(True, 1)), "stride"),
    "input-int32": (args(x_dtype=torch.int32), "input"),
    "input-float64": (args(x_dtype=torch.float64), "input"),
    "weight-dtype-mismatch": (args(w_dtype=torch.float16), "weight"),
    "bias-dtype-mismatch": (args(bias=bias(6, dtype=torch.float16)), "bias"),
    "weight-other-device": (args(w_device="meta"), "weight"),
    "bias-other-device": (args(bias=bias(6, device="meta")), "bias"),
    "bias-list": (args(bias=[0.0] * 6), "bias"),
}


def call_both(entry, call):
    """Run one (input, weight, bias), options call through mcconv.conv2d or mcconv.explain."""
    (x, w, b), options = call
    return entry(x, w, b, **options)


@pytest.mark.parametrize("entry", [mcconv.conv2d, mcconv.explain], ids=["conv2d", "explain"])
@pytest.mark.parametrize("call, name", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_values_raise_value_error(entry, call, name):
    with pytest.raises(ValueError, match=f"^{name}:") as err:
        call_both(entry, call)
    assert isinstance(err.value, RuntimeError)  # catchable as torch's error, too


@pytest.mark.parametrize("entry", [mcconv.conv2d, mcconv.explain], ids=["conv2d", "explain"])
@pytest.mark.parametrize("call, name", BAD_TYPES.values(), ids=BAD_TYPES.keys())
def test_bad_types_raise_type_error(entry, call, name):
    with pytest.raises(TypeError, match=f"^{name}:") as err:
        call_both(entry, call)
    assert isinstance(err.value, RuntimeError)  # catchable as torch's error, too


@pytest.mark.parametrize("entry", [mcconv.conv2d, mcconv.explain], ids=["conv2d", "explain"])
@pytest.mark.parametrize("x, w, name", [
    (np.zeros((2, 4, 5, 5), np.float32), torch.zeros(6, 4, 3, 3), "input"),
    ([[[0.0]]], torch.zeros(6, 4, 3, 3), "input"),
    (torch.zeros(2, 4, 5, 5), np.zeros((6, 4, 3, 3), np.float32), "weight"),
], ids=["input-numpy", "input-list", "weight-numpy"])
def test_non_tensors_raise_type_error(entry, x, w, name):
    x = x.to(DEVICE) if isinstance(x, torch.Tensor) else x
    w = w.to(DEVICE) if isinstance(w, torch.Tensor) else w
    with pytest.raises(TypeError, match=f"^{name}:"):
        entry(x, w)


def test_errors_are_not_cached():
    """A valid call first caches a plan; a bad call of the same shapes must still raise."""
    x, w = torch.zeros(2, 4, 5, 5, device=DEVICE), torch.zeros(6, 4, 3, 3, device=DEVICE)
    mcconv.explain(x, w, stride=1)
    with pytest.raises(ValueError, match="^stride:"):
        mcconv.explain(x, w, stride=0)
    with pytest.raises(ValueError, match="^stride:"):
        mcconv.explain(x, w, stride=[1, 0])  # a list: unhashable in the plan cache's key


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setattr(_backend, "interpreted", lambda: False)
    with pytest.raises(TypeError, match="TRITON_INTERPRET"):
        _backend.check_runnable(torch.device("cpu"))
    with pytest.raises(TypeError, match="TRITON_INTERPRET"):
        mcconv.conv2d(torch.zeros(1, 3, 5, 5), torch.zeros(2, 3, 3, 3))


def test_only_cuda_and_interpreted_cpu_can_launch():
    with pytest.raises(TypeError, match="^input: .*device meta"):
        _backend.check_runnable(torch.device("meta"))


def test_runnable_devices():
    _backend.check_runnable(torch.device(DEVICE))  # CUDA natively, or the CPU under the interpreter
