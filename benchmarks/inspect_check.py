"""inspect-check: what ``mcconv inspect`` predicts statically against what the GPU reports.

A stage of ``bash benchmarks/run_gpu.sh``. Registers, spills and shared memory as the driver
sees them (``kernel.n_regs``; ``kernel.n_spills``, local memory in 32-bit words;
``kernel.metadata.shared``, all of Triton's CompiledKernel) exist only after a real compile and
load on a GPU. Three parts, in order of what only the GPU can give; the JSON is rewritten after
every layer, so a stop at the time limit keeps what was done:

1. ``launches`` (needs the GPU): for a few layers, every kernel launch of the forward and the
   backward, planned on this device (its tile tables, its SM count) and recorded by
   :func:`mcconv.ops.capture` as :func:`mcconv.tools.inspect.inspect` records them, is compiled
   on the device, and the same launch by :func:`mcconv.tools.compile.compile_launch` (inspect's
   engine, with its stand-in driver) for this device's compute capability. Compared: Triton's
   kernel hash (equal: the static compile specialised exactly as the launch did), registers
   (cuobjdump REG vs the driver's), local memory (cuobjdump LOCAL vs 4 x n_spills), shared memory.
2. ``inspect``: :func:`mcconv.tools.inspect.inspect_layer` (else ``inspect``) for the same layers
   and this GPU model; each device launch matched to inspect's record of the same kernel and
   compile (``variant``: the hash's first 12 digits). A launch without a matching variant means
   inspect planned a different compile than the device ran (another tile configuration or
   specialisation): reported.
3. ``ordering``: inspect's issue-bound ceiling (``ceiling_tflops``) of each layer's forward over a
   suite, against the TFLOP/s ``mcconv bench`` measured (``--bench-json``): Spearman rank
   correlation (and the measured fraction of the ceiling per layer).

Parts 2 and 3 are static: ``--offline PREVIOUS.json`` redoes them on any machine (no GPU) from
the device figures of an earlier run, e.g. when the GPU run's time ran out::

    python benchmarks/inspect_check.py --out ic.json [--bench-json r50.json] [--budget-s 80]
    python benchmarks/inspect_check.py --offline benchmarks/results/<dev>/inspect-check.json \\
        --bench-json benchmarks/results/<dev>/resnet50-float16-channels_last.json --out ic2.json

``mcconv.tools.inspect`` is imported lazily: missing or failing, parts 2 and 3 are skipped with
the reason. Exit status 0 when it ran or skipped (the JSON's "status": ok, failed -- a static
figure differs from the device's --, partial, skipped), 1 when it could not write its result.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

DEFAULT_LAYERS = ("resnet50:conv1", "resnet50:l1.0.conv2", "resnet50:l1.0.conv1", "resnet50:l2.0.conv2",
                  "mobilenetv2:dw96_112_s2")
MAX_RAW_CHARS = 100_000  # of inspect's records kept in the JSON


class Check:
    def __init__(self, out: Path, budget_s: float):
        self.out = out
        self.deadline = time.monotonic() + budget_s
        self.doc = {"status": "running", "note": "", "summary": [], "device": None, "launches": [],
                    "inspect": {"status": "not run"}, "ordering": {"status": "not run"}}
        self.save()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(f".{self.out.name}.tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, default=str) + "\n")
        os.replace(tmp, self.out)

    def finish(self, status: str, note: str) -> None:
        self.doc.update(status=status, note=note)
        self.doc["summary"] = summary_lines(self.doc)
        self.save()


# ------------------------------------------------------------------------------- part 1: device vs static

def _sha(data) -> str | None:
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()[:16] if data else None


def device_facts(kernel) -> dict:
    """What the driver reports for a CompiledKernel (loaded on the device if it was not yet)."""
    init = getattr(kernel, "_init_handles", None)
    if callable(init):
        init()
    meta = kernel.metadata
    n_spills = getattr(kernel, "n_spills", None)
    asm = getattr(kernel, "asm", None) or {}
    return {"name": getattr(meta, "name", None) or getattr(kernel, "name", None),
            "hash": getattr(meta, "hash", None) or getattr(kernel, "hash", None),
            "n_regs": getattr(kernel, "n_regs", None), "n_spills": n_spills,
            "local_bytes": None if n_spills is None else 4 * n_spills, "shared": getattr(meta, "shared", None),
            "num_warps": getattr(meta, "num_warps", None), "num_stages": getattr(meta, "num_stages", None),
            "cubin_sha": _sha(asm.get("cubin"))}


def static_facts(compiled) -> dict:
    r = compiled.resources
    return {"name": compiled.name, "hash": getattr(compiled.kernel.metadata, "hash", None),
            "registers": r.registers, "local_bytes": r.local_bytes, "spill_store_bytes": r.spill_store_bytes,
            "spill_load_bytes": r.spill_load_bytes, "shared": compiled.shared, "cubin_sha": _sha(compiled.cubin)}


def compare_facts(device: dict, static: dict) -> dict:
    """Which static figures equal the device's (None where a side lacks the figure)."""
    def same(a, b):
        return None if a is None or b is None else a == b

    return {"hash": same(device.get("hash"), static.get("hash")),
            "registers": same(device.get("n_regs"), static.get("registers")),
            "local_bytes": same(device.get("local_bytes"), static.get("local_bytes")),
            "shared": same(device.get("shared"), static.get("shared"))}


