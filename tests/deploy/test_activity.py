"""Activity counted from the engine's schedule == the energy model's PSUM and RAE counts, on every layer."""

from __future__ import annotations


import pytest
import torch

from apsq import deploy
from apsq.deploy.activity import energy_side_by_side, engine_activity
from apsq.deploy.program import EngineSpec
from deploy_models import conv_net, tiny_bert

ENGINE = EngineSpec(lanes=32, depth=16, bits=8, tile_bits=32, frac_bits=8, shift_bits=5, lane_exponents=True)


@pytest.mark.parametrize("gs", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [1, 2, 5, 12, 48])
def test_counts_per_output(gs, n):
    """Per output: n requantizations, n - 1 stored writes and reads; padding lanes apart."""
    outputs = 5000  # 156 blocks of 32 lanes and a short one: several passes, every bank set
    a = engine_activity(n, gs, outputs, ENGINE)
    assert a.source == "schedule" and a.padding_codes == 157 * 32 - outputs
    assert a.stored_writes == (n - 1) * outputs == a.reads
    assert a.stored_requantizations == (n - 1) * outputs and a.requantizations == n * 157 * 32
    used = [k for k in range(4) if a.bank_writes[k]]
    if n > gs:  # gs 1 / 2: four / two bank sets of gs banks; gs 3 / 4: one set (the last step writes none)
        assert len(used) == (4 if gs <= 2 else min(gs, n))


def _minilm_layers(tokens: int):
    """all-MiniLM-L6-v2's 37 quantized Linear layers (6 x Q, K, V, O, FFN up, down + pooler), tile 32."""
    shapes = []
    for i in range(6):
        for name, k, n in (("query", 384, 384), ("key", 384, 384), ("value", 384, 384), ("attention.output", 384, 384),
                           ("intermediate", 384, 1536), ("output", 1536, 384)):
            shapes.append((f"encoder.layer.{i}.{name}", tokens, k, n))
    shapes.append(("pooler.dense", 1, 384, 384))
    return shapes


@pytest.mark.parametrize("gs", [2, 4])
def test_counts_equal_the_energy_model_on_every_minilm_layer(gs):
    from apsq.deploy.program import EngineLayer, closing_flags

    layers = []
    for idx, (name, m, k, n) in enumerate(_minilm_layers(64)):
        steps = k // 32
        lay = EngineLayer(index=idx, name=name, op="linear", k=k, out_features=n, tile=32, n_steps=steps, gs=gs,
                          s0=(gs - 1) & 1, s1=(gs - 1) >> 1, s2=closing_flags(steps, gs), psum_bits=8, act_bits=8,
                          weight_bits=8, psum_granularity="tensor", act_exponent=0, weight_exponents=[0],
                          psum_exponents=[0] * steps, engine_exponents=[0] * steps, max_tile_sum=1, tile_sum_bits=2,
                          has_bias=False)
        layers.append((lay, [(m, k, n)], engine_activity(steps, gs, m * n, ENGINE)))
    res = energy_side_by_side(layers)
    assert len(res["layers"]) == 37 and res["all_counts_equal"]
    for r in res["layers"]:
        assert r["writes_equal"] and r["reads_equal"]
        assert r["counted_rae_pj"] == pytest.approx(r["model_rae_pj"], rel=1e-12)
    if res["psum_spill_max"] == 0:  # everything on chip: the priced PSUM traffic agrees too
        assert res["total"]["counted_psum_pj"] == pytest.approx(res["total"]["model_psum_pj"], rel=1e-12)
    assert res["total"]["abstracted_pj"] > 0  # the outputs' own requantizations


def test_runner_counts_what_it_ran():
    model, x = conv_net(gs=3)
    prog = deploy.export(model, x)
    rep = deploy.run(prog, x, model=model)
    conv, lin = rep.layers
    assert conv.shapes == [(4 * 36, 27, 8)] and lin.shapes == [(4, 288, 10)]
    assert conv.activity.stored_writes == (prog.layers[0].n_steps - 1) * conv.outputs
    model2, batch = tiny_bert(gs=2)
    prog2 = deploy.export(model2, batch)
    rep2 = deploy.run(prog2, batch, model=model2)
    res = energy_side_by_side([(lay, r.shapes, r.activity) for lay, r in zip(prog2.layers, rep2.layers, strict=True)])
    assert res["all_counts_equal"]
    assert torch.tensor([r["counted"]["reads"] for r in res["layers"]]).gt(0).any()


def test_rtl_counts_equal_the_schedule(tmp_path):
    """The Verilator run's activity (from the engine's enables) == the golden path's (from the schedule)."""
    import shutil

    if shutil.which("verilator") is None:
        pytest.skip("verilator is not installed")
    model, batch = tiny_bert(gs=3)
    prog = deploy.export(model, batch)
    gold = deploy.run(prog, batch, model=model)
    rtl = deploy.run(prog, batch, "verilator", model=model, mismatch_dir=tmp_path)
    for g, r in zip(gold.layers, rtl.layers, strict=True):
        assert g.activity.source == "schedule" and r.activity.source == "rtl"
        assert {**g.activity.to_dict(), "source": ""} == {**r.activity.to_dict(), "source": ""}
