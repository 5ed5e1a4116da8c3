"""``torch.nn`` integration: a drop-in ``Conv2d`` module and :func:`convert` for whole models."""
from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import nn

from ._spec import FLOAT_DTYPES
from .epilogue import activation as _activation
from .functional import conv2d


class Conv2d(nn.Conv2d):
    """``torch.nn.Conv2d`` computed by mcconv's Triton kernels, with an optional fused activation.

    Same constructor arguments, parameters (``weight`` ``(out, in/groups, kH, kW)``, optional
    ``bias``), initialisation and state dict as ``torch.nn.Conv2d`` -- a state dict loads either
    way -- plus ``activation`` (None or a name in :data:`mcconv.ACTIVATIONS`), applied in the
    kernel's epilogue. It prints as ``mcconv.Conv2d(...)``, so a converted model shows which
    layers run on mcconv. ``forward(input, residual=None)`` also takes an optional residual of the
    output's shape, added in the epilogue before the activation (see :func:`mcconv.conv2d`).
    Padding modes other than ``"zeros"`` pad with ``F.pad`` and then convolve without padding,
    as torch does.
    """

    activation = None  # class default: modules converted in place or unpickled from nn.Conv2d

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, activation=None):
        _activation(activation)  # validates: raises naming the argument
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

    def _get_name(self) -> str:
        return "mcconv.Conv2d"

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.activation is None else f"{s}, activation={self.activation!r}"


@dataclass
class ConvertReport:
    """Which convolution layers of a model run on mcconv, and why the others do not."""

    converted: list = field(default_factory=list)  # qualified names of mcconv.Conv2d layers ("" for the model)
    left_alone: dict = field(default_factory=dict)  # qualified name -> why this nn.Conv2d is not converted

    @property
    def swapped(self) -> int:
        """How many layers run on mcconv."""
        return len(self.converted)

    def __str__(self) -> str:
        lines = [f"mcconv: {self.swapped} Conv2d layer(s) run on mcconv, {len(self.left_alone)} left to torch"]
        lines += [f"  left to torch: {name or '(model)'}: {why}" for name, why in self.left_alone.items()]
        return "\n".join(lines)


def _reason_to_leave(module: nn.Conv2d) -> str | None:
    if type(module) is not nn.Conv2d:
        # A subclass may override forward/_conv_forward (LazyConv2d, weight-standardised convs, ...).
        return f"{type(module).__qualname__} is a subclass of nn.Conv2d whose behaviour mcconv cannot vouch for"
    if module.weight.dtype not in FLOAT_DTYPES:
        return f"weight dtype {module.weight.dtype} (mcconv runs float16, bfloat16 and float32)"
    return None


def convert(model: nn.Module) -> nn.Module:
    """Make every plain ``torch.nn.Conv2d`` in ``model`` (recursively) an :class:`mcconv.Conv2d`; returns ``model``.

    In place, like PyTorch's own converters return the model: each layer keeps its identity,
    its Parameter objects (so device, dtype, values and any optimizer that holds them), buffers,
    hooks and training mode, and only its class changes -- so references to the layer
    elsewhere, shared layers and the model itself (if it is a Conv2d) follow. Subclasses of
    ``nn.Conv2d`` (which may compute something else) and dtypes mcconv does not run are left
    alone; :func:`conversion_report` says which and why, and ``print(model)`` shows converted
    layers as ``mcconv.Conv2d``.
    """
    for _, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and not isinstance(module, Conv2d) and _reason_to_leave(module) is None:
            # type(module) is exactly nn.Conv2d and mcconv.Conv2d only adds methods and `activation`.
            module.__class__ = Conv2d
            module.activation = None
    return model


def conversion_report(model: nn.Module) -> ConvertReport:
    """Which ``Conv2d`` layers of ``model`` run on mcconv and why each other ``nn.Conv2d`` does not."""
    report = ConvertReport()
    for name, module in model.named_modules():
        if isinstance(module, Conv2d):
            report.converted.append(name)
        elif isinstance(module, nn.Conv2d):
            report.left_alone[name] = _reason_to_leave(module) or "not converted (mcconv.convert was not applied)"
    return report
