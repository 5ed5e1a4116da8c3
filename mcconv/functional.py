"""The public convolution functions: conv2d, and conv1d on the 2-D kernels."""
import operator

import torch

from . import _autograd
from ._plan import option_key
from ._spec import ConvArgumentError, ConvTypeError, _is_int, check_groups, check_types


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None,
           residual=None):
    """2-D convolution with the semantics of ``torch.nn.functional.conv2d``, plus a fused residual
    add and activation.

    Args:
        input: ``(N, C, H, W)`` or unbatched ``(C, H, W)``; float16, bfloat16 or float32; CUDA
            (or CPU under ``TRITON_INTERPRET=1``). Any strides. The output is channels_last when
            the input or the weight is (torch's rule for CUDA convolutions), else contiguous.
        weight: ``(K, C / groups, kH, kW)``, same dtype and device.
        bias: optional ``(K,)``.
        stride, dilation: int or pair, >= 1.
        padding: int, pair, ``(top, bottom, left, right)``, ``"valid"`` or ``"same"`` (stride 1;
            the extra pixel of even kernels goes bottom/right, as in torch).
        groups: divides both C and K.
        activation: None or a name in :data:`mcconv.ACTIVATIONS` (``"relu"``, ``"silu"``, ``"gelu"``
            (erf form), ...), applied after the bias (and residual) in the kernel's epilogue.
        residual: optional tensor of exactly the output's shape (no broadcasting), same dtype and
            device, any strides (contiguous, channels_last, a view), added in fp32 in the
            epilogue before the activation -- a ResNet block's ``act(conv(x) + b + shortcut)``
            without a separate add kernel.

    Returns:
        ``act(conv2d(input, weight) + bias + residual)`` in the input's dtype, accumulated in fp32.

    Raises:
        mcconv.ConvArgumentError (a ValueError and a RuntimeError) or mcconv.ConvTypeError (a
        TypeError and a RuntimeError) for anything torch's conv2d refuses, naming the argument.

    Differentiable in input, weight, bias and residual (Triton backward kernels), traceable by
    ``torch.compile(fullgraph=True)`` and autocast-aware: after describing and validating the
    call it calls the custom op ``torch.ops.mcconv.conv2d`` (``conv2d_preact`` when the
    activation's derivative needs z); eager inference without autograd skips the op's dispatch
    and launches the kernel directly.
    """
    return _autograd.conv2d(input, weight, bias, stride, padding, dilation, groups, activation, residual)


# --------------------------------------------------------------------------- 1-D convolution
# conv1d runs on the 2-D kernels through views with a unit height axis: input (N, C, L) ->
# (N, C, 1, L), weight (K, C/g, kW) -> (K, C/g, 1, kW), output (N, K, 1, Q) -> (N, K, Q). Its
# arguments are validated here, in 1-D terms, so that errors name what the caller gave; what
# conv2d checks afterwards (dtypes, devices, the bias, the activation) it words without shapes.

def _int_1d(name: str, value) -> int:
    """stride or dilation of conv1d: an int or a 1-element sequence of ints, >= 1."""
    values = _ints_1d(name, value, (1,), "an int or a 1-tuple")
    if values[0] < 1:
        raise ConvArgumentError(f"{name}: expected a value >= 1, got {value!r}")
    return values[0]


def _ints_1d(name: str, value, lengths, what: str) -> tuple:
    if _is_int(value):
        return (operator.index(value),)
    if isinstance(value, (tuple, list)):  # torch.Size is a tuple
        if not all(_is_int(v) for v in value):
            raise ConvTypeError(f"{name}: expected {what} of ints, got {value!r}")
        if len(value) not in lengths:
            raise ConvArgumentError(f"{name}: expected {what} of ints (conv1d has one spatial axis), got {value!r}")
        return tuple(operator.index(v) for v in value)
    raise ConvTypeError(f"{name}: expected {what} of ints, got {type(value).__name__} {value!r}")


