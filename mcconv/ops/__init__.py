"""mcconv's operations: one module each, holding its kernels' declarations, its plans and its launch.

* :mod:`.forward` -- ``y = act(conv2d(x, w) + bias + residual)``
* :mod:`.forward3d` -- the same for conv3d, on the depth-axis kernel
* :mod:`.input_grad` -- dL/dx from dL/dz and w
* :mod:`.weight_grad` -- dL/dw from dL/dz and x (split, fixed-order reduction)
* :mod:`.bias_act` -- dL/dz = dL/dy * act'(.) and/or dL/dbias

The functions below are the launchers without autograd (the custom ops of ``mcconv._autograd``
call them): each validates on the first call of a kind, then looks its plan up and launches.
``with mcconv.ops.capture() as launches:`` records the launches instead (tensors may be on the
``meta`` device): what ``inspect`` and the native-compile test compile. The device code is in
``kernels/`` (installed as ``mcconv._kernels``).
"""
from .._backend import capture  # noqa: F401 - record launches instead of running them (tools)
from . import bias_act, forward, forward3d, input_grad, weight_grad  # noqa: F401 - registers the kernels, in dispatch order


def conv2d_forward(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None,
                   residual=None, return_preact: bool = False):
    """``act(conv2d(input, weight) + bias + residual)`` without autograd, as :func:`mcconv.conv2d`.

    With ``return_preact=True`` returns ``(y, z)``, z = conv2d(input, weight) + bias (+ residual)
    before the activation, stored by the same kernel's epilogue (silu's and gelu's backward
    need it). Without an activation z *is* y (the same tensor).
    """
    plan = forward.plan(input, weight, bias, stride, padding, dilation, groups, activation, residual)
    return forward.run(plan, input, weight, bias, residual, preact=return_preact)


def conv2d_input_grad(grad_z, weight, input_shape, stride=1, padding=0, dilation=1, groups=1):
    """dL/dinput of ``conv2d(input, weight)`` given dL/dz (z: the convolution's output, before the activation).

    Args:
        grad_z: ``(N, K, P, Q)`` or unbatched ``(K, P, Q)``, any strides.
        weight: ``(K, C / groups, kH, kW)``, grad_z's dtype and device, any strides.
        input_shape: the input's shape ``(N, C, H, W)`` or ``(C, H, W)``.
        stride, padding, dilation, groups: as for :func:`mcconv.conv2d`.

    Returns:
        A tensor of ``input_shape`` in grad_z's dtype; channels_last when grad_z is.
    """
    plan = input_grad.plan(grad_z, weight, input_shape, stride, padding, dilation, groups)
    return input_grad.run(plan, grad_z, weight)


def conv2d_weight_grad(grad_z, input, weight_shape, stride=1, padding=0, dilation=1, groups=1):
    """dL/dweight of ``conv2d(input, weight)`` given dL/dz: a contiguous tensor of ``weight_shape``
    in input's dtype, summed in fp32 in a fixed order (bitwise reproducible)."""
    plan = weight_grad.plan(grad_z, input, weight_shape, stride, padding, dilation, groups)
    return weight_grad.run(plan, grad_z, input)


def conv2d_bias_grad(grad_z):
    """dL/dbias: grad_z ``(N, K, P, Q)`` (or ``(K, P, Q)``) summed over n, p, q per channel, in fp32
    in a fixed order; a ``(K,)`` tensor in grad_z's dtype."""
    return bias_act.run(bias_act.plan(grad_z, None, None, True, grad_name="grad_z"), grad_z)[1]


def activation_grad(grad_y, saved, activation):
    """dL/dz = dL/dy * act'(.) for the fused activation: ``saved`` is what the activation's
    derivative reads (``mcconv.epilogue.ACTIVATIONS[name].derivative_reads``: the forward's output
    y, or its pre-activation z). Activation None returns grad_y itself."""
    if activation is None or activation == "none":
        return grad_y
    return bias_act.run(bias_act.plan(grad_y, saved, activation, False), grad_y, saved)[0]


def activation_bias_grad(grad_y, saved, activation):
    """``(dL/dz, dL/dbias)`` in one pass over grad_y: :func:`activation_grad` fused with
    :func:`conv2d_bias_grad`. The bias gradient sums the fp32 dL/dz before its rounding."""
    if activation == "none":
        activation = None
    return bias_act.run(bias_act.plan(grad_y, saved if activation else None, activation, True), grad_y, saved)
