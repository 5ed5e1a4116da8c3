"""What a call runs: its plans in each direction, and their readable records."""
import torch

from ._plan import Dispatch, Plan
from .ops import bias_act, forward, input_grad, weight_grad

DIRECTIONS = ("forward", "backward", "all")


def plans(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None, residual=None,
          direction: str = "forward", device_name: str | None = None, sm_count: int | None = None) -> list[Plan]:
    """The plans (one per kernel launch) of a ``mcconv.conv2d`` call and, with ``direction``
    "backward" or "all", of its backward when input, weight and bias all need gradients.

    Tensors may be on the ``meta`` device (shapes only). ``device_name`` (e.g.
    ``"NVIDIA_H100_80GB_HBM3"``) and ``sm_count`` plan for another GPU model than the tensors':
    its tile table and the split of its reductions. The backward's dL/dy is taken laid out as
    the forward's output. Raises what the convolution raises for bad arguments.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: expected one of {DIRECTIONS}, got {direction!r}")
    target = {"device_name": device_name, "sm_count": sm_count}
    fwd = forward.plan(input, weight, bias, stride, padding, dilation, groups, activation, residual, **target)
    found = [fwd] if direction != "backward" else []
    if direction == "forward":
        return found
    spec = fwd.spec
    grad_y = torch.empty_strided(fwd.out_shape, fwd.out_strides, dtype=input.dtype, device="meta")
    meta_w = torch.empty_strided(weight.shape, weight.stride(), dtype=weight.dtype, device="meta")
    meta_x = torch.empty_strided(input.shape, input.stride(), dtype=input.dtype, device="meta")
    target = dict(zip(("device_name", "sm_count"), fwd.target))  # the forward's GPU, also for meta copies
    act = spec.activation
    if act is not None or bias is not None:
        saved = None if act is None else grad_y
        found.append(bias_act.plan(grad_y, saved, activation, bias is not None, **target))
    args = (spec.stride, spec.padding, spec.dilation, spec.groups)
    found.append(input_grad.plan(grad_y, meta_w, tuple(input.shape), *args, **target))
    found.append(weight_grad.plan(grad_y, meta_x, tuple(weight.shape), *args, **target))
    return found


def explain(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None, residual=None,
            device_name: str | None = None, direction: str = "forward") -> Dispatch | list[Dispatch]:
    """Which kernel and tile configuration ``mcconv.conv2d`` would use for these arguments.

    Returns the forward's :class:`Dispatch`, or with ``direction`` "backward" or "all" a list,
    one per launch (see :func:`plans`). Tensors may be on the ``meta`` device (shapes only);
    ``device_name`` selects another GPU model's tile table than the tensors' device. Raises the
    same errors as the convolution for bad arguments.
    """
    found = plans(input, weight, bias, stride, padding, dilation, groups, activation=activation, residual=residual,
                  direction=direction, device_name=device_name)
    return found[0].dispatch if direction == "forward" else [p.dispatch for p in found]
