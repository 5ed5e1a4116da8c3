"""Weight gradient (wgrad) of the convolution as an implicit GEMM with a split reduction.

    dW[k, c, kh, kw] = sum_{n, p, q} dY[n, k, p, q] * X[n, c, p*stride_h - pad_h + kh*dil_h, ...]

For each tap (kh, kw) this is a GEMM [K, N*P*Q] x [N*P*Q, C] per group whose reduction runs over
the output pixels: long (batch x image) while the output is small (the weight). Each program owns a
BLOCK_M x BLOCK_N tile of one tap and one share of that tap's pixels; the SPLIT grid axis spreads
the pixels over programs so that small weights still fill the GPU. Programs write fp32 partial
sums to a [SPLIT, K, C/groups, KH, KW] buffer that split_sum_kernel (kernels/reduce.py) adds up in
a fixed order, so the gradient is bitwise the same on every run (no atomics). With SPLIT == 1 the
tile goes straight to dW in its dtype.

Tiles. The tile's rows are the larger channel axis (SWAP: input channels on the rows where there
are more of them), so that a warpgroup's 64 wgmma rows are filled where the output channels are
few; channels past the end of an axis wrap around (they re-read valid channels into rows and
columns that are never stored) instead of being masked. A 256-column tile is loaded as two
128-column halves with their own accumulators: a half's loads then use the same pixel lanes as
the other half's.

The pixel walk (no division or modulo in the main loop):
- A tap only reaches the output pixels of a rectangle [p_lo, p_hi) x [q_lo, q_hi) (outside it X
  is zero padding); the walk enumerates exactly that rectangle, image after image, so no halo
  mask is needed. Its length, not N*P*Q, is what the split divides.
- Lane j of a BLOCK_K step is split once, before the loop, into (image, row, column) offsets
  within a step; the step's position is scalars (image n0, in-image index i0, row p0, column q0)
  advanced by BLOCK_K with scalar compares. A lane's offset is its precomputed offset plus two
  carries: its column passed the rectangle's last (jq >= QR - q0), its pixel the image's last
  (je >= PR*QR - i0): two compares and two selects per lane, shared by both operands.
- FLAT_DY / FLAT_X: the operand's pixels are one arithmetic progression (1x1 kernel without
  padding, dense strides): no carries at all, the step adds a scalar.
- Every step of the main loop is whole and unmasked; a program's last, partial step is peeled
  after the loop (masked), so the pipeline runs without per-element predicates.
- The loads' pointer tiles (channel + lane part) are computed once; VEC_DY / VEC_X are the
  16-byte vector widths the host proved (strides, channels per group), given to the compiler as
  alignment facts so that both operands load with cp.async.

FOLD (FOLD_WIDTH > 0; one group, no dilation, a channels_last input): one program serves every
tap. The columns are (kh, element of a FOLD_WIDTH-element window of an input row): for output
pixel (p, q) the taps of row kh read the contiguous run of KW*C elements of input row
p*stride_h - pad_h + kh starting at e0 = (q*stride_w - pad_w)*C, and the window starts at a
VEC-aligned element at or before e0, so every tap's channels load with 16-byte copies even for a
3-channel stem. Windows and window rows are clamped into the image, so nothing is masked; what
a window holds beyond a pixel's run (or a tap row outside the image) lands in columns that are
not stored. Pixels whose window sits at the same place relative to their run form a class (the
interior rows times the interior columns of one phase q mod FOLD_PERIOD, and each border row and
column alone); each program walks one share of one class (_fold_class) and stores its columns
as (kh, kw, c) in its own, zeroed, partial buffer.

Any strides (NCHW, NHWC, non-contiguous, unbatched with a zero batch stride) go through the same
walk; only channels_last with 16-byte aligned pixels vectorises.
"""
import triton
import triton.language as tl

from .common import grouped_tile_ids


