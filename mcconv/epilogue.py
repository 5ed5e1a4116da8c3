"""The fused epilogue's activations, each defined once.

An :class:`Activation` names its torch reference and which tensor its derivative reads (the
output y, or the pre-activation z that the forward then stores beside y); its device formulas
are the functions ``<name>`` and ``<name>_grad`` of ``kernels/activations.py``, which the kernels
receive as constexprs. Validation, the kernels, the autograd's saved tensor, the command line's
choices and the tests all read :data:`ACTIVATIONS`: a new activation is an entry here and its
two device formulas there.
"""
from dataclasses import dataclass
from typing import Callable

import torch.nn.functional as F


@dataclass(frozen=True)
class Activation:
    """One activation of the epilogue: ``y = act(conv(x) + bias + residual)``."""

    name: str
    reference: Callable  # torch's function, the definition the device formula must match
    derivative_reads: str  # "output" (y) or "preact" (z) -- what the backward needs saved

    @property
    def needs_preact(self) -> bool:
        """Whether the backward needs z (then the forward stores it beside y)."""
        return self.derivative_reads == "preact"

    def device(self):
        """The @triton.jit forward formula (kernels are imported on first use, not at import)."""
        from mcconv._kernels import activations

        return getattr(activations, self.name)

    def device_grad(self):
        """The @triton.jit derivative, a function of the saved tensor (y or z), in fp32."""
        from mcconv._kernels import activations

        return getattr(activations, f"{self.name}_grad")

    def __str__(self) -> str:
        return self.name


ACTIVATIONS = {a.name: a for a in (
    Activation("relu", F.relu, "output"),
    Activation("silu", F.silu, "preact"),
    Activation("gelu", F.gelu, "preact"),  # erf form: F.gelu's default approximate="none"
    Activation("hardswish", F.hardswish, "preact"),  # MobileNetV3's
)}


def activation(name) -> Activation | None:
    """The activation called ``name`` (None or "none": no activation); errors name the argument."""
    if name is None or name == "none":
        return None
    found = ACTIVATIONS.get(name) if isinstance(name, str) else None
    if found is None:
        from ._spec import ConvArgumentError

        choices = ", ".join(repr(n) for n in ACTIVATIONS)
        raise ConvArgumentError(f"activation: expected None or one of {choices}, got {name!r}")
    return found
