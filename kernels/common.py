"""Device-side building blocks shared by every mcconv kernel.

Written once and called from each kernel so that the index math, the program-id schedule and
the epilogue (bias, activation, cast, store) cannot drift apart between kernel variants.
"""
import triton
import triton.language as tl


@triton.jit
def epilogue_store(acc, y_ptr, z_ptr, y_offsets, mask, bias_ptr, offs_n, mask_n, r_ptr, r_offsets,
                   HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, STORE_PREACT: tl.constexpr,
                   HAS_RESIDUAL: tl.constexpr):
    """The forward kernels' epilogue: bias along the output-channel axis (axis 1), residual,
    activation, cast to y's dtype, masked store.

    `acc` is a [BLOCK_M, BLOCK_N] fp32 tile whose columns are output channels `offs_n`.
    HAS_RESIDUAL adds the residual tile read at `r_ptr + r_offsets` (its own strides and dtype),
    in fp32 after the bias: y = act(acc + bias + residual), a ResNet block's tail. Without it
    `r_ptr` and `r_offsets` are never touched (callers pass any pointer and y's offsets).
    ACTIVATION is a function of kernels/activations.py, or None.
    STORE_PREACT also stores the pre-activation z = acc + bias (+ residual) at the same offsets
    of `z_ptr` (silu's and gelu's backward need z, which y alone does not determine).
    """
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)
        acc = acc + bias.to(tl.float32)[None, :]
    if HAS_RESIDUAL:
        residual = tl.load(r_ptr + r_offsets, mask=mask, other=0.0)
        acc = acc + residual.to(tl.float32)
    if STORE_PREACT:
        tl.store(z_ptr + y_offsets, acc.to(z_ptr.dtype.element_ty), mask=mask)
    if ACTIVATION is not None:
        acc = ACTIVATION(acc)
    tl.store(y_ptr + y_offsets, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def store_tile(acc, ptr, offsets, mask):
    """The backward kernels' epilogue: cast an fp32 tile to the target's dtype and store it."""
    tl.store(ptr + offsets, acc.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def grouped_tile_ids(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Map a linear program id to (tile_m, tile_n), walking GROUP_M row tiles per column sweep.

    Neighbouring programs then share weight tiles (columns) and input rows in L2, as in
    Triton's matmul tutorial.
    """
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def tile_offsets(pid, size, BLOCK: tl.constexpr, INDEX_64: tl.constexpr):
    """Offsets of one tile along an axis, in int64 when any tensor is too large for int32."""
    if INDEX_64:
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    else:
        offs = pid * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < size


@triton.jit
def split_pixels(offs_m, P, Q):
    """Split flat output-pixel indices m = (n * P + p) * Q + q into (n, p, q)."""
    q = offs_m % Q
    npix = offs_m // Q
    return npix // P, npix % P, q


@triton.jit
def pixel_count(N, P, Q, INDEX_64: tl.constexpr):
    """N * P * Q, in int64 when INDEX_64: the pixel count itself may pass 2**31."""
    if INDEX_64:
        count = tl.cast(N, tl.int64) * P * Q
    else:
        count = N * P * Q
    return count


@triton.jit
def phase_extent(phase, H, W, stride_h, stride_w):
    """Stride phase `phase` of an H x W input gradient: pixels h = i * stride_h + phase_h, w likewise.

    Returns (phase_h, phase_w, rows_h, rows_w); rows_* may be 0 where the image is smaller than
    the stride. Every pixel of one phase meets the same taps of a strided convolution.
    """
    phase_h = phase // stride_w
    phase_w = phase % stride_w
    return phase_h, phase_w, tl.cdiv(H - phase_h, stride_h), tl.cdiv(W - phase_w, stride_w)


@triton.jit
def transposed_tap(phase_h, phase_w, kh, kw, pad_h, pad_w, dil_h, dil_w, stride_h, stride_w):
    """Does tap (kh, kw) reach the input-gradient pixels of a phase, and from which output pixel?

    Pixel h = i * stride_h + phase_h took tap kh from output row p = (h + pad_h - kh*dil_h) / stride_h
    when that division is exact, which depends on h only through phase_h; then p = i + dp.
    Returns (ok, dp, dq); dp and dq are meaningful only when ok.
    """
    dh = phase_h + pad_h - kh * dil_h
    dw = phase_w + pad_w - kw * dil_w
    # Zero remainder is the same test under C's and Python's sign rules; exact // then agrees too.
    return (dh % stride_h == 0) & (dw % stride_w == 0), dh // stride_h, dw // stride_w


@triton.jit
def chunk_bounds(split, num_splits, size, BLOCK: tl.constexpr):
    """[start, end) of split `split` of `num_splits` over a reduction of `size`, in whole BLOCKs.

    The shares tile [0, size) exactly and depend only on the launch shape, so the partial sums,
    and their fixed-order combination, are the same on every run.
    """
    chunk = tl.cdiv(tl.cdiv(size, num_splits), BLOCK) * BLOCK
    start = split * chunk
    return start, tl.minimum(start + chunk, size)


@triton.jit
def dot_acc(a, b, acc, DOT_PRECISION: tl.constexpr):
    """acc += a @ b with fp32 accumulation ("tf32" or "ieee" for fp32 operands)."""
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)
