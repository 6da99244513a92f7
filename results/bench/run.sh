#!/usr/bin/env bash
# results/bench: speed of the layers, the energy model and the RTL simulation (docs/performance.md,
# docs/rae.md). bench_layer*.json and energy_bench.json record no command: taken from results/README.md,
# docs/performance.md and results/energy_paper/README.md. Timings depend on the machine and its load.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ -x .venv/bin/apsq ]; then export PATH="$PWD/.venv/bin:$PATH"; fi

# bench_layer.json (issue 26 A, time): with the integer kernel of 184a63c (before the 2026-12-08 backward
# pass: flagged zero-tile blocks, register step-gradient sums, vectorised step checks) as *_baseline variants
# in the same run; the JSON's "run" entry holds the command and the load.
python benchmarks/bench_layer.py --baseline 184a63c --reps 5 --threads 1 --ablation --minilm --minilm-reps 3 --json > results/bench/bench_layer.json
# bench_layer_avx512.json (issue 26 A on an AVX-512 VNNI core, 2026-12-08 05:00 UTC, load 1.3 / 1.0): the same
# command on the machine this session ran on (AMD EPYC with avx512_vnni); bench_layer.json is the AVX2-only core.
#   python benchmarks/bench_layer.py --baseline 184a63c --reps 5 --threads 1 --ablation --minilm --minilm-reps 3 --json > results/bench/bench_layer_avx512.json
# bench_layer_184a63c.json: the whole of 184a63c (its Python included), right after, from a worktree of it:
#   git worktree add /tmp/apsq-184a63c 184a63c && (cd /tmp/apsq-184a63c && PYTHONPATH=src \
#     python benchmarks/bench_layer.py --reps 5 --threads 1 --minilm --minilm-reps 3 --json) > results/bench/bench_layer_184a63c.json
# port_probe.json: this core's peak MAC rates for vpmaddwd, fp32 FMA and the two mixed (docs/performance.md).
python benchmarks/port_probe.py --json results/bench/port_probe.json
python benchmarks/bench_layer.py --reps 5 --threads 2 --json > results/bench/bench_layer_2threads.json
# bench_correction.json: the correction pass reading the first pass's zero-tile bits, against the kernel of
# f63c65f (it recomputed the tile dot products), in one run; 1 thread, two trainings on the other core.
python benchmarks/bench_layer.py --baseline f63c65f --reps 5 --threads 1 --json > results/bench/bench_correction.json
python benchmarks/bench_energy.py --json results/bench/energy_bench.json
# compile.json: torch.compile of an APSQ MiniLM vs eager (docs/known-limits.md); ~80 s
python benchmarks/bench_compile.py --json results/bench/compile.json
# rae_bench.json records its options (not --json), commit and load; needs verilator (each build 20-65 s, docs/rae.md).
OMP_NUM_THREADS=1 python benchmarks/bench_rae.py --lanes 4,8,32 --steps 64 --repeat 40 --gs 2 --depth 16 --amaranth-steps 16 --json results/bench/rae_bench.json
# rae_minilm_bench.json: the 36 run_layers calls of one MiniLM sentence (T = 32) on the Verilator backend,
# L = 32, per-step and per-lane engines (issue 23 item 3); each build 40-65 s on first use, not counted.
OMP_NUM_THREADS=1 python benchmarks/bench_rae.py --minilm 32 --sentences 1 --lanes 32 --json results/bench/rae_minilm_bench.json
