#!/usr/bin/env bash
# Experiment 1: all-MiniLM-L6-v2 on the Rotten Tomatoes sentences (test split), every PSUM variant.
# Run from the repository root. Writes results/sentiment_minilm.json and results/sentiment_minilm.png.
# Stage 1 fine-tunes FP32 once; the six QAT+KD runs start from it (two at a time, one thread each);
# `apsq sweep` then collects them (it reuses finished runs) and adds the energy reduction.
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
if [ ! -f runs/minilm_fp32/result.json ]; then
  resume=""; [ -f runs/minilm_fp32/checkpoint.safetensors ] && resume="--resume"
  apsq train --config configs/train_minilm_fp32.yaml --output runs/minilm_fp32 $resume
fi
queue() { for v in "$@"; do
  [ -f runs/minilm_sweep/$v/result.json ] && continue
  resume=""; [ -f runs/minilm_sweep/$v/checkpoint.safetensors ] && resume="--resume"
  apsq train --config configs/train_minilm_$v.yaml --output runs/minilm_sweep/$v $resume > runs/minilm_sweep/$v.log 2>&1
done; }
mkdir -p runs/minilm_sweep
queue apsq_gs1 apsq_gs3 w8a8 &
queue apsq_gs2 apsq_gs4 psq &
wait
apsq sweep --config configs/train_minilm_apsq_gs2.yaml --output runs/minilm_sweep \
  --json results/sentiment_minilm.json --png results/sentiment_minilm.png
