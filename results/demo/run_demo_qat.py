"""Run apsq.eval.demo.demo_run with the demo's defaults and save results/demo_qat.json.

Fresh: ``rm -rf ~/.cache/apsq/demo`` first (the FP32 fine-tune is then part of the run); cached: the
demo's own cost. ``--threads`` as the demo's (0: torch's default).

    HF_HUB_OFFLINE=1 python results/demo/run_demo_qat.py [--threads N]
"""

import argparse
import json
import time

t0 = time.time()
ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=0)
a = ap.parse_args()
from apsq.eval.demo import demo_run  # noqa: E402

res = demo_run(progress=False, threads=a.threads or None, log=lambda m: print(m, flush=True),
               on_variant=lambda n, r: print(n, r, round(time.time() - t0, 1), flush=True))
res["wall_seconds_including_imports"] = round(time.time() - t0, 1)
res["command"] = "HF_HUB_OFFLINE=1 python results/demo/run_demo_qat.py" + (f" --threads {a.threads}" if a.threads else "")
with open("results/demo/demo_qat.json", "w") as f:
    json.dump(res, f, indent=1)
print(json.dumps({k: v for k, v in res.items() if k != "variants"}), flush=True)
