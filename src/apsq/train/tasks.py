"""Training / evaluation data of a config as index-addressable batch sources."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from apsq.data.registry import GLUE_REGRESSION
from apsq.errors import APSQError
from apsq.train.config import TrainConfig


class BatchSource(Protocol):
    def __len__(self) -> int: ...

    def batch(self, idx: Sequence[int]) -> dict[str, torch.Tensor]: ...


class TensorBatches:
    """Batches of an in-memory image tensor ``x`` with labels ``y``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        i = torch.as_tensor(list(idx), dtype=torch.long)
        return {"pixel_values": self.x[i], "labels": self.y[i]}


@dataclass
class Task:
    train: BatchSource
    eval: BatchSource
    eval_split: str
    glue: str | None = None
    """The GLUE task name when the data is GLUE: evaluation reports its official metrics (:mod:`apsq.train.glue`)."""


def subset(total: int, n: int | None) -> list[int]:
    """``n`` of ``range(total)`` chosen by a fixed-seed permutation, in order (all when ``n`` is None).

    A prefix would be biased: the review file lists positive sentences before negative ones.
    """
    if n is None or n >= total:
        return list(range(total))
    g = torch.Generator().manual_seed(1234)
    return sorted(torch.randperm(total, generator=g)[:n].tolist())


def _limit(rows: list, n: int | None) -> list:
    return [rows[i] for i in subset(len(rows), n)]


def build_task(cfg: TrainConfig, tokenizer=None) -> Task:
    """Load the dataset of ``cfg.data`` (fetching rt-sentences into the cache if needed)."""
    d = cfg.data
    if d.name == "digits":
        from apsq.data.digits import load_digits_split

        xt, yt = load_digits_split("train")
        xe, ye = load_digits_split(d.eval_split)
        i, j = subset(len(yt), d.train_limit), subset(len(ye), d.eval_limit)
        return Task(TensorBatches(xt[i], yt[i]), TensorBatches(xe[j], ye[j]), d.eval_split)
    from apsq.data.text import TokenizedText

    glue = None
    if tokenizer is None:
        raise APSQError(f"data {d.name!r} is text and needs a tokenizer (a text model: minilm, bert-tiny or a Hugging "
                        "Face model); image data: digits (with model digits-cnn)")
    if d.name == "rt-sentences":
        from apsq.data.rt_sentences import load_rt_sentences

        train = load_rt_sentences("train", path=d.path)
        ev = load_rt_sentences(d.eval_split, path=d.path)
    elif d.name.startswith("glue-"):
        from apsq.data.hub import load_glue

        glue = task = d.name[len("glue-"):]
        # GLUE's test labels are hidden: its validation split is the evaluation set.
        train = load_glue(task, "train", data_files=d.path)
        ev = load_glue(task, "validation" if d.eval_split != "train" else "train", data_files=d.eval_path or d.path)
    else:
        raise APSQError(f"data.name must be rt-sentences, digits or glue-<task>; got {d.name!r}")
    train, ev = _limit(train, d.train_limit), _limit(ev, d.eval_limit)
    reg = glue in GLUE_REGRESSION
    return Task(TokenizedText(train, tokenizer, cfg.model.max_len, reg),
                TokenizedText(ev, tokenizer, cfg.model.max_len, reg), d.eval_split, glue)
