"""mcconv.conv2d under autograd, torch.library.opcheck, torch.compile and autocast.

Gradients are checked against float64 torch on the very values mcconv received. Shapes are tiny:
on the CPU every kernel runs through Triton's interpreter, whose cost grows with the programs.
"""
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

import mcconv
from reference import DEVICE, ON_GPU, unit_roundoff

OPS = torch.ops.mcconv
# Inductor (the default backend) builds C++ for the CPU parts of a graph; it runs here with the
# system g++. A CPU machine without a C++ compiler falls back to aot_eager, which still traces
# the forward and backward graphs through the ops' fake implementations.
COMPILE_BACKEND = "inductor" if ON_GPU or shutil.which("g++") else "aot_eager"

# (name, N, C, H, W, K, kernel, options); activations are spread over the cases.
CASES = [
    ("3x3-pad1-bias", 2, 4, 5, 5, 6, (3, 3), dict(padding=1)),
    ("stride2-relu", 2, 3, 7, 6, 4, (3, 3), dict(stride=2, padding=1, activation="relu")),
    ("same-even-silu", 1, 3, 6, 5, 4, (2, 4), dict(padding="same", activation="silu")),
    ("dilation2-gelu", 1, 3, 7, 7, 5, (3, 2), dict(dilation=2, padding=(2, 1), activation="gelu")),
    ("groups2-nobias", 2, 4, 5, 5, 6, (3, 3), dict(groups=2, padding=1, bias=False)),
    ("depthwise-x2-relu", 2, 4, 6, 6, 8, (3, 3), dict(groups=4, padding=1, activation="relu")),
    ("1x1-gelu", 2, 6, 4, 4, 5, (1, 1), dict(activation="gelu")),
    ("asym-4tuple", 1, 3, 5, 6, 4, (3, 3), dict(padding=(0, 2, 1, 0))),
    ("channels_last-silu", 2, 4, 5, 5, 4, (3, 3), dict(padding=1, activation="silu", channels_last=True)),
    ("depthwise-channels_last", 2, 4, 5, 5, 4, (3, 3), dict(groups=4, padding="same", channels_last=True)),
    ("unbatched", None, 3, 5, 5, 4, (3, 3), dict(padding=1, activation="relu")),
]


