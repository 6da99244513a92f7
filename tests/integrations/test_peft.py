"""Issue 22 item 4 (LoRA): adapters are never quantized, a merge never clamps a code silently, and
QLoRA-style training (frozen quantized base, float adapters) works. Public report: issue 22, "LoRA"
(merge_and_unload clamped 17 % of the merged codes; LoRA-then-quantize_ adapters output exactly 0)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import apsq
from apsq.integrations import peft as apsq_peft
from apsq.nn import QuantLinear
from apsq.quant.search import best_pow2_exponent
from apsq.train.config import ScheduleConfig
from apsq.train.optim import make_optimizer

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

CFG = apsq.APSQConfig(gs=2, tile=8, exclude=("*classifier*",))


def _bert() -> nn.Module:
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=2,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg)


def _batch(n: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 60, (n, 10), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _lora(model: nn.Module) -> nn.Module:
    return peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))


def _adapters(model: nn.Module) -> list[nn.Module]:
    return [m for n, m in model.named_modules() if n.endswith((".lora_A.default", ".lora_B.default"))]


def test_lora_then_quantize_leaves_adapters_in_float_and_alive():
    model = _lora(_bert()).eval()
    apsq.quantize_(model, CFG)
    adapters = _adapters(model)
    assert len(adapters) == 4 and not any(isinstance(m, QuantLinear) for m in adapters)
    assert all(isinstance(m.base_layer, QuantLinear) for n, m in model.named_modules() if n.endswith((".query", ".value")))
    listed = {s.name for s in model.apsq_report.skipped if "PEFT adapter" in s.reason}
    assert len(listed) == 4 and all(s.by_config for s in model.apsq_report.skipped if s.name in listed)
    x = _batch()
    apsq.calibrate(model, [x])
    with torch.no_grad():
        for m in adapters:
            if m.weight.shape[0] == 32:  # lora_B: zero at initialisation
                m.weight.normal_(0, 0.5)
        y = model(**x).logits
        with model.disable_adapter():
            y0 = model(**x).logits
    assert float((y - y0).norm() / y0.norm()) > 0.02  # the adapters act (they were dead when quantized)


def test_qlora_style_training_frozen_quantized_base_float_adapters():
    base = apsq.quantize_(_bert(), CFG)
    x = _batch()
    apsq.calibrate(base, [x])
    base.requires_grad_(False)
    frozen = {n: t.detach().clone() for n, t in base.state_dict().items()}
    model = _lora(base)
    opt = make_optimizer(model, ScheduleConfig(steps=5, lr=1e-2, scale_lr=0.2))
    assert {g["name"] for g in opt.param_groups} <= {"weights", "no_decay"}  # no step size trains
    labels = torch.tensor([0, 1] * 4)
    model.train()
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(**x).logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    now = {n.replace("base_model.model.", "").replace(".base_layer", ""): t
           for n, t in model.state_dict().items() if "lora_" not in n}
    assert all(torch.equal(frozen[n], now[n]) for n in frozen if n in now) and len(now) >= len(frozen) - 1
    assert any(float(m.weight.abs().max()) > 0 for m in _adapters(model) if m.weight.shape[0] == 32)


def test_merge_rederives_the_merged_layers_steps_and_reports_the_clamped_codes():
    base = apsq.quantize_(_bert(), CFG)
    x = _batch()
    apsq.calibrate(base, [x])
    model = _lora(base).eval()
    with torch.no_grad():
        for m in _adapters(model):
            m.weight.normal_(0, 0.6)  # a trained adapter that moves the weights beyond their steps
    calibrated = apsq_peft.clamped_weight_codes(base)  # what calibration's MSE rule clamps by choice
    plain = copy.deepcopy(model).merge_and_unload()  # PEFT's own merge: more codes clamp, silently
    silent = apsq_peft.clamped_weight_codes(plain)
    merged_names = ("bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value")
    assert sum(silent.get(n, 0) for n in merged_names) > sum(calibrated.get(n, 0) for n in merged_names)
    others = {n: m.weight_quant.log2_scale.detach().clone() for n, m in apsq.quant_layers(plain)
              if hasattr(m, "weight_quant") and n not in merged_names}
    with pytest.warns(UserWarning, match="weight steps re-derived"):
        merged, report = apsq_peft.merge_and_unload(model)
    assert sorted(report) == sorted(merged_names)
    for name in merged_names:  # the steps calibration's rule gives the merged weight
        layer = dict(apsq.quant_layers(merged))[name]
        want = best_pow2_exponent(layer.weight.detach(), 8, 0)
        assert torch.equal(layer.weight_quant.log2_scale.detach(), want.to(layer.weight_quant.log2_scale))
        assert report[name][1] < report[name][0]
    for name, layer in apsq.quant_layers(merged):  # layers without an adapter keep their trained steps
        if name in others:
            assert torch.equal(layer.weight_quant.log2_scale, others[name])


def test_merge_refuses_a_model_that_is_not_peft():
    with pytest.raises(apsq.APSQError, match="not a PEFT model"):
        apsq_peft.merge_and_unload(_bert())
