"""Do Hugging Face Trainer's step sizes learn? A plain Trainer vs apsq's APSQTrainer (issue 22 item 4).

MiniLM (all-MiniLM-L6-v2, a fresh 2-class head) quantized with APSQ gs=2 (classifier excluded),
calibrated on 64 Rotten Tomatoes training sentences, then the same QAT steps on the same batches with
(a) ``transformers.Trainer`` and its default AdamW (lr 3e-5, the library's QAT rate for weights) and
(b) ``APSQTrainer`` (the library's rule: step sizes at scale_lr 0.2, eps 1e-20, clipped apart). For each
step-size tensor (``log2_scale`` / ``log2_scales``) it counts those whose largest move is at least half
an exponent, and the integer exponents that changed. Writes ``result.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch

import apsq
from apsq.data.rt_sentences import load_rt_sentences
from apsq.integrations.transformers import APSQTrainer, StepSizeWarning
from apsq.models.minilm import minilm_path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("result.json"))
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    rows = load_rt_sentences("train")[: a.steps * a.batch + 64]
    enc = [tok([r.text for r in rows[i:i + a.batch]], padding=True, truncation=True, max_length=32,
               return_tensors="pt") for i in range(64, len(rows), a.batch)][: a.steps]
    batches = [{**e, "labels": torch.tensor([int(r.label) for r in rows[64 + i * a.batch: 64 + (i + 1) * a.batch]])}
               for i, e in enumerate(enc)]
    calib = [dict(tok([r.text for r in rows[:64]], padding=True, truncation=True, max_length=32, return_tensors="pt"))]
    model = AutoModelForSequenceClassification.from_pretrained(str(minilm_path()), num_labels=2)
    apsq.quantize_(model, apsq.APSQConfig(gs=2, exclude=("classifier",)))
    apsq.calibrate(model, calib)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith(("log2_scale", "log2_scales"))}
    out = {"model": "all-MiniLM-L6-v2", "steps": a.steps, "batch": a.batch, "step_size_tensors": len(start)}
    for label, cls, extra in (("plain_trainer", Trainer, {}), ("apsq_trainer", APSQTrainer, {"scale_lr": 0.2})):
        m = copy.deepcopy(model)
        args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=1, max_steps=a.steps,
                                 learning_rate=3e-5, warmup_steps=0.1, train_sampling_strategy="sequential",
                                 use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
                                 remove_unused_columns=False, dataloader_num_workers=0, seed=0)
        t0 = time.time()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cls(model=m, args=args, train_dataset=batches, data_collator=lambda items: items[0], **extra).train()
        moved = {n: float((p.detach() - start[n]).abs().max()) for n, p in m.named_parameters() if n in start}
        changed = sum(int((torch.floor(p.detach() + 0.5) != torch.floor(start[n] + 0.5)).sum())
                      for n, p in m.named_parameters() if n in start)
        out[label] = {"tensors_moved_half_exponent": sum(v >= 0.5 for v in moved.values()),
                      "max_move": max(moved.values()), "exponents_changed": changed,
                      "step_size_warnings": sum(issubclass(w.category, StepSizeWarning) for w in caught),
                      "seconds": round(time.time() - t0, 1)}
        print(label, out[label], flush=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
