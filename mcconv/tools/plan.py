"""``mcconv plan``: the cost model of one convolution (conv2d or conv3d) and what mcconv would run for it.

FLOPs count multiplications and additions separately (2*N*K*P*Q*(C/groups)*KH*KW); bytes
count each tensor once (input, weight, output, bias): the least traffic any kernel needs, so
the roofline built from them is an upper bound on attainable throughput. Needs no GPU: the
dispatch is computed on ``meta`` tensors for a named GPU model's tile table.
"""
import json
import sys
from dataclasses import dataclass

import torch

from mcconv import ACTIVATIONS, Dispatch, registry

from . import gpus
from .problems import DTYPES, LAYOUTS, layer_tensors
from .suites import Conv, Conv3dLayer, ConvTranspose2dLayer


@dataclass(frozen=True)
class Analysis:
    """Cost model and dispatch of one convolution on one GPU model."""

    layer: Conv | Conv3dLayer | ConvTranspose2dLayer
    dtype: str
    layout: str
    output_shape: tuple
    flops: int
    bytes_by_tensor: dict  # name -> bytes
    device_name: str  # the tile table consulted
    gpu: gpus.GpuSpec | None
    dispatch: Dispatch

    @property
    def bytes(self) -> int:
        return sum(self.bytes_by_tensor.values())

    @property
    def intensity(self) -> float:
        """FLOP per byte moved."""
        return self.flops / self.bytes

    @property
    def tensor_cores(self) -> bool:
        """tl.dot kernels use tensor cores, except fp32 with IEEE dots; dot-free kernels never do."""
        return registry.get(self.dispatch.kernel).uses_dot and self.dispatch.dot_precision != "ieee"

    @property
    def peak_key(self) -> str:
        """Which peak applies: "tf32" for fp32 on tensor cores, else the dtype."""
        return "tf32" if self.dtype == "float32" and self.tensor_cores else self.dtype

    @property
    def peak_tflops(self) -> float | None:
        return None if self.gpu is None else self.gpu.peak_tflops(self.peak_key, self.tensor_cores)

    @property
    def ridge(self) -> float | None:
        """Intensity (FLOP/byte) at which peak compute and peak bandwidth meet."""
        return None if self.gpu is None else self.gpu.ridge(self.peak_key, self.tensor_cores)

    @property
    def bound(self) -> str | None:
        """"memory" or "compute": which roof limits this layer on the GPU model."""
        if self.gpu is None:
            return None
        return "memory" if self.intensity < self.ridge else "compute"

    @property
    def roofline_tflops(self) -> float | None:
        """min(peak, intensity * bandwidth): the most this layer can reach, in TFLOP/s."""
        if self.gpu is None:
            return None
        return min(self.peak_tflops, self.intensity * self.gpu.bandwidth_tbs)

    def as_dict(self) -> dict:
        """JSON-ready summary."""
        return {
            "name": self.layer.name, "shape": self.layer.describe(), "dtype": self.dtype, "layout": self.layout,
            "output_shape": list(self.output_shape), "flops": self.flops, "bytes": self.bytes,
            "bytes_by_tensor": dict(self.bytes_by_tensor), "intensity": self.intensity,
            "gpu": None if self.gpu is None else self.gpu.title, "peak_tflops": self.peak_tflops,
            "peak_kind": None if self.gpu is None else (f"{self.peak_key} tensor" if self.tensor_cores
                                                        else "fp32 non-tensor"),
            "bandwidth_tbs": None if self.gpu is None else self.gpu.bandwidth_tbs,
            "ridge": self.ridge, "bound": self.bound, "roofline_tflops": self.roofline_tflops,
            "kernel": self.dispatch.kernel, "config": dict(self.dispatch.config),
            "config_source": self.dispatch.config_source, "device_name": self.device_name,
        }


