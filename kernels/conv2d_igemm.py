"""Implicit-GEMM convolution: the direct kernel and, as a constexpr specialisation, the 1x1 GEMM.

The convolution is a matrix product that is never materialised:

    Y[m, k] = sum_r X_col[m, r] * W_col[r, k]
    m = (n, p, q) output pixel,  k = output channel,  r = (kh, kw, c) reduction index

Each program owns a BLOCK_M x BLOCK_N tile of Y (pixels x output channels) of one group and
walks the reduction tap by tap (kh, kw), BLOCK_K input channels at a time, gathering X_col's
rows straight from the input through its strides. Zero padding is a load mask, so there is no
padded copy and no im2col buffer; NCHW, NHWC and non-contiguous inputs differ only in strides.

IS_1X1 turns the same source into a plain GEMM over [N*H*W, C] x [C, K] (1x1 kernel, stride 1,
no padding): no tap loop, no halo masks; the launcher dispatches it under its own name and
tile table ("gemm_1x1").

TRANSPOSED computes the input gradient (dgrad) with the same source, as the transposed direct
convolution of the output gradient dY with the weight:

    dX[(n, h, w), c] = sum_{kh, kw, k} dY[n, k, p, q] * W[k, c, kh, kw]
    p = (h + pad_h - kh * dil_h) / stride_h,  q likewise,  taken only when exact and in range

The launcher passes dY as `x`, dX as `y`, the sizes with the roles exchanged (C_PER_GROUP = out
channels per group, H x W = dY's size, K_PER_GROUP = in channels per group, P x Q = dX's size)
and the weight's out/in channel strides swapped. Rows are split by stride phase (h % stride_h,
w % stride_w) so that a tap either reaches every row of a tile or none of them: whole taps are
skipped instead of masking most of every tile. IS_1X1 with TRANSPOSED is the plain GEMM
dY[N*H*W, K] x W[K, C].

HAS_RESIDUAL (forward only) adds a residual tensor of the output's shape, read through its own
strides (`r_ptr`, `stride_r*`), in the epilogue before the activation: y = act(conv + bias + r).
"""
import triton
import triton.language as tl

from .common import (dot_acc, epilogue_store, grouped_tile_ids, phase_extent, pixel_count, split_pixels,
                     tile_offsets, transposed_tap)


