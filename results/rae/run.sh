#!/usr/bin/env bash
# results/rae: RAE area per engine (Yosys) and RTL == integer golden model (docs/rae.md).
# Needs the Debian yosys (area) and verilator (equivalence).
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ -x .venv/bin/apsq ]; then export PATH="$PWD/.venv/bin:$PATH"; fi

# rae_area.json: seven syntheses, each writing a list of reports to runs/rae_area/; join_area.py joins them
# into rae_area.json's "reports" with the commands (--json path elided), Yosys version, liberty, commit,
# machine and load. Re-run 2026-12-08 (reproducer trial, 2-core AMD EPYC shared with other jobs, load ~3-5):
# the four rows of 2026-12-07 came out identical (cells, flops, µm²); yosys_s 4.9, 5.2, 146.6, 76.9 s for
# them, 15.8, 54.1, 58.1 s for the three scaling rows; about 6 min wall for the seven.
mkdir -p runs/rae_area
apsq rae area --lanes 4 --depth 16 --banks macro --json runs/rae_area/l4_d16.json
apsq rae area --lanes 4 --depth 16 --banks macro --lane-exponents --json runs/rae_area/l4_d16_lane_exponents.json
apsq rae area --lanes 32 --depth 64 --banks macro --json runs/rae_area/l32_d64.json
apsq rae area --lanes 32 --depth 64 --banks macro --lane-exponents --json runs/rae_area/l32_d64_lane_exponents.json
# the scaling rows of docs/rae.md's area table (added 2026-12-08; they were quoted from an older engine)
apsq rae area --lanes 4 --depth 16 --banks flops --json runs/rae_area/l4_d16_flops.json
apsq rae area --lanes 8 --depth 32 --banks macro --json runs/rae_area/l8_d32.json
apsq rae area --lanes 16 --depth 64 --banks macro --json runs/rae_area/l16_d64.json
python results/rae/join_area.py runs/rae_area results/rae/rae_area.json

# equivalence/summary.json: 2,000,000 random streams, 100.5 s recorded (wall_s, 2026-12-07, load ~25; 42.8 s before issue 23). The JSON records no
# OMP_NUM_THREADS=1; equivalence/README.md runs it with OMP_NUM_THREADS=1 (the JSON's command is kept).
apsq rae equivalence --streams 2000000 --seed 0 --json results/rae/equivalence/summary.json
