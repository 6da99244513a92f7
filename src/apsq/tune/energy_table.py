"""Per-layer energy of every candidate gs: the cost side of the per-layer gs choice.

The RAE engine's static configuration (gs, exponents) is set per layer, so a per-layer gs is
realisable in hardware; the energy model takes one gs per workload layer
(:meth:`apsq.hw.workloads.Workload.gs_array`). Layers are independent in the model (each layer's
PSUM spill depends only on its own live footprint), so a choice's energy is the sum of table entries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from apsq.errors import APSQError
from apsq.hw.accelerator import Accelerator
from apsq.hw.energy import evaluate
from apsq.hw.workloads.base import Workload, config_name
from apsq.nn.config import APSQConfig


@dataclass(frozen=True)
class EnergyTable:
    """``pj[layer][gs]``: energy (pJ) of the workload layers that belong to each quantized module,
    ``footprint_kib[layer][gs]`` their largest live PSUM footprint, and ``fixed_pj`` the energy of the
    other workload layers (unquantized ones, evaluated at the config's global gs)."""

    layers: tuple[str, ...]
    gs_values: tuple[int, ...]
    pj: dict[str, dict[int, float]]
    footprint_kib: dict[str, dict[int, float]]
    fixed_pj: float

    def total_pj(self, choice: Mapping[str, int]) -> float:
        """Total energy (pJ) of a per-layer choice (``layer -> gs``; every layer must be given)."""
        missing = [n for n in self.layers if n not in choice]
        if missing:
            raise APSQError(f"choice has no gs for layers {missing[:3]}")
        return self.fixed_pj + sum(self.pj[n][int(choice[n])] for n in self.layers)


def energy_table(
    workload: Workload,
    layers: Sequence[str],
    base: APSQConfig,
    dataflow: str,
    gs_values: Sequence[int],
    accelerator: Accelerator | None = None,
    override_tile: bool = False,
) -> EnergyTable:
    """Energy table of quantized modules ``layers`` (module names) on ``workload`` under ``dataflow``,
    APSQ mode at ``base.psum_bits``; workload layers are matched to modules as ``--gs-config`` does.
    ``base.tile`` is checked against the array's rows (``override_tile``: :func:`apsq.hw.energy.resolve_tile`)."""
    if not gs_values:
        raise APSQError("gs_values must name at least one group size")
    names = [config_name(ly.name) for ly in workload.layers]
    wanted = set(layers)
    absent = sorted(wanted - set(names))
    if absent:
        raise APSQError(f"quantized layers {absent[:3]} do not appear in workload {workload.name!r}")
    idx = {n: [i for i, m in enumerate(names) if m == n] for n in layers}
    pj: dict[str, dict[int, float]] = {n: {} for n in layers}
    fp: dict[str, dict[int, float]] = {n: {} for n in layers}
    for g in gs_values:
        r = evaluate(workload, dataflow, "apsq", int(g), base.psum_bits, accelerator)
        tot = r.layer_total_pj
        foot = r.counts.psum_footprint_bits / 8192
        for n in layers:
            pj[n][int(g)] = float(tot[idx[n]].sum())
            fp[n][int(g)] = float(foot[idx[n]].max())
    rest = [i for i, m in enumerate(names) if m not in wanted]
    r0 = evaluate(workload, dataflow, "apsq", base, base.psum_bits, accelerator, override_tile=override_tile,
                  tile_mismatch="error")
    fixed = float(np.asarray(r0.layer_total_pj)[rest].sum()) if rest else 0.0
    return EnergyTable(tuple(layers), tuple(int(g) for g in gs_values), pj, fp, fixed)
