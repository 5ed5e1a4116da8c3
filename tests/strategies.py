"""Shared by the property, parity and special-value tests: hypothesis strategies for whole
convolution problems, tensor layouts, float64 references and torch's output-layout rule.

Values come from a torch.Generator seeded by a drawn integer: every example gets fresh values,
and a derandomised run (or a printed failing example) rebuilds exactly the same tensors.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

import mcconv
from reference import DEVICE, DTYPES

CL = torch.channels_last
ACTIVATIONS = (None, *mcconv.ACTIVATIONS)  # every fused activation, from the registry
ACT_FNS = {None: lambda z: z, **{name: act.reference for name, act in mcconv.ACTIVATIONS.items()}}
PADDING_FORMS = ("int", "pair", "4-tuple", "same", "valid")


# --------------------------------------------------------------------------- torch's layout rule

def suggest_memory_format(t: torch.Tensor) -> torch.memory_format:
    """``Tensor.suggest_memory_format()`` of a 4-D tensor, ported from c10's
    ``is_channels_last_strides_2d_s4`` (c10/core/MemoryFormat.h): channels_last-*like* strides
    (a channels_last tensor sliced along H still counts), not exact channels_last contiguity."""
    if t.dim() != 4:
        return torch.contiguous_format
    sizes, strides = t.shape, t.stride()
    if strides[1] == 0:  # trivial C dimension: NCHW
        return torch.contiguous_format
    smallest = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < smallest:
            return torch.contiguous_format
        if d == 0 and smallest == strides[1]:  # ambiguous N111: NCHW
            return torch.contiguous_format
        smallest = strides[d] * (sizes[d] if sizes[d] > 1 else 1)
    return CL


def expected_output_format(x: torch.Tensor, w: torch.Tensor) -> torch.memory_format:
    """The output layout GPU users get from torch: cuDNN's ``cudnn_conv_suggest_memory_format``
    (aten/src/ATen/native/ConvUtils.h) gives channels_last when the input *or the weight*
    suggests channels_last. torch convolves a 3-D input as ``input.unsqueeze(0)`` and squeezes
    the result, so the rule applies to the unsqueezed input."""
    x4 = x.unsqueeze(0) if x.dim() == 3 else x
    if suggest_memory_format(x4) == CL or suggest_memory_format(w) == CL:
        return CL
    return torch.contiguous_format


def has_format(y: torch.Tensor, fmt: torch.memory_format) -> bool:
    """Whether y is laid out densely in ``fmt`` (a 3-D output as the squeezed 4-D one)."""
    return (y.unsqueeze(0) if y.dim() == 3 else y).is_contiguous(memory_format=fmt)


def format_name(fmt: torch.memory_format) -> str:
    """``mcconv.explain(...).memory_format``'s spelling of a memory format."""
    return "channels_last" if fmt == CL else "contiguous"


# --------------------------------------------------------------------------- tensors in any layout

def layouts(ndim: int, channels_last: bool = True):
    """How a tensor is laid out: ``(kind, parameter)``.

    contiguous; channels_last (for a 3-D tensor HWC memory order, as ``image.permute(2, 0, 1)``
    of an (H, W, C) image); permuted (dense, memory order given by a permutation);
    sliced (every other element of a larger buffer along one dim, at an offset); expanded
    (stride 0 along the given dims, those of size > 1 at build time); overlapping (an
    as_strided view whose elements share memory: halved contiguous strides).
    """
    kinds = [st.just(("contiguous", None))]
    if channels_last and ndim in (3, 4):
        kinds.append(st.just(("channels_last", None)))
    kinds += [
        st.permutations(range(ndim)).map(lambda p: ("permuted", tuple(p))),
        st.integers(0, ndim - 1).map(lambda d: ("sliced", d)),
        st.sets(st.integers(0, ndim - 1), min_size=1).map(lambda ds: ("expanded", tuple(sorted(ds)))),
        st.just(("overlapping", None)),
    ]
    return st.one_of(*kinds)


