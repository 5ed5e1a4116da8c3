"""Per-call operand copies (mcconv._pack): when they apply, that results do not change, and that
each copy is made from the tensor's current values in every call."""
import pytest
import torch

import mcconv
import mcconv.tools.inspect  # noqa: F401 - fp32_mode
from mcconv import _pack, _plan
from reference import DEVICE, assert_conv_close, reference_conv2d


def _weight(*shape, channels_last=False):
    w = torch.randn(*shape, device=DEVICE)
    return w.to(memory_format=torch.channels_last) if channels_last else w


@pytest.mark.parametrize("weight_shape, groups, channels_last, expected", [
    ((8, 10, 3, 3), 1, False, True),   # direct, contiguous weight: input channels at stride kH*kW
    ((8, 10, 3, 3), 1, True, False),   # channels_last weight: input channels already at unit stride
    ((8, 10, 1, 1), 1, False, False),  # 1x1 GEMM: input channels at unit stride
    ((8, 1, 1, 1), 1, False, False),   # ... and one input channel
    ((10, 1, 3, 3), 10, False, False),  # depthwise kernel reads no weight tiles
    ((8, 5, 3, 3), 1, True, True),     # few channels: the direct kernel's fold packs every weight
])
def test_weight_copy_applies_to_channel_strided_direct_weights(weight_shape, groups, channels_last, expected):
    x = torch.empty(2, weight_shape[1] * groups, 9, 9, device="meta", dtype=torch.float16)
    w = _weight(*weight_shape, channels_last=channels_last).to("meta", torch.float16)
    pad = 0 if weight_shape[2] == 1 else 1
    assert mcconv.explain(x, w, padding=pad, groups=groups).packed_weight is expected


def test_pack_switch_off(monkeypatch, fresh_plans):
    monkeypatch.setenv(_pack.PACK_ENV, "0")
    x = torch.empty(2, 10, 9, 9, device="meta")
    assert not mcconv.explain(x, torch.empty(8, 10, 3, 3, device="meta"), padding=1).packed_weight
    # without the weight packing, few channels take the tap loop too (reading the weight in place)
    plan = mcconv.plans(torch.empty(2, 3, 9, 9, device="meta"), torch.empty(8, 3, 3, 3, device="meta"), padding=1)[0]
    assert plan.kernel.name == "conv_direct" and plan.meta["FOLD_CP"] == 0 and not plan.pack_weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_copied_and_in_place_weights_agree(dtype, monkeypatch, fresh_plans):
    x = torch.randn(2, 20, 7, 9, device=DEVICE, dtype=dtype)
    w = torch.randn(10, 10, 3, 2, device=DEVICE, dtype=dtype)
    copied = mcconv.conv2d(x, w, padding=(1, 0), groups=2)
    assert mcconv.explain(x, w, padding=(1, 0), groups=2).packed_weight
    monkeypatch.setenv(_pack.PACK_ENV, "0")
    _plan._plans.clear()
    assert not mcconv.explain(x, w, padding=(1, 0), groups=2).packed_weight
    plain = mcconv.conv2d(x, w, padding=(1, 0), groups=2)
    torch.testing.assert_close(copied, plain, rtol=0, atol=0)
    assert_conv_close(copied, reference_conv2d(x, w, padding=(1, 0), groups=2), dtype, 10 * 3 * 2)


def test_fold_is_for_tensor_core_math():
    x, w = torch.empty(2, 3, 9, 9), torch.empty(8, 3, 3, 3)  # CPU fp32: IEEE dots, the tap loop
    assert mcconv.plans(x, w, padding=1)[0].meta["FOLD_CP"] == 0
    for dtype, cp in ((torch.float16, 4), (torch.bfloat16, 4)):
        assert mcconv.plans(x.to(dtype), w.to(dtype), padding=1)[0].meta["FOLD_CP"] == cp
    with mcconv.tools.inspect.fp32_mode("tf32"):  # TF32 (planned for a GPU: meta tensors)
        plan = mcconv.plans(x.to("meta"), w.to("meta"), padding=1)[0]
        assert plan.meta["FOLD_CP"] == 4 and plan.meta["DOT_PRECISION"] == "tf32"


@pytest.mark.parametrize("dtype", [torch.float16])
def test_folded_and_tap_loop_agree(dtype, monkeypatch, fresh_plans):
    """The few-channel fold (padded input copy, (K, KH, RUN) weight) against the tap loop."""
    x = torch.randn(2, 6, 11, 9, device=DEVICE, dtype=dtype)
    w = torch.randn(10, 3, 5, 3, device=DEVICE, dtype=dtype)
    options = dict(stride=(2, 1), padding=(2, 1, 0, 3), dilation=(1, 2), groups=2)
    plan = mcconv.plans(x, w, **options)[0]
    assert plan.meta["FOLD_CP"] == 4 and plan.extra["input_copy"] == "fold"
    folded = mcconv.conv2d(x, w, **options)
    monkeypatch.setenv(_pack.PACK_ENV, "0")
    _plan._plans.clear()
    assert mcconv.plans(x, w, **options)[0].meta["FOLD_CP"] == 0
    plain = mcconv.conv2d(x, w, **options)
    assert_conv_close(folded, reference_conv2d(x, w, **options), dtype, 3 * 5 * 3)
    assert_conv_close(plain, reference_conv2d(x, w, **options), dtype, 3 * 5 * 3)


def test_weight_copy_is_fresh_on_every_call():
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    first = _pack.channels_last(w)
    assert first.shape == w.shape and first.stride() == _plan.contiguous_strides(w.shape, True)
    assert torch.equal(first, w)
    w.data[:] = torch.randn(4, 3, 3, 3, device=DEVICE)  # bumps no version counter
    assert torch.equal(_pack.channels_last(w), w)
    assert not torch.equal(first, w)  # the earlier copy is a snapshot, never reused


def test_fold_copies():
    from mcconv._spec import ConvSpec

    x = torch.randn(2, 6, 5, 4, device=DEVICE)
    w = torch.randn(4, 3, 3, 2, device=DEVICE)
    spec = ConvSpec.from_shapes(x.shape, w.shape, padding=(1, 2, 0, 1), groups=2)
    xp = _pack.fold_input(x, spec, 4)
    assert xp.shape == (2, 5 + 3, 4 + 1, 2, 4) and xp.is_contiguous()
    assert torch.equal(xp[:, 1:6, 0:4, :, :3], x.unflatten(1, (2, 3)).permute(0, 3, 4, 1, 2))
    assert xp[..., 3].abs().sum() == 0 and xp[:, 0].abs().sum() == 0 and xp[:, 6:].abs().sum() == 0
    wp = _pack.fold_weight(w, 4, 8)
    assert wp.shape == (4, 3, 8)
    assert torch.equal(wp.unflatten(2, (2, 4))[..., :3], w.permute(0, 2, 3, 1))
    assert wp.unflatten(2, (2, 4))[..., 3].abs().sum() == 0


def test_nchw_input_is_read_from_a_channels_last_copy():
    x = torch.empty(2, 16, 9, 9, device="meta")
    w = torch.empty(8, 16, 3, 3, device="meta")
    assert mcconv.plans(x, w, padding=1)[0].extra["input_copy"] == "channels_last"
    xl = x.to(memory_format=torch.channels_last)
    assert "input_copy" not in mcconv.plans(xl, w, padding=1)[0].extra
    assert mcconv.explain(x, w, padding=1).memory_format == "contiguous"  # torch's rule for the output


def test_training_sees_updated_weights():
    """Each step's forward must use that step's weights, not a stale copy."""
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
