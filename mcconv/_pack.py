"""Per-call copies of a convolution's operands, laid out for the kernel that reads them.

The forward's direct kernel (kernels/conv2d_fwd.py) reads both operands K-major: the input's
channels and the weight's input channels at unit stride, as wgmma wants them (and tf32's wgmma
requires). A channels_last input or weight is read in place; otherwise the call copies:

- :func:`channels_last` -- an NCHW (or any channel-strided) input, or a weight whose input
  channels are not at unit stride (a contiguous (K, C/g, kH, kW) weight), into channels_last.
  The copy reads and writes the tensor once; the kernel then loads 16-byte rows instead of
  2-byte gathers along a strided channel axis, which no tile shape can vectorise.
  ``MCCONV_PACK_WEIGHTS=0`` turns the weight copies off (the kernels then read the weight through
  its strides, slowly); inputs are always converted.
- :func:`fold_input` / :func:`fold_weight` -- the direct kernel's few-channel mode (the RGB stem):
  the input zero-padded spatially and to CP channels per group, channels_last; the weight as
  (K, KH, RUN), run index kw * CP + c, zero-filled (both small next to the output they feed).
- :func:`dgrad_packed` -- the input gradient's weight copy (see its docstring).
- :func:`subpixel_index` / :func:`subpixel_weight` -- the input gradient's sub-pixel mode
  (few input channels at a stride): the weight gathered into a window of taps x (phase, channel)
  columns, zeros where a phase has no tap (always: it is the operand that kernel reads, whatever
  MCCONV_PACK_WEIGHTS says).

Every copy is made in the call that uses it and never cached. A cache keyed on the weight's
identity, storage and version counter went stale when a weight was written through ``.data``
(which bumps no version counter) and returned the old weights' result; no key computable from a
tensor's metadata can see every write, so none is kept.
"""
import os

import torch

PACK_ENV = "MCCONV_PACK_WEIGHTS"


def enabled() -> bool:
    """MCCONV_PACK_WEIGHTS=0 turns the per-call weight copies off (read when a shape is first planned)."""
    return os.environ.get(PACK_ENV, "1") != "0"


def channels_strided(spec, x_strides) -> bool:
    """Whether an input (batched strides (n, c, h, w)) has more than one channel per group and its
    channels not at unit stride: the direct kernel then reads a channels_last copy."""
    return spec.c_per_group > 1 and x_strides[1] != 1


def weight_needs_copy(spec, w_strides) -> bool:
    """Whether a weight's input channels (dim 1) are not at unit stride (and there is more than one)."""
    return spec.c_per_group > 1 and w_strides[1] != 1


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """A fresh channels_last copy of a 4-D tensor, or of a 3-D (C, H, W) one (strides (1, W*C, C))."""
    if t.dim() == 3:
        return t.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    return t.contiguous(memory_format=torch.channels_last)


def fold_input_shape(spec, cp: int) -> tuple:
    """(N, Hp, Wp, groups, CP): the few-channel kernel's padded copy of the input."""
    top, bottom, left, right = spec.padding
    return (spec.n, spec.h + top + bottom, spec.w + left + right, spec.groups, cp)


def fold_input(x: torch.Tensor, spec, cp: int) -> torch.Tensor:
    """A zero-padded channels_last copy of ``x`` (:func:`fold_input_shape`): the padding of
    the convolution applied, each group's C/g channels followed by zeros up to ``cp``. The
    kernel then needs no padding masks, and a pixel of ``cp`` channels is one aligned cp.async."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    top, _, left, _ = spec.padding
    out = x.new_zeros(fold_input_shape(spec, cp))
    inner = out[:, top:top + spec.h, left:left + spec.w, :, :spec.c_per_group]
    inner.copy_(x.unflatten(1, (spec.groups, spec.c_per_group)).permute(0, 3, 4, 1, 2))
    return out


def fold_weight(weight: torch.Tensor, cp: int, run: int) -> torch.Tensor:
    """The few-channel kernel's weight: (K, KH, run), weight[k, c, kh, kw] at [k, kh, kw * cp + c], zeros elsewhere."""
    k, cg, kh, kw = weight.shape
    out = weight.new_zeros((k, kh, run))
    out[:, :, :kw * cp].unflatten(2, (kw, cp))[..., :cg].copy_(weight.permute(0, 2, 3, 1))
    return out


def dgrad_packed(weight: torch.Tensor) -> torch.Tensor:
    """The input gradient's per-call copy (kernels/conv2d_dgrad.py): a fresh ``(K, C/g, KH, KW)``
    view over memory ordered ``(KH, KW, C/g, K)``, so that the output channels (the dgrad's
    reduction axis) are contiguous: the K-major B operand wgmma tf32 requires, and 16-byte rows
    for weights read in place only with smaller copies (contiguous ``(K, C/g, KH, KW)``, or a
    channels_last weight of few input channels). Made from the weight's current values in the
    call that uses it; never cached (see the module docstring)."""
    return weight.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)


def subpixel_index(weight_shape, window_h, window_w, run: int) -> torch.Tensor:
    """Where :func:`subpixel_weight` takes each element from: int64, shape (U, V, SH * run, K),
    flat indices into the weight's (K, C/g, KH, KW) elements, K * C/g * KH * KW (a zero appended
    after them) where a phase has no tap and in the padding of each phase row's run.

    ``window_h`` (likewise ``window_w``): one entry per window row u < U, each a tuple of the tap
    kh that phase ph reads there, or -1 (mcconv.ops.input_grad.subpixel_window). Column
    ph * run + pw * C/g + c holds phase (ph, pw), channel c (kernels/conv2d_dgrad.py, PHASE_RUN).
    A function of shapes only: the plan keeps it; the values are gathered in each call.
    """
    k, cg, kh, kw = weight_shape
    zero = k * cg * kh * kw
    th = torch.tensor(window_h, dtype=torch.int64)[:, None, :, None, None, None]  # u, ., ph, ., ., .
    tw = torch.tensor(window_w, dtype=torch.int64)[None, :, None, :, None, None]  # ., v, ., pw, ., .
    flat = (torch.arange(k) * cg + torch.arange(cg)[:, None]) * kh  # (C/g, K): (k * C/g + c) * KH
    index = torch.where((th >= 0) & (tw >= 0), (flat + th) * kw + tw, zero)  # (U, V, SH, SW, C/g, K)
    u, v, sh, sw = index.shape[:4]
    padded = torch.full((u, v, sh, run, k), zero, dtype=torch.int64)
    padded[:, :, :, :sw * cg] = index.reshape(u, v, sh, sw * cg, k)
    return padded.reshape(u, v, sh * run, k)


def subpixel_weight(weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The sub-pixel input gradient's weight (kernels/conv2d_dgrad.py, PHASE_C): a fresh
    ``(K, SH * run, U, V)`` view over memory ordered ``(U, V, SH * run, K)`` (K-major,
    as :func:`dgrad_packed`), gathered from the weight's current values by ``index``
    (:func:`subpixel_index`). Made in the call that uses it; never cached."""
    flat = torch.nn.functional.pad(weight.reshape(-1), (0, 1))  # the zero at index K * C/g * KH * KW
    return torch.take(flat, index).permute(3, 2, 0, 1)
