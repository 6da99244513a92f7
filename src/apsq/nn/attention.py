"""Quantized attention matmuls (``QK^T`` and ``AV``) for Hugging Face models.

Hugging Face BERT, Segformer, LLaMA and GPT-2 route attention through ``ALL_ATTENTION_FUNCTIONS``: the
attention module calls the function registered under ``config._attn_implementation``. We register
``"apsq"``, an eager attention whose two matmuls are :class:`~apsq.nn.layers.QuantMatmul` modules
attached to the attention module as ``apsq_qk`` and ``apsq_av``; :func:`attach_attention_matmuls`
adds them and switches each attention module's config to ``"apsq"``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from apsq.nn.config import LayerQuantConfig
from apsq.nn.layers import QuantMatmul

ATTENTION_NAME = "apsq"
SUPPORTED_ATTENTION = ("BertSelfAttention", "SegformerAttention", "LlamaAttention", "GPT2Attention")
"""Attention classes known to call the attention interface with ``(module, q, k, v, mask, ...)``."""


def apsq_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention with quantized ``QK^T`` and ``AV`` (``[B, H, S, D]`` in, ``[B, S, H, D]`` out)."""
    if key.shape[1] != query.shape[1]:  # grouped-query attention: repeat K/V heads
        rep = query.shape[1] // key.shape[1]
        key = key.repeat_interleave(rep, dim=1)
        value = value.repeat_interleave(rep, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = module.apsq_qk(query, key.transpose(2, 3)) * scaling  # type: ignore[operator]  # a QuantMatmul set by attach_attention_matmuls
    scores = _apply_mask(scores, attention_mask, causal=bool(getattr(module, "is_causal", False)))
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = module.apsq_av(probs, value)  # type: ignore[operator]  # a QuantMatmul set by attach_attention_matmuls
    return out.transpose(1, 2).contiguous(), probs


def _apply_mask(scores: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """Additive float masks are added, boolean masks (True = attend) fill with the dtype's minimum;
    with no mask a causal module (LLaMA under ``sdpa`` mask creation) gets the causal mask."""
    q_len, k_len = scores.shape[-2], scores.shape[-1]
    neg = torch.finfo(scores.dtype).min
    if mask is not None:
        mask = mask[..., :k_len]
        if mask.dtype == torch.bool:
            return scores.masked_fill(~mask, neg)
        return scores + mask
    if causal and q_len > 1:
        keep = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
        return scores.masked_fill(~keep, neg)
    return scores


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, apsq_attention_forward)


def is_supported_attention(module: nn.Module) -> bool:
    return type(module).__name__ in SUPPORTED_ATTENTION and hasattr(module, "config")


def _head_dim(module: nn.Module) -> int:
    for attr in ("attention_head_size", "head_dim"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    raise TypeError(f"cannot find the head dimension of {type(module).__name__}")


def _max_keys(module: nn.Module) -> int:
    cfg = module.config
    for attr in ("max_position_embeddings",):
        if getattr(cfg, attr, None):
            return int(getattr(cfg, attr))
    return 16384  # Segformer: tokens of the largest stage at 512x512 (128*128) — set generously


def attach_attention_matmuls(
    module: nn.Module, qk_cfg: LayerQuantConfig, av_cfg: LayerQuantConfig, check_finite: bool = True,
    name: str = "",
) -> None:
    """Give a supported attention module quantized ``apsq_qk`` / ``apsq_av`` and route it to them.

    Per-channel PSUM steps (``psum_granularity: channel``): AV's channel is the head dimension (the
    last dim of ``V``); QK^T has no fixed output width and refuses them (:class:`~apsq.errors.APSQError`
    naming ``{name}.qk_matmul``), before the module is changed."""
    qk = QuantMatmul(_head_dim(module), qk_cfg, check_finite, name=f"{name}.qk_matmul")
    av = QuantMatmul(_max_keys(module), av_cfg, check_finite, out_features=_head_dim(module),
                     name=f"{name}.av_matmul")
    qk.positions, av.positions = ("m", "n"), ("m", "k")  # queries x keys; queries x (reduction over keys)
    _register()
    module.apsq_qk = qk
    module.apsq_av = av
    # The config object is shared with the rest of the model; copy it so only attention changes.
    module.config = copy.copy(module.config)
    module.config._attn_implementation = ATTENTION_NAME  # type: ignore[union-attr]  # a transformers attention module's config
