"""Task metrics of a quantized model against its full-precision twin: accuracy, KL, agreement.

Shared by the studies (:mod:`apsq.tune`, :mod:`apsq.beyond`) and the variant runners. Batches may
live anywhere: they reach the model's device and floating dtype through :func:`apsq.device.to_device`,
and logits come back to the CPU in float32, so results compare across devices and dtypes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from apsq.device import call_model as device_call
from apsq.device import module_device, module_dtype, to_device

__all__ = ["Batch", "Metrics", "call_model", "logits_on", "metrics_of"]

Batch = tuple[Any, torch.Tensor]  # (model inputs: dict / tuple / tensor, labels)


def call_model(model: nn.Module, inputs: Any) -> torch.Tensor:
    """The logits of :func:`apsq.device.call_model` (a Hugging Face output's ``.logits``)."""
    out = device_call(model, inputs)
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
    """``[examples, classes]`` float32 logits on the CPU of ``model`` (put in eval mode) over the
    ``(inputs, labels)`` batches; inputs are moved to the model's device and dtype first."""
    model.eval()
    device, dtype = module_device(model), module_dtype(model)
    return torch.cat([call_model(model, to_device(x, device, dtype)).float().cpu() for x, _ in batches])


def metrics_of(logits: torch.Tensor, fp_logits: torch.Tensor, labels: torch.Tensor) -> Metrics:
    """:class:`Metrics` of ``logits [E, C]`` against the full-precision ``fp_logits [E, C]`` and
    ``labels [E]`` (any devices: computed on the CPU in float64)."""
    logits, fp_logits, labels = logits.detach().cpu(), fp_logits.detach().cpu(), labels.cpu()
    lp, lq = F.log_softmax(fp_logits.double(), -1), F.log_softmax(logits.double(), -1)
    kl = float((lp.exp() * (lp - lq)).sum(-1).mean())
    pred = logits.argmax(-1)
    return Metrics(float((pred == labels).double().mean()), kl, float((pred == fp_logits.argmax(-1)).double().mean()))
