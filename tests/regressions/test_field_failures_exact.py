"""Issue 15 item 9: float path == integer path in every mode and step spread, on random LAYERS.

The promise (``apsq/integer/layer.py``): ``layer.accumulate(x)`` is the integer golden model's
exact result rounded once to the layer's dtype -- bit for bit in float64, and in float32 wherever
the result fits 24 bits; steps no float can carry are refused with an APSQError.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import apsq
from apsq.errors import APSQError
from apsq.integer import integer_forward

KINDS = ("linear", "linear_t", "conv1d", "conv2d", "matmul")


def _build(kind: str, cfg: apsq.APSQConfig, dtype: torch.dtype, g: torch.Generator, k: int):
    """A calibrated quantized layer of ``kind`` with reduction length about ``k`` and its inputs."""
    from apsq.nn import QuantMatmul
    from apsq.nn.config import LayerQuantConfig

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    if kind == "matmul":
        layer = QuantMatmul(k, LayerQuantConfig(**{f: getattr(cfg, f) for f in ("tile", "mode", "gs", "psum_bits",
                                                                                  "act_bits", "acc_bits")}))
        layer = layer.to(dtype)
        inputs = (rnd(2, 3, k), rnd(2, k, 5))
        layer.start_calibration()
        layer(*inputs)
        layer.finish_calibration()
        return layer, inputs
    if kind in ("linear", "linear_t"):
        mod = nn.Linear(k, 6).to(dtype)
        x = (rnd(4, k),)
    elif kind == "conv1d":
        mod = nn.Conv1d(4, 6, 3, padding=1, padding_mode="reflect").to(dtype)
        x = (rnd(2, 4, max(3, k // 12)),)
    else:
        mod = nn.Conv2d(4, 6, 3, padding=1, padding_mode="circular", groups=2).to(dtype)
        x = (rnd(2, 4, 5, 5),)
    with torch.no_grad():
        for p in mod.parameters():
            p.copy_(rnd(*p.shape))
    if kind == "linear_t":
        transformers = pytest.importorskip("transformers")
        conv = transformers.pytorch_utils.Conv1D(6, k).to(dtype)
        with torch.no_grad():
            conv.weight.copy_(mod.weight.t())
        mod = conv
    m = nn.Sequential(mod)
    apsq.quantize_(m, cfg)
    apsq.calibrate(m, [x])
    return m[0], x


LAYERS = {
    "kind": st.sampled_from(KINDS),
    "mode": st.sampled_from(["none", "psq", "apsq"]),
    "gs": st.integers(1, 4),
    "tile": st.sampled_from([4, 8, 32, 64]),
    "psum_bits": st.integers(3, 12),
    "op_bits": st.sampled_from([4, 8, 12, 16]),
    "per_channel": st.booleans(),
    "psum_per_channel": st.booleans(),
    "spread": st.lists(st.integers(-20, 20), min_size=1, max_size=40),
    "k": st.one_of(st.integers(8, 160), st.integers(1025, 4000)),
    "double": st.booleans(),
    "seed": st.integers(0, 2**31 - 1),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**LAYERS)
def test_random_layers_float_path_is_integer_path_rounded_once(**kw):
    check_random_layer(**kw)


def check_random_layer(kind, mode, gs, tile, psum_bits, op_bits, per_channel, psum_per_channel, spread, k, double,
                       seed):
    """One random calibrated layer, PSUM steps moved apart by ``spread``: float path == integer path
    rounded once (float64: equal), or an APSQError for steps beyond float64."""
    dtype = torch.float64 if double else torch.float32
    g = torch.Generator().manual_seed(seed)
    cfg = apsq.APSQConfig(mode=mode, gs=gs, tile=tile, psum_bits=psum_bits, act_bits=op_bits, weight_bits=op_bits,
                          weight_per_channel=per_channel,
                          psum_granularity="channel" if psum_per_channel and kind != "matmul" else "tensor")
    layer, inputs = _build(kind, cfg, dtype, g, k)
    if mode != "none":  # move the calibrated steps apart by the drawn amounts (up to 32 bits)
        with torch.no_grad():
            s = layer.psum.log2_scales
            d = torch.tensor(spread, dtype=s.dtype)
            s += torch.cat([d, d.new_zeros(max(0, s.shape[0] - d.numel()))])[: s.shape[0]].reshape(
                -1, *([1] * (s.dim() - 1)))
    try:
        got = layer.accumulate(*inputs)
    except APSQError as e:  # refused: the steps span more than float64 carries
        assert "53" in str(e)
        return
    want = integer_forward(layer, *inputs).to_float()
    assert got.dtype == dtype
    assert torch.equal(got, want.to(dtype))
    if dtype == torch.float64:
        assert torch.equal(got, want)


def test_mode_none_large_k_reported_input():
    """Linear(11008, 8), non-negative weights, x = 4 rand: the exact sum (27,796,357 units) passes 2^24."""
    torch.manual_seed(0)
    for acc_bits in (None, 32):
        lin = nn.Linear(11008, 8, bias=False)
        with torch.no_grad():
            lin.weight.abs_()
        m = nn.Sequential(lin)
        apsq.quantize_(m, apsq.APSQConfig(mode="none", acc_bits=acc_bits))
        x = torch.rand(4, 11008) * 4
        apsq.calibrate(m, [x])
        want = integer_forward(m[0], x).to_float()
        assert float(want.abs().max()) > 2**24 * float(m[0].act_quant.scale() * m[0].weight_quant.scale().min())
        assert torch.equal(m[0].accumulate(x), want.float())
        m64 = nn.Sequential(nn.Linear(11008, 8, bias=False).double())
        apsq.quantize_(m64, apsq.APSQConfig(mode="none", acc_bits=acc_bits))
        m64.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in m.state_dict().items()})
        assert torch.equal(m64[0].accumulate(x.double()), integer_forward(m64[0], x.double()).to_float())


def test_psq_steps_twenty_bits_apart_reported_input():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 16))
    apsq.quantize_(m, apsq.APSQConfig(mode="psq", tile=32, weight_per_channel=False))
    x = torch.randn(64, 64)
    apsq.calibrate(m, [x])
    layer = m[0]
    u = int(layer.act_quant.exponent()) + int(layer.weight_quant.exponent())
    with torch.no_grad():
        layer.psum.log2_scales.copy_(torch.tensor([u - 12.0, u + 8.0]))
    want = integer_forward(layer, x).to_float()
    got = layer.accumulate(x)
    assert torch.equal(got, want.float())  # was: 369 of 1,024 outputs off
    layer.train()
    got.sum().backward() if got.requires_grad else None


def test_steps_beyond_float64_are_refused():
    m = nn.Sequential(nn.Linear(64, 16))
    apsq.quantize_(m, apsq.APSQConfig(mode="psq", tile=32))
    x = torch.randn(8, 64)
    apsq.calibrate(m, [x])
    with torch.no_grad():
        m[0].psum.log2_scales.copy_(torch.tensor([-60.0, 20.0]))
    with pytest.raises(APSQError, match=r"layer 0: .*53.*exclude=\['0'\]"):
        m[0].accumulate(x)
