"""One GPU run of mcconv: its stages, their budgets, and ONE archive plus a summary in $OUT.

Started by ``bash benchmarks/run_gpu.sh [stages...]`` (which only finds Python and hands over).
A GPU machine returns at most 8 files from $OUT (16 MiB each, 64 MiB together, two folders
deep, names of letters, digits, '.', '_' and '-'), so everything a run produces is staged in a
temporary folder and, after every stage (so that a run killed at its time limit still returns
the last one), packed into exactly two files::

    $OUT/gpu-run.tar.gz     everything: tile tables, bench JSON/PNG, check results, logs
    $OUT/summary.txt        one page: device, versions, stages, speedups, tuned keys, errors

``python benchmarks/lay_results.py $OUT/gpu-run.tar.gz`` lays the archive into a checkout.

Archive layout (format "mcconv-gpu-run", layout 1), all under one top folder ``gpu-run/``::

    MANIFEST.json                              format, layout, device, versions, stages, files
    summary.txt                                the same page as $OUT/summary.txt
    autotune_configs/<kernel>/<device>.json    this device's tile tables (committed + tuned)
    results/<device>/<suite>-<dtype>-<layout>[-backward].json, .png     mcconv bench
    results/<device>/tests.json                test stage: counts, failing tests
    results/<device>/tune.json                 tune stage: keys before/after, keys left
    results/<device>/inspect-check.json        benchmarks/inspect_check.py
    results/<device>/sanitize.json             compute-sanitizer memcheck/racecheck counts
    logs/<name>.log, logs/pytest.xml           every command's output, as it ran

Stages (order as given; by default by value when time is short), each bounded, each skippable:

    test            the test suite natively (minus the CPU-only native-compile test)
    tune            mcconv tune, bounded; takes the time the later stages do not reserve
    bench           mcconv bench with the tuned tables (resnet50, mobilenetv2, seed; fp16)
    inspect-check   benchmarks/inspect_check.py: static prediction vs. the compiled kernel
    sanitize        a test subset under compute-sanitizer memcheck and racecheck

Environment (seconds): TOTAL_BUDGET_S 570, RESERVE_S 20 (kept for the last packing),
TEST_BUDGET_S 120 (or TEST_TIMEOUT_S), TUNE_BUDGET_S 90 (at least: tune also takes what the
later stages do not reserve), BENCH_BUDGET_S 140, INSPECT_BUDGET_S 80, SANITIZE_BUDGET_S 100
(memcheck 60 %, racecheck the rest); TEST_ARGS, TUNE_SUITES, TUNE_DTYPES, BENCH_RUNS
("suite:dtype ..."), BENCH_BACKWARD=1, SANITIZE_TOOLS, SANITIZE_FILES, SANITIZE_MEMCHECK_K,
SANITIZE_RACECHECK_K, COMPUTE_SANITIZER, PYTHON, OUT, KEEP_STAGING=1. MCCONV_GPU_RUN_FAKE=<name> is for the tests
only: no CUDA check, `mcconv bench/tune` replaced by benchmarks/fake_gpu.py (stub timings).

Standard library only: this process never imports torch (a hung CUDA init stays in a child).
"""
from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

FORMAT = "mcconv-gpu-run"
LAYOUT_VERSION = 1
TOP = "gpu-run"
ARCHIVE_NAME = "gpu-run.tar.gz"
SUMMARY_NAME = "summary.txt"
STAGES = ("test", "tune", "bench", "inspect-check", "sanitize")

MIB = 1024 * 1024
# What a GPU machine returns from $OUT (see the module docstring).
OUT_MAX_FILES = 8
OUT_MAX_FILE_BYTES = 16 * MIB
OUT_MAX_TOTAL_BYTES = 64 * MIB
OUT_MAX_DEPTH = 2  # folders below $OUT
OUT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
ARCHIVE_MAX_BYTES = 15 * MIB  # margin under the 16 MiB per file
LOG_HEAD, LOG_TAIL = 256 * 1024, 768 * 1024  # what is kept of a log that must shrink
KILL_GRACE_S = (10, 5)  # after the deadline: SIGINT, this long, SIGTERM, this long, SIGKILL
MIN_STAGE_S = 15  # a stage with less than this is skipped ("no time left")

DEFAULTS = {
    "TOTAL_BUDGET_S": 570, "RESERVE_S": 20, "TEST_BUDGET_S": 120, "TUNE_BUDGET_S": 90,
    "BENCH_BUDGET_S": 140, "INSPECT_BUDGET_S": 80, "SANITIZE_BUDGET_S": 100,
}
STAGE_BUDGET_VAR = {"test": "TEST_BUDGET_S", "tune": "TUNE_BUDGET_S", "bench": "BENCH_BUDGET_S",
                    "inspect-check": "INSPECT_BUDGET_S", "sanitize": "SANITIZE_BUDGET_S"}
# The CPU-only native-compile check runs in CI without a GPU (160 compiles, minutes): not here.
# This file's own tests check this machinery with stubs: the real run is its test.
DEFAULT_TEST_ARGS = "tests --ignore=tests/test_native_compile.py --ignore=tests/test_gpu_run.py"
DEFAULT_TUNE_SUITES = "resnet50 mobilenetv2 seed deepbench"  # most valuable first: the budget stops the rest
DEFAULT_TUNE_DTYPES = "float16 bfloat16 float32"  # tune orders by dtype first: fp16 keys come first
# then issue 12's operations on their suites (conv3d, conv1d, conv_transpose2d); the budget stops the rest
DEFAULT_BENCH_RUNS = "resnet50:float16 mobilenetv2:float16 seed:float16 video3d:float16 speech1d:float16 decoder2d:float16"
SANITIZE_FILES = "tests/test_backward_kernels.py tests/test_forward.py"  # the few backward cases first
# memcheck (~50 tests): every forward kernel on odd shapes (masked edges), strides, padding, groups,
# channels_last, int64 offsets; the backward kernels (dgrad, wgrad, depthwise, bias) and the split
# reductions. fp16 only: bf16 is gpu-marked and its test ids contain "float16", hence "not bfloat16".
DEFAULT_MEMCHECK_K = ("(test_conv2d_matches_reference and float16 and not bfloat16) or test_int64_offsets "
                      "or test_grads_fp16_channels_last or (test_split_reduction and 7)")
