#!/usr/bin/env bash
# results/trainer_step_sizes: plain HF Trainer vs APSQTrainer, how many step sizes learn (issue 22 item 4).
# About 10 min on the shared 2-core CPU (295 s + 274 s recorded).
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
OMP_NUM_THREADS=1 python results/trainer_step_sizes/measure.py --steps 30 --batch 16
