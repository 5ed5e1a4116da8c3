#!/bin/bash
# The "before" figures of benchmarks/static/: `mcconv inspect` of the ResNet-50 and MobileNetV2
# suites (forward and backward, fp16, bf16 and tf32, channels_last, H100 SXM / sm_90) for the
# kernels at commit c31fc1a, before the kernel rework. The inspect tool of the working tree
# compiles that commit's kernels/ (--kernels), checked out beside it as a git worktree.
# Needs no GPU; about 25 s per suite and dtype on 2 cores with triton 3.9 (fresh cache).
set -euo pipefail
cd "$(dirname "$0")/../.."
BEFORE=${BEFORE:-/tmp/inspect-before}
[ -d "$BEFORE" ] || git worktree add --detach "$BEFORE" c31fc1a
PYTHON=${PYTHON:-.venv/bin/python}
for suite in resnet50 mobilenetv2; do
  for dtype in float16 bfloat16 tf32; do
    "$PYTHON" -m mcconv inspect --suite $suite --direction all --dtype $dtype --layout channels_last --gpu h100-sxm \
      --reference --kernels "$BEFORE/kernels" --no-legend \
      --json benchmarks/static/before-$suite-$dtype.json --markdown benchmarks/static/before-$suite-$dtype.md
  done
done
