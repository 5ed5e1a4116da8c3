"""mcconv.fold_batchnorm: eval-mode batch norms folded into the convolutions before them.

The folded model must compute what the eval model computed (fp32 tolerance), with torch's layers
and with mcconv's (converted); what cannot be folded is left, each with its reason in the report;
training mode is refused; folding twice changes nothing.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mcconv
from reference import DEVICE

FP32_TOL = dict(rtol=1e-4, atol=1e-5)


def _randomise_statistics(model: nn.Module) -> nn.Module:
    """Batch norms with running statistics and affine parameters far from the identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.running_mean is not None:
                    m.running_mean.uniform_(-1, 1)
                    m.running_var.uniform_(0.25, 2)
                if m.weight is not None:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
    return model


def _prepared(model: nn.Module, converted: bool) -> tuple:
    """(the model to fold, an untouched eval copy for reference)."""
    torch.manual_seed(0)
    model = _randomise_statistics(model.to(DEVICE)).eval()
    reference = copy.deepcopy(model)
    if converted:
        report = mcconv.conversion_report(mcconv.convert(model))
        assert not report.left_alone
    return model, reference


class _ResNetBlock(nn.Module):
    """conv-bn-relu-conv-bn plus a 1x1 conv-bn downsample shortcut (torchvision's BasicBlock)."""

    def __init__(self, c_in=3, c_out=4, stride=2):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.downsample(x))


class _MobileNetBlock(nn.Module):
    """MobileNetV2's inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, each with a bn."""

    def __init__(self, c=4, expand=2):
        super().__init__()
        hidden = c * expand
        self.block = nn.Sequential(
            nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c),
        )

    def forward(self, x):
        return x + self.block(x)


@pytest.mark.parametrize("converted", [False, True], ids=["nn", "mcconv"])
def test_resnet_block(converted):
    model, reference = _prepared(_ResNetBlock(), converted)
    conv_weights = [model.conv1.weight, model.conv2.weight, model.downsample[0].weight]
    out, report = mcconv.fold_batchnorm(model, report=True)
    assert out is model
    assert [(p.conv, p.bn, p.method) for p in report.folded] == [
        ("conv1", "bn1", "fx"), ("conv2", "bn2", "fx"), ("downsample.0", "downsample.1", "fx")]
    assert report.method == "fx" and report.left_alone == {} and report.trace_error is None
    assert type(model.bn1) is type(model.bn2) is type(model.downsample[1]) is nn.Identity
    assert [model.conv1.weight, model.conv2.weight, model.downsample[0].weight] == conv_weights  # same Parameters
    assert all(isinstance(c.bias, nn.Parameter) for c in (model.conv1, model.conv2, model.downsample[0]))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(2, 3, 7, 7, device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), **FP32_TOL)


@pytest.mark.parametrize("converted", [False, True], ids=["nn", "mcconv"])
def test_mobilenet_block(converted):
    model, reference = _prepared(_MobileNetBlock(), converted)
    model, report = mcconv.fold_batchnorm(model, report=True)
    assert [(p.conv, p.bn) for p in report.folded] == [("block.0", "block.1"), ("block.3", "block.4"),
                                                       ("block.6", "block.7")]
    assert {p.method for p in report.folded} == {"fx"} and not report.left_alone
    assert [type(m).__name__ for m in model.block] == ["Conv2d", "Identity", "ReLU6"] * 2 + ["Conv2d", "Identity"]
    if converted:
        assert mcconv.conversion_report(model).converted == ["block.0", "block.3", "block.6"]
    x = torch.randn(2, 4, 5, 5, device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), **FP32_TOL)


