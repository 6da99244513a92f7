#!/usr/bin/env bash
# results/segmentation: Segformer-B0 and EfficientViT-B1 on the offline stand-in digit-scenes
# (docs/segmentation.md), every PSUM variant (W8A8 / INT32, psq, APSQ gs=1..4) over seeds 0, 1 and 2
# (the three seeds of segmentation.json and of the tables in README.md / docs/segmentation.md).
# FP32: configs/train_{segformer,efficientvit}_digit_scenes.yaml without `apsq` (3000 steps x 16 from
# random initialisation, one FP32 model per seed), then QAT + KD per variant and seed (40 steps x 8) from
# that seed's FP32 model, evaluated on all 256 test and 256 validation scenes; gs is chosen on validation.
# One thread per run, one process per model (2 at a time): about 50 min on a 2-core x86_64 CPU (run_seconds
# in the JSON). Finished runs are reused, interrupted ones resumed.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
if [ -x .venv/bin/apsq ]; then export PATH="$PWD/.venv/bin:$PATH"; fi
python results/segmentation/run_segmentation.py --seeds 0 1 2 --workers 2 --root runs/segmentation
# the JSON and PNG from whatever has finished (also written at the end of the line above)
python results/segmentation/run_segmentation.py --seeds 0 1 2 --root runs/segmentation --collect
# per-class IoU of the FP32 models on all 256 test scenes
python results/segmentation/fp32_per_class.py --root runs/segmentation --seeds 0 1 2
