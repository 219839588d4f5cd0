#!/usr/bin/env bash
# GPU check, one script, under 8 minutes on one H200: build, run the CUDA tests, run the GPU
# benchmarks, and leave the results in bench/results/ (copied to $OUT when the device tool
# sets it). Nothing is downloaded: torch, triton, pybind11, numpy, scipy, pytest must be there.
#
#   bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
results=bench/results
mkdir -p "$results"
log="$results/gpu_check.log"
: > "$log"
say() { echo "== $*" | tee -a "$log"; }

say "environment"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } 2>&1 | tee -a "$log"

say "build"
pip install --no-build-isolation --no-deps -e . >> "$log" 2>&1 || { say "build failed"; tail -30 "$log"; }
python -m fastamort info 2>&1 | tee -a "$log"

say "CUDA tests"
timeout 150 python -m pytest -q -m cuda -p no:cacheprovider tests 2>&1 | tail -40 | tee -a "$log"

say "GPU benchmarks"
timeout 90 python bench/bench_gram.py --device cuda 2>&1 | tail -60 | tee -a "$log"
timeout 70 python bench/bench_ridge.py --device cuda 2>&1 | tail -60 | tee -a "$log"
# KernelRidge fit+predict vs scikit-learn (host CPU) and torch; n up to 32768 on CUDA
timeout 130 python bench/bench_regressor.py --device cuda 2>&1 | tail -30 | tee -a "$log"

# data-parallel learning, one GPU per rank: only where there are several GPUs
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  timeout 120 python bench/bench_distributed.py --device cuda 2>&1 | tail -12 | tee -a "$log"
fi

if [ -n "${OUT:-}" ]; then
  cp "$log" "$results"/*cuda*.json "$results"/*cuda*.png "$OUT"/ 2>/dev/null || true
fi
say "done"
