"""mcconv.Conv2d and mcconv.convert: nn.Conv2d parity, state dicts, padding modes, training."""
import copy
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mcconv
from reference import DEVICE

FP32_TOL = dict(rtol=1e-4, atol=1e-5)
# Inductor (the default backend) builds C++ for the CPU parts of a graph; it runs here with the
# system g++. A CPU machine without a C++ compiler falls back to aot_eager, which still traces
# the forward and backward graphs through the ops' fake implementations.
COMPILE_BACKEND = "inductor" if DEVICE == "cuda" or shutil.which("g++") else "aot_eager"


def test_module_matches_nn_conv2d_construction():
    kwargs = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, bias=True, padding_mode="zeros")
    torch.manual_seed(3)
    ours = mcconv.Conv2d(4, 6, (3, 2), **kwargs, activation="silu", device=DEVICE)
    torch.manual_seed(3)
    theirs = nn.Conv2d(4, 6, (3, 2), **kwargs, device=DEVICE)
    assert isinstance(ours, nn.Conv2d)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in theirs.named_parameters()]
    for a, b in zip(ours.parameters(), theirs.parameters()):  # same initialisation code, same draws
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert "activation='silu'" in repr(ours)
    assert mcconv.Conv2d(2, 2, 1, dtype=torch.float16).weight.dtype == torch.float16
    with pytest.raises(ValueError, match="activation"):
        mcconv.Conv2d(2, 2, 3, activation="tanh")


@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
def test_state_dict_round_trip_both_ways(activation):
    theirs = nn.Conv2d(3, 4, 3, padding=1, device=DEVICE)
    ours = mcconv.Conv2d(3, 4, 3, padding=1, device=DEVICE, activation=activation)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 6, 6, device=DEVICE)
    act = (lambda t: t) if activation is None else mcconv.ACTIVATIONS[activation].reference
    torch.testing.assert_close(ours(x), act(theirs(x)), **FP32_TOL)

    back = nn.Conv2d(3, 4, 3, padding=1, device=DEVICE)
    back.load_state_dict(ours.state_dict())
    assert ours.state_dict().keys() == back.state_dict().keys()
    torch.testing.assert_close(back.weight, theirs.weight, rtol=0, atol=0)
    torch.testing.assert_close(back.bias, theirs.bias, rtol=0, atol=0)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding, stride, dilation", [(1, 1, 1), ((2, 1), 2, 1), ("same", 1, 2)],
                         ids=["pad1", "pad2x1-stride2", "same-dil2"])
def test_padding_modes(padding_mode, padding, stride, dilation):
    torch.manual_seed(1)
    theirs = nn.Conv2d(3, 4, 3, stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode,
                       device=DEVICE)
    ours = mcconv.Conv2d(3, 4, 3, stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode,
                         device=DEVICE)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 6, 7, device=DEVICE, requires_grad=True)
    y, y_ref = ours(x), theirs(x)
    torch.testing.assert_close(y, y_ref, **FP32_TOL)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, ours.weight), gy)
    grads_ref = torch.autograd.grad(y_ref, (x, theirs.weight), gy)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, **FP32_TOL)


class _ScaledConv(nn.Conv2d):
    """A subclass with its own forward: convert must leave it alone."""

    def forward(self, x):
        return 2 * super().forward(x)


def _mixed_model():
    shared = nn.Conv2d(4, 4, 1)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="reflect"), shared, nn.GELU()),
        shared,  # the same layer twice: converted once, used twice
        _ScaledConv(4, 2, 3, stride=2),
    ).to(DEVICE)


def test_convert_swaps_plain_conv2d_and_reports_the_rest():
    model = _mixed_model()
    original = copy.deepcopy(model)
    params_before = list(model.parameters())
    model.train(False)
    model[0].register_forward_hook(lambda mod, inp, out: out * 1)  # hooks survive conversion

    converted = mcconv.convert(model)
    assert converted is model  # as PyTorch's converters: model = mcconv.convert(model)
    report = mcconv.conversion_report(model)
    assert report.swapped == 3 and report.converted == ["0", "2.0", "2.1"]
    assert list(report.left_alone) == ["4"] and "_ScaledConv" in report.left_alone["4"]
    assert "3 Conv2d layer(s) run on mcconv" in str(report)
    assert "mcconv.Conv2d(3, 4, kernel_size=(3, 3)" in repr(model)  # print(model) shows what was swapped
    assert type(model[0]) is mcconv.Conv2d and type(model[4]) is _ScaledConv
    assert model[3] is model[2][1] and type(model[3]) is mcconv.Conv2d
    assert all(a is b for a, b in zip(model.parameters(), params_before))  # same Parameter objects
    assert not model[0].training and len(model[0]._forward_hooks) == 1

    x = torch.randn(2, 3, 6, 6, device=DEVICE)
    torch.testing.assert_close(model(x), original(x), **FP32_TOL)

    assert mcconv.convert(model) is model  # idempotent
    assert mcconv.conversion_report(model) == report


