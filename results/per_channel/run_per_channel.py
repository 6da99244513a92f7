"""Per-channel vs per-tensor PSUM steps on the real MiniLM (Rotten Tomatoes sentences, test split).

Calibration only (no training): the fine-tuned FP32 all-MiniLM-L6-v2 is quantized (W8A8, tile 32,
classifier head in full precision, as configs/train_minilm_*.yaml), calibrated on the same 4 x 16
training sentences the trainer uses (``global_batch(..., "calib")``), and evaluated on all 1,041 test
sentences, for each PSUM mode with ``psum_granularity`` ``tensor`` and ``channel``. Per variant:
accuracy with its 95 % Wilson interval, the paired comparison channel vs tensor (sentences only one of
them gets right), and on one batch of 64 test sentences the mean relative output error of the quantized
layers and the PSUM saturation rate.

    OMP_NUM_THREADS=1 python results/per_channel/run_per_channel.py \\
        --fp32 runs/minilm_fp32/fp32.safetensors --json results/per_channel/calibration_only.json

``--fp32``: a fine-tuned model from ``apsq train --config configs/train_minilm_fp32.yaml``. Runs split
over ``--modes`` (e.g. two processes side by side) are joined with
``python results/per_channel/run_per_channel.py --merge A.json B.json --json OUT.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import apsq
from apsq.machine import cpu_label
from apsq.train.checkpoint import load_model_state, read_tensors
from apsq.train.config import parse_config
from apsq.train.batches import global_batch
from apsq.train.models import build_model, load_tokenizer
from apsq.train.tasks import build_task

BASE = {
    "seed": 0,
    "model": {"name": "minilm", "num_labels": 2, "max_len": 64},
    "data": {"name": "rt-sentences", "eval_split": "test"},
    "finetune": {"steps": 0},
    "qat": {"steps": 0, "batch_size": 16, "calib_batches": 4},
    "threads": 1,
}
APSQ = {"tile": 32, "psum_bits": 8, "weight_bits": 8, "act_bits": 8, "exclude": ["classifier"]}
MODES = [("psq", 1), ("apsq", 1), ("apsq", 2), ("apsq", 3), ("apsq", 4)]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion ``k / n``."""
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def shift_table(model: torch.nn.Module) -> dict:
    """What the engine must hold: the PSUM exponents (``n`` per layer per tensor, ``n x N`` per channel)
    and the range of the per-lane shift amounts ``e_i - ex - ew`` (tile-sum units) over all layers."""
    from apsq.nn.layers import QuantLinear

    count, lo, hi = 0, None, None
    for m in model.modules():
        if isinstance(m, QuantLinear) and m.qcfg.mode != "none":
            n = m._n()
            e = m.psum.exponents(n)
            count += e.numel()
            unit = m.act_quant.exponent().reshape(()) + m.weight_quant.exponent().reshape(-1)  # [N]
            shift = m.psum.lanes(e).reshape(n, -1) - unit.to(e.dtype)  # [n, N]
            lo = int(shift.min()) if lo is None else min(lo, int(shift.min()))
            hi = int(shift.max()) if hi is None else max(hi, int(shift.max()))
    bits = math.ceil(math.log2(hi - lo + 1)) if hi is not None and hi > lo else 1
    return {"psum_exponents": count, "shift_min": lo, "shift_max": hi, "shift_bits": bits}


