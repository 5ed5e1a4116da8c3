"""The 1x1 convolution (stride 1, no padding) as a GEMM: Y[m, k] = sum_c X[m, c] * W[c, k] per group.

m = (n, h, w) runs over the pixels, read through X's and Y's strides, so NCHW, NHWC and views
need no copy; the reduction is the group's input channels. This is the textbook's "1x1
convolution as a matrix multiply", and it serves two operations:

* the forward of a 1x1 layer (W read as its (K, C/g) matrix, transposed by strides);
* the input gradient of a 1x1 layer, dX = dY @ W per group: dY plays X, dX plays Y and the
  weight is read with its two channel axes exchanged.

`stride_wg` is the distance between two groups' weight blocks: along the output axis in the
forward, along the reduction axis in the input gradient, so both are the same kernel.
"""
import triton
import triton.language as tl

from .common import dot_acc, epilogue_store, grouped_tile_ids, pixel_count, split_pixels, tile_offsets


@triton.jit
def conv1x1_gemm_kernel(
    # pointers (r_ptr: the residual, any pointer unless HAS_RESIDUAL)
    x_ptr, w_ptr, bias_ptr, y_ptr, z_ptr, r_ptr,
    # sizes: M = N * P * Q pixels, reduction C_PER_GROUP, columns K_PER_GROUP (per group)
    N, P, Q, C_PER_GROUP, K_PER_GROUP,
    # strides, in elements (stride_wc: along the reduction, stride_wk: along the columns)
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wk, stride_wc, stride_wg,
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

    x_ptr += group * C_PER_GROUP * stride_xc
    w_ptr += group * stride_wg
    n, p, q = split_pixels(offs_m, P, Q)
    x_rows = (n * stride_xn + p * stride_xh + q * stride_xw)[:, None]
    w_cols = (offs_n * stride_wk)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for c0 in range(0, C_PER_GROUP, BLOCK_K):
        c_ok = offs_c < C_PER_GROUP - c0
        a = tl.load(x_ptr + x_rows + (c0 + offs_c)[None, :] * stride_xc, mask=mask_m[:, None] & c_ok[None, :],
                    other=0.0)
        b = tl.load(w_ptr + (c0 + offs_c)[:, None] * stride_wc + w_cols, mask=c_ok[:, None] & mask_n[None, :],
                    other=0.0)
        acc = dot_acc(a, b, acc, DOT_PRECISION)

    out_channel = group * K_PER_GROUP + offs_n
    y_offsets = (n * stride_yn + p * stride_yh + q * stride_yw)[:, None] + out_channel[None, :] * stride_yk
    if HAS_RESIDUAL:
        r_offsets = (n * stride_rn + p * stride_rh + q * stride_rw)[:, None] + out_channel[None, :] * stride_rk
    else:
        r_offsets = y_offsets  # unused: the epilogue's residual branch is compiled out
    epilogue_store(acc, y_ptr, z_ptr, y_offsets, mask_m[:, None] & mask_n[None, :],
                   bias_ptr + group * K_PER_GROUP, offs_n, mask_n, r_ptr, r_offsets,
                   HAS_BIAS, ACTIVATION, STORE_PREACT, HAS_RESIDUAL)
