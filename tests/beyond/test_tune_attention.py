"""``apsq tune-gs`` on a model with quantized attention matmuls (``attention_matmuls: true``), the first
thing a user with their own BERT tried: it crashed with ``KeyError: '<attn>.apsq_qk'`` (stats are kept by
the layer's quantize_ name ``<attn>.qk_matmul``), then found no ``<attn>.apsq_qk`` in the workload (an
eager attention's two matmuls were traced as ``<attn>`` / ``<attn>#2``), and the config it wrote named
``<attn>.apsq_qk``, which quantize_ refuses. Now the search covers QK^T / AV and writes a config that
quantize_ takes and the energy model prices the same."""

from __future__ import annotations

import torch

import apsq
from apsq.hw.accelerator import Accelerator, default_accelerator
from apsq.hw.energy import evaluate
from apsq.hw.workloads import trace
from apsq.tune.run import tune_gs


def _bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=40, num_labels=2, attn_implementation="eager")
    return BertForSequenceClassification(cfg).eval()


def test_eager_attention_matmuls_trace_as_qk_and_av():
    w = trace(_bert(), input_ids=torch.zeros(1, 24, dtype=torch.long))
    names = [ly.name for ly in w.layers if ly.kind == "matmul"]
    assert names == ["bert.encoder.layer.0.attention.self.qk", "bert.encoder.layer.0.attention.self.av"]


def test_tune_gs_with_attention_matmuls_writes_a_config_quantize_takes():
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, 60, (8, 24), generator=g) for _ in range(3)]
    with torch.no_grad():
        labels = [_bert()(input_ids=x).logits.argmax(-1) for x in ids[1:]]
    base = apsq.APSQConfig(tile=8, gs=2, attention_matmuls=True, exclude=["classifier"])
    d = default_accelerator().model_dump()
    d["pe_array"]["rows"] = 8
    acc = Accelerator.from_dict(d)
    w = trace(_bert(), input_ids=torch.zeros(1, 24, dtype=torch.long))
    res = tune_gs(_bert(), base, w, [{"input_ids": ids[0]}],
                  [({"input_ids": x}, y) for x, y in zip(ids[1:], labels)],
                  gs_values=(1, 2), accelerator=acc, method="predictor", max_points=2)
    assert "bert.encoder.layer.0.attention.self.apsq_qk" in res["layers"]
    cfg = res["config"]
    assert "bert.encoder.layer.0.attention.self.qk_matmul" in cfg.overrides
    q = apsq.quantize_(_bert(), cfg)  # refused before: 'bert.encoder...apsq_qk' matches no layer
    att = q.bert.encoder.layer[0].attention.self
    want = cfg.overrides["bert.encoder.layer.0.attention.self.qk_matmul"]["gs"]
    assert att.apsq_qk.qcfg.gs == want
    names = [ly.name for ly in w.layers]
    priced = evaluate(w, "is", "apsq", cfg, accelerator=acc).gs
    assert priced[names.index("bert.encoder.layer.0.attention.self.qk")] == want
