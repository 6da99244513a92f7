"""Training / evaluation data of a config as index-addressable batch sources."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
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
    select: BatchSource | None = None
    """The ``eval.selection_split`` data (knobs are chosen on it), when the config asks for it."""


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
    """Load the dataset of ``cfg.data`` (fetching rt-sentences into the cache if needed); with
    ``cfg.eval.selection_split`` also that split (same limits as the evaluation split)."""
    task = _build(cfg, cfg.data.eval_split, tokenizer)
    sel = cfg.eval.selection_split
    if sel is not None:
        if cfg.data.name.startswith("glue-"):  # validation: the rows held out of GLUE train; test: GLUE's validation
            task.select = _build(cfg, "heldout", tokenizer).eval if sel == "validation" else task.eval
        else:
            task.select = task.eval if sel == cfg.data.eval_split else _build(cfg, sel, tokenizer, eval_only=True).eval
    return task


def _build(cfg: TrainConfig, split: str, tokenizer=None, eval_only: bool = False) -> Task:
    d = cfg.data
    if d.name == "digits":
        from apsq.data.digits import load_digits_split

        xt, yt = load_digits_split("train")
        xe, ye = load_digits_split(split)
        i, j = subset(len(yt), d.train_limit), subset(len(ye), d.eval_limit)
        return Task(TensorBatches(xt[i], yt[i]), TensorBatches(xe[j], ye[j]), split)
    if d.name in ("digit-scenes", "ade20k"):
        return _segmentation(cfg, split, eval_only)
    from apsq.data.text import TokenizedText

    glue = None
    if tokenizer is None:
        raise APSQError(f"data {d.name!r} is text and needs a tokenizer (a text model: minilm, bert-tiny or a Hugging "
                        "Face model); image data: digits (with model digits-cnn)")
    if d.name == "rt-sentences":
        from apsq.data.rt_sentences import load_rt_sentences

        train = load_rt_sentences("train", path=d.path)
        ev = load_rt_sentences(split, path=d.path)
    elif d.name.startswith("glue-"):
        from apsq.data.hub import load_glue

        glue = task = d.name[len("glue-"):]
        if d.path is not None and d.eval_path is None and split != "heldout" and d.eval_split != "train":
            raise APSQError(f"data.path {d.path!r} without data.eval_path: the one file would serve {d.name}'s training "
                            "rows and its reported validation split alike (a score on the rows it trained on). Give the "
                            "validation rows as data.eval_path (JSON lines), or set data.eval_split: train to score the "
                            "training rows on purpose")
        # GLUE's test labels are hidden: its validation split is the evaluation set; with
        # data.validation_from_train the validation bucket of train is held out ("heldout": chosen on)
        train, heldout = load_glue(task, "train", data_files=d.path), []
        if split == "heldout" and not d.validation_from_train:
            raise APSQError(f"data {d.name!r}: the held-out selection rows need data.validation_from_train: true")
        if d.validation_from_train:
            from apsq.data.splits import split_of

            held = [split_of(d.name, ex.id) == "validation" for ex in train]
            train, heldout = [ex for ex, h in zip(train, held) if not h], [ex for ex, h in zip(train, held) if h]
        if split == "heldout":
            if not heldout:
                raise APSQError(f"data.validation_from_train: none of the {len(train)} training rows of {d.name!r} "
                                f"falls in the held-out 10 % (by idx); use more training rows")
            ev = heldout
        else:
            ev = load_glue(task, "validation" if d.eval_split != "train" else "train", data_files=d.eval_path or d.path)
    else:
        raise APSQError(f"data.name must be rt-sentences, digits or glue-<task>; got {d.name!r}")
    train, ev = _limit(train, d.train_limit), _limit(ev, d.eval_limit)
    reg = glue in GLUE_REGRESSION
    return Task(TokenizedText(train, tokenizer, cfg.model.max_len, reg),
                TokenizedText(ev, tokenizer, cfg.model.max_len, reg), split, glue)


def _cap(split: str, limit: int | None) -> int:
    from apsq.data.segmentation import DIGIT_SCENES_ROWS

    return min(limit or DIGIT_SCENES_ROWS[split], DIGIT_SCENES_ROWS[split])


def _segmentation(cfg: TrainConfig, split: str, eval_only: bool) -> Task:
    """``digit-scenes`` (generated) or ``ade20k`` (hub / ``data.path``) as :class:`SegmentationBatches`.

    ADE20K's test labels are hidden: ``eval_split: test`` is its validation set (how ADE20K results are
    reported) and ``validation`` a 10 % hash split of its training images (:func:`apsq.data.splits.split_of`),
    which training never sees."""
    from apsq.data.segmentation import (
        ADE20K_PIPELINE,
        DIGIT_SCENES_PIPELINE,
        SegmentationBatches,
        digit_scenes,
    )
    from apsq.data.splits import split_of

    d = cfg.data
    if d.name == "digit-scenes":  # scenes are i.i.d.: the first N generated are a random subset of N
        pipe = DIGIT_SCENES_PIPELINE
        train = [] if eval_only else digit_scenes("train", n=_cap("train", d.train_limit))
        ev = digit_scenes(split, n=_cap(split, d.eval_limit))
        return Task(SegmentationBatches(train, pipe, train=True, name="digit-scenes train") if train else None,  # type: ignore[arg-type]  # no train data with eval_only
                    SegmentationBatches(ev, pipe, train=False, name=f"digit-scenes {split}"), split)
    from apsq.data.hub import load_ade20k

    pipe = ADE20K_PIPELINE
    path = d.path
    folder = path is not None and Path(path).is_dir()
    train_file = str(Path(path) / "train.jsonl") if path is not None and folder else path
    test_file = d.eval_path or (str(Path(path) / "validation.jsonl") if path is not None and folder else path)
    if split == "test" and not eval_only and path is not None and not folder and d.eval_path is None:
        raise APSQError(f"data.path {path!r} is one file: it would serve the training images and the reported test "
                        "split alike. Give the test rows (ADE20K's validation images) as data.eval_path, or make "
                        "data.path a folder with train.jsonl / validation.jsonl")
    rows = [] if eval_only and split == "test" else load_ade20k("train", data_files=train_file)
    buckets = [split_of("ade20k", str(i)) for i in range(len(rows))]
    train = [r for r, b in zip(rows, buckets) if b != "validation"]
    if split == "test":
        ev = load_ade20k("validation", data_files=test_file)
    elif split == "validation":
        ev = [r for r, b in zip(rows, buckets) if b == "validation"]
        if not ev:
            raise APSQError(
                f"{d.name} validation: the 10 % hash split of the {len(rows)} training images "
                "(apsq.data.splits.split_of) holds none; 'validation' (data.eval_split or eval.selection_split) "
                "is that split, as ADE20K's test labels are hidden ('test' is its validation set). Give more "
                "training images (a few dozen) or leave eval.selection_split out")
    else:
        ev = train
    train, ev = _limit(train, d.train_limit), _limit(ev, d.eval_limit)
    tr = SegmentationBatches(train, pipe, train=True, name=f"{d.name} train") if train else None
    return Task(tr, SegmentationBatches(ev, pipe, train=False, name=f"{d.name} {split}"), split)  # type: ignore[arg-type]
