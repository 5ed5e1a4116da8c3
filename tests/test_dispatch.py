"""Which kernel, tile configuration, layout, index width and dot precision mcconv.explain reports.

Shape-only questions run on meta tensors: nothing is allocated or launched, so sizes beyond
2**31 elements cost nothing.
"""
import pytest
import torch
import torch.nn.functional as F

import mcconv
from mcconv import tiles
from reference import DEVICE, assert_conv_close, reference_conv2d


def meta(*shape, dtype=torch.float32):
    """An unallocated tensor of the given shape."""
    return torch.empty(shape, device="meta", dtype=dtype)


def torch_output_shape(x, w, padding=0, **options):
    """torch's output shape, mcconv's (top, bottom, left, right) padding applied by F.pad first."""
    if isinstance(padding, tuple) and len(padding) == 4:
        top, bottom, left, right = padding
        x, padding = F.pad(x, (left, right, top, bottom)), 0
    return tuple(F.conv2d(x, w, padding=padding, **options).shape)


@pytest.mark.parametrize("x_shape, w_shape, options, kernel", [
    pytest.param((2, 19, 9, 13), (24, 19, 1, 1), {}, "gemm_1x1", id="1x1"),
    pytest.param((2, 19, 9, 13), (24, 19, 1, 1), dict(padding="valid"), "gemm_1x1", id="1x1-valid"),
    pytest.param((2, 19, 9, 13), (24, 19, 1, 1), dict(padding="same"), "gemm_1x1", id="1x1-same"),
    pytest.param((2, 10, 9, 13), (14, 5, 1, 1), dict(groups=2), "gemm_1x1", id="1x1-groups2"),
    pytest.param((19, 9, 13), (24, 19, 1, 1), {}, "gemm_1x1", id="1x1-unbatched"),
    pytest.param((2, 19, 9, 13), (24, 19, 1, 1), dict(stride=2), "conv_direct", id="1x1-stride2"),
    pytest.param((2, 19, 9, 13), (24, 19, 1, 1), dict(stride=(1, 2)), "conv_direct", id="1x1-stride-pair"),
    pytest.param((2, 19, 9, 13), (24, 19, 1, 1), dict(padding=1), "conv_direct", id="1x1-pad1"),
    pytest.param((2, 19, 9, 13), (24, 19, 1, 1), dict(padding=(0, 1, 0, 0)), "conv_direct", id="1x1-pad4"),
    pytest.param((2, 19, 9, 13), (24, 19, 3, 3), {}, "conv_direct", id="3x3"),
    pytest.param((2, 10, 9, 13), (14, 5, 3, 3), dict(groups=2), "conv_direct", id="3x3-groups2"),
    # groups == in_channels == 1 is not depthwise
    pytest.param((2, 1, 9, 13), (4, 1, 3, 3), {}, "conv_direct", id="3x3-one-channel"),
    pytest.param((2, 19, 9, 13), (19, 1, 3, 3), dict(groups=19), "depthwise", id="depthwise"),
    pytest.param((2, 7, 9, 13), (14, 1, 5, 3), dict(groups=7, stride=2), "depthwise", id="depthwise-mult2"),
    pytest.param((7, 9, 13), (7, 1, 3, 3), dict(groups=7, padding="same"), "depthwise", id="depthwise-unbatched"),
])
def test_kernel_choice(x_shape, w_shape, options, kernel):
    dispatch = mcconv.explain(meta(*x_shape), meta(*w_shape), **options)
    assert dispatch.kernel == kernel
    assert dispatch.output_shape == torch_output_shape(meta(*x_shape), meta(*w_shape), **options)
    assert kernel in str(dispatch)


@pytest.mark.parametrize("x_shape, w_shape, options", [
    pytest.param((2, 19, 9, 13), (24, 19, 3, 3), {}, id="conv_direct"),
    pytest.param((2, 19, 9, 13), (24, 19, 1, 1), {}, id="gemm_1x1"),
    pytest.param((2, 19, 9, 13), (19, 1, 3, 3), dict(groups=19), id="depthwise"),
])
def test_config_is_the_default_fitted_to_the_problem(x_shape, w_shape, options):
    """Without a tile table (CPU, or an untuned GPU) the default, with blocks capped by the problem."""
    dispatch = mcconv.explain(meta(*x_shape), meta(*w_shape), device_name="No_Such_GPU", **options)
    assert dispatch.config_source == "heuristic default"
    default = tiles.kernel_spec(dispatch.kernel)["default"]
    assert set(dispatch.config) == set(default)
    for name, value in dispatch.config.items():
        assert value <= default[name]
        if name.startswith("BLOCK_"):
            assert value >= tiles.MIN_BLOCK and value & (value - 1) == 0
    assert dispatch.config["BLOCK_N"] <= 32  # 24 or 19 output channels (per group)


