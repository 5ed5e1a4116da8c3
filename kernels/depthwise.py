"""Depthwise convolution (groups == input channels, any channel multiplier).

Each output channel k reads a single input channel k // CHANNEL_MULT, so the reduction is only
KH*KW long and tl.dot would multiply mostly zeros. Instead each program holds a
BLOCK_M x BLOCK_N tile (output pixels x output channels) and accumulates element-wise products,
vectorised along both axes: along pixels for NCHW, along channels for NHWC.
"""
import triton
import triton.language as tl

from .common import epilogue_store, split_pixels, tile_offsets


@triton.jit
def conv2d_depthwise_kernel(
    # pointers (r_ptr: the residual, any pointer unless HAS_RESIDUAL)
    x_ptr, w_ptr, bias_ptr, y_ptr, z_ptr, r_ptr,
    # sizes
    N, C, H, W, K, P, Q, KH, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # strides, in elements
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wk, stride_wh, stride_ww,
    stride_yn, stride_yk, stride_yh, stride_yw,
    stride_rn, stride_rk, stride_rh, stride_rw,
    # bucketed shape, read only by triton.autotune's key (MCCONV_AUTOTUNE=1)
    bucket_m, bucket_n, bucket_r,
    # meta-parameters
    CHANNEL_MULT: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, STORE_PREACT: tl.constexpr,
    INDEX_64: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid: (cdiv(N*P*Q, BLOCK_M), cdiv(K, BLOCK_N))."""
    if INDEX_64:
        M = tl.cast(N, tl.int64) * P * Q  # the pixel count itself may pass 2**31
    else:
        M = N * P * Q
    offs_m, mask_m = tile_offsets(tl.program_id(0), M, BLOCK_M, INDEX_64)
    offs_k, mask_k = tile_offsets(tl.program_id(1), K, BLOCK_N, INDEX_64)
    in_channel = offs_k // CHANNEL_MULT
    n, p, q = split_pixels(offs_m, P, Q)
    ih0 = p * stride_h - pad_h
    iw0 = q * stride_w - pad_w
    x_channel = (in_channel * stride_xc)[None, :]
    x_pixel = n * stride_xn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tap in range(0, KH * KW):
        kh = tap // KW
        kw = tap % KW
        ih = ih0 + kh * dil_h
        iw = iw0 + kw * dil_w
        # Out-of-image taps read as zero: this mask is the padding.
        row_ok = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        xv = tl.load(x_ptr + (x_pixel + ih * stride_xh + iw * stride_xw)[:, None] + x_channel,
                     mask=row_ok[:, None] & mask_k[None, :], other=0.0)
        wv = tl.load(w_ptr + offs_k * stride_wk + kh * stride_wh + kw * stride_ww, mask=mask_k, other=0.0)
        acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]

    y_offsets = (n * stride_yn + p * stride_yh + q * stride_yw)[:, None] + offs_k[None, :] * stride_yk
    if HAS_RESIDUAL:
        r_offsets = (n * stride_rn + p * stride_rh + q * stride_rw)[:, None] + offs_k[None, :] * stride_rk
    else:
        r_offsets = y_offsets  # unused: the epilogue's residual branch is compiled out
    epilogue_store(acc, y_ptr, z_ptr, y_offsets, mask_m[:, None] & mask_k[None, :],
                   bias_ptr, offs_k, mask_k, r_ptr, r_offsets, HAS_BIAS, ACTIVATION, STORE_PREACT, HAS_RESIDUAL)
