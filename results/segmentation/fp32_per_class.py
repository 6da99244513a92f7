"""Per-class test IoU of the study's FP32 models on all 256 test scenes of ``digit-scenes``: what the
models learned (the mIoU of the study's table is the mean of these), and whether they find digits at all.

``digit_vs_photo`` scores the same predictions with the ten digit classes merged into one (classes
*digit*, *china photo*, *flower photo*): a model that finds the digits but cannot tell them apart scores
well there and badly on the per-digit IoUs.

    python results/segmentation/fp32_per_class.py --root runs/segmentation --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MODELS = ("segformer-b0", "efficientvit-b1")


def main() -> None:
    import torch

    from apsq.data.segmentation import DIGIT_SCENES_CLASSES, IGNORE_INDEX
    from apsq.train.checkpoint import load_model_state, read_tensors
    from apsq.train.config import parse_config
    from apsq.train.batches import split_batch
    from apsq.train.losses import logits_of
    from apsq.train.models import build_model
    from apsq.train.segmentation import area_counts, resize_logits, segmentation_metrics
    from apsq.train.tasks import build_task

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("runs/segmentation"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", type=Path, default=Path("results/segmentation/fp32_per_class.json"))
    a = ap.parse_args()
    digits = [i for i, c in enumerate(DIGIT_SCENES_CLASSES) if c.startswith("digit")]
    group = torch.tensor([0 if i in digits else 1 + i - len(digits) for i in range(len(DIGIT_SCENES_CLASSES))])
    out: dict = {"classes": list(DIGIT_SCENES_CLASSES), "split": "test", "scenes": None,
                 "digit_vs_photo_classes": ["digit (any)", "china photo", "flower photo"], "models": {}}
    for m in MODELS:
        for seed in a.seeds:
            run = a.root / m / f"seed{seed}" / "fp32"
            if not (run / "fp32.safetensors").exists():
                continue
            cfg = parse_config(json.loads((run / "config.json").read_text()))
            task = build_task(cfg)
            model = build_model(cfg).eval()
            tensors, _ = read_tensors(run / "fp32.safetensors")
            load_model_state(model, tensors, run / "fp32.safetensors")
            n = cfg.model.num_labels
            full = torch.zeros(4, n, dtype=torch.float64)
            merged = torch.zeros(4, 3, dtype=torch.float64)
            with torch.no_grad():
                for i in range(0, len(task.eval), 64):
                    inputs, labels = split_batch(task.eval.batch(range(i, min(i + 64, len(task.eval)))), "cpu")
                    pred = resize_logits(logits_of(model(**inputs)), labels).argmax(1)
                    full += area_counts(pred, labels, n)
                    ok = labels != IGNORE_INDEX
                    merged += area_counts(group[pred], torch.where(ok, group[labels.clamp(0, n - 1)], labels), 3)
            res, two = segmentation_metrics(full), segmentation_metrics(merged)
            out["scenes"] = len(task.eval)
            out["models"].setdefault(m, {})[f"seed{seed}"] = {
                "miou": res["miou"], "pixel_accuracy": res["pixel_accuracy"],
                "iou": dict(zip(DIGIT_SCENES_CLASSES, res["iou"])),
                "digit_vs_photo_iou": dict(zip(out["digit_vs_photo_classes"], two["iou"]))}
    out["command"] = f"python results/segmentation/fp32_per_class.py --root {a.root} --seeds {' '.join(map(str, a.seeds))}"
    a.json.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
