"""Energy-model speed: the 4 built-in models x 3 dataflows x (baseline + gs 1..4), in one run.

Goal: under 2 s in all on 2 cores (ZigZag needs ~40 s for ResNet-18 on one mapping). Prints the
tracing time (building each model on the meta device and recording its GEMMs, done once per model)
and the evaluation time separately, and their sum.

    HF_HUB_OFFLINE=1 python benchmarks/bench_energy.py
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


def main() -> None:
    t0 = time.perf_counter()
    workloads = {name: builtin_workload(name) for name in BUILTIN_WORKLOADS}
    t1 = time.perf_counter()
    n = 0
    results = {}
    for name, w in workloads.items():
        for df in ("is", "ws", "os"):
            base = evaluate(w, df, "none", 1, 8)
            n += 1
            for gs in (1, 2, 3, 4):
                r = evaluate(w, df, "apsq", gs, 8)
                n += 1
                results[(name, df, gs)] = 1 - r.total_pj / base.total_pj
    t2 = time.perf_counter()
    layers = sum(len(w) for w in workloads.values())
    print(f"(imports, not timed: {t_import:.2f} s)")
    print(f"traced {len(workloads)} models ({layers} GEMM layers) in {t1 - t0:.3f} s")
    print(f"evaluated {n} (model, dataflow, mode, gs) points in {t2 - t1:.3f} s ({1e3 * (t2 - t1) / n:.2f} ms each)")
    print(f"total {t2 - t0:.3f} s (goal < 2 s)")
    best = {(m, d): max(results[(m, d, g)] for g in (1, 2, 3, 4)) for m in workloads for d in ("is", "ws")}
    print("best-gs total-energy reduction:", ", ".join(f"{m} {d.upper()} {100 * v:.1f}%" for (m, d), v in best.items()))


if __name__ == "__main__":
    main()
