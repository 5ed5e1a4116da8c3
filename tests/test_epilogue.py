"""Every fused activation of mcconv.ACTIVATIONS, read from the registry: a new activation is
tested here without a line of test code.

Each is checked against its torch reference (its own definition's ``reference``): forward and
gradients through each forward kernel against float64 torch, and the device formula and its
derivative at special points (zero, kinks, large values, +-inf, NaN) through a 1x1 identity
convolution, whose pre-activation is exactly the input.
"""
import math

import pytest
import torch

import mcconv
from mcconv import ACTIVATIONS
from reference import DEVICE, assert_conv_close, reference_conv2d

# (N, C, H, W, K, kernel, options): one per forward kernel (direct, 1x1 GEMM, depthwise).
KERNELS = {
    "conv_direct": (2, 3, 5, 6, 5, (3, 3), dict(padding=1)),
    "gemm_1x1": (2, 5, 4, 3, 7, (1, 1), {}),
    "depthwise": (2, 4, 5, 5, 8, (3, 3), dict(padding=1, groups=4)),
}
SPECIAL = [-math.inf, -20.0, -5.0, -3.0, -2.5, -1.0, -0.5, 0.0, 0.5, 1.0, 2.5, 3.0, 5.0, 20.0, math.inf, math.nan]


def test_the_registry_is_consistent():
    for name, act in ACTIVATIONS.items():
        assert act.name == name and act.derivative_reads in ("output", "preact")
        assert callable(act.device()) and callable(act.device_grad())


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_forward_and_gradients_match_torch(activation, kernel):
    n, c, h, w, k, size, opts = KERNELS[kernel]
    groups = opts.get("groups", 1)
    x = (2 * torch.randn(n, c, h, w, device=DEVICE)).requires_grad_()
    wt = (torch.randn(k, c // groups, *size, device=DEVICE) / math.sqrt(c // groups * size[0] * size[1]))
    wt.requires_grad_()
    b = torch.randn(k, device=DEVICE, requires_grad=True)
    assert mcconv.explain(x, wt, b, **opts).kernel == kernel
    y = mcconv.conv2d(x, wt, b, activation=activation, **opts)
    reduction = c // groups * size[0] * size[1]
    assert_conv_close(y, reference_conv2d(x, wt, b, activation=activation, **opts), torch.float32, reduction)

    grad_y = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, wt, b), grad_y)
    leaves = [t.detach().double().cpu().requires_grad_() for t in (x, wt, b)]
    z = torch.nn.functional.conv2d(leaves[0], leaves[1], leaves[2], **opts)
    act = ACTIVATIONS[activation]
    # A derivative that reads y takes its mask from mcconv's own output (an exactly-zero crossing
    # rounded the other way is not an error).
    ref_y = z * (y.detach().cpu() > 0) if act.derivative_reads == "output" else act.reference(z)
    want = torch.autograd.grad(ref_y, leaves, grad_y.double().cpu())
    pixels = n * y.shape[2] * y.shape[3]
    for g, r, length in zip(got, want, ((k // groups) * size[0] * size[1], pixels, pixels)):
        assert_conv_close(g, r, torch.float32, length)


def _identity_conv(values):
    """x (1, 1, 1, L) of ``values`` and a 1x1 weight of 1.0: the pre-activation is x itself."""
    x = torch.tensor(values, device=DEVICE).reshape(1, 1, 1, -1)
    return x, torch.ones(1, 1, 1, 1, device=DEVICE)


def _assert_same_specials(got, want):
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    assert torch.equal(torch.isnan(got), torch.isnan(want)), (got, want)
    finite = torch.isfinite(want)
    assert torch.equal(torch.isinf(got), torch.isinf(want)) and torch.equal(got[~finite & ~torch.isnan(want)],
                                                                          want[~finite & ~torch.isnan(want)])
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, under the interpreter
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_formula_and_derivative_at_special_points(activation):
    """NaN stays NaN, infinities and kinks as in torch, in the forward and in the derivative."""
    act = ACTIVATIONS[activation]
    x, w = _identity_conv(SPECIAL)
    x.requires_grad_()
    y = mcconv.conv2d(x, w, activation=activation)
    # torch evaluated one point at a time: its CPU kernels' vectorised and scalar loops disagree
    # on NaN for some derivatives (hardswish'), and CUDA's kernels are the scalar definitions.
    y64, grad64 = [], []
    for value in SPECIAL:
        point = torch.tensor([value], dtype=torch.float64, requires_grad=True)
        out = act.reference(point)
        y64.append(out.detach())
        grad64.append(torch.autograd.grad(out, point, torch.ones_like(out))[0])
    _assert_same_specials(y, torch.cat(y64).reshape(y.shape))
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    _assert_same_specials(grad, torch.cat(grad64).reshape(grad.shape))
