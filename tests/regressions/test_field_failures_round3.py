"""Issue 25 (field failures, round 3), items 2, 3, 4, 5 and 11: each test names the kind it replays.

Sources of the kinds (public reports replayed against apsq, issue 25):
* item 2 — "a checkpoint made with other settings loads silently" (brevitas / optimum-quanto state-dict reports);
* item 3 — "calibration counts padded positions" (ModelOpt / torchao calibration on padded batches);
* item 4 — "``quantize_`` twice with another config" (torchao ``quantize_`` re-application reports);
* item 5 — "patterns that match nothing" (``modules_to_not_convert`` typos in transformers / PEFT);
* item 11 — "GPT-2's attention matmuls stay in full precision with no report" (a new user's README run).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import apsq
from apsq.errors import APSQError
from apsq.nn import QuantMatmul

EXACT16 = apsq.APSQConfig(mode="none", act_bits=16, weight_bits=16)


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv1d(8, 8, 1))
        self.classifier = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features[1](self.features[0](x)).flatten(2)  # [B, 8, HW]
        return self.classifier(self.features[2](h).mean(-1))


def _calibrated(cfg: apsq.APSQConfig) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    m = _ConvNet()
    x = torch.randn(2, 3, 6, 6)
    apsq.quantize_(m, cfg)
    apsq.calibrate(m, [x])
    return m, x


# --- item 2: settings travel with the layer ------------------------------------------------------
BASE = apsq.APSQConfig(mode="apsq", gs=2, tile=8)
OTHER = [
    ({"mode": "psq"}, "mode"),
    ({"gs": 4}, "gs"),
    ({"tile": 16}, "tile"),
    ({"psum_bits": 6}, "psum_bits"),
    ({"act_bits": 6}, "act_bits"),
    ({"weight_bits": 4}, "weight_bits"),
    ({"weight_per_channel": False}, "weight_per_channel"),
    ({"psum_granularity": "channel"}, "psum_granularity"),
    ({"mode": "none", "acc_bits": 20}, "acc_bits"),
]


@pytest.mark.parametrize(("change", "field"), OTHER, ids=[f for _, f in OTHER])
def test_item2_state_dict_with_other_settings_is_refused_naming_layer_and_field(change, field):
    src, _ = _calibrated(BASE)
    sd = src.state_dict()
    dst, x = _calibrated(BASE.replace(**change))
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(APSQError, match=rf"layer features\.0: .*{field} \(checkpoint"):
        dst.load_state_dict(sd)
    after = dst.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # refused before anything was loaded


def test_item2_every_differing_layer_is_named_and_a_single_layer_checks_too():
    src, _ = _calibrated(BASE)
    dst, _ = _calibrated(BASE.replace(gs=3))
    with pytest.raises(APSQError, match=r"Other layers that differ: features\.2, classifier"):
        dst.load_state_dict(src.state_dict())
    # a state dict loaded into one layer (no model-level check) is checked by the layer itself
    with pytest.raises(APSQError, match=r"layer classifier: .*gs \(checkpoint 2, model 3\)"):
        dst.classifier.load_state_dict(src.classifier.state_dict())


def test_item2_same_settings_round_trip_through_safetensors_bit_identical(tmp_path):
    src, x = _calibrated(BASE)
    sd = src.state_dict()
    assert sd["classifier._extra_state"].dtype == torch.uint8  # a tensor: safetensors can store it
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "m.safetensors"))
    torch.manual_seed(1)
    dst = _ConvNet()
    apsq.quantize_(dst, BASE)
    dst.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))


def test_item2_attention_matmul_settings_travel_too():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    a, b = LlamaForCausalLM(cfg), LlamaForCausalLM(cfg)
    apsq.quantize_(a, apsq.APSQConfig(attention_matmuls=True, tile=8))
    apsq.quantize_(b, apsq.APSQConfig(attention_matmuls=True, tile=8,
                                      overrides={"*.av_matmul": {"gs": 1}}))
    with pytest.raises(APSQError, match=r"layer model\.layers\.0\.self_attn\.av_matmul: .*gs"):
        b.load_state_dict(a.state_dict())


# --- item 4: quantize_ twice ---------------------------------------------------------------------
def test_item4_quantize_twice_with_another_config_is_refused_and_the_report_kept():
    m, x = _calibrated(BASE)
    report = m.apsq_report
    y = m(x).detach()
    with pytest.raises(APSQError, match=r"already quantized with another config \(gs 2 -> 4\)"):
        apsq.quantize_(m, BASE.replace(gs=4))
    assert m.apsq_report is report and report.quantized == ("classifier", "features.0", "features.2")
    assert torch.equal(m(x), y)


def test_item4_quantize_twice_with_the_same_config_does_nothing():
    m, x = _calibrated(BASE)
    report, y = m.apsq_report, m(x).detach()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert apsq.quantize_(m, BASE) is m
    assert m.apsq_report is report and torch.equal(m(x), y)


def test_item4_a_model_with_quantized_parts_but_no_report_is_refused():
    m, _ = _calibrated(BASE)
    inner = m.features
    with pytest.raises(APSQError, match=r"already quantized \(2 quantized layers, e\.g\. '0'\)"):
        apsq.quantize_(inner, BASE)


def test_item4_the_float_shell_of_an_apsq_checkpoint_is_not_requantized():
    """issue 22 item 3: a model loaded without apsq's quantizer lost its trained steps; quantize_ says so."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    model.config.quantization_config = {"quant_method": "apsq", "apsq": BASE.to_dict()}
    with pytest.raises(APSQError, match=r"import apsq\.integrations\.transformers"):
        apsq.quantize_(model, BASE)
    assert not list(apsq.quant_layers(model))


