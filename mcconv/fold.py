"""Batch-norm folding: an eval-mode ``BatchNorm`` that directly follows a convolution becomes part
of that convolution's weight and bias.

In eval mode a batch norm is a fixed per-channel affine map of its input, ``y = s * x + t`` with
``s = gamma / sqrt(running_var + eps)`` and ``t = beta - s * running_mean``; after a convolution
``x = conv(input, W) + b`` it folds exactly into ``W' = s * W`` (per output channel) and
``b' = s * (b - running_mean) + beta``. The folded model computes the same function with one
layer less (and, on mcconv, the bias joins the kernel's fused epilogue).

"Directly follows" is decided on the graph that ``torch.fx`` traces from the model's forward
(convolution and batch-norm layers kept as leaves): the convolution's output feeds the batch norm
and nothing else, and each of the two layers is called once. A model that does not trace
(data-dependent control flow, ...) falls back to consecutive children of ``nn.Sequential``
containers; the report says which method found each pair.
"""
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from ._spec import ConvArgumentError
from .nn import Conv1d, Conv2d

# Convolutions whose forward is known: y = conv(x, weight) + bias (mcconv's, plus an epilogue).
_FOLDABLE_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, Conv1d, Conv2d)
# Each batch norm and the convolution it normalises (SyncBatchNorm: any of them).
_BATCH_NORMS = {nn.BatchNorm1d: nn.Conv1d, nn.BatchNorm2d: nn.Conv2d, nn.BatchNorm3d: nn.Conv3d,
                nn.SyncBatchNorm: _ConvNd}

FX = "fx"
SEQUENTIAL = "sequential"


@dataclass(frozen=True)
class FoldedPair:
    """One batch norm folded into the convolution before it."""

    conv: str  # the convolution's qualified name ("" for the model itself)
    bn: str  # the batch norm's qualified name (now an nn.Identity)
    method: str  # how the pair was found: "fx" (the traced graph) or "sequential" (nn.Sequential neighbours)


@dataclass
class FoldReport:
    """What :func:`fold_batchnorm` folded, and why it left each other batch norm of the model."""

    folded: list = field(default_factory=list)  # FoldedPair for each fold, in model order
    left_alone: dict = field(default_factory=dict)  # batch norm's qualified name -> why it was not folded
    method: str = FX  # "fx", or "sequential" when the model did not trace
    trace_error: str | None = None  # why torch.fx could not trace the model (method "sequential")

    def __str__(self) -> str:
        how = ("torch.fx graph" if self.method == FX
               else f"nn.Sequential neighbours (torch.fx could not trace the model: {self.trace_error})")
        lines = [f"mcconv: {len(self.folded)} BatchNorm layer(s) folded, {len(self.left_alone)} left; "
                 f"pairs found by {how}"]
        lines += [f"  folded: {p.bn} into {p.conv or '(model)'} [{p.method}]" for p in self.folded]
        lines += [f"  left: {name}: {why}" for name, why in self.left_alone.items()]
        return "\n".join(lines)


def fold_batchnorm(model: nn.Module, *, report: bool = False):
    """Fold every eval-mode ``BatchNorm1d/2d/3d`` that directly follows a convolution into it, in place.

    A convolution (``nn.Conv1d``, ``nn.Conv2d``, ``nn.Conv3d``, :class:`mcconv.Conv1d`,
    :class:`mcconv.Conv2d`) whose output feeds only a batch norm gets that batch norm's affine
    map in its weight and bias (a bias-less convolution gets a bias Parameter); the batch norm
    becomes ``nn.Identity``. The weight keeps its Parameter object (written in place), so
    anything holding it follows (a new bias Parameter is not in an optimizer built before). The
    fold is computed in float64 and cast to the convolution's dtype (float16 and bfloat16 layers
    fold too). Returns ``model`` -- or, with ``report=True``,
    ``(model, FoldReport)``: which pairs were folded (and whether the ``torch.fx`` graph or the
    ``nn.Sequential`` fallback found them) and, for every other batch norm, why it was left:

    * the convolution has a fused activation (an mcconv layer's ``activation``) or adds a
      residual in its epilogue: the batch norm does not see the plain convolution;
    * the convolution's output is also used elsewhere, or the convolution or the batch norm is
      called more than once (shared by several paths), or the convolution's weight is tied to
      another module's: folding would change the other uses;
    * the batch norm has no running statistics (``track_running_stats=False``: it normalises
      with batch statistics even in eval mode), or does not match the convolution (channels,
      dimensionality), or it or the convolution has hooks or a parametrized weight, or either
      is a subclass whose forward mcconv cannot vouch for;
    * it does not directly follow a convolution, or the forward does not call it.

    A batch norm with ``affine=False`` folds (its affine map is ``gamma = 1, beta = 0``).
    Folding twice is a no-op: the second call finds no batch norm left to fold.

    Raises:
        mcconv.ConvArgumentError (a ValueError and a RuntimeError) when the model or any batch
        norm in it is in training mode (a training batch norm normalises with batch statistics,
        which no folded weight reproduces), naming the module; nothing is changed then.
    """
    _refuse_training(model)
    result = FoldReport()
    tied = _tied_parameters(model)
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 -- whatever stops tracing means: use the fallback
        first_line = str(e).splitlines()[0] if str(e) else ""
        result.method, result.trace_error = SEQUENTIAL, f"{type(e).__name__}: {first_line}"
        pairs, left = _sequential_pairs(model, tied)
    else:
        pairs, left = _fx_pairs(model, graph, tied)
    names = _first_names(model)
    for conv, bn in pairs:
        _fold(conv, bn)
        _replace_everywhere(model, bn, nn.Identity())
        result.folded.append(FoldedPair(names[conv], names[bn], result.method))
    # Every batch norm of the model: folded, or left with a reason (in model order).
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            result.left_alone[name] = left.get(module, "does not directly follow a convolution")
    order = {name: i for i, (name, _) in enumerate(model.named_modules(remove_duplicate=False))}
    result.folded.sort(key=lambda p: order.get(p.bn, -1))
    return (model, result) if report else model


