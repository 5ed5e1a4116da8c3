"""Device-side building blocks shared by every mcconv kernel.

Written once and called from each kernel so that the index math, the program-id schedule and
the epilogue (bias, activation, cast, store) cannot drift apart between kernel variants.
"""
import triton
import triton.language as tl


@triton.jit
def apply_activation(x, ACTIVATION: tl.constexpr):
    """Element-wise activation chosen at compile time ("none", "relu", "silu", "gelu")."""
    if ACTIVATION == "relu":
        x = tl.maximum(x, 0.0)
    elif ACTIVATION == "silu":
        x = x * tl.sigmoid(x)
    elif ACTIVATION == "gelu":
        # erf form, matching torch.nn.functional.gelu's default (approximate="none").
        x = 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
    return x


@triton.jit
def epilogue_store(acc, y_ptr, y_offsets, mask, bias_ptr, offs_n, mask_n,
                   HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr):
    """Bias along the output-channel axis (axis 1), activation, cast to y's dtype, masked store.

    `acc` is a [BLOCK_M, BLOCK_N] fp32 tile whose columns are output channels `offs_n`.
    """
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)
        acc = acc + bias.to(tl.float32)[None, :]
    acc = apply_activation(acc, ACTIVATION)
    tl.store(y_ptr + y_offsets, acc.to(y_ptr.dtype.element_ty), mask=mask)


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
def dot_acc(a, b, acc, DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    """acc += a @ b with fp32 accumulation.

    DOT_IN_FP32 upcasts the operands first: the launcher sets it under Triton's interpreter,
    whose bf16 tl.dot returns wrong numbers without an error.
    """
    if DOT_IN_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)
