"""Compiled co-simulation (Verilator on the exported Verilog) and per-lane shifts, bit for bit.

The Verilator build of each engine configuration is cached (``<apsq cache>/kernels/rae-verilator``),
so after the first run these tests cost a few subprocess starts.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from apsq.errors import APSQError
from apsq.hw.rae import RAEParams, run_layers, simulate, validate_layer
from apsq.hw.rae.sim import build_schedule, pack_beats, unpack_codes, words_to_int
from apsq.integer.psum import psum_accumulate_int

needs_verilator = pytest.mark.skipif(
    shutil.which("verilator") is None, reason="verilator not installed (Debian package verilator; CI installs it)"
)

PARAMS = RAEParams(lanes=4, depth=2)
LANE_PARAMS = RAEParams(lanes=4, depth=2, lane_exponents=True)


def golden(t: np.ndarray, e: np.ndarray, gs: int, bits: int = 8) -> np.ndarray:
    return psum_accumulate_int(torch.tensor(t), torch.tensor(e), mode="apsq", gs=gs, bits=bits).code.numpy()


def random_layer(rng: np.random.Generator, *, lane: bool, gs: int) -> tuple[np.ndarray, np.ndarray, int]:
    """One random layer: 1..13 steps, 1..20 columns, magnitudes up to the 32-bit rails, exponents over
    the whole shifter range (extremes included), per step or per step and column."""
    n, cols = int(rng.integers(1, 14)), int(rng.integers(1, 21))
    mag = int(rng.choice([1, 6, 14, 20, 31]))
    t = rng.integers(-(1 << mag), 1 << mag, size=(n, cols), dtype=np.int64)
    shape = (n, cols) if lane else (n,)
    kind = int(rng.integers(0, 4))
    if kind == 0:
        e = rng.integers(-8, 24, size=shape)
    elif kind == 1:
        e = rng.choice(np.array([-8, 23]), size=shape)
    else:
        base = int(rng.integers(-8, 24))
        e = np.clip(base + rng.integers(-2, 3, size=shape), -8, 23)
    return t, e.astype(np.int64), gs


@needs_verilator
def test_build_is_cached():
    from apsq.hw.rae.verilator import build_simulator

    path, _ = build_simulator(PARAMS)
    again, cached = build_simulator(PARAMS)
    assert cached and again == path and path.exists()


@needs_verilator
@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.0, 0.3]), st.booleans())
def test_verilator_random_streams_bit_exact(seed, backpressure, lane):
    rng = np.random.default_rng(seed)
    params = LANE_PARAMS if lane else PARAMS
    layers = [random_layer(rng, lane=lane, gs=gs) for gs in (1, 2, 3, 4) for _ in range(2)]
    jobs = [validate_layer(t, e, gs, params) for t, e, gs in layers]
    codes, stats = run_layers(jobs, params, backpressure=backpressure, seed=seed, backend="verilator")
    for (t, e, gs), c in zip(layers, codes, strict=True):
        np.testing.assert_array_equal(c, golden(t, e, gs))
    assert stats.beats_out == sum(-(-t.shape[1] // 4) for t, _, _ in layers)
    assert stats.beats_in == sum(t.shape[0] * -(-t.shape[1] // 4) for t, _, _ in layers)


@needs_verilator
@pytest.mark.parametrize("lane", [False, True])
def test_verilator_matches_amaranth_cycle_for_cycle(lane):
    """Same codes and the same cycle accounting as the Python simulator (no back-pressure)."""
    rng = np.random.default_rng(11 + lane)
    params = LANE_PARAMS if lane else PARAMS
    layers = [random_layer(rng, lane=lane, gs=gs) for gs in (1, 2, 3, 4)]
    jobs = [validate_layer(t, e, gs, params) for t, e, gs in layers]
    c_am, s_am = run_layers(jobs, params, backend="amaranth")
    c_vl, s_vl = run_layers(jobs, params, backend="verilator")
    for a, b, (t, e, gs) in zip(c_am, c_vl, layers, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(b, golden(t, e, gs))
    for f in ("cycles", "beats_in", "beats_out", "hazard_stalls", "backpressure_stalls", "idle_in"):
        assert getattr(s_vl, f) == getattr(s_am, f), f


@pytest.mark.parametrize("gs", [1, 2, 3, 4])
def test_per_lane_shifts_amaranth(gs):
    """Per-lane exponents [n, L]: each lane equals the integer model run on that lane alone."""
    rng = np.random.default_rng(gs)
    n = 9
    t = rng.integers(-(1 << 20), 1 << 20, size=(n, 12))
    e = rng.integers(-8, 24, size=(n, 12))
    e[:, 3] = 23  # one lane at each extreme
    e[:, 5] = -8
    c = simulate(t, e, gs=gs, lanes=4)
    g = golden(t, e, gs)
    np.testing.assert_array_equal(c, g)
    for lane in range(12):  # the integer model per lane, one column at a time
        np.testing.assert_array_equal(g[lane], golden(t[:, lane:lane + 1], e[:, lane], gs)[0])
    # the lanes really use their own shifts: lane 0's exponents for all lanes gives other codes
    assert not np.array_equal(c, golden(t, e[:, 0], gs))


def test_per_lane_engine_takes_per_step_exponents():
    rng = np.random.default_rng(4)
    t = rng.integers(-(1 << 16), 1 << 16, size=(6, 8))
    e = rng.integers(4, 12, size=6)
    (codes,), _ = run_layers([validate_layer(t, e, 2, LANE_PARAMS)], LANE_PARAMS)
    np.testing.assert_array_equal(codes, golden(t, e, 2))


def test_lane_exponents_need_the_per_lane_engine():
    t = np.ones((3, 4), dtype=np.int64)
    with pytest.raises(APSQError, match=r"lane_exponents=True"):
        validate_layer(t, np.zeros((3, 4), dtype=np.int64), 2, PARAMS)
    with pytest.raises(APSQError, match=r"exponents must be \[n\] .* or \[n, L\]"):
        validate_layer(t, np.zeros((3, 5), dtype=np.int64), 2, LANE_PARAMS)
    with pytest.raises(APSQError, match="backend must be one of"):
        run_layers([validate_layer(t, np.zeros(3, dtype=np.int64), 2, PARAMS)], PARAMS, backend="cxx")
    with pytest.raises(APSQError, match="lane_exponents must be True or False"):
        RAEParams(lane_exponents=1)


@given(st.integers(0, 2**32 - 1), st.booleans(), st.sampled_from([4, 8, 16]))
def test_packing_matches_amaranth_layout(seed, lane, bits):
    """The vectorised packer writes every field where Amaranth's StructLayout reads it."""
    rng = np.random.default_rng(seed)
    params = RAEParams(lanes=3, depth=2, bits=bits, lane_exponents=lane)
    b = 5
    tiles = rng.integers(params.tile_min, params.tile_max + 1, size=(b, 3))
    exps = rng.integers(params.exp_min, params.exp_max + 1, size=(b, 3) if lane else b)
    s2, last = rng.integers(0, 2, size=b), rng.integers(0, 2, size=b)
    words = pack_beats(params, tiles, exps, s2, last)
    layout = params.in_layout()
    for k in range(b):
        view = layout.from_bits(words_to_int(words[k]))
        assert [view.tile[j] for j in range(3)] == tiles[k].tolist()
        assert ([view.exp[j] for j in range(3)] if lane else view.exp) == (exps[k].tolist() if lane else exps[k])
        assert (view.s2, view.last) == (s2[k], last[k])
    codes = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=(b, 3))
    out = np.zeros((b, -(-3 * bits // 32)), dtype=np.uint32)
    for k in range(b):
        v = sum((int(c) & ((1 << bits) - 1)) << (j * bits) for j, c in enumerate(codes[k]))
        out[k] = np.frombuffer(v.to_bytes(4 * out.shape[1], "little"), dtype="<u4")
    np.testing.assert_array_equal(unpack_codes(params, out), codes)


def test_schedule_broadcasts_per_step_exponents_on_the_lane_engine():
    t = np.arange(12, dtype=np.int64).reshape(2, 6)
    e = np.array([3, -2])
    (ps,) = build_schedule([validate_layer(t, e, 1, LANE_PARAMS)], LANE_PARAMS)
    layout = LANE_PARAMS.in_layout()
    views = [layout.from_bits(words_to_int(w)) for w in ps.words]
    assert ps.positions == 2 and len(views) == 4
    assert [views[0].exp[j] for j in range(4)] == [3, 3, 3, 3]
    assert [views[3].exp[j] for j in range(4)] == [-2, -2, 0, 0]  # padding lanes: exponent 0


@needs_verilator
def test_equivalence_run_small_and_its_negative_control(monkeypatch):
    """The equivalence harness: all equal on a small run; a wrong golden model is caught."""
    from apsq.hw.rae import equivalence

    summary = equivalence.run_equivalence(600, lanes=4, depth=2, batch_streams=150, seed=3, max_cols=12)
    assert summary["streams"] == 600 and summary["mismatches"] == 0
    for eng in summary["engines"]:
        assert eng["streams"] == 300 and eng["batches_with_backpressure"] == 1
        assert all(eng.get(f"gs{g}", 0) > 0 for g in (1, 2, 3, 4))
    assert summary["saturated_outputs"] > 0 and summary["engines"][1]["lane_exponents"]

    real = equivalence.psum_accumulate_int

    def off_by_gs(t, e, *, mode, gs):  # a golden model with the wrong group size
        return real(t, e, mode=mode, gs=gs % 4 + 1)

    monkeypatch.setattr(equivalence, "psum_accumulate_int", off_by_gs)
    bad = equivalence.run_equivalence(200, lanes=4, depth=2, seed=3, max_cols=12)
    assert bad["mismatches"] > 0 and bad["mismatch_examples"]


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed (Debian package iverilog)")
def test_icarus_runs_the_per_lane_engine_bit_exact():
    from apsq.hw.rae.icarus import run_layers_icarus

    rng = np.random.default_rng(8)
    layers = [random_layer(rng, lane=True, gs=gs) for gs in (1, 2, 3, 4)]
    jobs = [validate_layer(t, e, gs, LANE_PARAMS) for t, e, gs in layers]
    codes, _ = run_layers_icarus(jobs, LANE_PARAMS, backpressure=True)
    for (t, e, gs), c in zip(layers, codes, strict=True):
        np.testing.assert_array_equal(c, golden(t, e, gs))


def test_per_lane_verilog_ports_and_exponent_banks():
    import re

    from apsq.hw.rae.verilog import to_verilog

    params = RAEParams(lanes=4, depth=16, lane_exponents=True)
    text = to_verilog(params)
    iw = 4 * 32 + 4 * params.exp_width + 2  # a 6-bit exponent per lane
    assert params.in_layout().size == iw == 154
    assert re.search(rf"input \[{iw - 1}:0\] i__payload;", text)
    assert len(re.findall(r"reg \[31:0\] \w+ \[15:0\];", text)) == 4  # code banks: 4 lanes x INT8
    assert len(re.findall(r"reg \[19:0\] \w+ \[15:0\];", text)) == 4  # exponent banks: 4 lanes x 5 bits
    assert params.bank_bits == 4 * 16 * 4 * (8 + 5)


@needs_verilator
def test_driver_server_keeps_state_apart_and_restarts_after_a_failure():
    """The driver stays up between calls: a repeated call gives the same codes and cycles as the first
    (the engine is idle between requests); a driver that died is replaced on the next call."""
    from apsq.hw.rae import verilator

    rng = np.random.default_rng(21)
    layers = [random_layer(rng, lane=False, gs=gs) for gs in (3, 1, 4, 2)]
    jobs = [validate_layer(t, e, gs, PARAMS) for t, e, gs in layers]
    first, s1 = run_layers(jobs, PARAMS, backend="verilator")
    again, s2 = run_layers(jobs[::-1], PARAMS, backend="verilator")
    for c, d, (t, e, gs) in zip(first, again[::-1], layers, strict=True):
        np.testing.assert_array_equal(c, golden(t, e, gs))
        np.testing.assert_array_equal(d, c)
    exe, _ = verilator.build_simulator(PARAMS)
    srv = verilator._server(exe)
    srv.proc.kill()
    srv.proc.wait()
    codes, s3 = run_layers(jobs, PARAMS, backend="verilator")
    assert verilator._server(exe) is not srv
    assert (s3.cycles, s3.hazard_stalls, s3.idle_in) == (s1.cycles, s1.hazard_stalls, s1.idle_in)
    for c, d in zip(codes, first, strict=True):
        np.testing.assert_array_equal(c, d)
