"""Per-class test IoU of the study's FP32 models on all 256 test scenes of ``digit-scenes``: what the
models learned in their 300 steps (the mIoU of the study's table is the mean of these).

    python results/segmentation/fp32_per_class.py --root runs/segmentation
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MODELS = ("segformer-b0", "efficientvit-b1")


def main() -> None:
    from apsq.data.segmentation import DIGIT_SCENES_CLASSES
    from apsq.train.checkpoint import load_model_state, read_tensors
    from apsq.train.config import parse_config
    from apsq.train.loop import evaluate_segmentation
    from apsq.train.models import build_model
    from apsq.train.tasks import build_task

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("runs/segmentation"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=Path("results/segmentation/fp32_per_class.json"))
    a = ap.parse_args()
    out = {"classes": list(DIGIT_SCENES_CLASSES), "split": "test", "scenes": None, "models": {}}
    for m in MODELS:
        run = a.root / m / f"seed{a.seed}" / "fp32"
        cfg = parse_config(json.loads((run / "config.json").read_text()))
        task = build_task(cfg)
        model = build_model(cfg)
        tensors, _ = read_tensors(run / "fp32.safetensors")
        load_model_state(model, tensors, run / "fp32.safetensors")
        res = evaluate_segmentation(model, task.eval, cfg.model.num_labels, progress=False)
        out["scenes"] = len(task.eval)
        out["models"][m] = {"miou": res["miou"], "pixel_accuracy": res["pixel_accuracy"],
                            "iou": dict(zip(DIGIT_SCENES_CLASSES, res["iou"]))}
    out["command"] = "python results/segmentation/fp32_per_class.py --root " + str(a.root)
    a.json.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
