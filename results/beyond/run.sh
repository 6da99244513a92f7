#!/usr/bin/env bash
# results/beyond: per-layer gs, baseline PSUM widths, low-bit, A2Q (docs/beyond-the-paper.md).
# Commands as each JSON records them. No durations are recorded in these JSONs.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ -x .venv/bin/apsq ]; then export PATH="$PWD/.venv/bin:$PATH"; fi

# Every MiniLM command starts from the FP32 fine-tune that configs/train_minilm_apsq_gs2.yaml names
# (finetune.init: runs/train_minilm_fp32/fp32.safetensors; 400 steps, long); the digits commands from
# results/digits/run.sh's FP32 model.
test -f runs/train_minilm_fp32/fp32.safetensors || apsq train --config configs/train_minilm_fp32.yaml
test -f runs/digits_sweep/fp32/fp32.safetensors || results/digits/run.sh

# gs_search.json / .png (and configs/tune_minilm_gs_is.yaml, which this rewrites). The JSON records
# "--method both ... --budget-frac 0.5" (both defaults) but not the output paths; results/README.md
# gives the output paths but omits --method / --budget-frac. The JSON's options win; outputs from the README.
apsq tune-gs --config configs/train_minilm_apsq_gs2.yaml --gs 1,2,3,4 --dataflow is --method both --eval-limit 512 --budget-frac 0.5 \
  --json results/beyond/gs_search.json --png results/beyond/gs_search.png --out-yaml configs/tune_minilm_gs_is.yaml

# baseline_precision.json
apsq beyond baseline -c configs/train_minilm_apsq_gs2.yaml --acc-bits 12,14,16,18,20 --eval-limit 256 --json results/beyond/baseline_precision.json

# low_bit.json: three keys merged into one file (--key).
# digits: --override-tile added (not in the recorded command): configs/train_digits_cnn.yaml trains at
# tile 16, the priced array is 32 deep; the energy figures price 32-deep tiles for a 16-tile model, as
# the committed JSON did.
apsq beyond low-bit -c configs/train_digits_cnn.yaml --fp32 runs/digits_sweep/fp32/fp32.safetensors --eval-limit 0 --qat-steps 60 --run-dir runs/beyond/low_bit_digits --json results/beyond/low_bit.json --key digits --override-tile
apsq beyond low-bit -c configs/train_minilm_apsq_gs2.yaml --eval-limit 256 --json results/beyond/low_bit.json --key minilm_ptq
apsq beyond low-bit -c configs/train_minilm_apsq_gs2.yaml --eval-limit 256 --qat-steps 30 --only w8a8_none,w8a8_apsq8,w4a4_none,w4a4_apsq8,w4a4_apsq6,w4a8_apsq8 --run-dir runs/beyond/low_bit_minilm --json results/beyond/low_bit.json --key minilm_qat30

# a2q_comparison.json, a2q_wide_ptq.json (MiniLM), a2q_digits.json (digits; --override-tile added as above).
apsq beyond a2q -c configs/train_minilm_apsq_gs2.yaml --qat-steps 30 --eval-limit 256 --only apsq_gs2_int8,a2q_acc16,a2q+_acc16,a2q_acc12,a2q+_acc12 --json results/beyond/a2q_comparison.json
apsq beyond a2q -c configs/train_minilm_apsq_gs2.yaml --acc-bits 20,24,32 --only a2q_acc20,a2q_acc24,a2q_acc32 --qat-steps 0 --eval-limit 256 --json results/beyond/a2q_wide_ptq.json
apsq beyond a2q -c configs/train_digits_cnn.yaml --fp32 runs/digits_sweep/fp32/fp32.safetensors --eval-limit 0 --qat-steps 60 --json results/beyond/a2q_digits.json --override-tile
