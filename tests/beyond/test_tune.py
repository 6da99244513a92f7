"""apsq.tune: exact per-layer mixing, energy table, both searches, Pareto front, CLI on digits."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from apsq.errors import APSQError
from apsq.hw.accelerator import Accelerator, default_accelerator
from apsq.hw.energy import evaluate
from apsq.hw.workloads.base import Layer, Workload
from apsq.nn.config import APSQConfig
from apsq.nn.calibration import calibrate
from apsq.nn.transform import quantize_
from apsq.tune.energy_table import energy_table
from apsq.eval.metrics import Metrics
from apsq.tune.profile import profile_gs
from apsq.tune.search import (
    SearchPoint,
    choice_config,
    choose,
    measured_search,
    pareto_front,
    predictor_search,
    uniform_points,
)

GS = (1, 2, 3)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(96, 48), nn.ReLU(), nn.Linear(48, 4)).eval()


def _data():
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(32, 96, generator=g) for _ in range(2)]
    xs = torch.randn(64, 96, generator=g)
    with torch.no_grad():
        ys = _mlp()(xs).argmax(-1)
    return calib, [(xs[:32], ys[:32]), (xs[32:], ys[32:])]


BASE = APSQConfig(tile=8, gs=2, mode="apsq")  # K = 96 -> 12 tiles, K = 48 -> 6 tiles


def _small_acc(kib: float = 0.25) -> Accelerator:
    d = default_accelerator().model_dump()
    d["buffers"]["psum"]["capacity_kib"] = kib
    d["pe_array"]["rows"] = 8
    return Accelerator.from_dict(d)


def _workload(m_rows: int = 64) -> Workload:
    return Workload("mlp", (Layer("0", "linear", m_rows, 96, 48), Layer("2", "linear", m_rows, 48, 4)))


@pytest.fixture(scope="module")
def prof():
    calib, ev = _data()
    return profile_gs(_mlp(), BASE, GS, calib, ev)


def test_mix_equals_direct_calibration(prof):
    """A per-layer mix assembled from uniform-gs calibrations == calibrating the mixed config."""
    calib, ev = _data()
    choice = {"0": 3, "2": 1}
    prof.set_choice(choice)
    with torch.no_grad():
        mixed = torch.cat([prof.model(x) for x, _ in ev])
    direct = quantize_(copy.deepcopy(_mlp()), choice_config(BASE, choice))
    calibrate(direct, calib)
    direct.eval()
    assert direct[0].qcfg.gs == 3 and direct[2].qcfg.gs == 1
    with torch.no_grad():
        ref = torch.cat([direct(x) for x, _ in ev])
    torch.testing.assert_close(mixed, ref, rtol=0, atol=0)
    # and the uniform metrics are what measuring a uniform choice gives
    for g in GS:
        assert prof.measure({"0": g, "2": g}) == prof.uniform[g]


def test_profile_stats(prof):
    assert prof.layers == ("0", "2")
    for g in GS:
        assert prof.stats[g]["0"]["n_tiles"] == 12 and prof.stats[g]["2"]["n_tiles"] == 6
        for n in prof.layers:
            assert 0 < prof.stats[g][n]["rel_error"] < 0.5
            assert 0 <= prof.stats[g][n]["saturation_rate"] <= 1
    with pytest.raises(APSQError, match="gs of layer"):
        prof.set_choice({"0": 7})


def test_energy_table_matches_energy_model(prof):
    acc = _small_acc()
    wl = _workload()
    t = energy_table(wl, prof.layers, BASE, "is", GS, acc)
    for choice in ({"0": 1, "2": 1}, {"0": 3, "2": 1}, {"0": 2, "2": 3}):
        direct = evaluate(wl, "is", "apsq", choice_config(BASE, choice), BASE.psum_bits, acc).total_pj
        assert t.total_pj(choice) == pytest.approx(direct, rel=1e-12)
    # with a tiny PSUM buffer a larger gs holds more live codes and spills: energy rises with gs
    assert t.pj["0"][1] < t.pj["0"][2] < t.pj["0"][3]
    assert t.footprint_kib["0"][1] < t.footprint_kib["0"][3]
    with pytest.raises(APSQError, match="do not appear"):
        energy_table(wl, ("nope",), BASE, "is", GS, acc)


def test_predictor_path(prof):
    t = energy_table(_workload(), prof.layers, BASE, "is", GS, _small_acc())
    path = predictor_search(prof, t)
    first = path[0].choice
    for n in prof.layers:  # starts at each layer's lowest calibration error
        assert prof.stats[first[n]][n]["rel_error"] == min(prof.stats[g][n]["rel_error"] for g in GS)
    energies = [p.energy_pj for p in path]
    assert all(b < a for a, b in zip(energies, energies[1:]))
    cheapest = {n: min(GS, key=lambda g: t.pj[n][g]) for n in prof.layers}
    assert path[-1].energy_pj == pytest.approx(t.total_pj(cheapest))


def test_measured_path(prof):
    t = energy_table(_workload(), prof.layers, BASE, "is", GS, _small_acc())
    before = prof.evaluations
    path = measured_search(prof, t)
    start = max(GS, key=lambda g: (prof.uniform[g].accuracy, -prof.uniform[g].kl))
    assert path[0].choice == {n: start for n in prof.layers}
    moves = len(path) - 1
    assert prof.evaluations - before == 2 * moves
    assert all(b.energy_pj < a.energy_pj for a, b in zip(path, path[1:]))
    for p in path:
        assert p.metrics is not None and p.metrics.kl >= 0 and 0 <= p.metrics.accuracy <= 1


def _pt(e: float, acc: float, kl: float = 0.0) -> SearchPoint:
    return SearchPoint("x", {}, e, None, Metrics(acc, kl, 1.0))


@given(st.lists(st.tuples(st.integers(1, 20), st.integers(0, 10)), min_size=1, max_size=25))
def test_pareto_front_property(raw):
    pts = [_pt(float(e), a / 10) for e, a in raw]
    front = pareto_front(pts)
    assert front
    for p in front:  # nobody strictly better in both
        assert not any(q.energy_pj <= p.energy_pj and q.metrics.accuracy >= p.metrics.accuracy
                       and (q.energy_pj, q.metrics.accuracy) != (p.energy_pj, p.metrics.accuracy) for q in pts)
    for p in pts:  # everybody is matched or beaten by the front
        assert any(q.energy_pj <= p.energy_pj and q.metrics.accuracy >= p.metrics.accuracy for q in front)


def test_choose_and_config_yaml(tmp_path):
    pts = [_pt(10.0, 0.9), _pt(5.0, 0.8), _pt(7.0, 0.85)]
    assert choose(pts, 8.0).energy_pj == 7.0
    assert choose(pts, 100.0).energy_pj == 10.0
    with pytest.raises(APSQError, match="below every candidate"):
        choose(pts, 1.0)
    cfg = choice_config(BASE, {"bert.encoder.layer.0.output.dense": 4, "pooler.dense": 1})
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg.to_dict()))
    back = APSQConfig.from_yaml(p)
    assert back.for_module("bert.encoder.layer.0.output.dense").gs == 4
    assert back.for_module("pooler.dense").gs == 1
    assert back.for_module("other").gs == BASE.gs
    with pytest.raises(APSQError, match="wildcard"):
        choice_config(BASE, {"a.*": 1})


def test_uniform_points_energy(prof):
    t = energy_table(_workload(), prof.layers, BASE, "is", GS, _small_acc())
    for p, g in zip(uniform_points(prof, t), GS):
        assert p.energy_pj == pytest.approx(evaluate(_workload(), "is", "apsq", g, 8, _small_acc()).total_pj)