# racecheck (shared-memory hazards; much slower): one case per kernel family.
DEFAULT_RACECHECK_K = ("(test_conv2d_matches_reference and float16 and not bfloat16 and (1x1-c19 or 3x3-c19 "
                       "or dw-relu or 3x3-channels-last or dw-mult2-5x3)) or test_grads_fp16_channels_last")
MEMCHECK_SHARE = 0.6  # of the sanitize budget, when both tools run


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _int_env(env, name: str, default: int) -> int:
    try:
        return int(float(env.get(name, "") or default))
    except ValueError:
        return default


def settings_from_env(env=None) -> dict:
    """Budgets and options of a run, from the environment (see the module docstring)."""
    env = os.environ if env is None else env
    s = {name: _int_env(env, name, value) for name, value in DEFAULTS.items()}
    if "TEST_BUDGET_S" not in env and env.get("TEST_TIMEOUT_S"):  # the old script's name
        s["TEST_BUDGET_S"] = _int_env(env, "TEST_TIMEOUT_S", DEFAULTS["TEST_BUDGET_S"])
    s.update(
        TEST_ARGS=env.get("TEST_ARGS") or DEFAULT_TEST_ARGS,
        TUNE_SUITES=env.get("TUNE_SUITES") or DEFAULT_TUNE_SUITES,
        TUNE_DTYPES=env.get("TUNE_DTYPES") or DEFAULT_TUNE_DTYPES,
        BENCH_RUNS=env.get("BENCH_RUNS") or DEFAULT_BENCH_RUNS,
        BENCH_BACKWARD=env.get("BENCH_BACKWARD", "0") == "1",
        SANITIZE_TOOLS=env.get("SANITIZE_TOOLS") or "memcheck racecheck",
        SANITIZE_FILES=env.get("SANITIZE_FILES") or SANITIZE_FILES,
        SANITIZE_MEMCHECK_K=env.get("SANITIZE_MEMCHECK_K") or DEFAULT_MEMCHECK_K,
        SANITIZE_RACECHECK_K=env.get("SANITIZE_RACECHECK_K") or DEFAULT_RACECHECK_K,
        COMPUTE_SANITIZER=env.get("COMPUTE_SANITIZER") or "",
        FAKE=env.get("MCCONV_GPU_RUN_FAKE") or "",
    )
    return s


