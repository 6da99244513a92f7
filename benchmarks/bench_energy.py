"""Energy-model speed: the 4 built-in models x 3 dataflows x (baseline + gs 1..4), in one run.

Goal: under 2 s of evaluation **with the mapper** (``schedule="tiled"``: every layer's loop order and
tiling searched) on 2 cores; ZigZag takes 0.2-0.3 s per layer and precision on one fixed mapping
(``results/energy_zigzag``). Prints the tracing time (building each model on the meta device and
recording its GEMMs, done once per model) and the evaluation time of each schedule separately.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/bench_energy.py [--json results/bench/energy_bench.json]
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

t_import = time.perf_counter()
# import cost is Python's, not the model's: load the model classes before timing
from transformers import BertForSequenceClassification, LlamaForCausalLM, SegformerForSemanticSegmentation  # noqa: E402,F401,I001

import apsq.models.efficientvit  # noqa: E402,F401

t_import = time.perf_counter() - t_import

from apsq.hw.energy import evaluate  # noqa: E402
from apsq.hw.workloads import BUILTIN_WORKLOADS, builtin_workload  # noqa: E402
from apsq.machine import cpu_label  # noqa: E402


def _run(workloads: dict, schedule: str) -> tuple[float, int, dict]:
    t0 = time.perf_counter()
    n = 0
    results = {}
    for name, w in workloads.items():
        for df in ("is", "ws", "os"):
            base = evaluate(w, df, "none", 1, 8, schedule=schedule)
            n += 1
            for gs in (1, 2, 3, 4):
                r = evaluate(w, df, "apsq", gs, 8, schedule=schedule)
                n += 1
                results[(name, df, gs)] = 1 - r.total_pj / base.total_pj
    return time.perf_counter() - t0, n, results


def main() -> None:
    import argparse
    import json

    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="also write the timings and reductions to this file")
    args = ap.parse_args()
    t0 = time.perf_counter()
    workloads = {name: builtin_workload(name) for name in BUILTIN_WORKLOADS}
    t_trace = time.perf_counter() - t0
    layers = sum(len(w) for w in workloads.values())
    print(f"(imports, not timed: {t_import:.2f} s)")
    print(f"traced {len(workloads)} models ({layers} GEMM layers) in {t_trace:.3f} s")
    out = {"machine": f"{cpu_label()}, torch threads 1", "trace_s": t_trace,
           "layers": layers, "schedules": {}}
    for schedule in ("untiled", "tiled"):
        dt, n, results = _run(workloads, schedule)
        print(f"{schedule:8s}: evaluated {n} (model, dataflow, mode, gs) points in {dt:.3f} s "
              f"({1e3 * dt / n:.2f} ms each){'  (goal < 2 s)' if schedule == 'tiled' else ''}")
        best = {(m, d): max(results[(m, d, g)] for g in (1, 2, 3, 4)) for m in workloads for d in ("is", "ws")}
        print(f"  best-gs total-energy reduction ({schedule}):",
              ", ".join(f"{m} {d.upper()} {100 * v:.1f}%" for (m, d), v in best.items()))
        out["schedules"][schedule] = {"eval_s": dt, "points": n,
                                      "best_gs_reduction": {f"{m} {d}": v for (m, d), v in best.items()}}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
