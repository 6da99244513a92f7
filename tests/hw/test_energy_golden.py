"""Golden numbers: the worked example of docs/energy-model.md, and the PSUM schedule vs a brute force."""

from pathlib import Path

import numpy as np
import pytest

from apsq.hw.accelerator import load_accelerator
from apsq.hw.dataflow import access_counts, psum_plan
from apsq.hw.energy import compare, evaluate
from apsq.hw.workloads import Layer, Workload

EXAMPLE = Path(__file__).resolve().parents[2] / "src" / "apsq" / "accelerators" / "worked_example.yaml"


@pytest.fixture(scope="module")
def acc():
    return load_accelerator(EXAMPLE)


@pytest.fixture(scope="module")
def gemm():
    return Workload("worked-example", (Layer("fc", "linear", m=8, k=16, n=8),))


def test_ws_counts_by_hand(acc, gemm):
    # WS: n_k = 16/4 = 4 steps, n_n = 8/4 = 2 column tiles; X (128 el.) fits the input buffer
    c = access_counts(gemm, acc, "ws", "none", 1, 8)
    r, w = c.reads[0], c.writes[0]  # [operand, level] with levels reg, sram, dram
    np.testing.assert_array_equal(r[0], [1024, 256, 128])  # inputs: X re-streamed per n_t
    np.testing.assert_array_equal(w[0], [1024, 128, 0])
    # weights: once; the stationary register is written and read once per load (not per MAC)
    np.testing.assert_array_equal(r[1], [128, 128, 128])
    np.testing.assert_array_equal(w[1], [128, 128, 0])
    # 64 outputs x (n-1) = 3 reads and writes; live 8 x 4 outputs x 32 b = 1024 b vs 512 b buffer: half spills
    assert c.psum_footprint_bits[0] == 1024 and c.psum_spill[0] == 0.5
    np.testing.assert_array_equal(r[2], [1024, 96, 96])
    np.testing.assert_array_equal(w[2], [1024, 96, 96])
    np.testing.assert_array_equal(r[3], [0, 64, 0])
    np.testing.assert_array_equal(w[3], [0, 64, 64])
    assert c.macs[0] == 1024
    # compute 2*4*(8+4+4-2) = 112 cycles, but 6144 PSUM bits over a 32-bit port take 192 cycles
    assert c.compute_cycles[0] == 112 and c.cycles[0] == 192


def test_ws_energy_by_hand(acc, gemm):
    cmp = compare(gemm, "ws", gs=2, psum_bits=8, accelerator=acc)
    e = cmp.baseline.energy_pj[0]
    np.testing.assert_allclose(e[0], [163.84, 307.2, 10240.0])
    np.testing.assert_allclose(e[1], [20.48, 204.8, 10240.0])
    np.testing.assert_allclose(e[2], [655.36, 614.4, 61440.0])
    np.testing.assert_allclose(e[3], [0.0, 102.4, 5120.0])
    assert cmp.baseline.mac_pj.sum() == pytest.approx(256.0)
    assert cmp.baseline.total_pj == pytest.approx(89364.48)
    # APSQ gs=2: n=4 -> 2 groups, 2 live slots x 8 b x 32 outputs = 512 b: fits, no spill
    np.testing.assert_allclose(cmp.apsq.energy_pj[0, 2], [655.36, 307.2, 0.0])
    # RAE logic: 192 stored codes x 0.1 pJ (requantize) + 192 read back x 0.1 pJ (accumulate)
    assert cmp.apsq.rae_pj.sum() == pytest.approx(38.4) and cmp.baseline.rae_pj.sum() == 0
    assert cmp.apsq.total_pj == pytest.approx(27655.68)
    assert cmp.reduction == pytest.approx(1 - 27655.68 / 89364.48)
    assert cmp.psum_reduction == pytest.approx(1 - 307.2 / 62054.4)
    assert cmp.psum_share_baseline == pytest.approx(62054.4 / 89364.48)
    assert cmp.apsq.counts.cycles[0] == 112