def safe_name(text: str) -> str:
    """A file-name-safe form of a device name (letters, digits, '.', '_', '-')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text.replace(" ", "_")) or "unknown"


def _write_json(path: Path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------- parsing logs

_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?)\b")


def parse_pytest(log_text: str, junit_path: Path | None = None) -> dict:
    """Counts and failing test ids of a pytest run, from its JUnit XML when it exists, else its log."""
    out = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failing": [], "interrupted": False,
           "summary_line": ""}
    for line in reversed(log_text.splitlines()):
        stripped = line.strip("= ").strip()
        if re.search(r"\b(passed|failed|errors?|skipped|no tests ran)\b.* in [\d.]+s", stripped):
            out["summary_line"] = stripped
            for number, word in _COUNT.findall(stripped):
                key = {"error": "errors", "warning": "warnings"}.get(word, word)
                if key in out:
                    out[key] = int(number)
            break
    for line in log_text.splitlines():
        match = re.match(r"^(FAILED|ERROR) (\S+)", line)
        if match and match.group(2) not in out["failing"]:
            out["failing"].append(match.group(2))
    out["interrupted"] = "KeyboardInterrupt" in log_text or "Interrupted:" in log_text
    if junit_path is not None and junit_path.is_file():
        try:
            root = ET.parse(junit_path).getroot()
            suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
            total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
            out.update(failed=total["failures"], errors=total["errors"], skipped=total["skipped"],
                       passed=total["tests"] - total["failures"] - total["errors"] - total["skipped"], junit=True)
            for case in root.iter("testcase"):
                if case.find("failure") is not None or case.find("error") is not None:
                    ident = f"{case.get('classname', '')}::{case.get('name', '')}"
                    if not any(ident.endswith(f.split("::")[-1]) for f in out["failing"]):
                        out["failing"].append(ident)
        except (ET.ParseError, ValueError, OSError):
            pass
    return out


_SANITIZER_INFO = re.compile(r"^========= (ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY|COMPUTE-SANITIZER|"
                             r"Target application returned|This tool|Program hit|Saved host backtrace|Host Frame|"
                             r"\s)")


def parse_sanitizer(log_text: str) -> dict:
    """Error counts from compute-sanitizer's output (memcheck or racecheck).

    ``errors``: the sum of its "ERROR SUMMARY: N errors" lines (racecheck: "(N errors, M warnings)"),
    or, for a run cut short before its summary, the error records seen so far (``complete`` False).
    """
    summaries = [int(n) for n in re.findall(r"ERROR SUMMARY: (\d+) errors?", log_text)]
    races = re.findall(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", log_text)
    lines = log_text.splitlines()
    records = []  # each error's headline, with the first "at <kernel>+<offset>" line after it
    for i, line in enumerate(lines):
        if line.startswith("========= ") and not _SANITIZER_INFO.match(line) and not line.startswith("=========     "):
            where = next((x.strip("= ").strip() for x in lines[i + 1:i + 4] if x.startswith("=========     at ")), "")
            records.append(line[len("========= "):] + (f" [{where}]" if where else ""))
    out = {"complete": bool(summaries or races), "records": len(records), "first": [r[:200] for r in records[:5]]}
    if races:
        out["hazards"] = sum(int(h) for h, _, _ in races)
        out["errors"] = sum(int(e) for _, e, _ in races)
        out["warnings"] = sum(int(w) for _, _, w in races)
    elif summaries:
        out["errors"] = sum(summaries)
    else:
        out["errors"] = len(records)
    return out


def parse_tune_log(text: str) -> dict:
    out = {}
    match = re.search(r"^tuned (\d+), skipped (\d+) already tuned, failed (\d+)", text, re.M)
    if match:
        out.update(tuned=int(match.group(1)), already=int(match.group(2)), failed=int(match.group(3)))
    match = re.search(r"budget spent: (\d+) keys left", text)
    out["left"] = int(match.group(1)) if match else 0
    match = re.search(r"^tune: (\d+) keys to tune", text, re.M)
    if match:
        out["to_tune"] = int(match.group(1))
    return out


def count_table_keys(tables: Path, device: str) -> dict:
    """{kernel: number of entries} of ``<tables>/<kernel>/<device>.json``."""
    counts = {}
    for path in sorted(Path(tables).glob(f"*/{device}.json")):
        doc = _read_json(path)
        entries = doc.get("entries") if isinstance(doc, dict) else None
        counts[path.parent.name] = len(entries) if isinstance(entries, dict) else -1
    return counts


def bench_summary(results_dir: Path) -> list[dict]:
    """One line of facts per bench JSON: suite, dtype, layout, direction, geomean and weighted speedups."""
    lines = []
    for path in sorted(Path(results_dir).glob("*.json")):
        doc = _read_json(path)
        if not isinstance(doc, dict) or "rows" not in doc or "suite" not in doc:
            continue
        rows = doc.get("rows") or []
        sources = [str(r.get("config_source", "")) for r in rows]
        lines.append({
            "file": path.name, "suite": doc.get("suite"), "dtype": doc.get("dtype"), "layout": doc.get("layout"),
            "direction": doc.get("direction", "forward"), "geomean": doc.get("geomean_speedup"),
            "weighted": doc.get("weighted_speedup"), "layers": len(rows),
            "timed": sum(1 for r in rows if r.get("speedup") is not None),
            "not_ok": sum(1 for r in rows if r.get("status") != "ok"),
            "from_tables": sum(1 for s in sources if s.startswith("table")),
        })
    return lines


# ------------------------------------------------------------------------------- the $OUT rules

def check_out_dir(out: Path) -> list[str]:
    """What a GPU machine would not return from ``out`` (empty when everything comes back)."""
    problems, files, total = [], [], 0
    out = Path(out)
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if any(not OUT_NAME.match(part) for part in rel.parts):
            problems.append(f"{rel}: name outside [A-Za-z0-9._-]")
        if path.is_symlink():
            problems.append(f"{rel}: a link")
            continue
        if path.is_dir():
            continue
        if len(rel.parts) - 1 > OUT_MAX_DEPTH:
            problems.append(f"{rel}: more than {OUT_MAX_DEPTH} folders down")
        size = path.stat().st_size
        if size > OUT_MAX_FILE_BYTES:
            problems.append(f"{rel}: {size} bytes > {OUT_MAX_FILE_BYTES}")
        files.append(rel)
        total += size
    if len(files) > OUT_MAX_FILES:
        problems.append(f"{len(files)} files > {OUT_MAX_FILES}")
    if total > OUT_MAX_TOTAL_BYTES:
        problems.append(f"{total} bytes in all > {OUT_MAX_TOTAL_BYTES}")
    return problems


# ------------------------------------------------------------------------------- summary

def _fmt_s(value) -> str:
    return "-" if value is None else f"{value:.0f}s"


def _x(value) -> str:
    return "-" if value is None else f"{value:.3f}x"


def render_summary(manifest: dict) -> str:
    """The one page: device, versions, stages, speedups, tuned keys, sanitizer counts, archive contents."""
    m = manifest
    v = m.get("versions") or {}
    lines = []
    fake = " -- FAKE RUN (stub timings, not a GPU)" if m.get("fake") else ""
    lines.append(f"mcconv GPU run {m.get('run_id', '?')}{fake}")
    dev = m.get("device") or "no CUDA device"
    extra = []
    if v.get("capability"):
        extra.append("sm_" + "".join(map(str, v["capability"])))
    if v.get("sm_count"):
        extra.append(f"{v['sm_count']} SMs")
    if v.get("memory_gib"):
        extra.append(f"{v['memory_gib']} GiB")
    if v.get("driver"):
        extra.append(f"driver {v['driver']}")
    lines.append(f"device: {dev}" + (f" ({', '.join(extra)})" if extra else ""))
    lines.append(f"python {v.get('python', '?')} | torch {v.get('torch', '?')} (CUDA {v.get('cuda') or '-'}) | "
                 f"triton {v.get('triton', '?')} | mcconv {v.get('mcconv', '?')}"
                 + (f" | git {m['git'][:12]}" if m.get("git") else "")
                 + (f" | sources {m['source_digest'][:12]}" if m.get("source_digest") else ""))
    lines.append(f"started {m.get('started', '?')}; budget {m.get('budget_s', '?')}s, used "
                 f"{_fmt_s(m.get('elapsed_s'))}; stages asked: {' '.join(m.get('stages_asked') or [])}; "
                 f"status: {m.get('status', 'running')}")
    if m.get("message"):
        lines.append(f"NOTE: {m['message']}")
    lines.append("")
    if not m.get("stages"):
        lines.append("no stage ran")
    else:
        lines.append(f"{'stage':<14} {'status':<8} {'time':>6} {'budget':>7}  note")
    for st in m.get("stages") or []:
        lines.append(f"{st['name']:<14} {st['status']:<8} {_fmt_s(st.get('seconds')):>6} "
                     f"{_fmt_s(st.get('budget_s')):>7}  {st.get('note', '')}")
    for st in m.get("stages") or []:
        d = st.get("details") or {}
        if st["name"] == "test" and d.get("failing"):
            lines.append("")
            lines.append(f"failing tests ({len(d['failing'])}):")
            lines += [f"  {t}" for t in d["failing"][:15]]
            if len(d["failing"]) > 15:
                lines.append(f"  ... and {len(d['failing']) - 15} more (logs/pytest.log)")
        if st["name"] == "bench" and d.get("suites"):
            lines.append("")
            lines.append("bench (speedup = torch time / mcconv time; geomean over layers, weighted by occurrence):")
            for b in d["suites"]:
                lines.append(f"  {b['suite']:<12} {b['dtype']:<9} {b['layout']:<14} {b['direction']:<8} "
                             f"geomean {_x(b['geomean'])}  weighted {_x(b['weighted'])}  "
                             f"({b['timed']}/{b['layers']} timed, {b['from_tables']} from tuned tables"
                             + (f", {b['not_ok']} NOT OK" if b["not_ok"] else "") + ")")
        if st["name"] == "tune" and d.get("after") is not None:
            new = {k: d["after"].get(k, 0) - d["before"].get(k, 0) for k in d["after"]}
            parts = ", ".join(f"{k} +{n}" for k, n in sorted(new.items()) if n)
            lines.append("")
            lines.append(f"tuned keys: {sum(new.values())} new ({parts or 'none'}); tables now hold "
                         f"{sum(n for n in d['after'].values() if n > 0)}; {d.get('left', 0)} keys left for a "
                         "later run")
        if st["name"] == "sanitize" and d.get("tools"):
            lines.append("")
            lines.append("compute-sanitizer:")
            for tool, t in d["tools"].items():
                if t.get("status") == "skipped":
                    lines.append(f"  {tool:<10} skipped: {t.get('note', '')}")
                    continue
                errs = t.get("errors")
                text = f"{errs} errors" if t.get("complete") else f"{errs} error records before it was cut short"
                if "hazards" in t:
                    text += f", {t['hazards']} hazards ({t.get('warnings', 0)} warnings)"
                lines.append(f"  {tool:<10} {t.get('status', '?'):<8} {text}; tests: {t.get('tests', '-')}")
                lines += [f"    {r}" for r in (t.get("first") or [])[:3]]
        if st["name"] == "inspect-check" and d.get("lines"):
            lines.append("")
            lines.append("inspect-check:")
            lines += [f"  {x}" for x in d["lines"][:12]]
    files = m.get("files") or []
    packing = m.get("packing") or {}
    if files:
        lines.append("")
        lines.append(f"archive {ARCHIVE_NAME} ({len(files)} files, under {TOP}/):")
        if packing.get("level"):
            lines.append(f"  (cut to fit {ARCHIVE_MAX_BYTES // MIB} MiB: logs shortened"
                         + (f", left out: {' '.join(packing['dropped'])}" if packing.get("dropped") else "") + ")")
        for f in files:
            lines.append(f"  {f['path']:<64} {f['bytes']:>9}" + ("  (truncated)" if f.get("truncated") else ""))
    if m.get("device"):
        lines.append("")
        lines.append(f"lay into a checkout: python benchmarks/lay_results.py <OUT>/{ARCHIVE_NAME} [--dry-run]")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- packing

def _shrink_log(data: bytes) -> bytes:
    if len(data) <= LOG_HEAD + LOG_TAIL:
        return data
    cut = len(data) - LOG_HEAD - LOG_TAIL
    return data[:LOG_HEAD] + f"\n\n[... {cut} bytes cut to fit the archive ...]\n\n".encode() + data[-LOG_TAIL:]


def _staged_files(stage: Path) -> list[Path]:
    return sorted(p for p in stage.rglob("*") if p.is_file() and not p.is_symlink()
                  and not p.name.startswith(".") and p.name not in ("MANIFEST.json",))


def build_archive(stage: Path, manifest: dict, out: Path) -> dict:
    """Write MANIFEST.json and summary.txt into ``stage``, then ``out``/gpu-run.tar.gz and
    ``out``/summary.txt (each replaced atomically). Returns the manifest.

    Until the archive fits ARCHIVE_MAX_BYTES, ever more is given up (``manifest["packing"]``
    says what): logs cut to their head and tail, then PNGs dropped, then logs cut to their
    last 64 KiB and everything but the tables and JSON results dropped.
    """
    out.mkdir(parents=True, exist_ok=True)
    staged = [(p.relative_to(stage).as_posix(), p) for p in _staged_files(stage)]
    staged = [(rel, p) for rel, p in staged if rel != SUMMARY_NAME]
    for level in range(4):
        payload, dropped = {}, []
        for rel, path in staged:
            data = path.read_bytes()
            truncated = False
            if level >= 1 and rel.startswith("logs/"):
                small = _shrink_log(data) if level < 3 else data[-64 * 1024:]
                truncated, data = len(small) < len(data), small
            if (level >= 2 and rel.endswith(".png")) or \
                    (level >= 3 and not rel.startswith(("logs/", "autotune_configs/")) and not rel.endswith(".json")):
                dropped.append(rel)
                continue
            payload[rel] = (data, truncated)
        manifest["packing"] = {"level": level, "dropped": dropped}
        manifest["files"] = [{"path": rel, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                              **({"truncated": True} if trunc else {})} for rel, (data, trunc) in payload.items()]
        summary = render_summary(manifest).encode()
        manifest_bytes = (json.dumps(manifest, indent=1, default=str) + "\n").encode()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
            for rel, data in [("MANIFEST.json", manifest_bytes), (SUMMARY_NAME, summary),
                              *((r, d) for r, (d, _) in payload.items())]:
                info = tarfile.TarInfo(f"{TOP}/{rel}")
                info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
                tar.addfile(info, io.BytesIO(data))
        archive = buf.getvalue()
        if len(archive) <= ARCHIVE_MAX_BYTES:
            break
    (stage / "MANIFEST.json").write_bytes(manifest_bytes)
    (stage / SUMMARY_NAME).write_bytes(summary)
    for name, data in ((ARCHIVE_NAME, archive), (SUMMARY_NAME, summary)):
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, out / name)
    return manifest


# ------------------------------------------------------------------------------- the run

PROBE = r"""
import json, platform, sys
info = {"python": platform.python_version(), "executable": sys.executable}
try:
    import torch
    info["torch"] = torch.__version__
    info["cuda"] = torch.version.cuda
    import triton
    info["triton"] = triton.__version__
    info["cuda_available"] = bool(torch.cuda.is_available())
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                    sm_count=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1))
    import mcconv
    info["mcconv"] = mcconv.__version__
    info["mcconv_file"] = mcconv.__file__
    from mcconv import _kernels  # the shim's kernels/ -> mcconv._kernels
    try:
        import matplotlib
        info["matplotlib"] = matplotlib.__version__
    except Exception:
        pass
