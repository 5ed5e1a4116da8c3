"""Weight packing for the direct kernel: (K, C/g, KH, KW) weights re-laid out as (KH, KW, C/g, K).

A contiguous conv weight has neither of the direct kernel's weight-tile axes (reduction channel,
output channel) at unit stride, so every weight tile is a strided gather. Packed, output
channels are contiguous (and Triton specialises that unit stride), so weight tiles load as
vectors. The packed copy is cached against the weight's identity, storage and version counter,
so inference packs once and training (in-place optimizer steps bump the version) repacks after
each update. The kernel reads weights through strides: a packed weight is just a view with
other strides, no kernel change.
"""
import os
import weakref

import torch

PACK_ENV = "MCCONV_PACK_WEIGHTS"

# id(weight) -> (weakref to weight, data_ptr, version, packed view)
_cache: dict = {}


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


def _repack(weight: torch.Tensor) -> torch.Tensor:
    return weight.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)


def packed(weight: torch.Tensor) -> torch.Tensor:
    """The packed view of ``weight`` (strides :func:`packed_strides`), cached while it is current."""
    if weight.is_cuda and torch.cuda.is_current_stream_capturing():
        return _repack(weight)  # inside a CUDA graph the copy must be captured, so it replays with the graph
    try:
        version = weight._version
    except RuntimeError:  # inference tensors keep no version counter: nothing safe to cache against
        return _repack(weight)
    key = id(weight)
    entry = _cache.get(key)
    pointer = weight.data_ptr()
    if entry is not None and entry[0]() is weight and entry[1] == pointer and entry[2] == version:
        return entry[3]
    result = _repack(weight)
    _cache[key] = (weakref.ref(weight, lambda _ref, key=key: _cache.pop(key, None)), pointer, version, result)
    return result
