"""Gradients of the depthwise convolution (groups == input channels, any channel multiplier).

Output channel k = c * CHANNEL_MULT + j reads only input channel c, so both gradients are short
per-channel sums that tl.dot would pad with zeros; like the forward, they accumulate element-wise
products on [pixels x channels] tiles, vectorised along pixels (NCHW) or channels (NHWC).

depthwise_dgrad_kernel: dX[n, c, h, w] = sum_{j, kh, kw} dY[n, c*MULT + j, p, q] * W[c*MULT + j, kh, kw]
with p = (h + pad_h - kh*dil_h) / stride_h when exact; rows are split by stride phase as in the
implicit-GEMM dgrad (kernels/conv2d_dgrad.py), so a tap is taken or skipped for a whole tile.

depthwise_wgrad_kernel: dW[k, kh, kw] = sum_{n, p, q} dY[n, k, p, q] * X[n, k // MULT, ih, iw], one
tap per program, the pixels split over the SPLIT grid axis into fp32 partial sums that
split_sum_kernel combines in a fixed order (bitwise reproducible).
"""
import triton
import triton.language as tl

from .common import (chunk_bounds, phase_extent, pixel_count, split_pixels, store_tile, tile_offsets,
                     transposed_tap)


@triton.jit
def depthwise_dgrad_kernel(
    # pointers: output gradient, weight, input gradient
    dy_ptr, w_ptr, dx_ptr,
    # sizes: input C x H x W, output K x P x Q
    N, C, H, W, K, P, Q, KH, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # strides, in elements
    stride_dyn, stride_dyk, stride_dyh, stride_dyw,
    stride_wk, stride_wh, stride_ww,
    stride_dxn, stride_dxc, stride_dxh, stride_dxw,
    # bucketed shape, read only by triton.autotune's key (MCCONV_AUTOTUNE=1)
    bucket_m, bucket_n, bucket_r,
    # meta-parameters
    CHANNEL_MULT: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid: (cdiv(N * cdiv(H, stride_h) * cdiv(W, stride_w), BLOCK_M) * stride_h * stride_w, cdiv(C, BLOCK_N))."""
    num_pid_m = tl.cdiv(N * tl.cdiv(H, stride_h) * tl.cdiv(W, stride_w), BLOCK_M)
    phase_h, phase_w, rows_h, rows_w = phase_extent(tl.program_id(0) // num_pid_m, H, W, stride_h, stride_w)
    offs_m, mask_m = tile_offsets(tl.program_id(0) % num_pid_m, pixel_count(N, rows_h, rows_w, INDEX_64),
                                  BLOCK_M, INDEX_64)
    offs_c, mask_c = tile_offsets(tl.program_id(1), C, BLOCK_N, INDEX_64)
    n, ih, iw = split_pixels(offs_m, tl.maximum(rows_h, 1), tl.maximum(rows_w, 1))
    dy_pixel = n * stride_dyn
    first_k = offs_c * CHANNEL_MULT

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tap in range(0, KH * KW):
        kh = tap // KW
        kw = tap % KW
        tap_ok, dp, dq = transposed_tap(phase_h, phase_w, kh, kw, pad_h, pad_w, dil_h, dil_w, stride_h, stride_w)
        if tap_ok:  # uniform over the tile: every row is of this phase
            p = ih + dp
            q = iw + dq
            # Output-gradient pixels outside dY contribute nothing: the padding of the forward.
            row_ok = mask_m & (p >= 0) & (p < P) & (q >= 0) & (q < Q)
            rows = (dy_pixel + p * stride_dyh + q * stride_dyw)[:, None]
            w_tap = w_ptr + kh * stride_wh + kw * stride_ww
            for j in range(0, CHANNEL_MULT):
                k = first_k + j
                dyv = tl.load(dy_ptr + rows + (k * stride_dyk)[None, :],
                              mask=row_ok[:, None] & mask_c[None, :], other=0.0)
                wv = tl.load(w_tap + k * stride_wk, mask=mask_c, other=0.0)
                acc += dyv.to(tl.float32) * wv.to(tl.float32)[None, :]

    h = ih * stride_h + phase_h
    w = iw * stride_w + phase_w
    dx_offsets = (n * stride_dxn + h * stride_dxh + w * stride_dxw)[:, None] + (offs_c * stride_dxc)[None, :]
    store_tile(acc, dx_ptr, dx_offsets, mask_m[:, None] & mask_c[None, :])


@triton.jit
def depthwise_wgrad_kernel(
    # pointers: output gradient, input, weight gradient (or its fp32 partial buffer)
    dy_ptr, x_ptr, dw_ptr,
    # sizes: input C x H x W, output K x P x Q
    N, C, H, W, K, P, Q, KH, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # strides, in elements (stride_ds: between the SPLIT partial buffers, 0 when SPLIT == 1)
    stride_dyn, stride_dyk, stride_dyh, stride_dyw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_ds, stride_dk, stride_dh, stride_dw,
    # bucketed shape, read only by triton.autotune's key (MCCONV_AUTOTUNE=1)
    bucket_m, bucket_n, bucket_r,
    # meta-parameters
    CHANNEL_MULT: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid: (cdiv(K, BLOCK_N), KH * KW, SPLIT); BLOCK_M pixels of the reduction per step."""
    offs_k, mask_k = tile_offsets(tl.program_id(0), K, BLOCK_N, INDEX_64)
    tap = tl.program_id(1)
    kh = tap // KW
    kw = tap % KW
    split = tl.program_id(2)
    offs_r = tl.arange(0, BLOCK_M)
    if INDEX_64:
        split = split.to(tl.int64)
        offs_r = offs_r.to(tl.int64)
    dy_channel = (offs_k * stride_dyk)[None, :]
    x_channel = ((offs_k // CHANNEL_MULT) * stride_xc)[None, :]

    start, end = chunk_bounds(tl.program_id(2), tl.num_programs(2), pixel_count(N, P, Q, INDEX_64), BLOCK_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(start, end, BLOCK_M):
        pixel = r0 + offs_r
        pixel_ok = pixel < end
        n, p, q = split_pixels(pixel, P, Q)
        ih = p * stride_h - pad_h + kh * dil_h
        iw = q * stride_w - pad_w + kw * dil_w
        # Taps that fell on the zero padding contribute nothing.
        x_ok = pixel_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        dyv = tl.load(dy_ptr + (n * stride_dyn + p * stride_dyh + q * stride_dyw)[:, None] + dy_channel,
                      mask=pixel_ok[:, None] & mask_k[None, :], other=0.0)
        xv = tl.load(x_ptr + (n * stride_xn + ih * stride_xh + iw * stride_xw)[:, None] + x_channel,
                     mask=x_ok[:, None] & mask_k[None, :], other=0.0)
        acc += dyv.to(tl.float32) * xv.to(tl.float32)
    # One reduction across the tile's pixels at the end; its order is fixed by the compiled kernel.
    total = tl.sum(acc, axis=0)
    tl.store(dw_ptr + split * stride_ds + kh * stride_dh + kw * stride_dw + offs_k * stride_dk,
             total.to(dw_ptr.dtype.element_ty), mask=mask_k)
