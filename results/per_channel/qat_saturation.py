"""What 200 QAT steps do to the PSUM steps of all-MiniLM-L6-v2, per tensor against per channel.

For each run folder (``<root>/seed<S>/<variant>``, made by ``results/sentiment_minilm/run.sh``) this
rebuilds the calibrated model exactly as ``apsq train`` does (the seed's FP32 fine-tune, the run's
config, the same 4 calibration batches), then loads the run's final checkpoint, and measures on one
batch of 32 training sentences (not a calibration batch):

* ``flagged_outputs``: the fraction of the quantized layers' outputs with a zero-gradient tile (a
  saturated pending tile, or for apsq a later group's closing step saturated) — the outputs the
  integer kernel's correction pass works on (``docs/performance.md``);
* ``exponents``: how the rounded ``log2`` PSUM steps moved from calibration to the end of QAT.

Usage (from the repository root, offline)::

    OMP_NUM_THREADS=1 python results/per_channel/qat_saturation.py --root runs/sent3 --seed 0 \\
        --variants apsq_gs2 apsq_gs2_channel --json results/per_channel/qat_saturation.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import apsq
from apsq.kernels import int_gemm
from apsq.train.checkpoint import read_tensors, load_model_state
from apsq.train.config import load_config
from apsq.train.batches import global_batch, split_batch
from apsq.train.models import build_model, load_tokenizer
from apsq.train.tasks import build_task


def flagged_fraction(model: torch.nn.Module, batch: dict) -> float:
    """Fraction of the integer path's outputs with a zero-gradient tile in one forward + backward."""
    counts = []
    real = int_gemm.backward

    def spy(*a, **kw):
        out = real(*a, **kw)
        counts.append((out[1], a[8].numel()))  # (outputs with a zero-gradient tile, outputs)
        return out

    int_gemm.backward = spy
    try:
        model.train()
        model(**batch).logits.square().mean().backward()
    finally:
        int_gemm.backward = real
    if not counts:
        raise RuntimeError("no layer took the integer kernel: nothing measured")
    return sum(c for c, _ in counts) / sum(n for _, n in counts)


def measure(root: Path, seed: int, variant: str) -> dict:
    run = root / f"seed{seed}" / variant
    cfg = load_config(run / "config.json") if (run / "config.json").exists() else None
    if cfg is None:
        raise SystemExit(f"{run}: no config.json (not a finished apsq train run)")
    task = build_task(cfg, load_tokenizer(cfg))
    n, bs = len(task.train), cfg.qat.batch_size
    calib = [split_batch(task.train.batch(global_batch(n, bs, i, cfg.seed, "calib")), "cpu")[0]
             for i in range(cfg.qat.calib_batches)]
    probe = split_batch(task.train.batch(global_batch(n, 32, 0, cfg.seed, "saturation-probe")), "cpu")[0]
    fp32 = Path(cfg.finetune.init) if cfg.finetune.init else run / "fp32.safetensors"
    qcfg = cfg.apsq_config()
    if qcfg is None:
        raise SystemExit(f"{run}: the run's config has no apsq section (an FP32 run)")
    out: dict = {"run": str(run), "psum_granularity": qcfg.psum_granularity, "gs": qcfg.gs}
    steps = {}
    for when in ("calibrated", "after_qat"):
        model = build_model(cfg, weights=False)
        t, _ = read_tensors(fp32)
        load_model_state(model, t, fp32)
        apsq.quantize_(model, qcfg)
        if when == "calibrated":
            apsq.calibrate(model, calib)
        else:
            t, _ = read_tensors(run / "checkpoint.safetensors")
            load_model_state(model, t, run / "checkpoint.safetensors")
        steps[when] = {k: p.detach().clone() for k, p in model.named_parameters() if k.endswith("psum.log2_scales")}
        out[f"flagged_outputs_{when}"] = round(flagged_fraction(model, probe), 4)
    raw = torch.cat([(steps["after_qat"][k] - steps["calibrated"][k]).flatten() for k in steps["calibrated"]])
    d = torch.cat([(steps["after_qat"][k].round() - steps["calibrated"][k].round()).flatten()
                   for k in steps["calibrated"]])
    out["exponents"] = {"count": d.numel(), "moved": round(float((d != 0).float().mean()), 3),
                        "down": round(float((d < 0).float().mean()), 3), "up": round(float((d > 0).float().mean()), 3),
                        "moved_2_or_more": round(float((d.abs() >= 2).float().mean()), 3),
                        "log2_change_mean": round(float(raw.mean()), 3), "log2_change_std": round(float(raw.std()), 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("runs/sent3"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", default=["apsq_gs2", "apsq_gs2_channel"])
    ap.add_argument("--json", type=Path, required=True)
    a = ap.parse_args()
    torch.manual_seed(0)
    res = {"command": "python " + " ".join(sys.argv), "seed": a.seed, "probe_batch": 32,
           "variants": {v: measure(a.root, a.seed, v) for v in a.variants}}
    a.json.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