def make_tensor(shape, layout, dtype, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """A tensor of ``shape`` with fresh N(0, scale**2) values in ``dtype``, laid out as ``layout``."""
    kind, arg = layout
    shape = tuple(shape)

    def values(sizes):
        return (torch.randn(sizes, generator=gen, dtype=torch.float32) * scale).to(dtype).to(DEVICE)

    if kind == "contiguous":
        return values(shape)
    if kind == "channels_last":
        if len(shape) == 3:
            return values((shape[1], shape[2], shape[0])).permute(2, 0, 1)
        return values(shape).to(memory_format=CL)  # canonical strides, also where C or H*W is 1
    if kind == "permuted":  # memory order arg[0] (outermost) ... arg[-1] (innermost)
        inverse = sorted(range(len(arg)), key=lambda i: arg[i])
        return values([shape[i] for i in arg]).permute(inverse)
    if kind == "sliced":
        big = list(shape)
        big[arg] = 2 * shape[arg] + 1
        index = [slice(None)] * len(shape)
        index[arg] = slice(1, None, 2)
        return values(big)[tuple(index)]
    if kind == "expanded":
        base = [1 if d in arg and shape[d] > 1 else s for d, s in enumerate(shape)]
        return values(base).expand(shape)
    if kind == "overlapping":
        strides = [max(1, math.prod(shape[d + 1:]) // 2) for d in range(len(shape))]
        size = 0 if 0 in shape else 1 + sum((n - 1) * st for n, st in zip(shape, strides))
        return values((size,)).as_strided(shape, strides)
    raise AssertionError(kind)


# --------------------------------------------------------------------------- geometry and references

def normalised_padding(padding, kernel, dilation) -> tuple:
    """(top, bottom, left, right) of any padding spelling; "same" puts the odd pixel bottom/right."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        th, tw = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    if isinstance(padding, int):
        return (padding,) * 4
    if len(padding) == 2:
        return (padding[0], padding[0], padding[1], padding[1])
    return tuple(padding)


def as_pair(v) -> tuple:
    return (v, v) if isinstance(v, int) else tuple(v)


def reference_preact(x, w, b, r, stride, padding, dilation, groups):
    """float64 ``conv2d(x, w) + b + r`` on the very values given, differentiable in every tensor
    (which must already be float64 CPU leaves or None). mcconv's 4-tuple padding goes through F.pad."""
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        top, bottom, left, right = padding
        x = F.pad(x, (left, right, top, bottom))
        padding = 0
    z = F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    return z if r is None else z + r


def to64(t, requires_grad=False):
    if t is None:
        return None
    t = t.detach().double().cpu()
    return t.requires_grad_() if requires_grad else t


def storage_ptr(t):
    """Start of t's storage, or None for tensors without memory (nothing to alias)."""
    if t is None or t.untyped_storage().nbytes() == 0:
        return None
    return t.untyped_storage().data_ptr()


def assert_no_alias(outputs, inputs):
    """No output shares memory with any input (nor with another output)."""
    seen = {}
    for name, t in inputs.items():
        p = storage_ptr(t)
        if p is not None:
            seen.setdefault(p, name)
    for name, t in outputs.items():
        p = storage_ptr(t)
        if p is None:
            continue
        assert p not in seen, f"{name} shares memory with {seen[p]}"
        seen[p] = name


# --------------------------------------------------------------------------- whole problems

@dataclass(frozen=True)
class Problem:
    """One mcconv.conv2d call: sizes, every option (as spelled), layouts, dtype and a value seed."""

    n: int | None  # None: an unbatched 3-D input
    c: int
    k: int
    groups: int
    hw: tuple
    kernel: tuple
    stride: object
    padding: object
    dilation: object
    activation: str | None
    dtype: torch.dtype
    x_layout: tuple
    w_layout: tuple
    bias: str | None  # None, "contiguous" or "sliced" (a strided 1-D view)
    residual: tuple | None  # the residual's layout, None without one
    seed: int

    def options(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    @property
    def pads(self) -> tuple:
        return normalised_padding(self.padding, self.kernel, as_pair(self.dilation))

    @property
    def out_hw(self) -> tuple:
        (sh, sw), (dh, dw), (t, b, l, r) = as_pair(self.stride), as_pair(self.dilation), self.pads
        return ((self.hw[0] + t + b - dh * (self.kernel[0] - 1) - 1) // sh + 1,
                (self.hw[1] + l + r - dw * (self.kernel[1] - 1) - 1) // sw + 1)

    @property
    def out_shape(self) -> tuple:
        batch = () if self.n is None else (self.n,)
        return (*batch, self.k, *self.out_hw)

    @property
    def fan_in(self) -> int:
        """Terms in one output's sum (the forward reduction length)."""
        return self.c // self.groups * self.kernel[0] * self.kernel[1]

    @property
    def batch_pixels(self) -> int:
        """N*P*Q: terms in one weight or bias gradient's sum."""
        return (1 if self.n is None else self.n) * self.out_hw[0] * self.out_hw[1]

    def tensors(self, weight_scale: float = 1.0):
        """Fresh (x, w, b, r); weights times ``weight_scale``."""
        gen = torch.Generator().manual_seed(self.seed)
        x_shape = (self.c, *self.hw) if self.n is None else (self.n, self.c, *self.hw)
        x = make_tensor(x_shape, self.x_layout, self.dtype, gen)
        w = make_tensor((self.k, self.c // self.groups, *self.kernel), self.w_layout, self.dtype, gen, weight_scale)
        b = None
        if self.bias is not None:
            b = make_tensor((self.k,), ("contiguous", None) if self.bias == "contiguous" else ("sliced", 0),
                            self.dtype, gen)
        r = None if self.residual is None else make_tensor(self.out_shape, self.residual, self.dtype, gen)
        return x, w, b, r


def _spelled_pair(draw, a, b):
    """A pair as torch takes it: an int when both are equal (sometimes), else a tuple or a list."""
    if a == b and draw(st.booleans()):
        return a
    return draw(st.sampled_from((tuple, list)))((a, b))


@st.composite
def problems(draw, max_n=3, max_c=19, max_k=19, max_hw=13, max_kernel=7, max_stride=3, max_dilation=3,
             dtypes=tuple(DTYPES), activations=ACTIVATIONS, residual=True):
    """A valid convolution (torch computes it, output at least 1x1) with every option drawn."""
    unbatched = draw(st.integers(0, 4)) == 0
    n = None if unbatched else draw(st.integers(0, max_n))
    kind = draw(st.sampled_from(("dense", "grouped", "depthwise")))
    if kind == "dense":
        groups, c, k = 1, draw(st.integers(1, max_c)), draw(st.integers(1, max_k))
    elif kind == "grouped":
        groups = draw(st.integers(2, 4))
        c = groups * draw(st.integers(1, max(1, max_c // groups)))
        k = groups * draw(st.integers(1, max(1, max_k // groups)))
    else:  # depthwise with a channel multiplier
        c = draw(st.integers(2, max_c))
        groups, k = c, c * draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    form = draw(st.sampled_from(PADDING_FORMS))
    if form == "same":  # torch: padding='same' only for stride 1
        stride = draw(st.sampled_from((1, (1, 1), [1, 1])))
    else:
        stride = _spelled_pair(draw, draw(st.integers(1, max_stride)), draw(st.integers(1, max_stride)))
    dilation = _spelled_pair(draw, draw(st.integers(1, max_dilation)), draw(st.integers(1, max_dilation)))
    pad = st.integers(0, 3)
    if form == "int":
        padding = draw(pad)
    elif form == "pair":
        padding = _spelled_pair(draw, draw(pad), draw(pad))
    elif form == "4-tuple":
        padding = tuple(draw(pad) for _ in range(4))
    else:
        padding = form
    top, bottom, left, right = normalised_padding(padding, kernel, as_pair(dilation))
    dh, dw = as_pair(dilation)
    # smallest sizes with an output of at least 1x1 (torch rejects smaller ones)
    h_min = max(1, dh * (kernel[0] - 1) + 1 - top - bottom)
    w_min = max(1, dw * (kernel[1] - 1) + 1 - left - right)
    hw = (draw(st.integers(h_min, max(h_min, max_hw))), draw(st.integers(w_min, max(w_min, max_hw))))
    ndim = 3 if unbatched else 4
    return Problem(
        n=n, c=c, k=k, groups=groups, hw=hw, kernel=kernel, stride=stride, padding=padding, dilation=dilation,
        activation=draw(st.sampled_from(activations)), dtype=draw(st.sampled_from(dtypes)),
        x_layout=draw(layouts(ndim)), w_layout=draw(layouts(4)),
        bias=draw(st.sampled_from((None, "contiguous", "sliced"))),
        residual=draw(st.none() | layouts(ndim)) if residual else None,
        seed=draw(st.integers(0, 2**31 - 1)),
    )
