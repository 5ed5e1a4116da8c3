#!/bin/bash
# The "after" figures of benchmarks/static/: `mcconv inspect` of the ResNet-50 and MobileNetV2
# suites (forward and backward, fp16, bf16 and tf32, channels_last, H100 SXM / sm_90) for the
# kernels of the working tree, as make_before.sh does for commit c31fc1a. PYTHON picks the
# environment (default .venv, triton 3.9; a triton 3.6 one writes after-*-triton36.*: set TAG).
# Needs no GPU; about 30 s per suite and dtype on 2 cores (fresh cache).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
TAG=${TAG:-}
for suite in resnet50 mobilenetv2; do
  for dtype in float16 bfloat16 tf32; do
    "$PYTHON" -m mcconv inspect --suite $suite --direction all --dtype $dtype --layout channels_last --gpu h100-sxm \
      --reference --no-legend \
      --json benchmarks/static/after-$suite-$dtype$TAG.json --markdown benchmarks/static/after-$suite-$dtype$TAG.md
  done
done
