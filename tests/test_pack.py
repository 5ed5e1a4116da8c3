"""Weight packing (mcconv._pack): when it applies, that results do not change, and that the
packed copy is made from the weight's current values in every call."""
import pytest
import torch

import mcconv
from mcconv import _pack, _plan
from reference import DEVICE, assert_conv_close, reference_conv2d


@pytest.fixture
def fresh_plans():
    _plan._plans.clear()
    yield
    _plan._plans.clear()


def _weight(*shape, channels_last=False):
    w = torch.randn(*shape, device=DEVICE)
    return w.to(memory_format=torch.channels_last) if channels_last else w


@pytest.mark.parametrize("weight_shape, groups, channels_last, expected", [
    ((8, 5, 3, 3), 1, False, True),   # direct, contiguous weight: neither channel axis at unit stride
    ((8, 5, 3, 3), 1, True, False),   # channels_last weight: input channels already at unit stride
    ((8, 5, 1, 1), 1, False, False),  # 1x1 GEMM: input channels at unit stride
    ((10, 1, 3, 3), 5, False, False),  # depthwise kernel reads no weight tiles
])
def test_packing_applies_to_strided_direct_weights(weight_shape, groups, channels_last, expected):
    x = torch.empty(2, 5, 9, 9, device="meta")
    w = _weight(*weight_shape, channels_last=channels_last).to("meta")
    pad = 0 if weight_shape[2] == 1 else 1
    assert mcconv.explain(x, w, padding=pad, groups=groups).packed_weight is expected


def test_pack_switch_off(monkeypatch, fresh_plans):
    monkeypatch.setenv(_pack.PACK_ENV, "0")
    x = torch.empty(2, 5, 9, 9, device="meta")
    assert not mcconv.explain(x, torch.empty(8, 5, 3, 3, device="meta"), padding=1).packed_weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_packed_and_unpacked_agree(dtype, monkeypatch, fresh_plans):
    x = torch.randn(2, 6, 7, 9, device=DEVICE, dtype=dtype)
    w = torch.randn(10, 3, 3, 2, device=DEVICE, dtype=dtype)
    packed = mcconv.conv2d(x, w, padding=(1, 0), groups=2)
    assert mcconv.explain(x, w, padding=(1, 0), groups=2).packed_weight
    monkeypatch.setenv(_pack.PACK_ENV, "0")
    _plan._plans.clear()
    assert not mcconv.explain(x, w, padding=(1, 0), groups=2).packed_weight
    plain = mcconv.conv2d(x, w, padding=(1, 0), groups=2)
    torch.testing.assert_close(packed, plain, rtol=0, atol=0)
    assert_conv_close(packed, reference_conv2d(x, w, padding=(1, 0), groups=2), dtype, 3 * 3 * 2)


def test_packed_copy_is_fresh_on_every_call():
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    first = _pack.packed(w)
    assert first.shape == w.shape and first.stride() == _pack.packed_strides(w.shape)
    assert torch.equal(first, w)
    w.data[:] = torch.randn(4, 3, 3, 3, device=DEVICE)  # bumps no version counter
    assert torch.equal(_pack.packed(w), w)
    assert not torch.equal(first, w)  # the earlier copy is a snapshot, never reused


def test_training_sees_updated_weights():
    """Each step's forward must use that step's weights, not a stale packed copy."""
    conv = mcconv.Conv2d(3, 4, 3, padding=1).to(DEVICE)
    assert mcconv.explain(torch.empty(1, 3, 6, 6, device="meta"), conv.weight.to("meta"), conv.bias.to("meta"),
                          padding=1).packed_weight
    x = torch.randn(1, 3, 6, 6, device=DEVICE)
    opt = torch.optim.SGD(conv.parameters(), lr=0.02)
    previous = None
    for _ in range(3):
        y = conv(x)
        assert_conv_close(y, reference_conv2d(x, conv.weight, conv.bias, padding=1), torch.float32, 27)
        if previous is not None:  # the step moved the weights far beyond the tolerance
            assert (y - previous).abs().max() > 0.1
        previous = y.detach()
        opt.zero_grad()
        y.sum().backward()
        opt.step()
    with torch.no_grad():
        assert_conv_close(conv(x), reference_conv2d(x, conv.weight, conv.bias, padding=1), torch.float32, 27)
