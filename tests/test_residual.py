"""The fused residual add: ``mcconv.conv2d(..., residual=r) == act(conv2d(x, w) + b + r)``.

Forward against float64 torch over the three forward kernels, the activations, dtypes and the
residual's layouts; gradients of input, weight, bias and residual; opcheck, torch.compile,
autocast, nn.Module and bad residual arguments. Shapes are tiny (Triton's interpreter on CPU).
"""
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

import mcconv
from mcconv import _plan, ops
from reference import DEVICE, ON_GPU, assert_conv_close, reference_conv2d, unit_roundoff

OPS = torch.ops.mcconv
COMPILE_BACKEND = "inductor" if ON_GPU or shutil.which("g++") else "aot_eager"
ACTIVATIONS = [None, *mcconv.ACTIVATIONS]


def _act(name):
    return (lambda z: z) if name is None else mcconv.ACTIVATIONS[name].reference

# kernel name -> (N, C, H, W, K, kernel, conv options); sizes are not multiples of any block.
KINDS = {
    "conv_direct": (2, 3, 5, 6, 5, (3, 3), dict(padding=1, stride=(1, 2))),
    "gemm_1x1": (2, 5, 4, 3, 7, (1, 1), dict()),
    "depthwise": (2, 4, 5, 5, 8, (3, 3), dict(padding=1, groups=4)),
}


def _make(kind, dtype, bias=True, device=DEVICE):
    n, c, h, w, k, kernel, opts = KINDS[kind]
    groups = opts.get("groups", 1)
    x = torch.randn(n, c, h, w, device=device).to(dtype)
    wt = (torch.randn(k, c // groups, *kernel, device=device) / math.sqrt(c // groups * kernel[0] * kernel[1]))
    b = torch.randn(k, device=device).to(dtype) if bias else None
    return x, wt.to(dtype), b, opts


def _out_shape(x, w, opts):
    return tuple(reference_conv2d(x, w, None, **opts).shape)


def _residual(shape, layout, dtype, device=DEVICE):
    """A residual of `shape` laid out as `layout`; its values do not depend on the layout."""
    r = torch.randn(shape, device=device).to(dtype)
    if layout == "contiguous":
        return r
    if layout == "channels_last":
        return r.to(memory_format=torch.channels_last)
    if layout == "view":  # a strided, offset window into a larger NHCW buffer: no dense layout
        n, k, p, q = shape
        buf = torch.zeros(n, p, k, q + 3, device=device, dtype=dtype)
        view = buf.permute(0, 2, 1, 3)[..., 2:2 + q]
        view.copy_(r)
        assert not view.is_contiguous() and not view.is_contiguous(memory_format=torch.channels_last)
        return view
    if layout == "expanded":  # stride 0 along the batch: still exactly the output's shape
        return r[:1].expand(shape)
    raise AssertionError(layout)


def _reference(x, w, b, r, opts, activation):
    z = reference_conv2d(x, w, b, **opts) + r.detach().double().cpu()
    return _act(activation)(z)


def _reduction(kind):
    _, c, _, _, _, kernel, opts = KINDS[kind]
    return c // opts.get("groups", 1) * kernel[0] * kernel[1]


# ------------------------------------------------------------------ forward

FORWARD_DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
                  pytest.param(torch.bfloat16, marks=pytest.mark.gpu, id="bf16")]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "view", "expanded"])