def capture_launches(plan, x, w, b, grad_y):
    """The (fn, grid, args, kwargs) launches of one plan, recorded, not run (as inspect records them)."""
    from mcconv import ops
    from mcconv.ops import bias_act, forward, input_grad, weight_grad
    from mcconv.registry import BIAS_ACT_GRAD, FORWARD, INPUT_GRAD

    operation = plan.kernel.operation
    with ops.capture() as launches:
        if operation == FORWARD:
            act = plan.spec.activation
            forward.run(plan, x, w, b, preact=act is not None and getattr(act, "needs_preact", False))
        elif operation == INPUT_GRAD:
            input_grad.run(plan, grad_y, w)
        elif operation == BIAS_ACT_GRAD:
            bias_act.run(plan, grad_y, grad_y if plan.spec.activation is not None else None)
        else:
            weight_grad.run(plan, grad_y, x)
    return list(launches)


def layer_launches(layer, dtype: str, layout: str, device="cuda", bias: bool = True, plan_for=None):
    """(plan, [(fn, grid, args, kwargs)]) of every launch of the layer's forward and backward,
    planned for the tensors' device (on CUDA: this GPU's tile tables and SM count), or for
    ``plan_for`` = {"device_name": ..., "sm_count": ...} (meta tensors, tests)."""
    import torch

    import mcconv
    from mcconv.tools.problems import layer_tensors

    x, w, b = layer_tensors(layer, dtype, layout, bias=bias, device=device)
    conv = (layer.stride, layer.padding, layer.dilation, layer.groups)
    where = dict(plan_for or {})
    fwd = mcconv.plans(x, w, b, *conv, **where)[0]
    grad_y = torch.empty_strided(fwd.out_shape, fwd.out_strides, dtype=x.dtype, device=x.device)
    for plan in mcconv.plans(x, w, b, *conv, direction="all", **where):
        if plan.launch:
            yield plan, capture_launches(plan, x, w, b, grad_y)


def compile_on_device(fn, grid, args, kwargs):
    """Triton's CompiledKernel of a launch, compiled (not run) by the active, real driver."""
    return fn.run(*args, grid=grid, warmup=True, **kwargs)


