"""Weight gradient (wgrad) of the convolution as an implicit GEMM with a split reduction.

    dW[k, c, kh, kw] = sum_{n, p, q} dY[n, k, p, q] * X[n, c, p*stride_h - pad_h + kh*dil_h, ...]

For each tap (kh, kw) this is a GEMM [K, N*P*Q] x [N*P*Q, C] per group whose reduction runs over
every output pixel: long (batch x image) while the output is small (the weight). Each program
owns a BLOCK_M x BLOCK_N tile (out x in channels of one group) of one tap and one share of the
pixels; the SPLIT grid axis spreads the pixels over programs so that small weights still fill
the GPU. Programs write fp32 partial sums to a [SPLIT, K, C/groups, KH, KW] buffer that
split_sum_kernel (kernels/reduce.py) adds up in a fixed order, so the gradient is bitwise the
same on every run (no atomics). With SPLIT == 1 the tile goes straight to dW in its dtype.

Both operands are gathered through strides as in the forward (padding is a load mask), so NCHW,
NHWC and non-contiguous tensors need no copy. IS_1X1 (1x1 kernel, stride 1, no padding; derived
from the geometry by the launcher) drops the halo masks: X's rows are then just the output pixels.
"""
import triton
import triton.language as tl

from .common import chunk_bounds, dot_acc, grouped_tile_ids, pixel_count, split_pixels, store_tile, tile_offsets


@triton.jit
def conv2d_wgrad_kernel(
    # pointers: output gradient, input, weight gradient (or its fp32 partial buffer)
    dy_ptr, x_ptr, dw_ptr,
    # sizes (channels are per group)
    N, C_PER_GROUP, H, W, K_PER_GROUP, P, Q, KH, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # strides, in elements (stride_ds: between the SPLIT partial buffers, 0 when SPLIT == 1)
    stride_dyn, stride_dyk, stride_dyh, stride_dyw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_ds, stride_dk, stride_dc, stride_dh, stride_dw,
    # bucketed shape, read only by triton.autotune's key (MCCONV_AUTOTUNE=1)
    bucket_m, bucket_n, bucket_r,
    # meta-parameters
    IS_1X1: tl.constexpr, INDEX_64: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """Grid: (cdiv(K_PER_GROUP, BLOCK_M) * cdiv(C_PER_GROUP, BLOCK_N) * KH * KW, groups, SPLIT)."""
    num_pid_m = tl.cdiv(K_PER_GROUP, BLOCK_M)
    num_pid_n = tl.cdiv(C_PER_GROUP, BLOCK_N)
    tiles = num_pid_m * num_pid_n
    # Neighbouring programs share the tap, hence the rows of X they gather.
    tap = tl.program_id(0) // tiles
    pid_m, pid_n = grouped_tile_ids(tl.program_id(0) % tiles, num_pid_m, num_pid_n, GROUP_M)
    kh = tap // KW
    kw = tap % KW
    group = tl.program_id(1)
    split = tl.program_id(2)
    offs_k, mask_k = tile_offsets(pid_m, K_PER_GROUP, BLOCK_M, INDEX_64)
    offs_c, mask_c = tile_offsets(pid_n, C_PER_GROUP, BLOCK_N, INDEX_64)
    offs_r = tl.arange(0, BLOCK_K)
    if INDEX_64:
        group = group.to(tl.int64)
        split = split.to(tl.int64)
        offs_r = offs_r.to(tl.int64)
    dy_ptr += group * K_PER_GROUP * stride_dyk
    x_ptr += group * C_PER_GROUP * stride_xc
    dy_channel = (offs_k * stride_dyk)[:, None]
    x_channel = (offs_c * stride_xc)[None, :]

    M = pixel_count(N, P, Q, INDEX_64)
    start, end = chunk_bounds(tl.program_id(2), tl.num_programs(2), M, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(start, end, BLOCK_K):
        pixel = r0 + offs_r
        pixel_ok = pixel < end
        n, p, q = split_pixels(pixel, P, Q)
        a = tl.load(dy_ptr + dy_channel + (n * stride_dyn + p * stride_dyh + q * stride_dyw)[None, :],
                    mask=mask_k[:, None] & pixel_ok[None, :], other=0.0)
        if IS_1X1:
            x_ok = pixel_ok
            x_rows = n * stride_xn + p * stride_xh + q * stride_xw
        else:
            ih = p * stride_h - pad_h + kh * dil_h
            iw = q * stride_w - pad_w + kw * dil_w
            # Taps that fell on the zero padding contribute nothing.
            x_ok = pixel_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            x_rows = n * stride_xn + ih * stride_xh + iw * stride_xw
        b = tl.load(x_ptr + x_rows[:, None] + x_channel, mask=x_ok[:, None] & mask_c[None, :], other=0.0)
        acc = dot_acc(a, b, acc, DOT_PRECISION)

    out_k = group * K_PER_GROUP + offs_k
    dw_offsets = (split * stride_ds + kh * stride_dh + kw * stride_dw
                  + (out_k * stride_dk)[:, None] + (offs_c * stride_dc)[None, :])
    store_tile(acc, dw_ptr, dw_offsets, mask_k[:, None] & mask_c[None, :])  # fp32 partials, or dW's dtype