@triton.jit
def _reduce_channels(acc, x_ptr, x_rows, row_ok, w_tap, offs_c, mask_n, C_PER_GROUP, stride_xc, stride_wc,
                     BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    """acc += X[rows, c] @ W[c, cols] over the reduction channels of one tap, BLOCK_K at a time."""
    for c0 in range(0, C_PER_GROUP, BLOCK_K):
        c_ok = offs_c < C_PER_GROUP - c0
        a = tl.load(x_ptr + x_rows[:, None] + (c0 + offs_c)[None, :] * stride_xc,
                    mask=row_ok[:, None] & c_ok[None, :], other=0.0)
        b = tl.load(w_tap + (c0 + offs_c)[:, None] * stride_wc,
                    mask=c_ok[:, None] & mask_n[None, :], other=0.0)
        acc = dot_acc(a, b, acc, DOT_PRECISION, DOT_IN_FP32)
    return acc


@triton.jit
def conv2d_igemm_kernel(
    # pointers (r_ptr: the residual, any pointer unless HAS_RESIDUAL)
    x_ptr, w_ptr, bias_ptr, y_ptr, z_ptr, r_ptr,
    # sizes (channels are per group)
    N, C_PER_GROUP, H, W, K_PER_GROUP, P, Q, KH, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # strides, in elements
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wk, stride_wc, stride_wh, stride_ww,
    stride_yn, stride_yk, stride_yh, stride_yw,
    stride_rn, stride_rk, stride_rh, stride_rw,
    # bucketed shape, read only by triton.autotune's key (MCCONV_AUTOTUNE=1)
    bucket_m, bucket_n, bucket_r,
    # meta-parameters
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, STORE_PREACT: tl.constexpr, IS_1X1: tl.constexpr,
    TRANSPOSED: tl.constexpr, INDEX_64: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """Grid: (cdiv(N*P*Q, BLOCK_M) * cdiv(K_PER_GROUP, BLOCK_N), groups).

    TRANSPOSED without IS_1X1: axis 0 is (cdiv(N * cdiv(P, stride_h) * cdiv(Q, stride_w), BLOCK_M)
    * cdiv(K_PER_GROUP, BLOCK_N)) * stride_h * stride_w, one block of tiles per stride phase.
    """
    if TRANSPOSED and not IS_1X1:
        num_pid_m = tl.cdiv(N * tl.cdiv(P, stride_h) * tl.cdiv(Q, stride_w), BLOCK_M)
        num_pid_n = tl.cdiv(K_PER_GROUP, BLOCK_N)
        phase = tl.program_id(0) // (num_pid_m * num_pid_n)
        phase_h, phase_w, rows_h, rows_w = phase_extent(phase, P, Q, stride_h, stride_w)
        M = pixel_count(N, rows_h, rows_w, INDEX_64)  # 0 for a phase beyond an image smaller than the stride
        pid_m, pid_n = grouped_tile_ids(tl.program_id(0) % (num_pid_m * num_pid_n), num_pid_m, num_pid_n,
                                        GROUP_M)
    else:
        if INDEX_64:
            M = tl.cast(N, tl.int64) * P * Q  # the pixel count itself may pass 2**31
        else:
            M = N * P * Q
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(K_PER_GROUP, BLOCK_N)
        pid_m, pid_n = grouped_tile_ids(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
    group = tl.program_id(1)
    offs_m, mask_m = tile_offsets(pid_m, M, BLOCK_M, INDEX_64)
    offs_n, mask_n = tile_offsets(pid_n, K_PER_GROUP, BLOCK_N, INDEX_64)
    offs_c = tl.arange(0, BLOCK_K)
    if INDEX_64:
        group = group.to(tl.int64)
        offs_c = offs_c.to(tl.int64)

    # Channel blocks of this group.
    x_ptr += group * C_PER_GROUP * stride_xc
    if TRANSPOSED:
        # Strides arrive swapped: the group's block of out channels is on the reduction axis.
        w_ptr += group * C_PER_GROUP * stride_wc
    else:
        w_ptr += group * K_PER_GROUP * stride_wk
    out_channel = group * K_PER_GROUP + offs_n

    if TRANSPOSED and not IS_1X1:
        n, ph, pw = split_pixels(offs_m, tl.maximum(rows_h, 1), tl.maximum(rows_w, 1))
        p = ph * stride_h + phase_h  # the row's pixel (h, w) in the input gradient
        q = pw * stride_w + phase_w
    else:
        n, p, q = split_pixels(offs_m, P, Q)
    x_pixel = n * stride_xn
    w_col = offs_n[None, :] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    if not IS_1X1 and not TRANSPOSED:
        ih0 = p * stride_h - pad_h
        iw0 = q * stride_w - pad_w
    for tap in range(0, KH * KW):  # a single tap when IS_1X1 (the launcher passes KH = KW = 1)
        if IS_1X1:
            acc = _reduce_channels(acc, x_ptr, x_pixel + p * stride_xh + q * stride_xw, mask_m, w_ptr + w_col,
                                   offs_c, mask_n, C_PER_GROUP, stride_xc, stride_wc,
                                   BLOCK_K, DOT_PRECISION, DOT_IN_FP32)
        elif TRANSPOSED:
            kh = tap // KW
            kw = tap % KW
            tap_ok, dp, dq = transposed_tap(phase_h, phase_w, kh, kw, pad_h, pad_w, dil_h, dil_w,
                                            stride_h, stride_w)
            if tap_ok:  # uniform over the tile: every row is of this phase
                ih = ph + dp
                iw = pw + dq
                # Output-gradient pixels outside dY contribute nothing: the padding of the forward.
                row_ok = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                acc = _reduce_channels(acc, x_ptr, x_pixel + ih * stride_xh + iw * stride_xw, row_ok,
                                       w_ptr + kh * stride_wh + kw * stride_ww + w_col,
                                       offs_c, mask_n, C_PER_GROUP, stride_xc, stride_wc,
                                       BLOCK_K, DOT_PRECISION, DOT_IN_FP32)
        else:
            kh = tap // KW
            kw = tap % KW
            ih = ih0 + kh * dil_h
            iw = iw0 + kw * dil_w
            # Out-of-image taps read as zero: this mask is the padding.
            row_ok = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            acc = _reduce_channels(acc, x_ptr, x_pixel + ih * stride_xh + iw * stride_xw, row_ok,
                                   w_ptr + kh * stride_wh + kw * stride_ww + w_col,
                                   offs_c, mask_n, C_PER_GROUP, stride_xc, stride_wc,
                                   BLOCK_K, DOT_PRECISION, DOT_IN_FP32)

    y_offsets = (n * stride_yn + p * stride_yh + q * stride_yw)[:, None] + out_channel[None, :] * stride_yk
    if HAS_RESIDUAL:  # forward only (the launchers never set it with TRANSPOSED)
        r_offsets = (n * stride_rn + p * stride_rh + q * stride_rw)[:, None] + out_channel[None, :] * stride_rk
    else:
        r_offsets = y_offsets  # unused: the epilogue's residual branch is compiled out
    epilogue_store(acc, y_ptr, z_ptr, y_offsets, mask_m[:, None] & mask_n[None, :],
                   bias_ptr + group * K_PER_GROUP, offs_n, mask_n, r_ptr, r_offsets,
                   HAS_BIAS, ACTIVATION, STORE_PREACT, HAS_RESIDUAL)
