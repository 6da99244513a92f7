"""The Reconfigurable APSQ Engine (RAE): Amaranth RTL, co-simulation, Verilog export and area.

``RAE``/``RAEParams``: the design (:mod:`apsq.hw.rae.engine`; per-step or per-lane exponents);
the beat format and schedule (:mod:`apsq.hw.rae.beats`); :func:`simulate` / :func:`run_layers`, the one
simulator registry (:mod:`apsq.hw.rae.sim`): bit-exact co-simulation against
:func:`apsq.integer.psum.psum_accumulate_int` on a backend of :data:`BACKENDS` — Amaranth's simulator
(:mod:`apsq.hw.rae.amaranth_sim`), the exported Verilog compiled by Verilator
(:mod:`apsq.hw.rae.verilator`) or in Icarus (:mod:`apsq.hw.rae.icarus`); random equivalence runs in
:mod:`apsq.hw.rae.equivalence`; :func:`to_verilog`; area with Yosys in :mod:`apsq.hw.rae.area`. See
``docs/rae.md``.
"""

from apsq.hw.rae.beats import Activity, LayerJob, RunStats, expected_activity, layer_activity, validate_layer
from apsq.hw.rae.engine import NUM_BANKS, PIPELINE_LATENCY, RAE, RAEParams
from apsq.hw.rae.sim import BACKENDS, check_backend, run_layers, simulate
from apsq.hw.rae.verilog import to_verilog, write_verilog

__all__ = [
    "NUM_BANKS",
    "PIPELINE_LATENCY",
    "RAE",
    "RAEParams",
    "BACKENDS",
    "LayerJob",
    "Activity",
    "expected_activity",
    "layer_activity",
    "RunStats",
    "run_layers",
    "check_backend",
    "simulate",
    "validate_layer",
    "to_verilog",
    "write_verilog",
]
