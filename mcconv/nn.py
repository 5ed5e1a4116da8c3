"""``torch.nn`` integration: drop-in ``Conv1d``, ``Conv2d``, ``Conv3d``, ``ConvTranspose1d`` and ``ConvTranspose2d``
modules and :func:`convert` for whole models."""
from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import nn

from ._spec import FLOAT_DTYPES
from .conv3d import conv3d
from .epilogue import activation as _activation
from .functional import conv1d, conv2d
from .transpose import conv_transpose1d, conv_transpose2d


class _Forward:
    """What Conv1d, Conv2d and Conv3d add to torch's class: ``activation``, and a forward on
    mcconv's kernels (``_function``). Padding modes other than ``"zeros"`` pad with ``F.pad``
    (``_mode_padding``) and then convolve without padding, as torch does."""

    activation = None  # class default: modules converted in place or unpickled from torch's class
    _function = None

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, activation=None):
        _activation(activation)  # validates: raises naming the argument
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        self.activation = activation

    def forward(self, input, residual=None):
        """``act(conv(input) + bias + residual)``; ``residual`` of the output's shape, added before the activation."""
        return self._conv_forward(input, self.weight, self.bias, residual)

    def _mode_padding(self) -> tuple:
        return self._reversed_padding_repeated_twice

    def _conv_forward(self, input, weight, bias, residual=None):
        function = type(self)._function
        if self.padding_mode != "zeros":
            input = F.pad(input, self._mode_padding(), mode=self.padding_mode)
            return function(input, weight, bias, self.stride, 0, self.dilation, self.groups,
                            activation=self.activation, residual=residual)
        return function(input, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                        activation=self.activation, residual=residual)

    def _get_name(self) -> str:
        return f"mcconv.{type(self).__name__}"

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.activation is None else f"{s}, activation={self.activation!r}"


class Conv2d(_Forward, nn.Conv2d):
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

    _function = staticmethod(conv2d)


class Conv1d(_Forward, nn.Conv1d):
    """``torch.nn.Conv1d`` computed by mcconv's 2-D Triton kernels, with an optional fused activation.

    Same constructor arguments, parameters (``weight`` ``(out, in/groups, kW)``, optional
    ``bias``), initialisation and state dict as ``torch.nn.Conv1d`` -- a state dict loads either
    way -- plus ``activation`` (None or a name in :data:`mcconv.ACTIVATIONS`), applied in the
    kernel's epilogue. It prints as ``mcconv.Conv1d(...)``. ``forward(input, residual=None)``
    also takes an optional residual of the output's shape, added in the epilogue before the
    activation (see :func:`mcconv.conv1d`, which runs the layer on unit-height views of the
    input and weight, without copies). Padding modes other than ``"zeros"`` pad with ``F.pad``
    and then convolve without padding, as torch does; ``padding`` may also be a ``(left, right)``
    pair (an mcconv extension, with any padding mode).
    """

    _function = staticmethod(conv1d)

    def _mode_padding(self) -> tuple:
        if not isinstance(self.padding, str) and len(self.padding) == 2:  # (left, right)
            return tuple(self.padding)
        return self._reversed_padding_repeated_twice


class Conv3d(_Forward, nn.Conv3d):
    """``torch.nn.Conv3d`` computed by mcconv's Triton kernels, with an optional fused activation.

    Same constructor arguments, parameters (``weight`` ``(out, in/groups, kD, kH, kW)``, optional
    ``bias``), initialisation and state dict as ``torch.nn.Conv3d`` -- a state dict loads either
    way -- plus ``activation`` (None or a name in :data:`mcconv.ACTIVATIONS`), applied in the
    kernel's epilogue. It prints as ``mcconv.Conv3d(...)``. ``forward(input, residual=None)``
    also takes an optional residual of the output's shape, added in the epilogue before the
    activation (see :func:`mcconv.conv3d`: the depth-axis kernel from 16 input channels per group,
    else a depth im2col over the 2-D kernels). Padding modes other than ``"zeros"`` pad with ``F.pad`` and then
    convolve without padding, as torch does.
    """

    _function = staticmethod(conv3d)


class _Transposed:
    """What ConvTranspose2d and ConvTranspose1d add to torch's class: ``activation``, and a forward
    on mcconv's kernels (``_function``, over ``_dims`` spatial dimensions)."""

    activation = None  # class default: modules converted in place or unpickled from torch's class
    _function = None
    _dims = 2

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", device=None, dtype=None, activation=None):
        _activation(activation)  # validates: raises naming the argument
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, bias,
                         dilation, padding_mode, device=device, dtype=dtype)
        self.activation = activation

    def forward(self, input, output_size=None, residual=None):
        """``act(conv_transpose(input) + bias + residual)``; ``output_size`` as in torch."""
        if self.padding_mode != "zeros":
            raise ValueError(f"Only `zeros` padding mode is supported for {type(self).__name__}")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size,
                                              self._dims, self.dilation)
        return type(self)._function(input, self.weight, self.bias, self.stride, self.padding, output_padding,
                                    self.groups, self.dilation, activation=self.activation, residual=residual)

    def _get_name(self) -> str:
        return f"mcconv.{type(self).__name__}"

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.activation is None else f"{s}, activation={self.activation!r}"


