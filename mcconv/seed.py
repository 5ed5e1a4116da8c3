"""The textbook's multi-channel cross-correlations, backed by mcconv's kernels.

Shapes follow the text: no batch axis, X is ``c_i x h x w`` and the kernel ``c_i x k_h x k_w``
(one output channel) or ``c_o x c_i x k_h x k_w``.
"""
from .ops import conv2d_forward


def _expect_dims(name: str, t, dims: int, layout: str) -> None:
    if t.dim() != dims:
        raise ValueError(f"{name}: expected a {dims}-D tensor ({layout}), got shape {tuple(t.shape)}")


def corr2d(X, K):
    """Single-channel 2-D cross-correlation: X (h, w), K (k_h, k_w) -> (h - k_h + 1, w - k_w + 1)."""
    _expect_dims("X", X, 2, "h, w")
    _expect_dims("K", K, 2, "k_h, k_w")
    return conv2d_forward(X[None], K[None, None])[0]


def corr2d_multi_in(X, K):
    """Cross-correlation summed over input channels: X (c_i, h, w), K (c_i, k_h, k_w) -> (h', w')."""
    _expect_dims("X", X, 3, "c_i, h, w")
    _expect_dims("K", K, 3, "c_i, k_h, k_w")
    return conv2d_forward(X, K[None])[0]


def corr2d_multi_in_out(X, K):
    """One kernel per output channel: X (c_i, h, w), K (c_o, c_i, k_h, k_w) -> (c_o, h', w')."""
    _expect_dims("X", X, 3, "c_i, h, w")
    _expect_dims("K", K, 4, "c_o, c_i, k_h, k_w")
    return conv2d_forward(X, K)


def corr2d_multi_in_out_1x1(X, K):
    """The 1x1 convolution as a matrix multiply (the GEMM kernel): K (c_o, c_i, 1, 1)."""
    _expect_dims("X", X, 3, "c_i, h, w")
    _expect_dims("K", K, 4, "c_o, c_i, 1, 1")
    if tuple(K.shape[2:]) != (1, 1):
        raise ValueError(f"K: expected a 1x1 kernel (c_o, c_i, 1, 1), got shape {tuple(K.shape)}")
    return conv2d_forward(X, K)
