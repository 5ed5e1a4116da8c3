"""The input gradient (dgrad): dL/dx from dL/dz (z the convolution's output before the
activation) and the weight.

Operands, in every input-gradient kernel's pointer order: dL/dz, weight, dL/dx (output).
The result is laid out channels_last when dL/dz is (torch's suggested format), else contiguous.

| kernel            | runs when                          | device code                                 |
|-------------------|------------------------------------|---------------------------------------------|
| `gemm_1x1_dgrad`  | 1x1 kernel, stride 1, no padding   | kernels/conv1x1_gemm.py (W read transposed) |
| `depthwise_dgrad` | groups == in-channels > 1          | kernels/depthwise_bwd.py                    |
| `conv_dgrad_subpixel` | a stride, no dilation, few input channels a group (`applies`) | kernels/conv2d_dgrad.py (PHASE_C) |
| `conv_dgrad`      | everything else                    | kernels/conv2d_dgrad.py                     |

`gemm_1x1_dgrad` reads `gemm_1x1`'s tile table: the same GEMM as the forward's.

An epilogue on dL/dx -- ``act(dL/dx + bias + residual)``, the bias per input channel, the residual
of the input's shape, optionally the pre-activation z stored beside it -- makes the input gradient
a transposed convolution's forward (mcconv.transpose). It is off for the input gradient itself
(its constexprs compiled out); every kernel here fuses it into its store, as the forward kernels
do (a split `gemm_1x1_dgrad` into the split epilogue pass).
"""
import math

import torch

from .. import _backend, _pack, _plan
from .._spec import ConvArgumentError, ConvSpec, check_like, check_tensor
from ..epilogue import activation as _activation
from ..registry import INPUT_GRAD, Kernel, dispatch, register


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _geometry(spec) -> tuple:
    return (*spec.stride, spec.padding[0], spec.padding[2], *spec.dilation)


def _phase_taps(spec) -> int:
    """Taps that reach the rows of the stride phase with the most of them (kernels/common.py's
    transposed_tap): the taps a tile of that phase runs; the others are skipped whole (loop_trips)."""
    def most(size, stride, pad, dil, taps):
        return max(sum((ph + pad - t * dil) % stride == 0 for t in range(taps)) for ph in range(min(stride, size)))

    return (most(spec.h, spec.stride[0], spec.padding[0], spec.dilation[0], spec.kh)
            * most(spec.w, spec.stride[1], spec.padding[2], spec.dilation[1], spec.kw))


@register
class Gemm1x1Dgrad(Kernel):
    """The forward's GEMM kernel (kernels/conv1x1_gemm.py) on dX = dY @ W per group; its host
    rules are mcconv.ops.forward.Gemm1x1's."""

    name = "gemm_1x1_dgrad"
    operation = INPUT_GRAD
    jit_name = "conv1x1_gemm_kernel"
    table = "gemm_1x1"  # the same GEMM as the forward's: [N*H*W, K/g] x [K/g, C/g]
    about = "input gradient of a 1x1 convolution: the GEMM dX = dY @ W per group"
    fused_epilogue = True  # the forward's epilogue, on dX's columns (input channels)

    def applies(self, spec):
        return spec.is_1x1_gemm

    def features(self, spec):
        return spec.n * spec.h * spec.w, spec.c_per_group, spec.k_per_group

    def limits(self, spec):
        from .forward import Gemm1x1

        return {"BLOCK_M": Gemm1x1.rows_limit(spec, spec.n * spec.h * spec.w, spec.c, spec.c_per_group),
                "BLOCK_N": spec.c_per_group, "BLOCK_K": Gemm1x1.reduction_limit(spec, spec.k_per_group)}

    def grid(self, spec, config, split=1):
        return (_cdiv(spec.n * spec.h * spec.w, config["BLOCK_M"]) * _cdiv(spec.c_per_group, config["BLOCK_N"]),
                spec.groups, split)

    def pointers(self, grad_z, weight, grad_input, bias=None, preact=None, residual=None):
        # The GEMM's forward pointers (x, w, bias, y, z, residual); without an epilogue any pointer
        # stands in for bias, z and residual (their constexprs are off).
        return _epilogue_pointers(grad_z, weight, grad_input, bias, preact, residual)

    def split(self, spec, config, sm_count):
        # As the forward's (Gemm1x1.split_for); run() adds the fp32 partials [split, N*H*W, C] with
        # the forward's split epilogue kernel, its epilogue off.
        from .forward import Gemm1x1

        if "BLOCK_K" not in config:  # autotuned blocks are not known here
            return 1
        return Gemm1x1.split_for(self.grid(spec, config)[0] * spec.groups, _cdiv(spec.k_per_group, config["BLOCK_K"]),
                                 sm_count)

    def arguments(self, spec, strides, split=1):
        from .forward import Gemm1x1  # the kernel's argument rules live with its forward declaration

        w = strides["w"]
        # dY plays the GEMM's X (reduction: K/g), dX its Y (columns: C/g); W's rows (out channels)
        # are the reduction, its columns (in channels) the GEMM's columns; groups step along W's rows.
        return Gemm1x1.gemm_arguments(spec, (spec.n, spec.h, spec.w), spec.k_per_group, spec.c_per_group,
                                      strides["dy"], (w[1], w[0], spec.k_per_group * w[0]), strides["dx"],
                                      strides["r"] if spec.has_residual else None, _epilogue(spec), split)

    def loop_trips(self, spec, config, split=1):
        # kernels/conv1x1_gemm.py: `for kb in range(k_first, k_end)`, here over K/g blocks, this share
        return [_cdiv(_cdiv(spec.k_per_group, config["BLOCK_K"]), split)]

    @staticmethod
    def packs_weight(spec, w_strides) -> bool:
        """Whether a call reads a per-call K-major copy of the weight (mcconv._pack.dgrad_packed:
        output channels, this GEMM's reduction, at unit stride; _build asks each kernel). Under tf32
        only: its wgmma takes K-major operands, and W[k, c] as given (input channels contiguous)
        would load with 4-byte transposing cp.async (issue pressure 0.38 against 0.23 packed at
        128x128x32; the copy reads and writes K*C/g*4 bytes per call, under 0.1 % of the GEMM's
        traffic for ResNet-50's 56x56 layers, about half of it for its 7x7 ones). fp16/bf16 read
        W in place (N-major B, 16-byte rows), unless its rows are not whole 8-byte copies (C/g =
        255: 2-byte synchronous loads in the main loop, mcconv inspect, sm_90); then packed too."""
        if w_strides[0] == 1 or spec.k_per_group <= 1:
            return False
        if spec.tf32 and spec.dtype == torch.float32:
            return True
        return w_strides[1] == 1 and math.gcd(16, w_strides[0] * spec.dtype.itemsize) < 8


