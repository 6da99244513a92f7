"""Tracing GEMM shapes on the meta device, and the built-in workloads' real shapes."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from apsq.errors import APSQError
from apsq.hw.workloads import builtin_workload, trace, trace_factory


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 12)

    def forward(self, x):
        y = self.dw(self.conv(x))  # [2, 8, 8, 8]
        t = y.flatten(2).transpose(1, 2)  # [2, 64, 8]
        t = self.fc(t)  # [2, 64, 12]
        q = k = v = t.reshape(2, 64, 3, 4).transpose(1, 2)  # [2, 3, 64, 4]
        a = F.scaled_dot_product_attention(q, k, v)
        return a @ torch.ones(4, 5, device=a.device)


def test_trace_records_every_gemm_with_names():
    with torch.device("meta"):
        w = trace(Tiny(), torch.zeros(2, 3, 16, 16))
    got = [(ly.name, ly.kind, ly.m, ly.k, ly.n, ly.count, ly.w_is_weight) for ly in w.layers]
    assert got == [
        ("conv", "conv2d", 2 * 8 * 8, 27, 8, 1, True),
        ("dw", "conv2d", 2 * 8 * 8, 9, 1, 8, True),
        ("fc", "linear", 128, 8, 12, 1, True),
        ("model.qk", "matmul", 64, 4, 64, 6, False),
        ("model.av", "matmul", 64, 64, 4, 6, False),
        ("model", "matmul", 64, 4, 5, 6, False),
    ]
    assert w.macs == sum(ly.m * ly.k * ly.n * ly.count for ly in w.layers)


def test_trace_matches_real_compute_on_cpu():
    # the same model on CPU gives the same shapes as on meta
    cpu = trace(Tiny(), torch.zeros(2, 3, 16, 16))
    with torch.device("meta"):
        meta = trace(Tiny(), torch.zeros(2, 3, 16, 16))
    assert cpu.layers == meta.layers


def test_trace_factory_and_errors():
    w = trace_factory(lambda: (nn.Linear(6, 7), (torch.zeros(5, 6),)), name="lin")
    assert [(ly.m, ly.k, ly.n) for ly in w.layers] == [(5, 6, 7)]
    with pytest.raises(APSQError, match="must return a Workload or"):
        trace_factory(lambda: 3)
    with pytest.raises(APSQError, match="no GEMM layers"):
        trace_factory(lambda: (nn.ReLU(), (torch.zeros(3),)))


def test_bert_base_shapes():
    w = builtin_workload("bert-base", seq_len=64)
    assert len(w) == 12 * 8 + 2  # q,k,v,qk,av,o,ffn1,ffn2 per layer + pooler + classifier
    by = {ly.name: ly for ly in w.layers}
    assert (
        by["bert.encoder.layer.0.intermediate.dense"].m,
        by["bert.encoder.layer.0.intermediate.dense"].k,
        by["bert.encoder.layer.0.intermediate.dense"].n,
    ) == (64, 768, 3072)
    qk = by["bert.encoder.layer.11.attention.self.qk"]
    assert (qk.m, qk.k, qk.n, qk.count, qk.w_is_weight) == (64, 64, 64, 12, False)
    av = by["bert.encoder.layer.11.attention.self.av"]
    assert (av.m, av.k, av.n, av.count) == (64, 64, 64, 12)
    assert builtin_workload("bert-base", seq_len=64) is w  # cached


def test_segformer_b0_and_efficientvit_b1():
    s = builtin_workload("segformer-b0", image_size=256)
    first = s.layers[0]
    assert (first.kind, first.m, first.k, first.n) == ("conv2d", 64 * 64, 3 * 7 * 7, 32)  # patch embed 7x7 s4
    assert s.layers[-1].n == 150  # ADE20K classifier
    e = builtin_workload("efficientvit-b1", image_size=256)
    assert (e.layers[0].m, e.layers[0].k, e.layers[0].n) == (128 * 128, 27, 16)  # 3x3 s2 stem, width 16
    vk = [ly for ly in e.layers if ly.kind == "matmul"]
    assert len(vk) == 2 * (3 + 4)  # two linear-attention matmuls per EfficientViT block, depths 3 + 4
    assert (vk[0].m, vk[0].k, vk[0].n, vk[0].count) == (17, 16 * 16, 16, 2 * 8)  # [V;1]·Kᵀ at /16, 8 heads x 2 scales
    assert e.layers[-1].n == 150
    # MACs scale with pixels (x4 from 256 to 512); published: 3.1 G MACs at 512 x 512 (ICCV 2023, ADE20K)
    e512 = builtin_workload("efficientvit-b1", image_size=512)
    assert e512.macs == pytest.approx(4 * e.macs, rel=0.05)
    assert 3.0e9 < e512.macs < 3.2e9


def test_efficientvit_b1_parameter_count():
    from apsq.models.efficientvit import efficientvit_b1_seg

    with torch.device("meta"):
        m = efficientvit_b1_seg()
    n = sum(p.numel() for p in m.parameters())
    assert 4.75e6 < n < 4.85e6  # published: 4.8 M parameters (EfficientViT-B1, ADE20K)


def test_llama2_7b_prefill_and_decode():
    p = builtin_workload("llama2-7b", seq_len=16)
    by = {ly.name: ly for ly in p.layers}
    assert (
        by["model.layers.31.mlp.down_proj"].m,
        by["model.layers.31.mlp.down_proj"].k,
        by["model.layers.31.mlp.down_proj"].n,
    ) == (16, 11008, 4096)
    assert (
        by["model.layers.0.self_attn.qk"].m,
        by["model.layers.0.self_attn.qk"].k,
        by["model.layers.0.self_attn.qk"].count,
    ) == (16, 128, 32)
    assert by["lm_head"].m == 1 and by["lm_head"].n == 32000
    assert len(p) == 32 * 9 + 1
    d = builtin_workload("llama2-7b", phase="decode", context=100)
    by = {ly.name: ly for ly in d.layers}
    assert by["model.layers.5.self_attn.q_proj"].m == 1
    assert (by["model.layers.5.self_attn.av"].k, by["model.layers.5.self_attn.qk"].n) == (101, 101)


def test_builtin_errors_list_choices():
    with pytest.raises(APSQError, match="'bert-base', 'segformer-b0', 'efficientvit-b1', 'llama2-7b'"):
        builtin_workload("resnet-18")
    with pytest.raises(APSQError, match=r"no option\(s\) seq_len \(--seq-len\); allowed: image_size \(--image-size\)"):
        builtin_workload("segformer-b0", seq_len=3)  # the keyword and the apsq energy flag
    with pytest.raises(APSQError, match="seq_len must be"):
        builtin_workload("bert-base", seq_len=-4)
    with pytest.raises(APSQError, match="'prefill', 'decode'"):
        builtin_workload("llama2-7b", phase="train")


def test_repeated_block_equals_a_full_trace():
    from transformers import BertConfig, BertForSequenceClassification

    with torch.device("meta"):
        full = trace(
            BertForSequenceClassification(BertConfig(num_labels=2)).eval(),
            input_ids=torch.zeros(1, 16, dtype=torch.long),
        )
    assert builtin_workload("bert-base", seq_len=16).layers == full.layers


def test_quantized_model_traces_like_the_float_one():
    import apsq

    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(2), nn.Linear(64, 70))
    x = torch.randn(2, 3, 8, 8)
    before = trace(m, x)
    apsq.quantize_(m, apsq.APSQConfig(gs=2, tile=8))
    assert type(m[2]).__name__ == "QuantLinear"
    after = trace(m, x)  # the per-tile matmuls inside QuantLinear are not separate layers
    assert [dataclasses.replace(ly, gs=None, tile=None) for ly in after.layers] == list(before.layers)
    assert [ly.gs for ly in after.layers] == [2, 2] and after.own_gs == {"0": 2, "2": 2}  # the model's own gs
    assert after.own_tiles == {"0": 8, "2": 8}  # and its own PSUM tile
    assert [(ly.m, ly.k, ly.n) for ly in after.layers] == [(128, 27, 8), (16, 64, 70)]


def test_quantized_model_traces_on_the_meta_device():
    """A quantized model built on the meta device (``apsq energy --trace`` builds there) traces as the
    same model on the CPU, attention matmuls included (a shape-only forward: nothing to check, calibrate or
    quantize). It used to fail in the layers' finite check (``Tensor.item()`` on meta)."""
    import apsq

    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    qcfg = apsq.APSQConfig(gs=3, tile=8, attention_matmuls=True, exclude=["lm_head"])
    traced = []
    for device in ("cpu", "meta"):
        torch.manual_seed(0)
        with torch.device(device):
            m = transformers.LlamaForCausalLM(cfg).eval()
            apsq.quantize_(m, qcfg)
            traced.append(trace(m, torch.zeros(1, 8, dtype=torch.long)))
    cpu, meta = traced
    assert meta.layers == cpu.layers
    assert {ly.name for ly in meta.layers if ly.gs == 3} >= {"model.layers.0.self_attn.apsq_qk", "model.layers.0.mlp.down_proj"}
    assert [ly.name for ly in meta.layers if ly.full_precision] == ["lm_head"]


