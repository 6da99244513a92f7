"""IS is WS with the operands' roles swapped, and a dataflow on a machine without a buffer for its streamed
operand is flagged (issue 23 item 5).

``Y = X·Wᵀ`` under IS with shapes (M, K, N) is ``Yᵀ = W·Xᵀ`` under WS with shapes (N, K, M): the
stationary operand is charged one register write and read per load, the streamed one per MAC, whichever
operand plays the role. On an accelerator whose input and weight buffers and registers are swapped,
every count and every energy must match.
"""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apsq.hw.accelerator import Accelerator, default_accelerator, load_accelerator
from apsq.hw.dataflow import LEVELS, OPERANDS
from apsq.hw.energy import evaluate
from apsq.hw.workloads import Layer, Workload

IN, WT = OPERANDS.index("input"), OPERANDS.index("weight")
SRAM = LEVELS.index("sram")


def _asym() -> Accelerator:
    """The default with distinct input / weight buffers and registers (so a swap would show)."""
    d = default_accelerator().model_dump()
    d["pe_array"].update(input_reg_pj_per_bit=0.02, weight_reg_pj_per_bit=0.005)
    d["buffers"]["input"].update(capacity_kib=16, read_pj_per_bit=0.09)
    d["buffers"]["weight"].update(capacity_kib=128, read_pj_per_bit=0.2, write_pj_per_bit=0.15)
    return Accelerator.from_dict(d)


def _swapped(acc: Accelerator) -> Accelerator:
    d = acc.model_dump()
    pe, b = d["pe_array"], d["buffers"]
    pe["input_reg_pj_per_bit"], pe["weight_reg_pj_per_bit"] = pe["weight_reg_pj_per_bit"], pe["input_reg_pj_per_bit"]
    b["input"], b["weight"] = b["weight"], b["input"]
    return Accelerator.from_dict(d)


def _wl(m, k, n, count=1):
    return Workload("g", (Layer("g", "linear", m, k, n, count),))


ACC = _asym()
SWAPPED = _swapped(ACC)


@settings(max_examples=60, deadline=None)
@given(st.tuples(st.integers(1, 700), st.integers(1, 2000), st.integers(1, 700), st.integers(1, 3)),
       st.sampled_from(["none", "apsq", "psq"]), st.integers(1, 4), st.sampled_from(["untiled", "tiled"]),
       st.sampled_from(["fractional", "all-or-nothing"]))
def test_is_equals_ws_with_roles_swapped(shape, mode, gs, schedule, spill):
    m, k, n, count = shape
    a = evaluate(_wl(m, k, n, count), "is", mode, gs, 8, ACC, schedule=schedule, spill=spill)
    b = evaluate(_wl(n, k, m, count), "ws", mode, gs, 8, SWAPPED, schedule=schedule, spill=spill)
    swap = [WT, IN, 2, 3]  # the operand axis of b in a's order
    for field in ("reads", "writes", "bits"):
        np.testing.assert_allclose(getattr(a.counts, field), getattr(b.counts, field)[:, swap], rtol=1e-12)
    np.testing.assert_allclose(a.energy_pj, b.energy_pj[:, swap], rtol=1e-12)
    assert a.total_pj == pytest.approx(b.total_pj, rel=1e-12)
    assert a.latency_us == pytest.approx(b.latency_us, rel=1e-12)


@pytest.mark.parametrize("dataflow", ["is", "ws"])
def test_streamed_operand_register_is_charged_per_mac_stationary_per_load(dataflow):
    m, k, n = 64, 128, 96
    r = evaluate(_wl(m, k, n), dataflow, "none", 1, 8, default_accelerator())
    reg = LEVELS.index("reg")
    streamed, stationary = (IN, WT) if dataflow == "ws" else (WT, IN)
    macs = m * k * n
    assert r.counts.reads[0, streamed, reg] == r.counts.writes[0, streamed, reg] == macs
    loads = (n if dataflow == "ws" else m) * k  # untiled: every stationary element loaded once
    assert r.counts.reads[0, stationary, reg] == r.counts.writes[0, stationary, reg] == loads


def test_tpu_like_is_twin_is_the_role_swap_of_tpu_like():
    ws, is_ = load_accelerator("zigzag-tpu-like"), load_accelerator("zigzag-tpu-like-is")
    assert _swapped(ws).model_dump(exclude={"name", "shared_sram"}) == is_.model_dump(exclude={"name", "shared_sram"})
    assert set(is_.shared_sram) == {"weight", "psum", "output"}
    # and IS on the twin prices exactly what WS prices on tpu_like for the transposed GEMM
    a = evaluate(_wl(128, 768, 3072), "is", "apsq", 1, 8, is_)
    b = evaluate(_wl(3072, 768, 128), "ws", "apsq", 1, 8, ws)
    assert a.total_pj == pytest.approx(b.total_pj, rel=1e-12)


