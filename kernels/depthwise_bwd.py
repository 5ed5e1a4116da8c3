"""Gradients of the depthwise convolution (groups == input channels, any channel multiplier).

Both walk the pixels as the forward does (kernels/depthwise.py's docstring): BLOCK_M lanes of COLS
consecutive pixels of one row, each lane walking `band_rows` rows one per step; the window rows
that consecutive rows share are carried in registers, every input column loaded serves all
(column, tap) pairs that read it, the loads of a window are issued before its math; tiles are
[lanes, channels] with 16-byte vectors along the channels for channels-last tensors, [channels,
lanes] for NCHW (coalesced 2-byte accesses along the pixels).

depthwise_dgrad_kernel: dX[n, c, h, w] = sum_{j, kh, kw} dY[n, c*MULT + j, p, q] * W[c*MULT + j, kh, kw]
with h = p*stride_h - pad_h + kh*dil_h. The input-gradient pixels are split by stride phase
(ph = h mod stride_h, pw likewise; one phase per program, rows kept apart as before): on the
phase's grid h = i*stride_h + ph the taps that reach it are kh = kh0 + t*(stride_h/g) with
g = gcd(stride_h, dil_h) and kh0 known per phase (phase_taps), and tap t reads dY row
i + dp0 - t*(dil_h/g). So each phase is a stride-1 correlation of dY with TH = cdiv(KH,
stride_h/g) x TW tap slots (dilation dil/g), walked like the forward. Its weights are loaded once
per program; a slot that is no tap of the phase (fewer taps than slots) is skipped by a uniform
branch, so its zero weight never meets an infinite dY (0 * inf). A channel multiplier above 1, or
more than 9 slots, takes a runtime loop over (multiplier, slot row) pairs inside each step
(ROW_LOOP), weights loaded per row. The epilogue is the forward's (kernels/depthwise.py, through
kernels/common.py's epilogue_store), on dX's channels (the input channels c): HAS_BIAS (the bias
starts the accumulators, once per program), ACTIVATION, STORE_PREACT (z at dX's offsets) and
HAS_RESIDUAL (read through stride_r*, its pixel offsets hinted by R_ALIGN) are off for the input
gradient (compiled out: the ordinary input gradient compiles as without them); they make this
kernel the depthwise transposed convolution with the forward's fused epilogue, in one launch
(mcconv/transpose.py).

depthwise_wgrad_kernel: dW[k, kh, kw] = sum_{n, p, q} dY[n, k, p, q] * X[n, k // MULT, ih, iw]. Every
tap of a tap group (all KH rows for up to 9 taps, else rows of them over grid axis 1) accumulates
in its own fp32 [lanes, channels] tile: a step loads the dY row once (COLS vectors) and the new X
window rows, and adds dY * X for every (column, tap) pair. The lane blocks are split over the
SPLIT programs of grid axis 2 in contiguous shares (lane blocks walked one after another, the
only division per block); each program reduces its tiles over the lanes once at the end and
writes fp32 partial sums that split_sum_kernel adds in a fixed order: bitwise reproducible, no
atomics. NCHW walks each lane block as sub-blocks of 32 lanes: one address per element (not per
vector) would otherwise not leave the per-tap accumulators their registers.
"""
import math

import triton
import triton.language as tl

from .common import epilogue_store
from .depthwise import (at_step, carried_rows, channel_block, column_masks, first_rows, lanes_start, load_row, mask2d,
                        per_channel, row_fma, row_shift, tap_vectors, tile2d, unroll_rows, window_row, zero_tile)


@triton.constexpr_function
def reduced(stride, dil):
    """(stride / g, dil / g) for g = gcd(stride, dil): the taps that reach one stride phase are
    kh0 + t * stride/g, and consecutive ones read input rows dil/g apart."""
    g = math.gcd(stride, dil)
    return stride // g, dil // g


