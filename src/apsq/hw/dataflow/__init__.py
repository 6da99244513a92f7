"""Dataflows: how a GEMM maps onto the PE array, and the accesses that follow.

``DATAFLOWS`` maps ``is`` / ``ws`` / ``os`` to modules whose ``terms(shapes, accelerator)`` give the
per-operand traffic of that mapping (loop orders in each module's docstring);
:func:`access_counts` adds the PSUM traffic of an accumulation mode and assembles the tables.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from apsq.errors import check_choice
from apsq.hw.dataflow import input_stationary, output_stationary, weight_stationary
from apsq.hw.dataflow.common import (
    LEVELS,
    OPERANDS,
    AccessCounts,
    GemmShapes,
    PsumPlan,
    assemble,
    ceil_div,
    psum_plan,
    refetch_fraction,
)

DATAFLOWS: dict[str, ModuleType] = {"is": input_stationary, "ws": weight_stationary, "os": output_stationary}

__all__ = [
    "DATAFLOWS",
    "LEVELS",
    "OPERANDS",
    "AccessCounts",
    "GemmShapes",
    "PsumPlan",
    "access_counts",
    "psum_plan",
    "refetch_fraction",
    "shapes_of",
]


def shapes_of(workload, acc) -> GemmShapes:  # noqa: ANN001
    """GEMM shape arrays of a workload with the accelerator's operand widths."""
    a = workload.arrays
    w_bits = np.where(a["w_is_weight"], acc.weight_bits, acc.act_bits).astype(np.int64)
    return GemmShapes(a["m"], a["k"], a["n"], a["count"], w_bits, acc.act_bits)


def access_counts(workload, acc, dataflow: str, mode: str, gs, psum_bits: int,  # noqa: ANN001
                  baseline_bits=None, spill: str = "fractional") -> AccessCounts:  # noqa: ANN001
    """Access counts of ``workload`` on ``acc`` under ``dataflow``'s untiled order with PSUM ``mode``.

    ``baseline_bits``: stored PSUM width of mode ``none`` (int or one per layer; default ``acc.acc_bits``);
    ``spill``: ``fractional`` or ``all-or-nothing`` (``common.SPILL_RULES``). The tiled schedules are
    :func:`apsq.hw.mapper.map_layers`'s."""
    check_choice("dataflow", dataflow, tuple(DATAFLOWS))
    g = shapes_of(workload, acc)
    gs_arr = workload.gs_array(gs)
    plan = psum_plan(ceil_div(g.k, acc.pe_array.rows), mode, gs_arr, psum_bits,
                     acc.acc_bits if baseline_bits is None else baseline_bits)
    t = DATAFLOWS[dataflow].terms(g, acc, spill)
    names = [ly.name for ly in workload.layers]
    return assemble(f"{workload.name} ({dataflow.upper()})", g, t, plan, acc, names, spill)
