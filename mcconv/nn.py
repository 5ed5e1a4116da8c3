"""``torch.nn`` integration: a drop-in ``Conv2d`` module and :func:`convert` for whole models."""
from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import nn

from ._validate import FLOAT_DTYPES, check_activation
from .functional import conv2d


class Conv2d(nn.Conv2d):
    """``torch.nn.Conv2d`` computed by mcconv's Triton kernels, with an optional fused activation.

    Same constructor arguments, parameters (``weight`` ``(out, in/groups, kH, kW)``, optional
    ``bias``), initialisation and state dict as ``torch.nn.Conv2d`` -- a state dict loads either
    way -- plus ``activation`` (None, ``"relu"``, ``"silu"`` or ``"gelu"``), applied in the
    kernel's epilogue. ``forward(input, residual=None)`` also takes an optional residual of the
    output's shape, added in the epilogue before the activation (see :func:`mcconv.conv2d`).
    Padding modes other than ``"zeros"`` pad with ``F.pad`` and then convolve without padding,
    as torch does.
    """

    activation = None  # class default: modules converted in place or unpickled from nn.Conv2d

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, activation=None):
        check_activation(activation)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        self.activation = activation

    def forward(self, input, residual=None):
        """``act(conv2d(input) + bias + residual)``; ``residual`` as in :func:`mcconv.conv2d`."""
        return self._conv_forward(input, self.weight, self.bias, residual)

    def _conv_forward(self, input, weight, bias, residual=None):
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups, activation=self.activation,
                          residual=residual)
        return conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                      activation=self.activation, residual=residual)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.activation is None else f"{s}, activation={self.activation!r}"


@dataclass
class ConvertReport:
    """What :func:`convert` did: the layers it swapped and the ``nn.Conv2d`` layers it left alone."""

    converted: list = field(default_factory=list)  # qualified names ("" for the model itself)
    left_alone: dict = field(default_factory=dict)  # qualified name -> reason

    @property
    def swapped(self) -> int:
        """How many layers now run on mcconv."""
        return len(self.converted)

    def __str__(self) -> str:
        lines = [f"mcconv.convert: {self.swapped} Conv2d layer(s) swapped, {len(self.left_alone)} left alone"]
        lines += [f"  left alone: {name or '(model)'}: {why}" for name, why in self.left_alone.items()]
        return "\n".join(lines)


def _reason_to_leave(module: nn.Conv2d) -> str | None:
    if isinstance(module, Conv2d):
        return "already an mcconv.Conv2d"
    if type(module) is not nn.Conv2d:
        # A subclass may override forward/_conv_forward (LazyConv2d, weight-standardised convs, ...).
        return f"{type(module).__qualname__} is a subclass of nn.Conv2d whose behaviour mcconv cannot vouch for"
    if module.weight.dtype not in FLOAT_DTYPES:
        return f"weight dtype {module.weight.dtype} (mcconv runs float16, bfloat16 and float32)"
    return None


def convert(model: nn.Module):
    """Make every plain ``torch.nn.Conv2d`` in ``model`` (recursively) an :class:`mcconv.Conv2d`.

    In place: each layer keeps its identity, its Parameter objects (so device, dtype, values and
    any optimizer that holds them), buffers, hooks and training mode, and only its class
    changes -- so references to the layer elsewhere, shared layers and the model itself (if it
    is a Conv2d) follow. Subclasses of ``nn.Conv2d`` (which may compute something else), layers
    already converted and dtypes mcconv does not run are left alone and named in the report.

    Returns:
        ``(model, report)``, the report a :class:`ConvertReport`.
    """
    report = ConvertReport()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        reason = _reason_to_leave(module)
        if reason is not None:
            report.left_alone[name] = reason
            continue
        # type(module) is exactly nn.Conv2d and mcconv.Conv2d only adds methods and `activation`.
        module.__class__ = Conv2d
        module.activation = None
        report.converted.append(name)
    return model, report