# --- item 5: patterns that match nothing -----------------------------------------------------------
@pytest.mark.parametrize(("cfg", "message"), [
    (apsq.APSQConfig(exclude=("classifer",)), r"exclude pattern 'classifer' \(did you mean 'classifier'\?\)"),
    (apsq.APSQConfig(overrides={"featurs.0": {"gs": 3}}), r"overrides pattern 'featurs\.0' \(did you mean"),
    (apsq.APSQConfig(exclude=("features",)), r"'features' is a Sequential without a reduction .*'features\.\*'"),
    (apsq.APSQConfig(exclude=("classifier", "head*")), r"exclude pattern 'head\*' matches no layer"),
])
def test_item5_a_pattern_that_matches_no_layer_is_an_error_before_any_change(cfg, message):
    torch.manual_seed(0)
    m = _ConvNet()
    with pytest.raises(APSQError, match=message):
        apsq.quantize_(m, cfg)
    assert not list(apsq.quant_layers(m)) and not hasattr(m, "apsq_report")


def test_item5_patterns_that_match_are_accepted_layers_and_attention_matmuls():
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=32), add_pooling_layer=False)
    cfg = apsq.APSQConfig(attention_matmuls=True, exclude=("*.output.dense",),
                          overrides={"*.qk_matmul": {"gs": 1}, "encoder.layer.0.attention.self.query": {"gs": 3}})
    apsq.quantize_(model, cfg)
    assert model.encoder.layer[0].attention.self.apsq_qk.qcfg.gs == 1


# --- item 11: every reduction left in full precision is reported ---------------------------------
def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)).eval()


def test_item11_gpt2_attention_matmuls_are_quantized_when_asked():
    model = _gpt2()
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        ref = model(ids).logits
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apsq.quantize_(model, apsq.APSQConfig(mode="none", act_bits=16, weight_bits=16, attention_matmuls=True))
    assert sum(isinstance(m, QuantMatmul) for m in model.modules()) == 4
    assert model.apsq_report.skipped == ()
    apsq.calibrate(model, [ids])
    with torch.no_grad():
        y = model(ids).logits
    assert float((y - ref).norm() / ref.norm()) < 2e-3
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 1) % 64
    with torch.no_grad():
        assert torch.equal(model(ids2).logits[:, :-1], y[:, :-1])  # still causal