@pytest.mark.parametrize("layout, expected", [
    (torch.contiguous_format, "contiguous"),
    (torch.channels_last, "channels_last"),
])
def test_memory_format(layout, expected):
    x = meta(2, 5, 9, 13).to(memory_format=layout)
    assert mcconv.explain(x, meta(7, 5, 3, 3)).memory_format == expected
    # Unbatched input has no channels_last layout.
    assert mcconv.explain(meta(5, 9, 13), meta(7, 5, 3, 3)).memory_format == "contiguous"


@pytest.mark.parametrize("x, w, bits", [
    pytest.param(meta(1, 1, 2**16, 2**15 + 1), meta(1, 1, 1, 1), 64, id="input-beyond-2**31"),
    pytest.param(meta(1, 1, 2**15, 2**15), meta(2, 1, 1, 1), 64, id="output-beyond-2**31"),
    pytest.param(meta(1, 1, 2**15, 2**16 - 1), meta(1, 1, 1, 1), 32, id="just-below"),
    # Few elements, but their addresses span more than 2**31.
    pytest.param(torch.empty_strided((2, 1, 4, 4), (2**31, 16, 4, 1), device="meta"), meta(1, 1, 3, 3), 64,
                 id="strided-view-beyond-2**31"),
    pytest.param(meta(2, 5, 9, 13), meta(7, 5, 3, 3), 32, id="small"),
])
def test_index_bits(x, w, bits):
    assert mcconv.explain(x, w).index_bits == bits


@pytest.fixture
def conv_fp32_precision():
    """torch.backends.cudnn.conv.fp32_precision, restored after the test."""
    conv = torch.backends.cudnn.conv
    if not hasattr(conv, "fp32_precision"):
        pytest.skip("this torch has no fp32_precision settings")
    saved = conv.fp32_precision
    yield conv
    conv.fp32_precision = saved


@pytest.mark.parametrize("precision, expected", [("ieee", "ieee"), ("tf32", "tf32"), ("none", "ieee")])
def test_dot_precision_follows_torch_conv_setting(conv_fp32_precision, precision, expected):
    """On the GPU (and when planning for one, on meta tensors) fp32 dots follow torch's setting;
    on the CPU (the interpreter) TF32 does not exist and they are IEEE."""
    conv_fp32_precision.fp32_precision = precision
    x, w = torch.randn(2, 5, 9, 7).to(DEVICE), torch.randn(7, 5, 3, 3).to(DEVICE)
    here = expected if DEVICE == "cuda" else "ieee"
    for xs, ws in ((x, w), (x.to("meta"), w.to("meta"))):
        want = here if xs.device.type != "meta" else expected
        assert mcconv.explain(xs, ws).dot_precision == want
        assert mcconv.explain(xs[:, :, :, :1], ws[:, :, :1, :1]).dot_precision == want  # gemm_1x1
        assert mcconv.explain(xs, ws[:5, :1], groups=5).dot_precision is None  # depthwise: no tl.dot
    assert mcconv.explain(x.half(), w.half()).dot_precision is None  # TF32 is an fp32 matter
    # On a GPU this is the check that "ieee" really is IEEE: TF32 would miss the fp32 tolerance.
    assert_conv_close(mcconv.conv2d(x, w), reference_conv2d(x, w), torch.float32, 5 * 3 * 3)


@pytest.mark.parametrize("allow_tf32, expected", [(False, "ieee"), (True, "tf32")])
def test_dot_precision_follows_allow_tf32_on_older_torch(monkeypatch, allow_tf32, expected):
    """Before fp32_precision existed, torch.backends.cudnn.allow_tf32 decided.

    Emulated on the cudnn module's class, so torch's real flags (whose legacy and new APIs
    must not be mixed) are never touched.
    """
    from mcconv import _backend

    monkeypatch.setattr(_backend, "_HAS_FP32_PRECISION", False)  # as resolved on a torch without it
    monkeypatch.setattr(type(torch.backends.cudnn), "allow_tf32", allow_tf32)
    assert mcconv.explain(meta(2, 5, 9, 7), meta(6, 5, 3, 3)).dot_precision == expected


def test_explain_raises_what_conv2d_raises():
    with pytest.raises(ValueError, match="groups"):
        mcconv.explain(meta(2, 5, 9, 7), meta(6, 5, 3, 3), groups=2)


def test_autotune_is_ignored_under_the_interpreter(monkeypatch):
    from mcconv import _backend

    if not _backend.interpreted():
        pytest.skip("MCCONV_AUTOTUNE=1 only falls back under Triton's interpreter")
    monkeypatch.setenv("MCCONV_AUTOTUNE", "1")
    # A shape no other test uses: plans are cached, and the fallback happens when one is built.
    with pytest.warns(RuntimeWarning, match="MCCONV_AUTOTUNE"):
        dispatch = mcconv.explain(meta(1, 3, 11, 3), meta(5, 3, 3, 3))
    assert dispatch.config_source == "heuristic default"
