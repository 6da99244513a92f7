"""QAT with knowledge distillation on Hugging Face accelerate: configs, checkpoints, the training loop.

The public names are loaded on first use (PEP 562), so that ``apsq train --help`` starts without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["TrainConfig", "evaluate", "load_config", "parse_config", "train"]

_LAZY = {
    "TrainConfig": "apsq.train.config",
    "load_config": "apsq.train.config",
    "parse_config": "apsq.train.config",
    "evaluate": "apsq.train.loop",
    "train": "apsq.train.loop",
}

if TYPE_CHECKING:  # pragma: no cover
    from apsq.train.config import TrainConfig, load_config, parse_config
    from apsq.train.loop import evaluate, train


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'apsq.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
