"""Properties of the energy model (hypothesis over GEMM shapes) and its bad-input errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apsq.errors import APSQError
from apsq.hw.accelerator import Accelerator, default_accelerator
from apsq.hw.dataflow import LEVELS, OPERANDS
from apsq.hw.energy import compare, evaluate
from apsq.hw.workloads import Layer, Workload

PS, SRAM, DRAM = OPERANDS.index("psum"), LEVELS.index("sram"), LEVELS.index("dram")


def _acc(**psum) -> Accelerator:
    d = default_accelerator().model_dump()
    d["buffers"]["psum"].update(psum)
    return Accelerator.from_dict(d)


BIG = _acc(capacity_kib=1 << 20)  # a PSUM buffer nothing overflows

shapes = st.tuples(st.integers(1, 600), st.integers(1, 3000), st.integers(1, 600), st.integers(1, 4))


def _wl(m, k, n, count):
    return Workload("g", (Layer("g", "linear", m, k, n, count),))


@given(shapes, st.sampled_from(["is", "ws"]), st.integers(1, 4))
def test_apsq_never_costs_more_without_spill(shape, dataflow, gs):
    cmp = compare(_wl(*shape), dataflow, gs, 8, BIG)
    assert not cmp.baseline.psum_spills and not cmp.apsq.psum_spills
    assert cmp.apsq.total_pj <= cmp.baseline.total_pj
    # beta = 32 / 8 = 4: same access count, a quarter of the bits
    assert cmp.apsq.psum_pj == pytest.approx(cmp.baseline.psum_pj / 4)
    if shape[1] > default_accelerator().pe_array.rows:  # more than one tile -> PSUM traffic exists
        assert cmp.psum_reduction == pytest.approx(0.75)
    else:
        assert cmp.baseline.psum_pj == 0.0


@given(shapes, st.sampled_from(["none", "psq", "apsq"]), st.integers(1, 4))
def test_os_has_no_psum_buffer_traffic(shape, mode, gs):
    r = evaluate(_wl(*shape), "os", mode, gs, 8)
    assert r.psum_pj == 0.0
    assert r.counts.reads[:, PS, SRAM:].sum() == 0 and r.counts.writes[:, PS, SRAM:].sum() == 0
    assert r.total_pj == pytest.approx(evaluate(_wl(*shape), "os", "none", 1, 8).total_pj)


@given(shapes, st.sampled_from(["is", "ws"]), st.integers(2, 12))
def test_psum_energy_scales_with_beta(shape, dataflow, bits):
    w = _wl(*shape)
    e8 = evaluate(w, dataflow, "apsq", 2, 8, BIG).psum_pj
    eb = evaluate(w, dataflow, "apsq", 2, bits, BIG).psum_pj
    assert eb == pytest.approx(e8 * bits / 8)


@given(shapes, st.sampled_from(["is", "ws"]))
def test_bigger_psum_buffer_never_costs_more(shape, dataflow):
    w = _wl(*shape)
    energies = [evaluate(w, dataflow, "none", 1, 8, _acc(capacity_kib=c)).total_pj for c in (16, 64, 256, 4096)]
    assert all(a >= b - 1e-6 * a for a, b in zip(energies, energies[1:]))


def test_spill_is_what_makes_large_gs_cost_more():
    # WS, M=1024 tokens: live 1024 x 32 outputs; 64 KiB holds 2 INT8 slots each, not 3
    w = _wl(1024, 768, 768, 1)
    fp = {gs: evaluate(w, "ws", "apsq", gs, 8).counts.psum_footprint_bits[0] / 8192 for gs in (1, 2, 3, 4)}
    assert fp == {1: 32.0, 2: 64.0, 3: 96.0, 4: 128.0}
    spills = [evaluate(w, "ws", "apsq", gs, 8).psum_spills for gs in (1, 2, 3, 4)]
    assert spills == [False, False, True, True]
    base = evaluate(w, "ws", "none", 1, 8)
    assert base.psum_spills and base.counts.psum_spill[0] == pytest.approx(0.5)


def test_counts_are_mode_independent_except_psums():
    w = _wl(300, 1000, 200, 2)
    a, b = evaluate(w, "ws", "none", 1, 8), evaluate(w, "ws", "apsq", 3, 8)
    for op in ("input", "weight", "output"):
        i = OPERANDS.index(op)
        np.testing.assert_array_equal(a.counts.reads[:, i], b.counts.reads[:, i])
    np.testing.assert_array_equal(a.counts.macs, [300 * 1000 * 200 * 2])


# ---- bad input -----------------------------------------------------------------------------------


def test_unknown_dataflow_lists_choices():
    with pytest.raises(APSQError, match="'is', 'ws', 'os'"):
        evaluate(_wl(4, 4, 4, 1), "rs")


def test_unknown_mode_lists_choices():
    with pytest.raises(APSQError, match="'none', 'psq', 'apsq'"):
        evaluate(_wl(4, 4, 4, 1), "ws", "int4")


@pytest.mark.parametrize("gs", [0, -3])
def test_gs_below_one(gs):
    with pytest.raises(APSQError, match="gs"):
        evaluate(_wl(4, 64, 4, 1), "ws", "apsq", gs)


def test_gs_per_layer_length_mismatch():
    with pytest.raises(APSQError, match="gs has 2 values"):
        evaluate(_wl(4, 64, 4, 1), "ws", "apsq", [1, 2])


def test_psum_buffer_too_small_for_one_tile():
    tiny = _acc(capacity_kib=0.01)  # 81.92 bits < 32 lanes x 32 bits
    with pytest.raises(APSQError, match="cannot hold even one PE-array tile of layer 'g'"):
        evaluate(_wl(64, 256, 64, 1), "ws", "none", 1, 8, tiny)
    # the OS dataflow never needs the PSUM buffer
    assert evaluate(_wl(64, 256, 64, 1), "os", "none", 1, 8, tiny).psum_pj == 0.0


@pytest.mark.parametrize("field", ["m", "k", "n", "count"])
@pytest.mark.parametrize("value", [0, -5, 2**31 + 1, 2**70])
def test_sizes_outside_the_accepted_range(field, value):
    kw = {"m": 4, "k": 4, "n": 4, "count": 1, field: value}
    with pytest.raises(APSQError, match=rf"{field} must be an integer in 1 \.\. 2\*\*31"):
        Layer("x", "linear", **kw)


dims = st.integers(1, 2**31)


@settings(max_examples=60, deadline=None)
@given(st.tuples(dims, dims, dims, dims), st.sampled_from(["is", "ws", "os"]), st.sampled_from(["none", "apsq"]),
       st.sampled_from(["untiled", "tiled"]), st.sampled_from(["tensor", "channel"]))
def test_counts_never_wrap_over_the_accepted_range(shape, dataflow, mode, schedule, granularity):
    """Issue 25 item 6: every count is float64 (m = k = n = 2**21 gave a negative MAC energy in int64)."""
    m, k, n, count = shape
    acc = default_accelerator()
    r = evaluate(_wl(m, k, n, count), dataflow, mode, 2, 8, acc, schedule=schedule, psum_granularity=granularity,
                 gs_above_banks="warn")
    exact_macs = m * k * n * count  # a Python int: exact
    assert float(r.counts.macs[0]) == pytest.approx(exact_macs, rel=1e-15)
    assert float(r.mac_pj[0]) == pytest.approx(exact_macs * acc.pe_array.mac_pj, rel=1e-12)
    for arr in (r.counts.reads, r.counts.writes, r.energy_pj, r.counts.cycles, r.layer_total_pj):
        assert np.isfinite(arr).all() and (arr >= 0).all()
    # every stationary element is loaded at least once and every MAC reads its streamed operand
    assert r.total_pj >= r.mac_pj.sum() > 0 and r.latency_us > 0


def test_the_reported_wrap():
    r = evaluate(_wl(2**21, 2**21, 2**21, 1), "ws", "none", 1, 8)
    assert r.mac_pj[0] == pytest.approx(2.0**63 * default_accelerator().pe_array.mac_pj, rel=1e-12) and r.total_pj > 0


def test_empty_workload_and_bad_kind():
    with pytest.raises(APSQError, match="no GEMM layers"):
        Workload("empty", ())
    with pytest.raises(APSQError, match="kind must be one of"):
        Layer("x", "pool", 1, 1, 1)