except Exception as err:
    info["error"] = f"{type(err).__name__}: {err}"
print("PROBE " + json.dumps(info), flush=True)
"""


class Run:
    """One run: settings, the staging folder, the budget clock, the stage records, packing."""

    def __init__(self, repo: Path, out: Path, stages: list[str], settings: dict, python: str):
        self.repo, self.out, self.settings, self.python = repo, out, settings, python
        self.start = time.monotonic()
        self.tmp = Path(tempfile.mkdtemp(prefix="mcconv-gpu-run."))
        self.stage = self.tmp / TOP
        (self.stage / "logs").mkdir(parents=True)
        self.shim = self.tmp / "shim"
        self.child = None
        self.fake = settings["FAKE"]
        self.device = None  # file-name form of torch's device name
        self.manifest = {
            "format": FORMAT, "layout": LAYOUT_VERSION, "fake": bool(self.fake),
            "run_id": datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
            "started": now_iso(), "device": None, "versions": {}, "budget_s": settings["TOTAL_BUDGET_S"],
            "stages_asked": stages, "stages": [], "status": "running", "elapsed_s": 0,
            "settings": {k: v for k, v in settings.items() if k != "FAKE"}, "git": _git_head(repo),
            "source_digest": source_digest(repo),
        }

    # -- time
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.settings["TOTAL_BUDGET_S"] - self.elapsed()

    @property
    def results(self) -> Path:
        return self.stage / "results" / (self.device or "unknown")

    @property
    def tables(self) -> Path:
        return self.stage / "autotune_configs"

    # -- environment
    def make_shim(self) -> None:
        """mcconv without pip: a package folder of symlinks laid out as pyproject.toml installs it
        (kernels/ -> mcconv._kernels, autotune_configs/ -> mcconv.autotune_configs)."""
        pkg = self.shim / "mcconv"
        pkg.mkdir(parents=True)
        for entry in sorted((self.repo / "mcconv").iterdir()):
            if entry.name not in ("_kernels", "autotune_configs"):
                os.symlink(entry, pkg / entry.name)
        os.symlink(self.repo / "kernels", pkg / "_kernels")
        os.symlink(self.repo / "autotune_configs", pkg / "autotune_configs")
        # pytest runs from the checkout (test ids as tests/..., not ../../work/...): a script puts
        # its own folder, the shim, first on sys.path, where `python -m` would put the checkout.
        (self.shim / "run_pytest.py").write_text("import sys\nimport pytest\n\nsys.exit(pytest.main())\n")

    def pytest_cmd(self, *args: str) -> list[str]:
        return [self.python, str(self.shim / "run_pytest.py"), "-p", "no:cacheprovider", "--rootdir",
                str(self.repo), *args]

    def env(self, **extra) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.shim), *filter(None, [env.get("PYTHONPATH")])])
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("TQDM_MININTERVAL", "5")  # progress bars in the logs: a line every 5 s, not every step
        env["MCCONV_CONFIG_DIR"] = str(self.tables)  # bench and inspect read the freshly tuned tables
        if self.fake:
            env["TRITON_INTERPRET"] = "1"
        else:
            env.pop("TRITON_INTERPRET", None)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def mcconv_cmd(self, verb: str, *args: str) -> list[str]:
        if self.fake:  # the tests' stand-in: the real CLI parser and commands, stub timers, tiny layers
            return [self.python, str(self.repo / "benchmarks" / "fake_gpu.py"), verb, *args]
        return [self.python, "-m", "mcconv", verb, *args]

    # -- commands
    def run_cmd(self, name: str, cmd: list[str], timeout: float, env=None, cwd=None) -> dict:
        """Run ``cmd`` (from the shim folder), its output into logs/<name>.log as it comes; past
        ``timeout`` its process group gets SIGINT, then SIGTERM, then SIGKILL."""
        log = self.stage / "logs" / f"{name}.log"
        start = time.monotonic()
        timed_out = False
        with open(log, "ab") as f:
            f.write(f"$ {shlex.join(cmd)}\n# {now_iso()}, limit {timeout:.0f}s\n".encode())
            f.flush()
            try:
                self.child = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              cwd=cwd or self.shim, env=env or self.env(),
                                              start_new_session=True)
            except OSError as err:
                f.write(f"# could not start: {err}\n".encode())
                return {"rc": 127, "seconds": 0.0, "timed_out": False, "log": log, "error": str(err)}
            try:
                rc = self.child.wait(timeout=max(1.0, timeout))
            except subprocess.TimeoutExpired:
                timed_out = True
                rc = self._stop_child()
            finally:
                self.child = None
            seconds = time.monotonic() - start
            f.write(f"\n# exit {rc}{' (time limit: stopped)' if timed_out else ''} after {seconds:.1f}s\n".encode())
        return {"rc": rc, "seconds": seconds, "timed_out": timed_out, "log": log}

    def _stop_child(self) -> int:
        proc = self.child
        if proc is None:
            return -1
        for sig, wait in ((signal.SIGINT, KILL_GRACE_S[0]), (signal.SIGTERM, KILL_GRACE_S[1]), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)  # the child's own group (start_new_session): it and what it started
            except ProcessLookupError:
                break
            try:
                return proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        return proc.poll() if proc.poll() is not None else -9

    # -- records
    def record(self, name, status, seconds, budget, note, details=None) -> None:
        self.manifest["stages"].append({"name": name, "status": status, "seconds": round(seconds, 1),
                                        "budget_s": None if budget is None else round(budget),
                                        "note": note, "details": details or {}})
        print(f"== {name}: {status} in {seconds:.0f}s: {note}", flush=True)

    def pack(self, status=None) -> None:
        self.manifest["elapsed_s"] = round(self.elapsed(), 1)
        if status:
            self.manifest["status"] = status
        try:
            build_archive(self.stage, self.manifest, self.out)
        except Exception as err:  # noqa: BLE001 - packing must not end the run; say so where it is seen
            print(f"gpu_run: packing failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)

    # -- budgets
    def stage_budget(self, name: str, later: list[str]) -> float:
        s = self.settings
        cap = s[STAGE_BUDGET_VAR[name]]
        free = self.left() - s["RESERVE_S"]
        if name == "tune":  # resumable and open-ended: it may use what the later stages do not reserve
            reserved = sum(s[STAGE_BUDGET_VAR[n]] for n in later)
            cap = max(cap, free - reserved)
        return min(cap, free)

    def probe(self) -> dict:
        result = self.run_cmd("probe", [self.python, "-c", PROBE], timeout=max(30.0, min(120.0, self.left())))
        text = result["log"].read_text(errors="replace")
        match = re.search(r"^PROBE (\{.*\})$", text, re.M)
        info = json.loads(match.group(1)) if match else {"error": f"probe printed nothing (exit {result['rc']})"}
        smi = shutil.which("nvidia-smi")
        if smi and not self.fake:
            r = self.run_cmd("nvidia-smi", [smi, "--query-gpu=name,driver_version,clocks.max.sm,memory.total",
                                            "--format=csv"], timeout=30)
            lines = r["log"].read_text(errors="replace").splitlines()
            data = [ln for ln in lines if ln and not ln.startswith(("$", "#", "name"))]
            if data:
                parts = [p.strip() for p in data[0].split(",")]
                if len(parts) > 1:
                    info["driver"] = parts[1]
                info["nvidia_smi"] = data[0]
        return info


SOURCE_DIRS = ("mcconv", "kernels", "autotune_configs")


def source_digest(repo: Path) -> str:
    """sha256 over the library's sources (mcconv/, kernels/, autotune_configs/: *.py, *.json), to tell
    which code a run measured where the GPU machine's copy of the repository has no .git."""
    h = hashlib.sha256()
    for top in SOURCE_DIRS:
        for path in sorted(Path(repo, top).rglob("*")):
            if path.suffix in (".py", ".json") and "__pycache__" not in path.parts and path.is_file():
                h.update(path.relative_to(repo).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _git_head(repo: Path) -> str | None:
    head = repo / ".git" / "HEAD"
    try:
        text = head.read_text().strip()
        if text.startswith("ref: "):
            ref = repo / ".git" / text[5:]
            return ref.read_text().strip() if ref.is_file() else None
        return text
    except OSError:
        return None


# ------------------------------------------------------------------------------- stages

def stage_test(run: Run, budget: float):
    junit = run.stage / "logs" / "pytest.xml"
    cmd = run.pytest_cmd("-q", "-rfE", f"--junitxml={junit}", *shlex.split(run.settings["TEST_ARGS"]))
    r = run.run_cmd("pytest", cmd, budget, cwd=run.repo)
    d = parse_pytest(r["log"].read_text(errors="replace"), junit)
    d.update(rc=r["rc"], timed_out=r["timed_out"])
    _write_json(run.results / "tests.json", d)
    counts = f"{d['passed']} passed, {d['failed']} failed, {d['errors']} errors, {d['skipped']} skipped"
    if r["rc"] == 0:
        status = "ok"
    elif r["timed_out"] and not d["failed"] and not d["errors"]:
        status = "partial"
    else:
        status = "failed"
    note = counts + (" (stopped at the time limit)" if r["timed_out"] else "") + \
        ("" if r["rc"] in (0, 1) or r["timed_out"] else f" (pytest exit {r['rc']})")
    return status, note, d, r["seconds"]


def stage_tune(run: Run, budget: float):
    s = run.settings
    before = count_table_keys(run.tables, run.device)
    inner = max(5.0, budget - min(40.0, 0.3 * budget))  # tune stops *starting* keys then; a key takes a while
    cmd = run.mcconv_cmd("tune", "--suite", *s["TUNE_SUITES"].split(), "--dtype", *s["TUNE_DTYPES"].split(),
                         "--budget-s", f"{inner:.0f}", "--out-dir", str(run.tables))
    r = run.run_cmd("tune", cmd, budget)
    d = parse_tune_log(r["log"].read_text(errors="replace"))
    after = count_table_keys(run.tables, run.device)
    d.update(rc=r["rc"], timed_out=r["timed_out"], before=before, after=after, budget_s=inner)
    _write_json(run.results / "tune.json", d)
    new = sum(after.values()) - sum(before.values())
    note = f"{new} new keys"
    if "tuned" in d:
        note += f" (tuned {d['tuned']}, already {d['already']}, failed {d['failed']}), {d['left']} left"
    if r["timed_out"]:
        note += "; stopped at the time limit (tables written so far kept)"
    if r["rc"] not in (0,) and not r["timed_out"] and not d.get("failed"):
        note += f"; exit {r['rc']} (logs/tune.log)"
    if r["rc"] == 0 and not d.get("left") and not r["timed_out"]:
        status = "ok"
    elif d.get("failed") or (r["rc"] != 0 and not r["timed_out"]):
        status = "failed"
    else:
        status = "partial"
    return status, note, d, r["seconds"]


def stage_bench(run: Run, budget: float):
    s = run.settings
    deadline = time.monotonic() + budget
    runs = [tuple(item.split(":", 1)) + ("forward",) for item in s["BENCH_RUNS"].split() if ":" in item]
    if s["BENCH_BACKWARD"]:
        runs.append(("resnet50", "float16", "backward"))
    plot = bool(run.manifest["versions"].get("matplotlib"))
    statuses, notes, seconds = [], [], 0.0
    for suite, dtype, direction in runs:
        name = f"{suite}-{dtype}-channels_last" + ("-backward" if direction == "backward" else "")
        left = deadline - time.monotonic()
        if left < MIN_STAGE_S:
            statuses.append("partial")
            notes.append(f"{name}: no time left")
            continue
        args = ["--suite", suite, "--dtype", dtype, "--layout", "channels_last", "--json",
                str(run.results / f"{name}.json")]
        if direction == "backward":
            args += ["--direction", "backward"]
        elif plot:
            args += ["--plot", str(run.results / f"{name}.png")]
        r = run.run_cmd(f"bench-{name}", run.mcconv_cmd("bench", *args), left)
        seconds += r["seconds"]
        if r["rc"] == 0:
            statuses.append("ok")
        elif r["timed_out"]:
            statuses.append("partial")
            notes.append(f"{name}: stopped at the time limit")
        else:
            statuses.append("failed")
            notes.append(f"{name}: exit {r['rc']} (mismatch or error, see its JSON and logs/bench-{name}.log)")
    suites = bench_summary(run.results)
    d = {"suites": suites, "runs": [f"{a}:{b}:{c}" for a, b, c in runs]}
    done = ", ".join(f"{b['suite']} {b['dtype']}{' bwd' if b['direction'] == 'backward' else ''} {_x(b['geomean'])}"
                     for b in suites)
    status = "failed" if "failed" in statuses else "partial" if "partial" in statuses else "ok"
    return status, "; ".join(filter(None, [done and f"geomean {done}", *notes])) or "nothing ran", d, seconds


def stage_inspect(run: Run, budget: float):
    out = run.results / "inspect-check.json"
    cmd = [run.python, str(run.repo / "benchmarks" / "inspect_check.py"), "--out", str(out),
           "--budget-s", f"{max(5.0, budget - 15):.0f}",
           "--bench-json", str(run.results / "resnet50-float16-channels_last.json")]
    r = run.run_cmd("inspect-check", cmd, budget)
    doc = _read_json(out) or {}
    d = {"rc": r["rc"], "timed_out": r["timed_out"], "lines": doc.get("summary") or []}
    status = doc.get("status")
    if status not in ("ok", "partial", "failed", "skipped"):  # none, or "running": it was stopped
        status = "partial" if r["timed_out"] else "failed"
        recorded = len(doc.get("launches") or [])
        note = (("stopped at the time limit" if r["timed_out"] else f"exit {r['rc']}")
                + f"; {recorded} launches recorded in inspect-check.json (logs/inspect-check.log)")
    else:
        note = doc.get("note") or ""
    return status, note, d, r["seconds"]


def find_sanitizer(explicit: str = "") -> str | None:
    if explicit:
        return explicit if (os.path.isfile(explicit) or shutil.which(explicit)) else None
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for pattern in ("/usr/local/cuda/bin/compute-sanitizer", "/usr/local/cuda-*/bin/compute-sanitizer",
                    "/usr/local/cuda/compute-sanitizer/compute-sanitizer", "/opt/nvidia/*/compute-sanitizer"):
        for path in sorted(Path("/").glob(pattern.lstrip("/")), reverse=True):
            if path.is_file():
                return str(path)
    return None


def stage_sanitize(run: Run, budget: float):
    s = run.settings
    tool_path = find_sanitizer(s["COMPUTE_SANITIZER"])
    if tool_path is None:
        return "skipped", "compute-sanitizer not found (PATH, /usr/local/cuda*/bin; or set COMPUTE_SANITIZER)", {}, 0.0
    tools = [t for t in s["SANITIZE_TOOLS"].split() if t in ("memcheck", "racecheck", "initcheck", "synccheck")]
    deadline = time.monotonic() + budget
    results, seconds = {}, 0.0
    # Each tensor its own cudaMalloc: with torch's caching allocator an access past a tensor's end
    # usually lands in the same pooled block, and memcheck cannot see it.
    env = run.env(PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    for i, tool in enumerate(tools):
        left = deadline - time.monotonic()
        if i == len(tools) - 1:
            share = left
        else:
            share = left * MEMCHECK_SHARE if tool == "memcheck" else left / (len(tools) - i)
        if share < MIN_STAGE_S:
            results[tool] = {"status": "skipped", "errors": None, "complete": False, "note": "no time left"}
            continue
        k = s["SANITIZE_MEMCHECK_K"] if tool == "memcheck" else s["SANITIZE_RACECHECK_K"]
        cmd = [tool_path, "--tool", tool, "--target-processes", "all", "--print-limit", "100",
               *run.pytest_cmd("-v", "-rfE", *shlex.split(s["SANITIZE_FILES"]), "-k", k)]
        r = run.run_cmd(f"sanitize-{tool}", cmd, share, env=env, cwd=run.repo)
        seconds += r["seconds"]
        text = r["log"].read_text(errors="replace")
        t = parse_sanitizer(text)
        p = parse_pytest(text)
        t["tests"] = f"{p['passed']} passed, {p['failed']} failed, {p['skipped']} skipped"
        t.update(rc=r["rc"], timed_out=r["timed_out"], seconds=round(r["seconds"], 1), failing=p["failing"][:20])
        if t["errors"]:
            t["status"] = "failed"
        elif r["timed_out"]:
            t["status"] = "partial"
        elif r["rc"] != 0:
            t["status"] = "failed"  # tests failing under the sanitizer, or the tool itself
        else:
            t["status"] = "ok"
        results[tool] = t
    d = {"tools": results, "sanitizer": tool_path}
    _write_json(run.results / "sanitize.json", d)
    statuses = [t["status"] for t in results.values()]
    status = "failed" if "failed" in statuses else "partial" if ("partial" in statuses or "skipped" in statuses) \
        else "ok"
    note = "; ".join(f"{tool} {t.get('errors')} errors" + ("" if t.get("complete") else " (cut short)")
                     if t["status"] != "skipped" else f"{tool} skipped" for tool, t in results.items())
    return status, note, d, seconds


STAGE_FUNCS = {"test": stage_test, "tune": stage_tune, "bench": stage_bench, "inspect-check": stage_inspect,
               "sanitize": stage_sanitize}


# ------------------------------------------------------------------------------- main

def copy_committed_tables(repo: Path, tables: Path, device: str) -> int:
    """Start from the committed tables of this device, so tuning resumes and the archive holds the merge."""
    n = 0
    for path in sorted((repo / "autotune_configs").glob(f"*/{device}.json")):
        dest = tables / path.parent.name / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        n += 1
    return n


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "run":
        argv = argv[1:]
    repo = Path(__file__).resolve().parents[1]
    settings = settings_from_env()
    python = os.environ.get("PYTHON") or sys.executable
    python = os.path.abspath(shutil.which(python) or python)  # children run from the shim folder
    out = Path(os.environ.get("OUT") or repo / "build" / "gpu-run").resolve()
    stages = argv or list(STAGES)
    run = Run(repo, out, stages, settings, python)

    def on_signal(signum, frame):  # the outer time limit: stop the child, keep what was measured
        run._stop_child()
        run.manifest["message"] = f"stopped by signal {signum} after {run.elapsed():.0f}s"
        run.pack("killed")
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return _main(run)
    finally:
        if os.environ.get("KEEP_STAGING") != "1":
            shutil.rmtree(run.tmp, ignore_errors=True)
        else:
            print(f"staging kept in {run.stage}")


def _main(run: Run) -> int:
    unknown = [s for s in run.manifest["stages_asked"] if s not in STAGES]
    if unknown:
        run.manifest["message"] = f"unknown stage(s) {' '.join(unknown)}; known: {' '.join(STAGES)}"
        print(f"run_gpu.sh: {run.manifest['message']}", file=sys.stderr)
        run.pack("usage error")
        return 2
    run.make_shim()
    info = run.probe()
    run.manifest["versions"] = {k: v for k, v in info.items() if k != "executable"}
    if info.get("error"):
        run.manifest["message"] = (f"{run.python} cannot import torch, triton and mcconv (through the shim): "
                                   f"{info['error']}; see logs/probe.log")
        print(f"run_gpu.sh: {run.manifest['message']}", file=sys.stderr)
        run.pack("no environment")
        return 2
    if run.fake:
        info["device"] = run.fake
    elif not info.get("cuda_available"):
        run.manifest["message"] = (f"no CUDA device visible to {run.python} (torch {info.get('torch')}, CUDA "
                                   f"{info.get('cuda') or 'none'}): this script runs on a GPU machine; "
                                   "nothing was measured")
        print(f"run_gpu.sh: {run.manifest['message']}", file=sys.stderr)
        run.pack("no GPU")
        return 2
    run.device = safe_name(info["device"])
    run.manifest["device"] = run.device
    run.manifest["run_id"] += f"-{run.device}"
    run.results.mkdir(parents=True, exist_ok=True)
    run.manifest["committed_tables"] = copy_committed_tables(run.repo, run.tables, run.device)
    print(f"== device {run.device}; stages {' '.join(run.manifest['stages_asked'])}; budget "
          f"{run.settings['TOTAL_BUDGET_S']}s; out {run.out}", flush=True)
    run.pack()

    asked = run.manifest["stages_asked"]
    for i, name in enumerate(asked):
        budget = run.stage_budget(name, asked[i + 1:])
        if run.left() - run.settings["RESERVE_S"] < MIN_STAGE_S or budget <= 0:
            run.record(name, "skipped", 0.0, max(budget, 0), "no time left")
            continue
        try:
            status, note, details, seconds = STAGE_FUNCS[name](run, budget)
        except Exception as err:  # noqa: BLE001 - one broken stage must not lose the others
            status, note, details, seconds = "failed", f"gpu_run.py: {type(err).__name__}: {err}", {}, 0.0
        run.record(name, status, seconds, budget, note, details)
        run.pack()
    failed = [s["name"] for s in run.manifest["stages"] if s["status"] == "failed"]
    run.pack("failed: " + " ".join(failed) if failed else "done")
    problems = check_out_dir(run.out)
    try:
        sys.stdout.write("\n" + (run.stage / SUMMARY_NAME).read_text())
        if problems:
            print("WARNING: the GPU machine would not return all of $OUT: " + "; ".join(problems))
        sys.stdout.flush()
    except BrokenPipeError:  # whoever read our output has gone; the files are written
        pass
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
