"""The one-command GPU run (benchmarks/run_gpu.sh, gpu_run.py, lay_results.py, inspect_check.py),
checked on the CPU: GPU time is rare, so the first real run must work.

A fake GPU run goes through the real script end to end: the CLI's own parser and bench/tune
commands with stub timers and tiny layers (benchmarks/fake_gpu.py), a stand-in compute-sanitizer,
the real packing. Then: what $OUT holds obeys the GPU machine's return rules (at most 8 files,
16 MiB each, 64 MiB in all, two folders deep, names of [A-Za-z0-9._-]), the archive has the
documented layout, and lay_results.py lays it into a copy of the repository, safely and
idempotently. Without a GPU, run_gpu.sh exits 2 with a clear message and still writes a summary.
"""
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "run_gpu.sh"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_run = _load("gpu_run")
lay_results = _load("lay_results")
inspect_check = _load("inspect_check")

FAKE_DEVICE = "FAKE_GPU"
FAKE_TESTS = """
import pytest

def test_passes():
    assert True

def test_bad():
    assert 1 == 2

def test_skipped():
    pytest.skip("not here")

def test_imports_mcconv_from_the_shim():  # as on the GPU machine, where mcconv is not installed
    import mcconv
    from mcconv import _kernels
    assert "/shim/mcconv/" in mcconv.__file__, mcconv.__file__
"""
# Skips its options, runs the command, then prints what compute-sanitizer prints at the end
# (memcheck: one error record and its summary; racecheck: a clean summary).
FAKE_SANITIZER = """#!/usr/bin/env bash
tool=memcheck
while [ $# -gt 0 ]; do
    case $1 in --tool) tool=$2; shift 2;; --target-processes|--print-limit) shift 2;; --*) shift;; *) break;; esac
done
echo "========= COMPUTE-SANITIZER"
"$@"; rc=$?
if [ "$tool" = racecheck ]; then
    echo "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)"
else
    echo "========= Invalid __global__ read of size 4 bytes"
    echo "=========     at conv2d_fwd_kernel+0x120 in conv2d_fwd.py:88"
    echo "========= ERROR SUMMARY: 1 error"
fi
exit $rc
"""


# Parts 1 and 2 of inspect-check without a GPU: the device's compile is played by the compile-only
# driver (its n_regs/n_spills read off the cubin), everything else is the real path: the launches
# captured from the library's plans (planned for an H100), compile_launch, inspect's records.
STATIC_PIPELINE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import inspect_check as ic
from pathlib import Path
from mcconv.tools.compile import Compiled, H100, compile_only_driver
from mcconv.tools.suites import conv

class DeviceKernel:
    def __init__(self, kernel):
        self.metadata, self.asm, self.kernel = kernel.metadata, kernel.asm, kernel
    def _init_handles(self):
        usage = Compiled(self.kernel, H100).resources
        self.n_regs, self.n_spills = usage.registers, usage.local_bytes // 4

def on_device(fn, grid, args, kwargs):
    with compile_only_driver(90):
        return DeviceKernel(fn.run(*args, grid=grid, warmup=True, **kwargs))

check = ic.Check(Path(sys.argv[2]), 300)
check.doc["device"] = {"name": "NVIDIA H100 80GB HBM3", "capability": 90}
layers = [conv("tiny3x3", 1, 16, 8, 16, 3)]
ic.part_launches(check, layers, "float16", "channels_last", 90, device="meta", device_compile=on_device,
                 plan_for={"device_name": "NVIDIA_H100_80GB_HBM3", "sm_count": 132})
module, why = ic.load_inspect()
if module is not None:
    ic.part_inspect(check, module, layers, "float16", "channels_last", "NVIDIA H100 80GB HBM3")
