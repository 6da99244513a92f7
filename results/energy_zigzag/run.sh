#!/usr/bin/env bash
# results/energy_zigzag: apsq's energy model vs zigzag-dse (issue 13 item 3); needs the optional
# zigzag-dse dependency. Command as agreement.json records it; 152 s recorded (wall_s).
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ -x .venv/bin/apsq ]; then export PATH="$PWD/.venv/bin:$PATH"; fi

OMP_NUM_THREADS=1 python results/energy_zigzag/run_agreement.py
