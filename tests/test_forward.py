"""mcconv.conv2d against a float64 torch reference: every option, odd shapes, layouts, dtypes.

Sizes are small and deliberately not multiples of any block size (C = 3, 5, 7, 19; H, W = 1,
5, 9, 13), so every tile is partial and every mask matters. The grid is hand-picked rather
than a cartesian product: each option appears, on each kernel it can reach, within the
interpreter's time budget.
"""
from dataclasses import dataclass

import pytest
import torch

import mcconv
from reference import DEVICE, assert_conv_close, reference_conv2d, unit_roundoff

# reference.DTYPES leaves bf16 out on the CPU; listing it with the gpu mark makes the skip visible.
FORWARD_DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float16, id="float16"),
                  pytest.param(torch.bfloat16, marks=pytest.mark.gpu, id="bfloat16")]


@dataclass(frozen=True)
class Case:
    """One convolution: input and weight sizes and every option of mcconv.conv2d."""

    kernel_name: str  # what mcconv.explain must report, so the grid provably reaches each kernel
    c: int
    k: int
    hw: tuple
    kernel: tuple = (3, 3)
    n: int = 2
    stride: object = 1
    padding: object = 0
    dilation: object = 1
    groups: int = 1
    bias: bool = True
    activation: str | None = None
    channels_last: bool = False

    def options(self) -> dict:
        """Keyword arguments shared by mcconv.conv2d and reference_conv2d."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups, activation=self.activation)


CASES = {
    # gemm_1x1: 1x1 kernel, stride 1, no padding
    "1x1": Case("gemm_1x1", c=3, k=7, hw=(5, 5), kernel=(1, 1)),
    "1x1-c19-k24-relu-nobias": Case("gemm_1x1", c=19, k=24, hw=(9, 13), kernel=(1, 1), activation="relu",
                                    bias=False),
    "1x1-groups2-gelu": Case("gemm_1x1", c=10, k=14, hw=(5, 9), kernel=(1, 1), groups=2, activation="gelu"),
    "1x1-depthwise-mult2": Case("gemm_1x1", c=7, k=14, hw=(5, 5), kernel=(1, 1), groups=7, activation="silu"),
    "1x1-valid-dilation2": Case("gemm_1x1", c=5, k=3, hw=(1, 9), kernel=(1, 1), padding="valid", dilation=2),
    "1x1-channels-last": Case("gemm_1x1", c=19, k=5, hw=(9, 9), kernel=(1, 1), channels_last=True,
                              activation="relu"),
    # 1x1 kernels that are not a plain GEMM fall back to the direct kernel
    "1x1-stride2": Case("conv_direct", c=5, k=7, hw=(9, 9), kernel=(1, 1), stride=2, activation="silu"),
    "1x1-pad1": Case("conv_direct", c=3, k=5, hw=(5, 9), kernel=(1, 1), padding=1, bias=False),
    # conv_direct: square, even, rectangular and large kernels
    "3x3-pad1-silu": Case("conv_direct", c=3, k=5, hw=(13, 13), padding=1, activation="silu"),
    "3x3-c19-k24-stride2-gelu": Case("conv_direct", n=1, c=19, k=24, hw=(13, 9), stride=2, padding=1,
                                     activation="gelu"),
    "3x3-stride-pair-pad-pair": Case("conv_direct", c=5, k=7, hw=(9, 13), stride=(1, 2), padding=(1, 0),
                                     bias=False),
    "3x3-dilation2-relu": Case("conv_direct", c=7, k=5, hw=(13, 13), dilation=2, padding=2, activation="relu"),
    "3x3-dilation-pair-same": Case("conv_direct", c=5, k=3, hw=(9, 13), dilation=(2, 1), padding="same"),
    "3x3-pad4-gelu": Case("conv_direct", c=5, k=7, hw=(9, 9), padding=(1, 0, 2, 1), activation="gelu"),
    "3x3-pad4-stride-pair": Case("conv_direct", c=3, k=5, hw=(13, 9), stride=(2, 3), padding=(0, 2, 1, 0),
                                 bias=False),
    "3x3-h1": Case("conv_direct", c=5, k=7, hw=(1, 5), padding=1),
    "3x3-h1w1-relu": Case("conv_direct", c=3, k=5, hw=(1, 1), padding=1, activation="relu"),
    "2x2-same-silu": Case("conv_direct", c=5, k=7, hw=(9, 9), kernel=(2, 2), padding="same", activation="silu"),
    "2x2-valid": Case("conv_direct", c=7, k=3, hw=(5, 9), kernel=(2, 2), padding="valid", bias=False),
    "2x2-same-dilation3": Case("conv_direct", c=3, k=5, hw=(9, 5), kernel=(2, 2), padding="same", dilation=3),
    "4x2-same": Case("conv_direct", c=5, k=3, hw=(9, 9), kernel=(4, 2), padding="same", activation="gelu"),
    "5x3-pad-pair-gelu": Case("conv_direct", c=7, k=5, hw=(13, 9), kernel=(5, 3), padding=(2, 1),
                              activation="gelu"),
    "5x3-c19-stride2-valid": Case("conv_direct", c=19, k=7, hw=(13, 13), kernel=(5, 3), stride=2,
                                  padding="valid"),
    "7x7-pad3-relu": Case("conv_direct", n=1, c=3, k=5, hw=(13, 13), kernel=(7, 7), padding=3,
                          activation="relu"),
    "7x7-stride2-nobias": Case("conv_direct", c=5, k=7, hw=(9, 9), kernel=(7, 7), stride=2, padding=2,
                               bias=False, activation="silu"),
    "groups2-silu": Case("conv_direct", c=10, k=14, hw=(9, 9), groups=2, padding=1, activation="silu"),
    "groups3-5x3-same": Case("conv_direct", c=9, k=6, hw=(9, 13), kernel=(5, 3), groups=3, padding="same"),
    "3x3-channels-last-gelu": Case("conv_direct", c=19, k=24, hw=(9, 9), padding=1, channels_last=True,
                                   activation="gelu"),
    "groups2-channels-last-stride2": Case("conv_direct", c=10, k=14, hw=(5, 9), groups=2, stride=2,
                                          channels_last=True),
    # depthwise: groups == in_channels, channel multiplier 1 and 2
    "dw-relu": Case("depthwise", c=19, k=19, hw=(13, 13), groups=19, padding=1, activation="relu"),
    "dw-mult2-5x3-stride2-gelu": Case("depthwise", c=7, k=14, hw=(9, 13), kernel=(5, 3), groups=7, stride=2,
                                      padding=(2, 1), activation="gelu"),
    "dw-7x7-dilation2-same": Case("depthwise", n=1, c=5, k=5, hw=(13, 13), kernel=(7, 7), groups=5,
                                  dilation=2, padding="same"),
    "dw-mult2-2x2-same-silu": Case("depthwise", c=3, k=6, hw=(5, 5), kernel=(2, 2), groups=3, padding="same",
                                   bias=False, activation="silu"),
    "dw-pad4-stride-pair": Case("depthwise", c=5, k=5, hw=(9, 9), groups=5, stride=(2, 1),
                                padding=(0, 1, 1, 0)),
    "dw-h1w1": Case("depthwise", c=7, k=7, hw=(1, 1), groups=7, padding=1, bias=False),
    "dw-channels-last-silu": Case("depthwise", c=24, k=24, hw=(9, 9), groups=24, padding=1,
                                  channels_last=True, activation="silu"),
    "dw-mult2-channels-last": Case("depthwise", c=5, k=10, hw=(9, 5), groups=5, padding=(1, 2),
                                   channels_last=True, activation="relu"),
}


def make_inputs(case: Case, dtype: torch.dtype):
    """Random x, w and (optional) b for a case, on DEVICE, in the case's memory format."""
    x = torch.randn(case.n, case.c, *case.hw).to(DEVICE, dtype)
    if case.channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(case.k, case.c // case.groups, *case.kernel).to(DEVICE, dtype)
    b = torch.randn(case.k).to(DEVICE, dtype) if case.bias else None
    return x, w, b


def reduction_length(w: torch.Tensor) -> int:
    """Products summed per output element: (in_channels / groups) * kH * kW."""
    return w.shape[1] * w.shape[2] * w.shape[3]


def check_conv(x, w, b=None, **options):
    """Run mcconv.conv2d and compare with the float64 reference; returns mcconv's output."""
    y = mcconv.conv2d(x, w, b, **options)
    expected = reference_conv2d(x, w, b, **options)
    assert y.shape == expected.shape
    assert y.dtype == x.dtype and y.device == x.device
    assert_conv_close(y, expected, x.dtype, reduction_length(w))
    return y


# torch's own "same" with an even kernel warns that it pads a copy; the reference may do that.
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("dtype", FORWARD_DTYPES)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_conv2d_matches_reference(case, dtype):
    x, w, b = make_inputs(case, dtype)
    dispatch = mcconv.explain(x, w, b, **case.options())
    assert dispatch.kernel == case.kernel_name
    y = check_conv(x, w, b, **case.options())
    layout = torch.channels_last if case.channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=layout)
    assert dispatch.memory_format == ("channels_last" if case.channels_last else "contiguous")
    assert dispatch.output_shape == tuple(y.shape)


