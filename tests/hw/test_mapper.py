"""The mapper (tiled schedules): never worse than the fixed orders, hand-checked counts, reported per layer."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apsq.errors import APSQError
from apsq.hw.accelerator import default_accelerator, load_accelerator
from apsq.hw.dataflow import access_counts, psum_plan, shapes_of
from apsq.hw.dataflow.common import assemble, ceil_div
from apsq.hw.dataflow.tiling import ORDERS, stationary_terms
from apsq.hw.energy import compare, evaluate
from apsq.hw.mapper import map_layers
from apsq.hw.workloads import Layer, Workload, builtin_workload

EXAMPLE = Path(__file__).resolve().parents[2] / "src" / "apsq" / "accelerators" / "worked_example.yaml"

shapes = st.tuples(st.integers(1, 700), st.integers(1, 3000), st.integers(1, 700), st.integers(1, 3))


def _wl(m, k, n, count=1):
    return Workload("g", (Layer("g", "linear", m, k, n, count),))


@settings(max_examples=40, deadline=None)
@given(shapes, st.sampled_from(["is", "ws", "os"]), st.sampled_from(["none", "apsq"]), st.integers(1, 4),
       st.sampled_from(["fractional", "all-or-nothing"]))
def test_tiled_never_costs_more_than_untiled(shape, dataflow, mode, gs, spill):
    w = _wl(*shape)
    u = evaluate(w, dataflow, mode, gs, 8, schedule="untiled", spill=spill)
    t = evaluate(w, dataflow, mode, gs, 8, schedule="tiled", spill=spill)
    assert t.total_pj <= u.total_pj * (1 + 1e-12)
    assert t.counts.macs.sum() == u.counts.macs.sum()
    # tiling moves no PSUM access count, only where they land (buffer or DRAM)
    assert t.counts.reads[:, 2, 1:].sum() == pytest.approx(u.counts.reads[:, 2, 1:].sum())


def test_untiled_schedule_is_the_fixed_order():
    w = builtin_workload("bert-base", seq_len=32)
    acc = default_accelerator()
    for df in ("is", "ws", "os"):
        r = evaluate(w, df, "none", 1, 8, schedule="untiled")
        c = access_counts(w, acc, df, "none", 1, 8)
        np.testing.assert_array_equal(r.counts.reads, c.reads)
        assert set(r.schedule.order) == {ORDERS[df][0]} and (r.schedule.tiles == 1).all()


def test_tiled_ws_counts_by_hand():
    # worked example, WS, M=8 K=16 N=8 on a 4x4 array, M cut into p=2 tiles of 4 rows, order N>M>K
    acc = load_accelerator(EXAMPLE)
    w = _wl(8, 16, 8)
    g = shapes_of(w, acc)
    t = stationary_terms(g, acc, "ws", 2, "N>M>K")
    plan = psum_plan(ceil_div(g.k, 4), "none", 1, 8, 32)
    c = assemble("x", g, t, plan, acc, ["g"])
    r, wr = c.reads[0], c.writes[0]
    assert r[1, 1] == 8 * 16 * 2 and wr[1, 0] == 8 * 16 * 2  # every W tile loaded twice (once per M tile)
    assert r[1, 2] == 8 * 16  # the 4 x 16 W column block (512 b) fits the 1 KiB weight buffer: DRAM once
    assert r[0, 1] == 8 * 16 * 2  # X streamed once per N tile, as untiled
    # live PSUMs: 4 rows x 4 columns x 32 b = 512 b = the PSUM buffer: no spill (untiled: 1024 b, half spills)
    assert c.psum_footprint_bits[0] == 512 and c.psum_spill[0] == 0
    assert r[2, 2] == 0 and r[2, 1] == 64 * 3
    # cycles: n_n * n_k * (M + p (R + C - 2)) = 2 * 4 * (8 + 2 * 6)
    assert c.compute_cycles[0] == 160


def test_mapper_removes_the_spill_of_bert_is():
    # issue 13: BERT-Base FFN-up under IS spills INT32 PSUMs untiled; a tiling keeps them on chip
    w = builtin_workload("bert-base")
    u = compare(w, "is", 1, schedule="untiled")
    t = compare(w, "is", 1, schedule="tiled")
    assert u.baseline.psum_spills and not t.baseline.psum_spills
    assert t.baseline.total_pj < u.baseline.total_pj / 4
    assert 0.01 < t.reduction < 0.06 and t.psum_reduction == pytest.approx(0.75)
    i = t.baseline.layer_names.index("bert.encoder.layer.0.intermediate.dense")
    assert t.baseline.schedule.tiles[i] > 1
    row = t.baseline.per_layer()[i]
    assert row["mapping"]["order"] in ORDERS["is"] and row["mapping"]["tiles"] == t.baseline.schedule.tiles[i]


def test_mapper_candidates_include_the_smallest_fit():
    acc = default_accelerator()
    w = _wl(3000, 256, 32)  # WS live set 3000 x 32 x 32 b = 375 KiB vs 64 KiB: 6 tiles fit, 8 is the next power
    g = shapes_of(w, acc)
    plan = psum_plan(ceil_div(g.k, 32), "none", 1, 8, 32)
    counts, sched = map_layers(g, acc, "ws", plan, ["g"], "x", "tiled", "fractional", "none")
    assert counts.psum_spill[0] == 0 and sched.tiles[0] == 6


def test_schedule_errors():
    with pytest.raises(APSQError, match="schedule must be one of 'untiled', 'tiled'"):
        evaluate(_wl(8, 8, 8), "ws", schedule="greedy")
    with pytest.raises(APSQError, match="spill must be one of"):
        evaluate(_wl(8, 8, 8), "ws", spill="lru")
