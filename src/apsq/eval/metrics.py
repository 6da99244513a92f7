"""Task metrics of a quantized model against its full-precision twin: accuracy, KL, agreement.

Shared by the studies (:mod:`apsq.tune`, :mod:`apsq.beyond`) and the variant runners.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Batch", "Metrics", "call_model", "logits_on", "metrics_of"]

Batch = tuple[Any, torch.Tensor]  # (model inputs: dict / tuple / tensor, labels)


def call_model(model: nn.Module, inputs: Any) -> torch.Tensor:
    """``model(**inputs)`` / ``model(*inputs)`` / ``model(inputs)``; the logits of a HF output."""
    if isinstance(inputs, Mapping):
        out = model(**inputs)
    elif isinstance(inputs, (tuple, list)):
        out = model(*inputs)
    else:
        out = model(inputs)
    return out if isinstance(out, torch.Tensor) else out.logits


@dataclass(frozen=True)
class Metrics:
    """Task metrics of a quantized model on the evaluation batches.

    ``accuracy``: fraction correct; ``kl``: mean ``KL(p_fp || p_q)`` of the class distributions
    (nats per example) vs the full-precision model; ``agreement``: fraction of FP predictions kept.
    """

    accuracy: float
    kl: float
    agreement: float

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@torch.no_grad()
def logits_on(model: nn.Module, batches: Sequence[Batch]) -> torch.Tensor:
    model.eval()
    return torch.cat([call_model(model, x).float() for x, _ in batches])


def metrics_of(logits: torch.Tensor, fp_logits: torch.Tensor, labels: torch.Tensor) -> Metrics:
    lp, lq = F.log_softmax(fp_logits.double(), -1), F.log_softmax(logits.double(), -1)
    kl = float((lp.exp() * (lp - lq)).sum(-1).mean())
    pred = logits.argmax(-1)
    return Metrics(float((pred == labels).double().mean()), kl, float((pred == fp_logits.argmax(-1)).double().mean()))
