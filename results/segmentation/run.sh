#!/usr/bin/env bash
# results/segmentation: Segformer-B0 and EfficientViT-B1 on the offline stand-in digit-scenes
# (docs/segmentation.md), every PSUM variant (W8A8 / INT32, psq, APSQ gs=1..4) over seeds 0 and 1.
# FP32: configs/train_{segformer,efficientvit}_digit_scenes.yaml without `apsq` (300 steps x 16 from
# random initialisation, seed 0; both seeds' QAT starts from it: --fp32-seed 0), then QAT + KD per
# variant and seed (10 steps x 8), evaluated on 64 test and 64 validation scenes; gs is chosen on
# validation. One thread per run, one process per model, on the shared 2-core CPU: ~1.5 h wall under
# the load of 8 concurrent sessions (run_seconds in the JSON). Finished runs are reused.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
if [ -x .venv/bin/apsq ]; then export PATH="$PWD/.venv/bin:$PATH"; fi
python results/segmentation/run_segmentation.py --seeds 0 1 --fp32-seed 0 --workers 2 --root runs/segmentation
# the JSON and PNG from whatever has finished (also written at the end of the line above)
python results/segmentation/run_segmentation.py --seeds 0 1 --fp32-seed 0 --root runs/segmentation --collect
# per-class IoU of the FP32 models on all 256 test scenes
python results/segmentation/fp32_per_class.py --root runs/segmentation