def test_conv1d_and_conv3d():
    model = nn.Sequential(mcconv.Conv1d(3, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(),
                          nn.Conv1d(4, 4, 3, groups=4, bias=False), nn.BatchNorm1d(4))
    model, reference = _prepared(model, converted=False)
    x = torch.randn(2, 3, 9, device=DEVICE)
    _, report = mcconv.fold_batchnorm(model, report=True)
    assert [(p.conv, p.bn) for p in report.folded] == [("0", "1"), ("3", "4")]
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), **FP32_TOL)

    model3, reference3 = _prepared(nn.Sequential(nn.Conv3d(2, 3, 3, padding=1), nn.BatchNorm3d(3)), converted=False)
    _, report = mcconv.fold_batchnorm(model3, report=True)
    assert len(report.folded) == 1 and type(model3[1]) is nn.Identity
    x3 = torch.randn(1, 2, 4, 4, 4, device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(model3(x3), reference3(x3), **FP32_TOL)


# --------------------------------------------------------------------------- refused: training mode

def test_training_mode_is_refused_naming_the_module():
    model = _randomise_statistics(_ResNetBlock())  # a new module is in training mode
    with pytest.raises(ValueError, match=r"model: .*\(model.training is True\).*model\.eval\(\)") as info:
        mcconv.fold_batchnorm(model)
    assert isinstance(info.value, RuntimeError) and "_ResNetBlock" in str(info.value)
    model.eval()
    model.downsample[1].train()  # one batch norm left in training mode
    with pytest.raises(ValueError, match=r"batch norm 'downsample\.1' is in training mode"):
        mcconv.fold_batchnorm(model)
    assert type(model.bn1) is nn.BatchNorm2d and model.conv1.bias is None  # nothing was changed


# --------------------------------------------------------------------------- left alone, with reasons

class _Awkward(nn.Module):
    """One pair that folds and one batch norm for each reason to leave it."""

    def __init__(self):
        super().__init__()
        self.ok = nn.Conv2d(3, 4, 3, padding=1)
        self.ok_bn = nn.BatchNorm2d(4, affine=False)  # affine=False folds: gamma = 1, beta = 0
        self.act = mcconv.Conv2d(4, 4, 1, activation="relu")
        self.act_bn = nn.BatchNorm2d(4)
        self.used_twice = nn.Conv2d(4, 4, 1)
        self.used_twice_bn = nn.BatchNorm2d(4)
        self.no_stats = nn.Conv2d(4, 4, 1)
        self.no_stats_bn = nn.BatchNorm2d(4, track_running_stats=False)
        self.shared = nn.Conv2d(4, 4, 1)
        self.shared_bn = nn.BatchNorm2d(4)
        self.after_relu_bn = nn.BatchNorm2d(4)
        self.res = mcconv.Conv2d(4, 4, 1)
        self.res_bn = nn.BatchNorm2d(4)
        self.up = nn.ConvTranspose2d(4, 4, 1)
        self.up_bn = nn.BatchNorm2d(4)
        self.hooked = nn.Conv2d(4, 4, 1)
        self.hooked_bn = nn.BatchNorm2d(4)
        self.hooked_bn.register_forward_hook(lambda m, i, o: None)
        self.twice_bn = nn.BatchNorm2d(4)
        self.twice = nn.Conv2d(4, 4, 1)
        self.tied = nn.Conv2d(4, 4, 1)
        self.tied_bn = nn.BatchNorm2d(4)
        self.tied_too = nn.Conv2d(4, 4, 1)
        self.tied_too.weight = self.tied.weight  # tied weights: folding would change tied_too
        self.unused_bn = nn.BatchNorm2d(4)  # never called

    def forward(self, x):
        x = self.ok_bn(self.ok(x))
        x = self.act_bn(self.act(x))
        y = self.used_twice(x)
        x = self.used_twice_bn(y) + y
        x = self.no_stats_bn(self.no_stats(x))
        x = self.shared_bn(self.shared(x)) + self.shared(x)
        x = self.after_relu_bn(F.relu(x))
        x = self.res_bn(self.res(x, residual=x))
        x = self.up_bn(self.up(x))
        x = self.hooked_bn(self.hooked(x))
        x = self.twice_bn(self.twice(x)) + self.twice_bn(x)
        return self.tied_bn(self.tied(x)) + self.tied_too(x)


REASONS = {
    "act_bn": "fused activation ('relu')",
    "used_twice_bn": "output of 'used_twice' is also used elsewhere",
    "no_stats_bn": "no running statistics",
    "shared_bn": "'shared' is called 2 times",
    "after_relu_bn": "does not directly follow a convolution (its input is call_function",
    "res_bn": "residual",
    "up_bn": "transposed convolution",
    "hooked_bn": "hooks",
    "twice_bn": "called 2 times in forward",
    "tied_bn": "'tied' shares its weight or bias with another module",
    "unused_bn": "not called by the model's forward",
}


@pytest.mark.parametrize("converted", [False, True], ids=["nn", "mcconv"])
def test_what_is_left_alone_and_why(converted):
    model, reference = _prepared(_Awkward(), converted)
    model, report = mcconv.fold_batchnorm(model, report=True)
    assert [(p.conv, p.bn, p.method) for p in report.folded] == [("ok", "ok_bn", "fx")]
    assert list(report.left_alone) == list(REASONS)
    for name, why in REASONS.items():
        assert why in report.left_alone[name], (name, report.left_alone[name])
        assert isinstance(model.get_submodule(name), nn.BatchNorm2d)
    text = str(report)
    assert text.startswith("mcconv: 1 BatchNorm layer(s) folded, 11 left; pairs found by torch.fx graph")
    assert "  folded: ok_bn into ok [fx]" in text and f"  left: no_stats_bn: {report.left_alone['no_stats_bn']}" in text
    x = torch.randn(2, 3, 5, 5, device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), **FP32_TOL)


