"""RTL == integer golden model == fake-quant float path, bit for bit (Amaranth simulator)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from apsq.functional import psum_accumulate
from apsq.hw.rae import PIPELINE_LATENCY, RAEParams, run_layers, simulate, validate_layer
from apsq.integer.psum import psum_accumulate_int
from apsq.psum.accumulate import closing_steps


def golden(t: np.ndarray, e: np.ndarray, gs: int, bits: int = 8) -> np.ndarray:
    return psum_accumulate_int(torch.tensor(t), torch.tensor(e), mode="apsq", gs=gs, bits=bits).code.numpy()


def float_path(t: np.ndarray, e: np.ndarray, gs: int, bits: int = 8) -> np.ndarray:
    """Fake-quant path in float64 (float32 cannot hold 32-bit tile sums exactly), as codes."""
    y = psum_accumulate(torch.tensor(t, dtype=torch.float64), torch.tensor(2.0 ** e.astype(np.float64)),
                        mode="apsq", gs=gs, bits=bits)
    codes = y / 2.0 ** float(e[-1])
    assert torch.equal(codes, torch.round(codes)), "float path result is not a whole number of steps"
    return codes.to(torch.int64).numpy()


@st.composite
def layers(draw, max_cols: int = 20):
    gs = draw(st.integers(1, 4))
    n = draw(st.integers(1, 13))  # includes n < gs and short last groups
    cols = draw(st.integers(1, max_cols))
    log_mag = draw(st.sampled_from([1, 6, 14, 20, 31]))  # 31: full 32-bit range, saturating
    e_base = draw(st.integers(-8, 23))
    spread = draw(st.integers(0, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    t = rng.integers(-(1 << log_mag), 1 << log_mag, size=(n, cols), dtype=np.int64)
    e = np.clip(e_base + rng.integers(-spread, spread + 1, size=n), -8, 23).astype(np.int64)
    return t, e, gs


PARAMS = RAEParams(lanes=4, depth=2)  # 1..5 positions: 1..3 bank sets, and second passes for gs >= 2


@given(st.lists(layers(), min_size=1, max_size=4), st.sampled_from([0.0, 0.35]), st.integers(0, 1000))
def test_random_streams_bit_exact(jobs, backpressure, seed):
    validated = [validate_layer(t, e, gs, PARAMS) for t, e, gs in jobs]
    codes, stats = run_layers(validated, PARAMS, backpressure=backpressure, seed=seed)
    for (t, e, gs), c in zip(jobs, codes, strict=True):
        g = golden(t, e, gs)
        np.testing.assert_array_equal(c, g)
        np.testing.assert_array_equal(float_path(t, e, gs), g)
    assert stats.beats_out == sum(-(-t.shape[1] // 4) for t, _, _ in jobs)


@pytest.mark.parametrize("gs", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_all_gs_short_groups_and_negative_exponents(gs, n):
    rng = np.random.default_rng(100 * gs + n)
    t = rng.integers(-40, 40, size=(n, 8))
    e = rng.integers(-8, 1, size=n)  # left shifts: codes carry fraction bits, many saturate
    c = simulate(t, e, gs=gs, lanes=4)
    np.testing.assert_array_equal(c, golden(t, e, gs))
    np.testing.assert_array_equal(c, float_path(t, e, gs))


@pytest.mark.parametrize("gs", [1, 2, 3, 4])
def test_saturation_both_rails(gs):
    t = np.array([[2**31 - 1, -(2**31), 2**30, -(2**30)]] * 7, dtype=np.int64)
    e = np.array([20, 23, 0, -8, 5, 23, 22])
    c = simulate(t, e, gs=gs)
    g = golden(t, e, gs)
    np.testing.assert_array_equal(c, g)
    assert np.isin(g, [127, -128]).any()


@pytest.mark.parametrize("bits", [4, 10])
def test_other_code_widths(bits):
    rng = np.random.default_rng(bits)
    t = rng.integers(-(1 << 16), 1 << 16, size=(10, 4))
    e = rng.integers(6, 12, size=10)
    np.testing.assert_array_equal(simulate(t, e, gs=3, bits=bits), golden(t, e, 3, bits))


def test_group_size_configuration_matters():
    """The static encodings really select gs: gs=2 RTL differs from the gs=1 model on this stream."""
    rng = np.random.default_rng(7)
    t = rng.integers(-(1 << 12), 1 << 12, size=(12, 4))
    e = rng.integers(4, 9, size=12)  # varying steps: A_{g-1} is not on the next step's grid
    c2 = simulate(t, e, gs=2)
    np.testing.assert_array_equal(c2, golden(t, e, 2))
    assert not np.array_equal(golden(t, e, 1), golden(t, e, 2))
    assert not np.array_equal(c2, golden(t, e, 1))


@pytest.mark.parametrize("gs", [1, 2, 4])
def test_cycle_count_single_position(gs):
    """One position: each closing step after the first waits one cycle for the word in flight."""
    n = 24
    rng = np.random.default_rng(gs)
    t = rng.integers(-1000, 1000, size=(n, 4))
    e = np.full(n, 4)
    c, stats = simulate(t, e, gs=gs, return_stats=True)
    np.testing.assert_array_equal(c, golden(t, e, gs))
    closing = closing_steps(n, gs)
    expected_stalls = sum(closing[1:])
    assert stats.hazard_stalls == expected_stalls
    assert stats.backpressure_stalls == 0
    assert stats.cycles == n + expected_stalls + PIPELINE_LATENCY


def test_cycle_count_many_positions_no_stalls():
    """With >= 2 positions interleaved, the pipeline never stalls: n*M beats + fill."""
    n, m = 16, 4
    rng = np.random.default_rng(1)
    t = rng.integers(-(1 << 18), 1 << 18, size=(n, 8 * m))
    e = rng.integers(8, 13, size=n)
    c, stats = simulate(t, e, gs=3, lanes=8, depth=16, return_stats=True)
    np.testing.assert_array_equal(c, golden(t, e, 3))
    assert stats.hazard_stalls == 0
    assert stats.cycles == n * m + PIPELINE_LATENCY
    assert stats.cycles_per_s > 100  # simulation speed is reported


def test_backpressure_only_adds_cycles():
    rng = np.random.default_rng(3)
    t = rng.integers(-(1 << 18), 1 << 18, size=(20, 12))
    e = rng.integers(8, 13, size=20)
    c0, s0 = simulate(t, e, gs=2, lanes=4, return_stats=True)
    c1, s1 = simulate(t, e, gs=2, lanes=4, backpressure=0.5, seed=11, return_stats=True)
    np.testing.assert_array_equal(c0, c1)
    np.testing.assert_array_equal(c0, golden(t, e, 2))
    assert s1.cycles > s0.cycles and s1.idle_in > 0


def test_bank_sets_hold_more_positions_at_small_gs():
    """Storage per output is gs codes: 4 banks x depth 2 hold 8 positions at gs=1, 4 at gs=2, 2 at gs=3, 4."""
    params = RAEParams(lanes=4, depth=2)
    assert [params.capacity(g) for g in (1, 2, 3, 4)] == [8, 4, 2, 2]
    rng = np.random.default_rng(9)
    n = 9
    t = rng.integers(-(1 << 16), 1 << 16, size=(n, 32))  # 8 positions of 4 lanes
    e = rng.integers(5, 11, size=n)
    for gs, passes in ((1, 1), (2, 2), (3, 4), (4, 4)):
        (codes,), stats = run_layers([validate_layer(t, e, gs, params)], params)
        np.testing.assert_array_equal(codes, golden(t, e, gs))
        assert len(stats.per_pass_cycles) == passes
        assert stats.beats_in == n * 8 and stats.hazard_stalls == 0
