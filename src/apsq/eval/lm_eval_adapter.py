"""Run lm-eval (EleutherAI lm-evaluation-harness) zero-shot tasks on an APSQ-quantized Hugging Face
causal LM: ``apsq eval lm-eval --model PATH --tasks piqa,hellaswag,...``.

The model is loaded with ``transformers``, quantized with :func:`apsq.quantize_` (``lm_head``
excluded), calibrated on the documented calibration set (:mod:`apsq.eval.calibration`: 128 windows of
512 tokens of WikiText-2's training split by default), and handed to lm-eval's ``HFLM`` wrapper as a
live model. A model whose checkpoint is already quantized (an APSQ model loaded quantized by
``from_pretrained``) is evaluated as loaded: never re-quantized, never re-calibrated. Built-in tasks
download their data from the hub; ``include_path`` adds local task YAMLs (how it is tested offline).
Every metric comes with lm-eval's standard error. ``lm-eval`` is an optional dependency
(``pip install apsq[eval]``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import apsq
from apsq.device import resolve_device
from apsq.errors import APSQError
from apsq.eval.calibration import CalibrationSet, calibration_batches

Calibration = CalibrationSet | Sequence[str]
"""A :class:`~apsq.eval.calibration.CalibrationSet` (token windows of a documented corpus), or explicit
sentences (one batch each; ``apsq eval llm-mc`` calibrates on training sentences of its corpus)."""

BOOTSTRAP_ITERS = 1000
"""lm-eval's ``bootstrap_iters``: ``acc`` / ``acc_norm`` (means) get their closed-form standard error
``sqrt(p (1 - p) / (n - 1))``; bootstrapped metrics (F1, MCC) this many resamples."""


def with_head_excluded(config: apsq.APSQConfig) -> apsq.APSQConfig:
    """``config`` with ``lm_head`` left in full precision unless the user chose exclusions."""
    return config if config.exclude else config.replace(exclude=("lm_head",))


def prepend_bos(tok: Any) -> Any:
    """Make a fast tokenizer that adds no special tokens put ``bos_token`` first (how the small LLaMA
    of :mod:`apsq.eval.llm` saw every sentence in training)."""
    from tokenizers.processors import TemplateProcessing

    if tok.bos_token_id is None:
        raise APSQError("add_bos needs a tokenizer with a bos_token")
    if tok("a")["input_ids"][:1] != [tok.bos_token_id]:
        tok._tokenizer.post_processor = TemplateProcessing(
            single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    return tok


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether ``model`` already holds APSQ-quantized layers (e.g. a QAT-trained checkpoint loaded quantized)."""
    from apsq.nn.transform import quant_layers

    return next(quant_layers(model), None) is not None


def _calibration_batches(tok: Any, model: Any, calibration: Calibration) -> list[dict[str, torch.Tensor]]:
    if isinstance(calibration, CalibrationSet):
        return calibration_batches(tok, calibration, getattr(model.config, "max_position_embeddings", None))
    if isinstance(calibration, str) or not calibration:
        raise APSQError("calibration must be a CalibrationSet or a non-empty list of sentences")
    return [dict(tok(s, return_tensors="pt")) for s in calibration]