# --------------------------------------------------------------------------- refusal

def _refuse_training(model: nn.Module) -> None:
    training = [name for name, m in model.named_modules() if isinstance(m, _BatchNorm) and m.training]
    if not (model.training or training):
        return
    parts = []
    if model.training:
        parts.append(f"the model ({type(model).__name__}) is in training mode (model.training is True)")
    if training:
        shown = [repr(n) if n else "(the model)" for n in training[:3]]
        if len(training) > 3:
            shown.append(f"{len(training) - 3} more")
        listed = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]
        parts.append(f"batch norm {listed} is in training mode" if len(training) == 1
                     else f"batch norms {listed} are in training mode")
    who = ", and ".join(parts)
    raise ConvArgumentError(f"model: fold_batchnorm needs an eval-mode model, but {who}; a training-mode "
                            f"batch norm normalises with batch statistics, which no folded weight reproduces: "
                            f"call model.eval() first")


# --------------------------------------------------------------------------- finding pairs

class _Tracer(torch.fx.Tracer):
    """Keeps every convolution and batch norm (mcconv's and subclasses too) as one call_module node."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (_ConvNd, _BatchNorm)) or super().is_leaf_module(m, qualname)


def _fx_pairs(model: nn.Module, graph: torch.fx.Graph, tied: set):
    """(pairs to fold, {batch norm: why not}) from the model's traced graph."""
    calls = [n for n in graph.nodes if n.op == "call_module"]
    count = Counter(n.target for n in calls)
    pairs, left = [], {}
    for node in calls:
        bn = model.get_submodule(node.target)
        if not isinstance(bn, _BatchNorm) or bn in left or any(bn is b for _, b in pairs):
            continue
        source = node.args[0] if node.args else None
        if count[node.target] > 1:
            left[bn] = f"called {count[node.target]} times in forward (shared by several paths)"
            continue
        if not (isinstance(source, torch.fx.Node) and source.op == "call_module"
                and isinstance(model.get_submodule(source.target), _ConvNd)):
            what = (f"{source.op} {getattr(source.target, '__name__', source.target)}"
                    if isinstance(source, torch.fx.Node) else repr(source))
            left[bn] = f"does not directly follow a convolution (its input is {what})"
            continue
        conv = model.get_submodule(source.target)
        why = _why_not(conv, source.target, bn, tied)
        if why is None and count[source.target] > 1:
            why = f"its convolution {source.target!r} is called {count[source.target]} times (shared by several paths)"
        if why is None and len(source.users) > 1:
            others = sorted(str(u) for u in source.users if u is not node)
            why = f"the output of {source.target!r} is also used elsewhere (by {', '.join(others)})"
        if why is None and (len(source.args) > 1 or any(v is not None for v in source.kwargs.values())):
            why = f"{source.target!r} is called with more than its input (a residual added in its epilogue)"
        if why is None and (len(node.args) > 1 or node.kwargs):
            why = "called with more than one argument"
        if why is None:
            pairs.append((conv, bn))
        else:
            left[bn] = why
    for module in model.modules():
        if isinstance(module, _BatchNorm) and module not in left and not any(module is b for _, b in pairs):
            left[module] = "not called by the model's forward (as torch.fx traced it)"
    return pairs, left