class ConvTranspose2d(_Transposed, nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` computed by mcconv's Triton kernels (the input-gradient kernels of
    the convolution it transposes), with an optional activation.

    Same constructor arguments, parameters (``weight`` ``(in, out/groups, kH, kW)``, optional
    ``bias``), initialisation and state dict as ``torch.nn.ConvTranspose2d`` -- a state dict loads
    either way -- plus ``activation`` (None or a name in :data:`mcconv.ACTIVATIONS`). It prints as
    ``mcconv.ConvTranspose2d(...)``. ``forward(input, output_size=None, residual=None)``: torch's
    ``output_size`` (which picks the output_padding), and an optional residual of the output's
    shape added before the activation (see :func:`mcconv.conv_transpose2d`; bias, residual and
    activation fused into the kernel's epilogue). Only ``padding_mode="zeros"``, as torch.
    """

    _function = staticmethod(conv_transpose2d)
    _dims = 2


class ConvTranspose1d(_Transposed, nn.ConvTranspose1d):
    """``torch.nn.ConvTranspose1d`` computed by mcconv's 2-D Triton kernels, with an optional activation.

    Same constructor arguments, parameters (``weight`` ``(in, out/groups, kW)``), initialisation
    and state dict as ``torch.nn.ConvTranspose1d``, plus ``activation``; ``forward(input,
    output_size=None, residual=None)`` as :class:`ConvTranspose2d`'s (see
    :func:`mcconv.conv_transpose1d`, which runs on unit-height views). Only ``padding_mode="zeros"``.
    """

    _function = staticmethod(conv_transpose1d)
    _dims = 1


# The plain torch layer each mcconv layer replaces (convert swaps exactly these types).
_SWAPS = {nn.Conv1d: Conv1d, nn.Conv2d: Conv2d, nn.Conv3d: Conv3d, nn.ConvTranspose1d: ConvTranspose1d,
          nn.ConvTranspose2d: ConvTranspose2d}
_TORCH_CONVS = tuple(_SWAPS)
_MCCONV_CONVS = tuple(_SWAPS.values())


@dataclass
class ConvertReport:
    """Which convolution layers of a model run on mcconv, and why the others do not."""

    converted: list = field(default_factory=list)  # qualified names of mcconv layers ("" for the model)
    left_alone: dict = field(default_factory=dict)  # qualified name -> why this torch conv layer is not converted
    kinds: dict = field(default_factory=dict)  # qualified name -> "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d" or
    # "ConvTranspose2d", for every layer above

    @property
    def swapped(self) -> int:
        """How many layers run on mcconv."""
        return len(self.converted)

    def __str__(self) -> str:
        present = sorted(set(self.kinds.values())) or ["Conv2d"]
        counts = " and ".join(f"{sum(self.kinds.get(n, 'Conv2d') == kind for n in self.converted)} {kind}"
                              for kind in present)
        lines = [f"mcconv: {counts} layer(s) run on mcconv, {len(self.left_alone)} left to torch"]
        lines += [f"  left to torch: {name or '(model)'}: {why}" for name, why in self.left_alone.items()]
        return "\n".join(lines)


def _torch_kind(module: nn.Module) -> type:
    """nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d or nn.ConvTranspose2d: the torch layer class
    ``module`` is (or derives from)."""
    return next(kind for kind in _TORCH_CONVS if isinstance(module, kind))


def _reason_to_leave(module: nn.Module) -> str | None:
    kind = _torch_kind(module)
    if type(module) is not kind:
        # A subclass may override forward/_conv_forward (LazyConv2d, weight-standardised convs, ...).
        return (f"{type(module).__qualname__} is a subclass of nn.{kind.__name__} whose behaviour mcconv "
                f"cannot vouch for")
    if module.weight.dtype not in FLOAT_DTYPES:
        return f"weight dtype {module.weight.dtype} (mcconv runs float16, bfloat16 and float32)"
    return None


def convert(model: nn.Module) -> nn.Module:
    """Make every plain ``torch.nn.Conv2d`` in ``model`` (recursively) an :class:`mcconv.Conv2d`, every
    plain ``torch.nn.Conv1d`` an :class:`mcconv.Conv1d`, every plain ``torch.nn.Conv3d`` an
    :class:`mcconv.Conv3d`, and every plain ``nn.ConvTranspose2d`` /
    ``nn.ConvTranspose1d`` an :class:`mcconv.ConvTranspose2d` / :class:`mcconv.ConvTranspose1d`;
    returns ``model``.

    In place, like PyTorch's own converters return the model: each layer keeps its identity,
    its Parameter objects (so device, dtype, values and any optimizer that holds them), buffers,
    hooks and training mode, and only its class changes -- so references to the layer
    elsewhere, shared layers and the model itself (if it is one of these layers) follow; the
    state dict is unchanged. Subclasses of these torch classes (which may compute something
    else, e.g. ``LazyConvTranspose2d``) and dtypes mcconv does not run are left alone;
    :func:`conversion_report` says which and why, and ``print(model)`` shows converted layers as
    ``mcconv.Conv2d``, ``mcconv.ConvTranspose2d``, etc.
    """
    for _, module in model.named_modules():
        if (isinstance(module, _TORCH_CONVS) and not isinstance(module, _MCCONV_CONVS)
                and _reason_to_leave(module) is None):
            # type(module) is exactly nn.Conv2d (nn.Conv1d, nn.Conv3d, nn.ConvTranspose2d/1d) and the mcconv
            # class only adds methods and `activation`.
            module.__class__ = _SWAPS[type(module)]
            module.activation = None
    return model


def conversion_report(model: nn.Module) -> ConvertReport:
    """Which ``Conv1d``/``Conv2d``/``Conv3d``/``ConvTranspose1d``/``ConvTranspose2d`` layers of ``model`` run on
    mcconv and why each other torch layer of these kinds does not."""
    report = ConvertReport()
    for name, module in model.named_modules():
        if isinstance(module, _MCCONV_CONVS):
            report.converted.append(name)
        elif isinstance(module, _TORCH_CONVS):
            report.left_alone[name] = _reason_to_leave(module) or "not converted (mcconv.convert was not applied)"
        else:
            continue
        report.kinds[name] = _torch_kind(module).__name__
    return report
