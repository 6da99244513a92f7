#!/usr/bin/env bash
# results/demo: the main job's own output. `apsq demo` with its embedded defaults (60 QAT steps x 16 per
# variant, variants in parallel processes, the FP32 model of configs/train_minilm_fp32.yaml seed 0 from
# the cache; a first run fine-tunes it, ~15-57 min on 2 cores). Then the demo's training-equivalence check.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ -x .venv/bin/apsq ]; then export PATH="$PWD/.venv/bin:$PATH"; fi

apsq demo --output results/demo
# only the energy block of demo.json (and demo.png) on today's code, the accuracy rows kept (seconds):
# python results/demo/regen_energy.py
# demo_qat.json: the previous demo (kept for comparison; its script runs today's demo_run)
# HF_HUB_OFFLINE=1 python results/demo/run_demo_qat.py
# the demo's short QAT with the integer kernels vs the previous path (prints a table, docs/performance.md)
# python results/demo/check_training_equivalence.py 1 [--previous]
