"""QAT with knowledge distillation on Hugging Face accelerate: configs, checkpoints, the training loop."""

from apsq.train.config import TrainConfig, load_config, parse_config
from apsq.train.demo import DEFAULT_VARIANTS, demo_run
from apsq.train.loop import evaluate, train

__all__ = ["DEFAULT_VARIANTS", "TrainConfig", "demo_run", "evaluate", "load_config", "parse_config", "train"]
