"""Before/after summary of benchmarks/static/: per suite, dtype and kernel, the worst and median
figures of the launches (tensor-core kernels: effective issue pressure; others: warp instructions
per element), spills, launches with synchronous main-loop loads, and the fewest warps per SM;
then, after the rework, the launches over issue 10's goals (pressure 0.6, tf32 0.8; 1.0 warp
instructions per element) and how many of them are memory-bound (issue time under memory time).

    python benchmarks/static/summarise.py            # a markdown table on stdout
"""
import json
import statistics
from pathlib import Path

HERE = Path(__file__).parent


def goal(dtype: str, tensor: bool) -> float:
    return (0.8 if dtype == "tf32" else 0.6) if tensor else 1.0


def rows(path: Path) -> dict:
    doc = json.loads(path.read_text())
    out = {}
    for r in doc["records"]:
        if r["kernel"] in ("split_sum", "split_epilogue", "bias_act_grad") or r["error"]:
            continue
        v = doc["variants"][r["variant"]]
        tensor = v["mma_kind"] not in (None, "none")
        figure = r["effective_pressure"] if tensor else r["warp_instructions_per_element"]
        k = out.setdefault(r["kernel"], {"figures": [], "spills": 0, "sync": 0, "warps": 99, "tensor": tensor,
                                         "over": 0, "over_memory_bound": 0})
        if figure is not None:
            k["figures"].append(figure)
            if figure > goal(doc["dtype"], tensor):
                k["over"] += 1
                k["over_memory_bound"] += (r["issue_memory_ratio"] or 0) < 1
        k["spills"] += bool(r["spill_bytes"])
        k["sync"] += tensor and r["async_loads"] != "all"
        k["warps"] = min(k["warps"], v["occupancy"]["warps_per_sm"])
    return out


def cell(k: dict | None) -> str:
    if not k or not k["figures"]:
        return "-"
    return (f"{max(k['figures']):.2f} / {statistics.median(k['figures']):.2f}"
            f"{' sp' + str(k['spills']) if k['spills'] else ''}{' sync' + str(k['sync']) if k['sync'] else ''}"
            f" w{k['warps']}")


def main() -> None:
    print("| suite | dtype | kernel | measure | before: max / median | after: max / median "
          "| after: over the goal (memory-bound) |")
    print("|---|---|---|---|---|---|---|")
    for suite in ("resnet50", "mobilenetv2"):
        for dtype in ("float16", "bfloat16", "tf32"):
            before = rows(HERE / f"before-{suite}-{dtype}.json")
            after = rows(HERE / f"after-{suite}-{dtype}.json")
            for kernel in sorted(set(before) | set(after)):
                tensor = (after.get(kernel) or before.get(kernel))["tensor"]
                measure = "eff. pressure" if tensor else "warp instr/elem"
                done = after.get(kernel)
                over = f"{done['over']} ({done['over_memory_bound']})" if done and done["over"] else "-"
                print(f"| {suite} | {dtype} | {kernel} | {measure} | {cell(before.get(kernel))} | {cell(done)} "
                      f"| {over} |")


if __name__ == "__main__":
    main()
