"""Small quantized models for the deploy tests: a conv net, a tiny BERT with attention matmuls (imported by
name: a module called ``conftest`` is ambiguous when several test folders have one)."""

from __future__ import annotations

import torch
from torch import nn

import apsq


def conv_net(gs: int = 2, tile: int = 8, seed: int = 0, **cfg) -> tuple[nn.Module, torch.Tensor]:
    """Conv2d (im2col, K = 27) -> ReLU -> Linear (K = 288), quantized and calibrated; with its input."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    apsq.quantize_(m, apsq.APSQConfig(gs=gs, tile=tile, **cfg))
    x = torch.randn(4, 3, 6, 6)
    apsq.calibrate(m, [x])
    return m.eval(), x


def tiny_bert(gs: int = 3, tile: int = 8, seed: int = 0, **cfg) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A one-layer BERT classifier with quantized Linear layers and attention QK^T / AV, calibrated."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    bc = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    max_position_embeddings=64, attn_implementation="eager")
    model = BertForSequenceClassification(bc).eval()
    apsq.quantize_(model, apsq.APSQConfig(gs=gs, tile=tile, attention_matmuls=True, exclude=["classifier"], **cfg))
    ids = torch.randint(0, 100, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # one padded sentence: the additive mask is a host op
    batch = {"input_ids": ids, "attention_mask": mask}
    apsq.calibrate(model, [batch])
    return model, batch
