"""Launches record into CUDA graphs: no host synchronisation on the launch path, and the
packed-weight cache does not freeze weights inside a graph."""
import pytest
import torch

import mcconv
from reference import assert_conv_close, reference_conv2d


@pytest.mark.gpu
@pytest.mark.parametrize("weight_shape, groups", [((32, 16, 3, 3), 1), ((16, 16, 1, 1), 1), ((16, 1, 3, 3), 16)])
def test_conv2d_replays_in_a_cuda_graph(weight_shape, groups):
    x = torch.randn(2, 16, 12, 12, device="cuda")
    w = torch.randn(*weight_shape, device="cuda")
    b = torch.randn(weight_shape[0], device="cuda")
    pad = weight_shape[2] // 2
    mcconv.conv2d(x, w, b, padding=pad, groups=groups, activation="relu")  # compile and plan outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = mcconv.conv2d(x, w, b, padding=pad, groups=groups, activation="relu")
    with torch.no_grad():  # new inputs and weights in place, as a training step would leave them
        x.copy_(torch.randn_like(x))
        w.mul_(-0.5)
    graph.replay()
    torch.cuda.synchronize()
    reduction = weight_shape[1] * weight_shape[2] * weight_shape[3]
    assert_conv_close(y, reference_conv2d(x, w, b, padding=pad, groups=groups, activation="relu"),
                      torch.float32, reduction)