check.finish("ok", why or "")
"""


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCCONV_", "TRITON_INTERPRET"))}
    for name in list(env):
        if name.endswith("_BUDGET_S") or name in ("OUT", "TEST_ARGS", "BENCH_RUNS", "TUNE_SUITES", "TUNE_DTYPES"):
            env.pop(name)
    env.update(PYTHON=sys.executable, **extra)
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One fake GPU run and, beside it (in parallel), one run without a GPU."""
    tmp = tmp_path_factory.mktemp("gpu-run")
    (tmp / "test_fake.py").write_text(FAKE_TESTS)
    sanitizer = tmp / "compute-sanitizer"
    sanitizer.write_text(FAKE_SANITIZER)
    sanitizer.chmod(0o755)
    fake = _env(OUT=str(tmp / "out"), MCCONV_GPU_RUN_FAKE=FAKE_DEVICE, TEST_ARGS=str(tmp / "test_fake.py"),
                TUNE_SUITES="seed", TUNE_DTYPES="float16", BENCH_RUNS="seed:float16",
                COMPUTE_SANITIZER=str(sanitizer), SANITIZE_FILES=str(tmp / "test_fake.py"),
                SANITIZE_MEMCHECK_K="test_passes", SANITIZE_RACECHECK_K="test_passes")
    procs = {"fake": subprocess.Popen(["bash", str(SCRIPT)], env=fake, cwd=tmp, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)}
    if not torch.cuda.is_available():
        procs["nogpu"] = subprocess.Popen(["bash", str(SCRIPT), "bench"], env=_env(OUT=str(tmp / "nogpu")),
                                          cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    compiling = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # no interpreter: it compiles
    procs["static"] = subprocess.Popen([sys.executable, "-c", STATIC_PIPELINE, str(REPO / "benchmarks"),
                                        str(tmp / "inspect-check.json")], env=compiling, cwd=tmp,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=240)
        out[name] = (proc.returncode, stdout, stderr)
    out["tmp"] = tmp
    return out


def _archive(out_dir: Path):
    with tarfile.open(out_dir / gpu_run.ARCHIVE_NAME) as tar:
        return {m.name: (m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()}


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_without_a_gpu_it_says_so_exits_2_and_writes_a_summary(runs):
    rc, stdout, stderr = runs["nogpu"]
    assert rc == 2, stdout + stderr
    assert "no CUDA device visible" in stderr and "nothing was measured" in stderr
    out = runs["tmp"] / "nogpu"
    summary = (out / "summary.txt").read_text()
    assert "no CUDA device" in summary and "status: no GPU" in summary
    assert sorted(os.listdir(out)) == ["gpu-run.tar.gz", "summary.txt"] and not gpu_run.check_out_dir(out)
    assert "gpu-run/logs/probe.log" in _archive(out)


def test_fake_run_out_holds_two_files_the_machine_returns(runs):
    rc, stdout, stderr = runs["fake"]
    assert rc == 1, stdout + stderr  # a test fails and memcheck reports an error: both must show
    out = runs["tmp"] / "out"
    assert sorted(os.listdir(out)) == ["gpu-run.tar.gz", "summary.txt"]
    assert gpu_run.check_out_dir(out) == []
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and sum(p.stat().st_size for p in files) <= 64 * 2**20
    for p in files:
        rel = p.relative_to(out)
        assert len(rel.parts) - 1 <= 2 and p.stat().st_size <= 16 * 2**20
        assert all(gpu_run.OUT_NAME.match(part) for part in rel.parts)


def test_fake_run_archive_layout(runs):
    members = _archive(runs["tmp"] / "out")
    assert all(m.isfile() for m, _ in members.values())  # no links, no folders to trip over
    names = {n.removeprefix("gpu-run/") for n in members}
    assert all(n.startswith("gpu-run/") for n in members)
    dev = FAKE_DEVICE
    expected = {"MANIFEST.json", "summary.txt", f"autotune_configs/conv_direct/{dev}.json",
                f"results/{dev}/seed-float16-channels_last.json", f"results/{dev}/tests.json",
                f"results/{dev}/tune.json", f"results/{dev}/sanitize.json", f"results/{dev}/inspect-check.json",
                "logs/probe.log", "logs/pytest.log", "logs/pytest.xml", "logs/tune.log",
                "logs/bench-seed-float16-channels_last.log", "logs/inspect-check.log",
                "logs/sanitize-memcheck.log", "logs/sanitize-racecheck.log"}
    assert expected <= names, expected - names
    # the plot exists exactly when matplotlib does (the [bench] extra; CI installs [test] only)
    assert (f"results/{dev}/seed-float16-channels_last.png" in names) == HAS_MATPLOTLIB
    for name in names:  # every member is of a kind lay_results.py knows
        lay_results._classify(name, dev)
    manifest = json.loads(members["gpu-run/MANIFEST.json"][1])
    assert manifest["format"] == "mcconv-gpu-run" and manifest["layout"] == 1 and manifest["fake"] is True
    assert manifest["device"] == dev and manifest["versions"]["torch"] == torch.__version__
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == names - {"MANIFEST.json", "summary.txt"}
    import hashlib

    for path, f in listed.items():
        assert hashlib.sha256(members[f"gpu-run/{path}"][1]).hexdigest() == f["sha256"]
    stages = {s["name"]: s for s in manifest["stages"]}
    assert list(stages) == list(gpu_run.STAGES)
    assert stages["test"]["status"] == "failed" and stages["test"]["details"]["failed"] == 1
    assert stages["test"]["details"]["passed"] == 2 and stages["test"]["details"]["skipped"] == 1
    assert stages["tune"]["status"] == "ok" and stages["bench"]["status"] == "ok"
    assert stages["inspect-check"]["status"] == "skipped"  # no CUDA: said so, not failed
    sanitize = stages["sanitize"]["details"]["tools"]
    assert stages["sanitize"]["status"] == "failed"
    assert sanitize["memcheck"]["errors"] == 1 and sanitize["memcheck"]["complete"]
    assert sanitize["racecheck"]["errors"] == 0 and sanitize["racecheck"]["status"] == "ok"
    tune = json.loads(members[f"gpu-run/results/{dev}/tune.json"][1])
    assert tune["before"] == {} and tune["after"] == {"conv_direct": 1}
    bench = json.loads(members[f"gpu-run/results/{dev}/seed-float16-channels_last.json"][1])
    assert bench["geomean_speedup"] == pytest.approx(1.25) and bench["device"] == dev.replace("_", " ")
    # bench ran with the tables tuned just before (MCCONV_CONFIG_DIR points at them)
    assert all(r["config_source"].startswith(f"table {dev}.json") for r in bench["rows"])


def test_fake_run_summary_is_one_page_with_the_facts(runs):
    summary = (runs["tmp"] / "out" / "summary.txt").read_text()
    members = _archive(runs["tmp"] / "out")
    assert members["gpu-run/summary.txt"][1].decode() == summary
    lines = summary.splitlines()
    assert len(lines) <= 80 and max(map(len, lines)) <= 160
    assert "FAKE RUN" in lines[0] and f"device: {FAKE_DEVICE}" in summary
    assert f"torch {torch.__version__}" in summary and "triton" in summary
    for stage in gpu_run.STAGES:
        assert any(line.startswith(stage + " ") for line in lines), stage
    assert "test_bad" in summary  # the failing test is named
    assert "geomean 1.250x" in summary and "weighted 1.250x" in summary
    assert "tuned keys: 1 new (conv_direct +1)" in summary
    assert "memcheck" in summary and "1 errors" in summary and "Invalid __global__ read" in summary
    assert f"results/{FAKE_DEVICE}/seed-float16-channels_last.json" in summary  # where things are
    assert "lay_results.py" in summary


def _repo_copy(tmp: Path) -> Path:
    repo = tmp / "repo"
    shutil.copytree(REPO / "autotune_configs", repo / "autotune_configs",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "benchmarks").mkdir()
    return repo


def _tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_lay_merges_tables_copies_results_and_is_idempotent(runs, tmp_path):
    from mcconv.tools.tune import read_entries, write_entries

    archive = runs["tmp"] / "out" / gpu_run.ARCHIVE_NAME
    repo = _repo_copy(tmp_path)
    table = repo / "autotune_configs" / "conv_direct" / f"{FAKE_DEVICE}.json"
    theirs = {"float16/M=1024/N=1024/R=1024": {"config": {"BLOCK_M": 64}, "updated": "2020-01-01T00:00:00+00:00"}}
    write_entries(table, "conv_direct", FAKE_DEVICE, theirs)
    before = _tree(repo)

    with pytest.raises(lay_results.Refused, match="FAKE run"):
        lay_results.lay(archive, repo, log=lambda *a: None)
    lay_results.lay(archive, repo, dry_run=True, allow_fake=True, log=lambda *a: None)
    assert _tree(repo) == before  # a dry run writes nothing

    said = []
    done = lay_results.lay(archive, repo, allow_fake=True, log=said.append)
    tuned = json.loads(_archive(runs["tmp"] / "out")[f"gpu-run/autotune_configs/conv_direct/{FAKE_DEVICE}.json"][1])
    merged = read_entries(table)
    assert set(merged) == set(theirs) | set(tuned["entries"])  # merged, the checkout's entry kept
    assert merged[next(iter(tuned["entries"]))] == next(iter(tuned["entries"].values()))
    results = repo / "benchmarks" / "results" / FAKE_DEVICE
    assert {p.name for p in results.iterdir()} == {
        "seed-float16-channels_last.json", "tests.json", "tune.json", "sanitize.json", "inspect-check.json",
        "gpu-run.json", "gpu-run-summary.txt"} | ({"seed-float16-channels_last.png"} if HAS_MATPLOTLIB else set())
    logs = list((repo / "build" / "gpu-runs").glob("*/logs/pytest.log"))
    assert len(logs) == 1 and not list(results.rglob("*.log"))  # logs out of the tracked tree
    assert any("+1 new" in line for line in done["tables"]) and any("added" in s for s in said)

    after = _tree(repo)
    again = lay_results.lay(archive, repo, allow_fake=True, log=lambda *a: None)
    assert _tree(repo) == after  # idempotent: byte for byte
    assert all("unchanged" in line for section in again.values() for line in section)


def test_lay_keeps_a_newer_checkout_entry(runs, tmp_path):
    from mcconv.tools.tune import read_entries, write_entries

    archive = runs["tmp"] / "out" / gpu_run.ARCHIVE_NAME
    tuned = json.loads(_archive(runs["tmp"] / "out")[f"gpu-run/autotune_configs/conv_direct/{FAKE_DEVICE}.json"][1])
    key = next(iter(tuned["entries"]))
    repo = _repo_copy(tmp_path)
    table = repo / "autotune_configs" / "conv_direct" / f"{FAKE_DEVICE}.json"
    newer = {"config": {"BLOCK_M": 128}, "updated": "2999-01-01T00:00:00+00:00"}
    write_entries(table, "conv_direct", FAKE_DEVICE, {key: newer})
    done = lay_results.lay(archive, repo, allow_fake=True, logs="none", log=lambda *a: None)
    assert read_entries(table)[key] == newer and any("1 kept" in line for line in done["tables"])
    assert not (repo / "build").exists()


def _tar(tmp_path, entries, manifest=None):
    """An archive from (name, bytes | ("link", target))."""
    path = tmp_path / "bad.tar.gz"
    if manifest is not None:
        entries = [("gpu-run/MANIFEST.json", json.dumps(manifest).encode()), *entries]
    with tarfile.open(path, "w:gz") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, data[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


GOOD = {"format": "mcconv-gpu-run", "layout": 1, "device": "SOME_GPU", "run_id": "r1"}


@pytest.mark.parametrize("entries, manifest, match", [
    ([("gpu-run/results/SOME_GPU/x.json", ("link", "/etc/passwd"))], GOOD, "not a regular file"),
    ([("gpu-run/../evil.json", b"{}")], GOOD, "unsafe member path"),
    ([("/abs/gpu-run/x.json", b"{}")], GOOD, "unsafe member path"),
    ([("elsewhere/x.json", b"{}")], GOOD, "not under gpu-run/"),
    ([("gpu-run/other/x.json", b"{}")], GOOD, "unknown layout: unexpected member"),
    ([("gpu-run/results/OTHER_GPU/x.json", b"{}")], GOOD, "unknown layout: unexpected member"),
    ([("gpu-run/autotune_configs/conv_direct/deep/x.json", b"{}")], GOOD, "unknown layout"),
    ([("gpu-run/results/SOME_GPU/x.json", b"{}")], None, "no gpu-run/MANIFEST.json"),
    ([], {**GOOD, "format": "something-else"}, "format"),
    ([], {**GOOD, "layout": 99}, "unknown layout version 99"),
    ([], {**GOOD, "device": "../x"}, "no usable device"),
    ([("gpu-run/autotune_configs/conv_direct/SOME_GPU.json", b"not json")], GOOD, "not a tile table"),
])
def test_lay_refuses_unsafe_or_unknown_archives(tmp_path, entries, manifest, match):
    repo = _repo_copy(tmp_path)
    before = _tree(repo)
    path = _tar(tmp_path, entries, manifest)
    with pytest.raises(lay_results.Refused, match=match):
        lay_results.lay(path, repo, log=lambda *a: None)
    assert _tree(repo) == before and not (tmp_path / "evil.json").exists()


def test_lay_command_line_says_why_it_refuses(tmp_path, capsys):
    repo = _repo_copy(tmp_path)
    path = _tar(tmp_path, [("gpu-run/x", b"")], None)
    assert lay_results.main([str(path), "--repo", str(repo)]) == 2
    assert "refused" in capsys.readouterr().err
    assert lay_results.main([str(tmp_path / "missing.tar.gz"), "--repo", str(repo)]) == 2


# ------------------------------------------------------------------------------- pieces, no subprocess of torch

def test_budgets_add_up_and_tune_takes_what_is_free(tmp_path, monkeypatch):
    s = gpu_run.settings_from_env({})
    reserved = sum(s[v] for v in gpu_run.STAGE_BUDGET_VAR.values()) + s["RESERVE_S"]
    assert s["TOTAL_BUDGET_S"] == 570 and reserved <= s["TOTAL_BUDGET_S"]
    assert gpu_run.settings_from_env({"TEST_TIMEOUT_S": "99"})["TEST_BUDGET_S"] == 99  # the old name
    assert gpu_run.settings_from_env({"BENCH_BUDGET_S": "33", "TUNE_DTYPES": "float16"})["BENCH_BUDGET_S"] == 33
    run = gpu_run.Run(REPO, tmp_path / "out", list(gpu_run.STAGES), s, sys.executable)
    try:
        free = run.left() - s["RESERVE_S"]
        later = s["BENCH_BUDGET_S"] + s["INSPECT_BUDGET_S"] + s["SANITIZE_BUDGET_S"]
        assert run.stage_budget("tune", ["bench", "inspect-check", "sanitize"]) == pytest.approx(free - later, abs=1)
        assert run.stage_budget("tune", []) == pytest.approx(free, abs=1)  # alone: all of it
        assert run.stage_budget("bench", []) == s["BENCH_BUDGET_S"]
        run.start -= s["TOTAL_BUDGET_S"] - 30  # 30 s left: capped by what is left
        assert run.stage_budget("bench", []) == pytest.approx(30 - s["RESERVE_S"], abs=1)
    finally:
        shutil.rmtree(run.tmp)


def test_archive_is_rebuilt_after_every_stage(tmp_path, monkeypatch):
    """A run killed at the command's limit still returns the archive of its last finished stage."""
    seen = []
    run = gpu_run.Run(REPO, tmp_path / "out", ["test", "tune", "bench"], gpu_run.settings_from_env({}),
                      sys.executable)
    monkeypatch.setattr(run, "probe", lambda: {"device": "X GPU", "cuda_available": True, "torch": "t"})

    def stage(name):
        def fn(r, budget):
            manifest = json.loads(_archive(r.out)["gpu-run/MANIFEST.json"][1])
            seen.append([s["name"] for s in manifest["stages"]])
            (r.results / f"{name}.json").write_text("{}")
            return "ok", name, {}, 0.1
        return fn

    monkeypatch.setattr(gpu_run, "STAGE_FUNCS", {n: stage(n) for n in ("test", "tune", "bench")})
    try:
        assert gpu_run._main(run) == 0
    finally:
        shutil.rmtree(run.tmp)
    assert seen == [[], ["test"], ["test", "tune"]]
    members = _archive(tmp_path / "out")
    assert {"gpu-run/results/X_GPU/test.json", "gpu-run/results/X_GPU/bench.json"} <= set(members)


def test_a_command_past_its_limit_is_stopped_and_its_log_kept(tmp_path):
    run = gpu_run.Run(REPO, tmp_path / "out", ["test"], gpu_run.settings_from_env({}), sys.executable)
    run.shim.mkdir()
    try:
        start = time.monotonic()
        child = "import time\nprint('started', flush=True)\ntime.sleep(60)"
        r = run.run_cmd("sleepy", [sys.executable, "-c", child], timeout=1.0, env=dict(os.environ))
        assert r["timed_out"] and r["rc"] != 0 and time.monotonic() - start < 15
        text = r["log"].read_text()
        assert "started" in text and "time limit: stopped" in text
    finally:
        shutil.rmtree(run.tmp)


def test_an_oversized_log_is_cut_to_fit(tmp_path, monkeypatch):
    stage = tmp_path / "stage"
    (stage / "logs").mkdir(parents=True)
    (stage / "logs" / "big.log").write_bytes(b"start\n" + os.urandom(3 * 2**20) + b"\nthe end\n")
    (stage / "logs" / "small.log").write_text("fine\n")
    monkeypatch.setattr(gpu_run, "ARCHIVE_MAX_BYTES", 3 * 2**19)  # 1.5 MiB: the head and tail (1 MiB) fit
    manifest = gpu_run.build_archive(stage, {"format": "mcconv-gpu-run", "stages": []}, tmp_path / "out")
    assert (tmp_path / "out" / "gpu-run.tar.gz").stat().st_size <= 3 * 2**19
    big = next(f for f in manifest["files"] if f["path"] == "logs/big.log")
    assert big.get("truncated") and manifest["packing"]["level"] >= 1
    data = _archive(tmp_path / "out")["gpu-run/logs/big.log"][1]
    assert data.startswith(b"start\n") and data.endswith(b"the end\n") and b"bytes cut" in data
    assert _archive(tmp_path / "out")["gpu-run/logs/small.log"][1] == b"fine\n"


def test_out_dir_rules(tmp_path):
    out = tmp_path / "out"
    (out / "a" / "b" / "c").mkdir(parents=True)
    (out / "a" / "b" / "ok.txt").write_text("x")
    assert gpu_run.check_out_dir(out) == []
    (out / "a" / "b" / "c" / "deep.txt").write_text("x")
    (out / "bad name.txt").write_text("x")
    with open(out / "big.bin", "wb") as f:
        f.truncate(17 * 2**20)
    for i in range(6):
        (out / f"f{i}").write_text("x")
    problems = " | ".join(gpu_run.check_out_dir(out))
    assert "more than 2 folders down" in problems and "bad name.txt" in problems
    assert "big.bin" in problems and "files > 8" in problems


def test_parsers():
    log = ("collected 5 items\n..F.s\n=== short test summary info ===\nFAILED tests/test_a.py::test_x[1] - boom\n"
           "ERROR tests/test_b.py::test_y - fixture\n1 failed, 3 passed, 1 skipped, 1 error in 2.50s\n")
    p = gpu_run.parse_pytest(log)
    assert (p["passed"], p["failed"], p["skipped"], p["errors"]) == (3, 1, 1, 1)
    assert p["failing"] == ["tests/test_a.py::test_x[1]", "tests/test_b.py::test_y"] and not p["interrupted"]
    cut = gpu_run.parse_pytest("..\n!!! KeyboardInterrupt !!!\n2 passed in 9.00s\n")
    assert cut["interrupted"] and cut["passed"] == 2

    memcheck = ("========= COMPUTE-SANITIZER\n========= Invalid __global__ write of size 2 bytes\n"
                "=========     at 0x1a0 in kernel\n========= Program hit cudaErrorLaunchFailure\n"
                "========= Invalid __global__ read of size 4 bytes\n========= ERROR SUMMARY: 2 errors\n")
    m = gpu_run.parse_sanitizer(memcheck)
    assert m["errors"] == 2 and m["complete"]
    assert m["first"][0] == "Invalid __global__ write of size 2 bytes [at 0x1a0 in kernel]"
    short = gpu_run.parse_sanitizer(memcheck.rsplit("=========", 1)[0])  # killed before its summary
    assert not short["complete"] and short["errors"] == 2
    race = gpu_run.parse_sanitizer("========= Error: Race reported between Write access at x and Read access\n"
                                   "========= RACECHECK SUMMARY: 3 hazards displayed (1 error, 2 warnings)\n")
    assert race["errors"] == 1 and race["hazards"] == 3 and race["warnings"] == 2
    assert gpu_run.parse_sanitizer("========= ERROR SUMMARY: 0 errors\n")["errors"] == 0

    t = gpu_run.parse_tune_log("tune: 40 keys to tune, 3 already tuned; ...\ntuned 12, skipped 3 already tuned, "
                               "failed 1; precompilation: none\nbudget spent: 27 keys left; run again\n")
    assert t == {"to_tune": 40, "tuned": 12, "already": 3, "failed": 1, "left": 27}


def test_sanitizer_and_missing_tools_are_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu_run.find_sanitizer(str(tmp_path / "nope")) is None
    tool = tmp_path / "compute-sanitizer"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert gpu_run.find_sanitizer() == str(tool)


# ------------------------------------------------------------------------------- inspect-check

def test_inspect_check_without_cuda_or_inspect_skips_with_the_reason(tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("checks the behaviour without a GPU")
    out = tmp_path / "ic.json"
    assert inspect_check.main(["--out", str(out), "--budget-s", "5"]) == 0
    doc = json.loads(out.read_text())
    assert doc["status"] == "skipped" and "needs a CUDA device" in doc["note"]
    import mcconv.tools

    monkeypatch.setitem(sys.modules, "mcconv.tools.inspect", None)  # as when the module is not there
    monkeypatch.delattr(mcconv.tools, "inspect", raising=False)  # (an earlier test may have imported it)
    fn, why = inspect_check.load_inspect()
    assert fn is None and "mcconv.tools.inspect" in why


def test_inspect_check_calls_inspect_layer_else_inspect():
    calls = []

    class WithLayer:
        @staticmethod
        def inspect_layer(layer, dtype, layout, gpu, *, bias, direction):
            calls.append(("inspect_layer", layer, dtype, layout, gpu, bias, direction))
            return []

    class TensorsOnly:
        @staticmethod
        def inspect(x, w, b, stride, padding, dilation, groups, *, direction, gpu, layer):
            calls.append(("inspect", tuple(x.shape), x.device.type, b is not None, stride, direction, gpu, layer))
            return []

    from mcconv.tools.suites import conv

    layer = conv("tiny", 1, 8, 6, 16, 3, stride=2)
    inspect_check.run_inspect(WithLayer, layer, "float16", "channels_last", "GPU", bias=True, direction="all")
    inspect_check.run_inspect(TensorsOnly, layer, "float16", "channels_last", "GPU", bias=False, direction="forward")
    assert calls == [("inspect_layer", layer, "float16", "channels_last", "GPU", True, "all"),
                     ("inspect", (1, 8, 6, 6), "meta", False, (2, 2), "forward", "GPU", "tiny")]


def _launch_record(layer, jit, variant, regs, shared, spill=0, ceiling=None, pressure=None):
    """Shaped like mcconv.tools.inspect.LaunchRecord.as_dict(): figures at the top, the KernelReport nested."""
    return {"layer": layer, "direction": "forward", "kernel": "conv_direct", "jit_name": jit, "variant": variant,
            "registers": regs, "spill_bytes": spill, "ceiling_tflops": ceiling, "effective_pressure": pressure,
            "report": {"name": jit, "registers": regs, "shared_bytes": shared, "spill_store_bytes": spill,
                       "spill_load_bytes": 0}}


def test_inspect_check_matches_inspect_records_to_device_launches():
    class Record:
        def __init__(self, d):
            self.d = d

        def as_dict(self):
            return self.d

    tree = inspect_check.to_plain([Record(_launch_record("l1", "conv2d_fwd_kernel", "aaaaaaaaaaaa", 96, 32768)),
                                   Record(_launch_record("l1", "reduce_kernel", "bbbbbbbbbbbb", 30, 0)),
                                   Record(_launch_record("l1", "wgrad_kernel", "cccccccccccc", 64, 0))])
    records = inspect_check.kernel_records(tree)  # one per launch: the nested report is not another
    assert [(r["layer"], r["name"], r["variant"], r["registers"], r["shared"]) for r in records] == [
        ("l1", "conv2d_fwd_kernel", "aaaaaaaaaaaa", 96, 32768), ("l1", "reduce_kernel", "bbbbbbbbbbbb", 30, 0),
        ("l1", "wgrad_kernel", "cccccccccccc", 64, 0)]

    def launch(name, hash_, regs, local, shared):
        return {"layer": "l1", "direction": "forward",
                "device": {"name": name, "hash": hash_ + "0" * 52, "n_regs": regs, "local_bytes": local,
                           "shared": shared}}

    pairs, unmatched = inspect_check.match_predictions(
        [launch("conv2d_fwd_kernel", "aaaaaaaaaaaa", 96, 0, 32768), launch("reduce_kernel", "bbbbbbbbbbbb", 32, 8, 0),
         launch("wgrad_kernel", "dddddddddddd", 64, 0, 0), {"layer": "l1", "device_error": "boom"}], records)
    assert [p["agree"] for p in pairs] == [{"registers": True, "shared": True, "spills": True},
                                           {"registers": False, "shared": True, "spills": False}]
    assert unmatched == [{"layer": "l1", "kernel": "wgrad_kernel", "device_variant": "dddddddddddd",
                          "inspect_variants": ["cccccccccccc"]}]


def test_inspect_check_ranks_ceilings_against_measured_times():
    assert inspect_check.ranks([3, 1, 2, 2]) == [4, 1, 2.5, 2.5]
    assert inspect_check.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert inspect_check.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    assert inspect_check.spearman([1, 2], [1, 2]) is None and inspect_check.spearman([1, 1, 1], [1, 2, 3]) is None
    rows = [{"name": n, "mcconv_ms": 1 / tf, "tflops": tf} for n, tf in (("a", 100.0), ("b", 300.0), ("c", 200.0))]
    order = inspect_check.ordering({"a": 400.0, "b": 900.0, "c": 989.0, "zz": 1.0}, rows,
                                   {"a": 2.0, "b": 0.5, "c": 0.9})
    assert order["layers"] == 3 and order["spearman_vs_tflops"] == pytest.approx(0.5)
    assert order["spearman_vs_ms"] == pytest.approx(-0.5) and order["pressure_spearman_vs_tflops"] == pytest.approx(-1)
    assert order["table"][0] == {"layer": "a", "ceiling_tflops": 400.0, "pressure": 2.0, "tflops": 100.0,
                                 "ms": 0.01, "fraction": 0.25}


def test_inspect_check_summary_names_disagreements():
    same = {"hash": True, "registers": True, "local_bytes": True, "shared": True}
    doc = {"launches": [
        {"layer": "a", "agree": same, "device": {"name": "k", "n_regs": 40, "n_spills": 0, "local_bytes": 0,
                                                 "shared": 0}, "static": {"registers": 40}},
        {"layer": "b", "agree": {**same, "registers": False},
         "device": {"name": "k2", "n_regs": 41, "n_spills": 2, "local_bytes": 8, "shared": 0},
         "static": {"registers": 40, "local_bytes": 8, "shared": 0}},
        {"layer": "c", "error": "boom"}],
        "inspect": {"status": "ok", "pairs": [], "unmatched": [
            {"layer": "b", "kernel": "k2", "device_variant": "d", "inspect_variants": ["c"]}]},
        "ordering": {"status": "skipped", "note": "no bench results"}}
    lines = inspect_check.summary_lines(doc)
    assert lines[0] == "device vs static compile: 2 launches compared, 1 differ, 1 not compared"
    assert any("DIFF b k2: regs 40/41" in line for line in lines)
    assert any("spilling on the device: b k2 8 B" in line for line in lines)
    assert any("1 compiled otherwise than inspect planned" in line for line in lines)
    assert any("OTHER COMPILE b k2: device d, inspect c" in line for line in lines)
    assert any("ordering: skipped: no bench results" in line for line in lines)


def test_inspect_check_static_pipeline_on_the_cpu(runs):
    rc, stdout, stderr = runs["static"]
    assert rc == 0, stderr[-3000:]
    doc = json.loads((runs["tmp"] / "inspect-check.json").read_text())
    launches = doc["launches"]
    kinds = [r.get("operation") for r in launches]
    assert kinds[0] == "forward" and {"input_grad", "weight_grad", "bias_act_grad"} <= set(kinds), launches
    assert all(r.get("agree") == {"hash": True, "registers": True, "local_bytes": True, "shared": True}
               for r in launches), launches
    fwd = launches[0]
    assert fwd["jit_name"] == fwd["device"]["name"] and fwd["config"] and fwd["device"]["n_regs"] > 0
    if doc["inspect"]["status"] != "skipped":  # mcconv.tools.inspect is there: it plans what runs
        assert doc["inspect"]["status"] == "ok" and not doc["inspect"]["unmatched"], doc["inspect"]
        assert len(doc["inspect"]["pairs"]) == len(launches)
        assert all(p["agree"]["registers"] and p["agree"]["shared"] for p in doc["inspect"]["pairs"])
