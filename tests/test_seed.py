"""The textbook's multi-channel cross-correlation examples, run on mcconv's kernels.

The integer examples are exact in every supported dtype (all values and partial sums are
small integers), so they are compared with torch.equal, not a tolerance.
"""
import pytest
import torch

import mcconv
from reference import DEVICE, assert_conv_close, reference_conv2d

# Exact for integers up to 256, so bf16 is checked too: under the interpreter the launcher
# computes its dot in fp32, which is what makes it correct there.
SEED_DTYPES = [torch.float32, torch.float16, torch.bfloat16]

X_MULTI = [[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]],
           [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]
K_MULTI = [[[0.0, 1.0], [2.0, 3.0]], [[1.0, 2.0], [3.0, 4.0]]]


def tensor(values, dtype):
    """A tensor of the given values on the test device."""
    return torch.tensor(values, dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("dtype", SEED_DTYPES, ids=str)
def test_corr2d(dtype):
    # The single-channel example that precedes the multi-channel section of the text.
    X = tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]], dtype)
    K = tensor([[0.0, 1.0], [2.0, 3.0]], dtype)
    assert torch.equal(mcconv.corr2d(X, K), tensor([[19.0, 25.0], [37.0, 43.0]], dtype))


@pytest.mark.parametrize("dtype", SEED_DTYPES, ids=str)
def test_corr2d_multi_in(dtype):
    X, K = tensor(X_MULTI, dtype), tensor(K_MULTI, dtype)
    Y = mcconv.corr2d_multi_in(X, K)
    assert torch.equal(Y, tensor([[56.0, 72.0], [104.0, 120.0]], dtype))
    # The text's definition: one corr2d per channel, summed.
    assert torch.equal(Y, mcconv.corr2d(X[0], K[0]) + mcconv.corr2d(X[1], K[1]))


@pytest.mark.parametrize("dtype", SEED_DTYPES, ids=str)
def test_corr2d_multi_in_out(dtype):
    X, K = tensor(X_MULTI, dtype), tensor(K_MULTI, dtype)
    K = torch.stack((K, K + 1, K + 2), 0)
    assert K.shape == (3, 2, 2, 2)
    expected = tensor([[[56.0, 72.0], [104.0, 120.0]],
                       [[76.0, 100.0], [148.0, 172.0]],
                       [[96.0, 128.0], [192.0, 224.0]]], dtype)
    assert torch.equal(mcconv.corr2d_multi_in_out(X, K), expected)


def test_corr2d_multi_in_out_1x1():
    X = torch.normal(0, 1, (3, 3, 3)).to(DEVICE)
    K = torch.normal(0, 1, (2, 3, 1, 1)).to(DEVICE)
    Y1 = mcconv.corr2d_multi_in_out_1x1(X, K)
    Y2 = mcconv.corr2d_multi_in_out(X, K)
    assert Y1.shape == (2, 3, 3)
    assert float(torch.abs(Y1 - Y2).sum()) < 1e-6
    assert mcconv.explain(X, K).kernel == "gemm_1x1"
    # Both run the same kernel, so also check against the text's definition: a matrix product.
    expected = (K.double().reshape(2, 3) @ X.double().reshape(3, 9)).reshape(2, 3, 3)
    assert_conv_close(Y1, expected.cpu(), torch.float32, 3)


def test_corr2d_multi_in_out_on_random_data_matches_reference():
    X = torch.randn(5, 9, 7).to(DEVICE)
    K = torch.randn(3, 5, 3, 2).to(DEVICE)
    assert_conv_close(mcconv.corr2d_multi_in_out(X, K), reference_conv2d(X, K), torch.float32, 5 * 3 * 2)


@pytest.mark.parametrize("function, X_shape, K_shape, name", [
    (mcconv.corr2d, (3, 3, 3), (2, 2), "X"),
    (mcconv.corr2d, (3, 3), (1, 2, 2), "K"),
    (mcconv.corr2d_multi_in, (3, 3), (2, 2, 2), "X"),
    (mcconv.corr2d_multi_in, (2, 3, 3), (1, 2, 2, 2), "K"),
    (mcconv.corr2d_multi_in_out, (1, 2, 3, 3), (3, 2, 2, 2), "X"),
    (mcconv.corr2d_multi_in_out, (2, 3, 3), (2, 2, 2), "K"),
    (mcconv.corr2d_multi_in_out_1x1, (3, 3, 3), (2, 3, 3, 3), "K"),
    (mcconv.corr2d_multi_in_out_1x1, (3, 3, 3), (2, 3), "K"),
], ids=lambda v: getattr(v, "__name__", None))
def test_seed_functions_reject_wrong_shapes(function, X_shape, K_shape, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        function(torch.zeros(X_shape, device=DEVICE), torch.zeros(K_shape, device=DEVICE))
