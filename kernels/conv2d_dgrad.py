"""Input gradient (dgrad) of the direct convolution: the transposed implicit GEMM.

    dX[(n, h, w), c] = sum_{kh, kw, k} dY[n, k, p, q] * W[k, c, kh, kw]
    p = (h + pad_h - kh * dil_h) / stride_h,  q likewise,  taken only when exact and in range

Each program owns a BLOCK_M x BLOCK_N tile of dX (input pixels x input channels of one group)
and reduces over the taps and the group's output channels, BLOCK_K at a time. Rows are split
by stride phase (h % stride_h, w % stride_w) so that a tap either reaches every row of a tile
or none of them: whole taps are skipped instead of masking most of every tile, and there is no
zero-inserted copy of dY. Output-gradient pixels outside dY (the forward's padding) are masked.
"""
import triton
import triton.language as tl

from .common import (dot_acc, grouped_tile_ids, phase_extent, pixel_count, split_pixels, store_tile, tile_offsets,
                     transposed_tap)


@triton.jit
def conv2d_dgrad_kernel(
    # pointers: output gradient, weight, input gradient
    dy_ptr, w_ptr, dx_ptr,
    # sizes (channels are per group): input C x H x W, output K x P x Q
    N, C_PER_GROUP, H, W, K_PER_GROUP, P, Q, KH, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # strides, in elements
    stride_dyn, stride_dyk, stride_dyh, stride_dyw,
    stride_wk, stride_wc, stride_wh, stride_ww,
    stride_dxn, stride_dxc, stride_dxh, stride_dxw,
    # bucketed shape, read only by triton.autotune's key (MCCONV_AUTOTUNE=1)
    bucket_m, bucket_n, bucket_r,
    # meta-parameters
    INDEX_64: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """Grid: (cdiv(N * cdiv(H, stride_h) * cdiv(W, stride_w), BLOCK_M) * cdiv(C_PER_GROUP, BLOCK_N)
    * stride_h * stride_w, groups): one block of tiles per stride phase."""
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

    # This group's block of output channels (the reduction) and of input channels (the columns).
    dy_ptr += group * K_PER_GROUP * stride_dyk
    w_ptr += group * K_PER_GROUP * stride_wk
    n, ih, iw = split_pixels(offs_m, tl.maximum(rows_h, 1), tl.maximum(rows_w, 1))
    dy_pixel = n * stride_dyn
    w_col = (offs_c * stride_wc)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tap in range(0, KH * KW):
        kh = tap // KW
        kw = tap % KW
        tap_ok, dp, dq = transposed_tap(phase_h, phase_w, kh, kw, pad_h, pad_w, dil_h, dil_w, stride_h, stride_w)
        if tap_ok:  # uniform over the tile: every row is of this phase
            p = ih + dp
            q = iw + dq
            row_ok = mask_m & (p >= 0) & (p < P) & (q >= 0) & (q < Q)
            dy_rows = (dy_pixel + p * stride_dyh + q * stride_dyw)[:, None]
            w_tap = w_ptr + kh * stride_wh + kw * stride_ww + w_col
            for k0 in range(0, K_PER_GROUP, BLOCK_K):
                k_ok = offs_k < K_PER_GROUP - k0
                a = tl.load(dy_ptr + dy_rows + ((k0 + offs_k) * stride_dyk)[None, :],
                            mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                b = tl.load(w_tap + ((k0 + offs_k) * stride_wk)[:, None], mask=k_ok[:, None] & mask_c[None, :],
                            other=0.0)
                acc = dot_acc(a, b, acc, DOT_PRECISION)

    h = ih * stride_h + phase_h
    w = iw * stride_w + phase_w
    in_channel = group * C_PER_GROUP + offs_c
    dx_offsets = (n * stride_dxn + h * stride_dxh + w * stride_dxw)[:, None] + (in_channel * stride_dxc)[None, :]
    store_tile(acc, dx_ptr, dx_offsets, mask_m[:, None] & mask_c[None, :])
