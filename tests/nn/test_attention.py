"""Quantized attention matmuls on Hugging Face LLaMA and Segformer (architectures from configs)."""

import torch

import apsq
from apsq.nn import QuantConv2d, QuantMatmul


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_llama_attention_quantized_stays_causal_and_close():
    torch.manual_seed(0)
    model = _tiny_llama()
    ids = torch.randint(0, 100, (2, 20))
    with torch.no_grad():
        ref = model(ids).logits
    apsq.quantize_(model, apsq.APSQConfig(gs=2, attention_matmuls=True, tile=16))
    assert sum(isinstance(m, QuantMatmul) for m in model.modules()) == 4
    apsq.calibrate(model, [ids])
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 1) % 100
    with torch.no_grad():
        y, y2 = model(ids).logits, model(ids2).logits
    assert torch.equal(y[:, :-1], y2[:, :-1])  # the future does not leak into the past
    assert (y - ref).norm() / ref.norm() < 0.5


def test_attention_exact_when_psums_none_and_16bit():
    """mode none with 16-bit operands reproduces eager attention closely (the hook itself is right)."""
    torch.manual_seed(0)
    model = _tiny_llama()
    ids = torch.randint(0, 100, (1, 12))
    with torch.no_grad():
        ref = model(ids).logits
    apsq.quantize_(model, apsq.APSQConfig(mode="none", act_bits=16, weight_bits=16, attention_matmuls=True,
                                          layer_types=("linear",)))
    apsq.calibrate(model, [ids])
    with torch.no_grad():
        y = model(ids).logits
    assert (y - ref).norm() / ref.norm() < 2e-3


def test_segformer_convs_and_attention():
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    cfg = SegformerConfig(num_labels=5, hidden_sizes=[16, 32, 40, 64], decoder_hidden_size=32, depths=[1, 1, 1, 1])
    model = SegformerForSemanticSegmentation(cfg).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(pixel_values=x).logits
    apsq.quantize_(model, apsq.APSQConfig(gs=2, attention_matmuls=True))
    apsq.calibrate(model, [{"pixel_values": x}])
    assert sum(isinstance(m, QuantMatmul) for m in model.modules()) == 8
    assert sum(isinstance(m, QuantConv2d) for m in model.modules()) >= 8
    with torch.no_grad():
        y = model(pixel_values=x).logits
    assert (y - ref).norm() / ref.norm() < 0.2