def test_gs_from_an_apsq_config():
    import apsq

    w = builtin_workload("bert-base", seq_len=16)
    cfg = apsq.APSQConfig(gs=2, overrides={"*.intermediate.dense": {"gs": 4}, "*.apsq_qk": {"gs": 3}})
    gs = dict(zip((ly.name for ly in w.layers), w.gs_array(cfg).tolist()))
    assert gs["bert.encoder.layer.3.intermediate.dense"] == 4
    assert gs["bert.encoder.layer.3.attention.self.qk"] == 3
    assert gs["bert.encoder.layer.3.output.dense"] == 2


def _macs(w):
    return sum(l.m * l.k * l.n * l.count for l in w.layers)


@pytest.mark.parametrize(
    ("kw", "cross", "batched", "train"),
    [({}, False, True, True), ({}, False, True, False), ({"batch_first": True}, True, True, False),
     ({"kdim": 12, "vdim": 20}, True, True, True), ({"add_bias_kv": True, "add_zero_attn": True}, False, False, True)],
)
def test_multihead_attention_gemms_are_traced(kw, cross, batched, train):
    # nn.MultiheadAttention runs its GEMMs inside F.multi_head_attention_forward: the trace saw the call from
    # outside and dropped the projections, QKᵀ and AV without a word (on a conv + MHA model of one's own,
    # most of the MACs). Now expanded like SDPA; the count is the hand-written attention's.
    torch.manual_seed(0)
    e, h, b, lq, s = 16, 4, 2, 5, 7
    mha = nn.MultiheadAttention(e, h, **kw).train(train)
    first = kw.get("batch_first", False)
    shape = (lambda n: (b, n, e) if first else (n, b, e)) if batched else (lambda n: (n, e))
    q = torch.randn(shape(lq))
    k = torch.randn(shape(s)[:-1] + (kw.get("kdim", e),)) if cross else q
    v = torch.randn(shape(s)[:-1] + (kw.get("vdim", e),)) if cross else q
    w = trace(mha, q, k, v)
    nb = b if batched else 1
    sk = (s if cross else lq) + int(kw.get("add_bias_kv", False)) + int(kw.get("add_zero_attn", False))
    proj = lq * nb * e * e + 2 * (s if cross else lq) * nb * e * e
    if "kdim" in kw:
        proj = lq * nb * e * e + s * nb * (kw["kdim"] + kw["vdim"]) * e
    expect = proj + 2 * nb * h * lq * (e // h) * sk + lq * nb * e * e
    assert _macs(w) == expect
    proj = ["in_proj"] if not cross else ["q_proj", "k_proj", "v_proj"]
    assert [l.name for l in w.layers] == [f"model.{n}" for n in proj + ["qk", "av", "out_proj"]]


def test_transformer_encoder_layer_counts_its_attention():
    layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True).eval()
    w = trace(layer, torch.zeros(2, 10, 32))
    assert [l.name for l in w.layers] == ["self_attn.in_proj", "self_attn.qk", "self_attn.av",
                                          "self_attn.out_proj", "linear1", "linear2"]
    assert _macs(w) == 20 * 32 * 96 + 2 * 8 * 10 * 8 * 10 + 20 * 32 * 32 + 2 * 20 * 32 * 64
