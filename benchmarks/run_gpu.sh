#!/usr/bin/env bash
# One command for a machine with a CUDA GPU (no network, no pip install needed):
#
#   bash benchmarks/run_gpu.sh                              # all stages, in this order:
#                                                           #   test tune bench inspect-check sanitize
#   bash benchmarks/run_gpu.sh bench inspect-check          # some stages, in the order given
#
# Writes exactly two files into $OUT (default build/gpu-run/), both replaced after every stage,
# so that a run killed at the command's time limit still returns the last ones:
#   $OUT/gpu-run.tar.gz   everything the run produced: tile tables, bench JSON/PNG, check results, logs
#   $OUT/summary.txt      one page: device, versions, per-stage status and time, speedups, tuned keys,
#                         sanitizer errors, where each file is in the archive
# Then, in a checkout:  python benchmarks/lay_results.py gpu-run.tar.gz [--dry-run]
# (tile tables merged into autotune_configs/, results into benchmarks/results/<device>/).
#
# The whole run stays within TOTAL_BUDGET_S (default 570 s, under a 10-minute command limit).
# Budgets (seconds, environment): TEST_BUDGET_S 120, TUNE_BUDGET_S 90 (tune also takes what the
# later stages do not reserve), BENCH_BUDGET_S 140, INSPECT_BUDGET_S 80, SANITIZE_BUDGET_S 100,
# RESERVE_S 20 (kept for packing). A stage past its budget gets SIGINT (then SIGTERM, SIGKILL);
# what it wrote so far is kept. Stages skipped for lack of time say so in the summary.
# Options: TEST_ARGS, TUNE_SUITES, TUNE_DTYPES, BENCH_RUNS ("resnet50:float16 ..."),
# BENCH_BACKWARD=1, SANITIZE_TOOLS, SANITIZE_FILES, SANITIZE_MEMCHECK_K, SANITIZE_RACECHECK_K,
# COMPUTE_SANITIZER, PYTHON (python3). See benchmarks/gpu_run.py.
#
# Exit status: 0 every stage ok (or partial: a budget ran out), 1 some stage failed, 2 no GPU,
# no usable Python environment, or an unknown stage. A summary is written in every case.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export OUT=${OUT:-$REPO/build/gpu-run}
mkdir -p "$OUT"
rm -f "$OUT/gpu-run.tar.gz" "$OUT/summary.txt"  # a previous run's: never mistaken for this one's

if ! command -v "$PY" >/dev/null 2>&1; then
    msg="run_gpu.sh: no Python interpreter '$PY' (set PYTHON)"
    echo "$msg" >&2
    printf 'mcconv GPU run: not started\n%s\n' "$msg" > "$OUT/summary.txt"
    exit 2
fi
PYTHON="$PY" "$PY" "$REPO/benchmarks/gpu_run.py" run "$@"
rc=$?
if [ ! -s "$OUT/summary.txt" ]; then  # the helper died before its first summary
    printf 'mcconv GPU run: benchmarks/gpu_run.py exited %s before writing a summary\n' "$rc" > "$OUT/summary.txt"
fi
exit $rc