@register
class DepthwiseDgrad(Kernel):
    """kernels/depthwise_bwd.py's depthwise_dgrad_kernel: on each stride phase's grid a stride-1
    correlation of dY with the phase's tap slots, walked as the forward walks (the forward's
    declaration, mcconv/ops/forward.py's Depthwise, holds the shared rules)."""

    name = "depthwise_dgrad"
    operation = INPUT_GRAD
    jit_name = "depthwise_dgrad_kernel"
    uses_dot = False
    about = "input gradient of a depthwise convolution, element-wise, rows split by stride phase"
    fused_epilogue = True  # the depthwise forward's epilogue, on dX's channels (input channels)

    def applies(self, spec):
        return spec.is_depthwise

    def features(self, spec):
        return spec.n * spec.h * spec.w, spec.c, spec.taps * (spec.k // spec.c)

    def limits(self, spec):
        return {"BLOCK_M": self._walk(spec)["lanes"], "BLOCK_N": spec.c}

    @staticmethod
    def _rules():
        from .forward import Depthwise

        return Depthwise

    def _walk(self, spec) -> dict:
        """The phase grids' walk: tap slots (TH, TW), their row/column dilation, COLS, band rows, lanes
        per phase (of the largest phase, cdiv(H, stride_h) x cdiv(W, stride_w)), unroll, row loop."""
        rules = self._rules()
        (sh, sw), (dh, dw) = spec.stride, spec.dilation
        gh, gw = math.gcd(sh, dh), math.gcd(sw, dw)
        th, tw = _cdiv(spec.kh, sh // gh), _cdiv(spec.kw, sw // gw)
        row_loop = spec.k // spec.c > 1 or th * tw > rules.MAX_REGISTER_TAPS
        rows0, cols0 = _cdiv(spec.h, sh), _cdiv(spec.w, sw)
        # phase grids that are plain stride-1, undilated correlations (every slot a tap of every phase)
        plain = sh // gh == sw // gw == dh // gh == dw // gw == 1
        cols = rules.cols(cols0, tw, 1, dw // gw, self.max_cols(spec, th * tw, row_loop, plain))
        unroll = rules.unroll(th, 1, dh // gh, rules.MAX_REGISTER_TAPS + 1 if row_loop else th * tw)
        band = rules.band_rows(spec.n, rows0, cols0, spec.c, cols, unroll)
        return {"slots": (th, tw), "cols": cols, "band": band, "unroll": unroll, "row_loop": row_loop,
                "lanes": spec.n * _cdiv(rows0, band) * _cdiv(cols0, cols)}

    @staticmethod
    def max_cols(spec, slots: int, row_loop: bool, plain: bool) -> int:
        """COLS at most: 4, and 2 for a transposed convolution's epilogue where its registers do not fit
        beside the window: more than 4 tap slots' weights in registers (3x3 at stride 1, 5x5 at stride
        2; not the row loop), unless the epilogue is a bias and/or relu on 16-bit data and the phase
        grids are plain (stride-1, undilated) correlations. Triton 3.9, sm_90: COLS 4 spilled up to
        500 bytes per thread with a residual, another activation (which may also store z), fp32 rows,
        dilated phase grids or a 5x5 kernel at stride 2 (taps checked per phase); 3x3 and 4x4 kernels
        at stride 2 (4 slots) spill nothing at 4. The input gradient itself (no epilogue) keeps 4."""
        if spec.activation is None and not spec.has_bias and not spec.has_residual:
            return 4
        light = ((spec.activation is None or spec.activation.name == "relu") and not spec.has_residual
                 and (spec.dtype is None or spec.dtype.itemsize <= 2) and plain)
        return 4 if light or row_loop or slots <= 4 else 2

    def grid(self, spec, config, split=1):
        sh, sw = spec.stride
        return (sh * sw * _cdiv(self._walk(spec)["lanes"], config["BLOCK_M"]), _cdiv(spec.c, config["BLOCK_N"]))

    def pointers(self, grad_z, weight, grad_input, bias=None, preact=None, residual=None):
        # (dy, w, bias, dx, z, residual): without an epilogue any pointer stands in for bias, z and
        # residual (their constexprs are off).
        return _epilogue_pointers(grad_z, weight, grad_input, bias, preact, residual)

    def arguments(self, spec, strides, split=1):
        rules, walk = self._rules(), self._walk(spec)
        dy, w, dx = strides["dy"], strides["w"], strides["dx"]
        r = strides.get("r", (0, 0, 0, 0))
        pixels = (spec.n, spec.c, spec.h, spec.w)
        meta = {**rules.geometry(spec, walk["cols"]), "ROW_LOOP": walk["row_loop"], "CHANNELS_LAST": dy[1] == 1,
                "C_ALIGN": rules.pow2_dividing(spec.c, cap=1024),
                "DY_ALIGN": rules.pixel_align((spec.n, spec.k, spec.p, spec.q), dy),
                "DX_ALIGN": rules.pixel_align(pixels, dx),
                # the residual's pixel offsets likewise; 1 without one (no compile variant per placeholder)
                "R_ALIGN": rules.pixel_align(pixels, r) if spec.has_residual else 1, **_epilogue(spec)}
        return ((spec.n, spec.c, spec.h, spec.w, spec.k, spec.p, spec.q, spec.padding[0], spec.padding[2],
                 walk["band"], *dy, w[0], w[2], w[3], *dx, *r), meta)

    def loop_trips(self, spec, config, split=1):
        # kernels/depthwise_bwd.py: `for s0 in range(0, band_rows, UNROLL)`, the tap slots unrolled;
        # the row loop (multiplier > 1 or large windows) adds `for _ in range(0, CHANNEL_MULT * TH)`
        walk = self._walk(spec)
        trips = _cdiv(walk["band"], walk["unroll"])
        return [spec.k // spec.c * walk["slots"][0], trips] if walk["row_loop"] else [trips]


class ConvDgrad(Kernel):  # registered after ConvDgradSubpixel, its specialisation (dispatch order)
    name = "conv_dgrad"
    operation = INPUT_GRAD
    jit_name = "conv2d_dgrad_kernel"
    about = "input gradient as the transposed implicit GEMM, rows split by stride phase (no zero insertion)"
    fused_epilogue = True

    def features(self, spec):
        return spec.n * spec.h * spec.w, spec.c_per_group, spec.k_per_group * spec.taps

    # Rows a stride phase from which 256-row tiles pay (limits): 256 such tiles, about one for
    # each CTA slot of an H100 (2 CTAs on each of 132 SMs); fewer rows keep twice the tiles.
    TALL_ROWS = 1 << 16

    def limits(self, spec):
        # BLOCK_K: at most 128 bytes per tile row (one 128-byte swizzle atom, wgmma's widest): the
        # default 128x128 tile keeps 3 stages in 96 KiB for every dtype, 2 CTAs (8 warps) per SM;
        # tf32 at BLOCK_K 64 would need 192 KiB, one CTA of 4 warps.
        row = 128 // spec.dtype.itemsize if spec.dtype is not None else spec.k_per_group
        limits = {"BLOCK_M": spec.n * spec.h * spec.w, "BLOCK_N": spec.c_per_group,
                  "BLOCK_K": min(spec.k_per_group, row)}
        # BLOCK_M: 128 rows (the default's 256 are clamped), except for an input gradient (no
        # epilogue) of 64 columns (C/g 33-64) in a 2-byte dtype with TALL_ROWS rows or more a
        # stride phase and dL/dy rows in 16-byte copies: a 256x64x32 tile issues less per MMA
        # than 128x64x64 (mcconv inspect, ResNet-50's 64-channel 3x3 input gradient, fp16:
        # effective pressure 0.555 against 0.652 on triton 3.9, 0.543 against 0.609 on 3.6; no
        # spills, 8 warps an SM, 3 stages in 60 KiB). It spilled with a transposed convolution's
        # epilogue (bias, silu or gelu: 128-624 B) and with 8-byte dL/dy copies (K = 100: 32-40 B).
        phase_rows = spec.n * _cdiv(spec.h, spec.stride[0]) * _cdiv(spec.w, spec.stride[1])
        epilogue = spec.has_bias or spec.activation is not None or spec.has_residual
        if (spec.dtype is not None and spec.dtype.itemsize == 2 and 32 < spec.c_per_group <= 64
                and phase_rows >= self.TALL_ROWS and not epilogue
                and math.gcd(8, spec.k, spec.k_per_group) == 8):
            limits["BLOCK_K"] = min(limits["BLOCK_K"], row // 2)
        else:
            limits["BLOCK_M"] = min(limits["BLOCK_M"], 128)
        if spec.dtype is not None and spec.c_per_group > 64:
            # Tiles over 64 columns with rows in copies under 16 bytes (channels not a multiple of
            # 8 fp16 elements), each copy one more address, spilled (mcconv inspect, sm_90): dX's
            # rows (C = 100: 160 B at 128x128, in the epilogue) take 64-row tiles; dL/dy's (K =
            # 100, DCGAN's code: 64-120 B at 128x128x64) half the channel block. Narrower tiles
            # fit (K = 100 into 64 channels: pressure 0.82 at 64, 1.22 at 32).
            vec = 16 // spec.dtype.itemsize
            if math.gcd(vec, spec.c, spec.c_per_group) < vec:
                limits["BLOCK_M"] = min(limits["BLOCK_M"], 64)
            elif math.gcd(vec, spec.k, spec.k_per_group) < vec:
                limits["BLOCK_K"] = min(limits["BLOCK_K"], row // 2)
        return limits

    def grid(self, spec, config, split=1):
        sh, sw = spec.stride
        # Rows are split by stride phase: per phase at most cdiv(H, sh) x cdiv(W, sw) pixels.
        phase_rows = spec.n * _cdiv(spec.h, sh) * _cdiv(spec.w, sw)
        return (_cdiv(phase_rows, config["BLOCK_M"]) * _cdiv(spec.c_per_group, config["BLOCK_N"]) * sh * sw,
                spec.groups)

    def pointers(self, grad_z, weight, grad_input, bias=None, preact=None, residual=None):
        # (dy, w, bias, dx, z, residual): the input gradient reads no bias or residual and stores
        # no pre-activation (their constexprs are off); any pointer stands in for them.
        return _epilogue_pointers(grad_z, weight, grad_input, bias, preact, residual)

    def arguments(self, spec, strides, split=1):
        return self._arguments(spec, strides, spec.c_per_group, (spec.kh, spec.kw), _geometry(spec),
                               (*_tap_progression(spec.stride[0], spec.dilation[0]),
                                *_tap_progression(spec.stride[1], spec.dilation[1])), _phase_taps(spec))

    def _arguments(self, spec, strides, columns, window, geometry, progressions, taps, subpixel=None):
        """The kernel's arguments for `columns` (C/g, or the sub-pixel columns) and a (KH, KW)
        `window` with `geometry` (strides, pads, dilations) and tap `progressions` (step, gcd,
        inverse, along h then w); `taps`: of the fullest phase; `subpixel`: the sub-pixel
        constexprs (PHASE_C, PHASE_RUN, PHASE_SW, W_EDGE, GRID_STEP), None for phases as blocks of tiles."""
        dy, w, dx = strides["dy"], strides["w"], strides["dx"]
        r = strides.get("r", (0, 0, 0, 0))
        elements = 16 // (spec.dtype.itemsize if spec.dtype is not None else 4)  # per 16-byte copy
        k_major = w[0] == 1 and w[1] != 1  # reduction (output channels) contiguous: W read as B^T
        sub = subpixel or {"PHASE_C": 0, "PHASE_RUN": 1, "PHASE_SW": 1, "W_EDGE": False, "GRID_STEP": 1}
        # dX's (and the residual's) row offsets: n, h, w (sub-pixel: w in steps of the phase grid's
        # columns; a phase's row h + ph), the group's channels
        step_w = geometry[1] if subpixel else 1

        def row_align(t):
            return _align(elements, t[0], t[2], step_w * t[3], *([spec.c_per_group * t[1]] if spec.groups > 1 else []))

        def run_contiguous(t):  # a sub-pixel run (pw, c) at unit steps of the channel stride
            return t[3] == spec.c_per_group * t[1]

        meta = {**_epilogue(spec), **sub,
                "RUN_CONTIGUOUS": bool(subpixel) and run_contiguous(dx) and (not spec.has_residual or run_contiguous(r)),
                # per-row tap validity: one bit per tap of the fullest phase, in int32 or int64
                "TAP_BITS": 32 if taps <= 31 else 64 if taps <= 62 else 0,
                # what the compiler cannot prove: row offsets in multiples of whole 16-byte copies
                "A_ALIGN": _align(elements, *dy[:1], *dy[2:], spec.k_per_group * dy[1]),
                "B_ALIGN": _align(elements, *(w[1:] if k_major else (w[0], *w[2:])), spec.k_per_group * w[0]),
                "D_ALIGN": row_align(dx),
                # the residual's rows likewise; 1 without one (no compile variant per placeholder)
                "R_ALIGN": row_align(r) if spec.has_residual else 1,
                "W_K_MAJOR": k_major,
                "K_ALIGN": _pow2_factor(spec.k_per_group), "C_ALIGN": _pow2_factor(columns)}
        return ((spec.n, columns, spec.h, spec.w, spec.k_per_group, spec.p, spec.q, *window, *geometry,
                 *progressions, *dy, *w, *dx, *r), meta)

    def tile_constexprs(self, spec, config):
        # One channel block per tap (K/g <= BLOCK_K): the loop's block counter folds away
        # (ResNet-50's stem input gradient, fp16: 146 -> 142 instructions per iteration on
        # triton 3.9, 137 -> 131 on 3.6; effective pressure 0.602 -> 0.586, 0.566 -> 0.543).
        return {"ONE_K_BLOCK": "BLOCK_K" in config and spec.k_per_group <= config["BLOCK_K"]}

    @staticmethod
    def packs_weight(spec, w_strides) -> bool:
        """Whether a call reads a per-call (KH, KW, C/g, K) copy of the weight (mcconv._pack.dgrad_packed).

        B[k, c] = W[k, c, kh, kw] loads as 16-byte copies when k (K-major) or c (N-major) is
        contiguous and the other strides are whole copies; wgmma tf32 takes K-major operands only.
        A channels_last weight (c contiguous) is read in place for fp16/bf16 (and IEEE fp32) when
        its rows are 16-byte aligned (no copy; mcconv inspect, fp16, triton 3.9: issue pressure
        0.359 in place against 0.355 packed for ResNet-50's stride-1 3x3 layers, 0.326 against
        0.318 for the stride-2 ones, and no read and write of the weight per call); a
        contiguous (K, C/g, KH, KW) weight (2-byte gathers otherwise), a narrow one (C/g = 3:
        6-byte rows) and any weight under tf32 are packed. A K-major weight is read in place.
        """
        if w_strides[0] == 1:
            return False
        elements = 16 // spec.dtype.itemsize
        if spec.tf32 or w_strides[1] != 1:
            return True
        return math.gcd(elements, w_strides[0], w_strides[2], w_strides[3]) != elements

    def loop_trips(self, spec, config, split=1):
        # kernels/conv2d_dgrad.py: one loop `for _ in range(0, trips)` over (tap of the phase,
        # channel block): the taps of the fullest stride phase (all taps at stride 1) x K/g blocks
        return [_phase_taps(spec) * _cdiv(spec.k_per_group, config["BLOCK_K"])]


def subpixel_window(stride: int, pad: int, taps: int, step: int = 1) -> tuple:
    """One axis of the sub-pixel input gradient (dilation 1) over phases of step * stride pixels:
    (offset D, rows), rows[u][ph] the tap that phase ph reads at window row u, from dY row
    i * step + D - u, or -1 where it reads none.

    Pixel h = i * step * stride + ph meets taps t0, t0 + stride, ... (t0 = (ph + pad) % stride)
    from dY rows i * step + d0, i * step + d0 - 1, ... (d0 = (ph + pad) // stride); the window is
    the union of those rows over the phases."""
    phases = [((ph + pad) % stride, (ph + pad) // stride) for ph in range(step * stride)]
    live = [(t0, d0) for t0, d0 in phases if t0 < taps]
    offset = max(d0 for _, d0 in live)
    low = min(d0 - (taps - 1 - t0) // stride for t0, d0 in live)
    rows = []
    for u in range(offset - low + 1):
        taps_u = [t0 + (u - offset + d0) * stride for t0, d0 in phases]
        rows.append(tuple(t if u - offset + d0 >= 0 and t < taps else -1 for t, (_, d0) in zip(taps_u, phases)))
    return offset, tuple(rows)


def _tile_columns(n: int) -> int:
    """The columns a tile of n columns computes: the next power of two, at least 16 (tl.dot's minimum)."""
    return max(16, 1 << (n - 1).bit_length())


@register
class ConvDgradSubpixel(ConvDgrad):
    """kernels/conv2d_dgrad.py in its sub-pixel mode (PHASE_C > 0): the stride phases as columns,
    one stride-1 pass over the union of the phases' taps, the weight re-laid per call with zeros
    where a phase has no tap (mcconv._pack.subpixel_weight).

    It runs where that does less tensor-core work than a block of tiles per phase: (tile columns
    x window taps) under (tile columns of C/g x KH * KW), at step 1. Channel-rich strided layers
    (C/g = 64 at stride 2: 256 columns x 4 taps against 64 x 9) keep the phase blocks. With few
    channels it then takes step 2 (`step`). mcconv inspect, fp16 channels_last, issue time of
    the launch on triton 3.9 / 3.6, phase blocks -> sub-pixel:

    - ResNet-50's stem (3 channels, 7x7, stride 2, batch 32): 218 / 212 -> 18.8 / 18.1 us
      (memory: 18.3 us); effective pressure 2.25 -> 0.586 / 0.543, 16 -> 64 columns (48 used);
    - MobileNetV2's first layer (3x3, stride 2): 110 / 101 -> 8.91 / 8.44 us (memory 10.6 us);
    - DCGAN's RGB output (64 -> 3, 4x4 transposed, stride 2, 64 x 32x32): 21.0 / 20.7 -> 2.39 /
      2.34 us (memory 3.0 us).
    """

    name = "conv_dgrad_subpixel"
    table = "conv_dgrad"  # the same loop and tiles
    about = ("input gradient of a strided convolution of few input channels: one stride-1 pass whose "
             "columns are (stride phase, channel) (sub-pixel)")

    def step(self, spec) -> int:
        """Phase-grid rows per tile row: 2 (phases of 2 * stride pixels, 4x the columns) where a
        step-1 tile has 16 columns (n16 MMAs, issue-bound on the dY tiles: pressure 2.25 for the
        stem) and the wider window reads at most 2.5x the taps for 4x the pixels; else 1. The
        stem's window grows from 4x4 to 5x5 taps: 25 taps for 16 pixels instead of 16 for 4. 2x2
        patches at stride 2 read 4 taps for 4 pixels either way: step 1."""
        if self.columns(spec, 1) > 16:
            return 1
        taps = [math.prod(len(rows) for _, rows in self.window(spec, step)) for step in (1, 2)]
        return 2 if taps[1] <= 2.5 * taps[0] else 1

    def window(self, spec, step: int | None = None) -> tuple:
        """(subpixel_window along h, along w), at `step` (default: the call's)."""
        step = self.step(spec) if step is None else step
        return (subpixel_window(spec.stride[0], spec.padding[0], spec.kh, step),
                subpixel_window(spec.stride[1], spec.padding[2], spec.kw, step))

    def phase_stride(self, spec, step: int | None = None) -> tuple:
        """Pixels between phase-grid rows (and columns): step * stride."""
        step = self.step(spec) if step is None else step
        return step * spec.stride[0], step * spec.stride[1]

    def run(self, spec, step: int | None = None) -> int:
        """PHASE_RUN: a phase row's (pw, c) columns, padded to a power of two."""
        return 1 << (self.phase_stride(spec, step)[1] * spec.c_per_group - 1).bit_length()

    def w_edge(self, spec) -> bool:
        """W_EDGE: W not a multiple of the phase grid's column stride."""
        return spec.w % self.phase_stride(spec)[1] != 0

    def columns(self, spec, step: int | None = None) -> int:
        """The tile's column extent: a run per phase row."""
        return self.phase_stride(spec, step)[0] * self.run(spec, step)

    def applies(self, spec):
        if spec.stride == (1, 1) or spec.dilation != (1, 1):
            return False
        (_, rows_h), (_, rows_w) = self.window(spec, 1)
        return (_tile_columns(self.columns(spec, 1)) * len(rows_h) * len(rows_w)
                < _tile_columns(spec.c_per_group) * spec.kh * spec.kw)

    def features(self, spec):
        (_, rows_h), (_, rows_w) = self.window(spec)
        return self._phase_rows(spec), self.columns(spec), spec.k_per_group * len(rows_h) * len(rows_w)

    def _phase_rows(self, spec) -> int:
        sh, sw = self.phase_stride(spec)
        return spec.n * _cdiv(spec.h, sh) * _cdiv(spec.w, sw)

    def limits(self, spec):
        limits = {**super().limits(spec), "BLOCK_N": self.columns(spec)}
        if self.w_edge(spec) or spec.groups > 1:
            # Runs stored an element at a time (one crosses the right edge: the mask varies within
            # a vector; another group's channels between a run's pixels) spilled at 128 rows:
            # 756-1184 B (the stem's input gradient on 15x15 images, fp16, triton 3.9 / 3.6).
            limits["BLOCK_M"] = min(limits["BLOCK_M"], 64)
        return limits

    def grid(self, spec, config, split=1):
        return (_cdiv(self._phase_rows(spec), config["BLOCK_M"]) * _cdiv(self.columns(spec), config["BLOCK_N"]),
                spec.groups)

    def arguments(self, spec, strides, split=1):
        (offset_h, rows_h), (offset_w, rows_w) = self.window(spec)
        # the taps at stride 1 (step 1, gcd 1), the phase grid's strides for the epilogue's pixels
        return self._arguments(spec, strides, self.columns(spec), (len(rows_h), len(rows_w)),
                               (*self.phase_stride(spec), offset_h, offset_w, 1, 1), (1, 1, 0, 1, 1, 0),
                               len(rows_h) * len(rows_w),
                               {"PHASE_C": spec.c_per_group, "PHASE_RUN": self.run(spec),
                                "PHASE_SW": self.phase_stride(spec)[1], "W_EDGE": self.w_edge(spec),
                                "GRID_STEP": self.step(spec)})

    def loop_trips(self, spec, config, split=1):
        (_, rows_h), (_, rows_w) = self.window(spec)
        return [len(rows_h) * len(rows_w) * _cdiv(spec.k_per_group, config["BLOCK_K"])]


register(ConvDgrad)


def _epilogue(spec) -> dict:
    """The epilogue's constexprs for dX (all off for an input gradient; STORE_PREACT is the call's)."""
    from .forward import _epilogue as forward_epilogue  # one rule for the forward's and this epilogue

    return forward_epilogue(spec)


def _epilogue_pointers(grad_z, weight, grad_input, bias, preact, residual) -> tuple:
    """(dy, w, bias, dx, z, residual), the weight standing in for an absent bias and dX for an absent
    z or residual: an input gradient's pointers, hence its specialisation, whatever the epilogue."""
    return (grad_z, weight, weight if bias is None else bias, grad_input,
            grad_input if preact is None else preact, grad_input if residual is None else residual)


def _tap_progression(stride: int, dilation: int) -> tuple:
    """(step, gcd, inverse) of kernels/conv2d_dgrad.py's phase_taps for one axis: the taps that
    reach a phase are t0 + j * step, step = stride / gcd(stride, dilation); inverse: of
    dilation / gcd modulo step (0 when step is 1)."""
    g = math.gcd(stride, dilation)
    step = stride // g
    return step, g, pow(dilation // g, -1, step) if step > 1 else 0


def _pow2_factor(n: int, cap: int = 128) -> int:
    """The largest power of two dividing n, at most cap (cap for 0): K_ALIGN and C_ALIGN, which only
    tell whether a block size divides the extent (blocks of up to 128; larger ones keep their
    masks), without a compile variant per channel count."""
    return min(n & -n, cap) if n else cap


def _align(elements: int, *strides: int) -> int:
    """The largest divisor of `elements` (a power of two) that divides every stride."""
    return math.gcd(elements, *strides)


# ------------------------------------------------------------------------------------ plans

def plan(grad_z, weight, input_shape, stride=1, padding=0, dilation=1, groups=1,
         device_name: str | None = None, sm_count: int | None = None, *, bias=None, activation=None,
         residual=None, channels_last: bool | None = None) -> _plan.Plan:
    """The cached plan of an input gradient; validates on the first call of a kind.

    ``bias`` (C,), ``activation`` and ``residual`` (of ``input_shape``) add the epilogue of the
    module docstring (a transposed convolution; their values are the call's, passed to
    :func:`run`). ``channels_last``: dX's memory format, by default dL/dz's (follows_channels_last).
    """
    try:
        tf32 = _backend.uses_tf32(grad_z.dtype, grad_z.device)
        key = (INPUT_GRAD, _plan.tensor_key(grad_z), _plan.tensor_key(weight), tuple(input_shape),
               _plan.option_key(stride), _plan.option_key(padding), _plan.option_key(dilation),
               _plan.option_key(groups), tf32, device_name, sm_count, _plan.tensor_key(bias),
               _plan.option_key(activation), _plan.tensor_key(residual), channels_last)
    except (AttributeError, TypeError):
        _check(grad_z, weight, input_shape)
        raise
    return _plan.cached(key, lambda: _build(grad_z, weight, tuple(input_shape), stride, padding, dilation, groups,
                                            tf32, device_name, sm_count, bias, activation, residual, channels_last))


def _check(grad_z, weight, input_shape) -> tuple:
    check_tensor("grad_z", grad_z, (3, 4))
    check_tensor("weight", weight, (4,), "a 4-D (out_channels, in_channels/groups, kH, kW)")
    check_like("weight", weight, "grad_z", grad_z)
    try:
        input_shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ConvArgumentError(f"input_shape: expected a sequence of ints, got {input_shape!r}") from None
    if len(input_shape) != grad_z.dim():
        raise ConvArgumentError(f"input_shape: expected {grad_z.dim()} sizes like grad_z, got {input_shape}")
    return input_shape


def _check_epilogue(grad_z, input_shape, bias, residual) -> None:
    if bias is not None:
        check_like("bias", bias, "grad_z", grad_z)
        if bias.dim() != 1 or bias.shape[0] != input_shape[-3]:
            raise ConvArgumentError(f"bias: expected a 1-D tensor of {input_shape[-3]} elements (the input's "
                                    f"channels), got shape {tuple(bias.shape)}")
    if residual is not None:
        check_like("residual", residual, "grad_z", grad_z)
        if tuple(residual.shape) != input_shape:
            raise ConvArgumentError(f"residual: expected the input's shape {input_shape}, got {tuple(residual.shape)}")


def _build(grad_z, weight, input_shape, stride, padding, dilation, groups, tf32, device_name, sm_count, bias,
           activation, residual, channels_last):
    input_shape = _check(grad_z, weight, input_shape)
    _check_epilogue(grad_z, input_shape, bias, residual)
    if channels_last is None:
        channels_last = _plan.follows_channels_last(grad_z)
    # The spec's epilogue fields and memory format describe dX here (the epilogue is off for an
    # input gradient).
    spec = ConvSpec.from_shapes(input_shape, weight.shape, stride, padding, dilation, groups, dtype=grad_z.dtype,
                                tf32=tf32, has_bias=bias is not None, has_residual=residual is not None,
                                activation=_activation(activation), channels_last=channels_last)
    if tuple(grad_z.shape) != spec.output_shape:
        raise ConvArgumentError(f"grad_z: expected the convolution's output shape {spec.output_shape}, "
                                f"got {tuple(grad_z.shape)}")
    kernel = dispatch(INPUT_GRAD, spec)
    epilogue = spec.has_bias or spec.has_residual or spec.activation is not None
    if epilogue and not getattr(kernel, "fused_epilogue", False):  # run() composes no epilogue of its own
        raise NotImplementedError(f"{kernel.name}: no fused epilogue (every input-gradient kernel must have one)")
    out_strides = _plan.contiguous_strides(input_shape, channels_last)
    dy_strides, w_strides, dx_strides = tuple(grad_z.stride()), tuple(weight.stride()), out_strides
    # A kernel declaring `packs_weight(spec, w_strides)` reads, when it says so, a per-call K-major
    # copy of the weight (mcconv._pack.dgrad_packed; MCCONV_PACK_WEIGHTS=0 turns it off).
    packs_weight = getattr(kernel, "packs_weight", None)
    extra = {}
    if kernel.name == ConvDgradSubpixel.name:  # its weight layout, always: the operand it reads
        index = _pack.subpixel_index(weight.shape, *(rows for _, rows in kernel.window(spec)), kernel.run(spec))
        packed = _pack.subpixel_weight(torch.empty(weight.shape, device="meta"), index.to("meta"))
        extra["subpixel_index"] = index.to(grad_z.device)
        pack, w_strides, w_shape = True, tuple(packed.stride()), packed.shape
    else:
        pack = packs_weight is not None and _pack.enabled() and packs_weight(spec, w_strides)
        if pack:
            w_strides = tuple(_pack.dgrad_packed(torch.empty(weight.shape, device="meta")).stride())
        w_shape = weight.shape
    copy_dy = copy_dx = False
    if kernel.name == Gemm1x1Dgrad.name:
        from .forward import Gemm1x1

        # dY is the GEMM's row operand: copied to channels_last where it would load badly in place.
        copy_dy = spec.k_per_group > 1 and dy_strides[-3] != 1 and Gemm1x1.needs_row_copy(
            spec, (spec.n, spec.h, spec.w), _plan.batched(dy_strides), _plan.batched(dx_strides))
        if copy_dy:
            dy_strides = _plan.contiguous_strides(tuple(grad_z.shape), channels_last=True)
    if isinstance(kernel, ConvDgrad):
        # dY's channels are the reduction, read as 16-byte rows: a channel-strided (NCHW) dY is
        # copied to channels_last in the call (reads and writes dY once), instead of 2-byte gathers
        # on every tap of the main loop (issue pressure 1.5-2.7 and up to 6 KB of spills per thread
        # for ResNet-50's layers, against 0.32-0.66 with the copy).
        copy_dy = spec.k_per_group > 1 and dy_strides[-3] != 1
        if copy_dy:
            dy_strides = _plan.contiguous_strides(tuple(grad_z.shape), channels_last=True)
        # Likewise dX: the tile's columns are channels; stored along a strided channel axis (NCHW),
        # a 128x128 tile becomes 128 scalar stores per thread and spills (6 KB per thread): the
        # kernel writes a channels_last dX and the call returns its contiguous copy (2 |dX| bytes).
        # The sub-pixel kernel too: its runs (pw, c) are vector stores channels_last, scattered
        # NCHW (ResNet-50's stem, fp16, triton 3.9: 344 B spilled at 128x64; silu: 616 B).
        copy_dx = spec.c > 1 and out_strides[-3] != 1
        if copy_dx:
            dx_strides = _plan.contiguous_strides(input_shape, channels_last=True)
    spans = [(grad_z.shape, dy_strides), (w_shape, w_strides), (input_shape, dx_strides)]
    if residual is not None:
        spans.append((residual.shape, residual.stride()))
    pixels = spec.n * spec.h * spec.w

    def spans_of(split):  # with a split, the fp32 partial sums [split, N*H*W, C] too
        return spans + ([((split * pixels * spec.c,), (1,))] if split > 1 else [])

    strides = {"dy": _plan.batched(dy_strides), "w": w_strides, "dx": _plan.batched(dx_strides),
               "r": (0, 0, 0, 0) if residual is None else _plan.batched(residual.stride())}
    return _plan.build(kernel, spec, grad_z.device, _plan.target_of(grad_z.device, device_name, sm_count), strides,
                       out_shape=input_shape, out_strides=out_strides, spans=spans_of,
                       channels_last=channels_last, launch=math.prod(input_shape) > 0, pack_weight=pack,
                       extra={**extra, "copy_grad_z": copy_dy, "grad_input_strides": dx_strides})


def _channels_last_copy(t):
    """A fresh copy of a 4-D or 3-D tensor with the strides of _plan.contiguous_strides(shape, True)."""
    if t.dim() == 3:
        return t.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    return t.contiguous(memory_format=torch.channels_last)


def run(plan: _plan.Plan, grad_z, weight, bias=None, residual=None, preact: bool = False):
    """Launch an input-gradient plan; returns dL/dx, with the plan's epilogue ``act(dL/dx + bias +
    residual)``; ``(dx, z)`` with ``preact``, z the pre-activation (dx itself without an activation)."""
    spec = plan.spec
    epilogue = spec.has_bias or spec.has_residual or spec.activation is not None  # in the kernel (_build)
    store_z = preact and spec.activation is not None
    # conv_dgrad may write a channels_last dX (extra["grad_input_strides"]) and return its copy.
    dx_strides = plan.extra.get("grad_input_strides", plan.out_strides) if plan.launch else plan.out_strides
    dx = torch.empty_strided(plan.out_shape, dx_strides, dtype=grad_z.dtype, device=grad_z.device)
    z = torch.empty_strided(plan.out_shape, dx_strides, dtype=grad_z.dtype, device=grad_z.device) if store_z else dx
    if not plan.launch:  # an empty output: no element for the epilogue either
        dx.zero_()
    else:
        if grad_z.device.type != "cuda":
            _backend.check_runnable(grad_z.device)
        if plan.pack_weight:
            index = plan.extra.get("subpixel_index")
            weight = _pack.dgrad_packed(weight) if index is None else _pack.subpixel_weight(weight, index)
        if plan.extra.get("copy_grad_z"):  # a channels_last copy of dL/dz (conv_dgrad; gemm_1x1_dgrad)
            grad_z = _channels_last_copy(grad_z)
        operands = (grad_z, weight, dx)
        if epilogue:  # the kernels index the bias with unit stride (b[::2] is copied)
            operands += (None if bias is None else bias.contiguous(), z if store_z else None, residual)
        with _backend.launch_guard(grad_z.device):
            if plan.split > 1:
                _run_split(plan, store_z, operands)
            else:
                meta = {**plan.meta, "STORE_PREACT": True} if store_z else plan.meta
                _backend.launch(plan.fn, plan.grid, (*plan.kernel.pointers(*operands), *plan.args), meta)
    dx = _in_layout(dx, plan.out_strides)
    return (dx, dx if z is dx else _in_layout(z, plan.out_strides)) if preact else dx


def _in_layout(t, strides):
    """``t``, or its copy laid out with ``strides`` (conv_dgrad writes an NCHW dX channels_last)."""
    if t.stride() == strides:
        return t
    return torch.empty_strided(t.shape, strides, dtype=t.dtype, device=t.device).copy_(t)


def _run_split(plan, store_z, operands) -> None:
    """gemm_1x1_dgrad split: fp32 partial sums [split, N*H*W, C], then the forward's
    conv2d_split_epilogue_kernel adds them in order into dx and applies the epilogue (bias,
    residual, activation, z), all off for the input gradient."""
    from mcconv._kernels import conv2d_split_epilogue_kernel

    from .forward import SPLIT_EPILOGUE_BLOCKS as blocks

    grad_z, weight, dx, *epilogue = operands
    bias, z, residual = epilogue or (None, None, None)
    spec = plan.spec
    m = spec.n * spec.h * spec.w
    partial = torch.empty((plan.split, m, spec.c), dtype=torch.float32, device=dx.device)
    d = _plan.batched(dx.stride())
    r = d if residual is None else _plan.batched(residual.stride())
    _backend.launch(plan.fn, plan.grid, (*plan.kernel.pointers(grad_z, weight, partial), *plan.args), plan.meta)
    meta = {"HAS_BIAS": plan.meta["HAS_BIAS"], "ACTIVATION": plan.meta["ACTIVATION"], "STORE_PREACT": store_z,
            "HAS_RESIDUAL": plan.meta["HAS_RESIDUAL"], "Y_RUN": 1, "R_RUN": 1, "Y_ALIGN": 1, "R_ALIGN": 1,
            "INDEX_64": plan.index_64, **blocks}  # no alignment facts: any dx strides
    grid = (_cdiv(m, blocks["BLOCK_M"]), _cdiv(spec.c, blocks["BLOCK_N"]))
    # without an epilogue dx stands in for z, bias and residual (their constexprs are off)
    _backend.launch(conv2d_split_epilogue_kernel, grid,
                    (partial, dx, plan.split, m * spec.c, dx if z is None else z, dx if bias is None else bias,
                     dx if residual is None else residual, spec.n, spec.c, spec.h, spec.w, *d, *r), meta)
