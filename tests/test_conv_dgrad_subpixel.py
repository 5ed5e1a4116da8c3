"""conv_dgrad_subpixel (kernels/conv2d_dgrad.py, PHASE_C > 0): the input gradient of a strided
convolution of few input channels, its stride phases as tile columns over one stride-1 window.

The window (mcconv.ops.input_grad.subpixel_window) against a brute-force enumeration of the taps;
values against float64 torch for odd shapes, strides 2-4 and (2, 3), asymmetric padding, groups,
one channel, images smaller than the stride, both steps, both dX layouts, fp32 and fp16; the
dispatch rule; the weight re-laid in each call (a weight written between calls is seen).
"""
import itertools

import pytest
import torch

from mcconv.ops import input_grad
from reference import DEVICE, DTYPES, assert_conv_close, reference_input_grad


def test_window_holds_every_tap_of_every_phase():
    """rows[u][ph] == t exactly when tap t reaches pixel h = i * step * stride + ph from dY row
    i * step + D - u (the enumeration over all taps: h + pad - t = stride * row)."""
    for stride, pad, taps, step in itertools.product((2, 3, 4), range(5), range(1, 8), (1, 2)):
        offset, rows = input_grad.subpixel_window(stride, pad, taps, step)
        for ph in range(step * stride):
            expected = {}
            for t in range(taps):
                if (ph + pad - t) % stride == 0:
                    expected[offset - (ph + pad - t) // stride] = t  # window row of dY row i*step + d
            found = {u: row[ph] for u, row in enumerate(rows) if row[ph] >= 0}
            assert found == expected, (stride, pad, taps, step, ph)
        assert max(rows[0]) >= 0 and max(rows[-1]) >= 0  # the window is no wider than the taps need


def _weight(shape, dtype, layout="channels_last"):
    w = torch.randn(shape, device=DEVICE).to(dtype)
    return w.to(memory_format=torch.channels_last) if layout == "channels_last" else w


def _grad_z(shape, dtype, layout):
    t = torch.randn(shape, device=DEVICE).to(dtype)
    return t.to(memory_format=torch.channels_last) if layout == "channels_last" else t


def check_subpixel(input_shape, w_shape, stride, padding, groups=1, dtype=torch.float32, layout="channels_last",
                   step=None):
    w = _weight(w_shape, dtype)
    out = input_grad.ConvSpec.from_shapes(input_shape, w_shape, stride, padding, 1, groups).output_shape
    gz = _grad_z(out, dtype, layout)
    plan = input_grad.plan(gz, w, input_shape, stride, padding, 1, groups)
    assert plan.kernel.name == "conv_dgrad_subpixel"
    if step is not None:
        assert plan.meta["GRID_STEP"] == step
    dx = input_grad.run(plan, gz, w)
    assert dx.shape == tuple(input_shape) and dx.stride() == plan.out_strides
    k, _, kh, kw = w_shape
    assert_conv_close(dx, reference_input_grad(gz, w, input_shape, stride, padding, 1, groups), dtype,
                      reduction_length=(k // groups) * kh * kw)
    return plan


# (input shape, weight shape, stride, padding, groups, step)
GEOMETRIES = {
    "stem": ((1, 3, 15, 13), (4, 3, 7, 7), 2, 3, 1, 2),  # ResNet-50's first layer, odd image
    "3x3-s2": ((2, 3, 9, 10), (8, 3, 3, 3), 2, 1, 1, 2),  # MobileNetV2's first layer
    "2x2-patches": ((1, 3, 8, 6), (8, 3, 2, 2), 2, 0, 1, 1),  # 4 taps for 4 pixels at either step
    "5x5-s3": ((1, 3, 10, 11), (5, 3, 5, 5), 3, 2, 1, None),
    "s2x3-asym": ((2, 2, 9, 10), (4, 2, 3, 4), (2, 3), (1, 0, 2, 1), 1, None),
    "groups3": ((1, 6, 9, 8), (9, 2, 3, 3), 2, 1, 3, None),  # runs not contiguous: scattered stores
    "one-channel": ((2, 1, 7, 9), (4, 1, 3, 3), 2, 1, 1, None),
    "image-under-stride": ((1, 3, 1, 2), (4, 3, 3, 3), 2, 1, 1, None),  # phases without pixels
}


@pytest.mark.parametrize("name", GEOMETRIES)
def test_values(name):
    x_shape, w_shape, stride, padding, groups, step = GEOMETRIES[name]
    check_subpixel(x_shape, w_shape, stride, padding, groups, step=step)


@pytest.mark.parametrize("dtype", DTYPES[1:], ids=str)
def test_half_precision(dtype):
    check_subpixel((2, 3, 11, 9), (16, 3, 7, 7), 2, 3, dtype=dtype, step=2)


def test_nchw_grad_z_and_grad_input():
    """NCHW: dY read from a channels_last copy, dX written channels_last (vector runs) and copied."""
    plan = check_subpixel((1, 3, 9, 7), (4, 3, 3, 3), 2, 1, layout="contiguous")
    assert plan.extra["copy_grad_z"] and plan.extra["grad_input_strides"] != plan.out_strides
    assert plan.meta["RUN_CONTIGUOUS"]


def test_store_facts():
    """Channels_last dX: each phase row's run (pw, c) at unit steps, rows 4-element aligned for the
    stem (3 channels x 4 columns a run), so that the epilogue stores 8 bytes at a time; groups
    break the run (another group's channels lie between)."""
    def plan(x_shape, w_shape, stride, padding, groups=1):
        gz = torch.empty(input_grad.ConvSpec.from_shapes(x_shape, w_shape, stride, padding, 1, groups).output_shape,
                         dtype=torch.float16, device="meta").to(memory_format=torch.channels_last)
        w = torch.empty(w_shape, dtype=torch.float16, device="meta")
        return input_grad.plan(gz, w, x_shape, stride, padding, 1, groups, device_name="NVIDIA_H100_80GB_HBM3",
                               sm_count=132)

    stem = plan((32, 3, 224, 224), (64, 3, 7, 7), 2, 3)
    assert stem.kernel.name == "conv_dgrad_subpixel"
    assert (stem.meta["PHASE_C"], stem.meta["PHASE_RUN"], stem.meta["PHASE_SW"], stem.meta["GRID_STEP"]) == (3, 16, 4, 2)
    assert stem.config["BLOCK_N"] == 64 and stem.meta["RUN_CONTIGUOUS"] and stem.meta["D_ALIGN"] == 4
    assert stem.meta["TAP_BITS"] == 32 and stem.kernel.loop_trips(stem.spec, stem.config) == [25]  # 5x5 window
    # K/g = 64 in one channel block a tap (its counter compiled out); under autotune, blocks unknown
    assert stem.meta["ONE_K_BLOCK"] and stem.kernel.tile_constexprs(stem.spec, {}) == {"ONE_K_BLOCK": False}
    grouped = plan((8, 6, 32, 32), (9, 2, 3, 3), 2, 1, groups=3)
    assert grouped.kernel.name == "conv_dgrad_subpixel" and not grouped.meta["RUN_CONTIGUOUS"]


def test_dispatch():
    def kernel(c, k, r, stride, dilation=1):
        gz = torch.empty(input_grad.ConvSpec.from_shapes((2, c, 32, 32), (k, c, r, r), stride, r // 2, dilation,
                                                         1).output_shape, device="meta")
        return input_grad.plan(gz, torch.empty(k, c, r, r, device="meta"), (2, c, 32, 32), stride, r // 2,
                               dilation).kernel.name

    assert kernel(3, 64, 7, 2) == "conv_dgrad_subpixel"
    assert kernel(8, 16, 3, 2) == "conv_dgrad_subpixel"  # 32 columns, all used, 4 taps: 9 otherwise
    assert kernel(64, 64, 3, 2) == "conv_dgrad"  # 256 columns x 4 taps against 64 x 9
    assert kernel(3, 8, 3, 2, dilation=2) == "conv_dgrad"  # dilated: the phase blocks
    assert kernel(3, 8, 3, 1) == "conv_dgrad"  # no stride, no phases
    assert kernel(3, 8, 1, 2) == "conv_dgrad"  # 1x1 at stride 2: one tap, nothing to share


def test_weight_written_between_calls_is_seen(fresh_plans):
    """The re-laid weight is gathered in each call from the weight's values (never cached): a write
    through .data (no version bump) between two calls of one plan shows in the second."""
    x_shape, w_shape, stride, padding, _, _ = GEOMETRIES["stem"]
    w = _weight(w_shape, torch.float32)
    gz = _grad_z(input_grad.ConvSpec.from_shapes(x_shape, w_shape, stride, padding).output_shape,
                 torch.float32, "channels_last")
    plan = input_grad.plan(gz, w, x_shape, stride, padding)
    input_grad.run(plan, gz, w)
    w.data.copy_(torch.randn(w_shape))
    assert input_grad.plan(gz, w, x_shape, stride, padding) is plan
    assert_conv_close(input_grad.run(plan, gz, w), reference_input_grad(gz, w, x_shape, stride, padding),
                      torch.float32, reduction_length=4 * 49)
