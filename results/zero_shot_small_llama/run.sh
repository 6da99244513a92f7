#!/usr/bin/env bash
# results/zero_shot_small_llama: `apsq eval zero-shot` end to end offline -- the small LLaMA of results/llm
# (trained here) on four zero-shot task formats built from held-out movie-review sentences, every PSUM
# variant, calibration only (apsq's corpus, training split). The stand-in of Table I's LLaMA2-7B row.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
if [ -x .venv/bin/apsq ]; then export PATH="$PWD/.venv/bin:$PATH"; fi

# the model: the small LLaMA of results/llm (same corpus, tokenizer and settings) at 400 FP32 steps, saved to
# runs/llm_tiny_400 (the committed JSON names runs/llm_tiny, its folder then; results/llm/run.sh writes its
# 800-step model there, so a run after that one evaluated the other model)
[ -f runs/llm_tiny_400/config.json ] || apsq eval llm-ppl --threads 1 --train-steps 400 --gs 2 \
  --save-model runs/llm_tiny_400 --json runs/llm_ppl_400.json

# the task files: 200 items per task in each task's hub format
python results/zero_shot_small_llama/make_tasks.py --out runs/zero_shot_standin_tasks --items 200 --selection-items 200

apsq eval zero-shot --model runs/llm_tiny_400 --local-data runs/zero_shot_standin_tasks \
  --tasks hellaswag,piqa,winogrande,arc_easy --calibration corpus --add-bos --device cpu \
  --selection-items 200 --output runs/zero_shot_small_llama
cp runs/zero_shot_small_llama/zero_shot.json runs/zero_shot_small_llama/zero_shot.md \
  runs/zero_shot_small_llama/zero_shot.png results/zero_shot_small_llama/
