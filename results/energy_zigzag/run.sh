#!/usr/bin/env bash
# results/energy_zigzag: apsq's energy model vs zigzag-dse (issue 13 item 3); needs the optional
# zigzag-dse dependency. Command as agreement.json records it; 152 s recorded (wall_s).
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ -x .venv/bin/apsq ]; then export PATH="$PWD/.venv/bin:$PATH"; fi

OMP_NUM_THREADS=1 python results/energy_zigzag/run_agreement.py
# ZigZag's own mapping search beside the fixed order and apsq's mapper (mapping_search.json; 226 s recorded)
OMP_NUM_THREADS=1 python results/energy_zigzag/run_mapping_search.py
# ZigZag's search budget on one FFN layer (lpf_sweep.json; 256 s recorded)
OMP_NUM_THREADS=1 python results/energy_zigzag/run_lpf_sweep.py
