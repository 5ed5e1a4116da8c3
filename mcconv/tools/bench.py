"""``mcconv bench``: mcconv beside ``torch.nn.functional.conv2d`` / ``conv3d`` (cuDNN), layer by layer.

Each layer is first checked (both results must agree within a relative-error bound), then both
are timed by the same timer (``triton.testing.do_bench``; layers that run in microseconds are
re-timed with ``do_bench_cudagraph`` so that launch overhead does not decide the comparison).
The timers are injectable, so the row logic runs and is tested on the CPU with a fake timer.
"""
import datetime
import json
import math
import os
import sys

import torch

from mcconv import ACTIVATIONS

from . import gpus
from .plan import analyze, human
from .problems import DTYPES, LAYOUTS, layer_tensors
from .progress import progress
from .suites import SUITES, Conv, get_suite, parse_shape

# ||mcconv - torch|| / ||torch|| bounds: fp32 accumulation in both, operands rounded to the dtype
# (tf32 keeps 10 mantissa bits like fp16; bf16 keeps 7).
TOLERANCE = {"float16": 1e-2, "bfloat16": 5e-2, "tf32": 1e-2, "float32": 1e-4}
CUDAGRAPH_BELOW_MS = 0.05


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected||_2 / ||expected||_2, computed in fp32."""
    a, e = actual.detach().float(), expected.detach().float()
    return float((a - e).norm() / e.norm().clamp_min(1e-30))


def geomean(values) -> float | None:
    """Geometric mean of the positive values (None when there are none)."""
    values = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def _callables(layer: Conv, x, w, b, activation, direction):
    """(mcconv_fn, torch_fn, results) for one layer; results() gives the outputs to compare."""
    act = (lambda y: y) if activation is None else ACTIVATIONS[activation].reference

    def ours():
        return layer.run(x, w, b, activation=activation)

    def theirs():  # unfused: conv (+ bias), then the activation as a separate kernel
        return act(layer.torch_run(x, w, b))

    if direction == "forward":
        return ours, theirs, lambda: (ours(), theirs())
    leaves = tuple(t for t in (x, w, b) if t is not None)
    y_ours, y_theirs = ours(), theirs()
    dy = torch.randn_like(y_theirs)

    def grad_ours():
        return torch.autograd.grad(y_ours, leaves, dy, retain_graph=True)

    def grad_theirs():
        return torch.autograd.grad(y_theirs, leaves, dy, retain_graph=True)

    return grad_ours, grad_theirs, lambda: (grad_ours(), grad_theirs())


def _tolerance_key(dtype: str, dispatch) -> str:
    # mcconv multiplies fp32 in TF32 exactly when torch would for a convolution.
    return "tf32" if dispatch.dot_precision == "tf32" else dtype


def _time_pair(fns, timer, graph_timer, below_ms):
    times = [timer(f) for f in fns]
    method = "do_bench"
    if graph_timer is not None and min(times) < below_ms:
        try:
            times, method = [graph_timer(f) for f in fns], "cudagraph"
        except Exception as err:  # noqa: BLE001 - capture can fail; the do_bench figures stand
            method = f"do_bench (cudagraph failed: {type(err).__name__})"
    return times, method


def _default_timers(device):
    if torch.device(device).type != "cuda":
        raise RuntimeError("timings need a CUDA device; pass timer= to run_rows for a fake one")
    import triton.testing

    return triton.testing.do_bench, triton.testing.do_bench_cudagraph


def run_rows(layers, dtype="float16", layout="channels_last", *, direction="forward", activation=None,
             device=None, timer=None, graph_timer=None, gpu=None, cudagraph_below_ms=CUDAGRAPH_BELOW_MS,
             show_progress=False) -> list[dict]:
    """Check, then time mcconv and torch on each layer; one dict per layer.

    ``timer(fn) -> milliseconds`` (default ``triton.testing.do_bench``) and ``graph_timer``
    (default ``do_bench_cudagraph``, used for both sides when either is under
    ``cudagraph_below_ms``) are injectable; ``gpu`` names the peak table entry for the
    roofline (default: the current device). A layer whose results disagree is not timed.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if timer is None:
        timer, default_graph = _default_timers(device)
        graph_timer = default_graph if graph_timer is None else graph_timer
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction: expected 'forward' or 'backward', got {direction!r}")
    if direction == "backward":
        graph_timer = None  # autograd.grad with retain_graph does not capture cleanly
    bias = activation is not None
    rows = []
    bar = progress(len(layers), "bench", enabled=show_progress)
    for layer in layers:
        bar.set_postfix_str(layer.name)
        a = analyze(layer, dtype, layout, gpu, bias=bias, activation=activation)
        flops = layer.flops * (2 if direction == "backward" else 1)  # dgrad + wgrad
        nbytes = a.bytes * (2 if direction == "backward" else 1)  # x, w, dy read twice; dx, dw written
        row = {"name": layer.name, "shape": layer.describe(), "count": layer.count, "kernel": a.dispatch.kernel,
               "config_source": a.dispatch.config_source, "flops": flops, "bytes": nbytes,
               "intensity": flops / nbytes, "mcconv_ms": None, "torch_ms": None, "speedup": None,
               "tflops": None, "torch_tflops": None, "roofline_tflops": None, "roofline_fraction": None,
               "torch_roofline_fraction": None,
               "rel_error": None, "timing": None, "status": "ok"}
        try:
            x, w, b = layer_tensors(layer, dtype, layout, bias=bias, device=device,
                                    requires_grad=direction == "backward", seed=None)
            ours, theirs, results = _callables(layer, x, w, b, activation, direction)
            got, want = results()
            pairs = list(zip(got, want)) if isinstance(got, tuple) else [(got, want)]
            row["rel_error"] = max(relative_error(g, e) for g, e in pairs)
            if row["rel_error"] > TOLERANCE[_tolerance_key(dtype, a.dispatch)]:
                row["status"] = "mismatch"
            else:
                (t_ours, t_theirs), row["timing"] = _time_pair((ours, theirs), timer, graph_timer,
                                                               cudagraph_below_ms)
                ceiling = None
                if a.gpu is not None:
                    # Backward keeps the forward's intensity, so the same roof applies.
                    ceiling = min(a.peak_tflops, row["intensity"] * a.gpu.bandwidth_tbs)
                row.update(mcconv_ms=t_ours, torch_ms=t_theirs, speedup=t_theirs / t_ours,
                           tflops=flops / t_ours / 1e9, torch_tflops=flops / t_theirs / 1e9,
                           roofline_tflops=ceiling)
                if ceiling:
                    row["roofline_fraction"] = row["tflops"] / ceiling
                    row["torch_roofline_fraction"] = row["torch_tflops"] / ceiling
        except Exception as err:  # noqa: BLE001 - one failing layer must not lose the others
            row["status"] = f"error: {type(err).__name__}: {err}"
        finally:
            x = w = b = ours = theirs = results = None  # free before the next layer
        rows.append(row)
        bar.update(1)
    bar.close()
    return rows