def part_launches(check: Check, layers, dtype, layout, capability: int, device="cuda",
                  device_compile=compile_on_device, plan_for=None) -> None:
    from mcconv.tools.compile import compile_launch, resolve_target

    target = resolve_target(capability)
    for layer in layers:
        if check.left() < 5:
            check.doc["launches_note"] = "time ran out"
            return
        try:
            for plan, launches in layer_launches(layer, dtype, layout, device, plan_for=plan_for):
                for fn, grid, args, kwargs in launches:
                    rec = {"layer": layer.name, "shape": layer.describe(), "dtype": dtype, "layout": layout,
                           "direction": "forward" if plan.kernel.operation == "forward" else "backward",
                           "operation": plan.kernel.operation, "kernel": plan.kernel.name,
                           "jit_name": getattr(fn, "__name__", str(fn)), "key": plan.key,
                           "config": dict(plan.config), "config_source": plan.dispatch.config_source}
                    try:
                        rec["device"] = device_facts(device_compile(fn, grid, args, kwargs))
                    except Exception as err:  # noqa: BLE001
                        rec["device_error"] = f"{type(err).__name__}: {err}"[:500]
                    try:
                        rec["static"] = static_facts(compile_launch(fn, args, kwargs, target=target))
                    except Exception as err:  # noqa: BLE001
                        rec["static_error"] = f"{type(err).__name__}: {err}"[:500]
                    if "device" in rec and "static" in rec:
                        rec["agree"] = compare_facts(rec["device"], rec["static"])
                    check.doc["launches"].append(rec)
        except Exception as err:  # noqa: BLE001 - one layer must not lose the others
            check.doc["launches"].append({"layer": layer.name, "error": f"{type(err).__name__}: {err}"[:500]})
        check.save()


# ------------------------------------------------------------------------------- part 2: mcconv inspect

def load_inspect():
    """(the mcconv.tools.inspect module, None) or (None, why)."""
    try:
        from mcconv.tools import inspect as module
    except ImportError as err:
        return None, f"mcconv.tools.inspect is not there ({err})"
    except Exception as err:  # noqa: BLE001 - a module that fails at import
        return None, f"mcconv.tools.inspect failed to import: {type(err).__name__}: {err}"
    if not callable(getattr(module, "inspect_layer", None)) and not callable(getattr(module, "inspect", None)):
        return None, "mcconv.tools.inspect has neither inspect_layer() nor inspect()"
    return module, None


def run_inspect(module, layer, dtype, layout, gpu, *, bias: bool, direction: str) -> list:
    """inspect's records of a layer: ``inspect_layer`` when there is one, else ``inspect`` on meta tensors."""
    if callable(getattr(module, "inspect_layer", None)):
        return module.inspect_layer(layer, dtype, layout, gpu, bias=bias, direction=direction)
    from mcconv.tools.problems import layer_tensors

    x, w, b = layer_tensors(layer, dtype, layout, bias=bias, device="meta")
    return module.inspect(x, w, b, layer.stride, layer.padding, layer.dilation, layer.groups, direction=direction,
                          gpu=gpu, layer=layer.name)


def to_plain(obj, depth: int = 0):
    """JSON-able plain data from whatever inspect returns (as_dict(), dataclasses, objects)."""
    if depth > 12:
        return repr(obj)[:200]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj[:4000] if isinstance(obj, str) else obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_plain(v, depth + 1) for v in obj]
    for attr in ("as_dict", "to_dict"):
        method = getattr(obj, attr, None)
        if callable(method):
            try:
                return to_plain(method(), depth + 1)
            except Exception:  # noqa: BLE001
                pass
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_plain({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
                         if not f.name.startswith("_")}, depth + 1)
    if hasattr(obj, "__dict__"):
        return to_plain({k: v for k, v in vars(obj).items() if not k.startswith("_")}, depth + 1)
    return repr(obj)[:200]


_REG_KEYS = ("registers", "n_regs", "regs")
_SHARED_KEYS = ("shared_bytes", "shared", "smem_bytes")
_NAME_KEYS = ("jit_name", "name", "kernel_name", "function")
_HASH_KEYS = ("variant", "hash")


def _num(d: dict, keys):
    for k in keys:
        v = d.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return v
    return None


