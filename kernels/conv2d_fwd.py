"""Direct convolution as an implicit GEMM (forward).

The convolution is a matrix product that is never materialised:

    Y[m, k] = sum_r X_col[m, r] * W_col[r, k]
    m = (n, p, q) output pixel,  k = output channel,  r = (kh, kw, c) reduction index

conv2d_fwd_kernel: each program owns a BLOCK_M x BLOCK_N tile of Y (pixels x output channels)
of one group. Per-row bases (image, input row and column of tap (0, 0)) are computed once per
tile; then ONE software-pipelined loop walks the whole reduction, so the pipeline fills once
per tile, not once per tap. Two modes, chosen by the host per call shape:

The tap loop (FOLD_CP = 0): iteration = (tap, channel block of BLOCK_K).
- Scalar counters (channel block, kw, tap bit) advance with `tl.where`, and scalar address
  offsets of the current (tap, channel block) advance by precomputed steps (next channel
  block, next tap of a kernel row, next kernel row): no vector division, modulo or multiply
  runs in the loop, and each loaded vector costs one address add.
- Row validity (the zero padding, and rows past N*P*Q) is a per-row bit set computed once,
  bit kh * KW + kw set when tap (kh, kw) lands inside the image (TAP_BITS = 32 or 64); the loop
  tests one bit per row against the scalar `1 << tap`. With more than 64 taps (TAP_BITS = 0)
  it compares the row's input coordinates instead.
- Both operands are K-major, as wgmma wants them (tf32's wgmma requires it): A = X[rows, c]
  with the input's channels at unit stride (channels_last; the host converts other inputs to
  channels_last once per call), B = W[c, k] with the weight's input channels at unit stride
  (a channels_last weight (K, kH, kW, C/g), read in place; the host copies other weights to
  it per call, unless MCCONV_PACK_WEIGHTS=0: then gathers through the strides).
- Alignment facts the compiler cannot see from the arguments (a 24-channel pixel row is
  16-byte aligned in fp16, but 24 is not a multiple of 16) come from the host: X_ALIGN and
  W_ALIGN (elements dividing every offset of the operand) and C_ALIGN (a power of two dividing
  C/g: a channel mask that never cuts a block is compiled out).

kernels/conv3d_fwd.py runs this tap loop with a depth axis (DEPTH): one more level of taps,
one more step of the scalar offsets, the depth padding in the same bit set.

The fold (FOLD_CP > 0, few input channels per group, e.g. the RGB stem): taps and channels
share one reduction axis. The host makes, per call, a zero-padded channels_last copy of the
input (the convolution's padding applied, CP channels per group, CP a power of two so that a
pixel is one aligned cp.async of >= 8 bytes) and packs the weight as (K, KH, RUN): for one
kernel row kh, the (kw, c) pairs are run index j = kw * CP + c, zero-filled up to RUN (KW * CP
rounded up to a power of two). Each step reduces ROWS = BLOCK_K // RUN kernel rows at once;
no padding masks (the copy is padded), only the run's tail and the last step's rows past KH.

SPLIT > 1 (layers with few tiles for the GPU's SMs; tap loop only) splits the flattened
reduction over grid axis 2: each program sums a contiguous share of the iterations and stores
its fp32 partial tile to `y_ptr`, read as a [SPLIT, N*P*Q, K] buffer;
conv2d_split_epilogue_kernel adds the shares in increasing order (deterministic, no atomics)
and applies the epilogue.

The epilogue is common.py's epilogue_store: bias, HAS_RESIDUAL (a residual tensor of the
output's shape read through its own strides, added in fp32 before the activation: y =
act(conv + bias + r)), ACTIVATION, STORE_PREACT, cast, store through the output's strides.
Y_RUN / R_RUN > 1 tell the compiler that an NCHW output (residual) has aligned runs of
contiguous pixels, so it stores (loads) along the pixels; Y_ALIGN / R_ALIGN that a channels_last
one's rows start at multiples of that many elements, so it stores (loads) that many channels at
a time (K = 100: 8-byte stores; without the hint 2-byte ones, and 5.6-7.4 KB of spills).
"""
import triton
import triton.language as tl

from .common import dot_acc, epilogue_store, grouped_tile_ids, pixel_count, split_pixels, tile_offsets