def _make(n, c, h, w, k, kernel, opts, dtype, device=DEVICE):
    groups = opts.get("groups", 1)
    x = torch.randn((c, h, w) if n is None else (n, c, h, w), device=device).to(dtype)
    if opts.get("channels_last"):
        x = x.to(memory_format=torch.channels_last)
    wt = (torch.randn(k, c // groups, *kernel, device=device) / math.sqrt(c // groups * kernel[0] * kernel[1]))
    b = torch.randn(k, device=device).to(dtype) if opts.get("bias", True) else None
    return x, wt.to(dtype), b


def _act(name):
    return (lambda z: z) if name is None else mcconv.ACTIVATIONS[name].reference


def _conv_kwargs(opts):
    return {key: opts[key] for key in ("stride", "padding", "dilation", "groups") if key in opts}


def _reference_grads(x, w, b, grad_y, y_mc, opts):
    """float64 gradients of act(conv2d(x, w) + b); relu's mask is taken from mcconv's own y, so
    that a pre-activation rounded across zero does not count as an error."""
    x64, w64 = x.detach().double().cpu().requires_grad_(), w.detach().double().cpu().requires_grad_()
    b64 = None if b is None else b.detach().double().cpu().requires_grad_()
    kw = _conv_kwargs(opts)
    padding = kw.get("padding", 0)
    if isinstance(padding, tuple) and len(padding) == 4:
        top, bottom, left, right = padding
        z = F.conv2d(F.pad(x64, (left, right, top, bottom)), w64, b64, **{**kw, "padding": 0})
    else:
        z = F.conv2d(x64, w64, b64, **kw)
    activation = opts.get("activation")
    y = z * (y_mc.detach().cpu() > 0) if activation == "relu" else _act(activation)(z)
    leaves = [t for t in (x64, w64, b64) if t is not None]
    return y, torch.autograd.grad(y, leaves, grad_y.detach().double().cpu())


def _assert_grad_close(actual, expected, dtype, reduction_length, scale=1.0):
    """Like reference.assert_conv_close, with a margin for the extra rounding of dL/dz."""
    u = unit_roundoff(dtype)
    atol = scale * (8 * u * math.sqrt(reduction_length) + 1e-5)
    torch.testing.assert_close(actual.detach().double().cpu(), expected, rtol=8 * u, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gradients_match_float64_reference(case, dtype):
    _, n, c, h, w, k, kernel, opts = case
    x, wt, b = _make(n, c, h, w, k, kernel, opts, dtype)
    leaves = [t.requires_grad_() for t in (x, wt, b) if t is not None]
    y = mcconv.conv2d(x, wt, b, activation=opts.get("activation"), **_conv_kwargs(opts))
    if opts.get("channels_last"):
        assert y.is_contiguous(memory_format=torch.channels_last)
    grad_y = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, grad_y)

    y_ref, grads_ref = _reference_grads(x, wt, b, grad_y, y, opts)
    _assert_grad_close(y, y_ref, dtype, c // opts.get("groups", 1) * kernel[0] * kernel[1])
    batch_pixels = y_ref.shape[0] * y_ref.shape[-1] * y_ref.shape[-2] if n is not None else y_ref[0].numel()
    lengths = [k // opts.get("groups", 1) * kernel[0] * kernel[1], batch_pixels, batch_pixels]
    for got, want, leaf, length in zip(grads, grads_ref, leaves, lengths):
        assert got.shape == leaf.shape and got.dtype == leaf.dtype
        # weight/bias gradients sum over the batch and pixels: their size grows like sqrt(length)
        _assert_grad_close(got, want, dtype, length)


def test_only_needed_gradients_are_computed():
    x = torch.randn(1, 3, 5, 5, device=DEVICE)
    w = torch.randn(4, 3, 3, 3, device=DEVICE, requires_grad=True)
    b = torch.randn(4, device=DEVICE)
    y = mcconv.conv2d(x, w, b, padding=1, activation="gelu")
    y.sum().backward()
    assert x.grad is None and b.grad is None and w.grad is not None
    _, (_, gw_ref, _) = _reference_grads_all(x, w, b, torch.ones_like(y), dict(padding=1, activation="gelu"))
    _assert_grad_close(w.grad, gw_ref, torch.float32, 25)


def _reference_grads_all(x, w, b, grad_y, opts):
    x64, w64, b64 = (t.detach().double().cpu().requires_grad_() for t in (x, w, b))
    y = _act(opts.get("activation"))(F.conv2d(x64, w64, b64, **_conv_kwargs(opts)))
    return y, torch.autograd.grad(y, (x64, w64, b64), grad_y.double().cpu())


def test_preact_op_gradient_adds_both_outputs():
    """conv2d_preact returns (y, z); a loss using both gets dL/dz = act'(z) dL/dy + dL/dz_out."""
    x = torch.randn(1, 3, 5, 5, device=DEVICE, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=DEVICE, requires_grad=True)
    b = torch.randn(4, device=DEVICE, requires_grad=True)
    y, z = OPS.conv2d_preact(x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], 1, "silu")
    gy, gz = torch.randn_like(y), torch.randn_like(z)
    grads = torch.autograd.grad((y, z), (x, w, b), (gy, gz))
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    z64 = F.conv2d(x64, w64, b64, padding=1)
    grads_ref = torch.autograd.grad((F.silu(z64), z64), (x64, w64, b64), (gy.double(), gz.double()))
    for got, want, length in zip(grads, grads_ref, (36, 25, 25)):
        _assert_grad_close(got, want, torch.float32, length)


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_direct_op_call_recomputes_preactivation(activation):
    """torch.ops.mcconv.conv2d itself (no z saved) is differentiable too: z is recomputed."""
    x = torch.randn(2, 2, 4, 4, device=DEVICE, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, device=DEVICE, requires_grad=True)
    y = OPS.conv2d(x, w, None, [1, 1], [1, 1, 1, 1], [1, 1], 1, activation)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w), gy)
    x64, w64 = (t.detach().double().requires_grad_() for t in (x, w))
    grads_ref = torch.autograd.grad(_act(activation)(F.conv2d(x64, w64, padding=1)), (x64, w64), gy.double())
    for got, want, length in zip(grads, grads_ref, (27, 32)):
        _assert_grad_close(got, want, torch.float32, length)


def test_frozen_layer_gives_input_gradient_only():
    x = torch.randn(1, 3, 5, 5, device=DEVICE, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=DEVICE)  # frozen: its input need not be kept
    b = torch.randn(4, device=DEVICE)
    y = mcconv.conv2d(x, w, b, padding=1, activation="relu")
    gy = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, gy)
    _, (gx_ref, _, _) = _reference_grads_all(x, w, b, gy * (y > 0), dict(padding=1))
    _assert_grad_close(gx, gx_ref, torch.float32, 36)


