"""A user's own model with attention written by hand (``torch.matmul(q, k^T)`` in a block that is not a
Hugging Face ``*Attention`` class): quantize_ cannot see those matmuls, so they stayed in full precision
without a word, even with ``attention_matmuls=True`` (the new-user run of "bring your own model").
calibrate now reports each such reduction once: a warning and an entry in ``model.apsq_report.skipped``."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import apsq


class HandAttentionBlock(nn.Module):
    def __init__(self, d: int = 16, h: int = 2) -> None:
        super().__init__()
        self.h = h
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.w = nn.Parameter(torch.randn(d, d) / 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = (t.view(b, s, self.h, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        a = torch.softmax(torch.matmul(q, k.transpose(-1, -2)), -1)
        o = (a @ v).transpose(1, 2).reshape(b, s, d)
        return self.proj(o) + F.linear(x, self.w)  # a hand-written linear too


def _calibrate(model, x, **cfg):
    apsq.quantize_(model, apsq.APSQConfig(tile=8, gs=2, **cfg))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        apsq.calibrate(model, [x])
    return [str(m.message) for m in w if "outside every quantized layer" in str(m.message)]


def test_hand_written_attention_matmuls_are_reported():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), HandAttentionBlock())
    msgs = _calibrate(model, torch.randn(2, 5, 8), attention_matmuls=True)
    assert len(msgs) == 1 and "1.matmul (HandAttentionBlock)" in msgs[0] and "1.linear" in msgs[0]
    entries = {s.name: s for s in model.apsq_report.skipped}
    assert set(entries) == {"1.matmul", "1.linear"}
    assert "2 call(s)" in entries["1.matmul"].reason and not entries["1.matmul"].by_config
    assert model.apsq_report.quantized == ("0", "1.qkv", "1.proj")
    # a second calibration adds nothing and warns no more
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        apsq.calibrate(model, [torch.randn(2, 5, 8)])
    assert not [m for m in w if "outside every quantized layer" in str(m.message)]
    assert len(model.apsq_report.skipped) == 2


def test_plain_layers_and_hooked_attention_report_nothing_new():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    assert _calibrate(cnn, torch.randn(2, 1, 8, 8)) == []
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    llama = transformers.LlamaForCausalLM(cfg)  # rotary embedding's outer product (K = 1) is not a reduction
    assert _calibrate(llama, torch.randint(0, 50, (2, 6)), attention_matmuls=True) == []
    llama = transformers.LlamaForCausalLM(cfg)  # attention off: quantize_ already reported qk / av
    n_before = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apsq.quantize_(llama, apsq.APSQConfig(tile=8, gs=2))
        n_before = len(llama.apsq_report.skipped)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        apsq.calibrate(llama, [torch.randint(0, 50, (2, 6))])
    assert not [m for m in w if "outside every quantized layer" in str(m.message)]
    assert len(llama.apsq_report.skipped) == n_before

