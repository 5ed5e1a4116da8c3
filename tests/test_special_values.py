"""NaN and Inf in the input, weight, bias or residual: mcconv's output and its input, weight,
bias and residual gradients have NaN and Inf (with their signs) exactly where float64 torch has
them, through every activation, and the finite values agree within the suite's tolerance.

float64 torch is the specification, on the very values mcconv received, including its IEEE
corner cases: a padded (zero) input times an infinite weight is NaN; relu(nan) is nan but
relu's gradient passes the incoming gradient there (threshold_backward tests y <= 0, false for
NaN); silu(-inf) and gelu(-inf) are NaN (-inf * 0), and silu'/gelu' are NaN at +-inf. CUDA
torch computes the same formulas. float32 only and tiny shapes: the point is where specials land.

One documented difference: mcconv computes the input gradient as a convolution of the
zero-padded output gradient, so a non-finite weight tap also gives NaN (0 * inf, 0 * nan) at
input pixels it reaches only through the padding, where torch's CPU path (col2im) has no term
at all. That case is checked against that definition (_padded_input_grad).
"""
import pytest
import torch
import torch.nn.functional as F

import mcconv
from reference import DEVICE, assert_conv_close
from strategies import ACT_FNS, ACTIVATIONS

# Triton's interpreter computes inf * 0 in numpy, which warns; the result is what is tested.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

N, C, K, H, W, KH, KW = 1, 2, 3, 4, 5, 3, 3
OPTIONS = dict(padding=1)
SPECIALS = {"nan": float("nan"), "+inf": float("inf"), "-inf": float("-inf")}
# Where the special value goes: an interior input pixel, a corner tap of one filter (it meets
# the padding at the borders), one bias entry, one residual element at a corner.
WHERE = {
    "input": (0, 1, 1, 2),
    "weight": (1, 0, 0, 2),
    "bias": (1,),
    "residual": (0, 2, 0, 0),
}
LENGTHS = {"output": C * KH * KW, "input": K * KH * KW, "weight": N * H * W, "bias": N * H * W, "residual": 1}


def _tensors(where, value):
    t = {"input": torch.randn(N, C, H, W), "weight": torch.randn(K, C, KH, KW) / 3,
         "bias": torch.randn(K), "residual": torch.randn(N, K, H, W)}
    t[where][WHERE[where]] = value
    return {name: v.to(DEVICE) for name, v in t.items()}


def _scalar(activation, z):
    """The activation applied one element at a time: torch's CPU kernels' vectorised and scalar
    loops disagree on NaN for some derivatives (hardswish'), and CUDA's are the scalar ones."""
    act = ACT_FNS[activation]
    return torch.stack([act(v.reshape(1)) for v in z.flatten()]).reshape(z.shape)


def _reference(t, activation, grad_y):
    """float64 torch: output and gradients of act(conv2d(x, w) + b + r)."""
    leaves = {name: v.detach().double().cpu().requires_grad_() for name, v in t.items()}
    z = F.conv2d(leaves["input"], leaves["weight"], leaves["bias"], **OPTIONS) + leaves["residual"]
    y = _scalar(activation, z)
    grads = torch.autograd.grad(y, list(leaves.values()), grad_y.double().cpu())
    return y.detach(), dict(zip(leaves, grads))


def _padded_input_grad(t, activation, grad_y):
    """float64 dL/dx as a convolution of the zero-padded dL/dz with the flipped, transposed weight
    (stride 1, padding 1, 3x3): the zero padding's products with the weight are part of the sum."""
    leaves = {name: v.detach().double().cpu().requires_grad_() for name, v in t.items()}
    z = F.conv2d(leaves["input"], leaves["weight"], leaves["bias"], **OPTIONS) + leaves["residual"]
    (grad_z,) = torch.autograd.grad(_scalar(activation, z), z, grad_y.double().cpu())
    w = leaves["weight"].detach().flip(2, 3).transpose(0, 1)
    return F.conv2d(F.pad(grad_z, (KW - 2, KW - 2, KH - 2, KH - 2)), w)


def _where(mask):
    return [tuple(i) for i in mask.nonzero().tolist()[:6]]


def assert_same_specials(what, actual, expected, length):
    a, e = actual.detach().double().cpu(), expected
    assert a.shape == e.shape, what
    for name, test in (("NaN", torch.isnan), ("Inf", torch.isinf)):
        differ = test(a) != test(e)
        assert not differ.any(), (f"{what}: {name} differs at {_where(differ)} (mcconv {a[differ][:6].tolist()}, "
                                  f"torch {e[differ][:6].tolist()})")
    infinite = torch.isinf(e)
    assert torch.equal(a[infinite].sign(), e[infinite].sign()), f"{what}: signs of Inf differ"
    finite = torch.isfinite(e)
    try:
        assert_conv_close(a[finite], e[finite], torch.float32, length)
    except AssertionError as err:
        raise AssertionError(f"{what}: finite values differ: {err}") from None


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("special", SPECIALS, ids=SPECIALS.keys())
@pytest.mark.parametrize("where", WHERE)
def test_specials_land_where_torch_puts_them(where, special, activation):
    t = _tensors(where, SPECIALS[special])
    grad_y = torch.randn(N, K, H, W, device=DEVICE)
    expected_y, expected_grads = _reference(t, activation, grad_y)

    with torch.no_grad():  # the eager inference path
        y = mcconv.conv2d(t["input"], t["weight"], t["bias"], **OPTIONS, activation=activation,
                          residual=t["residual"])
    assert_same_specials("output (eager)", y, expected_y, LENGTHS["output"])

    leaves = {name: v.clone().requires_grad_() for name, v in t.items()}
    y = mcconv.conv2d(leaves["input"], leaves["weight"], leaves["bias"], **OPTIONS, activation=activation,
                      residual=leaves["residual"])
    assert_same_specials("output (autograd)", y, expected_y, LENGTHS["output"])
    grads = torch.autograd.grad(y, list(leaves.values()), grad_y)
    for name, grad in zip(leaves, grads):
        expected = expected_grads[name]
        if name == "input" and where == "weight":  # the documented difference (module docstring)
            expected = _padded_input_grad(t, activation, grad_y)
        assert_same_specials(f"{name} gradient", grad, expected, LENGTHS[name])