def _weighted_speedup(rows) -> float | None:
    timed = [r for r in rows if r["speedup"] is not None]
    if not timed or len(timed) < len(rows):
        return None  # a missing layer would bias the ratio
    return sum(r["count"] * r["torch_ms"] for r in timed) / sum(r["count"] * r["mcconv_ms"] for r in timed)


def make_report(rows, *, suite, dtype, layout, batch, device, direction="forward", activation=None,
                gpu: gpus.GpuSpec | None = None, command=None) -> dict:
    """The JSON document that ``--json`` writes."""
    import triton

    report = {
        "device": device, "torch": torch.__version__, "triton": triton.__version__, "suite": suite,
        "dtype": dtype, "layout": layout, "batch": batch, "direction": direction, "activation": activation,
        "command": command, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rows": rows, "geomean_speedup": geomean(r["speedup"] for r in rows),
        # network time ratio: each layer weighted by how often it occurs (Conv.count)
        "weighted_speedup": _weighted_speedup(rows),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }
    if gpu is not None:
        report["peaks"] = {"title": gpu.title, "tensor_tflops": gpu.tensor_tflops, "fp32_tflops": gpu.fp32_tflops,
                           "bandwidth_tbs": gpu.bandwidth_tbs,
                           "source": f"vendor datasheet {gpu.source}, see mcconv/gpus.py (not measured)"}
    return report


