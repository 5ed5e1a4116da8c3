#!/usr/bin/env bash
# One command for a machine with a CUDA GPU (no network needed): the test suite natively, then
# `mcconv tune` for the suites in fp16/bf16/fp32, then `mcconv bench` with the tuned tables.
#
#   bash benchmarks/run_gpu.sh                 # all stages: test tune bench
#   bash benchmarks/run_gpu.sh tune bench      # some stages, in the order given
#
# Results go under $OUT when it is set (else into the checkout):
#   $OUT/benchmarks/results/<device>/<suite>-<dtype>-<layout>.json and .png   (bench)
#   $OUT/autotune_configs/<kernel>/<device>.json                              (tune; copy into the repo)
#   $OUT/logs/*.log, $OUT/summary.txt
# The whole run stays within TOTAL_BUDGET_S (default 570 s, under a 10-minute command limit);
# tuning is resumable, so a second run continues where the budget stopped the first, provided
# the tables written so far are in autotune_configs/ (committed) or still in $OUT.
#
# Environment: PYTHON (python3), TOTAL_BUDGET_S (570), TEST_TIMEOUT_S (150), TUNE_BUDGET_S (210,
# split over the three dtypes), BENCH_BACKWARD=1 to add a resnet50 fp16 backward bench.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
TOTAL_BUDGET_S=${TOTAL_BUDGET_S:-570}
TEST_TIMEOUT_S=${TEST_TIMEOUT_S:-150}
TUNE_BUDGET_S=${TUNE_BUDGET_S:-210}
STAGES=${*:-test tune bench}
START=$SECONDS
STATUS=0

left() { echo $((TOTAL_BUDGET_S - (SECONDS - START))); }
note() { echo "== $*" | tee -a "$DEST/summary.txt"; }

# mcconv without pip or network: a package folder of symlinks, laid out as pyproject.toml installs
# it (kernels/ -> mcconv._kernels, autotune_configs/ -> mcconv.autotune_configs).
SHIM=$(mktemp -d)
trap 'rm -rf "$SHIM"' EXIT
mkdir -p "$SHIM/mcconv"
for f in "$REPO"/mcconv/*; do ln -s "$f" "$SHIM/mcconv/"; done
ln -s "$REPO/kernels" "$SHIM/mcconv/_kernels"
ln -s "$REPO/autotune_configs" "$SHIM/mcconv/autotune_configs"
export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
# Run Python from the shim: `python -m` puts the working directory first on sys.path, and the
# checkout's own mcconv/ (without _kernels inside) would shadow the shim.
cd "$SHIM"

if ! DEVICE=$($PY -c "import torch; assert torch.cuda.is_available(); print(torch.cuda.get_device_name().replace(' ', '_'))"); then
    echo "run_gpu.sh: no CUDA device visible to $PY" >&2
    exit 2
fi
DEST=${OUT:-$REPO}
RESULTS="$DEST/benchmarks/results/$DEVICE"
TABLES="$DEST/autotune_configs"
mkdir -p "$RESULTS" "$DEST/logs"
: > "$DEST/summary.txt"
$PY -c "import torch, triton, mcconv, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, '| triton', triton.__version__, '| mcconv from', mcconv.__file__)" | tee -a "$DEST/summary.txt"
note "device $DEVICE; stages: $STAGES; budget ${TOTAL_BUDGET_S}s"

if [ "$TABLES" != "$REPO/autotune_configs" ]; then
    # Start from the committed tables, so tuning resumes and $OUT holds the merged result.
    for f in "$REPO"/autotune_configs/*/"$DEVICE".json; do
        [ -e "$f" ] || continue
        kernel=$(basename "$(dirname "$f")")
        mkdir -p "$TABLES/$kernel"
        [ -e "$TABLES/$kernel/$DEVICE.json" ] || cp "$f" "$TABLES/$kernel/"
    done
fi
export MCCONV_CONFIG_DIR="$TABLES"  # bench reads the freshly tuned tables

for stage in $STAGES; do
    case $stage in
    test)
        if $PY -c "import pytest" 2>/dev/null; then
            timeout "$(( $(left) < TEST_TIMEOUT_S ? $(left) : TEST_TIMEOUT_S ))" \
                $PY -m pytest -q -p no:cacheprovider --rootdir "$REPO" "$REPO/tests" 2>&1 | tee "$DEST/logs/pytest.log" | tail -25
            rc=${PIPESTATUS[0]}
            note "tests: exit $rc ($(tail -1 "$DEST/logs/pytest.log"))"
            [ "$rc" = 0 ] || STATUS=1
        else
            note "tests: skipped, pytest is not installed for $PY"
        fi
        ;;
    tune)
        per=$((TUNE_BUDGET_S / 3))
        for dtype in float16 bfloat16 float32; do
            budget=$(( $(left) - 30 < per ? $(left) - 30 : per ))
            if [ "$budget" -le 10 ]; then note "tune $dtype: no time left"; continue; fi
            # Most valuable shapes first: the budget may stop the later suites.
            timeout $((budget + 60)) $PY -m mcconv tune --suite resnet50 mobilenetv2 seed deepbench \
                --dtype "$dtype" --budget-s "$budget" --out-dir "$TABLES" 2>"$DEST/logs/tune-$dtype.err" \
                | tee "$DEST/logs/tune-$dtype.log" | tail -4
            rc=${PIPESTATUS[0]}
            note "tune $dtype: exit $rc, $(grep -E '^tuned ' "$DEST/logs/tune-$dtype.log" | tail -1)"
            [ "$rc" = 0 ] || STATUS=1
        done
        ;;
    bench)
        runs="resnet50:float16 mobilenetv2:float16 seed:float16 resnet50:bfloat16 resnet50:float32"
        for run in $runs; do
            suite=${run%%:*}; dtype=${run##*:}; layout=channels_last
            name="$suite-$dtype-$layout"
            if [ "$(left)" -le 15 ]; then note "bench $name: no time left"; continue; fi
            plot=()
            $PY -c "import matplotlib" 2>/dev/null && plot=(--plot "$RESULTS/$name.png")
            timeout "$(left)" $PY -m mcconv bench --suite "$suite" --dtype "$dtype" --layout "$layout" \
                --json "$RESULTS/$name.json" "${plot[@]}" 2>"$DEST/logs/bench-$name.err" \
                | tee "$DEST/logs/bench-$name.log" | tail -3
            rc=${PIPESTATUS[0]}
            note "bench $name: exit $rc, $(grep -E '^geometric-mean' "$DEST/logs/bench-$name.log")"
            [ "$rc" = 0 ] || STATUS=1
        done
        if [ "${BENCH_BACKWARD:-0}" = 1 ] && [ "$(left)" -gt 15 ]; then
            name=resnet50-float16-channels_last-backward
            timeout "$(left)" $PY -m mcconv bench --suite resnet50 --dtype float16 --direction backward \
                --json "$RESULTS/$name.json" 2>&1 | tee "$DEST/logs/bench-$name.log" | tail -3
            note "bench $name: exit ${PIPESTATUS[0]}"
        fi
        ;;
    *)
        echo "run_gpu.sh: unknown stage $stage (test, tune, bench)" >&2
        STATUS=2
        ;;
    esac
done
note "done in $((SECONDS - START))s, exit $STATUS"
exit $STATUS
