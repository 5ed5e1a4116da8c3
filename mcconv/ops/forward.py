"""The forward convolution: ``y = act(conv2d(x, w) + bias + residual)`` in one kernel.

Operands, in every forward kernel's pointer order: input x, weight w, bias, output y,
pre-activation z (stored only when the backward needs it), residual r.

| kernel        | runs when                                  | device code              |
|---------------|--------------------------------------------|--------------------------|
| `gemm_1x1`    | 1x1 kernel, stride 1, no padding           | kernels/conv1x1_gemm.py  |
| `depthwise`   | groups == in-channels > 1                  | kernels/depthwise.py     |
| `conv_direct` | everything else (implicit GEMM)            | kernels/conv2d_fwd.py    |
"""
import math
import weakref

import torch

from .. import _backend, _pack, _plan
from .._spec import describe
from ..registry import FORWARD, Kernel, dispatch, register


def _epilogue(spec) -> dict:
    act = spec.activation
    return {"HAS_BIAS": spec.has_bias, "ACTIVATION": None if act is None else act.device(),
            "STORE_PREACT": False, "HAS_RESIDUAL": spec.has_residual}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@register
class Gemm1x1(Kernel):
    """kernels/conv1x1_gemm.py's conv1x1_gemm_kernel for the forward; its host-side rules (pixel
    merging, alignment facts, reduction block cap, split rule) are static methods that
    gemm_1x1_dgrad (mcconv/ops/input_grad.py), the same kernel, shares."""

    name = "gemm_1x1"
    operation = FORWARD
    jit_name = "conv1x1_gemm_kernel"
    about = "1x1 convolution as a GEMM [N*H*W, C/g] x [C/g, K/g] per group"

    def applies(self, spec):
        return spec.is_1x1_gemm

    def features(self, spec):
        return spec.n * spec.p * spec.q, spec.k_per_group, spec.c_per_group

    def limits(self, spec):
        return {"BLOCK_M": self.rows_limit(spec, spec.n * spec.p * spec.q, spec.k, spec.k_per_group),
                "BLOCK_N": spec.k_per_group, "BLOCK_K": self.reduction_limit(spec, spec.c_per_group)}

    def grid(self, spec, config, split=1):
        m = spec.n * spec.p * spec.q
        return (_cdiv(m, config["BLOCK_M"]) * _cdiv(spec.k_per_group, config["BLOCK_N"]), spec.groups, split)

    def arguments(self, spec, strides, split=1):
        w = strides["w"]
        # The weight as a [C/g, K/g] matrix per group: reduction along dim 1, columns along dim 0.
        return self.gemm_arguments(spec, (spec.n, spec.p, spec.q), spec.c_per_group, spec.k_per_group, strides["x"],
                                   (w[0], w[1], spec.k_per_group * w[0]), strides["y"],
                                   strides["r"] if spec.has_residual else None, _epilogue(spec), split)

    def loop_trips(self, spec, config, split=1):
        # kernels/conv1x1_gemm.py: `for kb in range(k_first, k_end)`, this program's share of the blocks
        return [_cdiv(_cdiv(spec.c_per_group, config["BLOCK_K"]), split)]

    def split(self, spec, config, sm_count):
        # The forward's partials [split, N*P*Q, K] are conv_direct's: run() finishes them with
        # conv2d_split_epilogue_kernel (gemm_1x1_dgrad's run() too, its epilogue off).
        if "BLOCK_K" not in config:  # autotuned blocks are not known here
            return 1
        return self.split_for(self.grid(spec, config)[0] * spec.groups, _cdiv(spec.c_per_group, config["BLOCK_K"]),
                              sm_count)

    # -- shared with gemm_1x1_dgrad (mcconv/ops/input_grad.py), which runs the same kernel

    ROW_BYTES = 128  # reduction block cap in bytes: 64 fp16/bf16, 32 fp32 elements
    SPLIT_MIN_STEPS = 8  # BLOCK_K steps per share of a split reduction, at least

    @staticmethod
    def rows_limit(spec, rows, channels, cols):
        """BLOCK_M's cap: the GEMM's rows, and 64 where a tile of more than 64 output columns
        (``cols`` of ``channels``) stores channels_last rows in copies under 16 bytes or applies
        silu/gelu (ConvDirect.LIGHT_ACTIVATIONS aside): at 128 rows those epilogues spilled
        (mcconv inspect, fp16, 16 x 256 x 52 x 52 -> 1x1, triton 3.9 / 3.6: K = 255 (YOLO's
        detection head) with bias + silu 1336 / 3876 B, K = 252 32 / 0 B, K = 256 with gelu
        424 / 256 B, a transposed 1x1 with gelu 472 / 264 B; none at 64 rows, pressure 0.34-0.36)."""
        if spec.dtype is None or cols <= 64 or not spec.channels_last:
            return rows
        vec = _vector(spec)
        heavy = (spec.activation.name if spec.activation else None) not in ConvDirect.LIGHT_ACTIVATIONS
        if heavy or math.gcd(vec, channels, cols) < vec:
            return min(rows, 64)
        return rows

    @classmethod
    def reduction_limit(cls, spec, reduction):
        """BLOCK_K's cap: the reduction length, and at most ROW_BYTES per tile row. A row is then
        one 128-byte swizzle atom (wgmma's widest), and the default 128x128 tiles keep 3 stages in
        96 KiB of shared memory for every dtype, two CTAs (8 warps) per SM: tf32 at BLOCK_K 64
        would need 192 KiB, one CTA of 4 warps."""
        return min(reduction, cls.ROW_BYTES // spec.dtype.itemsize) if spec.dtype is not None else reduction

    @classmethod
    def split_for(cls, tiles, steps, sm_count):
        """Programs sharing one tile's reduction: as many as one wave of ``sm_count`` SMs holds
        (never a second, partial wave), each share >= SPLIT_MIN_STEPS blocks; 1 without a GPU
        model. The fp32 partials cost 8 bytes per output element and share (written, read back):
        worth it only when the tiles leave most SMs idle and the reduction is long."""
        if not sm_count or tiles >= sm_count:
            return 1
        return max(1, min(sm_count // max(tiles, 1), steps // cls.SPLIT_MIN_STEPS))

    @staticmethod
    def gemm_arguments(spec, pixels, red, cols, x, w, y, r, constexprs, split=1):
        """(scalar arguments, constexprs) of kernels/conv1x1_gemm.py for a GEMM per group of
        ``pixels`` (n, p, q) rows, reduction length ``red`` and ``cols`` columns.

        ``x``, ``y``, ``r``: the (batched) strides of the operand rows are read from, of the
        output and of the residual (None: none); ``w``: the weight's strides (along the columns,
        along the reduction, between groups). With ``split`` > 1 the kernel stores fp32 partials
        [split, N*P*Q, groups*cols] (dense, channels fastest) instead of ``y``. Pixel axes that every
        operand can walk with one stride are merged (NCHW: (h, w); dense NHWC: (n, h, w)), and the
        alignment facts of the kernel's docstring are derived from the strides here, once per plan.
        """
        groups = spec.groups
        vector = max(1, 16 // spec.dtype.itemsize)  # elements in 16 bytes: the widest cp.async
        if split > 1:  # the partial buffer's strides, in the kernel's (n, k, h, w) order
            k_total = groups * cols
            y, y_vector = (pixels[1] * pixels[2] * k_total, 1, pixels[2] * k_total, k_total), 4
        else:
            y_vector = vector
        operands = [x, y] + ([r] if r is not None else [])
        sizes, merged = Gemm1x1.merge_pixels(pixels, [(s[0], s[2], s[3]) for s in operands])
        xs, ys = merged[0], merged[1]
        rs = merged[2] if r is not None else (0, 0, 0)
        x_facts = Gemm1x1.operand_facts(sizes, xs, x[1], red, groups, vector)
        y_facts = Gemm1x1.operand_facts(sizes, ys, y[1], cols, groups, y_vector, output=True)
        r_facts = Gemm1x1.operand_facts(sizes, rs, r[1], cols, groups, vector, output=True) if r else (0, 1)
        w_facts = Gemm1x1.weight_facts(w, red, cols, groups, vector)
        scalars = (*sizes, red, cols, xs[0], x[1], xs[1], xs[2], *w, ys[0], y[1], ys[1], ys[2],
                   rs[0], r[1] if r else 0, rs[1], rs[2])
        facts = {"X_LAYOUT": x_facts[0], "X_ALIGN": x_facts[1], "W_LAYOUT": w_facts[0], "W_ALIGN": w_facts[1],
                 "Y_LAYOUT": y_facts[0], "Y_ALIGN": y_facts[1], "R_LAYOUT": r_facts[0], "R_ALIGN": r_facts[1],
                 "C_ALIGN": Gemm1x1.alignment(256, red), "SPLIT": split}
        return scalars, {**constexprs, **facts}

    @staticmethod
    def needs_row_copy(spec, pixels, x, y) -> bool:
        """Whether the GEMM's row operand (the forward's input, the input gradient's dL/dz; batched
        strides ``x``, output strides ``y``, ``pixels`` = (n, p, q)) loads with less than 8-byte
        asynchronous copies as laid out, so that a per-call channels_last copy (its bytes read
        and written once) should replace it: no layout fact (NCHW with H*W odd, e.g. the 7x7 maps
        of ResNet-50 and MobileNetV2 in fp16: 2-byte synchronous loads and spills), or pixels
        contiguous under tf32 (wgmma tf32 takes K-major operands only: Triton transposes them
        with 4-byte cp.async, 255 registers and spills at 128x128x32). The forward's _operands
        and the input gradient's _build then plan the copy (made per call in run)."""
        sizes, (xs, _) = Gemm1x1.merge_pixels(pixels, [(x[0], x[2], x[3]), (y[0], y[2], y[3])])
        vector = max(1, 16 // spec.dtype.itemsize)
        layout, align = Gemm1x1.operand_facts(sizes, xs, x[1], 2, 1, vector)
        if layout == 0 or align * spec.dtype.itemsize < 8:
            return True
        return layout == 2 and spec.dtype == torch.float32 and bool(spec.tf32)

    @staticmethod
    def alignment(limit, *values):
        """The largest power of two <= ``limit`` (a power of two) dividing every value (0 is divisible by any)."""
        return _pow2_dividing(*values, cap=limit)

    @staticmethod
    def merge_pixels(sizes, strides):
        """(n, p, q) and each operand's (n, h, w) strides with the pixel axes merged where all allow.

        Axis h merges into w when every operand steps h by q times its w stride (or an axis has
        one element); then n into the merged axis likewise. A merged-away axis has size 1 (Triton
        specialises it: its index math folds away) and stride 0. The flat pixel index
        m = (n * P + p) * Q + q is the same before and after.
        """
        n, p, q = sizes
        if p == 1 or q == 1 or all(sh == q * sw for _, sh, sw in strides):
            strides = [(sn, 0, sw if q > 1 else sh) for sn, sh, sw in strides]
            p, q = 1, p * q
        if p == 1 and (n == 1 or q == 1 or all(sn == q * sw for sn, _, sw in strides)):
            strides = [(0, 0, sw if q > 1 else sn) for sn, _, sw in strides]
            n, q = 1, n * q
        return (n, p, q), strides

    @staticmethod
    def operand_facts(sizes, pixel_strides, channel_stride, channels, groups, vector, output=False):
        """(layout, alignment) of an activation-like operand: element (m, j) of group g at
        pixel_offset(m) + (g * channels + j) * channel_stride (the kernel's hinted_offsets).

        Layout 1 (channels contiguous): every pixel offset and the group offset are multiples of
        the alignment; for an output the channel count too (its store mask then holds per
        vector). Layout 2 (pixels contiguous along q after merging): q and the other pixel
        strides are, so runs of that many pixels never cross a row, and the channel stride is.
        (0, 1) when neither gives a vector wider than one element.
        """
        n, p, q = sizes
        pix = [s for size, s in zip(sizes, pixel_strides) if size > 1]
        if channel_stride == 1 and (channels > 1 or groups > 1):
            align = Gemm1x1.alignment(vector, *pix, *([channels] if groups > 1 or output else []))
            if align > 1:
                return 1, align
        if q > 1 and pixel_strides[2] == 1:
            others = [s for size, s in zip((n, p), pixel_strides[:2]) if size > 1]
            align = Gemm1x1.alignment(vector, q, *others, *([channel_stride] if channels > 1 or groups > 1 else []))
            if align > 1:
                return 2, align
        return 0, 1

    @staticmethod
    def weight_facts(w, red, cols, groups, vector):
        """(layout, alignment) of the weight read as B[k, j] = w_ptr + g * wg + k * wc + j * wk
        (``w`` = (wk, wc, wg)): layout 1 when its columns are contiguous (the input gradient's
        W[k, c]; runs end where the columns wrap), 2 when the reduction is (the forward's)."""
        wk, wc, wg = w
        group = [wg] if groups > 1 else []
        if wk == 1 and cols > 1:
            align = Gemm1x1.alignment(vector, cols, *([wc] if red > 1 else []), *group)
            return (1, align) if align > 1 else (0, 1)
        if wc == 1 and red > 1:
            align = Gemm1x1.alignment(vector, *([wk] if cols > 1 else []), *group)
            return (2, align) if align > 1 else (0, 1)
        return 0, 1


@register
class Depthwise(Kernel):
    """kernels/depthwise.py's conv2d_depthwise_kernel. Its host rules (output columns per lane, rows
    per band, alignment facts) are static methods that the gradients' declarations share."""

    name = "depthwise"
    operation = FORWARD
    jit_name = "conv2d_depthwise_kernel"
    uses_dot = False
    about = "depthwise convolution (groups == C, any channel multiplier), element-wise on the CUDA cores"

    MAX_REGISTER_TAPS = 9  # larger windows take the kernel's row loop (ROW_LOOP)
    MAX_WINDOW = 18  # input columns one lane's kernel row reads
    MIN_BAND, MAX_BAND = 4, 16  # output rows one lane walks
    MIN_PROGRAMS = 132  # bands shrink (more programs) down to MIN_BAND until there are this many
    PLAN_LANES, PLAN_CHANNELS = 64, 16  # the default tile, which the band rule assumes

    def applies(self, spec):
        return spec.is_depthwise

    def features(self, spec):
        return spec.n * spec.p * spec.q, spec.k, spec.taps

    def limits(self, spec):
        return {"BLOCK_M": self._walk(spec)[2], "BLOCK_N": spec.k}

    # -- host rules shared with DepthwiseDgrad and DepthwiseWgrad (their output grid in place of P x Q)

    @staticmethod
    def geometry(spec, cols: int) -> dict:
        """The constexprs every depthwise kernel takes for its window walk: kernel size, stride,
        dilation, output columns per lane and channel multiplier."""
        return {"KH": spec.kh, "KW": spec.kw, "STRIDE_H": spec.stride[0], "STRIDE_W": spec.stride[1],
                "DIL_H": spec.dilation[0], "DIL_W": spec.dilation[1], "COLS": cols, "CHANNEL_MULT": spec.k // spec.c}

    @staticmethod
    def pow2_dividing(*values, cap: int = 16) -> int:
        """The largest power of two <= cap dividing every value (zeros ignored): an alignment fact."""
        return _pow2_dividing(*values, cap=cap)

    @classmethod
    def pixel_align(cls, shape, strides) -> int:
        """Elements that every pixel offset of a 4-D (n, c, h, w) tensor is a multiple of, up to 16
        (16 bytes and more): 1 unless its channels are contiguous (the vectors run along channels)."""
        if strides[1] != 1:
            return 1
        moving = [st for size, st in zip((shape[0], shape[2], shape[3]), (strides[0], strides[2], strides[3]))
                  if size > 1]  # a size-1 dimension's stride is never multiplied
        return cls.pow2_dividing(*moving, cap=16)

    @classmethod
    def cols(cls, width: int, kw: int, stride_w: int, dil_w: int, most: int = 4) -> int:
        """COLS, output columns per lane: each loaded input column serves every (column, tap) pair
        that reads it. 4 where it divides the output width, else 2 where that does (no lane wasted),
        else 4 (or the width when narrower); at most MAX_WINDOW input columns per kernel row."""
        fits = [c for c in (4, 2, 1) if c <= min(most, max(1, width))
                and (c - 1) * stride_w + (kw - 1) * dil_w + 1 <= cls.MAX_WINDOW]
        if not fits:
            return 1
        exact = [c for c in fits if width % c == 0 and c > 1]
        return exact[0] if exact else fits[0]

    @classmethod
    def band_rows(cls, n: int, rows: int, width: int, channels: int, cols: int, unroll: int = 1,
                  min_programs: int | None = None) -> int:
        """Output rows per lane (band_rows): the window rows that consecutive output rows share are
        loaded once per band, the weights once per program. Among the band counts that keep bands
        of MIN_BAND..MAX_BAND rows (a multiple of the kernel's unroll), the one that wastes the
        fewest lane steps (rows past the image, lanes past the last block of the default tile)
        while leaving min_programs programs (default MIN_PROGRAMS) where any does; fewer bands on
        a tie."""
        min_programs = cls.MIN_PROGRAMS if min_programs is None else min_programs
        if n * rows * width == 0:  # an empty batch or image: nothing to walk
            return cls.MIN_BAND
        lanes_per_band = n * -(-width // cols)
        channel_blocks = -(-channels // cls.PLAN_CHANNELS)
        best = None
        for bands in range(-(-rows // cls.MAX_BAND), max(1, -(-rows // min(rows, cls.MIN_BAND))) + 1):
            band = -(-(-(-rows // bands)) // unroll) * unroll
            used = -(-rows // band)
            blocks = -(-lanes_per_band * used // cls.PLAN_LANES)
            waste = band * blocks * cls.PLAN_LANES / (rows * lanes_per_band)  # slots / useful lane-rows
            key = (blocks * channel_blocks < min_programs, -blocks if blocks * channel_blocks < min_programs else 0,
                   round(waste, 6), used)
            if best is None or key < best[0]:
                best = (key, band)
        return best[1]

    @staticmethod
    def max_cols(spec) -> int:
        """4 output columns per lane, 2 for fp32 (its loaded rows take twice the registers: 4
        columns spilled 120 bytes), under an epilogue that needs registers of its own (an
        activation other than relu, which may also store its input, or a residual) or for an NCHW
        output (the input is then NCHW too but where the weight alone is channels_last: one address
        per element, not per vector): 4 columns' accumulators, their carried window rows and the
        3x3 weights take about 250 registers."""
        light = spec.activation is None or spec.activation.name == "relu"
        narrow = spec.dtype is None or spec.dtype.itemsize <= 2  # fp32 rows take twice the registers
        return 4 if light and narrow and not spec.has_residual and spec.channels_last else 2

    @staticmethod
    def weight_contiguous(spec, w_strides) -> bool:
        """The weight is (K, 1, KH, KW) contiguous: the kernels' tap offsets are then constants."""
        return tuple(w_strides[2:]) == (spec.kw, 1) and w_strides[0] == spec.kh * spec.kw

    # -- this kernel

    def _walk(self, spec):
        """(COLS, band_rows, lanes) of a call."""
        cols = self.cols(spec.q, spec.kw, spec.stride[1], spec.dilation[1], self.max_cols(spec))
        band = self.band_rows(spec.n, spec.p, spec.q, spec.k, cols,
                              self.unroll(spec.kh, spec.stride[0], spec.dilation[0], spec.taps))
        return cols, band, spec.n * _cdiv(spec.p, band) * _cdiv(spec.q, cols)

    def grid(self, spec, config, split=1):
        return (_cdiv(self._walk(spec)[2], config["BLOCK_M"]), _cdiv(spec.k, config["BLOCK_N"]))

    def arguments(self, spec, strides, split=1):
        x, w, y, r = strides["x"], strides["w"], strides["y"], strides["r"]
        cols, band, _ = self._walk(spec)
        out = (spec.n, spec.k, spec.p, spec.q)
        meta = {**self.geometry(spec, cols), "ROW_LOOP": spec.taps > self.MAX_REGISTER_TAPS,
                "CHANNELS_LAST": x[1] == 1, "W_CONTIG": self.weight_contiguous(spec, w),
                "K_ALIGN": self.pow2_dividing(spec.k, cap=1024),
                "X_ALIGN": self.pixel_align((spec.n, spec.c, spec.h, spec.w), x),
                "Y_ALIGN": self.pixel_align(out, y), "R_ALIGN": self.pixel_align(out, r), **_epilogue(spec)}
        return ((spec.n, spec.c, spec.h, spec.w, spec.k, spec.p, spec.q, spec.padding[0], spec.padding[2], band,
                 *x, w[0], w[2], w[3], *y, *r), meta)

    @classmethod
    def unroll(cls, kh: int, stride_h: int, dil_h: int, taps: int) -> int:
        """Output rows per loop iteration (kernels/depthwise.py's unroll_rows): enough that every
        window row carried to the next output row is refreshed within one iteration."""
        if taps > cls.MAX_REGISTER_TAPS:
            return 1
        shift = stride_h // dil_h if stride_h % dil_h == 0 else kh
        carry = kh - min(kh, shift)
        return -(-carry // shift) if carry else 1

    def loop_trips(self, spec, config, split=1):
        # kernels/depthwise.py: `for s0 in range(0, band_rows, UNROLL)`, its taps unrolled; windows of
        # more than MAX_REGISTER_TAPS taps take the row loop `for kh in range(0, KH)` inside it
        band = self._walk(spec)[1]
        trips = _cdiv(band, self.unroll(spec.kh, spec.stride[0], spec.dilation[0], spec.taps))
        return [spec.kh, trips] if spec.taps > self.MAX_REGISTER_TAPS else [trips]


def _pow2_dividing(*values, cap: int) -> int:
    """The largest power of two <= ``cap`` dividing every value (0 divides nothing away)."""
    g = 0
    for v in values:
        g = math.gcd(g, int(v))
    align = 1
    while align < cap and g % (2 * align) == 0:
        align *= 2
    return align


def _reachable(sizes, strides) -> tuple:
    """Strides with those of size-1 dimensions zeroed: they never move an address, so they must
    not spoil an alignment fact (their index is always 0)."""
    return tuple(0 if size == 1 else stride for size, stride in zip(sizes, strides))


def _vector(spec) -> int:
    """Elements per 16-byte access."""
    return max(1, 16 // spec.dtype.itemsize) if spec.dtype is not None else 1


def _pixel_run(spec, strides, vector: int) -> int:
    """Y_RUN / R_RUN of kernels/conv2d_fwd.py for an output-shaped operand with batched strides
    (n, k, h, w): the length (a power of two <= ``vector``) of the aligned runs of consecutive
    output pixels that are contiguous in memory (an NCHW tensor), else 1 (channels_last: the
    channels are the contiguous axis; or pixels strided)."""
    sn, sk, sh, sw = strides
    n, k, p, q = spec.n, spec.k, spec.p, spec.q
    if (sk == 1 and k > 1) or (sw != 1 and q > 1):
        return 1
    dense_plane = p == 1 or sh == q  # rows follow rows: runs may cross them within an image
    extent = p * q if dense_plane else q
    return _pow2_dividing(extent, *([sn] if n > 1 else []), *([sh] if p > 1 and not dense_plane else []),
                          *([sk] if k > 1 else []), cap=vector)


def _row_align(spec, sizes, strides, vector: int) -> int:
    """Y_ALIGN / R_ALIGN of kernels/conv2d_fwd.py and conv3d_fwd.py for an output-shaped operand of
    batched ``sizes`` (n, k, *pixel axes) whose channels are contiguous (channels_last): the power
    of two <= ``vector`` that every pixel's row offset and the channels of a group are multiples
    of (the elements of one store: the row's start and its channel mask must both be whole
    vectors); 1 otherwise (an NCHW operand stores along its pixels: Y_RUN)."""
    sn, sk, *pixel = _reachable(sizes, strides)
    if sk != 1:
        return 1
    return _pow2_dividing(sn, *pixel, spec.k_per_group, cap=vector)


SPLIT_MIN_REDUCTION = 2048  # products per output element below which a split does not pay
SPLIT_MIN_STEPS = 16  # pipelined steps each share keeps


def _split_plan(tiles: int, steps: int, reduction: int, sm_count: int | None) -> int:
    """Programs sharing one tile's reduction, for a GPU of ``sm_count`` SMs.

    Only where fewer than half the SMs would get a tile and the reduction is long: the shares
    then fill the GPU (a program per SM or more), each keeping >= SPLIT_MIN_STEPS pipelined
    steps. The price is the fp32 partial sums, written and read once more (8 bytes per output
    element and share) plus a second launch, against 2 * ``reduction`` FLOPs per output element:
    where tiles already reach half the SMs, a lone program per SM runs near its full rate and the
    partials cost more than the idle SMs save (ResNet-50's 3x3 at 14x14, 98 tiles of 128x128: no
    split; at 7x7, 52 tiles and 4608 products per output: 3 shares). 1 without a GPU (``sm_count``
    None: the interpreter; tests/test_conv_direct_rework.py plans for an H100's 132 SMs there)."""
    if not sm_count or 2 * tiles > sm_count or reduction < SPLIT_MIN_REDUCTION:
        return 1
    return max(1, min(-(-sm_count // tiles), steps // SPLIT_MIN_STEPS))


def _pow2_at_least(value: int) -> int:
    return 1 if value <= 1 else 1 << (int(value) - 1).bit_length()


FOLD_MAX_CHANNELS = 8  # per group; above, a channel block of 16 wastes at most half its lanes
FOLD_MAX_RUN = 128  # elements of one kernel row's (kw, c) run; wider kernels take the tap loop


def fold_channels(spec) -> int:
    """conv_direct's few-channel mode: CP, the channels per group of its padded input copy (a power
    of two >= C/g whose pixel is >= 8 bytes, so that a pixel is one cp.async), or 0 when the call
    takes the tap loop. For tensor-core math only (fp16, bf16, tf32: the fold fills the MMA's
    reduction lanes; IEEE fp32 dots run on the CUDA cores and keep the tap loop's summation
    order), and with the weight packing on (MCCONV_PACK_WEIGHTS=0 turns it off)."""
    if spec.dtype is None or not 0 < spec.c_per_group <= FOLD_MAX_CHANNELS or not _pack.enabled():
        return 0
    if spec.dtype == torch.float32 and not spec.tf32:
        return 0
    cp = max(_pow2_at_least(spec.c_per_group), 8 // spec.dtype.itemsize)
    return cp if _pow2_at_least(spec.kw * cp) <= FOLD_MAX_RUN else 0


def fold_run(spec, cp: int) -> int:
    """The padded run of one kernel row in the few-channel mode: KW * CP rounded up to a power of two."""
    return _pow2_at_least(spec.kw * cp)


@register
class ConvDirect(Kernel):
    """The implicit GEMM for every convolution the GEMM and depthwise kernels do not take.

    Two modes of one kernel (kernels/conv2d_fwd.py), chosen per call shape: the tap loop
    (reduction over taps x channel blocks, the input and weight read in place when their channels
    are at unit stride, else through per-call channels_last copies), and, for at most
    FOLD_MAX_CHANNELS input channels per group (the RGB stem), the fold over a padded copy of
    the input and a (K, KH, RUN) packing of the weight, (kw, c) in one reduction run per kernel
    row. One kernel, not two: both share the tile table, the epilogue and the dispatch rule.
    """

    name = "conv_direct"
    operation = FORWARD
    jit_name = "conv2d_fwd_kernel"
    about = "direct convolution as an implicit GEMM [N*P*Q, KH*KW*C/g] x [KH*KW*C/g, K/g] per group"

    def features(self, spec):
        return spec.n * spec.p * spec.q, spec.k_per_group, spec.c_per_group * spec.taps

    # A channel block of 128 bytes per pixel row: the wgmma operands' 128-byte swizzle, and three
    # stages of 128x128 tiles of it fit two CTAs per SM (fp16: 64 channels, fp32: 32).
    BLOCK_K_BYTES = 128
    # Epilogues a 128x128 fp32 accumulator leaves room for in one warpgroup's 255 registers
    # (bias, relu, a channels_last output of a 2-byte dtype); others (silu, gelu, hardswish, the
    # residual, an NCHW output, tf32's wider operands) spilled: their tiles are 64 rows when they
    # would be 128 columns wide. An NCHW output with such an activation or a residual takes at
    # most 64 columns, and 64 rows too unless its pixels store in runs of 4 or more (Y_RUN; and
    # a tf32 residual).
    LIGHT_ACTIVATIONS = (None, "relu")

    def limits(self, spec):
        cp = fold_channels(spec)
        k_extent = spec.kh * fold_run(spec, cp) if cp else spec.c_per_group
        limits = {"BLOCK_M": spec.n * spec.p * spec.q, "BLOCK_N": spec.k_per_group, "BLOCK_K": k_extent}
        if spec.dtype is None:
            return limits
        limits["BLOCK_K"] = min(k_extent, self.BLOCK_K_BYTES // spec.dtype.itemsize)
        vec = _vector(spec)
        if not cp and math.gcd(vec, spec.c, spec.c_per_group) < vec:
            # Input rows in copies under 16 bytes (C/g = 36 or 100 in fp16: 8-byte ones), each its
            # own address: half the channel block, or a 128-row tile spilled (mcconv inspect, 3x3:
            # C = 36 at stride 2, 72-352 B; C = 100, 32-192 B; triton 3.6 and 3.9; none at half).
            limits["BLOCK_K"] = min(limits["BLOCK_K"], self.BLOCK_K_BYTES // spec.dtype.itemsize // 2)
        heavy_activation = (spec.activation.name if spec.activation else None) not in self.LIGHT_ACTIVATIONS
        if (heavy_activation or spec.has_residual) and not spec.channels_last:
            # An NCHW output stores along the pixels (Y_RUN at a time) or element by element.
            limits["BLOCK_N"] = min(limits["BLOCK_N"], 64)
            out = _plan.batched(_plan.contiguous_strides(spec.output_shape))
            if _pixel_run(spec, out, _vector(spec)) < 4 or (spec.has_residual and spec.dtype.itemsize > 2):
                limits["BLOCK_M"] = min(limits["BLOCK_M"], 64)
        elif (heavy_activation or spec.has_residual or not spec.channels_last or spec.dtype.itemsize > 2
              or math.gcd(vec, spec.k, spec.k_per_group) < vec) and spec.k_per_group > 64:
            # (and output rows stored in pieces under 16 bytes: K = 100 with a bias and relu
            # spilled 112-152 B at 128 rows, 8-byte stores)
            limits["BLOCK_M"] = min(limits["BLOCK_M"], 64)
        return limits

    def _tiles(self, spec, config) -> int:
        m = spec.n * spec.p * spec.q
        return _cdiv(m, config["BLOCK_M"]) * _cdiv(spec.k_per_group, config["BLOCK_N"])

    def grid(self, spec, config, split=1):
        return (self._tiles(spec, config), spec.groups, split)

    def split(self, spec, config, sm_count):
        if "BLOCK_K" not in config or fold_channels(spec):  # autotuned blocks are not known here
            return 1
        steps = spec.taps * _cdiv(spec.c_per_group, config["BLOCK_K"])
        return _split_plan(self._tiles(spec, config) * spec.groups, steps, spec.taps * spec.c_per_group, sm_count)

    def arguments(self, spec, strides, split=1):
        cp = fold_channels(spec)
        vec = _vector(spec)
        taps = spec.taps
        out = (spec.n, spec.k, spec.p, spec.q)
        meta = {"KH": spec.kh, "KW": spec.kw, "TAP_BITS": 32 if taps <= 32 else 64 if taps <= 64 else 0,
                "FOLD_CP": cp, "FOLD_RUN": fold_run(spec, cp) if cp else 0, "SPLIT": split,
                "Y_RUN": _pixel_run(spec, strides["y"], vec),
                "R_RUN": _pixel_run(spec, strides["r"], vec) if spec.has_residual else 1,
                "Y_ALIGN": _row_align(spec, out, strides["y"], vec),
                "R_ALIGN": _row_align(spec, out, strides["r"], vec) if spec.has_residual else 1}
        if cp:  # the padded copy (no padding left) and the (K, KH, RUN) packing: see _operands
            x, w = strides["x"], strides["w"]  # w's kw stride (CP) is not used by the fold
            top, bottom, left, right = spec.padding
            sizes = (cp, spec.h + top + bottom, spec.w + left + right, 0, 0)
            meta.update(X_ALIGN=cp, W_ALIGN=_pow2_dividing(w[0], w[2], cap=vec), C_ALIGN=cp)
        else:
            x = _reachable((spec.n, spec.c, spec.h, spec.w), strides["x"])  # c: the group offset too
            w = _reachable(spec.weight_shape, strides["w"])
            sizes = (spec.c_per_group, spec.h, spec.w, spec.padding[0], spec.padding[2])
            # Offsets along the unit-stride channel axis vectorise when every other offset is aligned.
            meta.update(X_ALIGN=_pow2_dividing(x[0], x[2], x[3], spec.c_per_group * (spec.groups > 1), cap=vec)
                        if x[1] == 1 else 1,
                        W_ALIGN=_pow2_dividing(w[0], w[2], w[3], cap=vec) if w[1] == 1 else 1,
                        C_ALIGN=_pow2_dividing(spec.c_per_group, cap=256))
        c, h, w_size, pad_h, pad_w = sizes
        return ((spec.n, c, h, w_size, spec.k_per_group, spec.p, spec.q, *spec.stride, pad_h, pad_w,
                 *spec.dilation, spec.kh, *x, *w, *strides["y"], *strides["r"]), {**meta, **_epilogue(spec)})

    def loop_trips(self, spec, config, split=1):
        cp = fold_channels(spec)
        if cp:  # kernels/conv2d_fwd.py _fold_loop: `for kh in range(0, KH, ROWS)`
            return [_cdiv(spec.kh, max(1, config["BLOCK_K"] // fold_run(spec, cp)))]
        # _tap_loop: one loop over this program's share of the taps x channel blocks
        return [_cdiv(spec.taps * _cdiv(spec.c_per_group, config["BLOCK_K"]), split)]


# ------------------------------------------------------------------------------------ plans

def plan(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None, residual=None,
         device_name: str | None = None, sm_count: int | None = None) -> _plan.Plan:
    """The cached plan of a forward call; validates (and raises) on the first call of a kind.

    ``device_name`` and ``sm_count`` plan for another GPU model than the tensors' (explain, inspect).
    """
    try:
        tf32 = _backend.uses_tf32(input.dtype, input.device)
        key = (FORWARD, input.shape, input.stride(), input.dtype, input.device, weight.shape, weight.stride(),
               weight.dtype, weight.device, _plan.tensor_key(bias), _plan.tensor_key(residual),
               _plan.option_key(stride), _plan.option_key(padding), _plan.option_key(dilation),
               _plan.option_key(groups), activation, tf32, device_name, sm_count)
    except (AttributeError, TypeError):  # not tensors: validation raises the error that says so
        describe(input, weight, bias, stride, padding, dilation, groups, activation, residual)
        raise
    return _plan.cached(key, lambda: _build(input, weight, bias, stride, padding, dilation, groups, activation,
                                            residual, tf32, device_name, sm_count))


SPLIT_EPILOGUE_BLOCKS = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4}  # a memory-bound pass: one size serves


def _operands(kernel, spec, input, weight) -> tuple:
    """What the kernel reads, as metadata: (x strides, its span (shape, strides), w strides, weight
    copy?, input copy or None). A call copies, per call and never cached (mcconv._pack):

    - conv_direct's few-channel mode (:func:`fold_channels`): always the padded input copy and the
      (K, KH, RUN) weight packing;
    - gemm_1x1: an input that Gemm1x1.needs_row_copy says loads badly in place (NCHW with an odd
      H*W, or NCHW under tf32) into channels_last;
    - conv_direct otherwise: an input whose channels are not at unit stride (NCHW) into channels_last (read
      + write of the input, once; the kernel's A tiles are then 16-byte cp.async rows instead of
      2-byte gathers), and a weight whose input channels are not at unit stride into channels_last
      (K, kH, kW, C/g), unless MCCONV_PACK_WEIGHTS=0 (then read through its strides: gathers).
    """
    x_strides, w_strides = _plan.batched(input.stride()), tuple(weight.stride())
    x_span = (tuple(input.shape), tuple(input.stride()))
    if kernel.name == Gemm1x1.name:
        out = _plan.batched(_plan.contiguous_strides(spec.output_shape, spec.channels_last))
        if _pack.channels_strided(spec, x_strides) and Gemm1x1.needs_row_copy(spec, (spec.n, spec.p, spec.q),
                                                                                x_strides, out):
            x_strides = _plan.contiguous_strides((spec.n, spec.c, spec.h, spec.w), True)
            return x_strides, ((spec.n, spec.c, spec.h, spec.w), x_strides), w_strides, False, "channels_last"
        return x_strides, x_span, w_strides, False, None
    if kernel.name != ConvDirect.name:
        return x_strides, x_span, w_strides, False, None
    cp = fold_channels(spec)
    if cp:
        shape = _pack.fold_input_shape(spec, cp)  # (N, Hp, Wp, groups, CP)
        sxw = spec.groups * cp
        run = fold_run(spec, cp)
        return ((shape[1] * shape[2] * sxw, 1, shape[2] * sxw, sxw), ((math.prod(shape),), (1,)),
                (spec.kh * run, 1, run, cp), True, "fold")
    copy_input = None
    if _pack.channels_strided(spec, x_strides):
        copy_input = "channels_last"
        x_strides = _plan.contiguous_strides((spec.n, spec.c, spec.h, spec.w), True)
        x_span = ((spec.n, spec.c, spec.h, spec.w), x_strides)
    pack = _pack.enabled() and _pack.weight_needs_copy(spec, w_strides)
    if pack:
        w_strides = _plan.contiguous_strides(spec.weight_shape, True)
    return x_strides, x_span, w_strides, pack, copy_input


def _build(input, weight, bias, stride, padding, dilation, groups, activation, residual, tf32, device_name,
           sm_count):
    spec = describe(input, weight, bias, stride, padding, dilation, groups, activation, residual, tf32=tf32)
    kernel = dispatch(FORWARD, spec)
    out_shape = spec.output_shape
    out_strides = _plan.contiguous_strides(out_shape, spec.channels_last)
    x_strides, x_span, w_strides, pack, copy_input = _operands(kernel, spec, input, weight)
    r_strides = (0, 0, 0, 0) if residual is None else _plan.batched(residual.stride())  # placeholders without one
    # Every tensor of the call counts for INDEX_64 (README: "any tensor spans 2**31 elements"),
    # the originals of per-call copies too: a copy is compact, the rule is about the call.
    operands = [(input.shape, input.stride()), x_span, (weight.shape, weight.stride()), (weight.shape, w_strides),
                (out_shape, out_strides)]
    if residual is not None:
        operands.append((residual.shape, residual.stride()))
    pixels = spec.n * spec.p * spec.q

    def spans(split):  # with a split, the fp32 partial sums [split, N*P*Q, K] too
        return operands + ([((split * pixels * spec.k,), (1,))] if split > 1 else [])

    strides = {"x": x_strides, "w": w_strides, "y": _plan.batched(out_strides), "r": r_strides}
    extra = {"input_copy": copy_input} if copy_input else {}
    result = _plan.build(kernel, spec, input.device, _plan.target_of(input.device, device_name, sm_count), strides,
                         out_shape=out_shape, out_strides=out_strides, spans=spans,
                         channels_last=spec.channels_last, launch=math.prod(out_shape) > 0, pack_weight=pack,
                         extra=extra)
    if device_name is None and sm_count is None:
        # The custom op calls back with the normalised arguments: let that find this plan too.
        _plan.remember((FORWARD, input.shape, input.stride(), input.dtype, input.device, weight.shape,
                        weight.stride(), weight.dtype, weight.device, _plan.tensor_key(bias),
                        _plan.tensor_key(residual), spec.stride, spec.padding, spec.dilation, spec.groups, activation,
                        tf32, None, None), result)
    return result


def _prepare(plan, input, weight) -> tuple:
    """The per-call copies the plan asks for (see :func:`_operands`), from the tensors' current values."""
    copy = plan.extra.get("input_copy")
    if copy == "fold":
        spec = plan.spec
        cp = plan.meta["FOLD_CP"]
        return _pack.fold_input(input, spec, cp), _pack.fold_weight(weight, cp, plan.meta["FOLD_RUN"])
    if copy == "channels_last":
        input = _pack.channels_last(input)
    if plan.pack_weight:
        weight = _pack.channels_last(weight)
    return input, weight


_split_launches = weakref.WeakKeyDictionary()  # plan -> its split epilogue's launch, made on first use


def _split_launch(plan, residual) -> tuple:
    """(grid, scalars after SPLIT and T, constexprs) of a split plan's second launch, once per plan
    (the residual's strides are part of the plan's key)."""
    launch = _split_launches.get(plan)
    if launch is None:
        spec, blocks = plan.spec, SPLIT_EPILOGUE_BLOCKS
        m = spec.n * spec.p * spec.q
        y_strides = _plan.batched(plan.out_strides)
        r_strides = _plan.batched(residual.stride()) if spec.has_residual else y_strides
        meta = {k: plan.meta[k] for k in ("HAS_BIAS", "ACTIVATION", "STORE_PREACT", "HAS_RESIDUAL", "INDEX_64")}
        # conv_direct's plans carry the output's and residual's pixel runs; gemm_1x1's are worked out here
        vec = _vector(spec)
        meta["Y_RUN"] = plan.meta.get("Y_RUN", _pixel_run(spec, y_strides, vec))
        meta["R_RUN"] = plan.meta.get("R_RUN", _pixel_run(spec, r_strides, vec) if spec.has_residual else 1)
        # worked out here for both: gemm_1x1's Y_ALIGN is another fact (its own layout rules)
        out = (spec.n, spec.k, spec.p, spec.q)
        meta["Y_ALIGN"] = _row_align(spec, out, y_strides, vec)
        meta["R_ALIGN"] = _row_align(spec, out, r_strides, vec) if spec.has_residual else 1
        launch = ((_cdiv(m, blocks["BLOCK_M"]), _cdiv(spec.k, blocks["BLOCK_N"])), m * spec.k,
                  (spec.n, spec.k, spec.p, spec.q, *y_strides, *r_strides), {**meta, **blocks})
        _split_launches[plan] = launch
    return launch


def _run_split(plan, meta, x, w, bias, y, z, residual) -> None:
    """A split reduction: fp32 partial sums [split, N*P*Q, K] from the forward kernel, then
    conv2d_split_epilogue_kernel adds them in order and applies the epilogue (y, z, residual)."""
    from mcconv._kernels import conv2d_split_epilogue_kernel

    spec = plan.spec
    grid, total, scalars, split_meta = _split_launch(plan, residual)
    if meta["STORE_PREACT"]:
        split_meta = {**split_meta, "STORE_PREACT": True}
    partial = torch.empty((plan.split, spec.n * spec.p * spec.q, spec.k), dtype=torch.float32, device=x.device)
    with _backend.launch_guard(x.device):
        _backend.launch(plan.fn, plan.grid, (x, w, bias, partial, z, residual, *plan.args), meta)
        _backend.launch(conv2d_split_epilogue_kernel, grid, (partial, y, plan.split, total, z, bias, residual,
                                                             *scalars), split_meta)


def run(plan: _plan.Plan, input, weight, bias=None, residual=None, preact: bool = False):
    """Launch a forward plan: ``y``, or ``(y, z)`` with ``preact`` (z is y without an activation)."""
    y = torch.empty_strided(plan.out_shape, plan.out_strides, dtype=input.dtype, device=input.device)
    store_z = preact and plan.spec.activation is not None
    z = torch.empty_strided(plan.out_shape, plan.out_strides, dtype=input.dtype, device=input.device) if store_z else y
    if plan.launch:
        if input.device.type != "cuda":
            _backend.check_runnable(input.device)
        if plan.pack_weight or plan.extra:  # per-call copies (never cached)
            input, weight = _prepare(plan, input, weight)
        # The kernels index the bias with unit stride; a strided view (e.g. b[::2]) needs a copy.
        bias = weight if bias is None else bias.contiguous()
        meta = {**plan.meta, "STORE_PREACT": True} if store_z else plan.meta
        residual = weight if residual is None else residual  # any pointer without one
        if plan.split > 1:
            _run_split(plan, meta, input, weight, bias, y, z, residual if plan.spec.has_residual else y)
        elif _backend.CAPTURING[0]:
            _backend.launch(plan.fn, plan.grid, (input, weight, bias, y, z, residual, *plan.args), meta)
        else:  # the inference hot path: straight to Triton
            with _backend.launch_guard(input.device):
                plan.fn[plan.grid](input, weight, bias, y, z, residual, *plan.args, **meta)
    return (y, z) if preact else y
