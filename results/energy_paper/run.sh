#!/usr/bin/env bash
# results/energy_paper: energy at the paper's settings, both schedules (issue 13 items 1 and 5).
# Command as paper_settings.json records it; 31.2 s recorded (wall_s).
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ -x .venv/bin/apsq ]; then export PATH="$PWD/.venv/bin:$PATH"; fi

OMP_NUM_THREADS=1 python results/energy_paper/run_paper_settings.py
