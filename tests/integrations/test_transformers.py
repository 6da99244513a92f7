"""Issue 22 item 3: APSQ models save and load like any Hugging Face model (``quantization_config``).

Public report: issue 22, "Save and reload lose the quantization" (``save_pretrained`` / ``from_pretrained``
returned a float model; re-quantizing silently re-initialised the trained steps).
"""

from __future__ import annotations

import json

import pytest
import torch

import apsq
from apsq.errors import APSQError
from apsq.integrations import transformers as apsq_hf
from apsq.nn import QuantLinear, QuantMatmul

transformers = pytest.importorskip("transformers")


def _llama() -> torch.nn.Module:
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _gpt2() -> torch.nn.Module:
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()  # lm_head tied to the token embedding


def _trained(model: torch.nn.Module, cfg: apsq.APSQConfig, vocab: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """Quantized, calibrated, and every step moved off its calibrated value (as QAT would)."""
    ids = torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(1))
    apsq.quantize_(model, cfg)
    apsq.calibrate(model, [ids])
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("log2_scale", "log2_scales")):
                p.add_(torch.rand(p.shape, generator=g) * 0.8 - 0.4)
    return model, ids


@pytest.mark.parametrize(("build", "vocab", "cfg"), [
    (_llama, 100, apsq.APSQConfig(gs=2, tile=8, attention_matmuls=True)),
    (_gpt2, 64, apsq.APSQConfig(mode="psq", tile=8, psum_granularity="channel", exclude=("lm_head",))),
], ids=["llama+attention", "gpt2-per-channel"])
def test_save_pretrained_from_pretrained_bit_identical(tmp_path, build, vocab, cfg):
    model, ids = _trained(build(), cfg, vocab)
    with torch.no_grad():
        ref = model(ids).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved == {"quant_method": "apsq", "apsq": json.loads(json.dumps(cfg.to_dict()))}
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.apsq_report.config == cfg
    assert sum(isinstance(m, QuantMatmul) for m in loaded.modules()) == (4 if cfg.attention_matmuls else 0)
    a, b = model.state_dict(), loaded.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)  # steps, flags, settings records
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, ref)
    # the loaded model saves again and trains (QAT-trainable for Trainer)
    assert loaded.hf_quantizer.is_qat_trainable and loaded.hf_quantizer.is_serializable()


def test_float_checkpoint_quantized_on_loading_has_uninitialised_steps(tmp_path):
    _llama().save_pretrained(tmp_path)
    cfg = apsq.APSQConfig(gs=2, tile=8)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, quantization_config=apsq_hf.APSQHfConfig(cfg)).eval()
    layers = dict(apsq.quant_layers(model))
    assert isinstance(layers["lm_head"], QuantLinear) and len(layers) == 15
    for layer in layers.values():  # not the garbage of materialised missing keys
        assert layer.needs_init()
        assert float(layer.act_quant.log2_scale.abs().max()) == 0.0
    ids = torch.randint(0, 100, (2, 12))
    apsq.calibrate(model, [ids])
    assert not any(layer.needs_init() for layer in layers.values())


def test_a_float_checkpoint_quantized_on_loading_reports_only_really_missing_keys(tmp_path):
    """The steps a float checkpoint cannot hold are expected: transformers' load report listed every one
    of them as MISSING ("newly initialized ... consider training", a 50-line table for a 2-layer LLaMA);
    a weight that is really missing still is."""
    from safetensors.torch import load_file, save_file

    _llama().save_pretrained(tmp_path)
    cfg = apsq_hf.APSQHfConfig(apsq.APSQConfig(gs=2, tile=8, attention_matmuls=True))
    _, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=cfg,
                                                               output_loading_info=True)
    assert info["missing_keys"] == set() or info["missing_keys"] == []
    weights = load_file(tmp_path / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    _, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=cfg,
                                                               output_loading_info=True)
    assert set(info["missing_keys"]) == {"model.layers.1.mlp.up_proj.weight"}


