#!/usr/bin/env bash
# results/vision: Exp. 2 (vision), random-init Segformer-B0 and EfficientViT-B1 at 512 px, output error
# per PSUM variant vs FP32. Command as cv_output_error.json records it (same as results/README.md).
# Per-variant seconds recorded: 1.6 .. 17.6 s (about 2 min in all).
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ -x .venv/bin/apsq ]; then export PATH="$PWD/.venv/bin:$PATH"; fi

apsq eval vision --image-size 512 --seed 0 --json results/vision/cv_output_error.json --png results/vision/cv_output_error.png