def test_convert_leaves_float64_and_keeps_dtype():
    model = nn.Sequential(nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 1).double()).to(DEVICE)
    model[0].half()
    report = mcconv.conversion_report(mcconv.convert(model))
    assert report.converted == ["0"] and "float64" in report.left_alone["1"]
    assert model[0].weight.dtype == torch.float16 and model[0].weight.device.type == DEVICE
    single = mcconv.convert(nn.Conv2d(2, 3, 3).to(DEVICE))  # the model itself is a Conv2d
    assert type(single) is mcconv.Conv2d and mcconv.conversion_report(single).converted == [""]


class _TinyCNN(nn.Module):
    """3x3 conv -> depthwise 3x3 -> 1x1 conv -> pool -> linear, on 8x8 images."""

    def __init__(self, conv=nn.Conv2d):
        super().__init__()
        self.stem = conv(3, 8, 3, padding=1)
        self.dw = conv(8, 8, 3, stride=2, padding=1, groups=8)
        self.pw = conv(8, 6, 1)
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.dw(x))
        x = F.relu(self.pw(x))
        return self.head(x.mean((2, 3)))


def _train(model, images, labels, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_training_follows_nn_conv2d_loss_curve():
    torch.manual_seed(0)
    reference = _TinyCNN().to(DEVICE)
    ours = _TinyCNN(conv=mcconv.Conv2d).to(DEVICE)
    ours.load_state_dict(reference.state_dict())  # same initialisation
    images = torch.randn(8, 3, 8, 8, device=DEVICE)
    labels = torch.randint(0, 5, (8,), device=DEVICE)
    losses_ref = _train(reference, images, labels, steps=6)
    losses = _train(ours, images, labels, steps=6)
    assert losses_ref[-1] < losses_ref[0]  # it does learn
    # fp32 throughout (IEEE on the CPU; on the GPU TF32 only where torch would use it too)
    tol = 1e-2 if DEVICE == "cuda" else 1e-4
    assert losses == pytest.approx(losses_ref, rel=tol, abs=tol)
    for (name, p), p_ref in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, p_ref, rtol=10 * tol, atol=10 * tol, msg=name)


def test_converted_module_under_compile():
    torch.manual_seed(0)
    model = _TinyCNN().to(DEVICE)
    original = copy.deepcopy(model)
    mcconv.convert(model)
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend=COMPILE_BACKEND)
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    out, out_ref = compiled(x), original(x)
    torch.testing.assert_close(out, out_ref, **FP32_TOL)
    out.sum().backward()
    out_ref.sum().backward()
    for p, p_ref in zip(model.parameters(), original.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------ ResNet-18 on the GPU


class _BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class _ResNet18(nn.Module):
    """torchvision's resnet18 layout, written out so that the tests need no torchvision."""

    def __init__(self, classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths, layers, c_in = (64, 128, 256, 512), [], 64
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(_BasicBlock(c_in, width, stride), _BasicBlock(width, width, 1)))
            c_in = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layers(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.gpu
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_resnet18_converted_matches_original(channels_last):
    torch.manual_seed(0)
    original = _ResNet18().cuda()
    model = copy.deepcopy(original)
    report = mcconv.conversion_report(mcconv.convert(model))
    assert report.swapped == 20 and not report.left_alone  # 17 3x3/7x7 + 3 downsample 1x1
    x = torch.randn(8, 3, 224, 224, device="cuda")
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
        model.to(memory_format=torch.channels_last)
        original.to(memory_format=torch.channels_last)
    out, out_ref = model(x), original(x)
    target = torch.randn_like(out_ref)
    (out * target).sum().backward()
    (out_ref * target).sum().backward()
    # mcconv uses TF32 for fp32 exactly when torch's convolutions would (cuDNN's default): both
    # sides then round operands to 10 mantissa bits, independently.
    from mcconv._backend import conv_uses_tf32

    out_tol, grad_tol = (5e-3, 2e-2) if conv_uses_tf32() else (1e-4, 1e-3)
    assert _rel_err(out, out_ref) < out_tol
    for (name, p), p_ref in zip(model.named_parameters(), original.parameters()):
        assert _rel_err(p.grad, p_ref.grad) < grad_tol, name