class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so only nn.Sequential pairs are found."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
        self.shared = nn.Conv2d(4, 4, 1)
        self.tail = nn.Sequential(self.shared, nn.BatchNorm2d(4))  # registered twice: shared
        self.head = nn.Conv2d(4, 4, 1)
        self.head_bn = nn.BatchNorm2d(4)  # follows head, but not inside an nn.Sequential

    def forward(self, x):
        x = self.features(x)
        if x.sum() > 0:  # data-dependent: fx raises TraceError
            x = -x
        x = self.tail(x) + self.shared(x)
        return self.head_bn(self.head(x))


def test_falls_back_to_sequential_neighbours_when_fx_cannot_trace():
    model, reference = _prepared(_Untraceable(), converted=False)
    model, report = mcconv.fold_batchnorm(model, report=True)
    assert report.method == "sequential" and "TraceError" in report.trace_error
    assert [(p.conv, p.bn, p.method) for p in report.folded] == [("features.0", "features.1", "sequential"),
                                                                 ("features.3", "features.4", "sequential")]
    assert "registered 2 times" in report.left_alone["tail.1"]
    assert "not found directly after a convolution in an nn.Sequential" in report.left_alone["head_bn"]
    assert "torch.fx could not trace the model: TraceError" in str(report)
    x = torch.randn(2, 3, 5, 5, device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), **FP32_TOL)


# --------------------------------------------------------------------------- dtypes, idempotence

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_layers_fold_in_float64(dtype):
    conv = nn.Conv2d(3, 4, 3, bias=False).to(DEVICE, dtype)
    bn = _randomise_statistics(nn.BatchNorm2d(4)).to(DEVICE)  # float32 statistics, as AMP models keep them
    model = nn.Sequential(conv, bn).eval()
    w64 = conv.weight.detach().double()
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    bias64 = bn.bias.detach().double() - bn.running_mean.double() * scale
    mcconv.fold_batchnorm(model)
    assert conv.weight.dtype == conv.bias.dtype == dtype
    torch.testing.assert_close(conv.weight, (w64 * scale[:, None, None, None]).to(dtype), rtol=0, atol=0)
    torch.testing.assert_close(conv.bias, bias64.to(dtype), rtol=0, atol=0)


def test_folding_twice_is_a_no_op():
    model, reference = _prepared(_ResNetBlock(), converted=False)
    mcconv.fold_batchnorm(model)
    state = copy.deepcopy(model.state_dict())
    modules = [type(m) for m in model.modules()]
    again, report = mcconv.fold_batchnorm(model, report=True)
    assert again is model and report.folded == [] and report.left_alone == {}
    assert str(report).startswith("mcconv: 0 BatchNorm layer(s) folded, 0 left")
    assert [type(m) for m in model.modules()] == modules
    assert state.keys() == model.state_dict().keys()
    for name, t in model.state_dict().items():
        assert torch.equal(t, state[name]), name
    x = torch.randn(1, 3, 6, 6, device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), **FP32_TOL)
