"""The calibration set of a causal LM: token windows drawn from a documented text source.

apsq's LLM commands (``apsq eval zero-shot``, ``apsq eval lm-eval``) calibrate every quantized variant
on the same set, chosen as post-training quantization papers do (GPTQ, SmoothQuant, OmniQuant):
``samples`` random windows of ``seq_len`` consecutive tokens from the *training* split of a text
corpus, never from an evaluation task. Sources:

* ``wikitext2`` (default): WikiText-2 raw, training split (``Salesforce/wikitext``,
  ``wikitext-2-raw-v1``, through ``datasets``; needs the hub or its cache);
* ``corpus``: the training split of apsq's offline sentence corpus (the four ground-truth files of the
  vaderSentiment sdist from PyPI: :func:`apsq.eval.llm.load_corpus`) -- what the small LLaMA was
  trained on, available without the hub;
* a path to a UTF-8 text file (``file:PATH`` or any existing file).

The text is joined with blank lines, tokenized once without special tokens, and the window starts
are drawn with ``random.Random(seed)``; each window gets the tokenizer's BOS first when it has one
(as LLaMA's tokenizer does for every input). Defaults: 128 windows of 512 tokens, seed 0.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from apsq.errors import APSQError, check_int

__all__ = ["CalibrationSet", "calibration_batches", "calibration_text"]

SOURCES = ("wikitext2", "corpus")


@dataclass(frozen=True)
class CalibrationSet:
    """Where the calibration windows come from and how many (see the module docstring)."""

    source: str = "wikitext2"
    samples: int = 128
    seq_len: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("calibration.samples", self.samples, lo=1)
        check_int("calibration.seq_len", self.seq_len, lo=2)
        check_int("calibration.seed", self.seed, lo=0)
        if self.source not in SOURCES and not Path(self.source.removeprefix("file:")).is_file():
            raise APSQError(f"calibration.source must be {', '.join(SOURCES)} or an existing text file "
                            f"(file:PATH); got {self.source!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibration_text(source: str) -> str:
    """The training text of ``source`` (``wikitext2``, ``corpus`` or a file path), joined by blank lines.

    Raises:
        APSQError: WikiText-2 not reachable (offline without its cache), an empty source.
    """
    if source == "wikitext2":
        try:
            import datasets

            rows = datasets.load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="train")["text"]
        except Exception as exc:  # ConnectionError, OfflineModeIsEnabled, DatasetNotFoundError, ...
            raise APSQError(f"calibration.source wikitext2 needs the Hugging Face hub or its cache ({type(exc).__name__}: "
                            f"{exc}); offline, use calibration source 'corpus' (apsq's sentence corpus) or a "
                            "text file") from exc
        text = "".join(rows)
    elif source == "corpus":
        from apsq.eval.llm import load_corpus

        text = "\n\n".join(load_corpus()["train"])
    else:
        text = Path(source.removeprefix("file:")).read_text(encoding="utf-8")
    if not text.strip():
        raise APSQError(f"calibration source {source!r} holds no text")
    return text


def calibration_batches(tokenizer: Any, spec: CalibrationSet, max_positions: int | None = None,
                        text: str | None = None) -> list[dict[str, torch.Tensor]]:
    """``spec.samples`` batches ``{"input_ids": [1, L], "attention_mask": [1, L]}`` (int64, CPU) of
    ``L = min(spec.seq_len, max_positions)`` tokens each (BOS first when the tokenizer has one).

    ``text`` overrides the source's text (tests). A text shorter than one window is repeated until it
    fills one.
    """
    length = spec.seq_len if max_positions is None else min(spec.seq_len, int(max_positions))
    text = calibration_text(spec.source) if text is None else text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise APSQError(f"calibration source {spec.source!r} tokenizes to no tokens")
    bos = getattr(tokenizer, "bos_token_id", None)
    body = length - (bos is not None)
    while len(ids) < body + 1:  # a short text: repeat it
        ids = ids + ids
    rng = random.Random(spec.seed)
    out = []
    for _ in range(spec.samples):
        start = rng.randrange(0, len(ids) - body)
        window = ([bos] if bos is not None else []) + ids[start:start + body]
        t = torch.tensor([window], dtype=torch.long)
        out.append({"input_ids": t, "attention_mask": torch.ones_like(t)})
    return out
