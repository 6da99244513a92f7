"""Evaluate quantization variants of one model: post-training (calibrated) and, optionally, short QAT.

A variant is an :class:`apsq.train.config.APSQSection` (a training config's ``apsq`` settings, built from
the config's by :meth:`~apsq.train.config.APSQSection.variant`; recorded as the keys it gives). PTQ: quantize a copy of the FP32 model, calibrate on
the setup's calibration batches, evaluate (:func:`apsq.eval.metrics.metrics_of`). QAT: a run of
:func:`apsq.eval.sweep.run_variant` from the FP32 checkpoint (finished runs are reused, interrupted ones resumed).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from apsq.errors import APSQError
from apsq.eval.metrics import Metrics, logits_on, metrics_of
from apsq.eval.setup import Setup
from apsq.nn.config import APSQConfig
from apsq.nn.calibration import calibrate
from apsq.nn.transform import quantize_
from apsq.train.config import APSQSection


def ptq_metrics(setup: Setup, qcfg: APSQConfig, fp_logits=None) -> Metrics:
    """Calibrated-only metrics of ``qcfg`` on the setup's evaluation batches (the copy runs on the
    setup model's device; :func:`apsq.calibrate` and :func:`logits_on` move the batches there)."""
    import torch

    fp = fp_logits if fp_logits is not None else logits_on(setup.model, setup.eval)
    labels = torch.cat([y.cpu() for _, y in setup.eval])
    m = quantize_(copy.deepcopy(setup.model), qcfg)
    calibrate(m, setup.calib)
    return metrics_of(logits_on(m, setup.eval), fp, labels)


def qat_accuracy(setup: Setup, fp32: str | Path, qcfg: APSQSection, steps: int, output: Path,
                 eval_limit: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Accuracy after ``steps`` QAT+KD steps of the setup's config with ``apsq: qcfg`` (a run in ``output``)."""
    from apsq.eval.sweep import run_variant

    c = setup.cfg  # validated copies: apsq replaced by the variant's keys, from the FP32 checkpoint
    cfg = c.model_copy(update={
        "apsq": qcfg,
        "finetune": c.finetune.model_copy(update={"steps": 0, "init": str(fp32)}),
        "qat": c.qat.model_copy(update={"steps": int(steps)}),
        "eval": c.eval.model_copy(update={"after_calibration": True}),
        **({"data": c.data.model_copy(update={"eval_limit": int(eval_limit)})} if eval_limit else {}),
    })
    r = run_variant(cfg, output, progress=progress)
    return {"accuracy": r["accuracy"], "calibrated_accuracy": r.get("calibrated_accuracy"), "qat_steps": steps,
            "run": str(output)}


def run_variants(setup: Setup, variants: Mapping[str, APSQSection | APSQConfig | Mapping[str, Any]], *,
                 qat_steps: int = 0, fp32: str | Path | None = None, run_dir: Path | None = None,
                 qat_eval_limit: int | None = None,
                 progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """PTQ metrics (and QAT accuracy when ``qat_steps`` > 0) of every named variant.

    ``variants``: name -> :class:`~apsq.train.config.APSQSection`, :class:`apsq.APSQConfig` or a mapping of
    its fields; every one is validated before anything runs (``APSQError`` naming the variant and field)."""
    sections = {name: APSQSection.of(v, where=f"variant {name!r}") for name, v in variants.items()}
    if qat_steps > 0 and (fp32 is None or run_dir is None):
        raise APSQError("run_variants: QAT (qat_steps > 0) needs fp32 and run_dir")
    fp = logits_on(setup.model, setup.eval)
    out: dict[str, dict[str, Any]] = {}
    for name, v in sections.items():
        if progress:
            progress(f"variant {name}: PTQ")
        out[name] = {"config": v.model_dump(mode="json"), "ptq": ptq_metrics(setup, v.to_apsq_config(), fp).to_dict()}
        if qat_steps > 0:
            assert fp32 is not None and run_dir is not None  # checked above
            if progress:
                progress(f"variant {name}: QAT {qat_steps} steps")
            out[name]["qat"] = qat_accuracy(setup, fp32, v, qat_steps, run_dir / name, qat_eval_limit)
    return out
