#!/usr/bin/env bash
# The paper preset on one CUDA GPU within a wall-clock budget, resumable across calls.
#
#   bash benchmarks/paper_gpu.sh OUT SECONDS RUN
#
# Trains (or, when RUN holds a checkpoint, resumes) the paper preset in RUN with the
# preset's NHWC activations (COMPILE=1 adds torch.compile: 10 % faster per epoch on an
# H100 after a 1.5-minute compilation, so it pays only over a whole run), stops
# cleanly so that the whole script ends within SECONDS, then packs the run folder
# (what a later call needs to resume, the log, the cards, TensorBoard events) into
# OUT/run.tgz beside the console log OUT/train.log. Validation is logged every 500 epochs
# rather than the preset's 100 (each one scores ~7M pixels on the CPU); the recipe itself
# is the preset's. PRESET (paper), DEVICE (cuda) and PYTHON (python3) may be overridden
# from the environment.
set -euo pipefail
out=${1:?usage: paper_gpu.sh OUT SECONDS RUN}
seconds=${2:?usage: paper_gpu.sh OUT SECONDS RUN}
run=${3:?usage: paper_gpu.sh OUT SECONDS RUN}
python=${PYTHON:-python3}
preset=${PRESET:-paper}
device=${DEVICE:-cuda}
compile=--no-compile
[[ ${COMPILE:-0} == 1 ]] && compile=--compile
reserve=90  # start-up, the final threshold choice and scoring
minutes=$("$python" -c "print(max(0.5, ($seconds - $SECONDS - $reserve) / 60))")
mkdir -p "$out"
resume=()
[[ -f "$run/last.safetensors" ]] && resume=(--resume)
"$python" -m qsegment train --preset "$preset" --device "$device" --out "$run" "$compile" \
    "${resume[@]}" --val-every 500 --max-minutes "$minutes" 2>&1 | tee "$out/train.log"
tar -C "$run" -czf "$out/run.tgz" .
