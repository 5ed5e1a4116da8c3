"""torch.export and torch.compile with dynamic shapes: mcconv's custom ops trace through their fakes."""
import shutil

import torch
from torch import nn

import mcconv
from reference import DEVICE, ON_GPU

COMPILE_BACKEND = "inductor" if ON_GPU or shutil.which("g++") else "aot_eager"


def _model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),
                        nn.Conv2d(8, 4, 1))
    mcconv.convert(net)
    net[0].activation = "silu"  # a fused activation whose backward needs z, too
    return net.to(DEVICE).eval()


def test_export_runs_and_matches_eager():
    model = _model()
    x = torch.randn(2, 3, 9, 9, device=DEVICE)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    assert any("mcconv" in str(node.target) for node in program.graph.nodes)
    for n in (2, 5):
        xn = torch.randn(n, 3, 9, 9, device=DEVICE)
        torch.testing.assert_close(program.module()(xn), model(xn), rtol=1e-5, atol=1e-5)


def test_compile_with_a_dynamic_batch_compiles_once():
    model = _model()
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(model, backend=counting, fullgraph=True)
    for n in (2, 3, 5, 7):
        x = torch.randn(n, 3, 9, 9, device=DEVICE)
        torch._dynamo.mark_dynamic(x, 0)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    assert len(graphs) == 1, f"recompiled {len(graphs)} times for 4 batch sizes"


def test_compile_dynamic_forward_and_backward():
    model = _model().train()
    compiled = torch.compile(model, backend=COMPILE_BACKEND, fullgraph=True, dynamic=True)
    for n in (2, 3):
        x = torch.randn(n, 3, 9, 9, device=DEVICE, requires_grad=True)
        compiled(x).square().sum().backward()
        grad = x.grad.clone()
        x.grad = None
        model(x).square().sum().backward()
        torch.testing.assert_close(grad, x.grad, rtol=1e-4, atol=1e-5)