def kernel_records(tree) -> list[dict]:
    """Every dict in ``tree`` that describes one compiled launch (it has a register count), with
    what its nested ``report``/``resources`` add, flattened (not descended into further)."""
    found = []

    def visit(node, layer):
        if isinstance(node, list):
            for v in node:
                visit(v, layer)
            return
        if not isinstance(node, dict):
            return
        layer = node.get("layer") if isinstance(node.get("layer"), str) else layer
        flat = dict(node)
        for nested in ("report", "resources"):
            if isinstance(node.get(nested), dict):
                flat = {**node[nested], **flat}
                if isinstance(node[nested].get("resources"), dict):
                    flat = {**node[nested]["resources"], **flat}
        regs = _num(flat, _REG_KEYS)
        if regs is None:
            for v in node.values():
                visit(v, layer)
            return
        spill = flat.get("spill_bytes")
        if spill is None and isinstance(flat.get("spill_store_bytes"), int):
            spill = flat["spill_store_bytes"] + (flat.get("spill_load_bytes") or 0)
        found.append({"layer": layer, "direction": flat.get("direction"),
                      "name": next((flat[k] for k in _NAME_KEYS if isinstance(flat.get(k), str)), None),
                      "variant": next((str(flat[k]) for k in _HASH_KEYS if flat.get(k)), None),
                      "registers": regs, "local_bytes": flat.get("local_bytes"), "spill_bytes": spill,
                      "shared": _num(flat, _SHARED_KEYS), "ceiling_tflops": _num(flat, ("ceiling_tflops",)),
                      "pressure": _num(flat, ("effective_pressure", "pressure", "issue_pressure")),
                      "error": flat.get("error")})

    visit(tree, None)
    return found


def match_predictions(launches: list[dict], predicted: list[dict]) -> tuple[list[dict], list[dict]]:
    """(pairs, unmatched): each device launch paired with inspect's record of the same layer, kernel
    and compile (variant = the first digits of Triton's hash); unmatched: device launches inspect
    has no record of that compile for (it planned another configuration or specialisation)."""
    pairs, unmatched = [], []
    for launch in launches:
        dev = launch.get("device")
        if not dev:
            continue
        same_kernel = [r for r in predicted if r["name"] == dev["name"] and r["layer"] in (None, launch["layer"])]
        exact = [r for r in same_kernel if r["variant"] and dev.get("hash") and
                 (dev["hash"].startswith(r["variant"]) or r["variant"].startswith(dev["hash"]))]
        if not exact:
            unmatched.append({"layer": launch["layer"], "kernel": dev["name"],
                              "device_variant": (dev.get("hash") or "")[:12],
                              "inspect_variants": sorted({r["variant"] or "?" for r in same_kernel})})
            continue
        rec = exact[0]
        predicted_local = rec["local_bytes"] if rec["local_bytes"] is not None else rec["spill_bytes"]
        local = dev.get("local_bytes")
        pairs.append({"layer": launch["layer"], "kernel": dev["name"], "direction": launch.get("direction"),
                      "variant": rec["variant"], "registers": [rec["registers"], dev["n_regs"]],
                      "spill_or_local_bytes": [predicted_local, local], "shared": [rec["shared"], dev["shared"]],
                      "agree": {"registers": rec["registers"] == dev["n_regs"],
                                "shared": None if rec["shared"] is None else rec["shared"] == dev["shared"],
                                # spill bytes (STL+LDL traffic) and local memory differ in kind: agree on "any"
                                "spills": None if predicted_local is None or local is None
                                else (predicted_local > 0) == (local > 0)}})
    return pairs, unmatched


def _bounded(tree):
    text = json.dumps(tree, default=str)
    return tree if len(text) <= MAX_RAW_CHARS else {"truncated": True, "text": text[:MAX_RAW_CHARS]}