@triton.jit
def _tap_range(k, size, out, stride, pad, dil):
    """[lo, hi) of the output positions o whose tap k lands inside the input: 0 <= o*stride - a < size
    with a = pad - k*dil. Returns (lo, hi, a) with hi >= lo (an empty range where the tap never lands)."""
    a = pad - k * dil
    lo = tl.where(a > 0, (a + stride - 1) // stride, 0)
    last = size - 1 + a
    hi = tl.minimum(tl.where(last >= 0, last // stride + 1, 0), out)
    return lo, tl.maximum(hi, lo), a


@triton.jit
def _fold_class(share, chunk, N, H, W, P, Q, C, KH, stride_h, stride_w, pad_h, pad_w,
                PERIOD: tl.constexpr, WIDTH: tl.constexpr, VEC: tl.constexpr):
    """FOLD: the class of pixels, and the share of it, that program `share` walks.

    Interior rows read KH rows inside the image; interior columns a window inside the row (run
    start e0 >= 0, aligned window end <= W*C). Classes in order: row classes (border rows above,
    the interior rows, border rows below) times column classes (border columns left, the
    PERIOD phases of the interior columns, border columns right); class i takes
    cdiv(size_i, chunk) programs (mcconv/ops/weight_grad.py counts the same). Returns the walk's
    rectangle (p_first, PR, q_first, QR; its column step is PERIOD), the tap row of window row 0
    (row_shift) and the run element of window element 0 (-col_shift), the window's first input
    row and element, and the share's [start, end).
    """
    CW = W * C
    pi_lo = tl.minimum(tl.cdiv(pad_h, stride_h), P)
    pi_hi = tl.minimum(tl.maximum((H - KH + pad_h) // stride_h + 1, pi_lo), P)
    qi_lo = tl.minimum(tl.cdiv(pad_w, stride_w), Q)
    qi_hi = tl.minimum(tl.maximum((CW - WIDTH + VEC - 1 + pad_w * C) // (stride_w * C) + 1, qi_lo), Q)
    col_classes = qi_lo + PERIOD + (Q - qi_hi)
    # Find this program's class (a scalar loop over the classes, before the walk).
    rc = 0
    cc = 0
    left = share
    for cls in range(0, (pi_lo + 1 + P - pi_hi) * col_classes):
        r = cls // col_classes
        c = cls % col_classes
        ph = c - qi_lo
        cols = tl.where((ph >= 0) & (ph < PERIOD), tl.cdiv(tl.maximum(qi_hi - qi_lo - ph, 0), PERIOD), 1)
        programs = tl.cdiv(N * tl.where(r == pi_lo, pi_hi - pi_lo, 1) * cols, chunk)
        here = (left >= 0) & (left < programs)
        rc = tl.where(here, r, rc)
        cc = tl.where(here, c, cc)
        share = tl.where(here, left, share)
        left -= programs
    p_first = tl.where(rc <= pi_lo, rc, pi_hi + rc - pi_lo - 1)
    PR = tl.where(rc == pi_lo, pi_hi - pi_lo, 1)
    ph = cc - qi_lo
    interior = (ph >= 0) & (ph < PERIOD)
    q_first = tl.where(cc < qi_lo, cc, tl.where(interior, qi_lo + ph, qi_hi + ph - PERIOD))
    QR = tl.where(interior, tl.cdiv(tl.maximum(qi_hi - q_first, 0), PERIOD), 1)
    ih0 = p_first * stride_h - pad_h
    row0 = tl.minimum(tl.maximum(ih0, 0), H - KH)
    e0 = (q_first * stride_w - pad_w) * C
    w0 = tl.minimum(tl.maximum(e0 - ((e0 % VEC) + VEC) % VEC, 0), CW - WIDTH)
    start = share * chunk
    end = tl.minimum(start + chunk, N * PR * QR)
    return p_first, PR, q_first, QR, row0 - ih0, e0 - w0, row0 * 1, w0, start, end


@triton.jit
def _carried(jq, je, base, q_room, i_room, carry_q, carry_i, VEC: tl.constexpr):
    """Per-lane offsets of a step: `base` (the step's scalar offset) plus the carries of the lanes
    whose column passes the rectangle's last (jq >= q_room) and whose pixel passes the image's
    last (je >= i_room); the lanes' own offsets are in the pointer tiles."""
    return tl.multiple_of(base + tl.where(jq >= q_room, carry_q, 0) + tl.where(je >= i_room, carry_i, 0), VEC)


@triton.jit
def _column_offsets(cols, COLS, stride_c, stride_xh, FOLD_WIDTH: tl.constexpr):
    """Offsets of the tile's columns within the column operand: channels (wrapped past the end),
    or (FOLD) window row * row stride + window element."""
    c = cols % COLS
    if FOLD_WIDTH > 0:
        return (c // FOLD_WIDTH) * stride_xh + c % FOLD_WIDTH
    return c * stride_c


@triton.jit
def _store_tile(acc, dw_ptr, rows, cols, ROWS, COLS, group, K_PER_GROUP, KH, KW, kh, kw,
                row_shift, col_shift, split, stride_ds, stride_dk, stride_dc, stride_dh, stride_dw,
                SWAP: tl.constexpr, FOLD_WIDTH: tl.constexpr, FOLD_C: tl.constexpr):
    """Store an fp32 tile (rows x cols) into dW or its partial buffer `split`. FOLD_C: the input
    channels of a FOLD, a constexpr so that splitting a column's run into (kw, c) is a multiply and
    shift, not a division (triton 3.6 spilled 40-56 bytes in this store with a runtime C)."""
    mask = (rows < ROWS)[:, None] & (cols < COLS)[None, :]
    if SWAP:
        offs = (group * K_PER_GROUP + cols)[None, :] * stride_dk + rows[:, None] * stride_dc
        offs += kh * stride_dh + kw * stride_dw
    elif FOLD_WIDTH > 0:  # column (window row, element) -> (kh, kw, c), where the class reaches one
        tap_h = cols // FOLD_WIDTH + row_shift
        run = cols % FOLD_WIDTH - col_shift
        ok = (tap_h >= 0) & (tap_h < KH) & (run >= 0) & (run < KW * FOLD_C)
        run = tl.where(ok, run, 0)
        offs = rows[:, None] * stride_dk + ((run % FOLD_C) * stride_dc + tap_h * stride_dh
                                            + (run // FOLD_C) * stride_dw)[None, :]
        mask &= ok[None, :]
    else:
        offs = (group * K_PER_GROUP + rows)[:, None] * stride_dk + cols[None, :] * stride_dc
        offs += kh * stride_dh + kw * stride_dw
    tl.store(dw_ptr + split * stride_ds + offs, acc.to(dw_ptr.dtype.element_ty), mask=mask)


@triton.jit
def conv2d_wgrad_kernel(
    # pointers: output gradient, input, weight gradient (or its fp32 partial buffer)
    dy_ptr, x_ptr, dw_ptr,
    # sizes (channels are per group)
    N, C_PER_GROUP, H, W, K_PER_GROUP, P, Q, KH, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # strides, in elements (stride_ds: between the partial buffers, 0 with a single program)
    stride_dyn, stride_dyk, stride_dyh, stride_dyw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_ds, stride_dk, stride_dc, stride_dh, stride_dw,
    # FOLD: the pixels of a program's share (0 otherwise)
    fold_chunk,
    # bucketed shape, read only by triton.autotune's key (MCCONV_AUTOTUNE=1)
    bucket_m, bucket_n, bucket_r,
    # meta-parameters
    IS_1X1: tl.constexpr, SWAP: tl.constexpr,
    FOLD_WIDTH: tl.constexpr, FOLD_PERIOD: tl.constexpr, FOLD_C: tl.constexpr,
    FLAT_DY: tl.constexpr, FLAT_X: tl.constexpr, VEC_DY: tl.constexpr, VEC_X: tl.constexpr,
    INDEX_64: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """Grid: (cdiv(ROWS, BLOCK_M) * cdiv(COLS, BLOCK_N) * taps, groups, programs per tile).
    ROWS x COLS: C/g x K/g with SWAP, K x KH*FOLD_WIDTH with FOLD (taps 1), else K/g x C/g.
    IS_1X1: 1x1 kernel, stride 1, no padding (one tap, every pixel)."""
    if SWAP:
        ROWS = C_PER_GROUP
        COLS = K_PER_GROUP
    elif FOLD_WIDTH > 0:
        ROWS = K_PER_GROUP
        COLS = KH * FOLD_WIDTH
    else:
        ROWS = K_PER_GROUP
        COLS = C_PER_GROUP
    HALF: tl.constexpr = BLOCK_N // 2 if BLOCK_N > 128 else BLOCK_N  # columns per load and accumulator
    num_pid_m = tl.cdiv(ROWS, BLOCK_M)
    num_pid_n = tl.cdiv(COLS, BLOCK_N)
    tiles = num_pid_m * num_pid_n
    # Neighbouring programs share the tap, hence the pixels of X they read.
    tap = tl.program_id(0) // tiles
    pid_m, pid_n = grouped_tile_ids(tl.program_id(0) % tiles, num_pid_m, num_pid_n, GROUP_M)
    kh = tap // KW
    kw = tap % KW
    group = tl.program_id(1)
    split = tl.program_id(2)
    if INDEX_64:
        group = group.to(tl.int64)
        split = split.to(tl.int64)
        N = tl.cast(N, tl.int64)  # pixel counts and image offsets may pass 2**31
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, HALF)
    cols2 = cols + HALF  # the second half of a 256-column tile (unused otherwise)

    # The rectangle of output pixels this program walks (column step q_step), and its share.
    row_shift = 0
    col_shift = 0
    if FOLD_WIDTH > 0:
        p_lo, PR, q_lo, QR, row_shift, col_shift, row0, w0, start, end = _fold_class(
            split, fold_chunk, N, H, W, P, Q, C_PER_GROUP, KH, stride_h, stride_w, pad_h, pad_w,
            FOLD_PERIOD, FOLD_WIDTH, VEC_X)
        q_step = FOLD_PERIOD  # (a class of one column never steps)
        x_base = row0 * stride_xh + w0
    else:
        q_step = 1
        if IS_1X1:
            p_lo = 0
            q_lo = 0
            PR = P
            QR = Q
            x_base = 0
        else:  # the pixels this tap reaches: outside them X is zero padding
            p_lo, p_hi, ah = _tap_range(kh, H, P, stride_h, pad_h, dil_h)
            q_lo, q_hi, aw = _tap_range(kw, W, Q, stride_w, pad_w, dil_w)
            PR = p_hi - p_lo
            QR = q_hi - q_lo
            x_base = (p_lo * stride_h - ah) * stride_xh + (q_lo * stride_w - aw) * stride_xw
        x_base += group * C_PER_GROUP * stride_xc
        count = N * PR * QR
        chunk = tl.cdiv(tl.cdiv(count, tl.num_programs(2)), BLOCK_K) * BLOCK_K
        start = split * chunk
        end = tl.minimum(start + chunk, count)
    full_end = start + tl.maximum(end - start, 0) // BLOCK_K * BLOCK_K
    QR1 = tl.maximum(QR, 1)
    PQ = tl.maximum(PR * QR, 1)

    # Each operand's strides per rectangle pixel (image, row, column) and its two carries.
    dsn = stride_dyn
    dsp = stride_dyh
    dsq = q_step * stride_dyw
    xsn = stride_xn
    xsp = stride_h * stride_xh
    xsq = q_step * stride_w * stride_xw
    dy_carry_q = dsp - QR * dsq
    dy_carry_i = dsn - PR * dsp
    x_carry_q = xsp - QR * xsq
    x_carry_i = xsn - PR * xsp
    # Per-thread channel pointers, fixed for the whole walk. The alignment facts are the host's
    # (Triton knows only integers that are multiples of 16): runs of VEC channels start aligned.
    dy_base = group * K_PER_GROUP * stride_dyk + p_lo * stride_dyh + q_lo * stride_dyw
    if SWAP:
        row_ptr = x_ptr + tl.max_contiguous(tl.multiple_of(x_base + (rows % ROWS) * stride_xc, VEC_X), VEC_X)
        col_ptr = dy_ptr + tl.max_contiguous(tl.multiple_of(
            dy_base + _column_offsets(cols, COLS, stride_dyk, stride_xh, 0), VEC_DY), VEC_DY)
        col_ptr2 = dy_ptr + tl.max_contiguous(tl.multiple_of(
            dy_base + _column_offsets(cols2, COLS, stride_dyk, stride_xh, 0), VEC_DY), VEC_DY)
    else:
        row_ptr = dy_ptr + tl.max_contiguous(tl.multiple_of(dy_base + (rows % ROWS) * stride_dyk, VEC_DY), VEC_DY)
        col_ptr = x_ptr + tl.max_contiguous(tl.multiple_of(
            x_base + _column_offsets(cols, COLS, stride_xc, stride_xh, FOLD_WIDTH), VEC_X), VEC_X)
        col_ptr2 = x_ptr + tl.max_contiguous(tl.multiple_of(
            x_base + _column_offsets(cols2, COLS, stride_xc, stride_xh, FOLD_WIDTH), VEC_X), VEC_X)

    # Lanes: j -> (image, row, column) within a step, split once: no division in the loop.
    j = tl.arange(0, BLOCK_K)
    if INDEX_64:
        j = j.to(tl.int64)
    jn = j // PQ
    je = j % PQ
    jp = je // QR1
    jq = je % QR1
    lane_dy = tl.multiple_of(jn * dsn + jp * dsp + jq * dsq, VEC_DY)
    lane_x = tl.multiple_of(jn * xsn + jp * xsp + jq * xsq, VEC_X)
    # The step's position: image n0, in-image index i0 = p0 * QR + q0.
    n0 = start // PQ
    i0 = start % PQ
    p0 = i0 // QR1
    q0 = i0 % QR1
    step_n = BLOCK_K // PQ
    step_i = BLOCK_K % PQ
    step_p = step_i // QR1
    step_q = BLOCK_K % QR1
    # Loop-invariant pointer tiles; a step adds a scalar (flat operand) or carried offsets. fp32
    # operands copy 4 bytes at a time (tf32 wgmma reads K-major operands only, and channels_last
    # makes the pixels strided), a pointer (2 registers) per element: wide fp32 tiles add the
    # lane offsets each step instead, which leaves registers for twice the pixels per step.
    POINTER_TILES: tl.constexpr = x_ptr.dtype.element_ty != tl.float32 or BLOCK_M + BLOCK_N < 256
    if SWAP:
        lane_a = lane_x
        lane_b = lane_dy
    else:
        lane_a = lane_dy
        lane_b = lane_x
    if SWAP:
        a_tile = row_ptr[:, None] + lane_x[None, :]
        b_tile = col_ptr[None, :] + lane_dy[:, None]
        b_tile2 = col_ptr2[None, :] + lane_dy[:, None]
    else:
        a_tile = row_ptr[:, None] + lane_dy[None, :]
        b_tile = col_ptr[None, :] + lane_x[:, None]
        b_tile2 = col_ptr2[None, :] + lane_x[:, None]

    acc = tl.zeros((BLOCK_M, HALF), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, HALF), dtype=tl.float32)
    for r0 in range(start, full_end, BLOCK_K):
        if FLAT_DY:
            o_dy = r0 * dsq + tl.zeros_like(j)
        else:
            o_dy = _carried(jq, je, n0 * dsn + p0 * dsp + q0 * dsq, QR - q0, PQ - i0, dy_carry_q, dy_carry_i,
                            VEC_DY)
        if FLAT_X:
            o_x = r0 * xsq + tl.zeros_like(j)
        else:
            o_x = _carried(jq, je, n0 * xsn + p0 * xsp + q0 * xsq, QR - q0, PQ - i0, x_carry_q, x_carry_i,
                           VEC_X)
        if SWAP:
            o_a = o_x
            o_b = o_dy
        else:
            o_a = o_dy
            o_b = o_x
        if POINTER_TILES:
            a = tl.load(a_tile + o_a[None, :])
            acc = tl.dot(a, tl.load(b_tile + o_b[:, None]), acc, input_precision=DOT_PRECISION)
            if BLOCK_N > HALF:
                acc2 = tl.dot(a, tl.load(b_tile2 + o_b[:, None]), acc2, input_precision=DOT_PRECISION)
        else:
            a = tl.load(row_ptr[:, None] + (lane_a + o_a)[None, :])
            acc = tl.dot(a, tl.load(col_ptr[None, :] + (lane_b + o_b)[:, None]), acc, input_precision=DOT_PRECISION)
            if BLOCK_N > HALF:
                acc2 = tl.dot(a, tl.load(col_ptr2[None, :] + (lane_b + o_b)[:, None]), acc2,
                              input_precision=DOT_PRECISION)
        if not (FLAT_DY and FLAT_X):  # advance the position by BLOCK_K pixels: scalar compares
            q1 = q0 + step_q
            wrap_q = q1 >= QR
            q0 = tl.where(wrap_q, q1 - QR, q1)
            p1 = p0 + step_p + wrap_q.to(p0.dtype)
            i1 = i0 + step_i
            wrap_i = i1 >= PQ
            i0 = tl.where(wrap_i, i1 - PQ, i1)
            p0 = tl.where(wrap_i, p1 - PR, p1)
            n0 += step_n + wrap_i.to(n0.dtype)

    if full_end < end:  # the program's last, partial step, masked
        ok = j < end - full_end
        if FLAT_DY:
            o_dy = full_end * dsq + tl.zeros_like(j)
        else:
            o_dy = _carried(jq, je, n0 * dsn + p0 * dsp + q0 * dsq, QR - q0, PQ - i0, dy_carry_q, dy_carry_i,
                            VEC_DY)
        if FLAT_X:
            o_x = full_end * xsq + tl.zeros_like(j)
        else:
            o_x = _carried(jq, je, n0 * xsn + p0 * xsp + q0 * xsq, QR - q0, PQ - i0, x_carry_q, x_carry_i,
                           VEC_X)
        if SWAP:
            o_a = o_x
            o_b = o_dy
        else:
            o_a = o_dy
            o_b = o_x
        a = tl.load(a_tile + o_a[None, :], mask=ok[None, :], other=0.0)
        b = tl.load(b_tile + o_b[:, None], mask=ok[:, None], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        if BLOCK_N > HALF:
            b = tl.load(b_tile2 + o_b[:, None], mask=ok[:, None], other=0.0)
            acc2 = tl.dot(a, b, acc2, input_precision=DOT_PRECISION)

    # fp32 partials (FOLD's buffers start at zero: a class reaches only some taps), or dW's dtype
    _store_tile(acc, dw_ptr, rows, cols, ROWS, COLS, group, K_PER_GROUP, KH, KW, kh, kw,
                row_shift, col_shift, split, stride_ds, stride_dk, stride_dc, stride_dh, stride_dw, SWAP, FOLD_WIDTH,
                FOLD_C)
    if BLOCK_N > HALF:
        _store_tile(acc2, dw_ptr, rows, cols2, ROWS, COLS, group, K_PER_GROUP, KH, KW, kh, kw,
                    row_shift, col_shift, split, stride_ds, stride_dk, stride_dc, stride_dh, stride_dw, SWAP,
                    FOLD_WIDTH, FOLD_C)
