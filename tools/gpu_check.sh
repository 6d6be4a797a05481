#!/usr/bin/env bash
# One call on a CUDA GPU: the benchmark, the fast recipe's time to 99.18% (whole processes),
# then the whole 3x50-epoch learning-rate sweep, timed.
# Usage: bash tools/gpu_check.sh [MNIST_DIR] [OUT_DIR]   (from the clone's root)
# MNIST_DIR must hold MNIST/raw/*-ubyte (default ../shared/mnist; on the device machine copy it into
# an ignored folder of the repo first, since ../shared does not travel). Runs go to OUT_DIR/lr_*.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/mnist}"
out="${2:-${OUT:-gpu_runs}}"
export PYTHONUNBUFFERED=1
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -m tools.bench --device cuda --data_dir "$data" --images 60000 --amp true --accuracy 3
python -m tools.bench --time_to_accuracy --data_dir "$data" --report_epochs 15
for flags in "" "--amp"; do
  start=$(date +%s)
  python main.py --device cuda $flags --learning_rate 1e-3 5e-4 1e-4 --epoch 50 --data_dir "$data" \
    --out_dir "$out/sweep${flags:+_amp}" --overwrite > "$out/sweep${flags:+_amp}.log"
  echo "3x50-epoch sweep ${flags:-(default flags)}: $(( $(date +%s) - start )) s wall"
  grep -h "best epoch" "$out/sweep${flags:+_amp}"/lr_*/model.log
done
