"""Where does MiniLM lose accuracy with INT8 PSUMs? Calibration only (no QAT), 300 test sentences.

Run from the repository root after configs/train_minilm_fp32.yaml has produced runs/minilm_fp32:
    HF_HUB_OFFLINE=1 python results/recipe/psum_diagnosis.py   # writes results/recipe/psum_diagnosis.json
"""

import copy
import json
import time

import torch

import apsq
from apsq.train.checkpoint import load_model_state, read_tensors
from apsq.train.config import load_config, parse_config
from apsq.train.batches import global_batch, split_batch
from apsq.train.evaluation import evaluate
from apsq.train.models import build_model, load_tokenizer
from apsq.train.tasks import build_task

VARIANTS = {
    "w8a8_int32_psum": dict(mode="none"),
    "psq_int8": dict(mode="psq"),
    "apsq_gs2_int8": dict(mode="apsq", gs=2),
    "apsq_gs2_int10": dict(mode="apsq", gs=2, psum_bits=10),
    "apsq_gs2_int12": dict(mode="apsq", gs=2, psum_bits=12),
    "apsq_gs2_int8_residual_outputs_int32": dict(mode="apsq", gs=2, overrides={"*.output.dense": {"mode": "none"}}),
}

if __name__ == "__main__":
    torch.set_num_threads(1)
    base = load_config("configs/train_minilm_w8a8.yaml")
    cfg = parse_config({**base.model_dump(mode="json"), "data": {**base.data.model_dump(), "eval_limit": 300}})
    task = build_task(cfg, load_tokenizer(cfg))
    fp = build_model(cfg)
    load_model_state(fp, read_tensors("runs/minilm_fp32/fp32.safetensors")[0], "runs/minilm_fp32/fp32.safetensors")
    out = {"fp32": evaluate(fp, task.eval, 64, progress=False), "eval_sentences": len(task.eval),
           "note": "calibration only (4 batches of 16), tile 32, W8A8, classifier head in FP32"}
    calib = [split_batch(task.train.batch(global_batch(len(task.train), 16, i, 0, "calib")), torch.device("cpu"))[0]
             for i in range(4)]
    for name, kw in VARIANTS.items():
        t0 = time.time()
        m = copy.deepcopy(fp)
        apsq.quantize_(m, apsq.APSQConfig(exclude=("classifier",), **kw))
        apsq.calibrate(m, calib)
        out[name] = evaluate(m, task.eval, 64, progress=False)
        print(name, out[name], f"{time.time() - t0:.0f}s", flush=True)
    out["command"] = "HF_HUB_OFFLINE=1 python results/recipe/psum_diagnosis.py"
    with open("results/recipe/psum_diagnosis.json", "w") as f:
        json.dump(out, f, indent=1)
