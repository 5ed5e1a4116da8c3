"""The 1x1 convolution (stride 1, no padding) as a GEMM: Y[m, k] = sum_c X[m, c] * W[c, k] per group.

m = (n, h, w) runs over the pixels, read through X's and Y's strides, so NCHW, NHWC and views
need no copy; the reduction is the group's input channels. This is the textbook's "1x1
convolution as a matrix multiply", and it serves two operations:

* the forward of a 1x1 layer (W read as its (K, C/g) matrix, transposed by strides);
* the input gradient of a 1x1 layer, dX = dY @ W per group: dY plays X, dX plays Y and the
  weight is read with its two channel axes exchanged.

`stride_wg` is the distance between two groups' weight blocks: along the output axis in the
forward, along the reduction axis in the input gradient, so both are the same kernel.

The main loop is the tutorial GEMM's: one software-pipelined loop over BLOCK_K blocks of the
reduction, each operand addressed as a scalar base pointer (advanced by one block per step)
plus a loop-invariant offset tile computed once before the loop (no division, modulo or mask
arithmetic per element inside it). Rows and columns past the problem wrap around (modulo M and
the column count) instead of being masked, so the loads need no row or column masks; only the
last block of a reduction that BLOCK_K does not divide is masked, and EVEN_K (BLOCK_K divides
the reduction) drops that mask too. The store is masked.

Alignment facts come from the host (mcconv.ops.forward.Gemm1x1.gemm_arguments, once per plan):
pixel axes that every operand walks with one stride are merged first (dense NHWC: one pixel
axis; NCHW: (h, w) into one), then for each operand which axis is contiguous (`*_LAYOUT`: 1 =
the channel / column axis, 2 = the pixel / reduction-row axis, 0 = no fact) and the power of
two (`*_ALIGN`, elements) that divides the offsets along the other axis, the group offsets and
the extents where the wrapped axis restarts. They become tl.multiple_of / tl.max_contiguous
hints, so that MobileNetV2's 24-channel rows (a pixel stride of 24 elements, which the compiler
cannot prove 16-byte aligned by itself) load with 16-byte cp.async, and NCHW operands load along
their contiguous pixel axis (M-major A: 16-byte copies when H*W is a multiple of 8 elements, 8-byte
ones at 14x14). `C_ALIGN` is the power of two dividing the reduction length: the last block's
mask then holds per vector.

SPLIT > 1 shares a tile's reduction among SPLIT programs (grid axis 2) for layers with fewer
tiles than SMs: each stores its fp32 partial tile, without the epilogue, into a buffer of SPLIT
copies of the output [SPLIT, N*P*Q, K] (dense, channels fastest); a second pass adds them in
order and applies the epilogue (the forward's split epilogue), so the result is deterministic.
"""
import triton
import triton.language as tl

from .common import dot_acc, epilogue_store, grouped_tile_ids, pixel_count, split_pixels, tile_offsets