def part_inspect(check: Check, module, layers, dtype, layout, gpu) -> None:
    raw, predicted, errors = [], [], []
    for layer in layers:
        if check.left() < 5:
            errors.append("time ran out")
            break
        try:
            records = to_plain(run_inspect(module, layer, dtype, layout, gpu, bias=True, direction="all"))
        except Exception as err:  # noqa: BLE001
            errors.append(f"{layer.name}: {type(err).__name__}: {err}"[:300])
            continue
        for rec in kernel_records(records):
            rec["layer"] = rec["layer"] or layer.name
            predicted.append(rec)
        for rec in records if isinstance(records, list) else [records]:
            if isinstance(rec, dict):  # without the whole KernelReport (inspect --json has it)
                raw.append({k: v for k, v in rec.items() if k != "report"})
    pairs, unmatched = match_predictions(check.doc["launches"], predicted)
    check.doc["inspect"] = {"status": "ok" if pairs or unmatched else "failed", "gpu": gpu, "pairs": pairs,
                            "unmatched": unmatched, "errors": errors, "records": len(predicted),
                            "raw": _bounded(raw)}
    if not pairs and not unmatched:
        check.doc["inspect"]["note"] = errors[0] if errors else "no inspect record to compare with a device launch"
    check.save()


# ------------------------------------------------------------------------------- part 3: ordering

def ranks(values) -> list[float]:
    """Ranks from 1, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(xs, ys) -> float | None:
    """Spearman's rank correlation (None for fewer than 3 pairs or a constant side)."""
    if len(xs) != len(ys) or len(xs) < 3:
        return None
    rx, ry = ranks(list(xs)), ranks(list(ys))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return None if vx == 0 or vy == 0 else cov / math.sqrt(vx * vy)


def ordering(ceilings: dict, bench_rows: list[dict], pressures: dict | None = None) -> dict:
    """Spearman of the predicted ceiling (TFLOP/s) per layer against the measured TFLOP/s and time;
    and of the issue pressure (higher: more issue-bound) against the measured TFLOP/s."""
    measured = {r["name"]: r for r in bench_rows if r.get("tflops") and r.get("mcconv_ms")}
    names = [n for n in ceilings if n in measured]
    xs = [ceilings[n] for n in names]
    pressures = pressures or {}
    with_p = [n for n in names if pressures.get(n) is not None]
    return {"layers": len(names),
            "spearman_vs_tflops": spearman(xs, [measured[n]["tflops"] for n in names]),
            "spearman_vs_ms": spearman(xs, [measured[n]["mcconv_ms"] for n in names]),
            "pressure_spearman_vs_tflops": spearman([pressures[n] for n in with_p],
                                                    [measured[n]["tflops"] for n in with_p]),
            "distinct_ceilings": len(set(xs)),
            "table": [{"layer": n, "ceiling_tflops": ceilings[n], "pressure": pressures.get(n),
                       "tflops": measured[n]["tflops"], "ms": measured[n]["mcconv_ms"],
                       "fraction": measured[n]["tflops"] / ceilings[n]} for n in names]}


def part_ordering(check: Check, module, bench_json: Path | None, gpu, dtype, layout) -> None:
    doc = json.loads(bench_json.read_text()) if bench_json and bench_json.is_file() else None
    if not doc or not doc.get("rows"):
        check.doc["ordering"] = {"status": "skipped", "note": f"no bench results ({bench_json})"}
        check.save()
        return
    from mcconv.tools.suites import get_suite

    layers = {layer.name: layer for layer in get_suite(doc.get("suite", "resnet50"), doc.get("batch"))}
    bias = doc.get("activation") is not None  # as bench timed them
    ceilings, pressures, errors = {}, {}, []
    for row in doc["rows"]:
        if check.left() < 3:
            errors.append("time ran out")
            break
        layer = layers.get(row["name"])
        if layer is None:
            continue
        try:
            records = kernel_records(to_plain(run_inspect(module, layer, doc.get("dtype", dtype),
                                                          doc.get("layout", layout), gpu, bias=bias,
                                                          direction="forward")))
        except Exception as err:  # noqa: BLE001
            errors.append(f"{layer.name}: {type(err).__name__}: {err}"[:300])
            continue
        values = [r for r in records if r["ceiling_tflops"]]
        if values:
            slowest = min(values, key=lambda r: r["ceiling_tflops"])  # the layer is as fast as it allows
            ceilings[layer.name] = slowest["ceiling_tflops"]
            pressures[layer.name] = slowest["pressure"]
    result = ordering(ceilings, doc["rows"], pressures)
    result.update(status="ok" if result["layers"] >= 3 else "failed", errors=errors[:10], suite=doc.get("suite"),
                  dtype=doc.get("dtype"), bench_device=doc.get("device"))
    if result["layers"] < 3:
        result["note"] = errors[0] if errors else "fewer than 3 layers with both a ceiling and a measured time"
    check.doc["ordering"] = result
    check.save()


