"""Training losses: the task's own (cross-entropy, regression MSE, per-pixel) and distillation."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from apsq.train.config import TrainConfig
from apsq.train.segmentation import pixel_cross_entropy, pixel_distillation

__all__ = ["distill_loss", "logits_of", "task_loss"]


def logits_of(out: Any) -> torch.Tensor:
    """The logits of a model output (a tensor or an object with ``.logits``), in float32 when they are
    bf16 / fp16 (mixed precision or a half-precision model): losses are computed in float32."""
    x = out if isinstance(out, torch.Tensor) else out.logits
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for class labels (int; per labelled pixel for segmentation labels ``[B, H, W]``,
    :func:`apsq.train.segmentation.pixel_cross_entropy`); mean-squared error of the single output for
    real-valued labels (a regression such as GLUE STS-B: float labels, ``logits [B, 1]``)."""
    if labels.is_floating_point():
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
    if labels.dim() == 3:
        return pixel_cross_entropy(logits, labels)
    return F.cross_entropy(logits, labels)


def distill_loss(student: Any, teacher: Any, labels: torch.Tensor, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """``kd * T^2 KL(p_t || p_s) + ce * CE(s, y) + hidden * mean_l MSE(h_s^l, h_t^l)`` (Hinton et al. 2015).

    A regression (float ``labels``): ``kd`` is the mean-squared error between the student's and the
    teacher's outputs (no temperature) and ``ce`` the mean-squared error with the labels (:func:`task_loss`).
    Segmentation logits ``[B, C, h, w]``: the KL per logit pixel (:func:`apsq.train.segmentation.pixel_distillation`)."""
    d = cfg.distill
    s, t = logits_of(student), logits_of(teacher).detach()
    temp = d.temperature
    if labels.is_floating_point():
        kd = F.mse_loss(s, t)
    elif s.dim() == 4:
        kd = pixel_distillation(s, t, temp)
    else:
        kd = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), log_target=True,
                      reduction="batchmean") * temp * temp
    parts = {"kd": kd}
    total = d.kd_weight * kd
    if d.ce_weight > 0:
        parts["ce"] = task_loss(s, labels)
        total = total + d.ce_weight * parts["ce"]
    if d.hidden_weight > 0:
        hs, ht = student.hidden_states, teacher.hidden_states
        parts["hidden"] = torch.stack([F.mse_loss(a, b.detach()) for a, b in zip(hs, ht)]).mean()
        total = total + d.hidden_weight * parts["hidden"]
    parts["loss"] = total
    return parts