# Small representatives of the three kernels, reused by the layout and edge-case tests below.
KINDS = {
    "gemm_1x1": Case("gemm_1x1", c=5, k=7, hw=(5, 9), kernel=(1, 1)),
    "conv_direct": Case("conv_direct", c=5, k=7, hw=(9, 5), padding=1, activation="relu"),
    "depthwise": Case("depthwise", c=7, k=14, hw=(9, 5), groups=7, padding=1, activation="silu"),
}

# Each makes one argument a strided view that is contiguous in no memory format.
VIEWS = {
    "input-spatial-slice": lambda x, w, b: (torch.cat([x, x], dim=3)[:, :, :, ::2], w, b),
    "input-transposed": lambda x, w, b: (x.transpose(2, 3).contiguous().transpose(2, 3), w, b),
    "input-channel-slice": lambda x, w, b: (torch.cat([x, x], dim=1)[:, 1:1 + x.shape[1]], w, b),
    "input-expanded-batch": lambda x, w, b: (x[:1].expand_as(x), w, b),
    "weight-out-channel-slice": lambda x, w, b: (x, torch.cat([w, w], dim=0)[::2], b),
    "weight-in-channel-slice": lambda x, w, b: (x, torch.cat([w, w], dim=1)[:, 1:1 + w.shape[1]], b),
    "bias-strided": lambda x, w, b: (x, w, torch.stack([b, b], dim=1)[:, 0]),
}