# ------------------------------------------------------------------------------- summary

def _differs(agree: dict) -> bool:
    return any(v is False for v in agree.values())


def summary_lines(doc: dict) -> list[str]:
    lines = []
    launches = [r for r in doc.get("launches", []) if "agree" in r]
    if doc.get("launches"):
        bad = [r for r in launches if _differs(r["agree"])]
        errs = [r for r in doc["launches"] if "agree" not in r]
        lines.append(f"device vs static compile: {len(launches)} launches compared, {len(bad)} differ, "
                     f"{len(errs)} not compared")
        for r in bad[:4]:
            d, s = r["device"], r["static"]
            lines.append(f"  DIFF {r['layer']} {d['name']}: regs {s['registers']}/{d['n_regs']}, local "
                         f"{s['local_bytes']}/{d['local_bytes']}, shared {s['shared']}/{d['shared']}, "
                         f"hash {'same' if r['agree']['hash'] else 'differs'} (static/device)")
        spilled = [r for r in launches if (r["device"].get("n_spills") or 0) > 0]
        if spilled:
            lines.append("  spilling on the device: " + ", ".join(
                f"{r['layer']} {r['device']['name']} {r['device']['local_bytes']} B" for r in spilled[:4]))
    ins = doc.get("inspect") or {}
    if ins.get("status") == "ok":
        pairs, unmatched = ins.get("pairs") or [], ins.get("unmatched") or []
        bad = [p for p in pairs if _differs(p["agree"])]
        lines.append(f"mcconv inspect vs device: {len(pairs)} launches matched, {len(bad)} differ, "
                     f"{len(unmatched)} compiled otherwise than inspect planned")
        for p in bad[:4]:
            lines.append(f"  DIFF {p['layer']} {p['kernel']}: regs {p['registers']}, spill/local "
                         f"{p['spill_or_local_bytes']}, shared {p['shared']} (inspect, device)")
        for u in unmatched[:3]:
            lines.append(f"  OTHER COMPILE {u['layer']} {u['kernel']}: device {u['device_variant']}, inspect "
                         f"{', '.join(u['inspect_variants']) or 'none'}")
    elif ins.get("status") not in (None, "not run"):
        lines.append(f"mcconv inspect: {ins.get('status')}: {ins.get('note', '')}")
    order = doc.get("ordering") or {}
    if order.get("status") == "ok":
        def r3(v):
            return None if v is None else round(v, 3)

        lines.append(f"issue-bound ceiling vs measured ({order.get('suite')} {order.get('dtype')}, {order['layers']} "
                     f"layers, {order.get('distinct_ceilings')} distinct ceilings): Spearman "
                     f"{r3(order.get('spearman_vs_tflops'))} vs TFLOP/s, {r3(order.get('spearman_vs_ms'))} vs ms; "
                     f"pressure vs TFLOP/s {r3(order.get('pressure_spearman_vs_tflops'))}")
    elif order.get("status") not in (None, "not run"):
        lines.append(f"ordering: {order.get('status')}: {order.get('note', '')}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the JSON to write")
    p.add_argument("--bench-json", help="mcconv bench --json of a suite, for the ordering part")
    p.add_argument("--budget-s", type=float, default=60.0)
    p.add_argument("--layers", nargs="+", default=list(DEFAULT_LAYERS), help="suite:layer ...")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--layout", default="channels_last")
    p.add_argument("--offline", metavar="JSON", help="redo parts 2 and 3 from this earlier result (no GPU needed)")
    args = p.parse_args(argv)
    check = Check(Path(args.out), args.budget_s)
    try:
        return _run(check, args)
    except Exception as err:  # noqa: BLE001 - the JSON says what happened
        check.doc["traceback"] = traceback.format_exc()[-4000:]
        check.finish("failed", f"inspect_check.py: {type(err).__name__}: {err}"[:300])
        return 0


