"""Model, data and workload of a training config, for the studies and runners (no training here).

Reuses :mod:`apsq.train` (task builders, model builders, checkpoints) read-only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from apsq.device import resolve_device
from apsq.errors import APSQError
from apsq.hw.workloads.base import Workload
from apsq.train.config import TrainConfig, load_config, parse_config
from apsq.train.tasks import Task, build_task, subset

__all__ = ["Setup", "load_setup", "select_variants", "split_labels", "workload_of"]


def split_labels(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``(model inputs, labels)`` of a task batch (a mapping with a ``labels`` entry)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return inputs, batch["labels"]


class Setup:
    """A config's FP32 model (weights from ``fp32``) on ``device``, its task, and calibration /
    evaluation batches (kept on the CPU; the runners move them to the model with
    :func:`apsq.device.to_device`). ``device``: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda[:N]"``."""

    def __init__(self, cfg: TrainConfig, fp32: str | Path | None, eval_limit: int | None = None,
                 calib_batches: int | None = None, device: str | torch.device | None = "auto") -> None:
        from apsq.train.checkpoint import load_model_state, read_tensors
        from apsq.train.batches import global_batch
        from apsq.train.models import build_model, load_tokenizer

        self.cfg = cfg
        self.device = resolve_device(device, "--device")
        path = Path(fp32) if fp32 else (Path(cfg.finetune.init) if cfg.finetune.init else None)
        if path is None or not path.is_file():
            raise APSQError(f"--fp32: need a fine-tuned FP32 checkpoint (fp32.safetensors of an `apsq train` run); "
                            f"got {str(path)!r}")
        tok = None if cfg.model.name == "digits-cnn" else load_tokenizer(cfg)
        self.task: Task = build_task(cfg, tok)
        self.model: nn.Module = build_model(cfg)
        t, _ = read_tensors(path)
        load_model_state(self.model, t, path)
        self.model.to(self.device).eval()
        n, bs = len(self.task.train), cfg.qat.batch_size
        nb = calib_batches or cfg.qat.calib_batches
        self.calib = [split_labels(self.task.train.batch(global_batch(n, bs, i, cfg.seed, "calib")))[0]
                      for i in range(nb)]
        ev = self.task.eval
        rows = subset(len(ev), eval_limit)
        lengths = getattr(ev, "lengths", None)
        if lengths is not None:  # batch similar lengths together (less padding, same result)
            lens = lengths()
            rows.sort(key=lambda i: lens[i])
        ebs = cfg.eval.batch_size
        self.eval: list[tuple[Any, torch.Tensor]] = []
        for i in range(0, len(rows), ebs):
            self.eval.append(split_labels(ev.batch(rows[i:i + ebs])))


def load_setup(config: str | Path | dict, fp32: str | Path | None = None, eval_limit: int | None = None,
               calib_batches: int | None = None, device: str | torch.device | None = "auto") -> Setup:
    """:class:`Setup` of a config file / mapping (``device``: where the model runs, see :class:`Setup`)."""
    cfg = parse_config(config) if isinstance(config, dict) else load_config(config)
    return Setup(cfg, fp32, eval_limit, calib_batches, device)


def _trace_shape(cfg: TrainConfig, seq_len: int | None) -> tuple[str, int]:
    """What the config's model is traced on: ``("image", side)`` (segmentation: one training crop, 512 for
    ADE20K), ``("digits", 8)`` (one 8 x 8 image) or ``("tokens", seq_len or max_len)``."""
    if cfg.model.name in ("segformer-b0", "efficientvit-b1"):
        from apsq.data.segmentation import pipeline_of

        return "image", pipeline_of(cfg.data.name).crop
    if cfg.model.name == "digits-cnn":
        return "digits", 8
    return "tokens", seq_len or cfg.model.max_len


def traced_input(cfg: TrainConfig, seq_len: int | None = None) -> str:
    """What :func:`workload_of` traces the config's model on, in words: ``"64 tokens"``, ``"one 32 x 32
    image"`` (segmentation: one training crop), ``"one 8 x 8 image"`` (digits)."""
    kind, n = _trace_shape(cfg, seq_len)
    return f"{n} tokens" if kind == "tokens" else f"one {n} x {n} image"


def workload_of(cfg: TrainConfig, seq_len: int | None = None) -> Workload:
    """The config's model traced on the meta device, on :func:`traced_input` (text: ``seq_len`` tokens,
    default ``max_len``; digits: one 8x8 image; segmentation: one training crop, 512 x 512 for ADE20K), as
    :func:`apsq.eval.sweep.energy_reductions` does."""
    from apsq.hw.workloads.trace import trace_factory
    from apsq.train.models import build_model

    kind, n = _trace_shape(cfg, seq_len)
    if kind == "image":
        def seg_factory():
            return build_model(cfg, weights=False).eval(), {"pixel_values": torch.zeros(1, 3, n, n)}
        return trace_factory(seg_factory, name=f"{cfg.model.name}@{n}x{n}")
    if kind == "digits":
        def factory():
            return build_model(cfg), (torch.zeros(1, 1, n, n),)
        return trace_factory(factory, name="digits-cnn")

    def text_factory():
        return build_model(cfg, weights=False), {"input_ids": torch.zeros(1, n, dtype=torch.long)}

    return trace_factory(text_factory, name=f"{cfg.model.name}@{n}")


def minilm_factory():
    """``(model, inputs)`` of the MiniLM sentiment model at 64 tokens, for ``apsq energy --trace
    apsq.eval.setup:minilm_factory`` (layer names match ``apsq tune-gs`` configs)."""
    from apsq.train.models import build_model

    cfg = parse_config({"model": {"name": "minilm", "num_labels": 2, "max_len": 64}})
    return build_model(cfg, weights=False), {"input_ids": torch.zeros(1, 64, dtype=torch.long)}


def select_variants(variants: dict[str, Any], only: str | None) -> dict[str, Any]:
    """The variants named in ``only`` (comma-separated; empty or None: all); unknown names are an error."""
    if not only:
        return variants
    names = [n.strip() for n in only.split(",") if n.strip()]
    bad = [n for n in names if n not in variants]
    if bad:
        raise APSQError(f"--only: unknown variants {bad}; allowed: {', '.join(variants)}")
    return {n: variants[n] for n in names}
