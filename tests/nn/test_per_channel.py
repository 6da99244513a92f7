"""Per-channel PSUM steps (``psum_granularity: channel``): one power-of-two step per tile step and
output channel. Float (fake-quant) path == integer golden model bit for bit, per-channel reduces to
per-tensor lane by lane, calibration per channel is the per-tensor calibration of each channel."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import apsq
from apsq.errors import APSQError
from apsq.functional import psum_accumulate
from apsq.integer import integer_forward, psum_accumulate_int
from apsq.nn import QuantMatmul
from apsq.nn.config import LayerQuantConfig
from apsq.psum.accumulate import calibrate_psum_exponents
from apsq.psum.fused import conv2d_psum, linear_psum, matmul_psum
from apsq.psum.tiling import conv2d_partials, linear_partials, matmul_partials


@st.composite
def lane_case(draw):
    """Integer tile sums ``[n, rows, lanes]`` and exponents ``[n, lanes]``."""
    n = draw(st.integers(1, 9))
    rows, lanes = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    mag = draw(st.sampled_from([3, 200, 20000, 500000]))
    t = torch.randint(-mag, mag + 1, (n, rows, lanes), generator=g, dtype=torch.int64)
    e = torch.randint(-3, 13, (n, lanes), generator=g, dtype=torch.int64)
    return t, e


@given(lane_case(), st.sampled_from(["psq", "apsq"]), st.integers(1, 5), st.integers(2, 12))
def test_per_channel_float_equals_integer(case, mode, gs, bits):
    t, e = case
    y = psum_accumulate(t.to(torch.float32), torch.exp2(e.float()), mode=mode, gs=gs, bits=bits)
    r = psum_accumulate_int(t, e, mode=mode, gs=gs, bits=bits)
    assert torch.equal(y.double(), r.to_float())


@given(lane_case(), st.sampled_from(["psq", "apsq"]), st.integers(1, 5))
def test_per_channel_is_per_tensor_lane_by_lane(case, mode, gs):
    t, e = case
    p, s = t.to(torch.float64), torch.exp2(e.double())
    y = psum_accumulate(p, s, mode=mode, gs=gs)
    for j in range(t.shape[-1]):
        assert torch.equal(y[..., j], psum_accumulate(p[..., j], s[:, j], mode=mode, gs=gs))
        r = psum_accumulate_int(t[..., j], e[:, j], mode=mode, gs=gs)
        assert torch.equal(y[..., j], r.to_float())


@given(lane_case(), st.sampled_from(["psq", "apsq"]), st.integers(1, 4))
@settings(max_examples=25)
def test_per_channel_step_gradient_is_the_lane_gradient(case, mode, gs):
    t, e = case
    p = t.to(torch.float64)
    s = torch.exp2(e.double()).requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(p.shape[1:], generator=g, dtype=torch.float64)
    (psum_accumulate(p, s, mode=mode, gs=gs) * w).sum().backward()
    for j in range(t.shape[-1]):
        sj = s.detach()[:, j].clone().requires_grad_(True)
        (psum_accumulate(p[..., j], sj, mode=mode, gs=gs) * w[..., j]).sum().backward()
        assert torch.allclose(s.grad[:, j], sj.grad, rtol=1e-12, atol=1e-12)


@given(lane_case(), st.sampled_from(["psq", "apsq"]), st.integers(1, 5), st.integers(4, 10))
@settings(max_examples=30)
def test_channel_calibration_is_per_tensor_calibration_of_each_channel(case, mode, gs, bits):
    t, _ = case
    p = t.to(torch.float32)
    e = calibrate_psum_exponents(p, mode=mode, gs=gs, bits=bits, channel_axis=-1)
    assert e.shape == (t.shape[0], t.shape[-1])
    for j in range(t.shape[-1]):
        assert torch.equal(e[:, j], calibrate_psum_exponents(p[..., j], mode=mode, gs=gs, bits=bits))


def test_uniform_channel_steps_equal_tensor_steps():
    g = torch.Generator().manual_seed(0)
    p = torch.round(torch.randn(7, 4, 6, generator=g) * 300)
    s = torch.exp2(torch.randint(0, 6, (7,), generator=g).float())
    for mode, gs in (("psq", 1), ("apsq", 1), ("apsq", 3)):
        a = psum_accumulate(p, s, mode=mode, gs=gs)
        b = psum_accumulate(p, s[:, None].expand(7, 6), mode=mode, gs=gs)
        assert torch.equal(a, b)


def _check_layer(layer, *xs):
    with torch.no_grad():
        y = layer.accumulate(*xs)
    r = integer_forward(layer, *xs)
    assert torch.equal(y.double(), r.to_float())
    return y


@given(
    st.sampled_from([("psq", 1), ("apsq", 1), ("apsq", 2), ("apsq", 3), ("apsq", 4)]),
    st.booleans(),
    st.integers(0, 2**16),
    st.sampled_from([4, 8, 16]),
)
@settings(max_examples=20)
def test_random_channel_layers_are_bit_exact(mode_gs, weight_per_channel, seed, tile):
    mode, gs = mode_gs
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(5, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 7))
    cfg = apsq.APSQConfig(mode=mode, gs=gs, tile=tile, weight_per_channel=weight_per_channel,
                          psum_granularity="channel")
    apsq.quantize_(model, cfg)
    assert model[0].psum.log2_scales.shape == (model[0].psum.log2_scales.shape[0], 6)
    assert model[3].psum.log2_scales.shape[1] == 7
    x = torch.randn(3, 5, 4, 4)
    apsq.calibrate(model, [x])
    _check_layer(model[0], x)
    with torch.no_grad():
        h = torch.flatten(torch.relu(model[0](x)), 1)
    _check_layer(model[3], h)
    # the steps really differ across channels after calibration (not a broadcast per-tensor step)
    assert model[3].psum.exponents(model[3].psum.log2_scales.shape[0]).unique().numel() > 1


def test_channel_calibration_of_a_layer_matches_each_channel_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 5))
    apsq.quantize_(model, apsq.APSQConfig(gs=2, tile=8, psum_granularity="channel"))
    x = torch.randn(16, 40) * torch.linspace(0.1, 10, 40)
    apsq.calibrate(model, [x])
    layer = model[0]
    with torch.no_grad():
        p = layer.partials(x)
    e = layer.psum.exponents(p.shape[0])
    for j in range(5):
        ej = calibrate_psum_exponents(p[..., j], mode="apsq", gs=2, bits=8)
        assert torch.equal(e[:, j], ej.to(torch.int64))


def test_grouped_conv_and_av_matmul_are_bit_exact():
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=4)
    model = nn.Sequential(conv)
    apsq.quantize_(model, apsq.APSQConfig(gs=2, tile=8, psum_granularity="channel"))
    x = torch.randn(2, 8, 6, 6)
    apsq.calibrate(model, [x])
    _check_layer(model[0], x)
    mm = QuantMatmul(40, LayerQuantConfig(gs=3, tile=8, psum_granularity="channel"), out_features=7)
    assert mm.psum.log2_scales.shape == (5, 7)
    a, b = torch.randn(2, 3, 5, 40), torch.randn(2, 3, 40, 7)
    mm.start_calibration()
    mm(a, b)
    mm.finish_calibration()
    _check_layer(mm, a, b)
    with pytest.raises(APSQError, match="7 output channels"):
        mm(a, torch.randn(2, 3, 40, 6))


def test_matmul_without_fixed_width_is_refused():
    with pytest.raises(APSQError, match=r"matmul layer enc\.qk_matmul.*psum_granularity"):
        QuantMatmul(64, LayerQuantConfig(psum_granularity="channel"), name="enc.qk_matmul")
    QuantMatmul(64, LayerQuantConfig(mode="none", psum_granularity="channel"))  # nothing to quantize


def test_fused_entries_route_per_channel_steps_to_the_reference():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-20, 21, (2, 5, 24), generator=g).float()
    w = torch.randint(-20, 21, (6, 24), generator=g).float()
    s = torch.exp2(torch.randint(2, 8, (3, 6), generator=g).float())
    ref = psum_accumulate(linear_partials(x, w, 8), s, mode="apsq", gs=2)
    assert torch.equal(linear_psum(x, w, s, 8, mode="apsq", gs=2, x_step=torch.tensor(1.0),
                                   w_step=torch.ones(6)), ref)
    xc = torch.randint(-9, 10, (2, 4, 5, 5), generator=g).float()
    wc = torch.randint(-9, 10, (6, 4, 3, 3), generator=g).float()
    sc = torch.exp2(torch.randint(2, 8, (5, 6, 1, 1), generator=g).float())
    refc = psum_accumulate(conv2d_partials(xc, wc, 8, (1, 1), (1, 1), (1, 1), 1), sc, mode="psq")
    assert torch.equal(conv2d_psum(xc, wc, sc, 8, (1, 1), (1, 1), (1, 1), 1, mode="psq"), refc)
    a, b = x.reshape(2, 1, 5, 24), torch.randint(-9, 10, (2, 1, 24, 6), generator=g).float()
    refm = psum_accumulate(matmul_partials(a, b, 8), s, mode="apsq", gs=1)
    assert torch.equal(matmul_psum(a, b, s, 8, mode="apsq", gs=1), refm)


def test_training_step_reaches_every_channel_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 4))
    apsq.quantize_(model, apsq.APSQConfig(gs=1, tile=8, psum_granularity="channel"))
    x = torch.randn(64, 32)
    apsq.calibrate(model, [x])
    model.train()
    model(x).pow(2).sum().backward()
    g = model[0].psum.log2_scales.grad
    assert g.shape == (4, 4) and bool((g != 0).any(dim=0).all())


def test_fused_and_reference_impl_agree_per_channel():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(48, 6))
    apsq.quantize_(model, apsq.APSQConfig(gs=2, tile=16, psum_granularity="channel"))
    x = torch.randn(10, 48)
    apsq.calibrate(model, [x])
    y_fused = model(x)
    apsq.nn.psum_quantizer.set_psum_impl(model, "reference")
    assert torch.equal(model(x), y_fused)


def test_config_validates_and_overrides_granularity():
    with pytest.raises(APSQError, match="psum_granularity.*'tensor', 'channel'"):
        apsq.APSQConfig(psum_granularity="lane")
    with pytest.raises(APSQError, match=r"overrides\['fc\*'\].*psum_granularity"):
        apsq.APSQConfig(overrides={"fc*": {"psum_granularity": "row"}})
    cfg = apsq.APSQConfig.from_dict({"psum_granularity": "channel", "overrides": {"head": {"psum_granularity": "tensor"}}})
    assert cfg.for_module("body").psum_granularity == "channel"
    assert cfg.for_module("head").psum_granularity == "tensor"
    model = nn.Sequential()
    model.add_module("body", nn.Linear(16, 3))
    model.add_module("head", nn.Linear(3, 2))
    apsq.quantize_(model, cfg)
    assert model.body.psum.log2_scales.dim() == 2 and model.head.psum.log2_scales.dim() == 1


def test_integer_exponents_shape_is_checked():
    t = torch.zeros(3, 2, 4, dtype=torch.int64)
    with pytest.raises(APSQError, match="do not broadcast"):
        psum_accumulate_int(t, torch.zeros(3, 5, dtype=torch.int64), mode="apsq")
    with pytest.raises(APSQError, match="one step size per tile|broadcasting"):
        psum_accumulate(t.float(), torch.ones(3, 5), mode="apsq")


def test_conv1d_per_channel_is_bit_exact():
    from apsq.nn.layers import QuantConv1d

    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv1d(6, 5, 3, padding=1))
    apsq.quantize_(model, apsq.APSQConfig(gs=2, tile=8, psum_granularity="channel"))
    assert isinstance(model[0], QuantConv1d) and model[0].psum.log2_scales.shape[1] == 5
    x = torch.randn(3, 6, 7)
    apsq.calibrate(model, [x])
    r = integer_forward(model[0], x)
    with torch.no_grad():
        assert torch.equal(model[0].accumulate(x).double(), r.to_float())


def _tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, attn_implementation="eager")
    return BertModel(cfg).eval()


def test_attention_qk_refuses_channel_steps_before_changing_the_model():
    model = _tiny_bert()
    before = {n: type(m) for n, m in model.named_modules()}
    cfg = apsq.APSQConfig(attention_matmuls=True, psum_granularity="channel", tile=8)
    with pytest.raises(APSQError, match=r"qk_matmul.*psum_granularity"):
        apsq.quantize_(model, cfg)
    assert {n: type(m) for n, m in model.named_modules()} == before  # nothing swapped


def test_attention_av_channel_steps_are_bit_exact():
    model = _tiny_bert()
    cfg = apsq.APSQConfig(attention_matmuls=True, psum_granularity="channel", tile=8,
                          overrides={"*.qk_matmul": {"psum_granularity": "tensor"}})
    apsq.quantize_(model, cfg)
    att = model.encoder.layer[0].attention.self
    assert att.apsq_av.psum.log2_scales.shape[1] == 16 and att.apsq_qk.psum.log2_scales.dim() == 1
    ids = torch.randint(0, 50, (2, 20))
    apsq.calibrate(model, [{"input_ids": ids}])
    seen = {}
    hook = att.apsq_av.register_forward_hook(lambda m, inp, out: seen.update(av=inp))
    with torch.no_grad():
        model(input_ids=ids)
    hook.remove()
    _check_layer(att.apsq_av, *seen["av"])


@given(lane_case(), st.integers(1, 5), st.integers(2, 12), st.booleans())
@settings(max_examples=40)
def test_evaluation_path_equals_autograd_path(case, gs, bits, channel):
    t, e = case
    p = t.to(torch.float32)
    s = torch.exp2(e.float()) if channel else torch.exp2(e[:, 0].float())
    with torch.no_grad():
        fast = psum_accumulate(p, s, mode="apsq", gs=gs, bits=bits)  # in place, chunked
    slow = psum_accumulate(p.clone().requires_grad_(True), s, mode="apsq", gs=gs, bits=bits)
    assert torch.equal(fast, slow.detach())


def test_evaluation_path_chunks_equal_autograd_path():
    g = torch.Generator().manual_seed(5)
    for shape, lane in (((300, 400), (400,)), ((3, 40, 30, 30), (40, 1, 1)), ((200, 500), ())):
        p = torch.randint(-30000, 30001, (6, *shape), generator=g).float()
        s = torch.exp2(torch.randint(4, 12, (6, *lane), generator=g).float())
        with torch.no_grad():
            fast = psum_accumulate(p, s, mode="apsq", gs=2)
        assert torch.equal(fast, psum_accumulate(p.clone().requires_grad_(True), s, mode="apsq", gs=2).detach())