@triton.constexpr_function
def tap_slots(k, stride, dil):
    """Taps of one kernel axis that reach one stride phase, at most: cdiv(k, stride / gcd(stride, dil))."""
    return -(-k // reduced(stride, dil)[0])


@triton.jit
def phase_taps(phase, pad, STRIDE: tl.constexpr, DIL: tl.constexpr, K: tl.constexpr, SLOTS: tl.constexpr):
    """For the pixels h = i*STRIDE + phase of one axis: (k0, base), the first tap that reaches them
    (K or more when none does) and the dY index that tap slot SLOTS-1 (tap k0) reads for i = 0 minus
    (SLOTS-1)*DIL/g, so that slot v (tap k0 + (SLOTS-1-v)*STRIDE/g) reads i + base + v*DIL/g."""
    SG: tl.constexpr = reduced(STRIDE, DIL)[0]
    DG: tl.constexpr = reduced(STRIDE, DIL)[1]
    k0 = phase * 0 + K + SG  # none yet
    for t in tl.static_range(SG - 1, -1, -1):
        k0 = tl.where((phase + pad - t * DIL) % STRIDE == 0, t, k0)
    # Exact (k0 is a solution), so truncating division is floor division here.
    d0 = (phase + pad - k0 * DIL) // STRIDE
    return k0, d0 - (SLOTS - 1) * DG


@triton.jit
def slot_weights(w_ptr, w_chan, chan_ok, kh0, kw0, slot_h, stride_wh, stride_ww,
                 ROWS: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                 SGH: tl.constexpr, SGW: tl.constexpr):
    """fp32 [BLOCK_N] weights of tap slots (v, u) for v in slot_h .. slot_h + ROWS - 1, u < TW,
    row-major: slot v holds tap kh0 + (TH-1-v)*SGH (zero when that is no tap), slot u likewise."""
    t = tl.arange(0, triton.next_power_of_2(ROWS * TW))
    kh = kh0 + (TH - 1 - (slot_h + t // TW)) * SGH
    kw = kw0 + (TW - 1 - t % TW) * SGW
    return tap_vectors(w_ptr, w_chan, chan_ok, kh * stride_wh + kw * stride_ww,
                       (t < ROWS * TW) & (kh < KH) & (kw < KW), ROWS * TW)


@triton.jit
def depthwise_dgrad_kernel(
    # pointers: output gradient, weight, bias, input gradient, pre-activation, residual (bias, z
    # and residual: any pointer unless HAS_BIAS, STORE_PREACT, HAS_RESIDUAL; z has dX's strides)
    dy_ptr, w_ptr, bias_ptr, dx_ptr, z_ptr, r_ptr,
    # sizes: input C x H x W, output K x P x Q; padding; rows per band (on a phase's grid)
    N, C, H, W, K, P, Q, pad_h, pad_w, band_rows,
    # strides, in elements (stride_r*: the residual's, unused without one)
    stride_dyn, stride_dyk, stride_dyh, stride_dyw,
    stride_wk, stride_wh, stride_ww,
    stride_dxn, stride_dxc, stride_dxh, stride_dxw,
    stride_rn, stride_rc, stride_rh, stride_rw,
    # bucketed shape, read only by triton.autotune's key (MCCONV_AUTOTUNE=1)
    bucket_m, bucket_n, bucket_r,
    # geometry, layout and alignment (constexprs derived from the call, see mcconv/ops/input_grad.py)
    KH: tl.constexpr, KW: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    DIL_H: tl.constexpr, DIL_W: tl.constexpr, COLS: tl.constexpr, CHANNEL_MULT: tl.constexpr,
    ROW_LOOP: tl.constexpr, CHANNELS_LAST: tl.constexpr, C_ALIGN: tl.constexpr, DY_ALIGN: tl.constexpr,
    DX_ALIGN: tl.constexpr, R_ALIGN: tl.constexpr,
    # epilogue (all off for the input gradient), offsets, tiles
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, STORE_PREACT: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    INDEX_64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid: (STRIDE_H * STRIDE_W * cdiv(N * cdiv(R0, band_rows) * cdiv(Q0, COLS), BLOCK_M),
    cdiv(C, BLOCK_N)), R0 x Q0 = cdiv(H, STRIDE_H) x cdiv(W, STRIDE_W): the largest phase's grid."""
    SGH: tl.constexpr = reduced(STRIDE_H, DIL_H)[0]
    DGH: tl.constexpr = reduced(STRIDE_H, DIL_H)[1]
    SGW: tl.constexpr = reduced(STRIDE_W, DIL_W)[0]
    DGW: tl.constexpr = reduced(STRIDE_W, DIL_W)[1]
    TH: tl.constexpr = tap_slots(KH, STRIDE_H, DIL_H)
    TW: tl.constexpr = tap_slots(KW, STRIDE_W, DIL_W)
    # On a phase's grid the correlation has stride 1 and dilation DGH x DGW.
    CARRY: tl.constexpr = carried_rows(TH, 1, DGH, ROW_LOOP)
    SHIFT: tl.constexpr = row_shift(TH, 1, DGH)
    UNROLL: tl.constexpr = unroll_rows(TH, 1, DGH, ROW_LOOP)

    rows0 = tl.cdiv(H, STRIDE_H)
    cols0 = tl.cdiv(W, STRIDE_W)
    groups = tl.cdiv(cols0, COLS)
    bands = tl.cdiv(rows0, band_rows)
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
        total = (tl.full((), 0, tl.int64) + N) * bands * groups  # lanes of every phase (of the largest one's grid); N may be the constant 1
    else:
        total = N * bands * groups
    blocks = tl.cdiv(total, BLOCK_M)
    phase = pid // blocks
    ph = (phase // STRIDE_W).to(tl.int32)
    pw = (phase % STRIDE_W).to(tl.int32)
    rows_h = tl.cdiv(H - ph, STRIDE_H)  # this phase's grid
    rows_w = tl.cdiv(W - pw, STRIDE_W)
    kh0, pbase = phase_taps(ph, pad_h, STRIDE_H, DIL_H, KH, TH)
    kw0, qbase = phase_taps(pw, pad_w, STRIDE_W, DIL_W, KW, TW)

    start = (pid - phase * blocks) * BLOCK_M
    n, b, g = lanes_start(start, bands, groups, BLOCK_M)
    lane_ok = start + tl.arange(0, BLOCK_M) < total
    offs_c, mask_c = channel_block(tl.program_id(1), C, BLOCK_N, C_ALIGN, INDEX_64)
    dx_chan = offs_c * stride_dxc

    i0 = b * band_rows  # the lane's first row and column on the phase's grid
    j0 = g * COLS
    p0 = i0 + pbase  # dY row of tap slot 0 for row i0, and dY column of slot 0 for column j0
    q0 = j0 + qbase
    p0_ok = tl.where(lane_ok, p0, -(1 << 30))
    rows_left = tl.minimum(rows_h - i0, band_rows)
    if INDEX_64:
        dy_lane = n.to(tl.int64) * stride_dyn + p0.to(tl.int64) * stride_dyh + q0.to(tl.int64) * stride_dyw
        dx_lane = (n.to(tl.int64) * stride_dxn + (i0 * STRIDE_H + ph).to(tl.int64) * stride_dxh
                   + (j0 * STRIDE_W + pw).to(tl.int64) * stride_dxw)
    else:
        dy_lane = n * stride_dyn + p0 * stride_dyh + q0 * stride_dyw
        dx_lane = n * stride_dxn + (i0 * STRIDE_H + ph) * stride_dxh + (j0 * STRIDE_W + pw) * stride_dxw
    if HAS_RESIDUAL:  # the residual's offsets of dX's pixels, through its own strides
        r_chan = offs_c * stride_rc
        if INDEX_64:
            r_lane = (n.to(tl.int64) * stride_rn + (i0 * STRIDE_H + ph).to(tl.int64) * stride_rh
                      + (j0 * STRIDE_W + pw).to(tl.int64) * stride_rw)
        else:
            r_lane = n * stride_rn + (i0 * STRIDE_H + ph) * stride_rh + (j0 * STRIDE_W + pw) * stride_rw
    else:
        r_chan = dx_chan  # unused: the epilogue's residual branch is compiled out
        r_lane = dx_lane
    cols_ok = column_masks(q0, Q, COLS, TW, 1, DGW)
    stores_ok = ()
    for j in tl.static_range(COLS):
        stores_ok = stores_ok + (lane_ok & (j0 + j < rows_w),)

    # Tap slots that are taps of this phase (all of them at stride 1): the others are skipped by
    # uniform branches, so that their zero weights never meet an infinite dY (0 * inf).
    CHECK_TAPS: tl.constexpr = SGH > 1 or SGW > 1
    rows_taps_ok = ()
    for v in tl.static_range(TH):
        rows_taps_ok = rows_taps_ok + (kh0 + (TH - 1 - v) * SGH < KH,)
    cols_taps_ok = ()
    for u in tl.static_range(TW):
        cols_taps_ok = cols_taps_ok + (kw0 + (TW - 1 - u) * SGW < KW,)

    acc0 = zero_tile(BLOCK_M, BLOCK_N, CHANNELS_LAST)
    if HAS_BIAS:  # the input channel's bias starts every accumulator: added once here, not once per step
        acc0 += per_channel(tl.load(bias_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32), CHANNELS_LAST)
    if not ROW_LOOP:
        ws = slot_weights(w_ptr, offs_c * stride_wk, mask_c, kh0, kw0, 0, stride_wh, stride_ww, TH, TH, TW, KH, KW,
                          SGH, SGW)
        dy_chan = offs_c * stride_dyk
        carried = first_rows(dy_ptr, dy_lane, p0_ok, P, cols_ok, dy_chan, mask_c, stride_dyh, stride_dyw, CARRY, DGH,
                             COLS, TW, 1, DGW, DY_ALIGN, CHANNELS_LAST)

    for s0 in range(0, band_rows, UNROLL):
        for u in tl.static_range(UNROLL):
            s = s0 + u
            p = p0_ok + s
            dy_row, dy_off = at_step(dy_ptr, dy_lane, s * stride_dyh, CHANNELS_LAST)
            if ROW_LOOP:
                accs = ()
                for j in tl.static_range(COLS):
                    accs = accs + (acc0,)
                # (multiplier, tap-slot row) pairs, walked with counters
                mult = tl.full((), 0, tl.int32)
                slot = tl.full((), 0, tl.int32)
                for _ in range(0, CHANNEL_MULT * TH):
                    k = offs_c * CHANNEL_MULT + mult
                    xs = load_row(dy_row + slot * (DGH * stride_dyh), dy_off, (p + slot * DGH).to(tl.uint32) < P, cols_ok,
                                  k * stride_dyk, mask_c, stride_dyw, COLS, TW, 1, DGW, DY_ALIGN, CHANNELS_LAST)
                    wrow = slot_weights(w_ptr, k * stride_wk, mask_c, kh0, kw0, slot, stride_wh, stride_ww, 1, TH, TW,
                                        KH, KW, SGH, SGW)
                    if kh0 + (TH - 1 - slot) * SGH < KH:
                        accs = row_fma(accs, xs, wrow, 0, cols_taps_ok, COLS, TW, 1, DGW, CHECK_TAPS, CHANNELS_LAST)
                    slot += 1
                    wrap = slot == TH
                    slot = tl.where(wrap, 0, slot)
                    mult = tl.where(wrap, mult + 1, mult)
            else:
                accs, carried = window_row(carried, acc0, ws, dy_row, dy_off, p, P, cols_ok, dy_chan, mask_c,
                                           stride_dyh, stride_dyw, rows_taps_ok, cols_taps_ok, TH, TW, DGH, 1, DGW,
                                           COLS, CARRY, SHIFT, CHECK_TAPS, DY_ALIGN, CHANNELS_LAST)
            row_ok = s < rows_left
            dx_row, dx_off = at_step(dx_ptr, dx_lane, s * (STRIDE_H * stride_dxh), CHANNELS_LAST)
            z_row, _ = at_step(z_ptr, dx_lane, s * (STRIDE_H * stride_dxh), CHANNELS_LAST)  # z: dX's offsets
            r_row, r_off = at_step(r_ptr, r_lane, s * (STRIDE_H * stride_rh), CHANNELS_LAST)
            for j in tl.static_range(COLS):
                dx_tile = tile2d(tl.multiple_of(dx_off + j * (STRIDE_W * stride_dxw), DX_ALIGN), dx_chan, CHANNELS_LAST)
                if HAS_RESIDUAL:
                    r_tile = tile2d(tl.multiple_of(r_off + j * (STRIDE_W * stride_rw), R_ALIGN), r_chan, CHANNELS_LAST)
                else:
                    r_tile = dx_tile  # unused: the epilogue's residual branch is compiled out
                # The bias is in acc0 already: HAS_BIAS=False here. All off, this is a plain store of dX.
                epilogue_store(accs[j], dx_row, z_row, dx_tile, mask2d(stores_ok[j] & row_ok, mask_c, CHANNELS_LAST),
                               bias_ptr, offs_c, mask_c, r_row, r_tile, False, ACTIVATION, STORE_PREACT, HAS_RESIDUAL)


@triton.jit
def depthwise_wgrad_kernel(
    # pointers: output gradient, input, weight gradient (or its fp32 partial buffer)
    dy_ptr, x_ptr, dw_ptr,
    # sizes: input C x H x W, output K x P x Q; padding; output rows per band
    N, C, H, W, K, P, Q, pad_h, pad_w, band_rows,
    # strides, in elements (stride_ds: between the SPLIT partial buffers, 0 when SPLIT == 1)
    stride_dyn, stride_dyk, stride_dyh, stride_dyw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_ds, stride_dk, stride_dh, stride_dw,
    # bucketed shape, read only by triton.autotune's key (MCCONV_AUTOTUNE=1)
    bucket_m, bucket_n, bucket_r,
    # geometry, layout and alignment (constexprs derived from the call, see mcconv/ops/weight_grad.py)
    KH: tl.constexpr, KW: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    DIL_H: tl.constexpr, DIL_W: tl.constexpr, COLS: tl.constexpr, CHANNEL_MULT: tl.constexpr,
    TAP_ROWS: tl.constexpr, CHANNELS_LAST: tl.constexpr, K_ALIGN: tl.constexpr, DY_ALIGN: tl.constexpr,
    X_ALIGN: tl.constexpr,
    # offsets, tiles
    INDEX_64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid: (cdiv(K, BLOCK_N), cdiv(KH, TAP_ROWS), SPLIT); the lane blocks of the walk
    (cdiv(N * cdiv(P, band_rows) * cdiv(Q, COLS), BLOCK_M)), or chunks of their bands, shared by
    the SPLIT programs."""
    WHOLE: tl.constexpr = TAP_ROWS == KH  # the program holds every tap row: window rows are carried
    CARRY: tl.constexpr = carried_rows(KH, STRIDE_H, DIL_H, not WHOLE)
    # Strided: the X rows stay in the input's dtype until used (the carried one in half the
    # registers: beside 9 accumulators, 4 columns need them), converted at each use.
    RAW: tl.constexpr = STRIDE_H > 1
    SHIFT: tl.constexpr = row_shift(KH, STRIDE_H, DIL_H)
    UNROLL: tl.constexpr = unroll_rows(KH, STRIDE_H, DIL_H, not WHOLE)
    # NCHW has one address per element, not one per 16-byte vector: it walks a lane block as
    # sub-blocks of 16 lanes (2 elements per thread), so that the per-tap accumulators fit in
    # registers beside the addresses.
    LANES: tl.constexpr = BLOCK_M if CHANNELS_LAST else min(BLOCK_M, 16)
    offs_k, mask_k = channel_block(tl.program_id(0), K, BLOCK_N, K_ALIGN, INDEX_64)
    split = tl.program_id(2)
    if INDEX_64:
        split = split.to(tl.int64)
    x_chan = (offs_k // CHANNEL_MULT) * stride_xc
    dy_chan = offs_k * stride_dyk

    groups = tl.cdiv(Q, COLS)
    bands = tl.cdiv(P, band_rows)
    if INDEX_64:
        total = (tl.full((), 0, tl.int64) + N) * bands * groups  # N may be the constant 1
    else:
        total = N * bands * groups
    blocks = tl.cdiv(total, BLOCK_M)
    # The work units the SPLIT programs share: (lane block, chunk of its band's rows). A band is
    # cut into SPLIT / gcd(blocks, SPLIT) chunks (when it has as many iterations), so that the
    # units divide evenly among the programs (mcconv/ops/weight_grad.py repeats this rule).
    iters = tl.cdiv(band_rows, UNROLL)
    # gcd(blocks, SPLIT); its own names: `b` is the band index below, a different type in the loop
    gcd_a = blocks
    gcd_b = tl.num_programs(2) + blocks * 0
    while gcd_b != 0:
        gcd_a, gcd_b = gcd_b, gcd_a % gcd_b
    chunks = tl.num_programs(2) // gcd_a
    chunks = tl.where(chunks <= iters, chunks, 1)
    chunk_iters = tl.cdiv(iters, chunks)
    units = blocks * (BLOCK_M // LANES) * chunks
    share = tl.cdiv(units, tl.num_programs(2))
    first_unit = split * share
    last_unit = tl.minimum(first_unit + share, units)

    kh_first = tl.program_id(1) * TAP_ROWS
    heights = ()  # the image height for the group's tap rows, 0 for rows past KH (nothing loads)
    for kh in tl.static_range(TAP_ROWS):
        if WHOLE:
            heights = heights + (H,)
        else:
            heights = heights + (tl.where(kh_first + kh < KH, H, 0),)
    accs = ()  # one fp32 tile per tap of the group, row-major
    for t in tl.static_range(TAP_ROWS * KW):
        accs = accs + (zero_tile(LANES, BLOCK_N, CHANNELS_LAST),)
    for unit in range(first_unit, last_unit):
        blk = unit // chunks  # scalars, once per unit: no division in the row loop
        chunk = unit - blk * chunks
        start = blk * LANES
        n, b, g = lanes_start(start, bands, groups, LANES)
        lane_ok = start + tl.arange(0, LANES) < total
        p0 = b * band_rows
        q0 = g * COLS
        ih0 = p0 * STRIDE_H - pad_h + kh_first * DIL_H
        iw0 = q0 * STRIDE_W - pad_w
        ih0_ok = tl.where(lane_ok, ih0, -(1 << 30))
        rows_left = tl.where(lane_ok, tl.minimum(P - p0, band_rows), 0)
        if INDEX_64:
            x_lane = n.to(tl.int64) * stride_xn + ih0.to(tl.int64) * stride_xh + iw0.to(tl.int64) * stride_xw
            dy_lane = n.to(tl.int64) * stride_dyn + p0.to(tl.int64) * stride_dyh + q0.to(tl.int64) * stride_dyw
        else:
            x_lane = n * stride_xn + ih0 * stride_xh + iw0 * stride_xw
            dy_lane = n * stride_dyn + p0 * stride_dyh + q0 * stride_dyw
        cols_ok = column_masks(iw0, W, COLS, KW, STRIDE_W, DIL_W)
        dys_ok = ()
        for j in tl.static_range(COLS):
            dys_ok = dys_ok + (q0 + j < Q,)
        it_first = chunk * chunk_iters
        it_last = tl.minimum(it_first + chunk_iters, iters)
        x_first, x_off = at_step(x_ptr, x_lane, it_first * (UNROLL * STRIDE_H * stride_xh), CHANNELS_LAST)
        carried = first_rows(x_first, x_off, ih0_ok + it_first * (UNROLL * STRIDE_H), H, cols_ok, x_chan, mask_k,
                             stride_xh, stride_xw, CARRY, DIL_H, COLS, KW, STRIDE_W, DIL_W, X_ALIGN, CHANNELS_LAST, RAW)
        for it in range(it_first, it_last):
            for u in tl.static_range(UNROLL):
                s = it * UNROLL + u
                row_ok = s < rows_left  # dY rows past the band or the image read as zeros
                dy_row, dy_off = at_step(dy_ptr, dy_lane, s * stride_dyh, CHANNELS_LAST)
                dys = ()
                for j in tl.static_range(COLS):
                    off = tl.multiple_of(dy_off + j * stride_dyw, DY_ALIGN)
                    dys = dys + (tl.load(dy_row + tile2d(off, dy_chan, CHANNELS_LAST),
                                         mask=mask2d(row_ok & dys_ok[j], mask_k, CHANNELS_LAST),
                                         other=0.0).to(tl.float32),)
                ih = ih0_ok + s * STRIDE_H
                x_row, x_off = at_step(x_ptr, x_lane, s * (STRIDE_H * stride_xh), CHANNELS_LAST)
                # Row by row (each new row loaded just before its taps): fewer rows in flight, the
                # registers stay with the per-tap accumulators.
                window = carried
                new_accs = ()
                for kh in tl.static_range(TAP_ROWS):
                    if kh >= CARRY:
                        window = window + (load_row(x_row + kh * (DIL_H * stride_xh), x_off,
                                                    (ih + kh * DIL_H).to(tl.uint32) < heights[kh], cols_ok, x_chan,
                                                    mask_k, stride_xw, COLS, KW, STRIDE_W, DIL_W, X_ALIGN,
                                                    CHANNELS_LAST, RAW),)
                    for kw in tl.static_range(KW):
                        acc = accs[kh * KW + kw]
                        for j in tl.static_range(COLS):
                            acc += dys[j] * window[kh][j * STRIDE_W + kw * DIL_W].to(tl.float32)
                        new_accs = new_accs + (acc,)
                accs = new_accs
                carried = window[SHIFT:SHIFT + CARRY]

    # One reduction over the lanes per tap at the end; its order is fixed by the compiled kernel.
    for kh in tl.static_range(TAP_ROWS):
        for kw in tl.static_range(KW):
            if CHANNELS_LAST:
                total_t = tl.sum(accs[kh * KW + kw], axis=0)
            else:
                total_t = tl.sum(accs[kh * KW + kw], axis=1)
            tl.store(dw_ptr + split * stride_ds + (kh_first + kh) * stride_dh + kw * stride_dw + offs_k * stride_dk,
                     total_t.to(dw_ptr.dtype.element_ty), mask=mask_k & (offs_k * 0 + kh_first + kh < KH))
