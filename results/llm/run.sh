#!/usr/bin/env bash
# results/llm: Exp. 3, a small LLaMA (2 layers, hidden 128) trained here; perplexity and an lm-eval
# multiple-choice task. Commands as each JSON records them (same as results/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ -x .venv/bin/apsq ]; then export PATH="$PWD/.venv/bin:$PATH"; fi

# llm_ppl.json, calibration only; also saves the model to runs/llm_tiny. LONG: 601.9 s recorded.
apsq eval llm-ppl --json results/llm/llm_ppl.json --threads 1 --save-model runs/llm_tiny

# llm_ppl_qat.json: 50 QAT + KD steps per variant at the library step-size rate (0.2). 364.3 s recorded
# (1 thread, beside two trainings; 1,567.6 s in an earlier session).
apsq eval llm-ppl --qat-steps 50 --threads 1 --json results/llm/llm_ppl_qat.json

# llm_mc.json: reads runs/llm_tiny (the --model default, written by the first command).
apsq eval llm-mc --items 400 --seed 0 --ending-words 3 --threads 1 --json results/llm/llm_mc.json
