#!/usr/bin/env bash
# The CUDA path on one GPU, in at most ~8 minutes (issue 19, item 5): the base and 1b models
# at Amazon Electronics' 63,001 items, bf16 autocast, with and without torch.compile; each row
# prints ms/step, MFU against the GPU's datasheet peak and against a measured 8192^3 bf16 GEMM,
# and peak memory against the cost model's estimate (recpar.perfmodel.step_check); last, base in
# fp32 for the bf16 speed-up.
#
#     bench/gpu_check.sh [OUT_DIR]        (OUT_DIR default: results/gpu_check)
#
# Needs a CUDA build of torch (plus numpy, pyyaml) in PYTHON (default: python3); recpar runs
# from this checkout's src/, nothing is installed. Run it on a GPU machine, e.g. the device
# tool: run(command="bench/gpu_check.sh $OUT", timeout_s=540).
# A configuration that fails is reported and the others still run; the script then exits 1.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/gpu_check}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PYTHON" - <<'PY' || exit 1
import torch
assert torch.cuda.is_available(), "gpu_check: torch sees no CUDA device"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}")
PY
rc=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# base: batch 64; 1b: batch 16 (its fp32 weights, gradients and Adam state alone: 1.34 B
# parameters with the 63,002-row item table x 16 bytes = 20 GiB, by arithmetic).
# 10 timed steps after 3 warm-up steps (compilation happens in the warm-up).
"$PYTHON" -m recpar.cli perfmodel step-check --device cuda --sizes base --precision bf16 \
    --compile both --batch 64 --items 63001 --steps 10 --warmup 3 --out "$OUT/base.json" || rc=1
"$PYTHON" -m recpar.cli perfmodel step-check --device cuda --sizes 1b --precision bf16 \
    --compile both --batch 16 --items 63001 --steps 10 --warmup 3 --out "$OUT/1b.json" || rc=1
# fp32 at base for the bf16 speed-up (issue 19's target: >= 1.6x)
"$PYTHON" -m recpar.cli perfmodel step-check --device cuda --sizes base --precision fp32 \
    --compile off --batch 64 --items 63001 --steps 10 --warmup 3 --out "$OUT/base_fp32.json" || rc=1
exit $rc
