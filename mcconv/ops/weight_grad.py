"""The weight gradient (wgrad): dL/dw from dL/dz and the forward's input.

Operands, in every weight-gradient kernel's pointer order: dL/dz, input x, dL/dw (or its fp32
partial sums). The reduction runs over every output pixel (N*P*Q, long) while the output is
small, so it is split over ``plan.split`` programs into fp32 partial sums [split, *weight_shape]
that ``split_sum_kernel`` adds in increasing order: the same inputs give bitwise the same
gradient on every run (no atomics; the split follows the shapes and the GPU model only).
The result is contiguous.

| kernel            | runs when                 | device code               |
|-------------------|---------------------------|---------------------------|
| `depthwise_wgrad` | groups == in-channels > 1 | kernels/depthwise_bwd.py  |
| `conv_wgrad`      | everything else           | kernels/conv2d_wgrad.py   |
"""
import functools
import math

import torch

from .. import _backend, _plan, tiles
from .._spec import ConvArgumentError, ConvSpec, check_like, check_tensor
from ..registry import WEIGHT_GRAD, Kernel, dispatch, register

SPLIT_SUM_BLOCK = 1024  # a memory-bound pass over about two waves of tiles: one block size serves
SPLIT_SUM_WIDE = 32768  # from this many elements, blocks of twice that: half the per-block overhead


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _geometry(spec) -> tuple:
    return (*spec.stride, spec.padding[0], spec.padding[2], *spec.dilation)


def _partial_stride(spec, split: int) -> int:
    """Elements between two programs' partial buffers; 0 when a single program writes dW itself."""
    return math.prod(spec.weight_shape) if split > 1 else 0


