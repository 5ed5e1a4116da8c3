"""Deterministic reductions of the backward pass, and the fused activation backward.

No atomics anywhere: a long reduction is split over programs into an fp32 partial buffer
[SPLIT, T], and split_sum_kernel adds the SPLIT rows in increasing order. The split count and the
shares depend only on the shapes, so the same inputs give bitwise the same gradients on every run.
"""
import triton
import triton.language as tl

from .common import chunk_bounds, pixel_count, split_pixels, tile_offsets


@triton.jit
def split_sum_kernel(
    # pointers: fp32 partial sums [SPLIT, T] (contiguous), contiguous output [T]
    part_ptr, out_ptr,
    # sizes
    SPLIT, T,
    # meta-parameters
    BLOCK: tl.constexpr, INDEX_64: tl.constexpr,
):
    """out[i] = sum_{s = 0 .. SPLIT-1} part[s, i], in that order, cast to out's dtype. Grid: (cdiv(T, BLOCK),)."""
    offs, mask = tile_offsets(tl.program_id(0), T, BLOCK, INDEX_64)
    ptrs = part_ptr + offs  # advanced row by row: pointer arithmetic cannot overflow s * T in int32
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for _ in range(0, SPLIT):
        acc += tl.load(ptrs, mask=mask, other=0.0)
        ptrs += T
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def bias_act_grad_kernel(
    # pointers: dL/dy, the saved activation input (z, or y for relu), dL/dz, bias gradient (or
    # its fp32 partial buffer [SPLIT, K])
    gy_ptr, saved_ptr, gz_ptr, db_ptr,
    # sizes (logical N, K, P, Q)
    N, K, P, Q,
    # strides, in elements
    stride_gyn, stride_gyk, stride_gyh, stride_gyw,
    stride_sn, stride_sk, stride_sh, stride_sw,
    stride_gzn, stride_gzk, stride_gzh, stride_gzw,
    stride_ds,
    # bucketed shape, read only by triton.autotune's key (MCCONV_AUTOTUNE=1)
    bucket_m, bucket_n, bucket_r,
    # meta-parameters
    ACTIVATION_GRAD: tl.constexpr, STORE_GRAD: tl.constexpr, REDUCE_BIAS: tl.constexpr, INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dL/dz = dL/dy * act'(saved) (STORE_GRAD) and/or its sum over n, p, q per channel (REDUCE_BIAS).

    Grid: (cdiv(K, BLOCK_N), SPLIT): each program walks its share of the N*P*Q pixels for
    BLOCK_N channels (the element-wise use takes SPLIT = cdiv(N*P*Q, BLOCK_M), one tile each).
    ACTIVATION_GRAD is the derivative of kernels/activations.py that reads `saved` (y or z, as
    the activation's definition says); with None `saved_ptr` is not read and dL/dz is dL/dy.
    """
    offs_k, mask_k = tile_offsets(tl.program_id(0), K, BLOCK_N, INDEX_64)
    split = tl.program_id(1)
    offs_r = tl.arange(0, BLOCK_M)
    if INDEX_64:
        split = split.to(tl.int64)
        offs_r = offs_r.to(tl.int64)
    start, end = chunk_bounds(tl.program_id(1), tl.num_programs(1), pixel_count(N, P, Q, INDEX_64), BLOCK_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(start, end, BLOCK_M):
        pixel = r0 + offs_r
        n, p, q = split_pixels(pixel, P, Q)
        mask = (pixel < end)[:, None] & mask_k[None, :]
        g = tl.load(gy_ptr + (n * stride_gyn + p * stride_gyh + q * stride_gyw)[:, None]
                    + (offs_k * stride_gyk)[None, :], mask=mask, other=0.0).to(tl.float32)
        if ACTIVATION_GRAD is not None:
            saved = tl.load(saved_ptr + (n * stride_sn + p * stride_sh + q * stride_sw)[:, None]
                            + (offs_k * stride_sk)[None, :], mask=mask, other=0.0)
            g = g * ACTIVATION_GRAD(saved)
        if STORE_GRAD:
            tl.store(gz_ptr + (n * stride_gzn + p * stride_gzh + q * stride_gzw)[:, None]
                     + (offs_k * stride_gzk)[None, :], g.to(gz_ptr.dtype.element_ty), mask=mask)
        if REDUCE_BIAS:
            acc += g  # masked lanes loaded 0
    if REDUCE_BIAS:
        total = tl.sum(acc, axis=0)
        tl.store(db_ptr + split * stride_ds + offs_k, total.to(db_ptr.dtype.element_ty), mask=mask_k)
