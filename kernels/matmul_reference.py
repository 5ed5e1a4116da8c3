"""A plain fp16 GEMM in the shape of Triton's matrix-multiplication tutorial: the yardstick of `mcconv inspect`.

`mcconv inspect` compiles a kernel for a target GPU and reads its SASS (tensor-core
instructions, the main loop's instruction mix, loads, pipeline buffers, registers, occupancy).
Those figures mean little on their own; they are compared with this kernel's, the textbook
Triton GEMM: pointer arithmetic over strided operands, one K loop with masked loads,
``tl.dot`` into an fp32 accumulator, grouped program ordering for L2 reuse, and a cast to the
output's dtype on store. Nothing in mcconv launches it.

    C[M, N] = A[M, K] @ B[K, N]

Calibration (sm_90, fp16, BLOCK 128x128x64, GROUP_SIZE_M 8, 8 warps, 3 stages): the main
loop holds 4 ``HGMMA.64x128x16`` per warp and 108 other instructions with triton 3.9 (99 with
3.6), an issue pressure of 0.44 (0.40); see ``mcconv/tools/sass.py``.

Device code only: the host side (grid, launch) belongs to the caller, e.g.
``grid = (cdiv(M, BLOCK_SIZE_M) * cdiv(N, BLOCK_SIZE_N),)``.
"""
import triton
import triton.language as tl


@triton.jit
def matmul_reference_kernel(
    # operands: A is M x K, B is K x N, C is M x N (any strides, in elements)
    a_ptr, b_ptr, c_ptr,
    M, N, K,
    stride_am, stride_ak,
    stride_bk, stride_bn,
    stride_cm, stride_cn,
    # meta-parameters
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
):
    """One BLOCK_SIZE_M x BLOCK_SIZE_N tile of C per program; grid: (cdiv(M, BM) * cdiv(N, BN),)."""
    # Grouped ordering: consecutive programs sweep GROUP_SIZE_M row tiles down one column of
    # tiles before moving right, so a column's B tiles and a group's A rows are reused from L2.
    pid = tl.program_id(axis=0)
    tiles_m = tl.cdiv(M, BLOCK_SIZE_M)
    tiles_n = tl.cdiv(N, BLOCK_SIZE_N)
    programs_per_group = GROUP_SIZE_M * tiles_n
    group = pid // programs_per_group
    group_first_m = group * GROUP_SIZE_M
    group_rows = min(tiles_m - group_first_m, GROUP_SIZE_M)  # the last group may be short
    tile_m = group_first_m + ((pid % programs_per_group) % group_rows)
    tile_n = (pid % programs_per_group) // group_rows

    # Rows and columns wrap modulo M and N: out-of-range rows re-read valid memory and are
    # masked only at the store, which keeps the loads in the loop free of row/column masks.
    rows = (tile_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)) % M
    cols = (tile_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)) % N
    ks = tl.arange(0, BLOCK_SIZE_K)
    # The offsets are summed before they meet the base pointer, as in the tutorial: the form
    # changes the address arithmetic the compiler emits, and the calibration is for this one.
    a_tile = a_ptr + (rows[:, None] * stride_am + ks[None, :] * stride_ak)
    b_tile = b_ptr + (ks[:, None] * stride_bk + cols[None, :] * stride_bn)

    # The single reduction loop, which the compiler software-pipelines num_stages deep.
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for step in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
        k_left = K - step * BLOCK_SIZE_K  # only the last step is partial
        a = tl.load(a_tile, mask=ks[None, :] < k_left, other=0.0)
        b = tl.load(b_tile, mask=ks[:, None] < k_left, other=0.0)
        acc = tl.dot(a, b, acc)
        a_tile += BLOCK_SIZE_K * stride_ak
        b_tile += BLOCK_SIZE_K * stride_bk

    out = acc.to(tl.float16)
    out_rows = tile_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    out_cols = tile_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    c_tile = c_ptr + out_rows[:, None] * stride_cm + out_cols[None, :] * stride_cn
    tl.store(c_tile, out, mask=(out_rows[:, None] < M) & (out_cols[None, :] < N))