def _sequential_pairs(model: nn.Module, tied: set):
    """(pairs to fold, {batch norm: why not}) from consecutive children of nn.Sequential containers."""
    registered = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    names = _first_names(model)
    pairs, left = [], {}
    for container in model.modules():
        if not isinstance(container, nn.Sequential):
            continue
        children = list(container.children())
        for prev, bn in zip(children, children[1:]):
            if not isinstance(bn, _BatchNorm) or not isinstance(prev, _ConvNd):
                continue
            why = _why_not(prev, names[prev], bn, tied)
            if why is None and registered[id(prev)] > 1:
                why = f"its convolution {names[prev]!r} is registered {registered[id(prev)]} times (shared)"
            if why is None and registered[id(bn)] > 1:
                why = f"registered {registered[id(bn)]} times in the model (shared)"
            if why is None and any(bn is b for _, b in pairs):
                continue
            if why is None:
                pairs.append((prev, bn))
            else:
                left[bn] = why
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and module not in left and not any(module is b for _, b in pairs):
            left[module] = ("not found directly after a convolution in an nn.Sequential (the model did not "
                            "trace with torch.fx, so only nn.Sequential neighbours were searched)")
    return pairs, left


def _why_not(conv: nn.Module, conv_name: str, bn: nn.Module, tied: set) -> str | None:
    """Why this (convolution, batch norm) pair cannot be folded, from the layers (and ``tied``, the
    ids of Parameters that several modules hold); None if it can."""
    if type(conv) not in _FOLDABLE_CONVS:
        kind = "a transposed convolution" if getattr(conv, "transposed", False) else "a convolution subclass"
        return f"its convolution {conv_name!r} is {kind} ({type(conv).__qualname__}) that folding does not cover"
    if type(bn) not in _BATCH_NORMS:
        return f"{type(bn).__qualname__} is a subclass of a batch norm whose behaviour mcconv cannot vouch for"
    if getattr(conv, "activation", None) is not None:
        return (f"its convolution {conv_name!r} has a fused activation ({conv.activation!r}) before the batch norm")
    if bn.running_mean is None or bn.running_var is None:
        return "no running statistics (track_running_stats=False: it uses batch statistics even in eval mode)"
    if not isinstance(conv, _BATCH_NORMS[type(bn)]):
        return f"a {type(bn).__name__} after {conv_name!r}, a {type(conv).__name__}: dimensionalities differ"
    if bn.num_features != conv.out_channels:
        return f"{bn.num_features} features but {conv_name!r} has {conv.out_channels} output channels"
    if not conv.weight.is_floating_point():
        return f"its convolution {conv_name!r} has weight dtype {conv.weight.dtype}"
    if id(conv.weight) in tied or (conv.bias is not None and id(conv.bias) in tied):
        return f"its convolution {conv_name!r} shares its weight or bias with another module"
    if torch.nn.utils.parametrize.is_parametrized(conv):
        return f"its convolution {conv_name!r} has a parametrized weight"
    if conv._forward_pre_hooks or conv._forward_hooks:
        return f"its convolution {conv_name!r} has forward hooks, which would see the folded output"
    if bn._forward_pre_hooks or bn._forward_hooks:
        return "it has forward hooks, which folding would drop"
    return None


# --------------------------------------------------------------------------- folding

@torch.no_grad()
def _fold(conv: nn.Module, bn: _BatchNorm) -> None:
    """conv.weight *= s (per output channel), conv.bias = s * (bias - mean) + beta, in float64."""
    weight = conv.weight
    device = weight.device if weight.device.type != "mps" else torch.device("cpu")  # mps has no float64

    def f64(t):
        return t.detach().to(device=device, dtype=torch.float64)

    mean, var = f64(bn.running_mean), f64(bn.running_var)
    gamma = f64(bn.weight) if bn.weight is not None else torch.ones_like(mean)
    beta = f64(bn.bias) if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = f64(conv.bias) if conv.bias is not None else torch.zeros_like(mean)
    weight.copy_(f64(weight) * scale.reshape(-1, *[1] * (weight.dim() - 1)))  # in place: same Parameter
    new_bias = (bias - mean) * scale + beta
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias.to(device=weight.device, dtype=weight.dtype),
                                 requires_grad=weight.requires_grad)
    else:
        conv.bias.copy_(new_bias)


def _tied_parameters(model: nn.Module) -> set:
    """ids of the Parameters held by more than one module (tied weights): folding would change the others."""
    owners = Counter(id(p) for module in model.modules() for p in module._parameters.values() if p is not None)
    return {pid for pid, count in owners.items() if count > 1}


def _first_names(model: nn.Module) -> dict:
    """module -> its first qualified name (as named_modules and torch.fx name it)."""
    names = {}
    for name, module in model.named_modules():
        names.setdefault(module, name)
    return names


def _replace_everywhere(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Replace ``old`` by ``new`` under every name it is registered with."""
    slots = [(parent, name) for parent in model.modules() for name, child in parent._modules.items() if child is old]
    for parent, name in slots:
        setattr(parent, name, new)
