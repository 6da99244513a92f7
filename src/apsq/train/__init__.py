"""QAT with knowledge distillation on Hugging Face accelerate: configs, checkpoints, the training loop.

The library's one optimizer rule is public for your own loops and trainers (issue 22 item 4):
``make_optimizer(model, QATConfig(steps=...))`` (AdamW over ``param_groups``: the step sizes in their own
group at ``scale_lr`` with ``eps`` 1e-20; ``QATConfig``'s defaults are the QAT recipe, ``scale_lr`` 0.2,
while a plain ``ScheduleConfig`` is the full-precision stage's, ``scale_lr`` 1e-3, far too small to move an
exponent), ``lr_factor`` (the schedule) and ``clip_grad_norms_`` (weights and step sizes clipped apart) -- what ``apsq train`` and ``apsq.integrations.transformers.APSQTrainer`` use.

The public names are loaded on first use (PEP 562), so that ``apsq train --help`` starts without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["DistillConfig", "ScheduleConfig", "TrainConfig", "clip_grad_norms_", "distill_loss", "evaluate",
           "load_config", "lr_factor", "make_optimizer", "param_groups", "parse_config", "train"]

_LAZY = {
    "TrainConfig": "apsq.train.config",
    "ScheduleConfig": "apsq.train.config",
    "DistillConfig": "apsq.train.config",
    "make_optimizer": "apsq.train.optim",
    "param_groups": "apsq.train.optim",
    "lr_factor": "apsq.train.optim",
    "clip_grad_norms_": "apsq.train.optim",
    "distill_loss": "apsq.train.losses",
    "load_config": "apsq.train.config",
    "parse_config": "apsq.train.config",
    "evaluate": "apsq.train.evaluation",
    "train": "apsq.train.loop",
}

if TYPE_CHECKING:  # pragma: no cover
    from apsq.train.config import DistillConfig, ScheduleConfig, TrainConfig, load_config, parse_config
    from apsq.train.evaluation import evaluate
    from apsq.train.loop import train
    from apsq.train.losses import distill_loss
    from apsq.train.optim import clip_grad_norms_, lr_factor, make_optimizer, param_groups


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'apsq.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
