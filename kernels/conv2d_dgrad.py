"""Input gradient (dgrad) of the direct convolution: the transposed implicit GEMM.

    dX[(n, h, w), c] = sum_{kh, kw, k} dY[n, k, p, q] * W[k, c, kh, kw]
    p = (h + pad_h - kh * dil_h) / stride_h,  q likewise,  taken only when exact and in range

Each program owns a BLOCK_M x BLOCK_N tile of dX (input pixels x input channels of one group).
Rows are split by stride phase (h % stride_h, w % stride_w): a tap either reaches every row of
a tile or none of them, so there is no zero-inserted copy of dY and no tap is masked away row
by row. The taps that reach phase_h are an arithmetic progression kh = kh0 + j * step_h,
step_h = stride_h / gcd(stride_h, dil_h) (the solutions of kh * dil_h == phase_h + pad_h modulo
stride_h), and along it the output row moves by -dil_h / gcd per step; likewise along w. The
host passes step, gcd and the modular inverse that finds kh0 (:func:`phase_taps`).

The reduction is ONE software-pipelined loop per tile over (applicable tap, output-channel
block), so the pipeline fills once per tile, not once per tap: scalar counters (kb, tw) and the
scalar offsets of the current tap and block in dY and W advance with `tl.where`; per-row base
offsets and per-row tap validity are computed once before the loop. Validity is a bit set per
row, bit th * nw + tw for tap (th, tw) of the phase (TAP_BITS = 32 or 64: the fullest phase's
taps fit), built without a vector loop so that it is laid out for the loop's A tile, and the loop
tests one bit against a scalar mask; with more taps per phase (TAP_BITS = 0) the loop compares
p and q instead. No vector division or modulo runs in the loop.

Operands: A = dY[rows, k] (channels_last: k contiguous, 16-byte cp.async; the host copies a
channel-strided dY to channels_last in the call, and has an NCHW dX written channels_last and
copied back: mcconv/ops/input_grad.py); B = W[k, c] through its strides: a channels_last weight
(c contiguous, N-major) is read in place for fp16/bf16; the host packs other weights per call,
and every weight under tf32 (wgmma tf32 takes K-major operands only), into (kH, kW, C/g, K)
order (k contiguous, K-major: mcconv._pack.dgrad_packed), W_K_MAJOR telling which. Alignment
facts the compiler cannot see (e.g. that a 24-channel row is 16-byte aligned in fp16) come from
the host as A_ALIGN / B_ALIGN / D_ALIGN / R_ALIGN (elements; D: dX's rows, R: the residual's),
and K_ALIGN / C_ALIGN (powers of two dividing K/g and C/g) compile out the masks of reduction and
column blocks that never cut the extent.

Sub-pixel (PHASE_C = C/g > 0; few input channels at a stride, e.g. an RGB stem): the phases
become columns instead of blocks of tiles. One block of tiles over a phase grid (i, j) of pixels
h = i * stride_h, w = j * stride_w computes every phase of that grid at once (stride_h here: the
host's GRID_STEP times the convolution's; the grid's rows advance dY's by GRID_STEP): column
(ph, r) holds dX[n, c, h + ph, w + pw] for run index r = pw * C/g + c, the runs padded to
PHASE_RUN (a power of two). The loop is the stride-1 one over a KH x KW window of dY rows
i * GRID_STEP + pad_h - kh (the union of the phases' taps, pad_h its offset); the host re-lays the
weight per call with zeros where a phase has no tap at a window position and in the runs'
padding (mcconv._pack.subpixel_weight). Three input channels at stride 2 then fill 48 of a
64-column tile instead of 3 of 16.

The epilogue is the forward's (kernels/common.py epilogue_store), the bias indexed by the output
column (the input channel c): HAS_BIAS, ACTIVATION, STORE_PREACT and HAS_RESIDUAL (residual read
through stride_r*) are off for the input gradient (compiled out); they make this kernel the
transposed convolution with the forward's fused epilogue: mcconv.conv_transpose2d(x, w, b, ...,
activation=, residual=) is the input gradient of conv2d with weight w for dL/dz = x, plus that
epilogue, in this one launch (mcconv/transpose.py).
"""
import triton
import triton.language as tl

