#!/usr/bin/env bash
# results/llm_width: LLaMA-2-7B width under FSDP2 (issue 22 item 2; docs/fsdp.md).
# bench_llama_width.json: two decoder layers at the true width (hidden 4096, FFN 11008, 32 heads), APSQ
# gs=2 with attention matmuls, quantize_ + fully_shard + calibrate + 2 QAT steps on 2 gloo CPU processes,
# 1 thread each, nice 10, on a 2-core machine shared with other jobs (load 13-23): times are not speeds.
# dry_run_llama2_7b.json: the full 7B on the meta device (nothing allocated).
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
if [ -x .venv/bin/apsq ]; then export PATH="$PWD/.venv/bin:$PATH"; fi

nice -n 10 python benchmarks/bench_llama_width.py --ranks 2 --threads 1 --seq 16 --calib-rows 16 --json results/llm_width/bench_llama_width.json
apsq llm dry-run --model llama2-7b --gpus 1,2,4,8 --json results/llm_width/dry_run_llama2_7b.json