def write_json(report: dict, path) -> None:
    """Write a report (folders created; replaced atomically)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def _ms(v):
    return "-" if v is None else (f"{v * 1000:.1f}us" if v < 0.1 else f"{v:.3f}ms")


def format_table(rows, geomean_speedup=None) -> str:
    """Fixed-width table of rows, with the geometric-mean speedup last."""
    head = f"{'layer':<16} {'shape':<36} {'mcconv':>9} {'torch':>9} {'TFLOP/s':>8} {'roof%':>6} {'speedup':>8}  kernel"
    lines = [head, "-" * len(head)]
    for r in rows:
        tf = "-" if r["tflops"] is None else f"{r['tflops']:.1f}"
        roof = "-" if r["roofline_fraction"] is None else f"{100 * r['roofline_fraction']:.0f}%"
        sp = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        note = "" if r["status"] == "ok" else f"  [{r['status']}, rel err {r['rel_error']}]"
        lines.append(f"{r['name']:<16.16} {r['shape']:<36.36} {_ms(r['mcconv_ms']):>9} {_ms(r['torch_ms']):>9} "
                     f"{tf:>8} {roof:>6} {sp:>8}  {r['kernel']}{note}")
    g = "-" if geomean_speedup is None else f"{geomean_speedup:.3f}x"
    lines.append(f"geometric-mean speedup (torch time / mcconv time): {g}")
    return "\n".join(lines)


def plot(report: dict, path) -> None:
    """PNG: speedup per layer (left) and the layers on the roofline (right). Needs matplotlib."""
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'mcconv-triton[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r.get("speedup")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(12, 6 + 0.3 * len(rows)), 5.5),
                                      gridspec_kw={"width_ratios": [max(1.0, len(rows) / 12), 1]})
    names = [r["name"] for r in rows]
    speedups = [r["speedup"] for r in rows]
    left.bar(range(len(rows)), speedups, color=["tab:green" if s >= 1 else "tab:red" for s in speedups])
    left.axhline(1.0, color="black", linewidth=0.8)
    left.set_xticks(range(len(rows)), names, rotation=75, fontsize=7)
    left.set_yscale("log")
    left.set_ylabel("speedup over torch (torch ms / mcconv ms)")
    g = report.get("geomean_speedup")
    left.set_title(f"{report['suite']} {report['dtype']} {report['layout']} {report.get('direction', 'forward')}"
                   + (f": geomean {g:.2f}x" if g else ""))

    right.scatter([r["intensity"] for r in rows], [r["tflops"] for r in rows], label="mcconv", marker="o")
    right.scatter([r["intensity"] for r in rows], [r["torch_tflops"] for r in rows], label="torch", marker="x")
    peaks = report.get("peaks")
    if peaks and rows:
        roofs = [("fp32 CUDA cores", peaks["fp32_tflops"])]
        key = "tf32" if report["dtype"] == "float32" else report["dtype"]
        if key in peaks["tensor_tflops"]:
            roofs.append((f"{key} tensor cores", peaks["tensor_tflops"][key]))
        bw = peaks["bandwidth_tbs"]
        # wide enough to show every ridge point, so both slopes of each roof are visible
        xs = [min(r["intensity"] for r in rows) / 2,
              max(max(r["intensity"] for r in rows), *(peak / bw for _, peak in roofs)) * 2]
        for label, peak in roofs:
            ridge = peak / bw
            pts = sorted({xs[0], min(max(ridge, xs[0]), xs[1]), xs[1]})
            right.plot(pts, [min(peak, x * bw) for x in pts], linestyle="--", linewidth=1,
                       label=f"roof: {label} ({peaks['title']} datasheet)")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("arithmetic intensity (FLOP/byte)")
    right.set_ylabel("TFLOP/s")
    right.set_title(f"roofline, {report['device']}")
    right.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _layers(args) -> tuple[str, list[Conv]]:
    if args.shape:
        layer = parse_shape(args.shape)
        return "shape", [layer.with_batch(args.batch) if args.batch else layer]
    return args.suite, get_suite(args.suite, args.batch)


def _dispatch_text(d) -> str:
    tiles = "x".join(str(d.config[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if k in d.config)
    launch = f" w{d.config['num_warps']} s{d.config['num_stages']}" if "num_warps" in d.config else ""
    return f"{d.kernel} {tiles}{launch}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def dry_run(layers, dtype, layout, gpu=None, activation=None) -> str:
    """The suite's layers with FLOPs, intensity, roofline bound and dispatch; no kernel runs."""
    analyses = [analyze(layer, dtype, layout, gpu, bias=activation is not None, activation=activation)
                for layer in layers]
    first = analyses[0] if analyses else None
    where = "no GPU peaks" if first is None or first.gpu is None else first.gpu.title
    lines = [f"{dtype}, {layout}" + (f", conv + bias + {activation}" if activation else "") + f"; roofline: {where}",
             f"{'layer':<14} {'shape':<36} {'GFLOP':>7} {'FLOP/B':>6} {'bound':>7}  kernel, tiles MxNxK, warps, stages"]
    total = 0
    sources = set()
    for layer, a in zip(layers, analyses):
        total += layer.flops * layer.count
        sources.add(a.dispatch.config_source.split(" [")[0])
        lines.append(f"{layer.name:<14.14} {layer.describe():<36.36} {layer.flops / 1e9:>7.2f} "
                     f"{a.intensity:>6.1f} {a.bound or '-':>7}  {_dispatch_text(a.dispatch)}")
    table = f"{first.device_name}.json" if first else "-"
    if sources <= {"heuristic default"}:
        tiles = f"tiles: heuristic defaults (none in {table})"
    else:
        tiles = f"tiles: {', '.join(sorted(sources))} ({table})"
    lines.append(f"{_plural(len(layers), 'layer')}; {human(total, 'FLOP')} per pass counting repeats; {tiles}")
    return "\n".join(lines)


