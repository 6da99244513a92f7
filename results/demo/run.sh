#!/usr/bin/env bash
# results/demo: the main job's own output. `apsq demo` with its embedded defaults (60 QAT steps x 16 per
# variant, the FP32 model of configs/train_minilm_fp32.yaml seed 0 from the cache; a first run fine-tunes
# it, ~15-57 min on 2 cores), two variant processes of one thread each. Then the demo's
# training-equivalence check.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ -x .venv/bin/apsq ]; then export PATH="$PWD/.venv/bin:$PATH"; fi

# Reproducibility (issue 24 item 5b; results/sentiment_minilm/README.md, "Reproducing"): the table is
# bit-identical only under the same float code paths, so the same pins as the MiniLM study (one thread per
# variant process, torch's AVX2 paths) and the same guard: the first 4 QAT steps of W8A8 must give the
# reference's weights bit for bit. demo.json records `machine` and `environment`.
export OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
if ! python results/sentiment_minilm/repro_probe.py --check results/sentiment_minilm/repro_reference.json; then
    echo "this machine does not reproduce the reference bit for bit (see above); APSQ_FORCE=1 to run anyway" >&2
    [ "${APSQ_FORCE:-0}" = 1 ] || exit 1
fi

apsq demo --output results/demo --workers 2 --threads 1
# only the energy block of demo.json (and demo.png) on today's code, the accuracy rows kept (seconds):
# python results/demo/regen_energy.py
# demo_qat.json: the previous demo (kept for comparison; its script runs today's demo_run)
# HF_HUB_OFFLINE=1 python results/demo/run_demo_qat.py
# the demo's short QAT with the integer kernels vs the previous path (prints a table, docs/performance.md)
# python results/demo/check_training_equivalence.py 1 [--previous]