class MyAttention(nn.Module):
    """An attention apsq does not hook: its matmuls run in its own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, -1)
        return torch.softmax(q @ k.transpose(-1, -2), -1) @ v


def test_item11_an_attention_apsq_does_not_hook_is_reported_with_a_warning():
    m = nn.Sequential(MyAttention())
    with pytest.warns(UserWarning, match=r"0\.qk_matmul \(MyAttention\): apsq hooks the attention matmuls of"):
        apsq.quantize_(m, apsq.APSQConfig(attention_matmuls=True))
    assert [s.name for s in m.apsq_report.skipped] == ["0.qk_matmul", "0.av_matmul"]
    m2 = nn.Sequential(MyAttention())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # attention_matmuls off: listed, by the config, silently
        apsq.quantize_(m2, apsq.APSQConfig())
    assert all(s.by_config for s in m2.apsq_report.skipped) and len(m2.apsq_report.skipped) == 2


def test_item11_efficientvit_linear_attention_matmuls_are_reported():
    from apsq.models.efficientvit import LiteMLA

    m = nn.Sequential(LiteMLA(16, dim=8))
    with pytest.warns(UserWarning, match=r"0\.vk_matmul \(LiteMLA\)"):
        apsq.quantize_(m, apsq.APSQConfig())
    assert [s.name for s in m.apsq_report.skipped] == ["0.vk_matmul", "0.out_matmul"]


def test_item11_bert_attention_matmuls_off_are_listed_by_config():
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=32), add_pooling_layer=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apsq.quantize_(model, apsq.APSQConfig())
    names = [s.name for s in model.apsq_report.skipped]
    assert names == [f"encoder.layer.{i}.attention.self.{mm}" for i in range(2) for mm in ("qk_matmul", "av_matmul")]


# --- item 3: padded positions never enter calibration --------------------------------------------
def _llama(attention: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    return apsq.quantize_(model, apsq.APSQConfig(gs=2, tile=8, attention_matmuls=attention))


def _steps(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.endswith(("log2_scale", "log2_scales"))}


PAD = 2
"""The padding token: an ordinary token (end-of-sequence as padding, as most LLaMA tokenizers do)."""


def _sentences() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randint(1, 100, (1, 12), generator=g), torch.randint(1, 100, (1, 5), generator=g)


@pytest.mark.parametrize("attention", [False, True], ids=["linears", "linears+attention"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_item3_padded_batch_calibrates_like_the_unpadded_sentences(attention, side):
    long, short = _sentences()
    pad = torch.full((1, 7), PAD)
    short_padded = torch.cat([short, pad], 1) if side == "right" else torch.cat([pad, short], 1)
    real = torch.tensor([1] * 5 + [0] * 7) if side == "right" else torch.tensor([0] * 7 + [1] * 5)
    mask = torch.stack([torch.ones(12, dtype=torch.long), real])
    batch = {"input_ids": torch.cat([long, short_padded], 0), "attention_mask": mask}
    padded = apsq.calibrate(_llama(attention), [batch])
    unpadded = apsq.calibrate(_llama(attention), [{"input_ids": long}, {"input_ids": short}])
    a, b = _steps(padded), _steps(unpadded)
    assert len(a) == 3 * 15 + (3 * 4 if attention else 0)  # act, weight, PSUM steps of 15 linears (+ 4 matmuls)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert differ == [], f"{len(differ)} of {len(a)} step tensors differ: {differ[:4]}"


def test_item3_lazy_initialisation_skips_padded_rows_too():
    """The first layer's input does not depend on quantization: a lazy first forward of the padded batch
    initialises it exactly as calibration on the unpadded sentences does."""
    long, short = _sentences()
    batch = {"input_ids": torch.cat([long, torch.cat([short, torch.full((1, 7), PAD)], 1)], 0),
             "attention_mask": torch.cat([torch.ones(1, 17), torch.zeros(1, 7)], 1).reshape(2, 12).long()}
    lazy = _llama(False)
    with torch.no_grad():
        lazy(**batch)
    calibrated = apsq.calibrate(_llama(False), [{"input_ids": long}, {"input_ids": short}])
    for proj in ("q_proj", "k_proj", "v_proj"):
        a = getattr(lazy.model.layers[0].self_attn, proj)
        b = getattr(calibrated.model.layers[0].self_attn, proj)
        assert torch.equal(a.act_quant.log2_scale, b.act_quant.log2_scale)
        assert torch.equal(a.psum.log2_scales, b.psum.log2_scales)