def bench_command(args) -> int:
    """Time mcconv against torch.nn.functional.conv2d (cuDNN, benchmark mode) on a suite of layers.

    Needs a CUDA GPU, except --dry-run, which lists the layers, their FLOPs and the dispatch.
    """
    try:
        suite, layers = _layers(args)
    except ValueError as err:
        print(f"mcconv bench: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(dry_run(layers, args.dtype, args.layout, args.gpu, args.activation))
        return 0
    if not torch.cuda.is_available():
        print("mcconv bench: timings need a CUDA GPU and none was found; `mcconv bench --dry-run` lists "
              "the layers, their FLOPs and mcconv's dispatch without one", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True  # torch at its best: cuDNN picks its fastest algorithm per shape
    device_name, spec = gpus.current_gpu()
    rows = run_rows(layers, args.dtype, args.layout, direction=args.direction, activation=args.activation,
                    show_progress=True)
    batch = layers[0].n if len({layer.n for layer in layers}) == 1 else None
    report = make_report(rows, suite=suite, dtype=args.dtype, layout=args.layout, batch=batch, device=device_name,
                         direction=args.direction, activation=args.activation, gpu=spec,
                         command=" ".join(["mcconv", *sys.argv[1:]]))
    print(f"{device_name}, torch {report['torch']}, triton {report['triton']}: {suite}, {args.dtype}, "
          f"{args.layout}, {args.direction}" + (f", conv + bias + {args.activation}" if args.activation else ""))
    if spec is None:
        print("(no datasheet peaks for this GPU in mcconv.gpus: no roofline fractions)")
    print(format_table(rows, report["geomean_speedup"]))
    if report["weighted_speedup"] is not None and suite != "shape":
        print(f"all layers weighted by occurrence in the network: {report['weighted_speedup']:.3f}x")
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def _configure(p) -> None:
    p.add_argument("--suite", choices=sorted(SUITES), default="resnet50", help="layers to run")
    p.add_argument("--shape", help="one ad-hoc layer instead of a suite: "
                   "N,C,H,W:K,C/g,KH,KW[:stride[:padding[:groups[:dilation]]]]")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="input, weight and output dtype")
    p.add_argument("--layout", choices=LAYOUTS, default="channels_last", help="memory format of input and weight")
    p.add_argument("--batch", type=int, help="batch size (default: the suite's own)")
    p.add_argument("--direction", choices=("forward", "backward"), default="forward", help="what to time")
    p.add_argument("--activation", choices=sorted(ACTIVATIONS),
                   help="time conv + bias + activation: torch unfused against mcconv's fused epilogue")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG (needs matplotlib: the [bench] extra)")
    p.add_argument("--dry-run", action="store_true", help="list layers, FLOPs and dispatch; no GPU needed")
    p.add_argument("--gpu", help="with --dry-run: GPU model for peaks and tile table (default: h100-sxm)")


bench_command.configure = _configure
