#!/usr/bin/env bash
# One prepared GPU check (issue 26 B.1), about 8 minutes on one H100 (step limits 210 + 210 + 120 s, inside
# the device tool's 600 s per command; checked on a CPU with GPU_CHECK_SMOKE=1, where the CUDA tests skip): the CUDA tests, the GPU benchmark and
# `apsq train` on CUDA. Everything it writes goes to $OUT (the device tool's output folder; ./gpu_check_out
# when unset), at most 8 files: gpu_check.log, pytest.xml, bench_gpu.json, train_config.yaml,
# train_result.json, summary.json.
#
# Before the run, here (PyPI reachable): benchmarks/gpu_wheels.sh  (pydantic & co. into the ignored .whl/)
# The device call (repository root, carrying the wheels):
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
# The machine's image has python3 3.12 with torch, triton, transformers, accelerate, scikit-learn,
# hypothesis and pytest; apsq runs from src/ (PYTHONPATH, no install: the image's torch stays).
# GPU_CHECK_SMOKE=1 runs the same steps on a CPU with tiny sizes (the Triton interpreter): a check of
# this script itself.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
PY="${PYTHON:-python3}"
SMOKE="${GPU_CHECK_SMOKE:-0}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/apsq_site .whl/*.whl \
    && export PYTHONPATH="/tmp/apsq_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export APSQ_CACHE="${APSQ_CACHE:-/tmp/apsq_cache}"
t0=$(date +%s)
declare -A status
step() {  # step NAME TIMEOUT_S CMD...: runs CMD with a time limit, records its exit status
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s) $(date -u +%H:%M:%S) ==="
  timeout --kill-after=10 "$limit" "$@"
  status[$name]=$?
  echo "=== $name: exit ${status[$name]} after $(( $(date +%s) - t0 ))s total ==="
}

echo "=== machine ==="
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi: none"
"$PY" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
"$PY" -c "import triton; print('triton', triton.__version__)" || echo "triton: not importable"
"$PY" -c "import apsq, pydantic; print('apsq from', apsq.__file__)" || echo "apsq does not import: see above"

# 1. CUDA tests: the device-correct commands (tests/kernels/test_cuda.py's test_cuda_*) and the Triton kernels /
#    layers on CUDA (the "cuda" parameters; their CPU-interpreter twins and the CPU meta-checks run in CI)
step tests 210 "$PY" -m pytest -q -p no:cacheprovider -n 0 -rfEs --junitxml="$OUT/pytest.xml" \
  tests/kernels/test_cuda.py tests/kernels/test_triton_psum.py tests/kernels/test_triton_layers.py \
  -k "test_cuda_ or (not cpu and not test_cuda.py)"

# 2. The GPU benchmark: APSQ gs 1..4, psq, W8A8, nn.Linear fp32 / bf16 at M = 8192, K x N = 768 x 3072 and
#    3072 x 768, one MiniLM QAT step (random weights where the model package cannot travel)
if [ "$SMOKE" = 1 ]; then
  # the Triton interpreter runs every quantized MiniLM layer: over 200 s on a loaded 2-core CPU (17:42 UTC 2026-12-07)
  step bench 900 "$PY" benchmarks/bench_gpu.py --smoke --minilm --out "$OUT/bench_gpu.json"
else
  step bench 210 "$PY" benchmarks/bench_gpu.py --reps 10 --minilm --minilm-reps 5 --out "$OUT/bench_gpu.json"
fi

# 3. apsq train on CUDA: digits CNN (scikit-learn's digits ship with it), a short fine-tune, calibration,
#    20 QAT steps; the accelerator puts it on the GPU when one is visible
steps_ft=20; steps_qat=20
[ "$SMOKE" = 1 ] && steps_ft=2 && steps_qat=2
cat > "$OUT/train_config.yaml" <<YAML
seed: 0
model: {name: digits-cnn, num_labels: 10}
data: {name: digits, eval_split: test}
finetune: {steps: $steps_ft, batch_size: 32, lr: 2.0e-3}
apsq: {mode: apsq, gs: 2, tile: 16, psum_bits: 8, exclude: [classifier]}
qat: {steps: $steps_qat, batch_size: 32, calib_batches: 4}
distill: {temperature: 2.0, kd_weight: 1.0, ce_weight: 0.5}
eval: {batch_size: 256, after_calibration: true}
save_every: 100
threads: 4
YAML
rm -rf /tmp/apsq_gpu_train
step train 120 "$PY" -m apsq.cli train --config "$OUT/train_config.yaml" --output /tmp/apsq_gpu_train
[ -f /tmp/apsq_gpu_train/result.json ] && cp /tmp/apsq_gpu_train/result.json "$OUT/train_result.json"
ls /tmp/apsq_gpu_train 2>/dev/null

"$PY" - "$OUT" "${status[tests]:-none}" "${status[bench]:-none}" "${status[train]:-none}" "$(( $(date +%s) - t0 ))" <<'PYEOF'
import json, sys
out, tests, bench, train, secs = sys.argv[1:]
summary = {"exit_status": {"tests": tests, "bench_gpu": bench, "train": train}, "seconds": int(secs)}
try:
    import torch
    summary["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
except Exception as exc:  # noqa: BLE001 - a summary must still be written
    summary["device"] = f"unknown ({exc})"
try:
    summary["goals"] = json.load(open(f"{out}/bench_gpu.json")).get("goals")
except (OSError, ValueError):
    summary["goals"] = None
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
PYEOF
[ "${status[tests]}" = 0 ] && [ "${status[bench]}" = 0 ] && [ "${status[train]}" = 0 ]
