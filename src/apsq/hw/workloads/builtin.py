"""Built-in workloads: the paper's four models, traced on the meta device from their real configs.

- ``bert-base``: ``BertForSequenceClassification`` with BERT-Base's config (12 layers, one traced and
  repeated; hidden 768, 12 heads, FFN 3072, 2 labels); option ``seq_len`` (default 128), ``batch`` (1).
- ``segformer-b0``: ``SegformerForSemanticSegmentation`` with MiT-B0 (hidden [32, 64, 160, 256], depths
  [2, 2, 2, 2], heads [1, 2, 5, 8], sr [8, 4, 2, 1], decoder 256, 150 ADE20K classes); option
  ``image_size`` (default 512).
- ``efficientvit-b1``: :func:`apsq.models.efficientvit.efficientvit_b1_seg` (ADE20K head); option
  ``image_size`` (default 512).
- ``llama2-7b``: ``LlamaForCausalLM`` with LLaMA-2-7B's config (32 layers, hidden 4096, 32 heads,
  FFN 11008, vocab 32000); options ``phase`` = ``prefill`` (``seq_len`` tokens, default 512; logits for
  the last token only, as in generation) or ``decode`` (one new token against a KV cache of
  ``context`` tokens, default 2048).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from typing import Any

import torch

from apsq.errors import APSQError, check_choice, check_int
from apsq.hw.workloads.base import Workload
from apsq.hw.workloads.trace import trace

__all__ = ["BUILTIN_WORKLOADS", "builtin_workload", "WORKLOAD_OPTIONS", "SWEEP_OPTION"]


def _repeat_block(w: Workload, marker: str, n: int) -> Workload:
    """Trace one of ``n`` identical blocks, then repeat its layers for blocks 0..n-1 (names renumbered).

    ``marker`` is the name fragment of block 0 (e.g. ``".layer.0."``); layers before the first and after
    the last such layer stay as traced. Exact for stacks of identical blocks (BERT, LLaMA) and ~n x faster.
    """
    idx = [i for i, ly in enumerate(w.layers) if marker in ly.name]
    lo, hi = idx[0], idx[-1] + 1
    block = w.layers[lo:hi]
    rep = marker.replace(".0.", ".{}.")
    body = tuple(replace(ly, name=ly.name.replace(marker, rep.format(b))) for b in range(n) for ly in block)
    return Workload(w.name, w.layers[:lo] + body + w.layers[hi:], w.options)


def _bert_base(seq_len: int = 128, batch: int = 1) -> Workload:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        hidden_size=768,
        num_hidden_layers=1,
        num_attention_heads=12,
        intermediate_size=3072,
        vocab_size=30522,
        max_position_embeddings=max(512, seq_len),
    )
    cfg.num_labels = 2  # a PreTrainedConfig property (not in the typed __init__)
    model = BertForSequenceClassification(cfg).eval()
    ids = torch.zeros(batch, seq_len, dtype=torch.long)
    w = trace(model, name="bert-base", options={"seq_len": seq_len, "batch": batch}, input_ids=ids)
    return _repeat_block(w, ".layer.0.", 12)  # BERT-Base: 12 identical encoder layers


def _segformer_b0(image_size: int = 512) -> Workload:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    cfg = SegformerConfig(
        num_channels=3,
        num_encoder_blocks=4,
        depths=[2, 2, 2, 2],
        sr_ratios=[8, 4, 2, 1],
        hidden_sizes=[32, 64, 160, 256],
        patch_sizes=[7, 3, 3, 3],
        strides=[4, 2, 2, 2],
        num_attention_heads=[1, 2, 5, 8],
        mlp_ratios=[4, 4, 4, 4],
        decoder_hidden_size=256,
    )
    cfg.num_labels = 150  # a PreTrainedConfig property (not in the typed __init__)
    model = SegformerForSemanticSegmentation(cfg).eval()
    px = torch.zeros(1, 3, image_size, image_size)
    return trace(model, name="segformer-b0", options={"image_size": image_size}, pixel_values=px)


def _efficientvit_b1(image_size: int = 512) -> Workload:
    from apsq.models.efficientvit import efficientvit_b1_seg

    model = efficientvit_b1_seg(num_classes=150).eval()
    px = torch.zeros(1, 3, image_size, image_size)
    return trace(model, px, name="efficientvit-b1", options={"image_size": image_size})


def _llama2_7b(phase: str = "prefill", seq_len: int = 512, context: int = 2048) -> Workload:
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    check_choice("phase", phase, ("prefill", "decode"))
    n_layers = 32  # LLaMA-2-7B: 32 identical decoder layers, traced once and repeated
    cfg = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=1,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        max_position_embeddings=max(4096, seq_len, context + 1),
    )
    model = LlamaForCausalLM(cfg).eval()
    if phase == "prefill":
        ids = torch.zeros(1, seq_len, dtype=torch.long)
        w = trace(
            model, name="llama2-7b", options={"phase": phase, "seq_len": seq_len}, input_ids=ids, logits_to_keep=1
        )
        return _repeat_block(w, ".layers.0.", n_layers)
    cache = DynamicCache(config=cfg)
    hd = cfg.hidden_size // cfg.num_attention_heads
    for i in range(cfg.num_hidden_layers):
        kv = torch.zeros(1, cfg.num_key_value_heads or cfg.num_attention_heads, context, hd)
        cache.update(kv, kv, i)
    ids = torch.zeros(1, 1, dtype=torch.long)
    pos = torch.full((1, 1), context, dtype=torch.long)
    w = trace(
        model,
        name="llama2-7b",
        options={"phase": phase, "context": context},
        input_ids=ids,
        position_ids=pos,
        cache=cache,
        use_cache=True,
    )
    return _repeat_block(w, ".layers.0.", n_layers)


BUILTIN_WORKLOADS: dict[str, Callable[..., Workload]] = {
    "bert-base": _bert_base,
    "segformer-b0": _segformer_b0,
    "efficientvit-b1": _efficientvit_b1,
    "llama2-7b": _llama2_7b,
}
WORKLOAD_OPTIONS: dict[str, dict[str, Any]] = {
    "bert-base": {"seq_len": 128, "batch": 1},
    "segformer-b0": {"image_size": 512},
    "efficientvit-b1": {"image_size": 512},
    "llama2-7b": {"phase": "prefill", "seq_len": 512, "context": 2048},
}
SWEEP_OPTION = {
    "bert-base": "seq_len",
    "segformer-b0": "image_size",
    "efficientvit-b1": "image_size",
    "llama2-7b": "seq_len",
}
"""The size option ``apsq energy sweep`` varies for each model."""


@lru_cache(maxsize=64)
def _cached(name: str, items: tuple[tuple[str, Any], ...]) -> Workload:
    with torch.device("meta"):
        return BUILTIN_WORKLOADS[name](**dict(items))


def builtin_workload(name: str, **options: Any) -> Workload:
    """A built-in workload by name (traced once per option set, then cached).

    Unknown names or options raise :class:`APSQError` listing the choices; ``None`` options are ignored.
    """
    check_choice("model", name, tuple(BUILTIN_WORKLOADS))
    opts = {k: v for k, v in options.items() if v is not None}
    allowed = WORKLOAD_OPTIONS[name]
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        flags = {"seq_len": "--seq-len", "image_size": "--image-size", "phase": "--phase", "context": "--context"}

        def named(opt: str) -> str:  # the Python keyword, and its apsq energy flag where there is one
            return f"{opt} ({flags[opt]})" if opt in flags else opt

        raise APSQError(f"model {name!r} has no option(s) {', '.join(map(named, unknown))}; allowed: "
                        f"{', '.join(map(named, allowed))}")
    for key, value in opts.items():
        if key == "phase":
            check_choice("phase", value, ("prefill", "decode"))
        else:
            check_int(key, value, lo=1)
    if name in ("segformer-b0", "efficientvit-b1") and opts.get("image_size", 512) < 32:
        raise APSQError(
            f"image_size must be >= 32 for {name} (its deepest stage has stride 32), got {opts['image_size']}"
        )
    return _cached(name, tuple(sorted(opts.items())))
