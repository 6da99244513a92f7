"""Run lm-eval (EleutherAI lm-evaluation-harness) zero-shot tasks on an APSQ-quantized Hugging Face
causal LM: ``apsq eval lm-eval --model PATH --tasks piqa,hellaswag,...``.

The model is loaded with ``transformers``, quantized with :func:`apsq.quantize_` (``lm_head``
excluded), calibrated on a few sentences, and handed to lm-eval's ``HFLM`` wrapper as a live model.
Built-in tasks download their data from the hub; ``include_path`` adds local task YAMLs (how it is
tested offline). ``lm-eval`` is an optional dependency (``pip install apsq[eval]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import apsq
from apsq.errors import APSQError

CALIBRATION_TEXT = (
    "The quick brown fox jumps over the lazy dog.",
    "A gripping, beautifully shot story that never loses its nerve.",
    "Scientists reported on Tuesday that the new vaccine was safe and effective.",
    "She put the kettle on, opened the window and sat down to read the letter again.",
)


def with_head_excluded(config: apsq.APSQConfig) -> apsq.APSQConfig:
    """``config`` with ``lm_head`` left in full precision unless the user chose exclusions."""
    return config if config.exclude else config.replace(exclude=("lm_head",))


def quantized_causal_lm(model_path: str, config: apsq.APSQConfig | None, calibration: Sequence[str] = CALIBRATION_TEXT,
                        dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """``(model, tokenizer)``: the causal LM at ``model_path``, quantized and calibrated (``config``
    ``None``: left in full precision)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    except OSError as exc:
        raise APSQError(f"could not load a causal LM from {model_path!r} ({exc})") from exc
    if config is not None:
        apsq.quantize_(model, with_head_excluded(config))
        enc = tok(list(calibration), return_tensors="pt", padding=tok.pad_token is not None)
        batches = [{"input_ids": enc["input_ids"][i: i + 1],
                    "attention_mask": enc["attention_mask"][i: i + 1]} for i in range(len(calibration))]
        if tok.pad_token is None:  # un-padded: run sentence by sentence
            batches = [dict(tok(s, return_tensors="pt")) for s in calibration]
        apsq.calibrate(model, batches)
    model.eval()
    return model, tok


def run_lm_eval(model_path: str, tasks: Sequence[str], config: apsq.APSQConfig | None, *, limit: int | None = None,
                batch_size: int = 8, include_path: str | Path | None = None, num_fewshot: int = 0,
                include_defaults: bool = True) -> dict[str, Any]:
    """lm-eval results (``{"results": {task: metrics}}``) of the quantized model.

    ``include_defaults=False`` skips indexing lm-eval's built-in tasks (only ``include_path``'s)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:  # pragma: no cover
        raise APSQError("apsq eval lm-eval needs lm-eval: pip install 'apsq[eval]'") from exc
    model, tok = quantized_causal_lm(model_path, config)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
    tm = TaskManager(include_path=str(include_path) if include_path else None, include_defaults=include_defaults)
    res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                                  task_manager=tm, bootstrap_iters=0, random_seed=0, numpy_random_seed=0,
                                  torch_random_seed=0, fewshot_random_seed=0)
    if res is None:
        raise APSQError("lm-eval returned no results")
    return {"results": res["results"], "config": None if config is None else with_head_excluded(config).to_dict(),
            "model": model_path, "tasks": list(tasks), "limit": limit}
