"""The one simulator registry (``apsq.hw.rae.sim``), the template files and the shared build cache."""

from __future__ import annotations

import os
import shutil
import stat

import numpy as np
import pytest
import torch

from apsq.cache import CacheError, store_verified, verify_stored
from apsq.errors import APSQError
from apsq.hw.rae import BACKENDS, RAEParams, check_backend, expected_activity, layer_activity, run_layers, validate_layer
from apsq.hw.rae.sim import get_backend
from apsq.hw.rae.template import render, template_text
from apsq.integer.psum import psum_accumulate_int

PARAMS = RAEParams(lanes=4, depth=2)


def _jobs(seed: int) -> tuple[list, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    jobs, gold = [], []
    for gs in (1, 2, 3, 4):
        n, cols = int(rng.integers(1, 9)), int(rng.integers(1, 14))
        t = rng.integers(-(1 << 20), 1 << 20, size=(n, cols))
        e = rng.integers(-8, 24, size=n)
        jobs.append(validate_layer(t, e, gs, PARAMS))
        gold.append(psum_accumulate_int(torch.tensor(t), torch.tensor(e), mode="apsq", gs=gs).code.numpy())
    return jobs, gold


def test_registry_names_every_backend_once():
    assert BACKENDS == ("amaranth", "verilator", "icarus")
    assert [get_backend(b).name for b in BACKENDS] == list(BACKENDS)
    with pytest.raises(APSQError, match="backend must be one of 'amaranth', 'verilator', 'icarus'"):
        run_layers([], PARAMS, backend="cxxrtl")
    with pytest.raises(APSQError, match="backpressure"):
        run_layers([], PARAMS, backend="amaranth", backpressure=1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_is_bit_exact_with_the_same_cycles(backend):
    """Each registered backend: the golden model's codes, and (no back-pressure) the Amaranth cycle count
    (Icarus: one more, its synchronous producer offers the first beat a clock later)."""
    try:
        check_backend(backend)
    except APSQError as exc:
        pytest.skip(str(exc))
    jobs, gold = _jobs(5)
    codes, stats = run_layers(jobs, PARAMS, backend=backend)
    for c, g in zip(codes, gold, strict=True):
        np.testing.assert_array_equal(c, g)
    _, ref = run_layers(jobs, PARAMS, backend="amaranth")
    extra = 1 if backend == "icarus" else 0
    assert (stats.cycles, stats.beats_in, stats.beats_out) == (ref.cycles + extra, ref.beats_in, ref.beats_out)
    assert stats.activity == expected_activity(jobs, PARAMS) == ref.activity


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lane", [False, True])
def test_activity_counted_by_the_rtl_equals_the_schedule(backend, lane):
    """Bank reads/writes by bank, requantizations and closings, counted from the engine's enables
    (with back-pressure: gaps change the cycles, not the work), equal the golden path's count."""
    try:
        check_backend(backend)
    except APSQError as exc:
        pytest.skip(str(exc))
    params = RAEParams(lanes=3, depth=2, lane_exponents=lane)
    rng = np.random.default_rng(17 + lane)
    jobs = []
    for gs in (1, 2, 3, 4, 2, 1):
        n, cols = int(rng.integers(1, 10)), int(rng.integers(1, 40))  # up to 14 positions: several passes
        e = rng.integers(-8, 24, size=(n, cols) if lane else n)
        jobs.append(validate_layer(rng.integers(-(1 << 20), 1 << 20, size=(n, cols)), e, gs, params))
    _, stats = run_layers(jobs, params, backend=backend, backpressure=0.3, seed=4)
    assert stats.activity == expected_activity(jobs, params)


def test_expected_activity_is_the_energy_models_count():
    """Per output position, ``n`` steps in ``G = ceil(n / gs)`` groups: ``n - 1`` reads and ``n - 1`` writes
    (hw/dataflow/common.py's APSQ PSUM traffic), ``n`` requantizations, ``G`` closings; reads of a group
    never exceed its banks."""
    rng = np.random.default_rng(3)
    for _ in range(40):
        params = RAEParams(lanes=int(rng.integers(1, 9)), depth=int(rng.integers(2, 6)))
        jobs, pos = [], []
        for _ in range(int(rng.integers(1, 4))):
            gs, n, cols = int(rng.integers(1, 5)), int(rng.integers(1, 20)), int(rng.integers(1, 100))
            jobs.append(validate_layer(np.zeros((n, cols), dtype=np.int64), np.zeros(n, dtype=np.int64), gs, params))
            pos.append((-(-cols // params.lanes), n, -(-n // gs)))
        act = expected_activity(jobs, params)
        assert act.reads == act.writes == sum(m * (n - 1) for m, n, _ in pos)
        assert act.requantizations == sum(m * n for m, n, _ in pos)
        assert act.accumulations == sum(m * g for m, _, g in pos)
        assert act.shifts == act.reads + act.requantizations
        (m, n, _), job = pos[0], jobs[0]
        one = layer_activity(n, job.partials.shape[1], job.gs, params)  # shapes only
        assert one.reads == m * (n - 1) and one.requantizations == m * n
    with pytest.raises(APSQError, match="gs must be in"):
        layer_activity(4, 8, 5, RAEParams())


def test_check_backend_names_the_missing_tool(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(APSQError, match="verilator is not installed"):
        check_backend("verilator")
    with pytest.raises(APSQError, match="iverilog is not installed"):
        run_layers([], PARAMS, backend="icarus")
    check_backend("amaranth")  # needs no tool


def test_templates_are_package_data_and_render_refuses_drift():
    assert "Vrae_top" in template_text("rae_driver.cpp")
    text = render("rae_top.v", PW1=2, IW1=9, OW1=7, TOP="rae")
    assert "input [2:0] last_pos" in text and "@" not in text.split("\n", 2)[2]
    with pytest.raises(APSQError, match="placeholders"):
        render("rae_top.v", PW1=2, IW1=9, OW1=7)  # one missing
    with pytest.raises(APSQError, match="placeholders"):
        render("rae_top.v", PW1=2, IW1=9, OW1=7, TOP="rae", EXTRA=1)  # one unused
    with pytest.raises(APSQError, match="missing"):
        template_text("nope.v")


def test_shared_cache_refuses_damaged_or_open_files(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir(mode=0o700)
    target = folder / "tool"
    store_verified(target, b"\x7fELF built", mode=0o700)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700
    verify_stored(target)
    target.write_bytes(b"\x7fELF planted")
    os.chmod(target, 0o700)
    with pytest.raises(CacheError, match="differs from the one recorded"):
        verify_stored(target)
    store_verified(target, b"ok")
    os.chmod(target, 0o666)
    with pytest.raises(CacheError, match="other users may write"):
        verify_stored(target)