def test_double_backward_is_refused():
    x = torch.randn(1, 2, 4, 4, device=DEVICE, requires_grad=True)
    w = torch.randn(2, 2, 3, 3, device=DEVICE, requires_grad=True)
    (gx,) = torch.autograd.grad(mcconv.conv2d(x, w).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        gx.sum().backward()


def test_inference_path_matches_the_op_and_shapes_need_no_data():
    """Without autograd mcconv.conv2d skips the op's dispatch; meta and fake tensors use the op."""
    x = torch.randn(2, 3, 6, 5, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    b = torch.randn(4, device=DEVICE)
    with torch.no_grad():
        y = mcconv.conv2d(x, w, b, stride=2, padding="valid", activation="gelu")
    y_op = OPS.conv2d(x, w, b, [2, 2], [0, 0, 0, 0], [1, 1], 1, "gelu")
    torch.testing.assert_close(y, y_op, rtol=0, atol=0)
    assert y.stride() == y_op.stride()

    y_meta = mcconv.conv2d(x.to("meta"), w.to("meta"), b.to("meta"), stride=2, activation="gelu")
    assert y_meta.device.type == "meta" and y_meta.shape == y.shape and y_meta.stride() == y.stride()
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        y_fake = mcconv.conv2d(mode.from_tensor(x), mode.from_tensor(w), padding="same")
    assert y_fake.shape == (2, 4, 6, 5) and y_fake.is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------ argument errors


@pytest.mark.parametrize("kwargs, error, argument", [
    (dict(stride=2, padding="same"), ValueError, "padding"),
    (dict(padding="full"), ValueError, "padding"),
    (dict(stride=0), ValueError, "stride"),
    (dict(dilation=(1, 2, 3)), ValueError, "dilation"),
    (dict(groups=3), ValueError, "groups"),
    (dict(activation="tanh"), ValueError, "activation"),
])
def test_bad_arguments_raise_before_the_op(kwargs, error, argument, monkeypatch):
    x = torch.randn(1, 4, 5, 5, device=DEVICE, requires_grad=True)
    w = torch.randn(4, 4, 3, 3, device=DEVICE, requires_grad=True)
    mcconv.conv2d(x, w, padding=1)  # a cached valid call of the same shapes must not skip checks
    monkeypatch.setattr(mcconv._autograd, "conv2d_op", None)  # reaching the op would fail differently
    monkeypatch.setattr(mcconv._autograd, "conv2d_preact_op", None)
    with pytest.raises(error, match=argument):
        mcconv.conv2d(x, w, **kwargs)


def test_bad_tensors_raise_before_the_op():
    x = torch.randn(1, 4, 5, 5, device=DEVICE)
    w = torch.randn(4, 4, 3, 3, device=DEVICE)
    with pytest.raises(TypeError, match="weight"):
        mcconv.conv2d(x, w.half())
    with pytest.raises(ValueError, match="bias"):
        mcconv.conv2d(x, w, torch.zeros(3, device=DEVICE))
    with pytest.raises(TypeError, match="input"):
        mcconv.conv2d(x.double(), w.double())
    with pytest.raises(TypeError, match="input"):
        mcconv.conv2d([[1.0]], w)


# ------------------------------------------------------------------ opcheck


def _layout(t, layout):
    if layout == "channels_last":
        return t.to(memory_format=torch.channels_last)
    if layout == "permuted":  # NCHW view of an NHCW buffer: neither contiguous nor channels_last
        return t.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    return t


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "permuted"])
@pytest.mark.parametrize("op_name, activation, groups", [
    ("conv2d", "none", 1), ("conv2d", "gelu", 2), ("conv2d_preact", "silu", 1), ("conv2d_preact", "relu", 4),
])
def test_opcheck_forward_ops(op_name, activation, groups, layout):
    x = _layout(torch.randn(2, 4, 4, 3, device=DEVICE, requires_grad=True), layout)
    w = torch.randn(4, 4 // groups, 2, 2, device=DEVICE, requires_grad=True)
    if layout == "permuted":
        w = w.detach().permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2).requires_grad_()
    b = torch.randn(4, device=DEVICE, requires_grad=True)
    args = (x, w, b, [1, 2], [1, 0, 0, 1], [1, 1], groups, activation)
    torch.library.opcheck(getattr(OPS, op_name).default, args)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck_backward_ops(layout):
    x = _layout(torch.randn(2, 4, 4, 3, device=DEVICE), layout)
    w = torch.randn(6, 2, 3, 2, device=DEVICE)
    gz = _layout(torch.randn(2, 6, 2, 3, device=DEVICE), layout)  # P = 2, Q = 3
    conv = ([2, 1], [1, 0, 0, 1], [1, 1], 2)
    torch.library.opcheck(OPS.conv2d_input_grad.default, (gz, w, list(x.shape), *conv))
    torch.library.opcheck(OPS.conv2d_weight_grad.default, (gz, x, list(w.shape), *conv))
    torch.library.opcheck(OPS.conv2d_bias_grad.default, (gz,))
    for activation, saved in (("relu", F.relu(gz)), ("silu", gz), ("gelu", gz)):
        torch.library.opcheck(OPS.activation_grad.default, (torch.randn_like(gz), saved, activation))
        torch.library.opcheck(OPS.activation_bias_grad.default, (torch.randn_like(gz), saved, activation))