def quantized_causal_lm(model_path: str, config: apsq.APSQConfig | None, calibration: Calibration | None = None,
                        dtype: torch.dtype = torch.float32, add_bos: bool = False,
                        device: str | torch.device | None = "auto") -> tuple[Any, Any]:
    """``(model, tokenizer)``: the causal LM at ``model_path`` in ``dtype`` on ``device`` (``"auto"``:
    CUDA when present), quantized with ``config`` and calibrated there on ``calibration`` (default
    :class:`~apsq.eval.calibration.CalibrationSet` ``()``: WikiText-2, 128 x 512 tokens, seed 0).
    ``config`` ``None``: left as loaded (full precision, or the quantized model a QAT checkpoint holds).
    ``add_bos``: see :func:`prepend_bos`.

    Raises:
        APSQError: the model cannot be loaded; its tokenizer has neither a BOS nor an EOS token (lm-eval's
            prefix token); ``config`` given for a checkpoint that is already
            quantized (its trained steps would be overwritten: pass ``config=None``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import apsq.integrations.transformers  # noqa: F401  (registers "apsq": a QAT checkpoint loads quantized)

    dev = resolve_device(device, "device")
    try:
        tok = AutoTokenizer.from_pretrained(model_path)
    except OSError as exc:
        raise APSQError(f"could not load a causal LM from {model_path!r} ({exc})") from exc
    if getattr(tok, "bos_token_id", None) is None and getattr(tok, "eos_token_id", None) is None:
        raise APSQError(
            f"the tokenizer of {model_path!r} has neither a bos_token nor an eos_token; lm-eval scores every "
            "continuation after one of them (its prefix token). Give it one and save it again: "
            "tok.add_special_tokens({'eos_token': ...}); tok.save_pretrained(folder)")
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    except OSError as exc:
        raise APSQError(f"could not load a causal LM from {model_path!r} ({exc})") from exc
    model.to(dev)  # type: ignore[arg-type]  # transformers' typed `.to` wrapper loses `self` (a stub gap)
    if add_bos:
        prepend_bos(tok)
    if config is not None:
        if is_quantized(model):
            raise APSQError(f"{model_path!r} is already APSQ-quantized (a trained checkpoint); evaluate it as loaded "
                            "(apsq eval lm-eval --mode fp; config None) instead of quantizing and calibrating it again")
        apsq.quantize_(model, with_head_excluded(config))
        batches = _calibration_batches(tok, model, CalibrationSet() if calibration is None else calibration)
        apsq.calibrate(model, tqdm(batches, desc="calibrate", unit="window", leave=False))  # minutes on a large model
    model.eval()
    return model, tok


def require_lm_eval() -> None:
    """Raise :class:`APSQError` naming the extra to install when lm-eval is missing (before any model loads)."""
    try:
        import lm_eval  # noqa: F401
    except ImportError as exc:  # pragma: no cover
        raise APSQError("apsq eval lm-eval needs lm-eval: pip install 'apsq[eval]'") from exc


def evaluate_lm(model: torch.nn.Module, tok: Any, tasks: Sequence[str], *, limit: int | None = None,
                batch_size: int = 8, include_path: str | Path | None = None, num_fewshot: int = 0,
                include_defaults: bool = True, add_bos: bool = False,
                bootstrap_iters: int = BOOTSTRAP_ITERS) -> dict[str, Any]:
    """lm-eval's ``{"results": {task: metrics}, "n_samples": ...}`` of a loaded (quantized) causal LM on
    ``tasks`` (the first ``limit`` items of each; seeded), so that one model serves several task sets."""
    require_lm_eval()
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, add_bos_token=True if add_bos else None)
    tm = TaskManager(include_path=str(include_path) if include_path else None, include_defaults=include_defaults)
    res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                                  task_manager=tm, bootstrap_iters=bootstrap_iters, random_seed=0, numpy_random_seed=0,
                                  torch_random_seed=0, fewshot_random_seed=0)
    if res is None:
        raise APSQError("lm-eval returned no results")
    return {"results": res["results"], "n_samples": res.get("n-samples", {})}


def run_lm_eval(model_path: str, tasks: Sequence[str], config: apsq.APSQConfig | None, *, limit: int | None = None,
                batch_size: int = 8, include_path: str | Path | None = None, num_fewshot: int = 0,
                include_defaults: bool = True, calibration: Calibration | None = None,
                add_bos: bool = False, device: str | torch.device | None = "auto",
                dtype: torch.dtype = torch.float32, bootstrap_iters: int = BOOTSTRAP_ITERS) -> dict[str, Any]:
    """lm-eval results (``{"results": {task: metrics}}``, each metric with its ``<metric>_stderr``) of
    the model quantized with ``config`` (:func:`quantized_causal_lm`).

    ``include_defaults=False`` skips indexing lm-eval's built-in tasks (only ``include_path``'s);
    ``add_bos`` prepends the tokenizer's BOS to every context (:func:`prepend_bos`); ``device``: where
    the model runs (lm-eval's ``HFLM`` sends its batches to the live model's device)."""
    require_lm_eval()
    model, tok = quantized_causal_lm(model_path, config, calibration, dtype=dtype, add_bos=add_bos, device=device)
    res = evaluate_lm(model, tok, tasks, limit=limit, batch_size=batch_size, include_path=include_path,
                      num_fewshot=num_fewshot, include_defaults=include_defaults, add_bos=add_bos,
                      bootstrap_iters=bootstrap_iters)
    cal = calibration.to_dict() if isinstance(calibration, CalibrationSet) else (
        CalibrationSet().to_dict() if calibration is None else {"sentences": len(calibration)})
    return {"results": res["results"], "n_samples": res["n_samples"],
            "config": None if config is None else with_head_excluded(config).to_dict(),
            "calibration": cal if config is not None else None, "quantized_checkpoint": is_quantized(model),
            "model": model_path, "tasks": list(tasks), "limit": limit, "dtype": str(dtype).removeprefix("torch.")}


# --- a local multiple-choice task: sentence completion on held-out sentences ---------------------------

MC_TASK = "apsq_sentence_completion"


def completion_items(sentences: Sequence[str], n: int, seed: int = 0, n_choices: int = 4,
                     min_words: int = 6, ending_words: int | None = None) -> list[dict[str, Any]]:
    """``n`` sentence-completion items: a sentence's ending (its last ``ending_words`` words; ``None``:
    its second half) to pick, after its beginning as ``context``, among ``n_choices - 1`` endings of
    other sentences (``choices``; ``label`` the index of the true one). Sentences under ``min_words``
    words are skipped; the draw, distractors and choice order come from ``random.Random(seed)``."""
    if n < 1 or n_choices < 2:
        raise APSQError(f"n must be >= 1 and n_choices >= 2, got n={n}, n_choices={n_choices}")
    if ending_words is not None and not 1 <= ending_words < min_words:
        raise APSQError(f"ending_words must be None or in [1, min_words={min_words}), got {ending_words}")
    pool = sorted({" ".join(s.split()) for s in sentences if len(s.split()) >= min_words})
    cut = (lambda w: len(w) // 2) if ending_words is None else (lambda w: len(w) - ending_words)
    halves = [(" ".join(w[: cut(w)]), " ".join(w[cut(w):])) for w in (s.split() for s in pool)]
    endings = sorted({e for _, e in halves})
    if n > len(pool) or len(endings) < n_choices:
        raise APSQError(f"n={n} items with n_choices={n_choices} need n sentences of >= {min_words} words and "
                        f"n_choices distinct endings; {len(pool)} sentences, {len(endings)} endings available")
    rng = random.Random(seed)
    items = []
    for k, i in enumerate(rng.sample(range(len(pool)), n)):
        context, true = halves[i]
        choices = [true]
        while len(choices) < n_choices:
            e = endings[rng.randrange(len(endings))]
            if e not in choices:
                choices.append(e)
        rng.shuffle(choices)
        items.append({"id": k, "context": context, "choices": choices, "label": choices.index(true)})
    return items


def write_mc_task(items: Sequence[dict[str, Any]], folder: str | Path, task: str = MC_TASK) -> Path:
    """Write ``items`` as JSONL plus an lm-eval task YAML (``acc``, ``acc_norm``) into ``folder``,
    the folder to hand to ``include_path``."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{task}.jsonl"
    data.write_text("".join(json.dumps(it) + "\n" for it in items))
    metrics = "".join(f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true\n"
                      for m in ("acc", "acc_norm"))
    (folder / f"{task}.yaml").write_text(
        f"task: {task}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{context}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: label\n"
        f"metric_list:\n{metrics}")
    return folder


