"""Evaluation during and after training: accuracy, GLUE's metrics, segmentation mIoU.

Each runs without autograd, in eval mode (the model's mode is restored), shards rows over ``world``
processes and reduces their counts (or gathers their predictions) with accelerate's collectives.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from apsq.train.batches import lockstep_batches, split_batch
from apsq.train.losses import logits_of
from apsq.train.segmentation import SegMetrics, area_counts, resize_logits, segmentation_metrics
from apsq.train.tasks import BatchSource

__all__ = ["evaluate", "evaluate_glue", "evaluate_segmentation"]


@torch.no_grad()
def evaluate(model: nn.Module, data: BatchSource, batch_size: int = 64, rank: int = 0, world: int = 1,
             device: torch.device | str = "cpu", reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
             desc: str = "eval", progress: bool = True, lockstep: bool = False) -> float:
    """Accuracy (fraction) of ``model`` on ``data``; rows are sharded over ``world`` processes
    (``lockstep``: :func:`lockstep_batches` forwards on every rank)."""
    was = model.training
    model.eval()
    mine = list(range(rank, len(data), world))
    lengths = getattr(data, "lengths", None)
    if lengths is not None:  # similar lengths batched together: less padding, same accuracy
        lens = lengths()
        mine.sort(key=lambda i: lens[i])
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    n_batches = lockstep_batches(len(data), world, batch_size) if lockstep else -(-len(mine) // batch_size)
    for b in tqdm(range(n_batches), desc=desc, disable=not progress, leave=False):
        rows = mine[b * batch_size: (b + 1) * batch_size]
        inputs, labels = split_batch(data.batch(rows or [0]), torch.device(device))
        pred = logits_of(model(**inputs)).argmax(-1)
        if rows:
            counts[0] += (pred == labels).sum()
            counts[1] += labels.numel()
    if reduce is not None:
        counts = reduce(counts)
    model.train(was)
    return float(counts[0] / counts[1])


@torch.no_grad()
def evaluate_glue(model: nn.Module, data: BatchSource, task: str, batch_size: int = 64, rank: int = 0, world: int = 1,
                  device: torch.device | str = "cpu", gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  desc: str = "eval", progress: bool = True, lockstep: bool = False) -> dict[str, float]:
    """GLUE's official metrics of ``task`` (:func:`apsq.train.glue.glue_metrics`, with ``score``) of
    ``model`` on ``data``: predicted classes (argmax) or, for STS-B, the single output. Rows are sharded
    over ``world`` processes and the predictions collected with ``gather`` (accelerate's; stacks the
    ranks' equal-sized tensors); ``lockstep`` as in :func:`evaluate`."""
    from apsq.train.glue import glue_metrics

    was = model.training
    model.eval()
    mine = list(range(rank, len(data), world))
    per = -(-len(data) // world)
    rows = torch.full((per, 3), -1.0, dtype=torch.float64, device=device)  # row, prediction, label
    n_batches = lockstep_batches(len(data), world, batch_size) if lockstep else -(-len(mine) // batch_size)
    for b in tqdm(range(n_batches), desc=desc, disable=not progress, leave=False):
        i, take = b * batch_size, mine[b * batch_size: (b + 1) * batch_size]
        inputs, labels = split_batch(data.batch(take or [0]), torch.device(device))
        out = logits_of(model(**inputs))
        if not take:
            continue
        pred = out.squeeze(-1) if labels.is_floating_point() else out.argmax(-1)
        rows[i: i + len(take)] = torch.stack([torch.as_tensor(take, dtype=torch.float64, device=device),
                                              pred.double(), labels.double()], -1)
    allr = (gather(rows) if gather is not None else rows).cpu().reshape(-1, 3)
    allr = allr[allr[:, 0] >= 0]
    allr = allr[allr[:, 0].argsort()]
    model.train(was)
    return glue_metrics(task, allr[:, 1].numpy(), allr[:, 2].numpy())


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, data: BatchSource, num_classes: int, batch_size: int = 64, rank: int = 0,
                          world: int = 1, device: torch.device | str = "cpu",
                          reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, desc: str = "eval",
                          progress: bool = True) -> SegMetrics:
    """mIoU and pixel accuracy (:func:`apsq.train.segmentation.segmentation_metrics`) of ``model`` on
    ``data``: logits resized to each row's labels, areas summed over the whole set (and over the
    ``world`` processes by ``reduce``). Rows of different sizes (``data.variable_size``) go one per batch."""
    was = model.training
    model.eval()
    mine = list(range(rank, len(data), world))
    step = 1 if getattr(data, "variable_size", False) else batch_size
    counts = torch.zeros(4, num_classes, dtype=torch.float64, device=device)
    for i in tqdm(range(0, len(mine), step), desc=desc, disable=not progress, leave=False):
        inputs, labels = split_batch(data.batch(mine[i: i + step]), torch.device(device))
        pred = resize_logits(logits_of(model(**inputs)), labels).argmax(1)
        counts += area_counts(pred, labels, num_classes).to(counts.device)
    if reduce is not None:
        counts = reduce(counts)
    model.train(was)
    return segmentation_metrics(counts.cpu())