from .common import dot_acc, epilogue_store, grouped_tile_ids, phase_extent, pixel_count, split_pixels, tile_offsets


@triton.jit
def phase_taps(phase_r, pad, taps, dil, stride, tap_step, tap_gcd, tap_inv):
    """The taps of one axis that reach the input-gradient rows of phase `phase_r`.

    Returns (first tap t0, count, output-row offset d0 of t0, row step per tap): tap t0 + j
    (j < count) reaches the row i * stride + phase_r from output row i + d0 - j * row_step.
    t * dil == phase_r + pad (mod stride) has solutions iff gcd(stride, dil) divides
    phase_r + pad; they are t0 + j * tap_step, t0 = ((phase_r + pad) / gcd) * tap_inv mod tap_step
    (tap_inv: the inverse of dil / gcd modulo tap_step).
    """
    r = phase_r + pad  # >= 0
    t0 = ((r // tap_gcd) * tap_inv) % tap_step
    count = tl.where(r % tap_gcd == 0, tl.maximum(tl.cdiv(taps - t0, tap_step), 0), 0)
    return t0, count, (r - t0 * dil) // stride, dil // tap_gcd  # r - t0 * dil: a multiple of stride


@triton.jit
def tap_range(r0, count, step, size):
    """[lo, hi): the taps t < count of an axis whose row r0 - t * step lies in [0, size) (step >= 1)."""
    hi = tl.where(r0 >= 0, tl.minimum(r0 // step + 1, count), 0)  # numerators >= 0: any rounding agrees
    over = r0 - size + 1
    lo = tl.where(over > 0, (over + step - 1) // step, 0)
    return lo, tl.maximum(hi, lo)


@triton.jit
def tap_bit_set(p0, q0, row_ok, nh, nw, dp_step, dq_step, P, Q, TAP_BITS: tl.constexpr):
    """Per row, bit th * nw + tw set when tap (th, tw) of the phase reads a pixel inside dY.

    The valid taps of a row are a rectangle [h_lo, h_hi) x [w_lo, w_hi): the w bits, repeated at
    th * nw for th in [h_lo, h_hi) by one multiplication with sum_th 2**(th * nw) (the bits of
    `pattern` in that range). Computed in int64 (nh * nw <= 62), without a vector loop: the bit
    set is then laid out for its use in the main loop, not converted there on every iteration.
    """
    h_lo, h_hi = tap_range(p0, nh, dp_step, P)
    w_lo, w_hi = tap_range(q0, nw, dq_step, Q)
    one = tl.full((), 1, tl.int64)
    pattern = tl.zeros((), tl.int64)  # bit th * nw for every th < nh
    for th in range(0, nh):
        pattern |= one << (th * nw).to(tl.int64)
    w_set = (one << w_hi.to(tl.int64)) - (one << w_lo.to(tl.int64))
    repeat = pattern & ((one << (h_hi * nw).to(tl.int64)) - (one << (h_lo * nw).to(tl.int64)))
    bits = tl.where(row_ok, w_set * repeat, 0)
    if TAP_BITS == 32:
        bits = bits.to(tl.int32)
    return bits


@triton.jit
def conv2d_dgrad_kernel(
    # pointers: output gradient, weight, bias (by input channel), input gradient, pre-activation,
    # residual; bias, z and residual are read or written only under their constexprs
    dy_ptr, w_ptr, bias_ptr, dx_ptr, z_ptr, r_ptr,
    # sizes (channels are per group): input C x H x W, output K x P x Q
    N, C_PER_GROUP, H, W, K_PER_GROUP, P, Q, KH, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # the phase's tap progressions (phase_taps): step, gcd and inverse, along h and w
    tap_step_h, tap_gcd_h, tap_inv_h, tap_step_w, tap_gcd_w, tap_inv_w,
    # strides, in elements
    stride_dyn, stride_dyk, stride_dyh, stride_dyw,
    stride_wk, stride_wc, stride_wh, stride_ww,
    stride_dxn, stride_dxc, stride_dxh, stride_dxw,
    stride_rn, stride_rc, stride_rh, stride_rw,
    # bucketed shape, read only by triton.autotune's key (MCCONV_AUTOTUNE=1)
    bucket_m, bucket_n, bucket_r,
    # meta-parameters
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, STORE_PREACT: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    INDEX_64: tl.constexpr, DOT_PRECISION: tl.constexpr, TAP_BITS: tl.constexpr,
    A_ALIGN: tl.constexpr, B_ALIGN: tl.constexpr, D_ALIGN: tl.constexpr, R_ALIGN: tl.constexpr,
    W_K_MAJOR: tl.constexpr, K_ALIGN: tl.constexpr, C_ALIGN: tl.constexpr,
    PHASE_C: tl.constexpr, PHASE_RUN: tl.constexpr, PHASE_SW: tl.constexpr, RUN_CONTIGUOUS: tl.constexpr,
    W_EDGE: tl.constexpr, GRID_STEP: tl.constexpr, ONE_K_BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """Grid: (cdiv(N * cdiv(H, stride_h) * cdiv(W, stride_w), BLOCK_M) * cdiv(C_PER_GROUP, BLOCK_N)
    * stride_h * stride_w, groups): one block of tiles per stride phase; sub-pixel (PHASE_C > 0):
    one block of tiles (see the module docstring)."""
    num_pid_m = tl.cdiv(N * tl.cdiv(H, stride_h) * tl.cdiv(W, stride_w), BLOCK_M)
    num_pid_n = tl.cdiv(C_PER_GROUP, BLOCK_N)
    phase = tl.program_id(0) // (num_pid_m * num_pid_n)
    phase_h, phase_w, rows_h, rows_w = phase_extent(phase, H, W, stride_h, stride_w)
    M = pixel_count(N, rows_h, rows_w, INDEX_64)  # 0 for a phase beyond an image smaller than the stride
    pid_m, pid_n = grouped_tile_ids(tl.program_id(0) % (num_pid_m * num_pid_n), num_pid_m, num_pid_n, GROUP_M)
    group = tl.program_id(1)
    offs_m, mask_m = tile_offsets(pid_m, M, BLOCK_M, INDEX_64)
    offs_c, mask_c = tile_offsets(pid_n, C_PER_GROUP, BLOCK_N, INDEX_64)
    offs_k = tl.arange(0, BLOCK_K)
    if INDEX_64:
        group = group.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
        # the scalar offsets' strides (tl.cast: a stride of 1 is a constexpr int here)
        stride_dyk = tl.cast(stride_dyk, tl.int64)
        stride_dyh = tl.cast(stride_dyh, tl.int64)
        stride_dyw = tl.cast(stride_dyw, tl.int64)
        stride_wk = tl.cast(stride_wk, tl.int64)
        stride_wh = tl.cast(stride_wh, tl.int64)
        stride_ww = tl.cast(stride_ww, tl.int64)

    # The phase's taps: kh = kh0 + th * step_h (th < nh) reads output row i + dp0 - th * dp_step.
    # Sub-pixel: the window's taps (KH x KW, pad = the window's offset) at stride 1, for all phases.
    if PHASE_C != 0:
        tap_stride_h = 1
        tap_stride_w = 1
    else:
        tap_stride_h = stride_h
        tap_stride_w = stride_w
    kh0, nh, dp0, dp_step = phase_taps(phase_h, pad_h, KH, dil_h, tap_stride_h, tap_step_h, tap_gcd_h, tap_inv_h)
    kw0, nw, dq0, dq_step = phase_taps(phase_w, pad_w, KW, dil_w, tap_stride_w, tap_step_w, tap_gcd_w, tap_inv_w)
    if ONE_K_BLOCK:  # the host found K/g <= BLOCK_K: the block counter below folds away
        k_blocks = 1
    else:
        k_blocks = tl.cdiv(K_PER_GROUP, BLOCK_K)
    # A tile past the phase's rows (phases differ in size) runs no iteration.
    trips = tl.where(pid_m * BLOCK_M < M, nh * nw * k_blocks, 0)

    n, i, j = split_pixels(offs_m, tl.maximum(rows_h, 1), tl.maximum(rows_w, 1))
    p0 = i * GRID_STEP + dp0  # GRID_STEP: dY rows per phase-grid row (1 but sub-pixel)
    q0 = j * GRID_STEP + dq0
    # Per-row offsets of this group's output channels at tap (kh0, kw0); the loop adds the
    # current tap's and channel block's scalar offset. Alignment hints: see the module docstring.
    dy_rows = tl.multiple_of(n * stride_dyn + p0 * stride_dyh + q0 * stride_dyw + group * K_PER_GROUP * stride_dyk,
                             A_ALIGN)
    dy_cols = offs_k * stride_dyk
    w_base = group * K_PER_GROUP * stride_wk + kh0 * stride_wh + kw0 * stride_ww
    if W_K_MAJOR:  # k contiguous: whole copies along k, columns c in aligned strides
        w_rows = offs_k
        w_cols = tl.multiple_of(offs_c * stride_wc, B_ALIGN)
    else:
        w_rows = tl.multiple_of(offs_k * stride_wk, B_ALIGN)
        w_cols = offs_c * stride_wc
    if TAP_BITS != 0:
        bits = tap_bit_set(p0, q0, mask_m, nh, nw, dp_step, dq_step, P, Q, TAP_BITS)[:, None]
    # The scalar offsets advance by one channel block, or to the next tap: one along w (from the
    # tap's last channel block back to its first), else back to the first w tap and one along h.
    dy_next_k = BLOCK_K * stride_dyk
    w_next_k = BLOCK_K * stride_wk
    dy_tap_w = -dq_step * stride_dyw
    w_tap_w = tap_step_w * stride_ww
    dy_next_w = dy_tap_w - (k_blocks - 1) * dy_next_k
    w_next_w = w_tap_w - (k_blocks - 1) * w_next_k
    dy_next_h = -dp_step * stride_dyh - (nw - 1) * dy_tap_w - (k_blocks - 1) * dy_next_k
    w_next_h = tap_step_h * stride_wh - (nw - 1) * w_tap_w - (k_blocks - 1) * w_next_k
    EVEN_K: tl.constexpr = K_ALIGN % BLOCK_K == 0
    EVEN_C: tl.constexpr = C_ALIGN % BLOCK_N == 0
    # mask_c and the channels left of a block, as multiples of C_ALIGN and K_ALIGN the compiler
    # can see (an argument takes no tl.multiple_of): the masks are constant over whole copies
    col_ok = offs_c < (C_PER_GROUP // C_ALIGN) * C_ALIGN
    k_size = (K_PER_GROUP // K_ALIGN) * K_ALIGN

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    kb = 0  # channel block of the tap
    tw = 0  # tap of the phase: (th, tw), bit th * nw + tw of `bits`
    th = 0
    if TAP_BITS != 0:
        tap_bit = tl.full((), 1, bits.dtype)
    dy_off = tl.zeros((), dy_rows.dtype)  # scalar offsets of tap (th, tw), channel block kb
    w_off = (w_base // B_ALIGN) * B_ALIGN  # = w_base; the product shows its alignment (a hint can be folded away)
    for _ in range(0, trips):
        if TAP_BITS != 0:
            row_ok = (bits & tap_bit) != 0  # [BLOCK_M, 1], in the A tile's layout
        else:
            p = p0 - th * dp_step
            q = q0 - tw * dq_step
            row_ok = (mask_m & (p >= 0) & (p < P) & (q >= 0) & (q < Q))[:, None]
        a_ptrs = dy_ptr + dy_off + dy_rows[:, None] + dy_cols[None, :]
        b_ptrs = w_ptr + w_off + w_rows[:, None] + w_cols[None, :]
        if EVEN_K:  # no channel block cut by K/g: rows are the only mask of A, columns of B
            a = tl.load(a_ptrs, mask=row_ok, other=0.0)
            if EVEN_C:
                b = tl.load(b_ptrs)
            else:
                b = tl.load(b_ptrs, mask=col_ok[None, :], other=0.0)
        else:
            k_ok = offs_k < k_size - kb * BLOCK_K
            a = tl.load(a_ptrs, mask=row_ok & k_ok[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = dot_acc(a, b, acc, DOT_PRECISION)
        kb += 1
        next_tap = kb == k_blocks
        kb = tl.where(next_tap, 0, kb)
        tw = tl.where(next_tap, tw + 1, tw)
        next_row = tw == nw
        tw = tl.where(next_row, 0, tw)
        th = tl.where(next_row, th + 1, th)
        if TAP_BITS != 0:
            tap_bit = tl.where(next_tap, tap_bit << 1, tap_bit)
        # Whole 16-byte copies: the hint goes on the value the loop carries back (a loop-carried
        # argument takes none), so the compiler sees the offsets' alignment on every iteration.
        dy_off = tl.multiple_of(dy_off + tl.where(next_tap, tl.where(next_row, dy_next_h, dy_next_w), dy_next_k),
                                A_ALIGN)
        w_off = tl.multiple_of(w_off + tl.where(next_tap, tl.where(next_row, w_next_h, w_next_w), w_next_k),
                               B_ALIGN)

    h = i * stride_h + phase_h
    w = j * stride_w + phase_w
    mask = mask_m[:, None] & col_ok[None, :]
    if PHASE_C != 0:
        # Column (ph, r) of the tile: phase row ph, and r < stride_w * PHASE_C of its run
        # (pw, c) = (r // PHASE_C, r % PHASE_C): dX[n, c, h + ph, w + pw] (h = i * stride_h,
        # phase 0); r up to PHASE_RUN pads the run to a power of two. Pixels past the image's
        # edge (phases with fewer rows) are masked. The run's extent is a constexpr, so that the
        # mask is constant over whole vectors of a contiguous run (RUN_CONTIGUOUS: dX's (and the
        # residual's) (pw, c) at unit steps, stored as r from the row's pixel w); w + pw < W is
        # tested only where some run crosses the image's right edge (W_EDGE).
        RUN_USED: tl.constexpr = PHASE_SW * PHASE_C  # PHASE_SW: stride_w, as a constexpr
        col_h = offs_c // PHASE_RUN
        run = offs_c % PHASE_RUN
        chan = run % PHASE_C
        mask = mask & (run < RUN_USED)[None, :] & ((h[:, None] + col_h[None, :]) < H)
        if W_EDGE:  # W not a multiple of stride_w: the last grid column's runs cross the edge
            mask = mask & ((j * RUN_USED)[:, None] + run[None, :] < W * PHASE_C)
        c_group = PHASE_C
        mask_c = run < RUN_USED
        if RUN_CONTIGUOUS:  # the phase row's offset in whole vectors too (the host's D_ALIGN, R_ALIGN)
            dx_cols = tl.multiple_of(col_h * stride_dxh, D_ALIGN) + run * stride_dxc
            r_cols = tl.multiple_of(col_h * stride_rh, R_ALIGN) + run * stride_rc
        else:
            col_w = run // PHASE_C
            dx_cols = col_h * stride_dxh + col_w * stride_dxw + chan * stride_dxc
            r_cols = col_h * stride_rh + col_w * stride_rw + chan * stride_rc
    else:
        c_group = C_PER_GROUP
        chan = offs_c
        dx_cols = offs_c * stride_dxc
        r_cols = offs_c * stride_rc
    # dX (and z) rows in whole 16-byte copies where the host found them so (D_ALIGN): without the
    # hint a channel count such as 40 makes every store a 2-byte one (and spills registers)
    dx_rows = tl.multiple_of(n * stride_dxn + h * stride_dxh + w * stride_dxw + group * c_group * stride_dxc,
                             D_ALIGN)
    dx_offsets = dx_rows[:, None] + dx_cols[None, :]
    if HAS_RESIDUAL:  # read through its own strides, its rows hinted as dX's (R_ALIGN)
        r_rows = tl.multiple_of(n * stride_rn + h * stride_rh + w * stride_rw + group * c_group * stride_rc,
                                R_ALIGN)
        r_offsets = r_rows[:, None] + r_cols[None, :]
    else:
        r_offsets = dx_offsets  # unused: the epilogue's residual branch is compiled out
    epilogue_store(acc, dx_ptr, z_ptr, dx_offsets, mask, bias_ptr + group * c_group, chan, mask_c,
                   r_ptr, r_offsets, HAS_BIAS, ACTIVATION, STORE_PREACT, HAS_RESIDUAL)
