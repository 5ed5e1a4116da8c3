"""Backward kernels through their launchers (mcconv.ops), against float64 torch autograd.

Input, weight and bias gradients over an option grid (stride, padding incl. "same" and
asymmetric, dilation, groups, depthwise, 1x1), memory layouts and dtypes; the activations'
backward; the pre-activation store of the forward; determinism of the split reductions.
Shapes stay tiny: under Triton's interpreter the time grows with the number of programs.
"""
import pytest
import torch
import torch.nn.functional as F

import mcconv
from mcconv import ACTIVATIONS, ConvSpec, _plan, ops
from mcconv.epilogue import activation as get_activation
from reference import DEVICE, DTYPES, assert_conv_close


def _pad_args(padding):
    """(input pad for F.pad or None, padding for F.conv2d) for mcconv's padding forms."""
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        top, bottom, left, right = padding
        return (left, right, top, bottom), 0
    return None, padding


def reference_grads(x, w, grad_z, stride, padding, dilation, groups):
    """float64 CPU gradients of conv2d(x, w) + b for the upstream gradient grad_z."""
    x64 = x.detach().double().cpu().requires_grad_()
    w64 = w.detach().double().cpu().requires_grad_()
    pad, conv_pad = _pad_args(padding)
    xin = F.pad(x64, pad) if pad else x64
    z = F.conv2d(xin, w64, None, stride, conv_pad, dilation, groups)
    gz64 = grad_z.detach().double().cpu()
    z.backward(gz64)
    bias = gz64.sum(dim=(0, 2, 3)) if gz64.dim() == 4 else gz64.sum(dim=(1, 2))
    return x64.grad, w64.grad, bias


def output_shape(x_shape, w_shape, stride, padding, dilation, groups):
    return ConvSpec.from_shapes(x_shape, w_shape, stride, padding, dilation, groups).output_shape