@register
class DepthwiseWgrad(Kernel):
    """kernels/depthwise_bwd.py's depthwise_wgrad_kernel: every tap of a tap group accumulates over
    the walk (the forward's, mcconv/ops/forward.py's Depthwise holds the shared rules); the lane
    blocks are split over SPLIT programs into fp32 partial sums."""

    name = "depthwise_wgrad"
    operation = WEIGHT_GRAD
    jit_name = "depthwise_wgrad_kernel"
    uses_dot = False
    about = "weight gradient of a depthwise convolution, all taps per program, pixels split over programs"
    MAX_COLS = 4  # its per-tap accumulators take the registers the forward's weights take, and more

    def applies(self, spec):
        return spec.is_depthwise

    def features(self, spec):
        return spec.n * spec.p * spec.q, spec.k, spec.taps

    # Lanes a block at most where a 16-channel block would be cut by the channel mask (C not a
    # multiple of 16): its per-tap accumulators and masked loads spilled at 64 lanes (mcconv
    # inspect, 3x3, 32 x C x 28 x 28, 64x16, triton 3.9 / 3.6: C = 100 fp16 492 / 680 B, bf16
    # 500 / 732 B, tf32 44 / 96 B; C = 104 fp16 104 / 140 B). 8-channel blocks would fit too, but
    # blocks stay >= 16 (tiles.fit). Whole blocks keep 64 lanes.
    CUT_LANES = 32

    def limits(self, spec):
        limits = {"BLOCK_M": self._walk(spec)["lanes"], "BLOCK_N": spec.k}
        if spec.k & -spec.k < 16:
            limits["BLOCK_M"] = min(limits["BLOCK_M"], self.CUT_LANES)
        return limits

    @staticmethod
    def _rules():
        from .forward import Depthwise

        return Depthwise

    def _walk(self, spec) -> dict:
        """Tap rows per program (all of them up to MAX_REGISTER_TAPS taps), COLS, band rows, unroll, lanes."""
        rules = self._rules()
        whole = spec.taps <= rules.MAX_REGISTER_TAPS
        tap_rows = spec.kh if whole else max(1, rules.MAX_REGISTER_TAPS // spec.kw)
        # fp32 rows take twice the registers: 4 columns spilled (384 bytes), and 2 at stride 2 (44)
        most = self.MAX_COLS if spec.dtype is None or spec.dtype.itemsize <= 2 else 2 if spec.stride[1] == 1 else 1
        cols = rules.cols(spec.q, spec.kw, spec.stride[1], spec.dilation[1], most)
        unroll = rules.unroll(spec.kh, spec.stride[0], spec.dilation[0],
                              spec.taps if whole else rules.MAX_REGISTER_TAPS + 1)
        # Long bands: the split over programs gives the parallelism, not the bands.
        band = rules.band_rows(spec.n, spec.p, spec.q, spec.k, cols, unroll, min_programs=1)
        return {"tap_rows": tap_rows, "cols": cols, "band": band, "unroll": unroll,
                "lanes": spec.n * _cdiv(spec.p, band) * _cdiv(spec.q, cols)}

    def _tiles(self, spec, config):
        return _cdiv(spec.k, config["BLOCK_N"]) * _cdiv(spec.kh, self._walk(spec)["tap_rows"])

    def grid(self, spec, config, split=1):
        return (_cdiv(spec.k, config["BLOCK_N"]), _cdiv(spec.kh, self._walk(spec)["tap_rows"]), split)

    ITERATIONS_PER_STEP = 4  # a split step: 4 loop iterations (split_count keeps >= 4 steps a program)

    def split(self, spec, config, sm_count):
        # The steps of the walk, in units of ITERATIONS_PER_STEP iterations of the row loop (lane
        # blocks x iterations per band; the kernel cuts the bands into chunks when the programs
        # outnumber the lane blocks): each program reduces its tiles once at the end, about 1000
        # instructions per warp for 3x3, so it keeps at least 16 iterations of work.
        walk = self._walk(spec)
        iterations = _cdiv(walk["lanes"], config["BLOCK_M"]) * _cdiv(walk["band"], walk["unroll"])
        steps = max(1, iterations // self.ITERATIONS_PER_STEP)
        return _plan.split_count(self._tiles(spec, config), steps, sm_count) if spec.n * spec.p * spec.q else 1

    def arguments(self, spec, strides, split=1):
        rules, walk = self._rules(), self._walk(spec)
        dy, x, dw = strides["dy"], strides["x"], strides["dw"]
        meta = {**rules.geometry(spec, walk["cols"]), "TAP_ROWS": walk["tap_rows"], "CHANNELS_LAST": x[1] == 1,
                "K_ALIGN": rules.pow2_dividing(spec.k, cap=1024),
                "DY_ALIGN": rules.pixel_align((spec.n, spec.k, spec.p, spec.q), dy),
                "X_ALIGN": rules.pixel_align((spec.n, spec.c, spec.h, spec.w), x)}
        return ((spec.n, spec.c, spec.h, spec.w, spec.k, spec.p, spec.q, spec.padding[0], spec.padding[2],
                 walk["band"], *dy, *x, _partial_stride(spec, split), dw[0], dw[2], dw[3]), meta)

    def loop_trips(self, spec, config, split=1):
        # kernels/depthwise_bwd.py: `for it in range(it_first, it_last)` (a chunk of a band) inside
        # `for unit in range(first_unit, last_unit)`, one program's contiguous share of the
        # (lane block, chunk) units (NCHW walks 16-lane sub-blocks: BLOCK_M // 16 times the units);
        # chunks of a band differ by one iteration at most
        walk = self._walk(spec)
        blocks = _cdiv(walk["lanes"], config["BLOCK_M"])
        iters = _cdiv(walk["band"], walk["unroll"])
        chunks = split // math.gcd(blocks, split)
        chunks = chunks if chunks <= iters else 1
        return [_cdiv(iters, chunks), _cdiv(blocks * chunks, split)]


@register
class ConvWgrad(Kernel):
    """kernels/conv2d_wgrad.py: per tap a GEMM over the output pixels that the tap reaches (a
    rectangle, walked without division or halo masks), the larger channel axis on the tile's
    rows, the pixels split over SPLIT programs into fp32 partial sums; or (FOLD) all taps at once,
    their (kh, kw, c) folded into the tile's columns (see :meth:`fold`)."""

    name = "conv_wgrad"
    operation = WEIGHT_GRAD
    jit_name = "conv2d_wgrad_kernel"
    about = "weight gradient as a GEMM [K/g, N*P*Q] x [N*P*Q, C/g] per tap, the pixels split over programs"
    # Bytes of one pipeline stage (both operands) that leave room for three stages of two CTAs
    # (8 warps) in an H100's 227 KiB of shared memory.
    STAGE_BYTES = 36 * 1024

    @staticmethod
    def _itemsize(spec) -> int:
        return spec.dtype.itemsize if spec.dtype is not None else 2

    def fold(self, spec) -> tuple | None:
        """(WIDTH, PERIOD, VEC) of the FOLD walk, or None for the per-tap one.

        FOLD reads, per output pixel, the KH runs of KW*C contiguous elements of a channels_last
        input row that its taps cover, as WIDTH-element windows starting VEC-aligned: the tile's
        columns are (tap row, window element), and one program serves every tap. It is for the
        layers whose per-tap tiles are too narrow for the tensor cores: few input channels (the
        stem, C=3: a tap is 3 columns; PERIOD classes of window phase keep 16-byte copies) or few
        channels both ways (64 x 64 x 3 x 3: one tap is a 64 x 64 tile). One group, no dilation;
        the input is read as a channels_last tensor (a copy in the call otherwise).
        """
        size = self._itemsize(spec)
        if spec.groups != 1 or spec.dilation != (1, 1) or spec.taps == 1:
            return None
        vec = math.gcd(16 // size, spec.w * spec.c)  # the rows of a channels_last input: W*C elements
        few_inputs = spec.c * size < 16
        small = spec.k <= 64 and spec.c <= 64 and spec.c % vec == 0 and spec.kw > 1
        if vec * size < 8 or not (few_inputs or small):
            return None
        run = spec.kw * spec.c
        width = run if spec.c % vec == 0 else -(-(run + vec - 1) // vec) * vec
        if spec.h < spec.kh or spec.w * spec.c < width or spec.n * spec.p * spec.q == 0:
            return None
        return width, vec // math.gcd(spec.stride[1] * spec.c, vec), vec

    def fold_classes(self, spec) -> list[int]:
        """FOLD: the pixel count of each class, in the kernel's order (kernels/conv2d_wgrad.py's _fold_class)."""
        width, period, vec = self.fold(spec)
        (sh, sw), pt, pl = spec.stride, spec.padding[0], spec.padding[2]
        pi_lo = min(_cdiv(pt, sh), spec.p)
        pi_hi = min(max((spec.h - spec.kh + pt) // sh + 1, pi_lo), spec.p)
        qi_lo = min(_cdiv(pl, sw), spec.q)
        qi_hi = min(max((spec.w * spec.c - width + vec - 1 + pl * spec.c) // (sw * spec.c) + 1, qi_lo), spec.q)
        sizes = []
        for r in range(pi_lo + 1 + spec.p - pi_hi):
            rows = pi_hi - pi_lo if r == pi_lo else 1
            for c in range(qi_lo + period + spec.q - qi_hi):
                ph = c - qi_lo
                cols = _cdiv(max(qi_hi - qi_lo - ph, 0), period) if 0 <= ph < period else 1
                sizes.append(spec.n * rows * cols)
        return sizes

    def fold_chunk(self, spec, split) -> int:
        """FOLD: the pixels of one program; a class's last share takes the rest, so the shares of
        C classes number up to split + C - 1 for this chunk: it is sized for about `split` in all."""
        classes = sum(1 for size in self.fold_classes(spec) if size)
        return _cdiv(spec.n * spec.p * spec.q, max(1, split - classes + 1))

    def slots(self, spec, split) -> int:
        """Programs along the grid's split axis, each writing its own partial buffer: ``split``, or
        (FOLD) the classes' shares of about N*P*Q / split pixels each."""
        if self.fold(spec) is None:
            return split
        chunk = self.fold_chunk(spec, split)
        return sum(_cdiv(size, chunk) for size in self.fold_classes(spec))

    @staticmethod
    def _swap(spec) -> bool:
        """Input channels on the tile's rows when there are more of them than output channels."""
        return spec.c_per_group > spec.k_per_group

    def _extents(self, spec) -> tuple:
        """(rows, cols) of the GEMM: (C/g, K/g) when swapped, (K, KH * WIDTH) with FOLD, else (K/g, C/g)."""
        k, c = spec.k_per_group, spec.c_per_group
        fold = self.fold(spec)
        if fold is not None:
            return k, spec.kh * fold[0]
        return (c, k) if self._swap(spec) else (k, c)

    def features(self, spec):
        return spec.k_per_group, spec.c_per_group * spec.taps, spec.n * spec.p * spec.q

    def limits(self, spec):
        rows, cols = self._extents(spec)
        default = tiles.kernel_spec(self.table_name)["default"]
        # At most 128 columns: a 64 x 256 FOLD tile (its columns all taps) issues less per MMA
        # (mcconv inspect, ResNet-50's 64-channel 3x3 and its stem, fp16: pressure 0.55 against
        # 0.71; 236-254 registers, no spills since FOLD_C) but makes fewer tiles, so the split
        # takes more shares to fill the GPU (88 against 53 for the 3x3), whose fp32 partial sums
        # add bytes to layers that are memory-bound already (--details: 38.5 against 33.1 MB,
        # memory time 11.5 against 9.9 us, issue time 7.6-9.7 us either way).
        cols = min(cols, 128)
        block_n = min(default["BLOCK_N"], max(tiles.MIN_BLOCK, tiles.bucket(cols)))
        # BLOCK_M >= 64, a warpgroup's wgmma rows (rows past the channels wrap around, unstored);
        # beyond 128 rows only beside a narrow BLOCK_N (<= 32), where one 256-row tile reads dL/dy
        # once instead of twice and the accumulator still takes 64 registers a thread.
        rows = max(64, rows if block_n <= 32 else min(rows, 128))
        block_m = min(default["BLOCK_M"], tiles.bucket(rows))
        size = self._itemsize(spec)
        budget = self.STAGE_BYTES // ((block_m + block_n) * size)
        step = 1 << max(budget, tiles.MIN_BLOCK).bit_length() - 1  # a power of two <= budget
        vec = 16 // size
        if block_m > 64 and block_n > 64 and min(math.gcd(vec, spec.k, spec.k_per_group),
                                                 math.gcd(vec, spec.c, spec.c_per_group)) < vec:
            # A 128x128 tile with an operand in copies under 16 bytes (channels not a multiple of
            # 16 bytes' elements), each with its own carried pixel offset: half the pixels per
            # step (C = 100 into 256, 3x3: 336-428 B of spills at 64 on triton 3.6 and 3.9, none
            # at 32; narrower tiles fit).
            step = max(tiles.MIN_BLOCK, step // 2)
        # BLOCK_K: the pixels per step, within the stage budget of the default tile.
        return {"BLOCK_M": rows, "BLOCK_N": cols, "BLOCK_K": min(spec.n * spec.p * spec.q, step)}

    def _tiles(self, spec, config):
        rows, cols = self._extents(spec)
        taps = 1 if self.fold(spec) is not None else spec.taps
        return _cdiv(rows, config["BLOCK_M"]) * _cdiv(cols, config["BLOCK_N"]) * taps

    def grid(self, spec, config, split=1):
        return (self._tiles(spec, config), spec.groups, self.slots(spec, split))

    # The split counts pixels in units of this many (split_count keeps four units a program or
    # more: 256 pixels, four of the former 64-pixel steps, whatever BLOCK_K now is).
    SPLIT_UNIT = 64

    def split(self, spec, config, sm_count):
        pixels = spec.n * spec.p * spec.q
        tiles_ = self._tiles(spec, config) * spec.groups
        return _plan.split_count(tiles_, _cdiv(pixels, self.SPLIT_UNIT), sm_count) if pixels else 1

    @staticmethod
    def _flat(sizes, strides) -> bool:
        """Whether the pixels (n, p, q) of a (N, C, P, Q) operand are one arithmetic progression."""
        n, _, p, q = sizes
        sn, _, sp, sq = strides
        return (p == 1 or sp == q * sq) and (n == 1 or sn == p * q * sq)

    @staticmethod
    def _vec(channels, strides, itemsize) -> int:
        """Elements per 16-byte vector along the channels that every pixel row start keeps aligned
        (1: the channels are not contiguous)."""
        sn, sc, sp, sq = strides
        return math.gcd(16 // itemsize, channels, sn, sp, sq) if sc == 1 else 1

    def arguments(self, spec, strides, split=1):
        dy, x = strides["dy"], strides["x"]
        size = self._itemsize(spec)
        pad0 = spec.padding == (0, 0, 0, 0)
        fold = self.fold(spec)
        meta = {"IS_1X1": spec.is_1x1_gemm, "SWAP": self._swap(spec) and fold is None,
                "FOLD_WIDTH": fold[0] if fold else 0, "FOLD_PERIOD": fold[1] if fold else 0,
                "FOLD_C": spec.c_per_group if fold else 0,
                # dL/dy walks every pixel when the kernel is 1x1 without padding (any stride)
                "FLAT_DY": spec.taps == 1 and pad0 and self._flat((spec.n, spec.k, spec.p, spec.q), dy),
                "FLAT_X": spec.is_1x1_gemm and self._flat((spec.n, spec.c, spec.p, spec.q), x),
                "VEC_DY": self._vec(spec.k_per_group, dy, size),
                "VEC_X": fold[2] if fold else self._vec(spec.c_per_group, x, size)}
        slots = self.slots(spec, split)
        return ((spec.n, spec.c_per_group, spec.h, spec.w, spec.k_per_group, spec.p, spec.q, spec.kh, spec.kw,
                 *_geometry(spec), *dy, *x, _partial_stride(spec, slots), *strides["dw"],
                 self.fold_chunk(spec, split) if fold else 0), meta)

    def loop_trips(self, spec, config, split=1):
        # kernels/conv2d_wgrad.py: `for r0 in range(start, full_end, BLOCK_K)` over one program's
        # share of a tap's pixels (the whole image for a central tap; the partial step is peeled)
        return [_cdiv(_cdiv(spec.n * spec.p * spec.q, split), config["BLOCK_K"])]


# ------------------------------------------------------------------------------------ plans

def plan(grad_z, input, weight_shape, stride=1, padding=0, dilation=1, groups=1,
         device_name: str | None = None, sm_count: int | None = None) -> _plan.Plan:
    """The cached plan of a weight gradient; validates on the first call of a kind."""
    try:
        tf32 = _backend.uses_tf32(input.dtype, input.device)
        key = (WEIGHT_GRAD, _plan.tensor_key(grad_z), _plan.tensor_key(input), tuple(weight_shape),
               _plan.option_key(stride), _plan.option_key(padding), _plan.option_key(dilation),
               _plan.option_key(groups), tf32, device_name, sm_count)
    except (AttributeError, TypeError):
        _check(grad_z, input, weight_shape)
        raise
    return _plan.cached(key, lambda: _build(grad_z, input, weight_shape, stride, padding, dilation, groups, tf32,
                                            device_name, sm_count))


def _check(grad_z, input, weight_shape) -> tuple:
    check_tensor("input", input, (3, 4))
    check_tensor("grad_z", grad_z, (3, 4))
    check_like("grad_z", grad_z, "input", input)
    if grad_z.dim() != input.dim():
        raise ConvArgumentError(f"grad_z: expected a {input.dim()}-D tensor like input, got {grad_z.dim()}-D")
    try:
        weight_shape = tuple(int(s) for s in weight_shape)
    except (TypeError, ValueError):
        raise ConvArgumentError(f"weight_shape: expected a sequence of ints, got {weight_shape!r}") from None
    if len(weight_shape) != 4:
        raise ConvArgumentError(f"weight_shape: expected 4 sizes, got {weight_shape}")
    return weight_shape


def _build(grad_z, input, weight_shape, stride, padding, dilation, groups, tf32, device_name, sm_count):
    weight_shape = _check(grad_z, input, weight_shape)
    spec = ConvSpec.from_shapes(input.shape, weight_shape, stride, padding, dilation, groups, dtype=input.dtype,
                                tf32=tf32)
    if tuple(grad_z.shape) != spec.output_shape:
        raise ConvArgumentError(f"grad_z: expected the convolution's output shape {spec.output_shape}, "
                                f"got {tuple(grad_z.shape)}")
    kernel = dispatch(WEIGHT_GRAD, spec)
    out_strides = _plan.contiguous_strides(weight_shape)
    numel = math.prod(weight_shape)

    x_strides = _plan.batched(input.stride())
    fold = kernel.fold(spec) if isinstance(kernel, ConvWgrad) else None
    extra = {}
    if fold is not None and not _fold_readable(spec, x_strides, fold[2]):
        # FOLD reads the input as channels_last rows: the call copies it (one read and one write
        # of the input, against the per-tap walk's 3-wide tiles on a stem's 3 channels)
        x_strides = _plan.contiguous_strides((spec.n, spec.c, spec.h, spec.w), channels_last=True)
        extra["channels_last_input"] = True
    x_operand = ((spec.n, spec.c, spec.h, spec.w), x_strides) if extra else (input.shape, input.stride())
    operands = [(grad_z.shape, grad_z.stride()), x_operand]

    def spans(split):
        slots = kernel.slots(spec, split) if isinstance(kernel, ConvWgrad) else split
        return [*operands, ((slots * numel,), (1,))]  # metadata: no tensor is kept

    strides = {"dy": _plan.batched(grad_z.stride()), "x": x_strides, "dw": out_strides}
    return _plan.build(kernel, spec, input.device, _plan.target_of(input.device, device_name, sm_count), strides,
                       out_shape=weight_shape, out_strides=out_strides, spans=spans, extra=extra,
                       launch=numel > 0 and spec.n * spec.p * spec.q > 0)


def _fold_readable(spec, strides, vec) -> bool:
    """Whether FOLD can read the input through these (batched) strides: every input row one
    contiguous run of W*C elements, rows and images starting VEC-aligned."""
    sn, sc, sh, sw = strides
    return (sc == 1 and (spec.w == 1 or sw == spec.c) and sh % vec == 0 and sn % vec == 0)


def split_sum(partial, out, index_64: bool):
    """out = partial.sum(0) over its leading (split) axis in increasing order, cast to out's dtype."""
    from mcconv._kernels import split_sum_kernel

    total = out.numel()
    block = SPLIT_SUM_BLOCK * (2 if total >= SPLIT_SUM_WIDE else 1)
    _backend.launch(split_sum_kernel, (_cdiv(total, block),), (partial, out, partial.shape[0], total),
                    {"BLOCK": block, "INDEX_64": index_64, "num_warps": 4})


def run(plan: _plan.Plan, grad_z, input):
    """Launch a weight-gradient plan; returns dL/dw (contiguous, the input's dtype)."""
    out = torch.empty(plan.out_shape, dtype=input.dtype, device=input.device)
    if not plan.launch:
        return out.zero_()  # an empty reduction sums to zero
    if input.device.type != "cuda":
        _backend.check_runnable(input.device)
    slots = plan.kernel.slots(plan.spec, plan.split) if isinstance(plan.kernel, ConvWgrad) else plan.split
    # FOLD programs write only the taps their class reaches: their buffers start at zero
    fold = plan.meta.get("FOLD_WIDTH", 0) > 0
    if plan.extra.get("channels_last_input"):
        input = (input.unsqueeze(0) if input.dim() == 3 else input).contiguous(memory_format=torch.channels_last)
    if slots == 1:
        target = out.zero_() if fold else out
    else:
        target = (torch.zeros if fold else torch.empty)((slots, *out.shape), dtype=torch.float32, device=out.device)
    with _backend.launch_guard(input.device):
        _backend.launch(plan.fn, plan.grid, (grad_z, input, target, *plan.args), plan.meta)
        if slots > 1:
            split_sum(target, out, plan.index_64)
        if isinstance(plan.kernel, ConvWgrad) and any(plan.spec.padding):
            _padding_specials(plan.spec, grad_z, out)
    return out


@functools.lru_cache(maxsize=64)
def _padding_taps(size: int, out_size: int, taps: int, stride: int, before: int, dilation: int,
                  device: torch.device) -> torch.Tensor:
    """(out_size, taps) float along one axis: 1 where output index p's tap t reads the zero padding."""
    i = torch.arange(out_size).view(out_size, 1) * stride - before + torch.arange(taps).view(1, taps) * dilation
    return ((i < 0) | (i >= size)).to(device=device, dtype=torch.float32)


def _padding_specials(spec, grad_z, out) -> None:
    """Make dL/dw NaN where torch's is NaN through the padding: torch sums dL/dz times every tap's
    input, the zero padding included, so a NaN or infinite dL/dz pixel gives NaN (0 * inf, 0 *
    nan) in each tap that reads padding for it, while conv_wgrad walks only the pixels whose tap
    lands in the image. Tap (kh, kw) reads padding for pixel (p, q) when kh does for row p or kw
    for column q, so per-axis masks suffice. About ten small device ops, no host sync; padded
    convolutions only (without padding no tap reads outside the image). A follow-up could fold
    this into the kernel's own pass over dL/dz."""
    gz = grad_z if grad_z.dim() == 4 else grad_z.unsqueeze(0)
    (sh, sw), (pt, _, pl, _), (dh, dw) = spec.stride, spec.padding, spec.dilation
    rows = _padding_taps(spec.h, spec.p, spec.kh, sh, pt, dh, gz.device)
    cols = _padding_taps(spec.w, spec.q, spec.kw, sw, pl, dw, gz.device)
    bad = torch.isfinite(gz).logical_not_()  # (N, K, P, Q)
    hits = ((bad.any(3).any(0).to(torch.float32) @ rows)[:, :, None]  # (K, KH): rows' taps in the padding
            + (bad.any(2).any(0).to(torch.float32) @ cols)[:, None, :])  # (K, KW): columns'
    out.masked_fill_((hits > 0).view(spec.k, 1, spec.kh, spec.kw), float("nan"))