@pytest.mark.parametrize("dtype", FORWARD_DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_reference(kind, dtype, layout):
    x, w, b, opts = _make(kind, dtype)
    activation = ACTIVATIONS[(list(KINDS).index(kind) + len(layout)) % 4]  # spread over the grid
    r = _residual(_out_shape(x, w, opts), layout, dtype)
    y = mcconv.conv2d(x, w, b, activation=activation, residual=r, **opts)
    assert mcconv.explain(x, w, b, activation=activation, residual=r, **opts).kernel == kind
    assert y.dtype == dtype and y.shape == r.shape and y.is_contiguous()  # the input's layout, not r's
    assert_conv_close(y, _reference(x, w, b, r, opts, activation), dtype, _reduction(kind))


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_every_activation_and_the_preactivation_include_the_residual(kind, activation):
    """Channels_last input (so channels_last y and z) with a contiguous residual; z = conv + b + r."""
    x, w, b, opts = _make(kind, torch.float32, bias=activation != "silu")
    x = x.to(memory_format=torch.channels_last)
    r = _residual(_out_shape(x, w, opts), "contiguous", torch.float32)
    y, z = ops.conv2d_forward(x, w, b, opts.get("stride", 1), opts.get("padding", 0), 1,
                                  opts.get("groups", 1), activation, return_preact=True, residual=r)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_conv_close(z, _reference(x, w, b, r, opts, None), torch.float32, _reduction(kind))
    assert_conv_close(y, _reference(x, w, b, r, opts, activation), torch.float32, _reduction(kind))


@pytest.mark.parametrize("kind", KINDS)
def test_unbatched_input(kind):
    x, w, b, opts = _make(kind, torch.float32)
    r = _residual(_out_shape(x, w, opts)[1:], "contiguous", torch.float32).requires_grad_()
    y = mcconv.conv2d(x[1], w, b, activation="relu", residual=r, **opts)
    assert y.shape == r.shape
    assert_conv_close(y, _reference(x[1], w, b, r, opts, "relu"), torch.float32, _reduction(kind))
    gy = torch.randn_like(y)
    (gr,) = torch.autograd.grad(y, r, gy)
    assert gr.shape == r.shape and torch.equal(gr, gy * (y > 0))
    r = r.detach()
    y = ops.conv2d_forward(x[1], w, b, opts.get("stride", 1), opts.get("padding", 0), 1, opts.get("groups", 1),
                               residual=r.transpose(1, 2).contiguous().transpose(1, 2))
    assert_conv_close(y, _reference(x[1], w, b, r, opts, None), torch.float32, _reduction(kind))


def test_plans_are_cached_by_residual_presence_and_strides():
    x, w, b, opts = _make("conv_direct", torch.float32)
    shape = _out_shape(x, w, opts)
    _plan._plans.clear()
    for layout in (None, "contiguous", "channels_last", "view", "contiguous", None):
        r = None if layout is None else _residual(shape, layout, torch.float32)
        y = mcconv.conv2d(x, w, b, residual=r, **opts)
        want = reference_conv2d(x, w, b, **opts) + (0 if r is None else r.double())
        assert_conv_close(y, want, torch.float32, _reduction("conv_direct"))
    assert len({id(p) for p in _plan._plans.values()}) == 4  # none, and one per residual layout
    assert mcconv.explain(x, w, b, residual=r, **opts) == mcconv.explain(x, w, b, **opts)


def test_module_forward_takes_a_residual():
    conv = mcconv.Conv2d(3, 4, 3, padding=1, padding_mode="reflect", activation="relu").to(DEVICE)
    x = torch.randn(2, 3, 5, 5, device=DEVICE)
    r = torch.randn(2, 4, 5, 5, device=DEVICE)
    with torch.no_grad():
        z = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), conv.weight, conv.bias)
        torch.testing.assert_close(conv(x, r), F.relu(z + r), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(conv(x, residual=r), F.relu(z + r), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(conv(x), F.relu(z), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ gradients


def _assert_grad_close(actual, expected, dtype, reduction_length):
    u = unit_roundoff(dtype)
    atol = 8 * u * math.sqrt(reduction_length) + 1e-5
    torch.testing.assert_close(actual.detach().double().cpu(), expected, rtol=8 * u, atol=atol)


GRAD_CASES = [("conv_direct", "silu", "contiguous"), ("conv_direct", "relu", "channels_last"),
              ("gemm_1x1", "gelu", "view"), ("gemm_1x1", None, "channels_last"),
              ("depthwise", "relu", "view"), ("depthwise", "gelu", "contiguous")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("kind, activation, layout", GRAD_CASES, ids=["-".join(map(str, c)) for c in GRAD_CASES])
def test_gradients_match_float64_reference(kind, activation, layout, dtype):
    x, w, b, opts = _make(kind, dtype)
    r = _residual(_out_shape(x, w, opts), layout, dtype)
    leaves = [t.requires_grad_() for t in (x, w, b, r)]
    y = mcconv.conv2d(x, w, b, activation=activation, residual=r, **opts)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, gy)

    ref_leaves = [t.detach().double().cpu().requires_grad_() for t in leaves]
    x64, w64, b64, r64 = ref_leaves
    z = F.conv2d(x64, w64, b64, **opts) + r64
    # relu's mask from mcconv's own y: a pre-activation rounded across zero is not an error.
    y64 = z * (y.detach().cpu() > 0) if activation == "relu" else _act(activation)(z)
    grads_ref = torch.autograd.grad(y64, ref_leaves, gy.detach().double().cpu())
    _, c, _, _, k, kernel, _ = KINDS[kind]
    groups = opts.get("groups", 1)
    pixels = y.shape[0] * y.shape[2] * y.shape[3]
    lengths = (k // groups * kernel[0] * kernel[1], pixels, pixels, 1)
    _assert_grad_close(y, y64.detach(), dtype, _reduction(kind))
    for got, want, leaf, length in zip(grads, grads_ref, leaves, lengths):
        assert got.shape == leaf.shape and got.dtype == leaf.dtype
        _assert_grad_close(got, want, dtype, length)


@pytest.mark.parametrize("op_name", ["conv2d", "conv2d_preact"])
def test_residual_gradient_alone_and_the_recomputing_op(op_name):
    """Only the residual requires grad (a frozen conv), through each forward op; for
    torch.ops.mcconv.conv2d with gelu the backward recomputes z, which must include r."""
    x = torch.randn(2, 3, 5, 5, device=DEVICE)
    w = torch.randn(4, 3, 3, 3, device=DEVICE) / 5
    r = torch.randn(2, 4, 5, 5, device=DEVICE, requires_grad=True)
    out = getattr(OPS, op_name)(x, w, None, [1, 1], [1, 1, 1, 1], [1, 1], 1, "gelu", r)
    y = out[0] if op_name == "conv2d_preact" else out
    gy = torch.randn_like(y)
    (gr,) = torch.autograd.grad(y, r, gy)
    r64 = r.detach().double().requires_grad_()
    (gr_ref,) = torch.autograd.grad(F.gelu(F.conv2d(x.double(), w.double(), padding=1) + r64), r64, gy.double())
    _assert_grad_close(gr, gr_ref, torch.float32, 1)
    # and with x and w too, residual frozen
    x.requires_grad_()
    y = OPS.conv2d(x, w, None, [1, 1], [1, 1, 1, 1], [1, 1], 1, "gelu", r.detach())
    (gx,) = torch.autograd.grad(y, x, gy)
    x64 = x.detach().double().requires_grad_()
    (gx_ref,) = torch.autograd.grad(F.gelu(F.conv2d(x64, w.double(), padding=1) + r.detach().double()), x64,
                                    gy.double())
    _assert_grad_close(gx, gx_ref, torch.float32, 36)


def test_residual_is_the_input_itself():
    """The identity shortcut: x feeds both the convolution and the residual; gradients add."""
    x = torch.randn(2, 4, 5, 5, device=DEVICE, requires_grad=True)
    w = (torch.randn(4, 4, 3, 3, device=DEVICE) / 6).requires_grad_()
    y = mcconv.conv2d(x, w, padding=1, activation="relu", residual=x)
    gy = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), gy)
    x64, w64 = (t.detach().double().requires_grad_() for t in (x, w))
    z = F.conv2d(x64, w64, padding=1) + x64
    gx_ref, gw_ref = torch.autograd.grad(z * (y.detach() > 0), (x64, w64), gy.double())
    _assert_grad_close(gx, gx_ref, torch.float32, 36)
    _assert_grad_close(gw, gw_ref, torch.float32, 50)


# ------------------------------------------------------------------ opcheck, compile, autocast


@pytest.mark.parametrize("op_name, activation, layout", [
    ("conv2d", "gelu", "channels_last"), ("conv2d_preact", "silu", "view"), ("conv2d_preact", "none", "contiguous"),
])
def test_opcheck_with_a_residual(op_name, activation, layout):
    x = torch.randn(2, 4, 4, 3, device=DEVICE, requires_grad=True)
    w = torch.randn(4, 2, 2, 2, device=DEVICE, requires_grad=True)
    b = torch.randn(4, device=DEVICE, requires_grad=True)
    r = _residual((2, 4, 4, 2), layout, torch.float32).requires_grad_()  # P = 4, Q = 2
    args = (x, w, b, [1, 2], [1, 0, 0, 1], [1, 1], 2, activation, r)
    torch.library.opcheck(getattr(OPS, op_name).default, args)


def _block(x, w1, b1, w2, b2):
    """A ResNet basic block: relu(conv2(relu(conv1(x))) + x), the add fused into conv2."""
    y = mcconv.conv2d(x, w1, b1, padding=1, activation="relu")
    return mcconv.conv2d(y, w2, b2, padding=1, activation="silu", residual=x)


def test_compile_fullgraph_with_a_residual():
    x = torch.randn(2, 3, 4, 4, device=DEVICE).to(memory_format=torch.channels_last)
    params = [torch.randn(3, 3, 3, 3, device=DEVICE) / 5, torch.randn(3, device=DEVICE),
              torch.randn(3, 3, 3, 3, device=DEVICE) / 5, torch.randn(3, device=DEVICE)]
    leaves = [x.requires_grad_()] + [p.requires_grad_() for p in params]
    compiled = torch.compile(_block, fullgraph=True, dynamic=False, backend=COMPILE_BACKEND)
    out = compiled(*leaves)
    grads = torch.autograd.grad(out.square().sum(), leaves)
    out_eager = _block(*leaves)
    grads_eager = torch.autograd.grad(out_eager.square().sum(), leaves)
    torch.testing.assert_close(out, out_eager, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, grads_eager):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(ON_GPU, reason="CPU autocast")
def test_autocast_casts_the_residual():
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    r = torch.randn(2, 4, 5, 5, requires_grad=True)  # float32, as a float32 shortcut under AMP
    with torch.autocast("cpu", dtype=torch.float16):
        y = mcconv.conv2d(x, w, padding=1, activation="relu", residual=r)
        y_op = OPS.conv2d(x, w, None, [1, 1], [1, 1, 1, 1], [1, 1], 1, "relu", r)  # the op's own rule
    assert y.dtype == y_op.dtype == torch.float16
    torch.testing.assert_close(y, y_op)
    y_ref = F.relu(F.conv2d(x.half().double(), w.half().double(), padding=1) + r.half().double())
    torch.testing.assert_close(y.double(), y_ref, rtol=2 ** -9, atol=2 ** -9 * math.sqrt(27))
    (gr,) = torch.autograd.grad(y.float().sum(), r)
    assert gr.dtype == torch.float32
    torch.testing.assert_close(gr, (y > 0).float())


# ------------------------------------------------------------------ bad residuals


def _bad_residuals(out_shape):
    n, k, p, q = out_shape
    return [
        (torch.randn(n, k, p, q + 1, device=DEVICE), ValueError),  # wrong shape
        (torch.randn(1, k, 1, 1, device=DEVICE), ValueError),  # broadcastable is not enough
        (torch.randn(k, p, q, device=DEVICE), ValueError),  # unbatched shape for a batched input
        (torch.randn(out_shape, device=DEVICE).half(), TypeError),  # dtype
        (torch.randn(out_shape, device=DEVICE).double(), TypeError),
        (torch.randn(out_shape, device="meta"), TypeError),  # device
        (1.0, TypeError),  # not a tensor
        ([[0.0]], TypeError),
    ]


@pytest.mark.parametrize("requires_grad", [False, True])
def test_bad_residuals_raise_naming_residual(requires_grad):
    x, w, b, opts = _make("conv_direct", torch.float32)
    out_shape = _out_shape(x, w, opts)
    x.requires_grad_(requires_grad)
    # a cached valid call of the same shapes must not skip the residual's checks
    mcconv.conv2d(x, w, b, residual=torch.randn(out_shape, device=DEVICE), **opts)
    for residual, error in _bad_residuals(out_shape):
        with pytest.raises(error, match="residual"):
            mcconv.conv2d(x, w, b, residual=residual, **opts)
        with pytest.raises(error, match="residual"):
            ops.conv2d_forward(x.detach(), w, b, opts["stride"], opts["padding"], residual=residual)
        with pytest.raises(error, match="residual"):
            mcconv.explain(x.detach(), w, b, residual=residual, **opts)
    with pytest.raises(ValueError, match="residual"):  # the batched shape for an unbatched input
        mcconv.conv2d(x[0], w, b, residual=torch.randn(out_shape, device=DEVICE), **opts)
    with pytest.raises(ValueError, match="residual"):
        mcconv.Conv2d(3, 5, 3, padding=1).to(DEVICE)(x, torch.randn(out_shape, device=DEVICE))
