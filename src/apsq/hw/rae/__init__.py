"""The Reconfigurable APSQ Engine (RAE): Amaranth RTL, co-simulation, Verilog export and area.

``RAE``/``RAEParams``: the design (:mod:`apsq.hw.rae.engine`; per-step or per-lane exponents);
:func:`simulate`: bit-exact co-simulation against :func:`apsq.integer.psum.psum_accumulate_int` in
Amaranth's simulator or compiled by Verilator (:mod:`apsq.hw.rae.verilator`; random equivalence runs in
:mod:`apsq.hw.rae.equivalence`); :func:`to_verilog`; the exported
Verilog in Icarus (:mod:`apsq.hw.rae.icarus`); area with Yosys in :mod:`apsq.hw.rae.area`. See
``docs/rae.md``.
"""

from apsq.hw.rae.engine import NUM_BANKS, PIPELINE_LATENCY, RAE, RAEParams
from apsq.hw.rae.sim import BACKENDS, LayerJob, RunStats, run_layers, simulate, validate_layer
from apsq.hw.rae.verilog import to_verilog, write_verilog

__all__ = [
    "NUM_BANKS",
    "PIPELINE_LATENCY",
    "RAE",
    "RAEParams",
    "BACKENDS",
    "LayerJob",
    "RunStats",
    "run_layers",
    "simulate",
    "validate_layer",
    "to_verilog",
    "write_verilog",
]
