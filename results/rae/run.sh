#!/usr/bin/env bash
# results/rae: RAE area per engine (Yosys) and RTL == integer golden model (docs/rae.md).
# Needs the Debian yosys (area) and verilator (equivalence).
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ -x .venv/bin/apsq ]; then export PATH="$PWD/.venv/bin:$PATH"; fi

# rae_area.json: four syntheses. LONG: yosys_s recorded 47.5, 95.9, 469.0 and 930.1 s. The JSON records
# the commands with the --json path elided ("--json ..."); each writes a list of reports, and the four
# lists were joined by hand into rae_area.json's "reports" (with the Yosys version, liberty and machine);
# that join has no recorded command, so the per-engine files are written to runs/rae_area/ here.
mkdir -p runs/rae_area
apsq rae area --lanes 4 --depth 16 --banks macro --json runs/rae_area/l4_d16.json
apsq rae area --lanes 4 --depth 16 --banks macro --lane-exponents --json runs/rae_area/l4_d16_lane_exponents.json
apsq rae area --lanes 32 --depth 64 --banks macro --json runs/rae_area/l32_d64.json
apsq rae area --lanes 32 --depth 64 --banks macro --lane-exponents --json runs/rae_area/l32_d64_lane_exponents.json

# equivalence/summary.json: 2,000,000 random streams, 42.8 s recorded (wall_s). The JSON records no
# OMP_NUM_THREADS=1; equivalence/README.md runs it with OMP_NUM_THREADS=1 (the JSON's command is kept).
apsq rae equivalence --streams 2000000 --seed 0 --json results/rae/equivalence/summary.json
