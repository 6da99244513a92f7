#!/usr/bin/env bash
# results/table1: the paper's Table I collected by `apsq paper table1` from the results that exist (the
# full rows need a GPU and the network; here every row is a CPU stand-in or "not run"). Seconds: the
# energy model traces the four paper models once (about a minute on the shared 2-core CPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ -x .venv/bin/apsq ]; then export PATH="$PWD/.venv/bin:$PATH"; fi

apsq paper table1 --dry-run > results/table1/commands.txt
apsq paper table1 --json results/table1/table1.json --markdown results/table1/table1.md
