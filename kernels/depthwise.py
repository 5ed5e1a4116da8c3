"""Depthwise convolution (groups == input channels, any channel multiplier), and the pieces its
gradients (kernels/depthwise_bwd.py) share with it.

Output channel k reads the single input channel k // CHANNEL_MULT, so the reduction is only
KH*KW long and tl.dot would multiply mostly zeros: the kernels accumulate element-wise products
in fp32 on the CUDA cores (FFMA), on [pixels x channels] tiles. What costs issue slots is then
everything around the 9 FFMA per output: loads, conversions, addresses, masks. The walk below
keeps those to about 1.5 loads and conversions per output (3x3, stride 1).

The pixel walk (conv2d_depthwise_kernel; the gradients walk alike):

- Lanes. A program holds BLOCK_N channels and BLOCK_M *lanes*. A lane is COLS consecutive output
  pixels of one row and walks `band_rows` consecutive output rows, one row per step: the lane
  space (image, band, column group) is split once per program (the only vector division); a
  step moves a scalar row offset. The lanes' columns, their padding masks and their offsets stay
  fixed for the whole walk. COLS (1..4) and band_rows are chosen per shape by the host
  (mcconv/ops/forward.py, Depthwise), COLS dividing the output width where it can.
- Window columns. A lane's kernel row reads (COLS-1)*STRIDE_W + (KW-1)*DIL_W + 1 input columns;
  each is loaded once (a 16-byte vector along the channels) and serves every (output column, tap)
  pair that reads it, converted to fp32 once.
- Window rows. The rows that the next output row shares with this one (KH - 1 of them at stride 1,
  1 at stride 2, when the dilation divides the stride) are carried in registers as fp32 tiles, so
  a step loads only its new rows: KH*(COLS+2) loads for 3x3 stride 1 become COLS+2. The loop body
  holds UNROLL output rows, enough that every carried row is refreshed within one iteration (so the
  compiler renames the carried registers instead of copying them at the back edge).
- Loads are issued for the whole new part of the window before its math (all taps of a row in
  flight at once); the zero padding is the loads' masks (zero-filled). They are LDGs, not
  cp.async: Triton's pipeliner can pipeline this loop (tl.range num_stages=2), but measured on
  MobileNetV2 it costs 15-20 % more instructions per output and spills at COLS=4, so it is off.
- Weights. Loaded once per program (KH, KW are constexprs, the taps unrolled): one [BLOCK_N, taps]
  tile load, converted once and split into one fp32 [BLOCK_N] vector per tap (tap_vectors), so a
  thread issues a few loads instead of one per tap and channel. The bias starts the accumulators.
- Layouts. Channels-last: tiles [lanes, channels], 16-byte vectors along the channels (X_ALIGN,
  Y_ALIGN, R_ALIGN: host-derived powers of two dividing the pixel strides, which Triton cannot
  prove for widths such as 24; K_ALIGN makes the channel mask constant over a vector, or drops it
  when BLOCK_N divides K). NCHW: tiles [channels, lanes], the lanes along the contiguous pixel
  axis, so a warp's loads and stores are coalesced 2-byte accesses: the window's column shifts
  leave wider NCHW vectors unaligned (a documented choice; converting the input to channels-last
  in the call would move twice the bytes of this memory-bound kernel).
- Large windows (ROW_LOOP, more than 9 taps, the host's rule): the fp32 weights of all taps would
  not fit in registers beside the window (8 channels per thread: 72 registers for 3x3), so a
  runtime loop over the kernel rows loads each row's weights and columns inside the step.
- Channel multiplier > 1: the input channel k // CHANNEL_MULT is gathered per output channel
  (scalar loads); correct for any multiplier, fast for 1 (MobileNet's).
- Epilogue per output column: residual, activation, preact store (kernels/common.py).
"""
import triton
import triton.language as tl

from .common import epilogue_store


@triton.constexpr_function
def window_columns(cols, kw, stride_w, dil_w):
    """Input columns one lane reads per kernel row: (cols - 1) * stride_w + (kw - 1) * dil_w + 1."""
    return (cols - 1) * stride_w + (kw - 1) * dil_w + 1


