"""Property-based tests (hypothesis): mcconv.conv2d against float64 torch on random problems.

Every option is drawn (tests/strategies.py): batch 0..3 or an unbatched 3-D input; channels,
sizes and kernels (1..7, non-square) off every block size; stride, dilation and every padding
spelling; groups, depthwise with a channel multiplier; contiguous, channels_last, permuted,
sliced and stride-0 expanded layouts of input, weight, residual and output gradient; bias;
residual; every activation; float32 and float16 (bfloat16 too on CUDA: reference.DTYPES).

Profiles: "ci" (default) is derandomised, sized for about 90 s on two CPU cores under Triton's
interpreter; ``MCCONV_HYPOTHESIS_PROFILE=long`` draws many more (random) examples.
"""
import math
import os
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

import mcconv
from reference import DEVICE, assert_conv_close
from strategies import (ACT_FNS, CL, assert_no_alias, expected_output_format, has_format, layouts, make_tensor,
                        problems, reference_preact, to64)

CI_PHASES = (Phase.explicit, Phase.reuse, Phase.generate)
_COMMON = dict(deadline=None,  # the interpreter is slow, and a shape's first call builds its plan
               database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# ci: no shrinking, which re-runs a failing test hundreds of times (minutes under the
# interpreter); the failing example is printed and, derandomised, the same on every run. The
# long profile shrinks failures to minimal examples.
settings.register_profile("ci", derandomize=True, max_examples=45, phases=CI_PHASES, **_COMMON)
settings.register_profile("long", max_examples=400, **_COMMON)
settings.load_profile(os.environ.get("MCCONV_HYPOTHESIS_PROFILE", "ci"))


def examples(share: float) -> int:
    """This test's share of the profile's example count (tests differ in cost per example)."""
    return max(1, round(settings.default.max_examples * share))


def call(problem, x, w, b, r):
    return mcconv.conv2d(x, w, b, **problem.options(), activation=problem.activation, residual=r)


def torch_computes(compute):
    """torch's result, skipping (assume) the example where torch itself rejects the call: the
    strategies draw valid calls only, rejections are the subject of the tests at the end."""
    try:
        return compute()
    except RuntimeError:
        assume(False)


def snapshot(tensors: dict) -> dict:
    return {name: t.detach().clone() for name, t in tensors.items() if t is not None}


def assert_unchanged(before: dict, tensors: dict):
    for name, old in before.items():
        assert torch.equal(tensors[name].detach(), old), f"mcconv modified its {name}"


def assert_close_named(name, actual, expected, dtype, length):
    try:
        assert_conv_close(actual, expected, dtype, length)
    except AssertionError as e:
        raise AssertionError(f"{name}: {e}") from None


# --------------------------------------------------------------------------- forward

@settings(max_examples=examples(3.5))
@given(problem=problems())
def test_forward_matches_float64_torch(problem):
    x, w, b, r = problem.tensors()
    inputs = {"input": x, "weight": w, "bias": b, "residual": r}
    expected = torch_computes(lambda: ACT_FNS[problem.activation](
        reference_preact(to64(x), to64(w), to64(b), to64(r), **problem.options())))
    before = snapshot(inputs)
    with torch.no_grad():  # the eager inference path
        y = call(problem, x, w, b, r)
    assert tuple(y.shape) == problem.out_shape == tuple(expected.shape)
    assert y.dtype == problem.dtype and y.device == x.device
    assert_close_named("output", y, expected, problem.dtype, problem.fan_in)
    assert_unchanged(before, inputs)
    assert_no_alias({"output": y}, inputs)


# --------------------------------------------------------------------------- gradients

_GRAD_PROBLEMS = problems(max_n=2, max_c=8, max_k=8, max_hw=9, max_kernel=5)


@settings(max_examples=examples(1.4))
@given(problem=_GRAD_PROBLEMS, data=st.data())
def test_gradients_match_float64_torch(problem, data):
    # Weights scaled to unit-variance outputs, so that silu'/gelu' see z of order 1.
    x, w, b, r = problem.tensors(weight_scale=1 / math.sqrt(problem.fan_in))
    inputs = {"input": x, "weight": w, "bias": b, "residual": r}
    present = [name for name, t in inputs.items() if t is not None]
    wanted = sorted(data.draw(st.sets(st.sampled_from(present), min_size=1), label="requires_grad"))
    for name in wanted:
        inputs[name].requires_grad_()
    before = snapshot(inputs)

    y = call(problem, x, w, b, r)
    gen = torch.Generator().manual_seed(problem.seed + 1)
    grad_y = make_tensor(y.shape, data.draw(layouts(y.dim()), label="grad_y layout"), problem.dtype, gen)
    grads = torch.autograd.grad(y, [inputs[name] for name in wanted], grad_y)

    leaves = {name: to64(t, requires_grad=name in wanted) for name, t in inputs.items()}
    z = torch_computes(lambda: reference_preact(leaves["input"], leaves["weight"], leaves["bias"], leaves["residual"],
                                                **problem.options()))
    assert_close_named("output", y, ACT_FNS[problem.activation](z).detach(), problem.dtype, problem.fan_in)
    # relu's gradient mask from mcconv's own y: a pre-activation rounded across zero is no error.
    y_ref = z * (y.detach().cpu() > 0) if problem.activation == "relu" else ACT_FNS[problem.activation](z)
    expected = torch.autograd.grad(y_ref, [leaves[name] for name in wanted], to64(grad_y))

    # Terms summed per gradient element: dgrad K/groups*kh*kw, wgrad and bias N*P*Q, residual dL/dz itself.
    lengths = {"input": problem.k // problem.groups * problem.kernel[0] * problem.kernel[1],
               "weight": problem.batch_pixels, "bias": problem.batch_pixels, "residual": 1}
    for name, grad, exp in zip(wanted, grads, expected):
        assert grad.shape == inputs[name].shape and grad.dtype == problem.dtype, name
        assert_close_named(f"{name} gradient", grad, exp, problem.dtype, lengths[name])
    assert_unchanged(before, inputs)
    assert_no_alias({"output": y, **{f"{n} gradient": g for n, g in zip(wanted, grads)}}, inputs)


# --------------------------------------------------------------------------- layout and explain

_LAYOUT_PROBLEMS = problems(max_n=2, max_c=5, max_k=5, max_hw=6, max_kernel=3, dtypes=(torch.float32,))


@settings(max_examples=examples(2.0))
@given(problem=_LAYOUT_PROBLEMS)
def test_output_layout_follows_torchs_cuda_rule(problem):
    """channels_last output when the input or the weight suggests channels_last (cuDNN's
    cudnn_conv_suggest_memory_format, strategies.expected_output_format), else contiguous; for
    3-D inputs the squeezed 4-D result. Empty outputs have no layout to check."""
    x, w, b, r = problem.tensors()
    with torch.no_grad():
        y = call(problem, x, w, b, r)
    if y.numel() == 0:
        return
    fmt = expected_output_format(x, w)
    assert has_format(y, fmt), f"output strides {y.stride()}, expected {fmt} (input {x.stride()}, weight {w.stride()})"


@settings(max_examples=examples(2.0))
@given(problem=_LAYOUT_PROBLEMS)
def test_explain_describes_the_real_output(problem):
    """explain() names the output's real shape and memory format, and the eager path and the
    custom op (autograd) path lay the output out alike."""
    x, w, b, r = problem.tensors()
    d = mcconv.explain(x, w, b, **problem.options(), activation=problem.activation, residual=r)
    with torch.no_grad():
        y = call(problem, x, w, b, r)
    assert tuple(d.output_shape) == tuple(y.shape)
    if y.numel() == 0:
        return
    assert has_format(y, CL if d.memory_format == "channels_last" else torch.contiguous_format), \
        f"explain says {d.memory_format}, output strides {y.stride()} (input {x.stride()}, weight {w.stride()})"
    y_op = call(problem, x, w.detach().requires_grad_(), b, r)  # through the custom op
    assert y_op.stride() == y.stride(), f"eager {y.stride()}, op {y_op.stride()}"
    assert torch.equal(y_op.detach(), y)


# --------------------------------------------------------------------------- rejections

ARG_NAME = re.compile(r"^(input|weight|bias|stride|padding|dilation|groups): ")


@st.composite
def raw_calls(draw):
    """Calls near and past every edge torch checks: empty batch/channels/spatial sizes, kernels
    larger than the padded input, non-dividing groups, non-positive stride/dilation/groups,
    negative padding, wrong bias lengths. Kernels stay >= 1 (torch's empty-input path gives
    shapes for 0-size kernels that nothing should imitate)."""
    n = draw(st.integers(0, 2))
    c, k = draw(st.integers(0, 4)), draw(st.integers(0, 4))
    groups = draw(st.integers(-1, 3))
    c_w = draw(st.one_of(st.just(c // groups if groups > 0 else c), st.integers(0, 4)))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    hw = (draw(st.integers(0, 5)), draw(st.integers(0, 5)))
    pair = st.one_of(st.integers(-1, 3), st.tuples(st.integers(-1, 3), st.integers(-1, 3)))
    padding = draw(st.one_of(pair, st.sampled_from(("same", "valid"))))
    bias = draw(st.sampled_from((None, k, k + 1)))
    x_shape = (c, *hw) if draw(st.integers(0, 3)) == 0 else (n, c, *hw)
    return x_shape, (k, c_w, *kernel), bias, dict(stride=draw(pair), padding=padding, dilation=draw(pair),
                                                   groups=groups)


def torch_outcome(case):
    """The call's tensors and what CPU torch does with it: (x, w, b, opts, result, error)."""
    x_shape, w_shape, bias_len, opts = case
    x, w = torch.randn(x_shape, device=DEVICE), torch.randn(w_shape, device=DEVICE)
    b = None if bias_len is None else torch.randn(bias_len, device=DEVICE)
    try:
        return x, w, b, opts, F.conv2d(x.cpu(), w.cpu(), None if b is None else b.cpu(), **opts), None
    except Exception as e:  # noqa: BLE001 - its class is what the tests compare
        return x, w, b, opts, None, e


ENTRIES = pytest.mark.parametrize("entry", [mcconv.conv2d, mcconv.explain], ids=["conv2d", "explain"])


@ENTRIES
@settings(max_examples=examples(3.0))
@given(case=raw_calls())
def test_raises_where_torch_raises(entry, case):
    """Where torch raises, mcconv raises its documented ValueError/TypeError naming the argument."""
    x, w, b, opts, _, torch_error = torch_outcome(case)
    if torch_error is None:
        return
    with pytest.raises((ValueError, TypeError)) as info:
        entry(x, w, b, **opts)
    assert ARG_NAME.match(str(info.value)), str(info.value)


@ENTRIES
@settings(max_examples=examples(3.0))
@given(case=raw_calls())
def test_errors_are_also_torchs_exception_class(entry, case):
    """``except RuntimeError`` written for torch catches mcconv's error for the same call too."""
    x, w, b, opts, _, torch_error = torch_outcome(case)
    if torch_error is None:
        return
    with pytest.raises(Exception) as info:
        entry(x, w, b, **opts)
    assert isinstance(info.value, type(torch_error)), (
        f"torch raises {type(torch_error).__name__}({torch_error}); "
        f"mcconv {type(info.value).__name__}({info.value}) is no {type(torch_error).__name__}")


@ENTRIES
@settings(max_examples=examples(3.0))
@given(case=raw_calls())
def test_computes_where_torch_computes(entry, case):
    """Where torch gives a result, mcconv gives the same shape (and values). Two of torch's
    empty-input quirks may be rejected instead (a ValueError naming an argument): C = 0, where
    torch returns an (N, 0, P, Q) tensor whatever K is (see test_torch_parity), and dilation 0
    with an empty batch, which torch's empty-batch path forgets to check (it rejects it for
    N = 1). An empty batch is otherwise computed, even with an empty image (as torch does)."""
    x, w, b, opts, expected, torch_error = torch_outcome(case)
    if torch_error is not None:
        return
    try:
        out = entry(x, w, b, **opts)
    except ValueError as e:
        dilation = opts["dilation"] if isinstance(opts["dilation"], tuple) else (opts["dilation"],)
        quirk = x.shape[-3] == 0 or (x.dim() == 4 and x.shape[0] == 0 and 0 in dilation)
        if quirk and ARG_NAME.match(str(e)):
            return
        raise
    shape = out.output_shape if entry is mcconv.explain else out.shape
    assert tuple(shape) == tuple(expected.shape), f"torch gives {tuple(expected.shape)}, mcconv {tuple(shape)}"
    if entry is mcconv.conv2d:
        expected = F.conv2d(x.double().cpu(), w.double().cpu(), None if b is None else b.double().cpu(), **opts)
        assert_conv_close(out, expected, torch.float32, max(1, w.shape[1] * w.shape[2] * w.shape[3]))