def _padding_1d(padding, kw: int, stride: int, dilation: int) -> tuple:
    """conv1d's padding as (left, right): an int, a 1-tuple, a (left, right) pair, "valid" or "same"."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        if padding == "same":
            if stride != 1:
                raise ConvArgumentError(f"padding: 'same' needs stride 1 (as in torch), got stride {stride}")
            total = dilation * (kw - 1)  # as torch: the odd element (even kernels) on the right
            return (total // 2, total - total // 2)
        raise ConvArgumentError(f"padding: expected an int, a 1-tuple, a (left, right) pair, 'same' or 'valid', "
                                f"got {padding!r}")
    values = _ints_1d("padding", padding, (1, 2), "an int, a 1-tuple or a (left, right) pair")
    if min(values) < 0:
        raise ConvArgumentError(f"padding: expected non-negative values, got {padding!r}")
    return values * 2 if len(values) == 1 else values


def _check_1d(input_shape, weight_shape, residual_shape, stride, padding, dilation, groups) -> tuple:
    """Validate a conv1d call's shapes and options in 1-D terms; the 2-D view's
    ``(stride, padding (top, bottom, left, right), dilation, groups)``."""
    unbatched = len(input_shape) == 2
    n, c, length = (1, *input_shape) if unbatched else input_shape
    k, c_per_group, kw = weight_shape
    groups = check_groups(c, weight_shape, groups)
    if kw < 1:
        raise ConvArgumentError(f"weight: expected a kernel of at least 1 tap, got kW={kw} (shape {weight_shape})")
    if length < 1 and n > 0 and c > 0:  # torch's rule: an empty signal only in an empty batch
        raise ConvArgumentError(f"input: expected a non-empty signal (only the batch or the channels may be 0), "
                                f"got shape {input_shape}")
    stride = _int_1d("stride", stride)
    dilation = _int_1d("dilation", dilation)
    left, right = _padding_1d(padding, kw, stride, dilation)
    span = dilation * (kw - 1) + 1
    padded = length + left + right
    if padded < span:
        raise ConvArgumentError(f"input: the padded input is {padded} long but the (dilated) kernel spans {span}: "
                                f"the kernel can't be larger than the padded input (input {input_shape}, padding "
                                f"{(left, right)} (left, right), dilation {dilation})")
    if residual_shape is not None:
        q = (padded - span) // stride + 1
        out = (k if c else 0, q) if unbatched else (n, k if c else 0, q)
        if residual_shape != out:
            raise ConvArgumentError(f"residual: expected the output's shape {out} (no broadcasting), "
                                    f"got {residual_shape}")
    return (1, stride), (0, 0, left, right), (1, dilation), groups


_checked: dict = {}  # (shapes, option keys) -> the 2-D view's options: validated once per kind of call
_MAX_CHECKED = 4096  # then cleared: bounded, whatever the caller's shapes


def _conv2d_options(input_shape, weight_shape, residual_shape, stride, padding, dilation, groups) -> tuple:
    """:func:`_check_1d`, cached as mcconv's plans are: by shapes and options, keyed so that 1,
    1.0 and True stay apart (``option_key``); not under ``torch.compile``, which traces it once."""
    if torch.compiler.is_compiling():
        return _check_1d(input_shape, weight_shape, residual_shape, stride, padding, dilation, groups)
    key = (input_shape, weight_shape, residual_shape, option_key(stride), option_key(padding),
           option_key(dilation), option_key(groups))
    try:
        return _checked[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable option: validate without caching
        return _check_1d(input_shape, weight_shape, residual_shape, stride, padding, dilation, groups)
    options = _check_1d(input_shape, weight_shape, residual_shape, stride, padding, dilation, groups)
    if len(_checked) >= _MAX_CHECKED:
        _checked.clear()
    _checked[key] = options
    return options


def _input_view(input):
    """(N, C, L) -> (N, C, 1, L) without a copy, laid out as torch's own 1-D -> 2-D view decides.

    torch's convolution runs a 3-D input as ``input.contiguous().unsqueeze(2)``: a contiguous
    input's view is exactly ``unsqueeze``, and any other input is copied, after which its view
    never suggests channels_last. mcconv reads the strides as they are instead of copying, and
    gives the non-contiguous input a unit axis of stride 1, which makes its view never suggest
    channels_last either (C's stride is below W's, W's span above H's stride); the output's
    memory format (the input's or the weight's suggestion, as for conv2d) is then torch's.
    """
    if input.is_contiguous():
        return input.unsqueeze(-2)
    return input.unsqueeze(-1).transpose(-1, -2)


def conv1d_views(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, residual=None) -> tuple:
    """The :func:`mcconv.conv2d` arguments that run a :func:`conv1d` call: ``(input, weight, bias,
    stride, padding, dilation, groups, residual)`` with views of unit height (no copies) and the
    options on the width axis, padding as ``(0, 0, left, right)``.

    Validates the call in 1-D terms first, so errors name conv1d's arguments as given.
    ``mcconv.explain(*views[:7], residual=views[7])`` says which kernel runs (see :func:`explain1d`).
    """
    check_types(input, weight, bias, residual)
    if input.dim() not in (2, 3):
        raise ConvArgumentError(f"input: expected a 2-D (C, L) or 3-D (N, C, L) tensor, got {input.dim()}-D "
                                f"with shape {tuple(input.shape)}")
    if weight.dim() != 3:
        raise ConvArgumentError(f"weight: expected a 3-D (out_channels, in_channels/groups, kW) tensor, got "
                                f"{weight.dim()}-D with shape {tuple(weight.shape)}")
    stride2, padding4, dilation2, groups = _conv2d_options(
        tuple(input.shape), tuple(weight.shape), None if residual is None else tuple(residual.shape),
        stride, padding, dilation, groups)
    return (_input_view(input), weight.unsqueeze(-2), bias, stride2, padding4, dilation2, groups,
            None if residual is None else residual.unsqueeze(-2))


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None,
           residual=None):
    """1-D convolution with the semantics of ``torch.nn.functional.conv1d``, plus a fused residual
    add and activation, on mcconv's 2-D kernels.

    Args:
        input: ``(N, C, L)`` or unbatched ``(C, L)``; float16, bfloat16 or float32; any strides
            (e.g. an ``(N, L, C)`` tensor's ``.transpose(1, 2)``), read in place.
        weight: ``(K, C / groups, kW)``, same dtype and device.
        bias: optional ``(K,)``.
        stride, dilation: int or 1-tuple, >= 1.
        padding: int, 1-tuple, ``"valid"``, ``"same"`` (stride 1; the extra element of even
            kernels goes right, as in torch) or, as an mcconv extension, a ``(left, right)`` pair.
        groups: divides both C and K; ``groups == C`` (depthwise, any channel multiplier) runs the
            depthwise kernel.
        activation: None or a name in :data:`mcconv.ACTIVATIONS`, applied in the epilogue.
        residual: optional tensor of exactly the output's shape, added in fp32 before the activation.

    Returns:
        ``act(conv1d(input, weight) + bias + residual)``: ``(N, K, Q)`` (``(K, Q)`` unbatched) in
        the input's dtype, laid out as torch lays out conv1d's output (contiguous unless the
        weight's strides suggest channels_last).

    Raises:
        mcconv.ConvArgumentError / mcconv.ConvTypeError (each also a RuntimeError) for anything
        ``F.conv1d`` refuses (except the ``(left, right)`` padding), naming conv1d's argument.

    The call runs :func:`mcconv.conv2d` on views of unit height -- input ``(N, C, 1, L)``,
    weight ``(K, C/g, 1, kW)`` -- with stride, padding and dilation on the width axis; the input
    is never copied (:func:`conv1d_views`; the weight is packed as conv2d packs it). Hence the
    same kernels, autograd (input, weight, bias, residual), ``torch.compile(fullgraph=True)``,
    autocast and TF32 rule as ``conv2d``.
    """
    x, w, b, stride, padding, dilation, groups, r = conv1d_views(input, weight, bias, stride, padding, dilation,
                                                                 groups, residual=residual)
    return _autograd.conv2d(x, w, b, stride, padding, dilation, groups, activation, r).squeeze(-2)


def explain1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None,
              residual=None, device_name=None, direction="forward"):
    """:func:`mcconv.explain` for a :func:`conv1d` call: the kernel and tiles that run it (shapes
    in the record are the 2-D view's, ``(N, K, 1, Q)``). Tensors may be on the ``meta`` device."""
    from ._explain import explain

    x, w, b, stride, padding, dilation, groups, r = conv1d_views(input, weight, bias, stride, padding, dilation,
                                                                 groups, residual=residual)
    return explain(x, w, b, stride, padding, dilation, groups, activation=activation, residual=r,
                   device_name=device_name, direction=direction)
