"""mcconv behaves like torch.nn.functional.conv2d (and mcconv.Conv2d like nn.Conv2d) wherever
torch is defined: same output shape and values, same output layout rule, or both raise.

Each test first runs torch itself (CPU torch 2.13) and asserts what it does, so the expectation
is measured, not guessed, and a torch upgrade that changes it shows up here. Where CUDA torch
differs the comment says so, and mcconv follows CUDA (cuDNN): that is what GPU users see.
"""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mcconv
from reference import DEVICE, assert_conv_close, reference_conv2d
from strategies import ACT_FNS, ACTIVATIONS, CL, expected_output_format, format_name, has_format, suggest_memory_format

_fresh = itertools.count()


def fresh(c=11, k=13, kernel=(3, 3), groups=1, n=1):
    """Input and weight of a shape no earlier call used (odd channel counts, a new height and
    width per call), so that mcconv's per-shape caches hold nothing for it: a 'first call'."""
    i = next(_fresh)
    x = torch.randn(n, c, 7 + i % 23, 7 + i // 23, device=DEVICE)
    w = torch.randn(k, c // groups, *kernel, device=DEVICE)
    return x, w


def torch_conv(x, w, b=None, **options):
    return F.conv2d(x.cpu(), w.cpu(), None if b is None else b.cpu(), **options)


def ref64(x, w, b=None, **options):
    """float64 torch on the same values: the reference for mcconv's values."""
    return F.conv2d(x.detach().double().cpu(), w.detach().double().cpu(),
                    None if b is None else b.detach().double().cpu(), **options)


def torch_error(call):
    """The exception torch raises for ``call``, asserting that it raises."""
    with pytest.raises(Exception) as info:
        call()
    return info.value


# --------------------------------------------------------------------------- NaN through activations

@pytest.mark.parametrize("grad", [False, True], ids=["eager", "autograd"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_nan_bias_makes_its_channel_nan(activation, grad):
    # torch.relu(nan) is nan (so are silu and gelu of nan): a NaN bias makes its whole channel NaN.
    assert torch.relu(torch.tensor(float("nan"))).isnan()
    x, w = torch.randn(1, 2, 4, 4, device=DEVICE), torch.randn(3, 2, 3, 3, device=DEVICE)
    b = torch.tensor([float("nan"), 0.0, 0.0], device=DEVICE)
    assert ACT_FNS[activation](torch_conv(x, w, b))[:, 0].isnan().all()
    expected = ACT_FNS[activation](ref64(x, w, b))
    assert expected[:, 0].isnan().all() and not expected[:, 1:].isnan().any()
    y = mcconv.conv2d(x, w.requires_grad_(grad), b, activation=activation)
    assert y[:, 0].isnan().all(), f"{activation}: channel 0 is {y[:, 0]}"
    assert not y[:, 1:].isnan().any()
    assert_conv_close(y[:, 1:], expected[:, 1:], torch.float32, 18)


# --------------------------------------------------------------------------- non-integer arguments

# torch's F.conv2d takes int / int[] only: a float, a bool or None (also a float or bool inside a
# pair) raises TypeError ("conv2d() received an invalid combination of arguments"), on any device.
# (option, bad value, an int value of equal hash and equality, or None where there is none)
NON_INTEGER = {
    "stride-1.0": ("stride", 1.0, 1),
    "stride-(2.0,1.0)": ("stride", (2.0, 1.0), (2, 1)),
    "stride-True": ("stride", True, 1),
    "stride-(True,1)": ("stride", (True, 1), (1, 1)),
    "stride-np.float64": ("stride", np.float64(1.0), 1),
    "stride-1.5": ("stride", 1.5, None),
    "stride-None": ("stride", None, None),
    "padding-1.0": ("padding", 1.0, 1),
    "padding-True": ("padding", True, 1),
    "padding-False": ("padding", False, 0),
    "padding-(1.0,0)": ("padding", (1.0, 0), (1, 0)),
    "padding-None": ("padding", None, None),
    "dilation-(1.0,1.0)": ("dilation", (1.0, 1.0), (1, 1)),
    "dilation-1.0": ("dilation", 1.0, 1),
    "dilation-True": ("dilation", True, 1),
    "groups-1.0": ("groups", 1.0, 1),
    "groups-True": ("groups", True, 1),
    "groups-None": ("groups", None, None),
}
ENTRIES = {
    "conv2d": lambda x, w, **o: mcconv.conv2d(x, w, **o),
    "conv2d-autograd": lambda x, w, **o: mcconv.conv2d(x, w.detach().requires_grad_(), **o),  # the op's path
    "explain": lambda x, w, **o: mcconv.explain(x, w, **o),
}


@pytest.mark.parametrize("entry", ENTRIES.values(), ids=ENTRIES.keys())
@pytest.mark.parametrize("option, bad, good", NON_INTEGER.values(), ids=NON_INTEGER.keys())
def test_non_integer_argument_raises_type_error_on_first_call(option, bad, good, entry):
    x, w = fresh()
    assert isinstance(torch_error(lambda: torch_conv(x, w, **{option: bad})), TypeError)
    with pytest.raises(TypeError, match=f"^{option}: "):
        entry(x, w, **{option: bad})


@pytest.mark.parametrize("entry", ENTRIES.values(), ids=ENTRIES.keys())
@pytest.mark.parametrize("option, bad, good", [v for v in NON_INTEGER.values() if v[2] is not None],
                         ids=[k for k, v in NON_INTEGER.items() if v[2] is not None])
def test_non_integer_argument_raises_type_error_after_a_valid_call(option, bad, good, entry):
    # 1.0 == 1 and hash(1.0) == hash(1) (True too): a cache keyed on the value must not let it through.
    assert bad == good and hash(bad) == hash(good)
    x, w = fresh()
    entry(x, w, **{option: good})
    assert isinstance(torch_error(lambda: torch_conv(x, w, **{option: bad})), TypeError)
    with pytest.raises(TypeError, match=f"^{option}: "):
        entry(x, w, **{option: bad})


def test_module_with_float_stride_raises_type_error():
    # nn.Conv2d(..., stride=1.0) constructs (stride (1.0, 1.0)); its forward raises TypeError.
    with pytest.raises(TypeError):
        torch.nn.Conv2d(4, 6, 3, stride=1.0)(torch.randn(1, 4, 5, 5))
    m = mcconv.Conv2d(4, 6, 3, stride=1.0, device=DEVICE)
    with pytest.raises(TypeError, match="^stride: "):
        m(torch.randn(1, 4, 5, 5, device=DEVICE))


# --------------------------------------------------------------------------- argument spellings

def _same_stride(value):
    return dict(padding="same", stride=value)


# Spellings torch accepts (measured below): 1-element lists/tuples, numpy integers (also inside
# pairs), torch.Size, 0-dim integer tensors (anything with __index__).
ACCEPTED = {
    "stride=(2,)": dict(stride=(2,)),
    "stride=[2]": dict(stride=[2]),
    "padding=[1]": dict(padding=[1]),
    "padding=(1,)": dict(padding=(1,)),
    "dilation=[2]": dict(dilation=[2]),
    "stride=np.int64(2)": dict(stride=np.int64(2)),
    "stride=np.uint8(2)": dict(stride=np.uint8(2)),
    "stride=(np.int64(2),1)": dict(stride=(np.int64(2), 1)),
    "padding=np.int32(1)": dict(padding=np.int32(1)),
    "padding=(np.int64(1),0)": dict(padding=(np.int64(1), 0)),
    "dilation=np.int64(2)": dict(dilation=np.int64(2)),
    "dilation=(np.int64(1),np.int64(2))": dict(dilation=(np.int64(1), np.int64(2))),
    "stride=torch.Size([2,1])": dict(stride=torch.Size([2, 1])),
    "padding=torch.Size([1,0])": dict(padding=torch.Size([1, 0])),
    "dilation=torch.Size([1,2])": dict(dilation=torch.Size([1, 2])),
    "stride=torch.Size([2])": dict(stride=torch.Size([2])),
    "stride=tensor(2)": dict(stride=torch.tensor(2)),
    "stride=(tensor(2),1)": dict(stride=(torch.tensor(2), 1)),
    "padding=tensor(1)": dict(padding=torch.tensor(1)),
    "groups=np.int64(11)": dict(groups=np.int64(11)),
    "groups=tensor(11)": dict(groups=torch.tensor(11)),
    "same-with-stride=(1,1)": _same_stride((1, 1)),
    "same-with-stride=[1]": _same_stride([1]),
    "same-with-stride=np.int64(1)": _same_stride(np.int64(1)),
    "valid-with-stride=2": dict(padding="valid", stride=2),
}


@pytest.mark.parametrize("options", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_argument_spellings_torch_accepts_are_accepted(options):
    groups = int(options.get("groups", 1))
    x, w = fresh(k=2 * groups if groups > 1 else 13, groups=groups)
    expected = torch_conv(x, w, **options)  # torch accepts it
    y = mcconv.conv2d(x, w, **options)
    assert y.shape == expected.shape
    assert_conv_close(y, ref64(x, w, **options), torch.float32, w[0].numel())
    assert tuple(mcconv.explain(x, w, **options).output_shape) == tuple(expected.shape)


# --------------------------------------------------------------------------- empty sizes

# torch (any device: these checks run before a backend is chosen) rejects an empty spatial size
# unless the batch or the channels are empty ("Only zero batch or zero channel inputs are
# supported", or "Calculated padded input size per channel: (0 x 6) ... Kernel size can't be
# greater than actual input size"), and a weight without output channels ("expected weight to
# be at least 1 at dimension 0").
EMPTY_REJECTED = {
    "height-0-padded": ((1, 4, 0, 6), (6, 4, 3, 3), dict(padding=2), "input"),
    "width-0-padded": ((1, 4, 6, 0), (6, 4, 3, 3), dict(padding=2), "input"),
    "width-0-1x1": ((1, 4, 6, 0), (6, 4, 1, 1), {}, "input"),
    "height-0-padded-unbatched": ((4, 0, 6), (6, 4, 3, 3), dict(padding=2), "input"),
    "weight-0-out-channels": ((1, 4, 5, 5), (0, 4, 3, 3), {}, "weight"),
    "weight-0-out-channels-batch-0": ((0, 4, 5, 5), (0, 4, 3, 3), {}, "weight"),
    "weight-0-out-channels-1x1": ((1, 4, 5, 5), (0, 4, 1, 1), {}, "weight"),
    # CPU: oneDNN's "could not create a primitive descriptor" (a backend error; CUDA not verified)
    "weight-0-kernel-height": ((1, 4, 5, 5), (6, 4, 0, 3), {}, "weight"),
}


@pytest.mark.parametrize("entry", [mcconv.conv2d, mcconv.explain], ids=["conv2d", "explain"])
@pytest.mark.parametrize("x_shape, w_shape, options, name", EMPTY_REJECTED.values(), ids=EMPTY_REJECTED.keys())
def test_empty_sizes_torch_rejects_are_rejected(x_shape, w_shape, options, name, entry):
    x, w = torch.randn(x_shape, device=DEVICE), torch.randn(w_shape, device=DEVICE)
    assert isinstance(torch_error(lambda: torch_conv(x, w, **options)), RuntimeError)
    with pytest.raises(ValueError, match=f"^{name}: "):
        entry(x, w, **options)


# torch computes these (its empty-input path): an empty batch, even with an empty spatial size.
EMPTY_COMPUTED = {
    "batch-0": ((0, 4, 5, 5), (6, 4, 3, 3), {}, (0, 6, 3, 3)),
    "batch-0-height-0-padded": ((0, 4, 0, 6), (6, 4, 3, 3), dict(padding=2), (0, 6, 2, 8)),
}


@pytest.mark.parametrize("x_shape, w_shape, options, shape", EMPTY_COMPUTED.values(), ids=EMPTY_COMPUTED.keys())
def test_empty_batch_like_torch(x_shape, w_shape, options, shape):
    x, w = torch.randn(x_shape, device=DEVICE), torch.randn(w_shape, device=DEVICE)
    assert tuple(torch_conv(x, w, **options).shape) == shape
    assert tuple(mcconv.conv2d(x, w, **options).shape) == shape
    assert tuple(mcconv.explain(x, w, **options).output_shape) == shape


# C = 0: torch returns a tensor with *no* channels, (N, 0, P, Q) whatever K is, bias or not (its
# device-independent ConvBackend::Empty path: input.view(-1) * weight), on CPU and CUDA alike.
# mcconv may give that same shape, or reject C = 0 with a ValueError naming the input; it must
# not return K channels (of bias values), which no torch gives.
ZERO_CHANNELS = {
    "batched": ((1, 0, 5, 5), (6, 0, 3, 3), False, (1, 0, 3, 3)),
    "batched-bias": ((1, 0, 5, 5), (6, 0, 3, 3), True, (1, 0, 3, 3)),
    "batch-0": ((0, 0, 5, 5), (6, 0, 3, 3), False, (0, 0, 3, 3)),
    "unbatched": ((0, 5, 5), (6, 0, 3, 3), True, (0, 3, 3)),
}


@pytest.mark.parametrize("entry", [mcconv.conv2d, mcconv.explain], ids=["conv2d", "explain"])
@pytest.mark.parametrize("x_shape, w_shape, bias, shape", ZERO_CHANNELS.values(), ids=ZERO_CHANNELS.keys())
def test_zero_input_channels_like_torch_or_rejected(x_shape, w_shape, bias, shape, entry):
    x, w = torch.randn(x_shape, device=DEVICE), torch.randn(w_shape, device=DEVICE)
    b = torch.randn(w_shape[0], device=DEVICE) if bias else None
    assert tuple(torch_conv(x, w, b).shape) == shape
    try:
        out = entry(x, w, b)
    except ValueError as e:
        assert str(e).startswith("input: "), str(e)
        return
    got = out.output_shape if entry is mcconv.explain else out.shape
    assert tuple(got) == shape, f"torch gives {shape}, mcconv {tuple(got)}"


# --------------------------------------------------------------------------- unbatched inputs

def test_unbatched_hwc_input_gives_contiguous_output():
    # torch convolves input.unsqueeze(0): strides (4, 1, 24, 4), not channels_last-like (N's stride
    # is below H's), so its output is contiguous on CPU and CUDA.
    x = torch.randn(5, 6, 4, device=DEVICE).permute(2, 0, 1)
    w = torch.randn(3, 4, 3, 3, device=DEVICE)
    expected = torch_conv(x, w)
    assert expected.is_contiguous() and suggest_memory_format(x.unsqueeze(0)) == torch.contiguous_format
    y = mcconv.conv2d(x, w)
    assert y.is_contiguous(), f"strides {y.stride()}, torch {expected.stride()}"
    assert_conv_close(y, ref64(x, w), torch.float32, 36)
    assert mcconv.explain(x, w).memory_format == "contiguous"


@pytest.mark.parametrize("x_layout", ["contiguous", "hwc"])
def test_unbatched_input_with_channels_last_weight_like_torch(x_layout):
    # A channels_last weight makes the 4-D result channels_last; squeezed, (K, P, Q) with strides
    # (1, Q*K, K). torch: the same on CPU (measured) and CUDA (cuDNN's rule on the weight).
    x = torch.randn(4, 6, 5, device=DEVICE)
    if x_layout == "hwc":
        x = torch.randn(6, 5, 4, device=DEVICE).permute(2, 0, 1)
    w = torch.randn(3, 4, 3, 3, device=DEVICE).to(memory_format=CL)
    expected = torch_conv(x, w)
    assert expected.stride() == (1, 3 * 3, 3)
    y = mcconv.conv2d(x, w)
    assert y.stride() == expected.stride()
    assert_conv_close(y, ref64(x, w), torch.float32, 36)
    assert mcconv.explain(x, w).memory_format == "channels_last"


# --------------------------------------------------------------------------- output memory format

# Input and weight layouts, each labelled with its suggest_memory_format() (c10's stride rule:
# channels_last-like strides count, e.g. a channels_last tensor sliced along H or C).
X_LAYOUTS = {
    "contiguous": (lambda: torch.randn(2, 4, 6, 5), "contiguous"),
    "channels_last": (lambda: torch.randn(2, 4, 6, 5).to(memory_format=CL), "channels_last"),
    "channels_last-sliced-H": (lambda: torch.randn(2, 4, 12, 5).to(memory_format=CL)[:, :, ::2],
                               "channels_last"),
    "channels_last-sliced-C": (lambda: torch.randn(2, 8, 6, 5).to(memory_format=CL)[:, ::2],
                               "channels_last"),
    "nhwc-permuted": (lambda: torch.randn(2, 6, 5, 4).permute(0, 3, 1, 2), "channels_last"),
    "contiguous-sliced-W": (lambda: torch.randn(2, 4, 6, 10)[..., ::2], "contiguous"),
    "hw-transposed": (lambda: torch.randn(2, 4, 5, 6).transpose(2, 3), "contiguous"),
    "batch-expanded": (lambda: torch.randn(1, 4, 6, 5).expand(2, 4, 6, 5), "contiguous"),
    "channel-expanded": (lambda: torch.randn(2, 1, 6, 5).expand(2, 4, 6, 5), "contiguous"),  # stride 0 on C: NCHW
}
W_LAYOUTS = {  # (K, C, kH, kW) -> a weight of that shape
    "contiguous": (lambda s: torch.randn(s), "contiguous"),
    "channels_last": (lambda s: torch.randn(s).to(memory_format=CL), "channels_last"),
    "channels_last-sliced-K": (lambda s: torch.randn(2 * s[0], *s[1:]).to(memory_format=CL)[::2],
                               "channels_last"),
    "KC-transposed": (lambda s: torch.randn(s[1], s[0], *s[2:]).transpose(0, 1), "contiguous"),
}
# cuDNN's rule, what a GPU user gets from torch (cudnn_conv_suggest_memory_format in
# aten/src/ATen/native/ConvUtils.h): channels_last when the input OR the weight suggests it.
# CPU torch 2.13 follows the same rule in all these cases (mkldnn_conv_use_channels_last),
# measured below. (CUDA's non-cuDNN depthwise kernel returns contiguous output, but torch only
# takes it when neither tensor suggests channels_last; otherwise cuDNN's depthwise runs.)
OUTPUT_FORMAT = {
    ("contiguous", "contiguous"): "contiguous",
    ("contiguous", "channels_last"): "channels_last",
    ("channels_last", "contiguous"): "channels_last",
    ("channels_last", "channels_last"): "channels_last",
}
KINDS = {"direct": ((3, 3), 1, 6), "1x1": ((1, 1), 1, 6), "depthwise": ((3, 3), 4, 8)}  # kernel, groups, K


@pytest.mark.parametrize("kind", KINDS, ids=KINDS.keys())
@pytest.mark.parametrize("w_layout", W_LAYOUTS, ids=W_LAYOUTS.keys())
@pytest.mark.parametrize("x_layout", X_LAYOUTS, ids=X_LAYOUTS.keys())
def test_output_memory_format_follows_cudnn(x_layout, w_layout, kind):
    make_x, x_format = X_LAYOUTS[x_layout]
    make_w, w_format = W_LAYOUTS[w_layout]
    kernel, groups, k = KINDS[kind]
    x = make_x().to(DEVICE)
    w = make_w((k, 4 // groups, *kernel)).to(DEVICE)
    assert (format_name(suggest_memory_format(x)), format_name(suggest_memory_format(w))) == (x_format, w_format)
    want = OUTPUT_FORMAT[x_format, w_format]
    assert format_name(expected_output_format(x, w)) == want
    fmt = CL if want == "channels_last" else torch.contiguous_format
    assert torch_conv(x, w, groups=groups).is_contiguous(memory_format=fmt)  # CPU torch agrees

    y = mcconv.conv2d(x, w, groups=groups)
    assert_conv_close(y, reference_conv2d(x, w, groups=groups), torch.float32, w[0].numel())
    assert has_format(y, fmt), f"output strides {y.stride()}: not {want}"
    assert mcconv.explain(x, w, groups=groups).memory_format == want


# Layouts where exact contiguity is ambiguous (size-1 dims) and only the stride rule decides;
# torch (CPU measured, and cuDNN by the same suggest_memory_format) gives the format shown.
AMBIGUOUS = {
    # C = 1: is_contiguous() and is_contiguous(channels_last) both hold; strides say channels_last
    "C=1-channels_last-input": (lambda: torch.randn(2, 1, 6, 5).to(memory_format=CL), (3, 1, 3, 3), False,
                                "channels_last"),
    "C=1-channels_last-weight": (lambda: torch.randn(2, 1, 6, 5), (3, 1, 3, 3), True, "channels_last"),
    # N = 1 HWC image unsqueezed: strides (4, 1, 20, 4), N's stride below H's: not channels_last-like
    "N=1-hwc-unsqueezed": (lambda: torch.randn(6, 5, 4).permute(2, 0, 1).unsqueeze(0), (3, 4, 3, 3), False,
                           "contiguous"),
    "N=1-channels_last": (lambda: torch.randn(1, 4, 6, 5).to(memory_format=CL), (3, 4, 3, 3), False,
                          "channels_last"),
}


@pytest.mark.parametrize("make_x, w_shape, w_channels_last, want", AMBIGUOUS.values(), ids=AMBIGUOUS.keys())
def test_output_memory_format_follows_cudnn_in_ambiguous_cases(make_x, w_shape, w_channels_last, want):
    x = make_x().to(DEVICE)
    w = torch.randn(w_shape, device=DEVICE)
    w = w.to(memory_format=CL) if w_channels_last else w
    fmt = CL if want == "channels_last" else torch.contiguous_format
    assert format_name(expected_output_format(x, w)) == want
    expected = torch_conv(x, w)
    assert expected.is_contiguous(memory_format=fmt)
    y = mcconv.conv2d(x, w)
    assert y.stride() == expected.stride(), f"mcconv {y.stride()}, torch {expected.stride()}"
    assert_conv_close(y, ref64(x, w), torch.float32, w[0].numel())
    assert mcconv.explain(x, w).memory_format == want


# --------------------------------------------------------------------------- error classes

# Every case: torch raises RuntimeError (asserted); mcconv must raise an exception that is BOTH
# its documented class (README: ValueError; TypeError for wrong types, dtypes and devices) and a
# RuntimeError, so that code written against torch (`except RuntimeError`) catches it, with a
# message naming the argument. torch's CPU message is quoted where it helps. CUDA torch raises
# RuntimeError in the same cases: these checks run before a backend is chosen (dtype checks
# too, "Input type (torch.cuda.FloatTensor) and weight type ..."), except the 0-size kernel,
# where CPU's error is oneDNN's and CUDA's would be cuDNN's (not verified here).
# (x_shape, w_shape, bias_shape, dtypes (x, w, b), options, argument named, documented class)
F32, F16, F64 = torch.float32, torch.float16, torch.float64
ERRORS = {
    # "Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: [1, 2, 4, 5, 5]"
    "input-5d": ((1, 2, 4, 5, 5), (6, 4, 3, 3), None, (F32, F32, F32), {}, "input", ValueError),
    "input-2d": ((5, 5), (6, 4, 3, 3), None, (F32, F32, F32), {}, "input", ValueError),
    # "Calculated padded input size per channel: (2 x 5). Kernel size: (3 x 3). Kernel size can't be greater ..."
    "kernel-larger-than-padded-input": ((1, 4, 2, 5), (6, 4, 3, 3), None, (F32, F32, F32), {}, "input", ValueError),
    "dilated-kernel-larger-than-input": ((1, 4, 5, 5), (6, 4, 3, 3), None, (F32, F32, F32), dict(dilation=3), "input",
                                         ValueError),
    # "Only zero batch or zero channel inputs are supported, but got input shape: [1, 4, 0, 6]"
    "height-0-padded": ((1, 4, 0, 6), (6, 4, 3, 3), None, (F32, F32, F32), dict(padding=2), "input", ValueError),
    # "Input type (torch.FloatTensor) and weight type (torch.DoubleTensor) should be the same ..."
    "float32-input-float64-weight": ((1, 4, 5, 5), (6, 4, 3, 3), None, (F32, F64, F32), {}, "weight", TypeError),
    "float16-input-float32-weight": ((1, 4, 5, 5), (6, 4, 3, 3), None, (F16, F32, F16), {}, "weight", TypeError),
    # "Input type (float) and bias type (c10::Half) should be the same"
    "float32-input-float16-bias": ((1, 4, 5, 5), (6, 4, 3, 3), (6,), (F32, F32, F16), {}, "bias", TypeError),
    # "Given weight of size [6, 4, 3, 3], expected bias to be 1-dimensional with 6 elements, but got bias of size [5]"
    "bias-wrong-length": ((1, 4, 5, 5), (6, 4, 3, 3), (5,), (F32, F32, F32), {}, "bias", ValueError),
    "bias-2d": ((1, 4, 5, 5), (6, 4, 3, 3), (6, 1), (F32, F32, F32), {}, "bias", ValueError),
    "bias-0d": ((1, 4, 5, 5), (6, 4, 3, 3), (), (F32, F32, F32), {}, "bias", ValueError),
    # "Given groups=3, weight of size [6, 2, 3, 3], expected input[1, 4, 5, 5] to have 6 channels, but got 4"
    "groups-not-dividing-in-channels": ((1, 4, 5, 5), (6, 2, 3, 3), None, (F32, F32, F32), dict(groups=3), "groups",
                                        ValueError),
    # "Given groups=2, expected weight to be divisible by 2 at dimension 0, but got weight of size [[5, 2, 3, 3]]"
    "groups-not-dividing-out-channels": ((1, 4, 5, 5), (5, 2, 3, 3), None, (F32, F32, F32), dict(groups=2), "groups",
                                         ValueError),
    # "non-positive groups is not supported"
    "groups-0": ((1, 4, 5, 5), (6, 4, 3, 3), None, (F32, F32, F32), dict(groups=0), "groups", ValueError),
    "groups-negative": ((1, 4, 5, 5), (6, 4, 3, 3), None, (F32, F32, F32), dict(groups=-1), "groups", ValueError),
    # "Given groups=1, weight of size [6, 3, 3, 3], expected input[1, 4, 5, 5] to have 3 channels, but got 4"
    "channel-mismatch": ((1, 4, 5, 5), (6, 3, 3, 3), None, (F32, F32, F32), {}, "weight", ValueError),
    # weight rank: "expected stride to be a single integer value or a list of 1 values ..."
    "weight-3d": ((1, 4, 5, 5), (6, 4, 3), None, (F32, F32, F32), {}, "weight", ValueError),
    "weight-5d": ((1, 4, 5, 5), (6, 4, 1, 3, 3), None, (F32, F32, F32), {}, "weight", ValueError),
    # "expected weight to be at least 1 at dimension 0"
    "weight-0-out-channels": ((1, 4, 5, 5), (0, 4, 3, 3), None, (F32, F32, F32), {}, "weight", ValueError),
    # CPU: oneDNN "could not create a primitive descriptor ..."
    "weight-0-kernel": ((1, 4, 5, 5), (6, 4, 0, 3), None, (F32, F32, F32), {}, "weight", ValueError),
    # "negative padding is not supported"
    "padding-negative": ((1, 4, 5, 5), (6, 4, 3, 3), None, (F32, F32, F32), dict(padding=-1), "padding", ValueError),
    "padding-pair-negative": ((1, 4, 5, 5), (6, 4, 3, 3), None, (F32, F32, F32), dict(padding=(0, -1)), "padding",
                              ValueError),
    # "expected padding to be a single integer value or a list of 2 values to match the convolution dimensions"
    "padding-3-tuple": ((1, 4, 5, 5), (6, 4, 3, 3), None, (F32, F32, F32), dict(padding=(1, 1, 1)), "padding",
                        ValueError),
    # "Invalid padding string: 'full'"
    "padding-unknown-string": ((1, 4, 5, 5), (6, 4, 3, 3), None, (F32, F32, F32), dict(padding="full"), "padding",
                               ValueError),
    "padding-SAME": ((1, 4, 5, 5), (6, 4, 3, 3), None, (F32, F32, F32), dict(padding="SAME"), "padding", ValueError),
    # "padding='same' is not supported for strided convolutions"
    "padding-same-with-stride-2": ((1, 4, 5, 5), (6, 4, 3, 3), None, (F32, F32, F32), dict(padding="same", stride=2),
                                   "padding", ValueError),
    # "non-positive stride is not supported"
    "stride-0": ((1, 4, 5, 5), (6, 4, 3, 3), None, (F32, F32, F32), dict(stride=0), "stride", ValueError),
    "stride-negative": ((1, 4, 5, 5), (6, 4, 3, 3), None, (F32, F32, F32), dict(stride=-1), "stride", ValueError),
    "stride-pair-0": ((1, 4, 5, 5), (6, 4, 3, 3), None, (F32, F32, F32), dict(stride=(1, 0)), "stride", ValueError),
    # "expected stride to be a single integer value or a list of 2 values ..."
    "stride-3-tuple": ((1, 4, 5, 5), (6, 4, 3, 3), None, (F32, F32, F32), dict(stride=(1, 1, 1)), "stride",
                       ValueError),
    "stride-empty": ((1, 4, 5, 5), (6, 4, 3, 3), None, (F32, F32, F32), dict(stride=[]), "stride", ValueError),
    # "non-positive dilation is not supported" / "dilation should be greater than zero"
    "dilation-0": ((1, 4, 5, 5), (6, 4, 3, 3), None, (F32, F32, F32), dict(dilation=0), "dilation", ValueError),
    "dilation-pair-negative": ((1, 4, 5, 5), (6, 4, 3, 3), None, (F32, F32, F32), dict(dilation=(-1, 1)), "dilation",
                               ValueError),
}


def _error_case(x_shape, w_shape, b_shape, dtypes):
    x = torch.randn(x_shape, device=DEVICE).to(dtypes[0])
    w = torch.randn(w_shape, device=DEVICE).to(dtypes[1])
    b = None if b_shape is None else torch.randn(b_shape, device=DEVICE).to(dtypes[2])
    return x, w, b


@pytest.mark.parametrize("entry", [mcconv.conv2d, mcconv.explain], ids=["conv2d", "explain"])
@pytest.mark.parametrize("x_shape, w_shape, b_shape, dtypes, options, name, documented", ERRORS.values(),
                         ids=ERRORS.keys())
def test_errors_are_catchable_as_torchs(x_shape, w_shape, b_shape, dtypes, options, name, documented, entry):
    x, w, b = _error_case(x_shape, w_shape, b_shape, dtypes)
    assert isinstance(torch_error(lambda: torch_conv(x, w, b, **options)), RuntimeError)
    with pytest.raises(RuntimeError) as info:
        entry(x, w, b, **options)
    assert isinstance(info.value, documented), f"{type(info.value).__mro__} lacks {documented.__name__}"
    assert str(info.value).startswith(f"{name}: "), str(info.value)


@pytest.mark.gpu
def test_device_mismatch_is_catchable_as_torchs():
    # CUDA torch: "Input type (torch.cuda.FloatTensor) and weight type (torch.FloatTensor) should be
    # the same" (RuntimeError). (CPU torch cannot show it: it even accepted a meta weight.)
    x, w = torch.randn(1, 4, 5, 5, device="cuda"), torch.randn(6, 4, 3, 3)
    assert isinstance(torch_error(lambda: F.conv2d(x, w)), RuntimeError)
    with pytest.raises(RuntimeError) as info:
        mcconv.conv2d(x, w)
    assert isinstance(info.value, TypeError) and str(info.value).startswith("weight: ")


# --------------------------------------------------------------------------- modules

# nn.Conv2d raises RuntimeError for each (messages as above; a float64 or float16 input to a
# float32 layer: "Input type (double) and bias type (float) should be the same").
MODULE_ERRORS = {
    "input-5d": ((1, 1, 4, 5, 5), F32, ValueError),
    "input-2d": ((5, 5), F32, ValueError),
    "input-too-small": ((1, 4, 2, 5), F32, ValueError),
    "input-channel-mismatch": ((1, 3, 5, 5), F32, ValueError),
    "input-float64": ((1, 4, 5, 5), F64, TypeError),
    "input-float16": ((1, 4, 5, 5), F16, TypeError),
}


@pytest.mark.parametrize("x_shape, dtype, documented", MODULE_ERRORS.values(), ids=MODULE_ERRORS.keys())
def test_module_errors_are_catchable_as_torchs(x_shape, dtype, documented):
    x = torch.randn(x_shape, device=DEVICE).to(dtype)
    assert isinstance(torch_error(lambda: torch.nn.Conv2d(4, 6, 3)(x.cpu())), RuntimeError)
    m = mcconv.Conv2d(4, 6, 3, device=DEVICE)
    with pytest.raises(RuntimeError) as info:
        m(x)
    assert isinstance(info.value, documented), f"{type(info.value).__mro__} lacks {documented.__name__}"
    assert str(info.value).split(":")[0] in ("input", "weight"), str(info.value)


def test_module_unbatched_input_like_torch():
    # nn.Conv2d takes a 3-D (C, H, W) input and returns (K, P, Q).
    ref = torch.nn.Conv2d(4, 6, 3, padding=1)
    m = mcconv.Conv2d(4, 6, 3, padding=1, device=DEVICE)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(4, 5, 7)
    assert ref(x).shape == (6, 5, 7)
    with torch.no_grad():
        y = m(x.to(DEVICE))
    assert y.shape == (6, 5, 7)
    assert_conv_close(y, ref64(x, ref.weight, ref.bias, padding=1), torch.float32, 36)


# --------------------------------------------------------------------------- values where both compute

def test_positional_arguments_like_torch():
    # F.conv2d(input, weight, bias, stride, padding, dilation, groups): all positional.
    x, w = torch.randn(2, 4, 7, 7, device=DEVICE), torch.randn(6, 2, 3, 3, device=DEVICE)
    b = torch.randn(6, device=DEVICE)
    y = mcconv.conv2d(x, w, b, 2, 1, 1, 2)
    assert_conv_close(y, ref64(x, w, b, stride=2, padding=1, dilation=1, groups=2), torch.float32, 18)


def test_huge_stride_like_torch():
    # torch accepts any positive int64 stride; only output pixel 0 exists then.
    x, w = torch.randn(1, 3, 5, 5, device=DEVICE), torch.randn(2, 3, 3, 3, device=DEVICE)
    expected = torch_conv(x, w, stride=2**40)
    y = mcconv.conv2d(x, w, stride=2**40)
    assert y.shape == expected.shape == (1, 2, 1, 1)
    assert_conv_close(y, ref64(x, w, stride=2**40), torch.float32, 27)


def test_inputs_are_not_modified_and_output_is_fresh():
    # torch's conv never writes its inputs and returns new memory; the same for a 1x1 stride-1
    # conv, whose output could alias a same-sized input.
    x, w = torch.randn(2, 4, 5, 5, device=DEVICE), torch.randn(4, 4, 1, 1, device=DEVICE)
    b = torch.randn(4, device=DEVICE)
    clones = [t.clone() for t in (x, w, b)]
    y = mcconv.conv2d(x, w, b, activation="relu")
    for t, c in zip((x, w, b), clones):
        assert torch.equal(t, c)
    assert y.untyped_storage().data_ptr() not in {t.untyped_storage().data_ptr() for t in (x, w, b)}
    assert math.isfinite(y.sum().item())