def test_is_and_os_by_hand(acc, gemm):
    is_ = compare(gemm, "is", gs=2, accelerator=acc)
    assert is_.baseline.total_pj == pytest.approx(89364.48)  # M = N: IS mirrors WS
    np.testing.assert_allclose(is_.baseline.energy_pj[0, 1], [163.84, 307.2, 10240.0])  # W re-streamed
    os_ = compare(gemm, "os", gs=2, accelerator=acc)
    assert os_.baseline.total_pj == pytest.approx(27555.84)
    assert os_.apsq.total_pj == pytest.approx(27555.84)
    assert os_.baseline.psum_pj == 0.0 and os_.reduction == 0.0
    assert os_.baseline.counts.cycles[0] == 88  # 2*2*(16+4+4-2)


def _brute_force(n: int, gs: int, mode: str) -> tuple[int, int, int]:
    """Walk the schedule of method doc §3 with an explicit store: (reads, writes, peak live codes)."""
    store: set[str] = set()
    reads = writes = peak = 0
    if mode == "none":
        for i in range(n):
            if i > 0:
                store.discard("acc")
                reads += 1
            if i < n - 1:
                store.add("acc")
                writes += 1
            peak = max(peak, len(store))
        return reads, writes, peak
    if mode == "psq":
        gs = n
    groups = [list(range(s, min(s + gs, n))) for s in range(0, n, gs)]
    for g, tiles in enumerate(groups):
        for j in tiles[:-1]:
            store.add(f"P{j}")
            writes += 1
            peak = max(peak, len(store))
        for j in tiles[:-1]:
            store.discard(f"P{j}")
            reads += 1
        if g > 0:
            store.discard(f"A{g - 1}")
            reads += 1
        if g < len(groups) - 1:
            store.add(f"A{g}")
            writes += 1
            peak = max(peak, len(store))
    return reads, writes, peak


@pytest.mark.parametrize("mode", ["none", "psq", "apsq"])
def test_psum_plan_matches_the_schedule(mode):
    ns = np.arange(1, 41)
    for gs in range(1, 7):
        plan = psum_plan(ns, mode, gs, 8, 32)
        for i, n in enumerate(ns):
            assert (plan.reads[i], plan.writes[i], plan.slots[i]) == _brute_force(int(n), gs, mode), (n, gs)
    assert plan.bits == (32 if mode == "none" else 8)


def test_apsq_needs_gs_slots_per_live_output():
    # method doc §3: gs x 8 bits per live output once there are enough tiles
    plan = psum_plan(np.array([24]), "apsq", np.array([3]), 8, 32)
    assert plan.slots[0] == 3


def test_per_layer_gs(acc):
    w = Workload("two", (Layer("a", "linear", 8, 16, 8), Layer("b", "linear", 8, 64, 8)))
    r = evaluate(w, "ws", "apsq", {"b": 3}, 8, acc)
    assert r.gs.tolist() == [1, 3]
    # live slots: a: n=4, gs=1 -> 1; b: n=16, gs=3 -> 3
    assert r.counts.psum_footprint_bits.tolist() == [8 * 4 * 1 * 8, 8 * 4 * 3 * 8]
    assert evaluate(w, "ws", "apsq", [1, 3], 8, acc).total_pj == pytest.approx(r.total_pj)


def test_the_document_quotes_these_numbers(acc, gemm):
    doc = (Path(__file__).resolve().parents[2] / "docs" / "energy-model.md").read_text()
    ws, os_ = compare(gemm, "ws", gs=2, accelerator=acc), compare(gemm, "os", gs=2, accelerator=acc)
    for value in (ws.baseline.total_pj, ws.apsq.total_pj, os_.baseline.total_pj):
        assert f"{value:,.2f}".replace(",", " ") in doc, value
    assert f"{100 * ws.reduction:.2f} %" in doc and f"{100 * ws.psum_reduction:.2f} %" in doc