@triton.constexpr_function
def column_used(c, cols, kw, stride_w, dil_w):
    """Whether window column c serves some (output column j, tap kw) pair: j*stride_w + kw*dil_w == c."""
    return any(j * stride_w + t * dil_w == c for j in range(cols) for t in range(kw))


@triton.jit
def tile2d(pix, chan, CHANNELS_LAST: tl.constexpr):
    """pix (per lane) + chan (per channel) as a tile: [lanes, channels] channels-last, else [channels, lanes]."""
    if CHANNELS_LAST:
        out = pix[:, None] + chan[None, :]
    else:
        out = chan[:, None] + pix[None, :]
    return out


@triton.jit
def mask2d(pix_ok, chan_ok, CHANNELS_LAST: tl.constexpr):
    """A lane mask and a channel mask as a tile mask (tile2d's orientation)."""
    if CHANNELS_LAST:
        out = pix_ok[:, None] & chan_ok[None, :]
    else:
        out = chan_ok[:, None] & pix_ok[None, :]
    return out


@triton.jit
def per_channel(v, CHANNELS_LAST: tl.constexpr):
    """A [channels] vector broadcast along the lanes of a tile."""
    if CHANNELS_LAST:
        out = v[None, :]
    else:
        out = v[:, None]
    return out


@triton.jit
def zero_tile(LANES: tl.constexpr, BLOCK_N: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """An fp32 zero tile in tile2d's orientation."""
    if CHANNELS_LAST:
        out = tl.zeros((LANES, BLOCK_N), dtype=tl.float32)
    else:
        out = tl.zeros((BLOCK_N, LANES), dtype=tl.float32)
    return out


@triton.jit
def at_step(ptr, lane_off, step_off, CHANNELS_LAST: tl.constexpr):
    """(pointer, per-lane offsets) of a lane walk's step: channels-last moves the scalar pointer, so
    that the lanes' offsets stay fixed (one vector address each, nothing recomputed); NCHW moves
    the offsets instead (one address per element there: fixed ones would be hoisted out of the
    loop and held in registers, eight per vector)."""
    if CHANNELS_LAST:
        out = (ptr + step_off, lane_off)
    else:
        out = (ptr, lane_off + step_off)
    return out


@triton.jit
def channel_block(pid, K, BLOCK_N: tl.constexpr, K_ALIGN: tl.constexpr, INDEX_64: tl.constexpr):
    """Offsets and mask of a block of BLOCK_N channels of K. K_ALIGN is a power of two dividing K:
    with BLOCK_N | K_ALIGN the mask is constant true, else it is written so that Triton sees it is
    constant over K_ALIGN channels (and keeps the 16-byte vectors)."""
    offs = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    if INDEX_64:
        offs = offs.to(tl.int64)
    if K_ALIGN % BLOCK_N == 0:
        ok = tl.full((BLOCK_N,), 1, tl.int1)
    else:
        ok = offs < (K // K_ALIGN) * K_ALIGN
    return offs, ok


@triton.jit
def lanes_start(start, BANDS, GROUPS, LANES: tl.constexpr):
    """Lanes start .. start + LANES of the lane space (image n, band b, column group g), the groups
    fastest: the only vector division of a program, before its loop."""
    m = start + tl.arange(0, LANES)
    t = m // GROUPS
    g = (m - t * GROUPS).to(tl.int32)
    n = t // BANDS
    b = (t - n * BANDS).to(tl.int32)
    return n.to(tl.int32), b, g


@triton.constexpr_function
def row_shift(kh, stride_h, dil_h):
    """Kernel rows the window moves down per output row: row kh of the next output row is row
    kh + shift of this one when the dilation divides the stride; kh (nothing shared) otherwise."""
    return stride_h // dil_h if stride_h % dil_h == 0 else kh


@triton.constexpr_function
def carried_rows(kh, stride_h, dil_h, row_loop):
    """Window rows kept in registers from one output row to the next (their loads are not repeated)."""
    return 0 if row_loop else kh - min(kh, row_shift(kh, stride_h, dil_h))


@triton.constexpr_function
def unroll_rows(kh, stride_h, dil_h, row_loop):
    """Output rows per loop iteration: enough that every carried row is refreshed
    within one iteration, so the loop-carried rows are renamed, not copied, at the back edge."""
    carry = carried_rows(kh, stride_h, dil_h, row_loop)
    shift = row_shift(kh, stride_h, dil_h)
    return max(1, -(-carry // shift)) if carry else 1


@triton.jit
def column_masks(col0, width, COLS: tl.constexpr, KW: tl.constexpr, STRIDE_W: tl.constexpr, DIL_W: tl.constexpr):
    """Per lane, whether window column c (input column col0 + c) is inside the image, for every
    column of the window. Columns no (output column, tap) pair reads get one too, never used
    (dead code to the compiler): a tuple holding None instead failed to compile for the GPU
    (dilated windows of one output column per lane), though the interpreter took it."""
    oks = ()
    for c in tl.static_range(window_columns(COLS, KW, STRIDE_W, DIL_W)):
        oks = oks + ((col0 + c).to(tl.uint32) < width,)
    return oks


@triton.jit
def load_row(ptr, row, row_ok, cols_ok, chan, chan_ok, col_stride,
             COLS: tl.constexpr, KW: tl.constexpr, STRIDE_W: tl.constexpr, DIL_W: tl.constexpr,
             ALIGN: tl.constexpr, CHANNELS_LAST: tl.constexpr, RAW: tl.constexpr = False):
    """One kernel row of the lanes' windows: a tuple of fp32 tiles (RAW: in the input's dtype, half
    the registers where a row is carried), window column c at offset row + c * col_stride; 0.0 for
    columns nobody reads.

    Out-of-image rows and columns read as zeros (the zero padding): masked, zero-filled copies.
    """
    xs = ()
    for c in tl.static_range(window_columns(COLS, KW, STRIDE_W, DIL_W)):
        if column_used(c, COLS, KW, STRIDE_W, DIL_W):
            off = tl.multiple_of(row + c * col_stride, ALIGN)
            x = tl.load(ptr + tile2d(off, chan, CHANNELS_LAST), mask=mask2d(row_ok & cols_ok[c], chan_ok, CHANNELS_LAST),
                        other=0.0)
            if not RAW:
                x = x.to(tl.float32)
            xs = xs + (x,)
        else:
            xs = xs + (0.0,)
    return xs


@triton.jit
def row_fma(accs, xs, ws, w0: tl.constexpr, taps_ok, COLS: tl.constexpr, KW: tl.constexpr,
            STRIDE_W: tl.constexpr, DIL_W: tl.constexpr, CHECK_TAPS: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """accs[j] += sum_kw xs[j*STRIDE_W + kw*DIL_W] * ws[w0 + kw] for the COLS output columns of one
    kernel row (xs: fp32 tiles). CHECK_TAPS: tap kw is skipped unless taps_ok[kw] (a scalar,
    uniform over the program: a branch, not a mask), so that a tap that does not exist adds no
    0 * inf."""
    for kw in tl.static_range(KW):
        w = per_channel(ws[w0 + kw], CHANNELS_LAST)
        if CHECK_TAPS:
            if taps_ok[kw]:
                out = ()
                for j in tl.static_range(COLS):
                    out = out + (accs[j] + xs[j * STRIDE_W + kw * DIL_W] * w,)
                accs = out
        else:
            out = ()
            for j in tl.static_range(COLS):
                out = out + (accs[j] + xs[j * STRIDE_W + kw * DIL_W] * w,)
            accs = out
    return accs


@triton.constexpr_function
def bit_reverse(i, bits):
    """i with its `bits` low bits reversed: where tap i lands after splitting off the lowest bit first."""
    return int(format(i, f"0{bits}b")[::-1], 2) if bits else 0


@triton.jit
def tap_vectors(w_ptr, chan_off, chan_ok, tap_off, tap_ok, TAPS: tl.constexpr):
    """fp32 [BLOCK_N] vectors of TAPS taps: tap t at w_ptr + chan_off + tap_off[t] where tap_ok[t]
    (tap_off, tap_ok: [next_power_of_2(TAPS)] vectors), zero elsewhere. One [BLOCK_N, taps] tile
    load (a few scalars per thread, not one per tap and channel), converted once, then split
    along the taps (in registers and one shared-memory exchange)."""
    TP: tl.constexpr = triton.next_power_of_2(TAPS)
    BITS: tl.constexpr = TP.bit_length() - 1
    w2d = tl.load(w_ptr + chan_off[:, None] + tap_off[None, :], mask=chan_ok[:, None] & tap_ok[None, :],
                  other=0.0).to(tl.float32)
    if BITS > 0:
        parts = (tl.reshape(w2d, [w2d.shape[0]] + [2] * BITS),)
    else:
        parts = (tl.reshape(w2d, [w2d.shape[0]]),)
    for level in tl.static_range(BITS):  # split off the lowest tap bit first
        halves = ()
        for i in tl.static_range(len(parts)):
            lo, hi = tl.split(parts[i])
            halves = halves + (lo, hi)
        parts = halves
    ws = ()
    for t in tl.static_range(TAPS):
        ws = ws + (parts[bit_reverse(t, BITS)],)
    return ws


@triton.jit
def load_weights(w_ptr, offs_k, mask_k, kh, stride_wk, stride_wh, stride_ww,
                 ROWS: tl.constexpr, KW: tl.constexpr, W_CONTIG: tl.constexpr):
    """fp32 [BLOCK_N] weight vectors of kernel rows kh .. kh + ROWS - 1 (all KW taps each), row-major.
    W_CONTIG: the weight is (K, 1, KH, KW) contiguous, so the tap offsets are constants."""
    t = tl.arange(0, triton.next_power_of_2(ROWS * KW))
    if W_CONTIG:
        toff = kh * KW + t
    else:
        toff = (kh + t // KW) * stride_wh + (t % KW) * stride_ww
    return tap_vectors(w_ptr, offs_k * stride_wk, mask_k, toff, t < ROWS * KW, ROWS * KW)


@triton.jit
def first_rows(x_ptr, x_lane, ih, height, cols_ok, chan, chan_ok, row_stride, col_stride,
               CARRY: tl.constexpr, ROW_DIL: tl.constexpr, COLS: tl.constexpr, KW: tl.constexpr,
               COL_STRIDE: tl.constexpr, COL_DIL: tl.constexpr, ALIGN: tl.constexpr, CHANNELS_LAST: tl.constexpr,
               RAW: tl.constexpr = False):
    """The window rows 0 .. CARRY-1 of a lane's first output row (input row ih + kh * ROW_DIL at
    x_ptr + kh * ROW_DIL * row_stride + x_lane): the rows that the following output rows share."""
    rows = ()
    for kh in tl.static_range(CARRY):
        rows = rows + (load_row(x_ptr + kh * (ROW_DIL * row_stride), x_lane, (ih + kh * ROW_DIL).to(tl.uint32) < height,
                                cols_ok, chan, chan_ok, col_stride, COLS, KW, COL_STRIDE, COL_DIL, ALIGN,
                                CHANNELS_LAST, RAW),)
    return rows


@triton.jit
def window_row(carried, acc0, ws, x_ptr, x_lane, ih, height, cols_ok, chan, chan_ok, row_stride, col_stride,
               rows_taps_ok, cols_taps_ok,
               KH: tl.constexpr, KW: tl.constexpr, ROW_DIL: tl.constexpr, COL_STRIDE: tl.constexpr,
               COL_DIL: tl.constexpr, COLS: tl.constexpr, CARRY: tl.constexpr, SHIFT: tl.constexpr,
               CHECK_TAPS: tl.constexpr, ALIGN: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """One output row of a lane walk: loads the window rows CARRY .. KH-1 (input row ih + kh*ROW_DIL
    at x_ptr + kh*ROW_DIL*row_stride + x_lane, x_ptr and x_lane from at_step), every load issued
    before the math, then adds the KH x KW taps (weights ws, row-major) of all COLS output columns
    to acc0. Returns (the COLS accumulators, the window rows the next output row shares).
    CHECK_TAPS: only taps with rows_taps_ok[kh] and cols_taps_ok[kw] (uniform scalars) are added."""
    window = carried
    for kh in tl.static_range(CARRY, KH):
        window = window + (load_row(x_ptr + kh * (ROW_DIL * row_stride), x_lane,
                                    (ih + kh * ROW_DIL).to(tl.uint32) < height, cols_ok, chan, chan_ok,
                                    col_stride, COLS, KW, COL_STRIDE, COL_DIL, ALIGN, CHANNELS_LAST),)
    accs = ()
    for j in tl.static_range(COLS):
        accs = accs + (acc0,)
    for kh in tl.static_range(KH):
        if CHECK_TAPS:
            if rows_taps_ok[kh]:
                accs = row_fma(accs, window[kh], ws, kh * KW, cols_taps_ok, COLS, KW, COL_STRIDE, COL_DIL, True,
                               CHANNELS_LAST)
        else:
            accs = row_fma(accs, window[kh], ws, kh * KW, cols_taps_ok, COLS, KW, COL_STRIDE, COL_DIL, False,
                           CHANNELS_LAST)
    return accs, window[SHIFT:SHIFT + CARRY]


@triton.jit
def conv2d_depthwise_kernel(
    # pointers (r_ptr: the residual, any pointer unless HAS_RESIDUAL)
    x_ptr, w_ptr, bias_ptr, y_ptr, z_ptr, r_ptr,
    # sizes, padding, output rows per band
    N, C, H, W, K, P, Q, pad_h, pad_w, band_rows,
    # strides, in elements
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wk, stride_wh, stride_ww,
    stride_yn, stride_yk, stride_yh, stride_yw,
    stride_rn, stride_rk, stride_rh, stride_rw,
    # bucketed shape, read only by triton.autotune's key (MCCONV_AUTOTUNE=1)
    bucket_m, bucket_n, bucket_r,
    # geometry, layout and alignment (constexprs derived from the call, see mcconv/ops/forward.py)
    KH: tl.constexpr, KW: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    DIL_H: tl.constexpr, DIL_W: tl.constexpr, COLS: tl.constexpr, CHANNEL_MULT: tl.constexpr,
    ROW_LOOP: tl.constexpr, CHANNELS_LAST: tl.constexpr, W_CONTIG: tl.constexpr, K_ALIGN: tl.constexpr,
    X_ALIGN: tl.constexpr, Y_ALIGN: tl.constexpr, R_ALIGN: tl.constexpr,
    # epilogue, offsets, tiles
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, STORE_PREACT: tl.constexpr,
    INDEX_64: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid: (cdiv(N * cdiv(P, band_rows) * cdiv(Q, COLS), BLOCK_M), cdiv(K, BLOCK_N)): BLOCK_M lanes,
    each COLS output columns of `band_rows` consecutive output rows, walked one row per step."""
    CARRY: tl.constexpr = carried_rows(KH, STRIDE_H, DIL_H, ROW_LOOP)
    SHIFT: tl.constexpr = row_shift(KH, STRIDE_H, DIL_H)
    UNROLL: tl.constexpr = unroll_rows(KH, STRIDE_H, DIL_H, ROW_LOOP)
    groups = tl.cdiv(Q, COLS)
    bands = tl.cdiv(P, band_rows)
    start = tl.program_id(0) * BLOCK_M
    if INDEX_64:
        start = start.to(tl.int64)
        total = (tl.full((), 0, tl.int64) + N) * bands * groups  # N may be the constant 1
    else:
        total = N * bands * groups
    n, b, g = lanes_start(start, bands, groups, BLOCK_M)
    lane_ok = start + tl.arange(0, BLOCK_M) < total
    offs_k, mask_k = channel_block(tl.program_id(1), K, BLOCK_N, K_ALIGN, INDEX_64)
    x_chan = (offs_k // CHANNEL_MULT) * stride_xc
    y_chan = offs_k * stride_yk
    r_chan = offs_k * stride_rk

    # Per lane, fixed for the whole walk: its columns (and their padding masks), first rows, offsets.
    p0 = b * band_rows
    q0 = g * COLS
    ih0 = p0 * STRIDE_H - pad_h
    iw0 = q0 * STRIDE_W - pad_w
    # Row checks: lanes past the end get a first row that no step brings into the image (all masked).
    ih0_ok = tl.where(lane_ok, ih0, -(1 << 30))
    rows_left = tl.minimum(P - p0, band_rows)  # output rows of this lane's band inside the image
    if INDEX_64:
        x_lane = n.to(tl.int64) * stride_xn + ih0.to(tl.int64) * stride_xh + iw0.to(tl.int64) * stride_xw
        y_lane = n.to(tl.int64) * stride_yn + p0.to(tl.int64) * stride_yh + q0.to(tl.int64) * stride_yw
        r_lane = n.to(tl.int64) * stride_rn + p0.to(tl.int64) * stride_rh + q0.to(tl.int64) * stride_rw
    else:
        x_lane = n * stride_xn + ih0 * stride_xh + iw0 * stride_xw
        y_lane = n * stride_yn + p0 * stride_yh + q0 * stride_yw
        r_lane = n * stride_rn + p0 * stride_rh + q0 * stride_rw
    cols_ok = column_masks(iw0, W, COLS, KW, STRIDE_W, DIL_W)
    stores_ok = ()
    for j in tl.static_range(COLS):
        stores_ok = stores_ok + (lane_ok & (q0 + j < Q),)

    acc0 = zero_tile(BLOCK_M, BLOCK_N, CHANNELS_LAST)
    if HAS_BIAS:  # added once here, not once per step
        acc0 += per_channel(tl.load(bias_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32), CHANNELS_LAST)
    if not ROW_LOOP:
        ws = load_weights(w_ptr, offs_k, mask_k, 0, stride_wk, stride_wh, stride_ww, KH, KW, W_CONTIG)
    # The first output row's window rows that later rows share: loaded once, then carried.
    carried = first_rows(x_ptr, x_lane, ih0_ok, H, cols_ok, x_chan, mask_k, stride_xh, stride_xw, CARRY, DIL_H,
                         COLS, KW, STRIDE_W, DIL_W, X_ALIGN, CHANNELS_LAST)

    for s0 in range(0, band_rows, UNROLL):
        for u in tl.static_range(UNROLL):
            s = s0 + u
            ih = ih0_ok + s * STRIDE_H
            x_row, x_off = at_step(x_ptr, x_lane, s * (STRIDE_H * stride_xh), CHANNELS_LAST)
            if ROW_LOOP:
                accs = ()
                for j in tl.static_range(COLS):
                    accs = accs + (acc0,)
                for kh in range(0, KH):
                    xs = load_row(x_row + kh * (DIL_H * stride_xh), x_off, (ih + kh * DIL_H).to(tl.uint32) < H,
                                  cols_ok, x_chan, mask_k, stride_xw, COLS, KW, STRIDE_W, DIL_W, X_ALIGN,
                                  CHANNELS_LAST)
                    wrow = load_weights(w_ptr, offs_k, mask_k, kh, stride_wk, stride_wh, stride_ww, 1, KW, W_CONTIG)
                    accs = row_fma(accs, xs, wrow, 0, (), COLS, KW, STRIDE_W, DIL_W, False, CHANNELS_LAST)
            else:
                accs, carried = window_row(carried, acc0, ws, x_row, x_off, ih, H, cols_ok, x_chan, mask_k,
                                           stride_xh, stride_xw, (), (), KH, KW, DIL_H, STRIDE_W, DIL_W, COLS, CARRY,
                                           SHIFT, False, X_ALIGN, CHANNELS_LAST)
            row_ok = s < rows_left
            y_row, y_off = at_step(y_ptr, y_lane, s * stride_yh, CHANNELS_LAST)
            z_row, _ = at_step(z_ptr, y_lane, s * stride_yh, CHANNELS_LAST)  # z: y's offsets
            r_row, r_off = at_step(r_ptr, r_lane, s * stride_rh, CHANNELS_LAST)
            for j in tl.static_range(COLS):
                y_tile = tile2d(tl.multiple_of(y_off + j * stride_yw, Y_ALIGN), y_chan, CHANNELS_LAST)
                if HAS_RESIDUAL:
                    r_tile = tile2d(tl.multiple_of(r_off + j * stride_rw, R_ALIGN), r_chan, CHANNELS_LAST)
                else:
                    r_tile = y_tile  # unused: the epilogue's residual branch is compiled out
                # The bias is in acc0 already: HAS_BIAS=False here.
                epilogue_store(accs[j], y_row, z_row, y_tile, mask2d(stores_ok[j] & row_ok, mask_k, CHANNELS_LAST),
                               bias_ptr, offs_k, mask_k, r_row, r_tile, False, ACTIVATION, STORE_PREACT,
                               HAS_RESIDUAL)
