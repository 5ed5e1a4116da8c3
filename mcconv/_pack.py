"""Weight packing for the direct kernel: (K, C/g, KH, KW) weights re-laid out as (KH, KW, C/g, K).

A contiguous conv weight has neither of the direct kernel's weight-tile axes (reduction channel,
output channel) at unit stride, so every weight tile would be a strided gather. Packed, output
channels are contiguous (and Triton specialises that unit stride), so weight tiles load as
vectors. The kernel reads weights through strides: a packed weight is just a view with other
strides, no kernel change.

The copy is made in the call that uses it and never cached. A cache keyed on the weight's
identity, storage and version counter went stale when a weight was written through ``.data``
(which bumps no version counter) and returned the old weights' result; no key computable from a
tensor's metadata can see every write, so none is kept.
"""
import os

import torch

PACK_ENV = "MCCONV_PACK_WEIGHTS"


def enabled() -> bool:
    """MCCONV_PACK_WEIGHTS=0 turns packing off (read when a shape is first planned)."""
    return os.environ.get(PACK_ENV, "1") != "0"


def worth_packing(strides) -> bool:
    """Pack when neither output channels (dim 0) nor input channels (dim 1) are at unit stride."""
    return strides[0] != 1 and strides[1] != 1


def packed_strides(shape) -> tuple:
    """Strides of the packed view: logical (K, C/g, KH, KW) over memory ordered (KH, KW, C/g, K)."""
    k, c, kh, kw = shape
    return (1, k, kw * c * k, c * k)


def packed(weight: torch.Tensor) -> torch.Tensor:
    """A fresh packed copy of ``weight`` (strides :func:`packed_strides`), made from its current values."""
    return weight.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)