# ------------------------------------------------------------------ torch.compile


def _chain(x, w1, b1, w2, w3):
    """silu 3x3 'same' conv -> depthwise gelu -> 1x1 relu, plus an eager-style residual."""
    y = mcconv.conv2d(x, w1, b1, padding="same", activation="silu")
    y = mcconv.conv2d(y, w2, None, padding=1, groups=y.shape[1], activation="gelu")
    return mcconv.conv2d(y, w3, None, activation="relu") + x[:, :1]


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_compile_fullgraph_forward_and_backward(channels_last):
    x = torch.randn(2, 3, 5, 5, device=DEVICE)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    params = [torch.randn(4, 3, 3, 3, device=DEVICE) / 5, torch.randn(4, device=DEVICE),
              torch.randn(4, 1, 3, 3, device=DEVICE) / 3, torch.randn(2, 4, 1, 1, device=DEVICE) / 2]
    leaves = [x.requires_grad_()] + [p.requires_grad_() for p in params]
    compiled = torch.compile(_chain, fullgraph=True, dynamic=False, backend=COMPILE_BACKEND)
    out = compiled(*leaves)
    grads = torch.autograd.grad(out.square().sum(), leaves)
    out_eager = _chain(*leaves)
    grads_eager = torch.autograd.grad(out_eager.square().sum(), leaves)
    torch.testing.assert_close(out, out_eager, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, grads_eager):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------ autocast


