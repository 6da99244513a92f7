"""Short QAT (the demo's settings) of three variants with the current path or, with
APSQ_INT_GEMM=off APSQ_FUSED_LSQ=off, the previous one; prints test accuracies (docs/performance.md).

Usage: [APSQ_INT_GEMM=off APSQ_FUSED_LSQ=off] HF_HUB_OFFLINE=1 python results/check_training_equivalence.py THREADS
"""
import json, os, sys, time
from apsq.train import demo_run
threads = int(sys.argv[1])
variants = [("psq", "psq", 1), ("apsq_gs4", "apsq", 4), ("apsq_gs2", "apsq", 2)]
res = demo_run(variants, progress=False, threads=threads, energy=False)
print(json.dumps({"env": {k: os.environ.get(k) for k in ("APSQ_INT_GEMM", "APSQ_FUSED_LSQ")}, "threads": threads,
                  "acc": {k: v["accuracy"] for k, v in res["variants"].items()},
                  "sec": {k: v["seconds"] for k, v in res["variants"].items()}}), flush=True)
