"""The one simulator registry of the RAE: every caller runs the RTL through :func:`run_layers` or
:func:`simulate` and names a backend.

Backends (:data:`BACKENDS`), each a module of its own that knows nothing of the others:

* ``"amaranth"`` — the RTL as written, in Amaranth's Python simulator
  (:mod:`apsq.hw.rae.amaranth_sim`; ~10^3 cycles/s, no tools needed);
* ``"verilator"`` — the exported Verilog compiled to C++ by Verilator (:mod:`apsq.hw.rae.verilator`;
  cached build, ~10^6 cycles/s; needs ``verilator``, ``make`` and a C++ compiler);
* ``"icarus"`` — the exported Verilog in Icarus Verilog (:mod:`apsq.hw.rae.icarus`; an independent
  event-driven simulator; needs ``iverilog``/``vvp``).

All take the same packed beats (:mod:`apsq.hw.rae.beats`) and return each layer's final codes and a
:class:`~apsq.hw.rae.beats.RunStats`; without back-pressure all three report the same cycle count
(Icarus one more), and all count the engine's activity (bank reads/writes by bank, requantizations,
closings: ``RunStats.activity``) from its enables, equal to :func:`expected_activity` (the golden
path's count, from the schedule alone).
The codes equal :func:`apsq.integer.psum.psum_accumulate_int` (``mode='apsq'``) bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from apsq.errors import APSQError, check_bits, check_choice
from apsq.hw.rae.amaranth_sim import run_layers_amaranth
from apsq.hw.rae.beats import (
    Activity,
    EnginePass,
    LayerJob,
    RunStats,
    build_schedule,
    pack_beats,
    scatter_outputs,
    expected_activity,
    layer_activity,
    unpack_codes,
    validate_layer,
    words_to_int,
)
from apsq.hw.rae.engine import RAEParams
from apsq.hw.rae.icarus import check_icarus, run_layers_icarus_stats
from apsq.hw.rae.verilator import check_verilator, run_layers_verilator

__all__ = [
    "BACKENDS",
    "Backend",
    "get_backend",
    "check_backend",
    "run_layers",
    "simulate",
    # the beat format, re-exported for the callers that imported it from here
    "Activity",
    "expected_activity",
    "layer_activity",
    "EnginePass",
    "LayerJob",
    "RunStats",
    "validate_layer",
    "build_schedule",
    "scatter_outputs",
    "pack_beats",
    "unpack_codes",
    "words_to_int",
]

Runner = Callable[..., tuple[list[np.ndarray], RunStats]]


def _no_tools() -> None:
    """The Amaranth simulator ships with apsq: nothing to check."""


@dataclass(frozen=True)
class Backend:
    """One simulator: ``run(jobs, params, *, backpressure, seed) -> (codes per layer, RunStats)``;
    ``check()`` raises :class:`APSQError` when a tool it needs is missing."""

    name: str
    description: str
    run: Runner
    check: Callable[[], object]  # what it returns (e.g. a tool's path) is not used


_REGISTRY: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("amaranth", "the RTL in Amaranth's Python simulator", run_layers_amaranth, _no_tools),
        Backend("verilator", "the exported Verilog compiled by Verilator (cached build)", run_layers_verilator,
                check_verilator),
        Backend("icarus", "the exported Verilog in Icarus Verilog (stalls not classified)", run_layers_icarus_stats,
                check_icarus),
    )
}

BACKENDS: tuple[str, ...] = tuple(_REGISTRY)
"""The simulators behind :func:`run_layers`: ``amaranth``, ``verilator``, ``icarus``."""


def get_backend(name: str) -> Backend:
    """The registered :class:`Backend` called ``name``; :class:`APSQError` naming the choices otherwise."""
    check_choice("backend", name, BACKENDS)
    return _REGISTRY[name]


def check_backend(name: str) -> None:
    """Raise :class:`APSQError` before any work if ``name`` is unknown or its tools are not installed."""
    get_backend(name).check()


def run_layers(
    jobs: Sequence[LayerJob],
    params: RAEParams,
    *,
    backpressure: float = 0.0,
    seed: int = 0,
    backend: str = "amaranth",
) -> tuple[list[np.ndarray], RunStats]:
    """Run ``jobs`` back to back on one RAE instance; return each layer's final codes ``[L]`` and the
    run's :class:`RunStats` (all layers together; ``per_pass_cycles`` per pass).

    Args:
        jobs: validated layers (:func:`validate_layer`), any mix of group sizes, step counts and widths.
        params: the engine instance's parameters (``lane_exponents=True`` for exponents ``[n, L]``).
        backpressure: probability (0..1) that the producer inserts an idle cycle before a beat and,
            independently, that the consumer holds ``o.ready`` low in a cycle (``icarus``: any value
            > 0 turns on its fixed quarter-of-the-cycles ``o_ready`` pattern).
        seed: seed of the back-pressure pattern (each backend draws its own pattern).
        backend: one of :data:`BACKENDS`.

    Raises:
        APSQError: bad ``backpressure`` or ``backend``, a missing tool, or a failed simulation.
    """
    b = get_backend(backend)
    if not 0.0 <= backpressure < 1.0:
        raise APSQError(f"backpressure must be a probability in [0, 1), got {backpressure}")
    b.check()
    return b.run(jobs, params, backpressure=backpressure, seed=seed)


def simulate(
    partials: npt.ArrayLike,
    exponents: npt.ArrayLike,
    *,
    gs: int,
    bits: int = 8,
    lanes: int | None = None,
    depth: int = 16,
    backpressure: float = 0.0,
    seed: int = 0,
    return_stats: bool = False,
    backend: str = "amaranth",
) -> np.ndarray | tuple[np.ndarray, RunStats]:
    """Run one layer through the RAE RTL; return its final INT``bits`` codes ``[L]`` (int64).

    Args:
        partials: integer tile sums ``[n, L]`` (units of ``s_x * s_w``), ``|T| < 2^31``.
        exponents: integer ``[n]``, step ``i``'s PSUM step is ``s_i = 2^e_i`` tile-sum units, or
            ``[n, L]``, one exponent per step and output column (per-channel PSUM steps: the engine is
            built with per-lane shifts, ``RAEParams(lane_exponents=True)``); ``e`` in ``[-8, 23]``
            (the default shifter range).
        gs: APSQ group size, 1..4 (static encodings ``s1 s0 = gs - 1``).
        bits: code width of the engine.
        lanes: engine width; ``None`` uses ``L`` (one position). Smaller values cut the ``L``
            columns into ``ceil(L / lanes)`` positions (bank addresses).
        depth: bank depth (the engine holds ``floor(4 / gs) * depth`` positions at once).
        backpressure, seed: random valid/ready gaps (see :func:`run_layers`).
        return_stats: also return the :class:`RunStats`.
        backend: one of :data:`BACKENDS` (see :func:`run_layers`).

    Equals ``psum_accumulate_int(partials, exponents, mode='apsq', gs=gs, bits=bits).code`` bit for bit
    (per lane when the exponents are ``[n, L]``).
    """
    check_bits("bits", bits)
    get_backend(backend)
    shape = np.shape(partials)
    if lanes is None:
        lanes = shape[1] if len(shape) == 2 else 1
    params = RAEParams(lanes=lanes, depth=depth, bits=bits, lane_exponents=np.ndim(exponents) == 2)
    job = validate_layer(partials, exponents, gs, params)
    (codes,), stats = run_layers([job], params, backpressure=backpressure, seed=seed, backend=backend)
    return (codes, stats) if return_stats else codes