def make(shape, dtype, layout):
    """A random tensor of `shape` in the given memory layout (values independent of the layout)."""
    t = torch.randn(shape, device=DEVICE).to(dtype)
    if layout == "channels_last" and t.dim() == 4:
        return t.to(memory_format=torch.channels_last)
    if layout == "strided":  # a non-contiguous view: every other element of a wider tensor
        wide = torch.zeros((*shape[:-1], 2 * shape[-1]), device=DEVICE, dtype=dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t


def check_grads(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, dtype=torch.float32,
                layout="contiguous", weight_layout=None):
    x = make(x_shape, dtype, layout)
    w = make(w_shape, dtype, weight_layout or "contiguous")
    z_shape = output_shape(x_shape, w_shape, stride, padding, dilation, groups)
    gz = make(z_shape, dtype, layout)
    ref_dx, ref_dw, ref_db = reference_grads(x, w, gz, stride, padding, dilation, groups)

    dx = ops.conv2d_input_grad(gz, w, x.shape, stride, padding, dilation, groups)
    assert dx.shape == x.shape and dx.dtype == dtype
    if layout == "channels_last" and gz.dim() == 4:
        assert dx.is_contiguous(memory_format=torch.channels_last)
    k, c_per_group, kh, kw = w_shape
    assert_conv_close(dx, ref_dx, dtype, reduction_length=(k // groups) * kh * kw)

    dw = ops.conv2d_weight_grad(gz, x, w.shape, stride, padding, dilation, groups)
    assert dw.shape == w.shape and dw.dtype == dtype
    pixels = gz.numel() // k
    assert_conv_close(dw, ref_dw, dtype, reduction_length=pixels)

    db = ops.conv2d_bias_grad(gz)
    assert db.shape == (k,) and db.dtype == dtype
    assert_conv_close(db, ref_db, dtype, reduction_length=pixels)


# (input shape, weight shape, stride, padding, dilation, groups)
GEOMETRIES = {
    "3x3": ((2, 4, 7, 6), (6, 4, 3, 3), 1, 1, 1, 1),
    "stride2": ((2, 4, 9, 8), (5, 4, 3, 3), 2, 1, 1, 1),
    "stride2x3-pad-dil": ((1, 3, 11, 10), (4, 3, 3, 2), (2, 3), (1, 2), (2, 1), 1),
    "same-even-dilated": ((2, 3, 7, 8), (4, 3, 4, 2), 1, "same", 2, 1),
    "asymmetric-stride2": ((2, 4, 8, 7), (4, 4, 3, 3), 2, (0, 2, 1, 0), 1, 1),
    "valid": ((1, 5, 6, 9), (3, 5, 2, 3), 1, "valid", 1, 1),
    "stride3-gaps": ((1, 4, 10, 11), (4, 4, 2, 2), 3, 0, 1, 1),
    "image-below-stride": ((2, 3, 2, 5), (4, 3, 1, 3), 3, (0, 0, 1, 1), 1, 1),
    "pad-beyond-kernel": ((1, 3, 4, 5), (4, 3, 2, 2), 1, 3, 1, 1),
    "groups2": ((2, 8, 6, 7), (6, 4, 3, 3), 1, 1, 1, 2),
    "groups4-stride2": ((1, 8, 7, 7), (8, 2, 3, 3), 2, 1, 1, 4),
    "depthwise": ((2, 6, 7, 8), (6, 1, 3, 3), 1, 1, 1, 6),
    "depthwise-stride2": ((2, 5, 9, 7), (5, 1, 3, 3), 2, 1, 1, 5),
    "depthwise-mult2": ((2, 4, 8, 7), (8, 1, 5, 3), (1, 2), (2, 1), (1, 2), 4),
    "1x1": ((2, 16, 5, 6), (12, 16, 1, 1), 1, 0, 1, 1),
    "1x1-groups": ((2, 8, 5, 5), (8, 4, 1, 1), 1, 0, 1, 2),
    "1x1-stride2": ((1, 6, 7, 8), (4, 6, 1, 1), 2, 0, 1, 1),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", GEOMETRIES)
def test_grads(name, dtype):
    check_grads(*GEOMETRIES[name], dtype=dtype)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("name", GEOMETRIES)
def test_grads_layouts(name, layout):
    """channels_last in, channels_last input gradient out; non-contiguous views read through strides."""
    check_grads(*GEOMETRIES[name], layout=layout, weight_layout="strided" if layout == "strided" else None)


@pytest.mark.parametrize("name", ["stride2", "depthwise-mult2", "1x1-groups"])
def test_grads_fp16_channels_last(name):
    check_grads(*GEOMETRIES[name], dtype=torch.float16, layout="channels_last")


@pytest.mark.parametrize("name", ["3x3", "depthwise-stride2", "1x1"])
def test_grads_unbatched(name):
    x_shape, *rest = GEOMETRIES[name]
    check_grads(x_shape[1:], *rest)


def test_empty_batch():
    x = torch.randn(0, 3, 5, 5, device=DEVICE)
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    gz = torch.randn(0, 4, 3, 3, device=DEVICE)
    assert ops.conv2d_input_grad(gz, w, x.shape).shape == x.shape
    assert torch.equal(ops.conv2d_weight_grad(gz, x, w.shape), torch.zeros_like(w))
    assert torch.equal(ops.conv2d_bias_grad(gz), torch.zeros(4, device=DEVICE))


def test_int64_offsets(monkeypatch):
    """The INDEX_64 variants compute the same gradients (forced by lowering the limit)."""
    monkeypatch.setattr(_plan, "INT32_LIMIT", 1)
    monkeypatch.setattr(_plan, "_plans", {})
    for name in ("stride2", "depthwise-mult2", "1x1"):
        check_grads(*GEOMETRIES[name])
    assert {plan.dispatch.index_bits for plan in _plan._plans.values()} == {64}


def test_int64_chosen_for_huge_tensors():
    # Plans only (meta tensors, no launch): a 2**31-element input gradient needs 64-bit offsets.
    gz = torch.empty(1, 64, 8192, 4096, dtype=torch.float16, device="meta")
    w = torch.empty(64, 64, 1, 1, dtype=torch.float16, device="meta")
    plan = ops.input_grad.plan(gz, w, (1, 64, 8192, 4096))
    assert plan.dispatch.index_bits == 64 and plan.dispatch.kernel == "gemm_1x1_dgrad"


def test_dispatch_names():
    def kernels(x_shape, w_shape, stride, padding, dilation, groups):
        x = torch.empty(x_shape, device="meta")
        w = torch.empty(w_shape, device="meta")
        found = mcconv.plans(x, w, None, stride, padding, dilation, groups, direction="backward")
        wgrad = next(p for p in found if p.kernel.operation == "weight_grad")
        return tuple(p.kernel.name for p in found), wgrad.meta["IS_1X1"] if "IS_1X1" in wgrad.meta else None

    assert kernels(*GEOMETRIES["3x3"]) == (("conv_dgrad", "conv_wgrad"), False)
    assert kernels(*GEOMETRIES["1x1"]) == (("gemm_1x1_dgrad", "conv_wgrad"), True)
    assert kernels(*GEOMETRIES["1x1-stride2"]) == (("conv_dgrad", "conv_wgrad"), False)
    assert kernels(*GEOMETRIES["depthwise-mult2"])[0] == ("depthwise_dgrad", "depthwise_wgrad")


# ---------------------------------------------------------------------------------- determinism

@pytest.mark.parametrize("name", ["3x3", "depthwise-stride2", "1x1"])
def test_bitwise_reproducible(name):
    x_shape, w_shape, *opts = GEOMETRIES[name]
    x = torch.randn(x_shape, device=DEVICE)
    w = torch.randn(w_shape, device=DEVICE)
    gz = torch.randn(output_shape(x_shape, w_shape, *opts), device=DEVICE)
    runs = [(ops.conv2d_input_grad(gz, w, x.shape, *opts), ops.conv2d_weight_grad(gz, x, w.shape, *opts),
             ops.conv2d_bias_grad(gz)) for _ in range(3)]
    for later in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], later))


@pytest.mark.parametrize("split", [1, 3, 7])
@pytest.mark.parametrize("name", ["3x3", "depthwise-mult2", "1x1"])
def test_split_reduction(monkeypatch, name, split):
    """Any split count gives the right sum, bitwise the same on every run."""
    monkeypatch.setattr(_plan, "split_count", lambda tiles, steps, sm_count: split)
    monkeypatch.setattr(_plan, "_plans", {})
    x_shape, w_shape, *opts = GEOMETRIES[name]
    x = torch.randn(x_shape, device=DEVICE)
    w = torch.randn(w_shape, device=DEVICE)
    gz = torch.randn(output_shape(x_shape, w_shape, *opts), device=DEVICE)
    _, ref_dw, ref_db = reference_grads(x, w, gz, *opts)
    dw = ops.conv2d_weight_grad(gz, x, w.shape, *opts)
    db = ops.conv2d_bias_grad(gz)
    assert {p.split for p in _plan._plans.values()} == {split}
    assert_conv_close(dw, ref_dw, torch.float32, reduction_length=gz.numel() // w_shape[0])
    assert_conv_close(db, ref_db, torch.float32, reduction_length=gz.numel() // w_shape[0])
    assert torch.equal(dw, ops.conv2d_weight_grad(gz, x, w.shape, *opts))
    assert torch.equal(db, ops.conv2d_bias_grad(gz))


# ---------------------------------------------------------------------------------- activations

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_activation_grad(activation, dtype):
    z = (3 * torch.randn(2, 5, 4, 6, device=DEVICE)).to(dtype)
    z[0, 0, 0, :3] = 0.0  # relu's derivative at 0 is 0, as in torch
    gy = torch.randn(2, 5, 4, 6, device=DEVICE).to(dtype)
    z64 = z.double().cpu().requires_grad_()
    act = ACTIVATIONS[activation]
    y64 = act.reference(z64)
    y64.backward(gy.double().cpu())
    saved = z if act.needs_preact else act.reference(z)
    gz = ops.activation_grad(gy, saved, activation)
    assert gz.dtype == dtype and gz.shape == gy.shape
    assert_conv_close(gz, z64.grad, dtype, reduction_length=16)


@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
def test_activation_bias_grad_fused(activation):
    z = torch.randn(2, 6, 5, 5, device=DEVICE).to(memory_format=torch.channels_last)
    gy = torch.randn(2, 6, 5, 5, device=DEVICE).to(memory_format=torch.channels_last)
    saved = z if activation != "relu" else F.relu(z)
    gz, gb = ops.activation_bias_grad(gy, saved if activation else None, activation)
    expected = ops.activation_grad(gy, saved, activation)
    assert gz.is_contiguous(memory_format=torch.channels_last) or activation is None
    torch.testing.assert_close(gz, expected, rtol=0, atol=0)
    assert_conv_close(gb, expected.double().sum(dim=(0, 2, 3)), torch.float32, reduction_length=50)


def test_activation_grad_none_and_strided():
    gy = torch.randn(2, 3, 4, 10, device=DEVICE)[..., ::2]
    assert ops.activation_grad(gy, None, None) is gy
    z = torch.randn(3, 4, 5, device=DEVICE)  # unbatched, strided grad
    gz = ops.activation_grad(gy[0], z, "silu")
    z64 = z.double().cpu().requires_grad_()
    F.silu(z64).backward(gy[0].double().cpu())
    assert_conv_close(gz, z64.grad, torch.float32, reduction_length=16)


def test_needs_preact():
    assert [ACTIVATIONS[a].needs_preact for a in ("relu", "silu", "gelu")] == [False, True, True]
    assert get_activation(None) is None and get_activation("none") is None
    with pytest.raises(ValueError, match="^activation:"):
        get_activation("tanh")


@pytest.mark.parametrize("name", ["stride2", "depthwise-mult2", "1x1"])
@pytest.mark.parametrize("activation", [None, "relu", "silu", "gelu"])
def test_forward_return_preact(name, activation):
    """The forward's epilogue stores z = conv + bias next to y = act(z) when asked."""
    x_shape, w_shape, *opts = GEOMETRIES[name]
    x = torch.randn(x_shape, device=DEVICE)
    w = torch.randn(w_shape, device=DEVICE)
    b = torch.randn(w_shape[0], device=DEVICE)
    y, z = ops.conv2d_forward(x, w, b, *opts, activation=activation, return_preact=True)
    if activation is None:
        assert z is y
    pad, conv_pad = _pad_args(opts[1])
    ref_z = F.conv2d(F.pad(x.double(), pad) if pad else x.double(), w.double(), b.double(), opts[0], conv_pad,
                     *opts[2:])
    k, c_per_group, kh, kw = w_shape
    assert_conv_close(z, ref_z, torch.float32, reduction_length=c_per_group * kh * kw)
    torch.testing.assert_close(y, ACTIVATIONS[activation].reference(z) if activation else z, rtol=1e-6, atol=1e-6)
    assert torch.equal(y, ops.conv2d_forward(x, w, b, *opts, activation=activation))


# ---------------------------------------------------------------------------------- validation

def test_errors():
    x = torch.randn(1, 4, 6, 6, device=DEVICE)
    w = torch.randn(3, 4, 3, 3, device=DEVICE)
    gz = torch.randn(1, 3, 4, 4, device=DEVICE)
    with pytest.raises(ValueError, match="^grad_z: expected the convolution's output shape"):
        ops.conv2d_input_grad(gz, w, (1, 4, 7, 7))
    with pytest.raises(TypeError, match="^weight: expected grad_z's dtype"):
        ops.conv2d_input_grad(gz, w.half(), x.shape)
    with pytest.raises(TypeError, match="^grad_z: expected input's dtype"):
        ops.conv2d_weight_grad(gz.half(), x, w.shape)
    with pytest.raises(ValueError, match="^groups:"):
        ops.conv2d_weight_grad(gz, x, w.shape, groups=3)
    with pytest.raises(ValueError, match="^padding:"):
        ops.conv2d_input_grad(gz, w, x.shape, stride=2, padding="same")
    with pytest.raises(ValueError, match="^activation:"):
        ops.activation_grad(gz, gz, "tanh")
    with pytest.raises(ValueError, match="^saved:"):
        ops.activation_grad(gz, None, "gelu")
    with pytest.raises(ValueError, match="^grad_z: expected a 3-D or 4-D"):
        ops.conv2d_bias_grad(gz[0, 0])


@pytest.mark.gpu
def test_bf16_grads():
    for name in ("stride2", "depthwise-mult2", "1x1", "groups2"):
        check_grads(*GEOMETRIES[name], dtype=torch.bfloat16)
