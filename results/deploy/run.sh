#!/usr/bin/env bash
# issue 23: a trained MiniLM through the RAE engine program -- golden backend on all 1,041 test sentences,
# Verilator (the RTL) on 32, every layer checked bit for bit against the PyTorch model; activity vs energy model.
# Measured on the shared 2-core x86_64 machine (8 sessions at once; load in each JSON). See README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
apsq data fetch rt-sentences
# 1. FP32: configs/minilm_fp32.yaml's 200-step schedule stopped at its step-50 checkpoint
python results/deploy/train_fp32_step50.py
# 2. QAT (the project's recipe, fewer steps): APSQ INT8 gs=2 and gs=4 per tensor, gs=2 per channel
apsq train --config results/deploy/configs/minilm_apsq_gs2.yaml --output runs/deploy/gs2
apsq train --config results/deploy/configs/minilm_apsq_gs4.yaml --output runs/deploy/gs4
apsq train --config results/deploy/configs/minilm_apsq_gs2_channel.yaml --output runs/deploy/gs2_channel
# 3. export the engine programs (64 lanes)
apsq deploy export runs/deploy/gs2 -o runs/deploy/programs/gs2 --lanes 64
apsq deploy export runs/deploy/gs4 -o runs/deploy/programs/gs4 --lanes 64
apsq deploy export runs/deploy/gs2_channel -o runs/deploy/programs/gs2_channel --lanes 64
# 4. the RTL (Verilator) on 32 test sentences (8 per batch), with the activity beside the energy model
apsq deploy run runs/deploy/programs/gs2 --input eval --limit 32 --batch-size 8 --backend verilator --energy --json results/deploy/gs2_verilator.json
apsq deploy run runs/deploy/programs/gs2_channel --input eval --limit 32 --batch-size 8 --backend verilator --json results/deploy/gs2_channel_verilator.json
# 5. the golden backend on all 1,041 test sentences (logits of all; every layer stage by stage on the first batches)
apsq deploy run runs/deploy/programs/gs2 --input eval --backend golden --energy --layer-batches 2 --json results/deploy/gs2_golden.json
apsq deploy run runs/deploy/programs/gs4 --input eval --backend golden --layer-batches 1 --json results/deploy/gs4_golden.json
apsq deploy run runs/deploy/programs/gs2_channel --input eval --backend golden --layer-batches 1 --json results/deploy/gs2_channel_golden.json
python results/deploy/summarize.py
