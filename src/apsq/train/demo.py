"""``demo_run``: the embedded-default QAT job behind ``apsq demo``.

all-MiniLM-L6-v2 fine-tuned (full precision) on the Rotten Tomatoes sentences, then for every
variant — W8A8 with INT32 PSUMs (``none``), ``psq`` INT8 and APSQ INT8 with gs = 1..4 — quantized,
calibrated and trained briefly with QAT + distillation from the full-precision model; test accuracy
per variant. The fine-tuned FP32 model is cached (``$APSQ_CACHE/demo``), so a second run skips it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from apsq.data.cache import cache_dir
from apsq.train.config import TrainConfig, parse_config
from apsq.train.loop import FP32, train

CACHE_VERSION = 1
"""Bumped when the cached FP32 model of the demo must not be reused."""

DEFAULT_VARIANTS: tuple[tuple[str, str, int], ...] = (
    ("w8a8", "none", 1),
    ("psq", "psq", 1),
    ("apsq_gs1", "apsq", 1),
    ("apsq_gs2", "apsq", 2),
    ("apsq_gs3", "apsq", 3),
    ("apsq_gs4", "apsq", 4),
)
"""``(name, psum mode, gs)`` of each variant."""


def demo_configs(*, finetune_steps: int = 150, qat_steps: int = 20, batch_size: int = 16, max_len: int = 48,
                 eval_limit: int | None = 400, seed: int = 0, threads: int | None = None,
                 model: str = "minilm", calibrated: bool = False,
                 data_path: str | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """The FP32 config and the shared settings of the quantized variants."""
    base = {
        "seed": seed,
        "model": {"name": model, "max_len": max_len},
        "data": {"name": "rt-sentences", "eval_split": "test", "eval_limit": eval_limit, "path": data_path},
        "eval": {"batch_size": 64, "after_calibration": calibrated},
        "threads": threads,
        "save_every": 10_000,
    }
    fp32 = parse_config({**base, "finetune": {"steps": finetune_steps, "batch_size": batch_size, "lr": 1e-4}})
    qat = {**base, "finetune": {"steps": 0},
           "qat": {"steps": qat_steps, "batch_size": batch_size, "lr": 2e-5, "scale_lr": 5e-3, "calib_batches": 4},
           "distill": {"temperature": 2.0, "kd_weight": 1.0, "ce_weight": 0.5}}
    return fp32, qat


def demo_run(variants: Sequence[tuple[str, str, int]] = DEFAULT_VARIANTS, *, finetune_steps: int = 150,
             qat_steps: int = 20, batch_size: int = 16, max_len: int = 48, eval_limit: int | None = 400,
             seed: int = 0, threads: int | None = None, output: str | Path | None = None, progress: bool = True,
             model: str = "minilm", calibrated: bool = False, data_path: str | Path | None = None,
             energy: bool = True, on_variant: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Fine-tune once, then short QAT + KD per variant; test accuracies (fractions).

    Returns ``{"fp32": acc, "variants": {name: {"mode", "gs", "accuracy", "calibrated_accuracy",
    "seconds"}}, "settings": {...}, "seconds": total}``. Accuracy is measured on ``eval_limit``
    test sentences (a fixed random subset; ``None``: all 1,041); ``calibrated`` also measures each
    variant right after calibration (before QAT). ``output`` keeps every run's folder (default: a
    temporary folder, removed). ``on_variant(name, row)`` is called as each one finishes.
    Needs the Rotten Tomatoes sentences (fetched into the cache on first use; ``data_path``: a
    file in the same format instead). ``energy`` adds ``"energy_reduction"``: the energy model's
    reduction vs INT32 PSUMs for the same model traced at ``max_len`` tokens, per dataflow and gs
    (see :func:`apsq.eval.sweep.energy_reductions`; ``{"error": ...}`` if it cannot be computed).
    """
    t0 = time.time()
    fp32_cfg, qat_base = demo_configs(finetune_steps=finetune_steps, qat_steps=qat_steps, batch_size=batch_size,
                                      max_len=max_len, eval_limit=eval_limit, seed=seed, threads=threads, model=model,
                                      calibrated=calibrated, data_path=None if data_path is None else str(data_path))
    tmp = None
    if output is None:
        tmp = tempfile.TemporaryDirectory(prefix="apsq-demo-")
        out = Path(tmp.name)
    else:
        out = Path(output)
    try:
        cached = cache_dir() / "demo" / f"fp32-v{CACHE_VERSION}-{fp32_cfg.fingerprint()}.safetensors"
        fp32_was_cached = cached.exists()
        if fp32_was_cached:
            fp32_file = cached
            fp32_res = _fp32_accuracy_of(cached)
        else:
            res = train(fp32_cfg, out / "fp32", progress=progress)
            fp32_res = res["fp32_accuracy"]
            cached.parent.mkdir(parents=True, exist_ok=True)
            from apsq.train.checkpoint import atomic_save_tensors, read_tensors

            tensors, meta = read_tensors(out / "fp32" / FP32)
            atomic_save_tensors(cached, tensors, {**meta, "fp32_accuracy": fp32_res})
            fp32_file = cached
        rows: dict[str, Any] = {}
        for name, mode, gs in variants:
            t1 = time.time()
            cfg = parse_config({**qat_base, "finetune": {"steps": 0, "init": str(fp32_file)},
                                "apsq": {"mode": mode, "gs": gs, "tile": 32, "exclude": ["classifier"]}})
            res = train(cfg, out / name, progress=progress)
            rows[name] = {"mode": mode, "gs": gs, "accuracy": res["accuracy"],
                          "calibrated_accuracy": res.get("calibrated_accuracy"),
                          "seconds": round(time.time() - t1, 1)}
            if on_variant is not None:
                on_variant(name, rows[name])
    finally:
        if tmp is not None:
            tmp.cleanup()
    result: dict[str, Any] = {}
    if energy:
        from apsq.eval.sweep import energy_reductions

        try:
            gs_values = sorted({gs for _, mode, gs in variants if mode == "apsq"}) or [1]
            result["energy_reduction"] = energy_reductions(
                parse_config({**qat_base, "apsq": {"mode": "apsq", "psum_bits": 8}}), gs_values)
        except Exception as exc:  # the accuracy table stands on its own
            result["energy_reduction"] = {"error": f"{type(exc).__name__}: {exc}"}
    return {**result, "fp32": fp32_res, "variants": rows, "seconds": round(time.time() - t0, 1),
            "settings": {"model": model, "finetune_steps": finetune_steps, "qat_steps": qat_steps,
                         "batch_size": batch_size, "max_len": max_len, "eval_limit": eval_limit, "seed": seed,
                         "fp32_cached": fp32_was_cached}}


def _fp32_accuracy_of(path: Path) -> float | None:
    from apsq.train.checkpoint import read_tensors

    return read_tensors(path)[1].get("fp32_accuracy")
