"""One warning when an optimizer cannot learn apsq's step sizes (issue 22 item 4).

The quantizers' ``log2`` step sizes have gradients of 1e-9..1e-6 (LSQ's scaling times ``s ln 2``): an
Adam-family optimizer with the default ``eps = 1e-8`` shrinks their updates instead of normalising
them, and a group shared with the weights gives them the weights' learning rate. Hugging Face
``Trainer``'s default AdamW does both: in 100 steps it moved 0 of 39 step sizes by half an exponent
(issue 22). :func:`watch` tags a quantized model's step-size parameters on each training-mode call;
a global optimizer step pre-hook then warns once per optimizer (:class:`StepSizeWarning`) whose groups
hold tagged step sizes together with other parameters or with ``eps >= 1e-12``. apsq's own rule
(``apsq.train.param_groups``: one group of step sizes, ``eps = 1e-20``) never warns.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch import nn

__all__ = ["StepSizeWarning", "watch"]

STEP_PARAM_NAMES = ("log2_scale", "log2_scales")
EPS_LIMIT = 1e-12
"""An ``eps`` at or above this swamps step-size gradients (apsq's rule uses 1e-20)."""
_TAG = "apsq_step_size"
_checked: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
_hook: Any = None


class StepSizeWarning(UserWarning):
    """An optimizer that will not learn apsq's step sizes (see :mod:`apsq.nn.optim_check`)."""


@torch.compiler.disable  # a Python side effect on the parameters: runs eagerly under torch.compile
def _tag(model: nn.Module, args: tuple[Any, ...]) -> None:
    if not model.training:
        return
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1] in STEP_PARAM_NAMES and p.requires_grad:
            p.__dict__[_TAG] = True


def _check(opt: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if opt in _checked:
        return
    _checked.add(opt)  # each optimizer is scanned once, at its first step (after a training forward)
    for g in opt.param_groups:
        steps = [p for p in g["params"] if p.__dict__.get(_TAG)]
        if not steps:
            continue
        mixed = len(steps) < len(g["params"])
        eps = g.get("eps")
        if mixed or (isinstance(eps, float) and eps >= EPS_LIMIT):
            why = "share a group with other parameters (their learning rate)" if mixed else f"have eps={eps:g}"
            warnings.warn(
                f"{type(opt).__name__}: apsq's quantizer step sizes (log2_scale / log2_scales) {why}; they will "
                "barely move (a plain HF Trainer moved 0 of 111 MiniLM step sizes by half an exponent in 30 steps: "
                "results/trainer_step_sizes). Use "
                "apsq.train.make_optimizer(model, schedule) or apsq.integrations.transformers.APSQTrainer",
                StepSizeWarning, stacklevel=3)
            return


def watch(model: nn.Module) -> None:
    """Tag ``model``'s step sizes while it trains and check every optimizer once (see module doc)."""
    global _hook
    model.register_forward_pre_hook(_tag)
    if _hook is None:
        _hook = register_optimizer_step_pre_hook(_check)
