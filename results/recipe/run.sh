#!/usr/bin/env bash
# results/recipe: why the step sizes did not learn, recipe sensitivity, where the INT8-PSUM loss
# comes from (issue 11, docs/training-recipe.md). Commands as each JSON records them.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ -x .venv/bin/apsq ]; then export PATH="$PWD/.venv/bin:$PATH"; fi

# step_size_dynamics.json: 8 QAT steps of pretrained all-MiniLM-L6-v2 (HF cache), old vs new optimizer
# rule; 101.7 s recorded. (The script's docstring shows --steps 12; the JSON records --steps 8.)
OMP_NUM_THREADS=1 python results/recipe/step_size_dynamics.py --steps 8 --batch 16 --scale-lr 0.005

# recipe_sensitivity.json / .png: digits CNN (configs/train_digits_cnn.yaml, the script's default
# --config), 17.2 s recorded (2026-12-08; 138.3 s for the first version). results/README.md omits --json / --png
# (the script's defaults, same files). --steps-rate 0.05: the steps sweep's rate (the script's default; the
# library's default rate has been 0.2 since the table was first made, the script used that one by mistake).
OMP_NUM_THREADS=1 python results/recipe/recipe_sensitivity.py --json results/recipe/recipe_sensitivity.json --png results/recipe/recipe_sensitivity.png --steps-rate 0.05

# psum_diagnosis.json: calibration only, 300 test sentences; reads configs/train_minilm_w8a8.yaml and
# needs the FP32 MiniLM at runs/minilm_fp32/fp32.safetensors (400-step fine-tune, long):
test -f runs/minilm_fp32/fp32.safetensors || apsq train --config configs/train_minilm_fp32.yaml --output runs/minilm_fp32
python results/recipe/psum_diagnosis.py
