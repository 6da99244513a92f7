"""The library's one optimizer rule: AdamW parameter groups, the schedule, per-group clipping.

Every trainer in apsq uses it (``apsq train``, :class:`apsq.integrations.transformers.APSQTrainer`, the
causal-LM study, A2Q): the quantizers' ``log2`` step sizes get their own group, rate and Adam ``eps``
(``docs/training-recipe.md``), and are clipped apart from the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from apsq.train.config import ScheduleConfig

__all__ = ["MAX_GRAD_NORM", "SCALE_PARAM_NAMES", "STEP_SIZE_EPS", "clip_grad_norms_", "freeze_unused_psum_scales",
           "is_step_size", "lr_factor", "make_optimizer", "param_groups"]

SCALE_PARAM_NAMES = ("log2_scale", "log2_scales")
"""Parameter names of the quantizers' ``log2`` step sizes (activation / weight and PSUM quantizers)."""


def lr_factor(step: int, sched: ScheduleConfig) -> float:
    """Linear warm-up over ``warmup * steps`` steps, then linear decay to 0."""
    warm = int(sched.warmup * sched.steps)
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (sched.steps - step) / max(1, sched.steps - warm))


STEP_SIZE_EPS = 1e-20
"""Adam's ``eps`` for the step-size group. A ``log2`` step's gradient is LSQ's (scaled by
``1/sqrt(numel * qp)``, Esser et al. 2020, Eq. 4) times ``s * ln 2``: 1e-9..1e-6 on MiniLM, at or
below AdamW's default ``eps = 1e-8``, which would then shrink its update instead of normalising it."""

MAX_GRAD_NORM = 1.0
"""Gradient-norm limit of each clip group: the weights (with biases and norms) together, the step
sizes on their own."""


def is_step_size(name: str) -> bool:
    """Whether parameter ``name`` is a quantizer's ``log2`` step size (``log2_scale`` / ``log2_scales``)."""
    return name.rsplit(".", 1)[-1] in SCALE_PARAM_NAMES


def param_groups(model: nn.Module, sched: ScheduleConfig,
                 step_size: Callable[[str], bool] = is_step_size) -> list[dict[str, Any]]:
    """AdamW parameter groups, the one rule every trainer in apsq uses.

    ``step_size(name)`` says which parameters are quantizer step sizes (default :func:`is_step_size`;
    other quantizer libraries name theirs differently).

    * ``weights``: matrices, ``lr``, ``weight_decay``;
    * ``no_decay``: biases and norms, ``lr``, no decay;
    * ``step_sizes``: the quantizers' ``log2`` step sizes, ``scale_lr``, no decay, ``eps`` =
      :data:`STEP_SIZE_EPS` (their gradients are far smaller than AdamW's default 1e-8).

    Each group carries ``base_lr`` (the schedule multiplies it), ``max_grad_norm`` and ``clip_group``:
    :func:`clip_grad_norms_` clips the weights (both weight groups together) and the step sizes
    separately, so the weights' large gradient norm never scales the step sizes' gradients down.
    ``lr`` is set to ``base_lr``. Groups without parameters are left out.
    """
    decay, no_decay, scales = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if step_size(name):
            scales.append(p)
        elif p.dim() < 2 or "LayerNorm" in name or "norm" in name.lower():
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": sched.weight_decay, "base_lr": sched.lr, "name": "weights",
         "max_grad_norm": MAX_GRAD_NORM, "clip_group": "weights"},
        {"params": no_decay, "weight_decay": 0.0, "base_lr": sched.lr, "name": "no_decay",
         "max_grad_norm": MAX_GRAD_NORM, "clip_group": "weights"},
        {"params": scales, "weight_decay": 0.0, "base_lr": sched.scale_lr, "name": "step_sizes",
         "eps": STEP_SIZE_EPS, "max_grad_norm": MAX_GRAD_NORM, "clip_group": "step_sizes"},
    ]
    return [{**g, "lr": g["base_lr"]} for g in groups if g["params"]]


def make_optimizer(model: nn.Module, sched: ScheduleConfig,
                   step_size: Callable[[str], bool] = is_step_size) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (``lr`` per group; the schedule scales ``base_lr``)."""
    return torch.optim.AdamW(param_groups(model, sched, step_size), lr=sched.lr)


def clip_grad_norms_(groups: list[dict[str, Any]], clip: Callable[..., Any] | None = None) -> dict[str, float]:
    """Clip the gradients of each ``clip_group`` (groups sharing the name are clipped together) to
    its ``max_grad_norm``; groups without ``max_grad_norm`` are not clipped. Returns the total norms
    before clipping by clip group. ``clip(params, max_norm)`` defaults to
    :func:`torch.nn.utils.clip_grad_norm_` (pass ``accelerator.clip_grad_norm_`` under DDP)."""
    clip = clip or torch.nn.utils.clip_grad_norm_
    members: dict[str, tuple[float, list[torch.Tensor]]] = {}
    for i, g in enumerate(groups):
        if g.get("max_grad_norm") is None:
            continue
        key = str(g.get("clip_group", g.get("name", i)))
        _, params = members.setdefault(key, (float(g["max_grad_norm"]), []))
        params.extend(g["params"])
    return {key: float(clip(params, limit)) for key, (limit, params) in members.items()}


def freeze_unused_psum_scales(model: nn.Module) -> None:
    """PSUM step sizes of ``mode: none`` layers take no part in the forward pass: freeze them (DDP
    requires every trainable parameter to get a gradient)."""
    from apsq.nn.psum_quantizer import PSUMQuantizer

    for m in model.modules():
        if isinstance(m, PSUMQuantizer) and m.mode == "none":
            m.log2_scales.requires_grad_(False)
