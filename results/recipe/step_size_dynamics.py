"""Why the power-of-two step sizes barely moved under the old QAT rule (issue 11, item 1).

Runs the same QAT + KD steps of all-MiniLM-L6-v2 (APSQ gs=2, INT8 PSUMs) on the movie-review
sentences twice from one calibrated state: with the old optimizer rule (AdamW eps 1e-8 for every
group, one clip of the global gradient norm at 1.0 shared by weights and step sizes) and with the
library's rule (:func:`apsq.train.param_groups` + :func:`clip_grad_norms_`). Records per step
the gradient norms of the weights and of the ``log2`` step sizes, the clip factor, the typical
step-size gradient against Adam's eps, and how far the ``log2`` steps moved.

    OMP_NUM_THREADS=1 python results/recipe/step_size_dynamics.py --steps 12 --json results/recipe/step_size_dynamics.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

import apsq
from apsq.train.config import parse_config
from apsq.train.batches import global_batch, split_batch
from apsq.train.losses import distill_loss
from apsq.train.optim import clip_grad_norms_, is_step_size, make_optimizer, param_groups
from apsq.train.models import build_model, load_tokenizer
from apsq.train.tasks import build_task


def old_optimizer(model, sched):
    """The rule before the fix: same groups, AdamW's default eps everywhere, one shared clip."""
    groups = [{k: v for k, v in g.items() if k not in ("eps", "max_grad_norm", "clip_group")}
              for g in param_groups(model, sched)]
    return torch.optim.AdamW(groups, lr=sched.lr)


def run(rule: str, model, teacher, task, cfg, steps: int) -> dict:
    sched = cfg.qat
    opt = old_optimizer(model, sched) if rule == "old" else make_optimizer(model, sched)
    scales = [p for n, p in model.named_parameters() if is_step_size(n) and p.requires_grad]
    start = torch.cat([p.detach().clone() for p in scales])
    rows = []
    model.train()
    for step in range(steps):
        torch.manual_seed(step)
        idx = global_batch(len(task.train), sched.batch_size, step, cfg.seed, "qat")
        inputs, labels = split_batch(task.train.batch(idx), torch.device("cpu"))
        with torch.no_grad():
            tout = teacher(**inputs)
        loss = distill_loss(model(**inputs), tout, labels, cfg)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        g_scale = torch.cat([p.grad.flatten() for p in scales])
        g_w = torch.cat([p.grad.flatten() for g in opt.param_groups if g["name"] != "step_sizes"
                         for p in g["params"] if p.grad is not None])
        before = torch.cat([p.detach().clone() for p in scales])
        if rule == "old":
            total = float(torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0))
        else:
            total = float(torch.linalg.vector_norm(torch.cat([g_w, g_scale])))
            clip_grad_norms_(opt.param_groups)
        g_after = torch.cat([p.grad.flatten() for p in scales])
        opt.step()
        moved = (torch.cat([p.detach() for p in scales]) - before).abs()
        rows.append({
            "step": step + 1, "loss": round(float(loss), 5),
            "grad_norm_weights": float(g_w.norm()), "grad_norm_step_sizes": float(g_scale.norm()),
            "global_norm": total, "step_size_grad_median_abs_after_clip": float(g_after.abs().median()),
            "step_size_grad_frac_below_1e-8_after_clip": float((g_after.abs() < 1e-8).float().mean()),
            "log2_update_mean_abs": float(moved.mean()), "log2_update_max_abs": float(moved.max()),
        })
        print(rule, rows[-1], flush=True)
    drift = (torch.cat([p.detach() for p in scales]) - start).abs()
    changed = (torch.floor(torch.cat([p.detach() for p in scales]) + 0.5) != torch.floor(start + 0.5))
    return {"rows": rows, "log2_drift_mean": float(drift.mean()), "log2_drift_max": float(drift.max()),
            "exponents_changed": int(changed.sum()), "n_step_sizes": int(drift.numel())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--scale-lr", type=float, default=5e-3, help="the committed configs' rate")
    ap.add_argument("--init", default=None, help="an fp32.safetensors to start from (default: pretrained)")
    ap.add_argument("--json", default="results/recipe/step_size_dynamics.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = parse_config({"model": {"name": "minilm", "max_len": 64}, "data": {"name": "rt-sentences"},
                        "finetune": {"steps": 0}, "apsq": {"mode": "apsq", "gs": 2, "tile": 32, "exclude": ["classifier"]},
                        "qat": {"steps": a.steps, "batch_size": a.batch, "lr": 2e-5, "scale_lr": a.scale_lr, "warmup": 0.0},
                        "distill": {"temperature": 2.0, "kd_weight": 1.0, "ce_weight": 0.5}})
    task = build_task(cfg, load_tokenizer(cfg))
    model = build_model(cfg)
    if a.init:
        from pathlib import Path

        from apsq.train.checkpoint import load_model_state, read_tensors

        load_model_state(model, read_tensors(Path(a.init))[0], Path(a.init))
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    apsq.quantize_(model, cfg.apsq_config())
    calib = [split_batch(task.train.batch(global_batch(len(task.train), a.batch, i, 0, "calib")), torch.device("cpu"))[0]
             for i in range(2)]
    apsq.calibrate(model, calib)
    out = {"command": f"OMP_NUM_THREADS=1 python results/recipe/step_size_dynamics.py --steps {a.steps} --batch {a.batch} "
                      f"--scale-lr {a.scale_lr}" + (f" --init {a.init}" if a.init else ""),
           "settings": {"steps": a.steps, "batch": a.batch, "lr": 2e-5, "scale_lr": a.scale_lr, "warmup": 0,
                        "model": "minilm" + (" fine-tuned" if a.init else " pretrained"), "apsq": "gs=2 INT8"}}
    t0 = time.time()
    for rule in ("old", "new"):
        out[rule] = run(rule, copy.deepcopy(model), teacher, task, cfg, a.steps)
    out["seconds"] = round(time.time() - t0, 1)
    with open(a.json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