def analyze(layer: Conv | Conv3dLayer | ConvTranspose2dLayer, dtype: str = "float16", layout: str = "channels_last", gpu: str | None = None,
            *, bias: bool = False, activation: str | None = None) -> Analysis:
    """Cost model and dispatch of ``layer`` for the GPU named ``gpu`` (key or device name).

    Without ``gpu``: the current CUDA device, else the H100 SXM. Raises ValueError for an
    unknown dtype, layout or GPU name, and mcconv's own errors for an invalid convolution.
    """
    device_name, spec = gpus.resolve_gpu(gpu)
    x, w, b = layer_tensors(layer, dtype, layout, bias=bias)
    dispatch = layer.explain(x, w, b, activation=activation, device_name=device_name)
    size = x.element_size()
    out = dispatch.output_shape
    nbytes = {"input": x.numel() * size, "weight": w.numel() * size, "output": _numel(out) * size}
    if bias:
        nbytes["bias"] = layer.k * size
    return Analysis(layer, dtype, layout, tuple(out), layer.flops, nbytes, device_name, spec, dispatch)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def human(value: float, unit: str) -> str:
    """1234567 -> '1.235 M<unit>' (decimal prefixes)."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.4g} {prefix}{unit}"
    return f"{value:.4g} {unit}"


def format_analysis(a: Analysis, gpu_note: str = "") -> str:
    """The human-readable report that ``mcconv plan`` prints."""
    layer, spec = a.layer, a.layer.spec
    padding = spec.padding if not isinstance(layer.padding, str) else f"{layer.padding!r} = {spec.padding}"
    lines = [f"{layer.op:<9} input {layer.input_shape} {a.dtype} {a.layout}, weight {layer.weight_shape}, "
             f"stride {spec.stride}, padding {padding} {layer.padding_order}, dilation {spec.dilation}, "
             f"groups {spec.groups}",
             f"output    {a.output_shape}",
             f"FLOPs     {human(a.flops, 'FLOP')} ({a.flops:,} = {layer.flops_formula})",
             "bytes     " + human(a.bytes, "B") + " (" + " + ".join(
                 f"{k} {human(v, 'B')}" for k, v in a.bytes_by_tensor.items()) + ", each moved once)",
             f"intensity {a.intensity:.1f} FLOP/byte"]
    if a.gpu is None:
        lines.append(f"GPU       {a.device_name}: no peak figures in mcconv.tools.gpus, so no roofline")
    else:
        kind = f"{a.peak_key} tensor-core" if a.tensor_cores else "fp32 CUDA-core (no tensor cores)"
        lines += [f"GPU       {a.gpu.title}{gpu_note}: {a.peak_tflops:g} TFLOP/s {kind} peak, "
                  f"{a.gpu.bandwidth_tbs:g} TB/s (datasheet {a.gpu.source}, dense)",
                  f"ridge     {a.ridge:.1f} FLOP/byte",
                  f"bound     {a.bound}-bound (intensity {a.intensity:.1f} "
                  f"{'<' if a.bound == 'memory' else '>='} ridge {a.ridge:.1f}); roofline ceiling "
                  f"{a.roofline_tflops:.4g} TFLOP/s"]
    lines.append(f"kernel    {a.dispatch}")
    return "\n".join(lines)


def ints(text: str, name: str, count: int | None = None) -> tuple:
    """Comma-separated integers ('x' also separates: 3x3)."""
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated integers, got {text!r}") from None
    if count is not None and len(values) != count:
        raise ValueError(f"{name}: expected {count} integers, got {text!r}")
    return values


def _pair(values) -> tuple:
    return values * 2 if len(values) == 1 else values


def layer_from_args(args, name: str = "plan"):
    """The layer that the command line's shape options describe: a :class:`Conv`, or with 5-D
    ``--input`` and ``--weight`` a :class:`Conv3dLayer` (a conv3d call), with ``--transposed`` a
    :class:`ConvTranspose2dLayer` (a conv_transpose2d call: weight C,K/groups,KH,KW).

    stride, padding and dilation go to mcconv as given (padding "same", "valid", or integers:
    1, 2 or 4 for conv2d, 1 or 3 for conv3d), so the library's own rules decide what is valid
    and what the output is.
    """
    x, wt = ints(args.input, "--input"), ints(args.weight, "--weight")
    padding = args.padding if args.padding in ("same", "valid") else ints(args.padding, "--padding")
    stride, dilation = ints(args.stride, "--stride"), ints(args.dilation, "--dilation")
    if getattr(args, "transposed", False):
        if len(x) != 4 or len(wt) != 4 or isinstance(padding, str):
            raise ValueError(f"--transposed: expected N,C,H,W, C,K/g,KH,KW and integer padding, got {args.input!r}, "
                             f"{args.weight!r} and {args.padding!r}")
        (n, c, h, w), (_, kg, kh, kw) = x, wt
        layer = ConvTranspose2dLayer(name, n, c, h, w, kg * args.groups, kh, kw, _pair(stride), _pair(padding),
                                     _pair(ints(args.output_padding, "--output-padding")), _pair(dilation),
                                     args.groups)
    elif len(x) == 5 and len(wt) == 5:
        (n, c, d, h, w), (k, _, kd, kh, kw) = x, wt
        layer = Conv3dLayer(name, n, c, d, h, w, k, kd, kh, kw, stride, padding, dilation, args.groups)
    elif len(x) == 4 and len(wt) == 4:
        (n, c, h, w), (k, _, kh, kw) = x, wt
        layer = Conv(name, n, c, h, w, k, kh, kw, stride, padding, dilation, args.groups)
    else:
        raise ValueError(f"--input, --weight: expected N,C,H,W and K,C/g,KH,KW (conv2d) or N,C,D,H,W and "
                         f"K,C/g,KD,KH,KW (conv3d), got {args.input!r} and {args.weight!r}")
    layer.spec  # noqa: B018 - validates as mcconv would, raising its errors
    return layer


def plan_command(args) -> int:
    """Cost model (FLOPs, bytes, intensity, roofline bound) and dispatch of one convolution.

    Works without a GPU: the peaks then come from --gpu's datasheet figures (default H100 SXM).
    """
    try:
        layer = layer_from_args(args)
        a = analyze(layer, args.dtype, args.layout, args.gpu, bias=args.bias, activation=args.activation)
    except (ValueError, TypeError) as err:
        print(f"mcconv plan: {err}", file=sys.stderr)
        return 2
    figures = None
    if getattr(args, "inspect", False):  # compile the forward kernel: its issue-bound ceiling (mcconv inspect)
        from .inspect import plan_ceiling

        figures = plan_ceiling(a, activation=args.activation)
    if args.json:
        print(json.dumps({**a.as_dict(), **(figures or {})}, indent=1))
        return 0
    note = ""
    if not args.gpu:
        note = " (this machine's GPU)" if torch.cuda.is_available() else " (no GPU here: default; see --gpu)"
    print(format_analysis(a, note))
    if figures is not None:
        from .inspect import plan_ceiling_lines

        print("\n".join(plan_ceiling_lines(figures, a.roofline_tflops)))
    return 0


def add_shape_options(p) -> None:
    """The options that describe one convolution (plan and inspect)."""
    p.add_argument("--input", required=True, help="input shape N,C,H,W (e.g. 32,64,56,56); N,C,D,H,W for conv3d")
    p.add_argument("--weight", required=True, help="weight shape K,C/groups,KH,KW (e.g. 64,64,3,3); "
                   "K,C/groups,KD,KH,KW for conv3d")
    p.add_argument("--stride", default="1", help="int, 'h,w' (conv3d: 'd,h,w')")
    p.add_argument("--padding", default="0",
                   help="int, 'h,w', 'top,bottom,left,right', 'same' or 'valid' (conv3d: int, 'd,h,w', 'same', 'valid')")
    p.add_argument("--dilation", default="1", help="int or 'h,w' (conv3d: 'd,h,w')")
    p.add_argument("--groups", type=int, default=1, help="channel groups")
    p.add_argument("--transposed", action="store_true",
                   help="a transposed convolution (conv_transpose2d): weight C,K/groups,KH,KW")
    p.add_argument("--output-padding", default="0", help="with --transposed: int or 'h,w'")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="input, weight and output dtype")
    p.add_argument("--layout", choices=LAYOUTS, default="channels_last", help="memory format of input and weight")
    p.add_argument("--bias", action="store_true", help="with a bias (K elements)")
    p.add_argument("--activation", choices=sorted(ACTIVATIONS), help="fused activation (default: none)")
    p.add_argument("--gpu", help="GPU model for peaks and tile table: " + ", ".join(sorted(gpus.GPUS))
                   + " or a torch device name (default: this machine's GPU, else h100-sxm)")


def _configure(p) -> None:
    add_shape_options(p)
    p.add_argument("--json", action="store_true", help="print the analysis as JSON")
    p.add_argument("--inspect", action="store_true", help="also compile the forward kernel for the GPU (a few "
                   "seconds, no GPU needed; see mcconv inspect) and show its issue-bound ceiling beside the roofline")


plan_command.configure = _configure