@pytest.mark.parametrize("view", VIEWS.values(), ids=VIEWS.keys())
@pytest.mark.parametrize("kind", KINDS)
def test_non_contiguous_arguments(kind, view):
    x, w, b = view(*make_inputs(KINDS[kind], torch.float32))
    assert not all(t.is_contiguous() for t in (x, w, b))
    check_conv(x, w, b, **KINDS[kind].options())


@pytest.mark.parametrize("kind", KINDS)
def test_unbatched_3d_input(kind):
    x, w, b = make_inputs(KINDS[kind], torch.float32)
    y = check_conv(x[1], w, b, **KINDS[kind].options())
    assert y.dim() == 3
    assert mcconv.explain(x[1], w, b, **KINDS[kind].options()).output_shape == tuple(y.shape)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch(kind, channels_last):
    case = KINDS[kind]
    x, w, b = make_inputs(case, torch.float32)
    x = x[:0].to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    y = mcconv.conv2d(x, w, b, **case.options())
    assert y.shape == reference_conv2d(x, w, b, **case.options()).shape
    assert y.shape[0] == 0 and y.dtype == x.dtype and y.device == x.device


def test_repeated_calls_with_new_strides_get_a_new_plan():
    """Plans are cached by shape *and* strides: a view of the same shape must not reuse them."""
    case = KINDS["conv_direct"]
    x, w, b = make_inputs(case, torch.float32)
    check_conv(x, w, b, **case.options())
    check_conv(x.transpose(2, 3).contiguous().transpose(2, 3), w, b, **case.options())
    check_conv(x.to(memory_format=torch.channels_last), w, b, **case.options())
    check_conv(x, w, b, **case.options())