def strip_labels(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


@torch.no_grad()
def predictions(model: torch.nn.Module, data, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sentence predictions and labels on ``data`` (in index order)."""
    model.eval()
    order = sorted(range(len(data)), key=lambda i: data.lengths()[i])  # similar lengths: less padding
    pred = torch.empty(len(data), dtype=torch.int64)
    labels = torch.empty(len(data), dtype=torch.int64)
    for i in range(0, len(order), batch_size):
        idx = order[i: i + batch_size]
        b = data.batch(idx)
        pred[idx] = model(**strip_labels(b)).logits.argmax(-1)
        labels[idx] = b["labels"]
    return pred, labels


def merge(parts: list[str], out: str) -> None:
    """Join result files of the same checkpoint run over different ``--modes``; adds the exact McNemar
    p-value of channel vs tensor per variant (sentences only one of them classifies right)."""
    from scipy.stats import binomtest

    docs = [json.loads(Path(p).read_text()) for p in parts]
    base = dict(docs[0])
    for d in docs[1:]:
        if d["fp32_checkpoint"] != base["fp32_checkpoint"] or d["test_sentences"] != base["test_sentences"]:
            raise SystemExit(f"cannot merge runs of different checkpoints / test sets: {parts}")
        base["variants"] = {**base["variants"], **d["variants"]}
    base["command"] = [d["command"] for d in docs] + [
        "python results/per_channel/run_per_channel.py --merge " + " ".join(parts) + " --json " + out]
    for row in base["variants"].values():  # exact McNemar test of the paired predictions
        pr = row["paired"]
        k, m = pr["only_channel_right"], pr["only_channel_right"] + pr["only_tensor_right"]
        pr["mcnemar_p"] = float(binomtest(k, m, 0.5).pvalue) if m else 1.0
    base["fp32_per_run"] = [d["fp32"] for d in docs]
    base["seconds_per_run"] = [d.get("seconds") for d in docs]
    base.pop("seconds", None)
    Path(out).write_text(json.dumps(base, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--merge", nargs="+", help="join these result files into --json and exit")
    ap.add_argument("--fp32", help="fine-tuned FP32 MiniLM (safetensors from apsq train)")
    ap.add_argument("--json", required=True, help="output JSON")
    ap.add_argument("--modes", default=",".join(f"{m}:{g}" for m, g in MODES), help="mode:gs list")
    ap.add_argument("--eval-limit", type=int, default=None, help="smoke test only: this many test sentences")
    args = ap.parse_args()
    if args.merge:
        return merge(args.merge, args.json)
    if not args.fp32:
        ap.error("--fp32 is required")
    torch.set_num_threads(1)
    cfg = parse_config({**BASE, "data": {**BASE["data"], "eval_limit": args.eval_limit}})
    tok = load_tokenizer(cfg)
    task = build_task(cfg, tok)
    tensors, _ = read_tensors(Path(args.fp32))
    n_train = len(task.train)
    calib = [strip_labels(task.train.batch(global_batch(n_train, 16, i, cfg.seed, "calib"))) for i in range(4)]
    probe = strip_labels(task.eval.batch(list(range(min(64, len(task.eval))))))

    def fresh() -> torch.nn.Module:
        m = build_model(cfg)
        load_model_state(m, tensors, Path(args.fp32))
        return m.eval()

    t0 = time.time()
    fp_pred, labels = predictions(fresh(), task.eval)
    n = len(labels)
    out: dict = {
        "command": "OMP_NUM_THREADS=1 python results/per_channel/run_per_channel.py --fp32 " + args.fp32
                   + " --json " + args.json + " --modes " + args.modes
                   + ("" if args.eval_limit is None else f" --eval-limit {args.eval_limit}"),
        "machine": f"{cpu_label()}, 1 torch thread, shared 2-core CPU",
        "fp32_checkpoint": args.fp32,
        "test_sentences": n,
        "calibration": "4 x 16 training sentences (the trainer's calib batches, seed 0)",
        "apsq_config": APSQ,
        "fp32": {"accuracy": float((fp_pred == labels).float().mean()), "seconds": round(time.time() - t0, 1)},
        "variants": {},
    }
    print(f"fp32: {out['fp32']['accuracy']:.4f}", flush=True)
    for spec in args.modes.split(","):
        mode, gs = spec.split(":")
        row: dict = {}
        preds = {}
        for gran in ("tensor", "channel"):
            t1 = time.time()
            model = fresh()
            qcfg = apsq.APSQConfig.from_dict({**APSQ, "mode": mode, "gs": int(gs), "psum_granularity": gran})
            apsq.quantize_(model, qcfg)
            apsq.calibrate(model, calib)
            with torch.no_grad(), apsq.track_stats(model) as stats:
                model(**probe)
            vals = sum(s.psum_values for s in stats)
            table = shift_table(model)
            pred, _ = predictions(model, task.eval)
            k = int((pred == labels).sum())
            preds[gran] = pred
            row[gran] = {
                "accuracy": k / n,
                "ci95": [round(v, 4) for v in wilson(k, n)],
                "mean_layer_rel_error": sum(s.rel_error for s in stats) / len(stats),
                "psum_saturation": sum(s.psum_saturated for s in stats) / vals if vals else 0.0,
                **table,
                "seconds": round(time.time() - t1, 1),
            }
            print(f"{mode} gs={gs} {gran}: {k / n:.4f} ({row[gran]['seconds']} s)", flush=True)
        right_t, right_c = preds["tensor"] == labels, preds["channel"] == labels
        row["paired"] = {"only_channel_right": int((right_c & ~right_t).sum()),
                         "only_tensor_right": int((right_t & ~right_c).sum())}
        out["variants"][f"{mode}_gs{gs}" if mode == "apsq" else mode] = row
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))  # partial results survive an interruption
    out["seconds"] = round(time.time() - t0, 1)
    Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
