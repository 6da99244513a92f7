"""Short QAT (the demo's settings) of three variants with the current path or, with ``--previous``,
the previous one (kernel options int_gemm=False, fused_lsq=False: batched-matmul tiles and autograd
LSQ); prints test accuracies (docs/performance.md).

Usage: HF_HUB_OFFLINE=1 python results/demo/check_training_equivalence.py THREADS [--previous]
"""
import contextlib, json, sys
from apsq.kernels import options
from apsq.eval.demo import demo_run
threads = int(sys.argv[1])
previous = "--previous" in sys.argv[2:]
variants = [("psq", "psq", 1), ("apsq_gs4", "apsq", 4), ("apsq_gs2", "apsq", 2)]
with options.override(int_gemm=False, fused_lsq=False) if previous else contextlib.nullcontext():
    res = demo_run(variants, progress=False, threads=threads, energy=False)
print(json.dumps({"path": "previous" if previous else "current", "threads": threads,
                  "acc": {k: v["accuracy"] for k, v in res["variants"].items()},
                  "sec": {k: v["seconds"] for k, v in res["variants"].items()}}), flush=True)
