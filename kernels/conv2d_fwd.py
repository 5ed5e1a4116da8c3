"""Direct convolution as an implicit GEMM (forward).

The convolution is a matrix product that is never materialised:

    Y[m, k] = sum_r X_col[m, r] * W_col[r, k]
    m = (n, p, q) output pixel,  k = output channel,  r = (kh, kw, c) reduction index

Each program owns a BLOCK_M x BLOCK_N tile of Y (pixels x output channels) of one group and
walks the reduction tap by tap (kh, kw), BLOCK_K input channels at a time, gathering X_col's
rows straight from the input through its strides. Zero padding is a load mask, so there is no
padded copy and no im2col buffer; NCHW, NHWC and non-contiguous inputs differ only in strides.

HAS_RESIDUAL adds a residual tensor of the output's shape, read through its own strides
(`r_ptr`, `stride_r*`), in the epilogue before the activation: y = act(conv + bias + r).
"""
import triton
import triton.language as tl

from .common import dot_acc, epilogue_store, grouped_tile_ids, pixel_count, split_pixels, tile_offsets


@triton.jit
def reduce_channels(acc, x_ptr, x_rows, row_ok, w_tap, offs_c, mask_n, C_PER_GROUP, stride_xc, stride_wc,
                    BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """acc += X[rows, c] @ W[c, cols] over the reduction channels of one tap, BLOCK_K at a time."""
    for c0 in range(0, C_PER_GROUP, BLOCK_K):
        c_ok = offs_c < C_PER_GROUP - c0
        a = tl.load(x_ptr + x_rows[:, None] + (c0 + offs_c)[None, :] * stride_xc,
                    mask=row_ok[:, None] & c_ok[None, :], other=0.0)
        b = tl.load(w_tap + (c0 + offs_c)[:, None] * stride_wc,
                    mask=c_ok[:, None] & mask_n[None, :], other=0.0)
        acc = dot_acc(a, b, acc, DOT_PRECISION)
    return acc


@triton.jit
def conv2d_fwd_kernel(
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
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, STORE_PREACT: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    INDEX_64: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """Grid: (cdiv(N*P*Q, BLOCK_M) * cdiv(K_PER_GROUP, BLOCK_N), groups)."""
    M = pixel_count(N, P, Q, INDEX_64)
    pid_m, pid_n = grouped_tile_ids(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(K_PER_GROUP, BLOCK_N), GROUP_M)
    group = tl.program_id(1)
    offs_m, mask_m = tile_offsets(pid_m, M, BLOCK_M, INDEX_64)
    offs_n, mask_n = tile_offsets(pid_n, K_PER_GROUP, BLOCK_N, INDEX_64)
    offs_c = tl.arange(0, BLOCK_K)
    if INDEX_64:
        group = group.to(tl.int64)
        offs_c = offs_c.to(tl.int64)

    # This group's block of input channels and of output channels (weight rows).
    x_ptr += group * C_PER_GROUP * stride_xc
    w_ptr += group * K_PER_GROUP * stride_wk
    n, p, q = split_pixels(offs_m, P, Q)
    x_pixel = n * stride_xn
    w_col = offs_n[None, :] * stride_wk
    ih0 = p * stride_h - pad_h
    iw0 = q * stride_w - pad_w
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tap in range(0, KH * KW):
        kh = tap // KW
        kw = tap % KW
        ih = ih0 + kh * dil_h
        iw = iw0 + kw * dil_w
        # Out-of-image taps read as zero: this mask is the padding.
        row_ok = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        acc = reduce_channels(acc, x_ptr, x_pixel + ih * stride_xh + iw * stride_xw, row_ok,
                              w_ptr + kh * stride_wh + kw * stride_ww + w_col,
                              offs_c, mask_n, C_PER_GROUP, stride_xc, stride_wc, BLOCK_K, DOT_PRECISION)

    out_channel = group * K_PER_GROUP + offs_n
    y_offsets = (n * stride_yn + p * stride_yh + q * stride_yw)[:, None] + out_channel[None, :] * stride_yk
    if HAS_RESIDUAL:
        r_offsets = (n * stride_rn + p * stride_rh + q * stride_rw)[:, None] + out_channel[None, :] * stride_rk
    else:
        r_offsets = y_offsets  # unused: the epilogue's residual branch is compiled out
    epilogue_store(acc, y_ptr, z_ptr, y_offsets, mask_m[:, None] & mask_n[None, :],
                   bias_ptr + group * K_PER_GROUP, offs_n, mask_n, r_ptr, r_offsets,
                   HAS_BIAS, ACTIVATION, STORE_PREACT, HAS_RESIDUAL)
