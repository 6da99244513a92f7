"""The real all-MiniLM-L6-v2: quantize_ with attention matmuls, calibration, integer == float."""

import pytest
import torch

import apsq
from apsq.integer import integer_forward
from apsq.nn import QuantLinear, QuantMatmul

SENTENCES = [
    "A gripping, beautifully shot story that never loses its nerve.",
    "The plot is thin and the jokes land with a thud.",
    "Funny, warm and surprisingly wise about growing older.",
]


@pytest.fixture(scope="module")
def minilm():
    from apsq.models.minilm import load_minilm

    model, tok = load_minilm()
    model.eval()
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(**batch).last_hidden_state
    apsq.quantize_(model, apsq.APSQConfig(gs=2, attention_matmuls=True))
    apsq.calibrate(model, [batch], max_rows=256)
    return model, batch, ref


def test_all_linears_and_attention_matmuls_swapped(minilm):
    model, _, _ = minilm
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 6 * 6 + 1  # + pooler
    assert sum(isinstance(m, QuantMatmul) for m in model.modules()) == 6 * 2


def test_quantized_minilm_stays_close_to_full_precision(minilm):
    model, batch, ref = minilm
    with torch.no_grad(), apsq.track_stats(model) as stats:
        h = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1)
    cos = torch.nn.functional.cosine_similarity((h * mask).sum(1), (ref * mask).sum(1)).mean()
    assert cos > 0.5  # calibration only; QAT recovers the rest
    ffn2 = [s for s in stats if s.name.endswith("output.dense") and "attention" not in s.name]
    assert all(s.n_tiles == 48 for s in ffn2)  # K = 1536, tile 32
    assert all(s.saturation_rate < 0.01 for s in stats)


def test_real_minilm_layer_integer_path_is_bit_exact(minilm):
    model, batch, _ = minilm
    captured = {}
    layer = model.encoder.layer[2].output.dense  # the FFN down-projection, K = 1536
    handle = layer.register_forward_hook(lambda m, i, o: captured.update(x=i[0].detach()))
    with torch.no_grad():
        model(**batch)
    handle.remove()
    x = captured["x"]
    with torch.no_grad():
        y = layer.accumulate(x)
    r = integer_forward(layer, x)
    assert r.code.abs().max() <= 127
    assert torch.equal(y.double(), r.to_float())
    av = model.encoder.layer[2].attention.self.apsq_av
    a = torch.softmax(torch.randn(1, 12, 7, 7), -1)
    v = torch.randn(1, 12, 7, 32)
    assert torch.equal(av.accumulate(a, v).double(), integer_forward(av, a, v).to_float())