def _autocast_case(device_type, dtype):
    x = torch.randn(2, 3, 5, 5, device=DEVICE, requires_grad=True)  # float32 leaves, as in AMP
    w = torch.randn(4, 3, 3, 3, device=DEVICE, requires_grad=True)
    b = torch.randn(4, device=DEVICE, requires_grad=True)
    with torch.autocast(device_type, dtype=dtype):
        y = mcconv.conv2d(x, w, b, padding=1, activation="silu")
        y_ref = F.silu(F.conv2d(x, w, b, padding=1))  # torch's own autocast rule for conv2d
    assert y.dtype == y_ref.dtype == dtype
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w, b), gy)
    grads_ref = torch.autograd.grad(y_ref, (x, w, b), gy)
    u = unit_roundoff(dtype)
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=8 * u, atol=8 * u * math.sqrt(27))
    for got, want, length in zip(grads, grads_ref, (36, 50, 50)):
        assert got.dtype == torch.float32  # back through the cast to the float32 leaves
        torch.testing.assert_close(got, want, rtol=8 * u, atol=8 * u * math.sqrt(length) * 3)


@pytest.mark.skipif(ON_GPU, reason="CPU autocast; the CUDA case is test_autocast_cuda")
def test_autocast_cpu_float16():
    _autocast_case("cpu", torch.float16)


@pytest.mark.skipif(ON_GPU, reason="CPU autocast; the CUDA case is test_autocast_cuda")
def test_autocast_cpu_bfloat16_forward():
    # bf16 backward kernels are only checked on the GPU (the interpreter's bf16 dot is unreliable).
    x = torch.randn(1, 3, 5, 5)
    w = torch.randn(4, 3, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mcconv.conv2d(x, w, padding=1)
        y_op = OPS.conv2d(x, w, None, [1, 1], [1, 1, 1, 1], [1, 1], 1, "none")  # the op's own rule
    assert y.dtype == y_op.dtype == torch.bfloat16
    y_ref = F.conv2d(x.bfloat16().double(), w.bfloat16().double(), padding=1)
    torch.testing.assert_close(y.double(), y_ref, rtol=2 ** -6, atol=2 ** -6 * math.sqrt(27))
    torch.testing.assert_close(y_op, y)


@pytest.mark.filterwarnings("ignore:.*(CUDA|autocast).*:UserWarning")
def test_autocast_of_another_device_type_changes_nothing():
    x = torch.randn(1, 3, 5, 5, device=DEVICE)
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    other = "cpu" if ON_GPU else "cuda"
    with torch.autocast(other, dtype=torch.float16, enabled=torch.amp.is_autocast_available(other)):
        assert mcconv.conv2d(x, w).dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_autocast_cuda(dtype):
    _autocast_case("cuda", dtype)


def test_autocast_under_compile():
    x = torch.randn(2, 3, 5, 5, device=DEVICE, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=DEVICE, requires_grad=True)

    def f(x, w):
        with torch.autocast(DEVICE, dtype=torch.float16):
            return mcconv.conv2d(x, w, padding=1, activation="relu")

    y = torch.compile(f, fullgraph=True, dynamic=False, backend=COMPILE_BACKEND)(x, w)
    y_eager = f(x, w)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y, y_eager)
    (gw,) = torch.autograd.grad(y.float().sum(), w)
    (gw_eager,) = torch.autograd.grad(y_eager.float().sum(), w)
    assert gw.dtype == torch.float32
    torch.testing.assert_close(gw, gw_eager)
