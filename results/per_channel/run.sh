#!/usr/bin/env bash
# results/per_channel: per-channel vs per-tensor PSUM steps (docs/per-channel.md). Commands as each
# JSON records them ("commands").
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ -x .venv/bin/apsq ]; then export PATH="$PWD/.venv/bin:$PATH"; fi

# digits_qat.json: QAT end to end on the digits CNN, configs in this folder (digits_cnn_tensor.yaml,
# digits_cnn_channel.yaml = configs/train_digits_cnn.yaml with psum_granularity tensor / channel);
# 16.7 s and 17.0 s recorded (2026-12-08, nice 10 beside other jobs). apsq train has no tile check. The JSON's summary was collected from the
# two runs' outputs (no command recorded for that step).
OMP_NUM_THREADS=1 apsq train --config results/per_channel/digits_cnn_tensor.yaml --output runs/per_channel/digits_tensor
OMP_NUM_THREADS=1 apsq train --config results/per_channel/digits_cnn_channel.yaml --output runs/per_channel/digits_channel

# minilm_calibration_only.json: MiniLM calibration only, per tensor vs per channel, APSQ gs 1..4.
# LONG: per variant 152-1,068 s recorded (three processes side by side on 2 loaded cores).
# FP32 model: the step-200 checkpoint of "apsq train --config configs/train_minilm_fp32.yaml" (seed 0,
# runs/sent/seed0/fp32/checkpoint.safetensors while it was at step 200), copied to the path below; no
# command makes that intermediate checkpoint, so it must be there (docs/per-channel.md reproduces with
# the finished fine-tune instead, a different FP32 model).
test -f runs/per_channel/fp32_step200.safetensors || { echo "needs runs/per_channel/fp32_step200.safetensors (see above)" >&2; exit 1; }
# The JSON records these three runs without --modes (run_per_channel.py does not write --modes into its
# "command"); its "note" says run 1 was started with --modes apsq:1,apsq:2,apsq:3,apsq:4 and stopped after
# apsq:2, run 2 with --modes apsq:3,apsq:4 and stopped after apsq:3, run 3 did apsq:4. The --modes below
# are what each run's file held. They ran side by side; here one after another.
OMP_NUM_THREADS=1 python results/per_channel/run_per_channel.py --fp32 runs/per_channel/fp32_step200.safetensors --json results/per_channel/calibration_only.json --modes apsq:1,apsq:2
OMP_NUM_THREADS=1 python results/per_channel/run_per_channel.py --fp32 runs/per_channel/fp32_step200.safetensors --json results/per_channel/calibration_only_gs34.json --modes apsq:3
OMP_NUM_THREADS=1 python results/per_channel/run_per_channel.py --fp32 runs/per_channel/fp32_step200.safetensors --json results/per_channel/calibration_only_gs4.json --modes apsq:4
python results/per_channel/run_per_channel.py --merge results/per_channel/calibration_only.json results/per_channel/calibration_only_gs34.json results/per_channel/calibration_only_gs4.json --json results/per_channel/minilm_calibration_only.json
rm -f results/per_channel/calibration_only.json results/per_channel/calibration_only_gs34.json results/per_channel/calibration_only_gs4.json

# qat_saturation.json: saturation and exponent movement after QAT, per tensor vs per channel (seed 0 of
# results/sentiment_minilm/run.sh's runs; ~2 min).
OMP_NUM_THREADS=1 python results/per_channel/qat_saturation.py --root runs/sent3 --seed 0 --variants apsq_gs2 apsq_gs2_channel --json results/per_channel/qat_saturation.json
