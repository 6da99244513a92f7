"""``apsq rae simulate``'s check: one random layer through the RTL on a backend of the registry
(:mod:`apsq.hw.rae.sim`; optionally also on ``icarus``, the exported Verilog in Icarus), compared code for code with the integer golden model
(:func:`apsq.integer.psum.psum_accumulate_int`, the APSQ recursion of the paper's Eq. 3-4).

Tile sums are uniform in ``[-2^19, 2^19)`` (a 32-deep INT8 x INT8 tile stays within that), exponents in
``[8, 14)``; shape ``[n, L * positions]`` (``n`` tile steps), exponents ``[n]`` or ``[n, L * positions]``
with per-lane shifts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from apsq.hw.rae.engine import RAEParams
from apsq.hw.rae.sim import Activity, RunStats, check_backend, expected_activity, run_layers, validate_layer

__all__ = ["SelfCheck", "check_tools", "random_layer_check"]


@dataclass(frozen=True)
class SelfCheck:
    """The result: ``rtl_equal`` (and ``icarus_equal`` when Icarus ran) against the golden model;
    ``activity_equal``: the activity the RTL counted equals the schedule's (``expected``)."""

    backend: str
    outputs: int
    lane_exponents: bool
    rtl_equal: bool
    stats: RunStats
    icarus_equal: bool | None = None
    icarus_cycles: int | None = None
    expected: Activity | None = None

    @property
    def activity_equal(self) -> bool:
        return self.expected == self.stats.activity

    @property
    def ok(self) -> bool:
        """Every simulator that ran agrees with the golden model, codes and activity."""
        return self.rtl_equal and self.activity_equal and self.icarus_equal is not False


def check_tools(backend: str, icarus: bool) -> None:
    """Raise :class:`apsq.errors.APSQError` before any work if ``backend`` is unknown or a needed
    simulator (Verilator, Icarus Verilog) is not installed."""
    check_backend(backend)
    if icarus:
        check_backend("icarus")


def random_layer_check(*, lanes: int, steps: int, gs: int, bits: int = 8, positions: int = 1,
                       backpressure: float = 0.0, seed: int = 0, lane_exponents: bool = False,
                       backend: str = "amaranth", icarus: bool = False) -> SelfCheck:
    """Run a seeded random layer of ``steps`` tile steps and ``lanes * positions`` outputs through the RTL
    (``backend``: one of :data:`apsq.hw.rae.sim.BACKENDS`; with ``icarus`` also in Icarus) and compare with the
    integer golden model. Bad parameters or missing tools raise :class:`apsq.errors.APSQError` first."""
    import torch

    from apsq.integer.psum import psum_accumulate_int

    check_tools(backend, icarus)
    rng = np.random.default_rng(seed)
    cols = lanes * positions
    params = RAEParams(lanes=lanes, depth=max(2, positions), bits=bits, lane_exponents=lane_exponents)
    n = max(steps, 0)
    t = rng.integers(-(1 << 19), 1 << 19, size=(n, cols))
    e = rng.integers(8, 14, size=(n, cols) if lane_exponents else n)
    job = validate_layer(t, e, gs, params)
    (codes,), stats = run_layers([job], params, backpressure=backpressure, seed=seed, backend=backend)
    gold = psum_accumulate_int(torch.tensor(t), torch.tensor(e), mode="apsq", gs=gs, bits=bits).code.numpy()
    v_equal = v_cycles = None
    if icarus:
        (v_codes,), v_stats = run_layers([job], params, backend="icarus")
        v_cycles = v_stats.cycles
        v_equal = bool(np.array_equal(v_codes, gold))
    return SelfCheck(backend=backend, outputs=cols, lane_exponents=lane_exponents,
                     rtl_equal=bool(np.array_equal(codes, gold)), stats=stats, icarus_equal=v_equal,
                     icarus_cycles=v_cycles, expected=expected_activity([job], params))
