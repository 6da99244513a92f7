#!/usr/bin/env bash
# results/digits: Exp. 2, compact conv net on scikit-learn digits, every PSUM variant
# (config: configs/train_digits_cnn.yaml). Recorded in digits_cnn.json's "command", less --override-tile:
# configs/train_digits_cnn.yaml trains at tile 16 while the priced array (pe_array.rows) is 32 deep;
# apsq sweep now refuses that without --override-tile. The energy figures price 32-deep tiles for a
# 16-tile model, as the committed JSON did. Per-variant run_seconds recorded: 1.2 .. 2.9 s (1 thread).
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ -x .venv/bin/apsq ]; then export PATH="$PWD/.venv/bin:$PATH"; fi

apsq sweep --config configs/train_digits_cnn.yaml --output runs/digits_sweep --json results/digits/digits_cnn.json --png results/digits/digits_cnn.png --override-tile