def test_without_the_integration_the_float_shell_is_never_requantized(tmp_path, monkeypatch):
    model, _ = _trained(_llama(), apsq.APSQConfig(gs=2, tile=8), 100)
    model.save_pretrained(tmp_path)
    from transformers.quantizers import auto

    monkeypatch.delitem(auto.AUTO_QUANTIZATION_CONFIG_MAPPING, "apsq")
    monkeypatch.delitem(auto.AUTO_QUANTIZER_MAPPING, "apsq")
    shell = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)  # transformers: unknown type, float
    assert not list(apsq.quant_layers(shell))
    with pytest.raises(APSQError, match=r"dropped its trained steps.*import apsq\.integrations\.transformers"):
        apsq.quantize_(shell, apsq.APSQConfig(gs=2, tile=8))


def test_a_model_built_from_the_same_config_object_stays_float():
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    a, b = transformers.LlamaForCausalLM(cfg), transformers.LlamaForCausalLM(cfg)
    apsq.quantize_(a, apsq.APSQConfig(tile=8))
    assert a.config.quantization_config["quant_method"] == "apsq" and a.model.config is a.config
    assert getattr(b.config, "quantization_config", None) is None
    apsq.quantize_(b, apsq.APSQConfig(tile=8, gs=1))  # not mistaken for a float shell


def test_quantization_config_validates_its_settings():
    with pytest.raises(APSQError, match=r"gs must be"):
        apsq_hf.APSQHfConfig({"gs": 0})
    with pytest.raises(APSQError, match=r"unknown keys \['bits'\]"):
        apsq_hf.APSQHfConfig(bits=4)
    assert apsq_hf.APSQHfConfig.from_dict({"quant_method": "apsq", "apsq": {"gs": 3}}).apsq_config().gs == 3


def test_the_quantizer_takes_an_apsq_config_only():
    """APSQHfQuantizer reads its settings from an APSQHfConfig; another method's config is an APSQError
    naming the type, and no layer is quantized (it was an AttributeError on ``apsq_config``)."""
    from transformers.utils.quantization_config import BitNetQuantConfig

    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64)
    model = transformers.BertModel(cfg)
    with pytest.raises(APSQError, match="must be an APSQHfConfig, got BitNetQuantConfig"):
        apsq_hf.APSQHfQuantizer(BitNetQuantConfig(), pre_quantized=False).preprocess_model(model)
    assert not list(apsq.quant_layers(model))
    apsq_hf.APSQHfQuantizer(apsq_hf.APSQHfConfig({"gs": 2}), pre_quantized=False).preprocess_model(model)
    assert len(list(apsq.quant_layers(model))) == 7  # Q, K, V, attention output, intermediate, output, pooler


def test_loading_in_bfloat16_keeps_every_exponent(tmp_path):
    """from_pretrained(dtype=bfloat16) of a float32 APSQ checkpoint: steps stay float32 (issue 25 item 1's
    kind through the loader), exponents equal, every layer's output equal to the saved model cast to bfloat16."""
    import copy

    model, ids = _trained(_llama(), apsq.APSQConfig(gs=2, tile=8), 100)
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    for (name, a), (_, b) in zip(apsq.quant_layers(model), apsq.quant_layers(loaded)):
        assert b.weight.dtype == torch.bfloat16 and b.psum.log2_scales.dtype == torch.float32, name
        assert torch.equal(a.psum.exponents(a.psum.log2_scales.shape[0]), b.psum.exponents(b.psum.log2_scales.shape[0]))
        assert torch.equal(a.act_quant.exponent(), b.act_quant.exponent())
        assert torch.equal(a.weight_quant.exponent(), b.weight_quant.exponent())
    cast = copy.deepcopy(model).to(torch.bfloat16).eval()
    x = torch.randn(2, 12, 64, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    with torch.no_grad():  # every quantized layer computes as the cast model's (rotary buffers differ by path)
        for (name, a), (_, b) in zip(apsq.quant_layers(cast), apsq.quant_layers(loaded)):
            if name.endswith(("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")):
                assert torch.equal(a(x), b(x)), name
