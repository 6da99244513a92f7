"""Time apsq.train.demo_run (fresh: delete $APSQ_CACHE/demo first) and save results/demo_qat.json."""
import json
import time

t0 = time.time()
from apsq.train import demo_run
res = demo_run(progress=False, threads=1, on_variant=lambda n, r: print(n, r, round(time.time() - t0, 1), flush=True))
res["wall_seconds_including_imports"] = round(time.time() - t0, 1)
res["command"] = "HF_HUB_OFFLINE=1 python results/run_demo_qat.py"
json.dump(res, open("results/demo_qat.json", "w"), indent=1)
print(json.dumps({k: v for k, v in res.items() if k != "variants"}), flush=True)