@triton.jit
def exact_multiple(value, UNIT: tl.constexpr):
    """`value`, which the host checked is a multiple of UNIT, written so that the compiler sees it is."""
    if UNIT > 1:
        value = (value // UNIT) * UNIT
    return value


@triton.jit
def hinted_offsets(rows, cols, LAYOUT: tl.constexpr, ALIGN: tl.constexpr):
    """rows[:, None] + cols[None, :] with the host's alignment facts attached.

    LAYOUT 1: along the columns the tile runs contiguously in chunks of ALIGN that start at
    multiples of ALIGN (every `rows` entry and every chunk start is a multiple); LAYOUT 2: the
    same along the rows; LAYOUT 0: no facts (the compiler's own analysis). The hints go on the
    sum, an operation of this function: a hint on an argument (a block argument) would be lost.
    """
    offsets = rows[:, None] + cols[None, :]
    if LAYOUT == 1:
        offsets = tl.max_contiguous(tl.multiple_of(offsets, [1, ALIGN]), [1, ALIGN])
    elif LAYOUT == 2:
        offsets = tl.max_contiguous(tl.multiple_of(offsets, [ALIGN, 1]), [ALIGN, 1])
    return offsets


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
    # alignment facts (see the module docstring), one layout and alignment per operand
    X_LAYOUT: tl.constexpr, X_ALIGN: tl.constexpr, W_LAYOUT: tl.constexpr, W_ALIGN: tl.constexpr,
    Y_LAYOUT: tl.constexpr, Y_ALIGN: tl.constexpr, R_LAYOUT: tl.constexpr, R_ALIGN: tl.constexpr,
    C_ALIGN: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """Grid: (cdiv(N*P*Q, BLOCK_M) * cdiv(K_PER_GROUP, BLOCK_N), groups, SPLIT).

    SPLIT > 1: program (., ., s) reduces its share of the BLOCK_K blocks and stores the fp32
    partial tile, no epilogue, at `y_ptr + s * M * K + y offsets` (y_ptr: an fp32 buffer of SPLIT
    copies of the output laid out by the y strides); a second pass adds the shares in order.
    """
    M = pixel_count(N, P, Q, INDEX_64)
    pid_m, pid_n = grouped_tile_ids(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(K_PER_GROUP, BLOCK_N), GROUP_M)
    group = tl.program_id(1)
    offs_m, _ = tile_offsets(pid_m, M, BLOCK_M, INDEX_64)
    offs_n, _ = tile_offsets(pid_n, K_PER_GROUP, BLOCK_N, INDEX_64)
    offs_k = tl.arange(0, BLOCK_K)
    if INDEX_64:
        group = group.to(tl.int64)
        offs_k = offs_k.to(tl.int64)

    # Wrapped rows and columns: every load address is valid without a row or column mask.
    n, p, q = split_pixels(offs_m % M, P, Q)
    cols = offs_n % K_PER_GROUP
    x_pixels = n * stride_xn + p * stride_xh + q * stride_xw
    x_group = group * C_PER_GROUP * stride_xc
    if X_LAYOUT == 2:
        a_offs = hinted_offsets(x_pixels, x_group + offs_k * stride_xc, X_LAYOUT, X_ALIGN)
    else:
        a_offs = hinted_offsets(x_pixels + x_group, offs_k * stride_xc, X_LAYOUT, X_ALIGN)
    w_group = group * stride_wg
    if W_LAYOUT == 1:  # columns contiguous (the input gradient's W[k, c])
        b_offs = hinted_offsets(w_group + offs_k * stride_wc, cols * stride_wk, W_LAYOUT, W_ALIGN)
    else:  # the reduction contiguous (the forward's W[k, c] read as [c, k])
        b_offs = hinted_offsets(offs_k * stride_wc, w_group + cols * stride_wk, W_LAYOUT, W_ALIGN)

    # The main loop: scalar bases advance by one block; the offset tiles stay.
    EVEN_K: tl.constexpr = C_ALIGN % BLOCK_K == 0
    c_total = exact_multiple(C_PER_GROUP, C_ALIGN)
    k_first = 0
    k_end = tl.cdiv(C_PER_GROUP, BLOCK_K)
    if SPLIT > 1:  # this program's share of the blocks (possibly none: its partial is then zero)
        share = tl.cdiv(k_end, SPLIT)
        k_first = tl.program_id(2) * share
        k_end = tl.minimum(k_first + share, k_end)
        if INDEX_64:
            k_first = k_first.to(tl.int64)
    a_base = x_ptr + k_first * BLOCK_K * stride_xc
    b_base = w_ptr + k_first * BLOCK_K * stride_wc
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(k_first, k_end):
        if EVEN_K:
            a = tl.load(a_base + a_offs)
            b = tl.load(b_base + b_offs)
        else:
            k_ok = offs_k < c_total - kb * BLOCK_K
            a = tl.load(a_base + a_offs, mask=k_ok[None, :], other=0.0)
            b = tl.load(b_base + b_offs, mask=k_ok[:, None], other=0.0)
        acc = dot_acc(a, b, acc, DOT_PRECISION)
        a_base += BLOCK_K * stride_xc
        b_base += BLOCK_K * stride_wc

    # The epilogue: this group's output channels, masked to the problem.
    if Y_LAYOUT == 2:
        mask_m = offs_m < exact_multiple(M, Y_ALIGN)
    else:
        mask_m = offs_m < M
    if Y_LAYOUT == 1:
        mask_n = offs_n < exact_multiple(K_PER_GROUP, Y_ALIGN)
    else:
        mask_n = offs_n < K_PER_GROUP
    out_channel = group * K_PER_GROUP + offs_n
    y_offsets = hinted_offsets(n * stride_yn + p * stride_yh + q * stride_yw, out_channel * stride_yk,
                               Y_LAYOUT, Y_ALIGN)
    if SPLIT > 1:
        partial = y_ptr + tl.program_id(2).to(y_offsets.dtype) * (M * K_PER_GROUP * tl.num_programs(1))
        tl.store(partial + y_offsets, acc, mask=mask_m[:, None] & mask_n[None, :])
    else:
        if HAS_RESIDUAL:
            r_offsets = hinted_offsets(n * stride_rn + p * stride_rh + q * stride_rw, out_channel * stride_rk,
                                       R_LAYOUT, R_ALIGN)
        else:
            r_offsets = y_offsets  # unused: the epilogue's residual branch is compiled out
        epilogue_store(acc, y_ptr, z_ptr, y_offsets, mask_m[:, None] & mask_n[None, :],
                       bias_ptr + group * K_PER_GROUP, offs_n, mask_n, r_ptr, r_offsets,
                       HAS_BIAS, ACTIVATION, STORE_PREACT, HAS_RESIDUAL)