def _layers(names):
    from mcconv.tools.suites import get_suite

    layers = []
    for item in names:
        suite, _, name = item.partition(":")
        layers += [layer for layer in get_suite(suite) if layer.name == name][:1]
    return layers


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _run(check: Check, args) -> int:
    if args.offline and _interpreted():
        check.finish("skipped", "TRITON_INTERPRET is set: interpreted kernels are not compiled")
        return 0
    if args.offline:
        earlier = json.loads(Path(args.offline).read_text())
        check.doc["device"], check.doc["launches"] = earlier.get("device"), earlier.get("launches") or []
        check.doc["offline_from"] = args.offline
        layer_names = sorted({r["layer"] for r in check.doc["launches"] if r.get("layer")})
        layers = [layer for layer in _layers(args.layers) if layer.name in layer_names]
    else:
        import torch

        if not torch.cuda.is_available():
            check.finish("skipped", "needs a CUDA device: n_regs, n_spills and metadata.shared exist only after "
                                    "a compile and load on the GPU")
            return 0
        if _interpreted():
            check.finish("skipped", "TRITON_INTERPRET is set: interpreted kernels are not compiled")
            return 0
        major, minor = torch.cuda.get_device_capability()
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        check.doc["device"] = {"name": torch.cuda.get_device_name(), "capability": major * 10 + minor,
                               "sm_count": props.multi_processor_count}
        layers = _layers(args.layers)
        part_launches(check, layers, args.dtype, args.layout, major * 10 + minor)
    gpu = (check.doc.get("device") or {}).get("name")

    module, why = load_inspect()
    if module is None:
        check.doc["inspect"] = {"status": "skipped", "note": why}
        check.doc["ordering"] = {"status": "skipped", "note": why}
    else:
        try:
            part_inspect(check, module, layers, args.dtype, args.layout, gpu)
        except Exception as err:  # noqa: BLE001
            check.doc["inspect"] = {"status": "failed", "note": f"{type(err).__name__}: {err}"[:300]}
        try:
            part_ordering(check, module, Path(args.bench_json) if args.bench_json else None, gpu, args.dtype,
                          args.layout)
        except Exception as err:  # noqa: BLE001
            check.doc["ordering"] = {"status": "failed", "note": f"{type(err).__name__}: {err}"[:300]}
    compared = [r for r in check.doc["launches"] if "agree" in r]
    differ = [r for r in compared if _differs(r["agree"])]
    ins = check.doc["inspect"]
    ins_differ = [p for p in ins.get("pairs") or [] if _differs(p["agree"])]
    parts = [f"{len(compared)} launches: static compile " + ("= device" if not differ else f"differs in {len(differ)}")]
    if ins.get("status") == "ok":
        parts.append(f"inspect: {len(ins['pairs'])} matched, {len(ins_differ)} differ, "
                     f"{len(ins['unmatched'])} other compiles")
    else:
        parts.append(f"inspect {ins['status']}: {ins.get('note', '')}"[:140])
    order = check.doc["ordering"]
    if order.get("status") == "ok" and order.get("spearman_vs_tflops") is not None:
        parts.append(f"ceiling order vs measured TFLOP/s: Spearman {order['spearman_vs_tflops']:.2f}")
    status = "failed" if differ or ins_differ or ins.get("unmatched") or not compared else "ok"
    if status == "ok" and (check.doc.get("launches_note") or "time ran out" in (ins.get("errors") or [])
                           or "time ran out" in (order.get("errors") or [])):
        status = "partial"
    check.finish(status, "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