@triton.jit
def _aligned(value, ALIGN: tl.constexpr):
    """`value` (a multiple of ALIGN, which the host guarantees) in a form whose divisibility the
    compiler can see: the offsets built from it then vectorise."""
    return (value // ALIGN) * ALIGN


@triton.jit
def _int64(value):
    """A scalar as int64, also when the compiler made it a constant (an argument equal to 1)."""
    return tl.full((), 0, tl.int64) + value


@triton.jit
def _tile(M, K_PER_GROUP, INDEX_64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
          GROUP_M: tl.constexpr):
    """This program's tile of the implicit GEMM (grid axis 0: tiles in GROUP_M order, axis 1: the
    group): (offs_m, mask_m) output pixels, (offs_n, mask_n) output channels of the group, group."""
    pid_m, pid_n = grouped_tile_ids(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(K_PER_GROUP, BLOCK_N), GROUP_M)
    group = tl.program_id(1)
    offs_m, mask_m = tile_offsets(pid_m, M, BLOCK_M, INDEX_64)
    offs_n, mask_n = tile_offsets(pid_n, K_PER_GROUP, BLOCK_N, INDEX_64)
    if INDEX_64:
        group = group.to(tl.int64)
    return offs_m, mask_m, offs_n, mask_n, group


@triton.jit
def _tap_bits(id0, ih0, iw0, D, H, W, dil_d, dil_h, dil_w, mask_m,
              KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, DEPTH: tl.constexpr, TAP_BITS: tl.constexpr):
    """Per row: bit (kd * KH + kh) * KW + kw set when tap (kd, kh, kw) reads inside the input (and
    the row exists). Without DEPTH (2-D) id0, D and dil_d are unused and KD is 1."""
    if TAP_BITS == 64:
        bits = tl.zeros(ih0.shape, dtype=tl.int64)
    else:
        bits = tl.zeros(ih0.shape, dtype=tl.int32)
    for kd in tl.static_range(KD):
        if DEPTH:
            idd = id0 + kd * dil_d
            d_ok = mask_m & (idd >= 0) & (idd < D)
        else:
            d_ok = mask_m
        for kh in tl.static_range(KH):
            ih = ih0 + kh * dil_h
            h_ok = d_ok & (ih >= 0) & (ih < H)
            for kw in tl.static_range(KW):
                iw = iw0 + kw * dil_w
                ok = h_ok & (iw >= 0) & (iw < W)
                bits = bits | tl.where(ok, tl.full(ih0.shape, 1, bits.dtype) << ((kd * KH + kh) * KW + kw), 0)
    return bits


@triton.jit
def _tap_loop(acc, x_ptr, w_ptr, x_rows, w_cols, id0, ih0, iw0, mask_m, start, end, C, D, H, W, dil_d, dil_h, dil_w,
              sxd, sxh, sxw, stride_xc, swd, swh, sww, stride_wc,
              KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, DEPTH: tl.constexpr, TAP_BITS: tl.constexpr,
              C_ALIGN: tl.constexpr, INDEX_64: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc += the reduction's iterations [start, end), iteration = tap * c_blocks + channel block,
    tap = (kd * KH + kh) * KW + kw. DEPTH (kernels/conv3d_fwd.py) adds the depth axis: kernel
    slabs kd of KH rows, the input's depth id0 + kd * dil_d checked like its rows; the 2-D
    kernel passes KD = 1, DEPTH = False and zeros for the depth scalars (compiled out)."""
    offs_c = tl.arange(0, BLOCK_K)
    if INDEX_64:  # the scalar offsets below too: a tap's offset may pass 2**31 on its own
        offs_c = offs_c.to(tl.int64)
        sxh = _int64(sxh)
        sxw = _int64(sxw)
        swh = _int64(swh)
        sww = _int64(sww)
        if DEPTH:
            sxd = _int64(sxd)
            swd = _int64(swd)
    a_ptrs = x_ptr + (x_rows[:, None] + offs_c[None, :] * stride_xc)
    b_ptrs = w_ptr + (w_cols[None, :] + offs_c[:, None] * stride_wc)
    if TAP_BITS != 0:
        bits = _tap_bits(id0, ih0, iw0, D, H, W, dil_d, dil_h, dil_w, mask_m, KD, KH, KW, DEPTH, TAP_BITS)
    c_blocks = tl.cdiv(C, BLOCK_K)
    tap = start // c_blocks
    kd = tap // (KH * KW)
    kh = (tap - kd * (KH * KW)) // KW
    kw = tap - (kd * KH + kh) * KW
    cb = start - tap * c_blocks  # channel block within the tap
    # Scalar address offsets of the current (tap, channel block), and their steps: to the next
    # channel block, to the next tap of a kernel row, from a row's last tap to the next row's
    # first, and (DEPTH) from a slab's last tap to the next slab's first.
    x_off = kh * dil_h * sxh + kw * dil_w * sxw + cb * BLOCK_K * stride_xc
    w_off = kh * swh + kw * sww + cb * BLOCK_K * stride_wc
    if DEPTH:
        x_off += kd * dil_d * sxd
        w_off += kd * swd
    x_back = (c_blocks - 1) * BLOCK_K * stride_xc
    w_back = (c_blocks - 1) * BLOCK_K * stride_wc
    x_next_w = dil_w * sxw - x_back
    x_next_h = dil_h * sxh - (KW - 1) * dil_w * sxw - x_back
    w_next_w = sww - w_back
    w_next_h = swh - (KW - 1) * sww - w_back
    if DEPTH:
        x_next_d = dil_d * sxd - (KH - 1) * dil_h * sxh - (KW - 1) * dil_w * sxw - x_back
        w_next_d = swd - (KH - 1) * swh - (KW - 1) * sww - w_back
    if TAP_BITS == 64:
        tap_bit = tl.full((), 1, tl.int64) << tap
    else:
        tap_bit = tl.full((), 1, tl.int32) << tap  # unused (and any value) without bit sets
    for _ in range(start, end):
        if TAP_BITS != 0:
            row_ok = (bits & tap_bit) != 0
        else:  # more taps than bits: compare the row's input coordinates
            ih = ih0 + kh * dil_h
            iw = iw0 + kw * dil_w
            row_ok = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            if DEPTH:
                idd = id0 + kd * dil_d
                row_ok = row_ok & (idd >= 0) & (idd < D)
        if C_ALIGN % BLOCK_K == 0:  # every channel block is whole: no channel mask
            a = tl.load(a_ptrs + x_off, mask=row_ok[:, None], other=0.0)
            b = tl.load(b_ptrs + w_off)
        else:
            c_ok = offs_c < C - cb * BLOCK_K
            a = tl.load(a_ptrs + x_off, mask=row_ok[:, None] & c_ok[None, :], other=0.0)
            b = tl.load(b_ptrs + w_off, mask=c_ok[:, None], other=0.0)
        acc = dot_acc(a, b, acc, DOT_PRECISION)
        # Advance (cb, kw, kh, kd) and the offsets: scalar selects only.
        cb += 1
        next_tap = cb == c_blocks
        row_end = kw == KW - 1
        cb = tl.where(next_tap, 0, cb)
        if TAP_BITS != 0:
            tap_bit = tl.where(next_tap, tap_bit << 1, tap_bit)
        kw = tl.where(next_tap, tl.where(row_end, 0, kw + 1), kw)
        if DEPTH:
            slab_end = row_end & (kh == KH - 1)
            if TAP_BITS == 0:
                kd = tl.where(next_tap & slab_end, kd + 1, kd)
            kh = tl.where(next_tap & row_end, tl.where(slab_end, 0, kh + 1), kh)
            x_off += tl.where(next_tap, tl.where(row_end, tl.where(slab_end, x_next_d, x_next_h), x_next_w),
                              BLOCK_K * stride_xc)
            w_off += tl.where(next_tap, tl.where(row_end, tl.where(slab_end, w_next_d, w_next_h), w_next_w),
                              BLOCK_K * stride_wc)
        else:
            if TAP_BITS == 0:
                kh = tl.where(next_tap & row_end, kh + 1, kh)
            x_off += tl.where(next_tap, tl.where(row_end, x_next_h, x_next_w), BLOCK_K * stride_xc)
            w_off += tl.where(next_tap, tl.where(row_end, w_next_h, w_next_w), BLOCK_K * stride_wc)
    return acc


@triton.jit
def _fold_loop(acc, x_ptr, w_ptr, x_rows, w_cols, kh_rows, dil_h, dil_w, sxh, sxw, swh,
               KH: tl.constexpr, KW: tl.constexpr, FOLD_CP: tl.constexpr, FOLD_RUN: tl.constexpr,
               INDEX_64: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc += the whole reduction of a padded few-channel input: ROWS kernel rows per step, each
    a run j = kw * CP + c of the (kw, c) pairs (zero channels up to CP), masked past KW * CP."""
    ROWS: tl.constexpr = BLOCK_K // FOLD_RUN if BLOCK_K > FOLD_RUN else 1
    offs_j = tl.arange(0, ROWS * FOLD_RUN)
    if INDEX_64:
        offs_j = offs_j.to(tl.int64)
    # Column j: kernel row j // RUN of the step, tap kw, channel c (constexpr powers of two: shifts,
    # once per tile), written so that the compiler sees runs of CP contiguous, aligned elements.
    row = offs_j // FOLD_RUN
    kw = (offs_j // FOLD_CP) % (FOLD_RUN // FOLD_CP)
    x_cols = row * dil_h * sxh + kw * dil_w * sxw + offs_j % FOLD_CP
    a_ptrs = x_ptr + (x_rows[:, None] + x_cols[None, :])
    b_ptrs = w_ptr + (w_cols[None, :] + (offs_j + row * (swh - FOLD_RUN))[:, None])
    col_ok = kw < KW
    x_step = ROWS * dil_h * sxh
    w_step = ROWS * swh
    x_kh = 0  # scalar offsets of the step's first kernel row
    w_kh = 0
    if INDEX_64:
        x_kh = tl.full((), 0, tl.int64)
        w_kh = tl.full((), 0, tl.int64)
    for kh in range(0, kh_rows, ROWS):  # kh_rows == KH, a runtime value: the loop stays a (pipelined) loop
        if KH % ROWS == 0:
            a = tl.load(a_ptrs + x_kh, mask=col_ok[None, :], other=0.0)
            b = tl.load(b_ptrs + w_kh)
        else:  # the last step's rows past KH are masked off (never read)
            row_ok = row < KH - kh
            a = tl.load(a_ptrs + x_kh, mask=(col_ok & row_ok)[None, :], other=0.0)
            b = tl.load(b_ptrs + w_kh, mask=row_ok[:, None], other=0.0)
        acc = dot_acc(a, b, acc, DOT_PRECISION)
        x_kh += x_step
        w_kh += w_step
    return acc


@triton.jit
def conv2d_fwd_kernel(
    # pointers (r_ptr: the residual, any pointer unless HAS_RESIDUAL; y_ptr: the fp32 partial
    # buffer [SPLIT, N*P*Q, K] when SPLIT > 1)
    x_ptr, w_ptr, bias_ptr, y_ptr, z_ptr, r_ptr,
    # sizes (channels are per group)
    N, C_PER_GROUP, H, W, K_PER_GROUP, P, Q,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh_rows,
    # strides, in elements
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wk, stride_wc, stride_wh, stride_ww,
    stride_yn, stride_yk, stride_yh, stride_yw,
    stride_rn, stride_rk, stride_rh, stride_rw,
    # bucketed shape, read only by triton.autotune's key (MCCONV_AUTOTUNE=1)
    bucket_m, bucket_n, bucket_r,
    # meta-parameters (KH, KW: the kernel's size, also passed as kh_rows = KH for the fold's loop bound)
    KH: tl.constexpr, KW: tl.constexpr, TAP_BITS: tl.constexpr, FOLD_CP: tl.constexpr, FOLD_RUN: tl.constexpr,
    X_ALIGN: tl.constexpr, W_ALIGN: tl.constexpr, C_ALIGN: tl.constexpr, Y_RUN: tl.constexpr, R_RUN: tl.constexpr,
    Y_ALIGN: tl.constexpr, R_ALIGN: tl.constexpr, SPLIT: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, STORE_PREACT: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    INDEX_64: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """Grid: (cdiv(N*P*Q, BLOCK_M) * cdiv(K_PER_GROUP, BLOCK_N), groups, SPLIT).

    FOLD_CP > 0: the few-channel mode (see the module docstring): x is the padded copy
    (C_PER_GROUP = FOLD_CP channels per group, no padding left), w the (K, KH, FOLD_RUN) packing.
    """
    M = pixel_count(N, P, Q, INDEX_64)
    offs_m, mask_m, offs_n, mask_n, group = _tile(M, K_PER_GROUP, INDEX_64, BLOCK_M, BLOCK_N, GROUP_M)
    C = _aligned(C_PER_GROUP, C_ALIGN)
    sxn = _aligned(stride_xn, X_ALIGN)
    sxh = _aligned(stride_xh, X_ALIGN)
    sxw = _aligned(stride_xw, X_ALIGN)
    swk = _aligned(stride_wk, W_ALIGN)
    swh = _aligned(stride_wh, W_ALIGN)
    sww = _aligned(stride_ww, W_ALIGN)

    # Per-row bases, once: this group's channels, the pixel's image and its tap (0, 0) corner.
    # Rows past the last pixel address the last pixel (in bounds; masked or never stored).
    n, p, q = split_pixels(tl.where(mask_m, offs_m, M - 1), P, Q)
    ih0 = p * stride_h - pad_h
    iw0 = q * stride_w - pad_w
    x_rows = group * C * stride_xc + n * sxn + ih0 * sxh + iw0 * sxw
    # Columns past K/g read column 0 (always in bounds) instead of a masked load; never stored.
    w_cols = (group * K_PER_GROUP + tl.where(mask_n, offs_n, 0)) * swk

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FOLD_CP != 0:
        acc = _fold_loop(acc, x_ptr, w_ptr, x_rows, w_cols, kh_rows, dil_h, dil_w, sxh, sxw, swh,
                         KH, KW, FOLD_CP, FOLD_RUN, INDEX_64, DOT_PRECISION, BLOCK_K)
    else:
        # The flattened reduction, iteration = tap * c_blocks + channel block: this program's share.
        total = KH * KW * tl.cdiv(C, BLOCK_K)
        if SPLIT > 1:
            chunk = tl.cdiv(total, SPLIT)
            start = tl.program_id(2) * chunk
            end = tl.minimum(start + chunk, total)
        else:
            start = 0
            end = total
        acc = _tap_loop(acc, x_ptr, w_ptr, x_rows, w_cols, 0, ih0, iw0, mask_m, start, end, C, 1, H, W,
                        0, dil_h, dil_w, 0, sxh, sxw, stride_xc, 0, swh, sww, stride_wc,
                        1, KH, KW, False, TAP_BITS, C_ALIGN, INDEX_64, DOT_PRECISION, BLOCK_K)

    if SPLIT > 1:  # the fp32 partial tile; conv2d_split_epilogue_kernel finishes
        out_col = group * K_PER_GROUP + offs_n
        part = (tl.program_id(2) * M + offs_m)[:, None] * (K_PER_GROUP * tl.num_programs(1)) + out_col[None, :]
        tl.store(y_ptr + part, acc, mask=mask_m[:, None] & mask_n[None, :])
    else:
        _store_output(acc, offs_m, M, offs_n, group, y_ptr, z_ptr, bias_ptr, r_ptr, P, Q, K_PER_GROUP,
                      stride_yn, stride_yk, stride_yh, stride_yw, stride_rn, stride_rk, stride_rh, stride_rw,
                      HAS_BIAS, ACTIVATION, STORE_PREACT, HAS_RESIDUAL, Y_RUN, R_RUN, Y_ALIGN, R_ALIGN)


@triton.jit
def _store_output(acc, offs_m, M, offs_n, group, y_ptr, z_ptr, bias_ptr, r_ptr, P, Q, K_PER_GROUP,
                  stride_yn, stride_yk, stride_yh, stride_yw, stride_rn, stride_rk, stride_rh, stride_rw,
                  HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, STORE_PREACT: tl.constexpr,
                  HAS_RESIDUAL: tl.constexpr, Y_RUN: tl.constexpr, R_RUN: tl.constexpr,
                  Y_ALIGN: tl.constexpr, R_ALIGN: tl.constexpr):
    """The forward epilogue (common.py's epilogue_store) on a tile of output pixels `offs_m` x
    channels `offs_n` of `group`.

    Y_RUN / R_RUN > 1 (an NCHW output / residual): runs of that many consecutive pixels are
    contiguous and aligned (the host checked the strides and sizes), so the compiler stores (and
    loads) along the pixels, Y_RUN at a time, instead of one element per channel and thread.
    Y_ALIGN / R_ALIGN (channels_last): each row, the group's first channel included, starts at a
    multiple of that many elements, and K/g is one, so that many channels store (load) at a time."""
    n, p, q = split_pixels(offs_m, P, Q)
    row_y = n * stride_yn + p * stride_yh + q * stride_yw + group * K_PER_GROUP * stride_yk
    if Y_RUN > 1:
        row_y = tl.max_contiguous(tl.multiple_of(row_y, Y_RUN), Y_RUN)
    else:
        row_y = tl.multiple_of(row_y, Y_ALIGN)
    mask_m = offs_m < _aligned(M, Y_RUN)  # M is a multiple of Y_RUN: masks whole runs
    mask_n = offs_n < _aligned(K_PER_GROUP, Y_ALIGN)  # K/g a multiple of Y_ALIGN: whole vectors
    y_offsets = row_y[:, None] + offs_n[None, :] * stride_yk
    if HAS_RESIDUAL:
        row_r = n * stride_rn + p * stride_rh + q * stride_rw + group * K_PER_GROUP * stride_rk
        if R_RUN > 1:
            row_r = tl.max_contiguous(tl.multiple_of(row_r, R_RUN), R_RUN)
        else:
            row_r = tl.multiple_of(row_r, R_ALIGN)
        r_offsets = row_r[:, None] + offs_n[None, :] * stride_rk
    else:
        r_offsets = y_offsets  # unused: the epilogue's residual branch is compiled out
    epilogue_store(acc, y_ptr, z_ptr, y_offsets, mask_m[:, None] & mask_n[None, :],
                   bias_ptr + group * K_PER_GROUP, offs_n, mask_n, r_ptr, r_offsets,
                   HAS_BIAS, ACTIVATION, STORE_PREACT, HAS_RESIDUAL)


@triton.jit
def conv2d_split_epilogue_kernel(
    # pointers: fp32 partial sums [SPLIT, M, K] (contiguous), the output; then as the forward's
    part_ptr, y_ptr,
    # SPLIT and T = M * K first: the layout of kernels/reduce.py's split_sum_kernel, for the tools
    SPLIT, T,
    z_ptr, bias_ptr, r_ptr,
    N, K, P, Q,
    stride_yn, stride_yk, stride_yh, stride_yw,
    stride_rn, stride_rk, stride_rh, stride_rw,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, STORE_PREACT: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    Y_RUN: tl.constexpr, R_RUN: tl.constexpr, Y_ALIGN: tl.constexpr, R_ALIGN: tl.constexpr,
    INDEX_64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """y = epilogue(sum_{s = 0 .. SPLIT-1} part[s]), the shares added in that order.
    Grid: (cdiv(M, BLOCK_M), cdiv(K, BLOCK_N)); channels are global (group * K/g + k)."""
    M = pixel_count(N, P, Q, INDEX_64)
    offs_m, mask_m = tile_offsets(tl.program_id(0), M, BLOCK_M, INDEX_64)
    offs_n, mask_n = tile_offsets(tl.program_id(1), K, BLOCK_N, INDEX_64)
    mask = mask_m[:, None] & mask_n[None, :]
    ptrs = part_ptr + (offs_m[:, None] * K + offs_n[None, :])  # advanced share by share (no s * T product)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, SPLIT):
        acc += tl.load(ptrs, mask=mask, other=0.0)
        ptrs += T
    _store_output(acc, offs_m, M, offs_n, 0, y_ptr, z_ptr, bias_ptr, r_ptr, P, Q, K,
                  stride_yn, stride_yk, stride_yh, stride_yw, stride_rn, stride_rk, stride_rh, stride_rw,
                  HAS_BIAS, ACTIVATION, STORE_PREACT, HAS_RESIDUAL, Y_RUN, R_RUN, Y_ALIGN, R_ALIGN)
