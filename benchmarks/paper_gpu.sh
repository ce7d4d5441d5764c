#!/usr/bin/env bash
# The paper preset on one CUDA GPU, as run for docs/RESULTS.md: time an epoch with NCHW
# and with NHWC activations (bench_train.py), then train with the faster layout and
# copy the run's checkpoints, card, log and curve to OUT.
#
#   bash benchmarks/paper_gpu.sh OUT [MAX_MINUTES]
#
# Validation is logged every 500 epochs rather than the preset's 100 (each one scores
# ~7M pixels on the CPU); the recipe itself is the preset's. PRESET and DEVICE
# (paper, cuda) may be overridden from the environment.
set -euo pipefail
out=${1:?usage: paper_gpu.sh OUT [MAX_MINUTES]}
minutes=${2:-}
preset=${PRESET:-paper}
device=${DEVICE:-cuda}
python=${PYTHON:-python3}
mkdir -p "$out"
run=$(mktemp -d)/run

"$python" benchmarks/bench_train.py --preset "$preset" --epochs 10 --device "$device" \
    --json "$out/bench_train.json"
layout=$("$python" -c 'import json, sys
rows = json.load(open(sys.argv[1]))
print("--channels-last" if min(rows, key=lambda r: r["epoch_s"])["channels_last"]
      else "--no-channels-last")' "$out/bench_train.json")
"$python" -m qsegment train --preset "$preset" --device "$device" --out "$run" $layout \
    --val-every 500 ${minutes:+--max-minutes "$minutes"} 2>&1 | tee "$out/train.log"
cp "$run"/{last.safetensors,last.json,best.safetensors,log.csv,curve.png} "$out/"