def mc_sweep(model_path: str, task_dir: str | Path, gs_values: Sequence[int] = (1, 2, 3, 4), *, tile: int = 32,
             calibration: Calibration | None = None, batch_size: int = 32, add_bos: bool = True,
             task: str = MC_TASK, progress: bool = True, device: str | torch.device | None = "auto") -> dict[str, Any]:
    """``acc`` / ``acc_norm`` of the task in ``task_dir`` for FP32, W8A8 (INT32 PSUM), psq and APSQ
    per gs (calibration only): ``{"fp32": {...}, "w8a8": {...}, "psq": {...}, "apsq": {"<gs>": {...}}}``."""
    variants: list[tuple[str, apsq.APSQConfig | None]] = [("fp32", None)]
    variants += [(m, apsq.APSQConfig(mode=mode, tile=tile)) for m, mode in (("w8a8", "none"), ("psq", "psq"))]
    variants += [(str(g), apsq.APSQConfig(mode="apsq", gs=g, tile=tile)) for g in gs_values]
    out: dict[str, Any] = {"apsq": {}}
    for name, cfg in tqdm(variants, desc="lm-eval variants", disable=not progress):
        res = run_lm_eval(model_path, [task], cfg, batch_size=batch_size, include_path=task_dir,
                          include_defaults=False, calibration=calibration, add_bos=add_bos,
                          device=device)["results"][task]
        score = {"acc": float(res["acc,none"]), "acc_norm": float(res["acc_norm,none"])}
        if name.isdigit():
            out["apsq"][name] = score
        else:
            out[name] = score
    return out