@pytest.mark.parametrize("kind", KINDS)
def test_bfloat16_on_this_device(kind):
    """bf16 must be right here too: under the interpreter the launcher computes the dot in fp32."""
    case = KINDS[kind]
    check_conv(*make_inputs(case, torch.bfloat16), **case.options())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_tolerance_rejects_a_perturbed_result(dtype):
    """The comparison must be able to fail: one element off by a few tolerances is caught."""
    case = KINDS["conv_direct"]
    x, w, b = make_inputs(case, dtype)
    y = mcconv.conv2d(x, w, b, **case.options()).double().cpu()
    expected = reference_conv2d(x, w, b, **case.options())
    length = reduction_length(w)
    assert_conv_close(y, expected, dtype, length)
    u = unit_roundoff(dtype)
    y[1, 2, 3, 4] += 16 * u * (expected[1, 2, 3, 4].abs() + length ** 0.5)
    with pytest.raises(AssertionError):
        assert_conv_close(y, expected, dtype, length)


def test_reference_tells_correlation_from_convolution():
    """A spatially flipped kernel (true convolution) must not pass for mcconv's cross-correlation."""
    case = KINDS["conv_direct"]
    x, w, b = make_inputs(case, torch.float32)
    y = mcconv.conv2d(x, w, b, **case.options())
    flipped = reference_conv2d(x, w.flip(2, 3), b, **case.options())
    with pytest.raises(AssertionError):
        assert_conv_close(y, flipped, torch.float32, reduction_length(w))


@pytest.mark.parametrize("kind", KINDS)
def test_int64_offsets_on_small_tensors(kind, monkeypatch):
    """The int64-offset variant of each kernel, forced on small tensors (cheap on any device)."""
    from mcconv import _plan

    monkeypatch.setattr(_plan, "INT32_LIMIT", 1)
    monkeypatch.setattr(_plan, "_plans", {})  # plans built under the real limit must not be reused
    case = KINDS[kind]
    x, w, b = make_inputs(case, torch.float32)
    assert mcconv.explain(x, w, b, **case.options()).index_bits == 64
    check_conv(x, w, b, **case.options())


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_input_beyond_2_31_elements(kind):
    """int64 offsets: a >2**31-element input, checked at the first and the last output corner."""
    c, groups, kernel = {"gemm_1x1": (1, 1, 1), "conv_direct": (1, 1, 3), "depthwise": (2, 2, 3)}[kind]
    h = 2**15 // c
    x = torch.randn(1, c, h, 2**16 + 2, device=DEVICE, dtype=torch.float16)
    assert x.numel() > 2**31
    w = torch.randn(c, 1, kernel, kernel, device=DEVICE, dtype=torch.float16)
    dispatch = mcconv.explain(x, w, groups=groups)
    assert (dispatch.kernel, dispatch.index_bits) == (kind, 64)
    y = mcconv.conv2d(x, w, groups=groups)
    # Without padding, an output corner depends only on the matching input corner.
    span = 8 + kernel - 1
    for out_corner, in_corner in (((slice(0, 8),) * 2, (slice(0, span),) * 2),
                                  ((slice(-8, None),) * 2, (slice(-span, None),) * 2)):
        expected = reference_conv2d(x[:, :, in_corner[0], in_corner[1]], w, groups=groups)
        assert_conv_close(y[:, :, out_corner[0], out_corner[1]], expected, torch.float16, kernel * kernel)
    del x, y
    torch.cuda.empty_cache()