def test_streamed_operand_without_buffer_warns():
    ws, is_ = load_accelerator("zigzag-tpu-like"), load_accelerator("zigzag-tpu-like-is")
    w = _wl(128, 768, 768)
    with pytest.warns(UserWarning, match=r"no weight buffer .* IS streams the weights.*zigzag-tpu-like-is"):
        evaluate(w, "is", "none", 1, 8, ws)
    with pytest.warns(UserWarning, match=r"no input buffer .* WS streams the inputs"):
        evaluate(w, "ws", "none", 1, 8, is_)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(w, "ws", "none", 1, 8, ws)
        evaluate(w, "is", "none", 1, 8, is_)
        evaluate(w, "os", "none", 1, 8, ws)


def test_streamed_operand_warning_once_per_comparison():
    """``compare`` prices two columns; under Python's default filter the warning came once per column (two
    call sites) and read "not a IS machine" (trial-accel). Once, and "an IS machine"."""
    from apsq.hw.energy import compare

    ws = load_accelerator("zigzag-tpu-like")
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("default")
        compare(_wl(128, 768, 768), "is", 2, 8, ws)
    msgs = [str(x.message) for x in got if "no weight buffer" in str(x.message)]
    assert len(msgs) == 1 and "It is not an IS machine" in msgs[0]


def test_operand_without_buffer_goes_from_dram_to_the_registers():
    # zigzag-tpu-like-is has no input SRAM: the stationary inputs are read from DRAM once per load and
    # never touch an SRAM; IS on the WS machine re-reads all weights from DRAM per input tile
    m, k, n = 128, 768, 768
    a = evaluate(_wl(m, k, n), "is", "none", 1, 8, load_accelerator("zigzag-tpu-like-is"))
    assert a.counts.reads[0, IN, SRAM] == a.counts.writes[0, IN, SRAM] == 0
    assert a.counts.reads[0, IN, LEVELS.index("dram")] == m * k
    with pytest.warns(UserWarning):
        b = evaluate(_wl(m, k, n), "is", "none", 1, 8, load_accelerator("zigzag-tpu-like"))
    assert b.counts.reads[0, WT, LEVELS.index("dram")] == n * k * (m // 32)  # 4 input tiles of 32 tokens
    assert b.counts.reads[0, WT, SRAM] == 0


def test_zigzag_conversion_links_operands_by_dataflow():
    """The IS twin converts to ZigZag's tpu_like memories; only the operand links differ (I → I2 under IS)."""
    from apsq.hw.engine_zigzag import operand_links, to_zigzag_hardware, zigzag_mapping

    ws, is_ = load_accelerator("zigzag-tpu-like"), load_accelerator("zigzag-tpu-like-is")
    assert to_zigzag_hardware(is_, "is")["memories"] == to_zigzag_hardware(ws, "ws")["memories"]
    assert operand_links("ws") == {"O": "O", "W": "I2", "I": "I1"} == operand_links("os")
    assert operand_links("is") == {"O": "O", "W": "I1", "I": "I2"}
    layer = Layer("q", "linear", 128, 768, 768)
    assert zigzag_mapping(layer, "is", is_)[0]["memory_operand_links"] == operand_links("is")
    # the stationary operand's chain ends in a per-PE register (served_dimensions: [])
    mems = to_zigzag_hardware(is_, "is")["memories"]
    assert mems["rf_i2"]["served_dimensions"] == [] and "rf_i1" not in mems  # streamed weights: broadcast


def test_zigzag_search_mappings_leave_loops_to_zigzag():
    """``mapping="temporal"`` keeps the dataflow's unrolling and drops the temporal order, ``"search"`` keeps
    only the operand links (results/energy_zigzag/mapping_search.json); a mapping name outside MAPPINGS is an
    APSQError naming the parameter."""
    from apsq.errors import APSQError
    from apsq.hw.engine_zigzag import MAPPINGS, operand_links, zigzag_mapping

    acc = load_accelerator("zigzag-tpu-like-is")
    layer = Layer("q", "linear", 128, 768, 768)
    assert MAPPINGS == ("fixed", "temporal", "search")
    for df in ("is", "ws"):
        (fixed,) = zigzag_mapping(layer, df, acc)
        assert {"spatial_mapping", "temporal_ordering"} <= set(fixed)
        (temporal,) = zigzag_mapping(layer, df, acc, mapping="temporal")
        assert "temporal_ordering" not in temporal
        assert temporal["spatial_mapping"] == fixed["spatial_mapping"]
        assert temporal["memory_operand_links"] == fixed["memory_operand_links"] == operand_links(df)
        (search,) = zigzag_mapping(layer, df, acc, mapping="search")
        assert search == {"name": "default", "memory_operand_links": operand_links(df)}
    with pytest.raises(APSQError, match="mapping"):
        zigzag_mapping(layer, "is", acc, mapping="loma")
