"""3-D direct convolution as an implicit GEMM (forward), with a real depth axis.

    Y[m, k] = sum_r X_col[m, r] * W_col[r, k]
    m = (n, d, p, q) output voxel,  k = output channel,  r = (kd, kh, kw, c) reduction index

conv3d_fwd_kernel is kernels/conv2d_fwd.py's tap-loop mode with one more axis: each program owns
a BLOCK_M x BLOCK_N tile of Y of one group, computes each row's (n, d, p, q) and the input corner
of tap (0, 0, 0) once, then runs conv2d_fwd's _tap_loop with DEPTH: ONE software-pipelined loop
over (tap, channel block), taps walked kd-major, the depth padding a bit of the same per-row tap
bit set as the height and width padding (KD * KH * KW <= 64 taps; more compare coordinates).
Both operands are K-major: the input channels_last_3d (N, D, H, W, C), the weight (K, kD, kH,
kW, C/g) with its input channels at unit stride (the host copies other layouts per call). The
epilogue (bias, residual, activation, pre-activation) is common.py's epilogue_store through the
output's and residual's own 5-D strides. No split reduction and no few-channel fold: the host
sends calls that want those (few channels per group) to the depth im2col instead.
"""
import triton
import triton.language as tl

from .common import epilogue_store, pixel_count, split_pixels
from .conv2d_fwd import _aligned, _tap_loop, _tile


@triton.jit
def conv3d_fwd_kernel(
    # pointers (r_ptr: the residual, any pointer unless HAS_RESIDUAL)
    x_ptr, w_ptr, bias_ptr, y_ptr, z_ptr, r_ptr,
    # sizes (channels are per group)
    N, C_PER_GROUP, D, H, W, K_PER_GROUP, OD, P, Q,
    stride_d, stride_h, stride_w, pad_d, pad_h, pad_w, dil_d, dil_h, dil_w,
    # strides, in elements, (n, c, d, h, w) order (the weight's: (k, c, kd, kh, kw))
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_wk, stride_wc, stride_wd, stride_wh, stride_ww,
    stride_yn, stride_yk, stride_yd, stride_yh, stride_yw,
    stride_rn, stride_rk, stride_rd, stride_rh, stride_rw,
    # bucketed shape, read only by triton.autotune's key (MCCONV_AUTOTUNE=1)
    bucket_m, bucket_n, bucket_r,
    # meta-parameters
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, TAP_BITS: tl.constexpr,
    X_ALIGN: tl.constexpr, W_ALIGN: tl.constexpr, C_ALIGN: tl.constexpr, Y_DENSE: tl.constexpr, R_DENSE: tl.constexpr,
    Y_ALIGN: tl.constexpr, R_ALIGN: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, STORE_PREACT: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    INDEX_64: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """Grid: (cdiv(N*OD*P*Q, BLOCK_M) * cdiv(K_PER_GROUP, BLOCK_N), groups).

    Y_DENSE / R_DENSE: the output's (residual's) voxels are dense in (n, d, p, q) order, each
    voxel stride_yw apart (a channels_last_3d tensor): its rows are then offs_m * stride_yw,
    and the epilogue splits no voxel index (fewer registers while the accumulator is live).
    Y_ALIGN / R_ALIGN: as conv2d_fwd_kernel's (channels_last_3d rows, the group's first channel
    included, and K/g in multiples of that many elements: K = 100 stored 2 bytes at a time
    without it)."""
    M = pixel_count(N * OD, P, Q, INDEX_64)
    offs_m, mask_m, offs_n, mask_n, group = _tile(M, K_PER_GROUP, INDEX_64, BLOCK_M, BLOCK_N, GROUP_M)
    C = _aligned(C_PER_GROUP, C_ALIGN)
    sxn = _aligned(stride_xn, X_ALIGN)
    sxd = _aligned(stride_xd, X_ALIGN)
    sxh = _aligned(stride_xh, X_ALIGN)
    sxw = _aligned(stride_xw, X_ALIGN)
    swk = _aligned(stride_wk, W_ALIGN)
    swd = _aligned(stride_wd, W_ALIGN)
    swh = _aligned(stride_wh, W_ALIGN)
    sww = _aligned(stride_ww, W_ALIGN)

    # Per-row bases, once: the voxel's image, and its tap (0, 0, 0) corner. Rows past the last
    # voxel address the last voxel (in bounds; masked or never stored).
    n, od, p, q = _split_voxels(tl.where(mask_m, offs_m, M - 1), OD, P, Q)
    id0 = od * stride_d - pad_d
    ih0 = p * stride_h - pad_h
    iw0 = q * stride_w - pad_w
    x_rows = group * C * stride_xc + n * sxn + id0 * sxd + ih0 * sxh + iw0 * sxw
    # Columns past K/g read column 0 (always in bounds) instead of a masked load; never stored.
    w_cols = (group * K_PER_GROUP + tl.where(mask_n, offs_n, 0)) * swk

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = _tap_loop(acc, x_ptr, w_ptr, x_rows, w_cols, id0, ih0, iw0, mask_m, 0, KD * KH * KW * tl.cdiv(C, BLOCK_K),
                    C, D, H, W, dil_d, dil_h, dil_w, sxd, sxh, sxw, stride_xc, swd, swh, sww, stride_wc,
                    KD, KH, KW, True, TAP_BITS, C_ALIGN, INDEX_64, DOT_PRECISION, BLOCK_K)

    # The epilogue through the output's (and residual's) 5-D strides.
    if Y_DENSE:
        row_y = offs_m * stride_yw
    else:
        n, od, p, q = _split_voxels(offs_m, OD, P, Q)
        row_y = n * stride_yn + od * stride_yd + p * stride_yh + q * stride_yw
    row_y = tl.multiple_of(row_y + group * K_PER_GROUP * stride_yk, Y_ALIGN)
    y_offsets = row_y[:, None] + offs_n[None, :] * stride_yk
    if HAS_RESIDUAL:
        if R_DENSE:
            row_r = offs_m * stride_rw
        else:
            n, od, p, q = _split_voxels(offs_m, OD, P, Q)
            row_r = n * stride_rn + od * stride_rd + p * stride_rh + q * stride_rw
        row_r = tl.multiple_of(row_r + group * K_PER_GROUP * stride_rk, R_ALIGN)
        r_offsets = row_r[:, None] + offs_n[None, :] * stride_rk
    else:
        r_offsets = y_offsets  # unused: the epilogue's residual branch is compiled out
    store_n = offs_n < _aligned(K_PER_GROUP, Y_ALIGN)  # K/g a multiple of Y_ALIGN: whole vectors
    epilogue_store(acc, y_ptr, z_ptr, y_offsets, mask_m[:, None] & store_n[None, :],
                   bias_ptr + group * K_PER_GROUP, offs_n, mask_n, r_ptr, r_offsets,
                   HAS_BIAS, ACTIVATION, STORE_PREACT, HAS_RESIDUAL)


@triton.jit
def _split_voxels(offs_m, OD, P, Q):
    """Split flat output-voxel indices m = ((n * OD + d) * P + p) * Q + q into (n, d, p, q)."""
    nd, p, q = split_pixels(offs_m, P, Q)
    n = nd // OD
    return n, nd - n * OD, p, q
