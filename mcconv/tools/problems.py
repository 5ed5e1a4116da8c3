"""Tensors for a suite's layer, one factory for every tool (plan, bench, tune, inspect).

Inputs are unit-variance; weights are scaled by 1/sqrt(fan-in) so that outputs stay near unit
variance whatever the layer's width, and fp16 cannot overflow on wide layers.
"""
import math

import torch


DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
LAYOUTS = ("channels_last", "contiguous")


def memory_format(layout: str, channels_last=torch.channels_last):
    """The torch memory format of ``layout`` ("channels_last" is ``channels_last``, e.g. a 3-D
    layer's ``torch.channels_last_3d``)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    return channels_last if layout == "channels_last" else torch.contiguous_format


def dtype_of(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {name!r}") from None


def layer_tensors(layer, dtype: str, layout: str, *, bias: bool = False, device="meta",
                  requires_grad: bool = False, seed: int | None = 0):
    """(input, weight, bias or None) of ``layer`` (a :class:`Conv` or :class:`Conv3dLayer`);
    activations and weights laid out as ``layout``.

    On the ``meta`` device only shapes, strides and dtypes exist (nothing is allocated).
    """
    dt = dtype_of(dtype)
    fmt = memory_format(layout, layer.memory_format)
    if torch.device(device).type == "meta":
        x = torch.empty(layer.input_shape, dtype=dt, device=device).to(memory_format=fmt)
        w = torch.empty(layer.weight_shape, dtype=dt, device=device).to(memory_format=fmt)
        b = torch.empty(layer.k, dtype=dt, device=device) if bias else None
    else:
        if seed is not None:
            torch.manual_seed(seed)
        fan_in = math.prod(layer.weight_shape[1:])
        x = torch.randn(layer.input_shape, device=device, dtype=dt).to(memory_format=fmt)
        w = (torch.randn(layer.weight_shape, device=device) / math.sqrt(fan_in)).to(dt).to(memory_format=fmt)
        b = torch.randn(layer.k, device=device, dtype=dt) if bias else None
    for t in (x, w, b):
        if t is not None and requires_grad:
            t.requires_grad_(True)
    return x, w, b
