#!/usr/bin/env bash
# results/rae: RAE area per engine (Yosys) and RTL == integer golden model (docs/rae.md).
# Needs the Debian yosys (area) and verilator (equivalence).
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ -x .venv/bin/apsq ]; then export PATH="$PWD/.venv/bin:$PATH"; fi

# rae_area.json: four syntheses, each writing a list of reports to runs/rae_area/; join_area.py joins them
# into rae_area.json's "reports" with the commands (--json path elided), Yosys version, liberty, commit,
# machine and load. yosys_s recorded 9.1, 20.0, 270.1 and 267.9 s (2026-12-07, 2-core AMD EPYC shared with
# two trainings and other jobs, load average 3.3 at the start, 10.8 at the end); 10 min wall for the four.
mkdir -p runs/rae_area
apsq rae area --lanes 4 --depth 16 --banks macro --json runs/rae_area/l4_d16.json
apsq rae area --lanes 4 --depth 16 --banks macro --lane-exponents --json runs/rae_area/l4_d16_lane_exponents.json
apsq rae area --lanes 32 --depth 64 --banks macro --json runs/rae_area/l32_d64.json
apsq rae area --lanes 32 --depth 64 --banks macro --lane-exponents --json runs/rae_area/l32_d64_lane_exponents.json
python results/rae/join_area.py runs/rae_area results/rae/rae_area.json

# equivalence/summary.json: 2,000,000 random streams, 100.5 s recorded (wall_s, 2026-12-07, load ~25; 42.8 s before issue 23). The JSON records no
# OMP_NUM_THREADS=1; equivalence/README.md runs it with OMP_NUM_THREADS=1 (the JSON's command is kept).
apsq rae equivalence --streams 2000000 --seed 0 --json results/rae/equivalence/summary.json
