"""Energy of a workload on an accelerator: access counts x bits x pJ/bit, plus MACs and the RAE logic.

``E = Σ_{operand, level} (reads + writes)·bits·e_level + MACs·e_MAC + RAE + exponents`` (pJ), per layer
(:mod:`apsq.hw.cost`). PSUM energy ("psum_pj") is the stored-PSUM traffic only (PSUM buffer + DRAM),
the part that β = psum_bits / act_bits scales; the in-PE INT32 accumulator register energy is listed
under psum/reg in the breakdown and is the same in every mode; the RAE's requantize / accumulate logic
(APSQ/PSQ only) is listed as ``rae``. The schedule is either the fixed loop orders (``untiled``) or the
mapper's per-layer choice (``tiled``, :mod:`apsq.hw.mapper`). Formulas and a worked example:
``docs/energy-model.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from apsq.config import APSQConfig
from apsq.errors import APSQError
from apsq.hw.accelerator import Accelerator
from apsq.hw.cost import LayerEnergy, energy_per_bit, layer_energy
from apsq.hw.dataflow import LEVELS, OPERANDS, AccessCounts, psum_plan, shapes_of
from apsq.hw.dataflow.common import BOUNDS, ceil_div, check_streamed_buffer
from apsq.hw.energy_spec import EnergySpec, GsSpec, check_gs_banks, check_traced_tiles, resolve_tile
from apsq.hw.mapper import Schedule, map_layers
from apsq.hw.workloads.base import Workload, layer_config

__all__ = ["EnergyReport", "Comparison", "EnergySpec", "evaluate", "compare", "energy_per_bit", "resolve_tile",
           "check_gs_banks"]

PS, SRAM, DRAM = OPERANDS.index("psum"), LEVELS.index("sram"), LEVELS.index("dram")


@dataclass(frozen=True)
class EnergyReport:
    """Per-layer energy of one (workload, accelerator, dataflow, mode, gs, schedule) point."""

    workload: str
    dataflow: str
    mode: str
    psum_bits: int
    gs: np.ndarray  # [L]
    layer_names: tuple[str, ...]
    energy_pj: np.ndarray  # [L, operand, level]
    mac_pj: np.ndarray  # [L]
    counts: AccessCounts
    clock_mhz: float
    rae_pj: np.ndarray | None = None  # [L] RAE logic (psq / apsq)
    exponent_pj: np.ndarray | None = None  # [L] per-channel exponent storage
    schedule: Schedule | None = None
    spill: str = "fractional"
    full_precision: np.ndarray | None = None  # [L] layers left in full precision (priced at the baseline width)

    def _extra(self) -> np.ndarray:
        z = np.zeros(len(self.mac_pj))
        return (z if self.rae_pj is None else self.rae_pj) + (z if self.exponent_pj is None else self.exponent_pj)

    def gs_used(self) -> int | list[int]:
        """The group size of the quantized layers: one int when they share it, else every layer's (a list
        over all layers). Layers left in full precision (priced at the baseline width; their ``gs`` is a
        placeholder 1) do not count, so a model quantized with one gs reports that gs."""
        fp = self.full_precision
        priced = self.gs if fp is None or fp.all() else self.gs[~fp]
        vals = set(priced.tolist())
        return int(vals.pop()) if len(vals) == 1 else self.gs.tolist()

    @property
    def total_pj(self) -> float:
        return float(self.energy_pj.sum() + self.mac_pj.sum() + self._extra().sum())

    @property
    def psum_pj(self) -> float:
        """Stored-PSUM traffic energy (PSUM buffer + DRAM), pJ."""
        return float(self.energy_pj[:, PS, SRAM:].sum())

    @property
    def on_chip_pj(self) -> float:
        """Everything but DRAM traffic, pJ (registers, SRAM, MACs, RAE, exponent reads)."""
        return self.total_pj - float(self.energy_pj[:, :, DRAM].sum())

    @property
    def layer_total_pj(self) -> np.ndarray:
        return self.energy_pj.sum(axis=(1, 2)) + self.mac_pj + self._extra()

    @property
    def psum_spills(self) -> bool:
        return bool((self.counts.psum_spill > 0).any())

    @property
    def latency_us(self) -> float:
        return float(self.counts.cycles.sum() / self.clock_mhz)

    def breakdown(self) -> dict[str, Any]:
        """Energy (pJ) by operand, by level, and the full operand x level table, plus MACs and RAE logic."""
        e = self.energy_pj.sum(axis=0)
        extra = {"mac": float(self.mac_pj.sum()), "rae": float(0 if self.rae_pj is None else self.rae_pj.sum()),
                 "exponents": float(0 if self.exponent_pj is None else self.exponent_pj.sum())}
        return {
            "by_operand": {op: float(e[i].sum()) for i, op in enumerate(OPERANDS)} | extra,
            "by_level": {lv: float(e[:, j].sum()) for j, lv in enumerate(LEVELS)} | extra,
            "by_operand_level": {
                op: {lv: float(e[i, j]) for j, lv in enumerate(LEVELS)} for i, op in enumerate(OPERANDS)
            },
        }

    def per_layer(self) -> list[dict[str, Any]]:
        rows = []
        for i, name in enumerate(self.layer_names):
            e = self.energy_pj[i]
            row = {
                "name": name,
                "total_pj": float(self.layer_total_pj[i]),
                "psum_pj": float(e[PS, SRAM:].sum()),
                "dram_pj": float(e[:, DRAM].sum()),
                "mac_pj": float(self.mac_pj[i]),
                "rae_pj": float(0 if self.rae_pj is None else self.rae_pj[i]),
                "by_operand": {op: float(e[j].sum()) for j, op in enumerate(OPERANDS)},
                "macs": float(self.counts.macs[i]),
                "gs": int(self.gs[i]),
                "full_precision": bool(self.full_precision is not None and self.full_precision[i]),
                "psum_footprint_kib": float(self.counts.psum_footprint_bits[i] / 8192),
                "psum_spill": float(self.counts.psum_spill[i]),
                "cycles": float(self.counts.cycles[i]),
                "bound_by": BOUNDS[int(self.counts.bound_by[i])] if self.counts.bound_by is not None else None,
            }
            if self.schedule is not None:
                row["mapping"] = self.schedule.per_layer(i)
            rows.append(row)
        return rows

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "psum_bits": self.psum_bits if self.mode != "none" else int(self.counts.bits[0, PS, SRAM]),
            "total_pj": self.total_pj,
            "psum_pj": self.psum_pj,
            "on_chip_pj": self.on_chip_pj,
            "psum_spills_to_dram": self.psum_spills,
            "max_psum_footprint_kib": float(self.counts.psum_footprint_bits.max() / 8192),
            "latency_us": self.latency_us,
            "breakdown": self.breakdown(),
        }


def evaluate(
    workload: Workload,
    dataflow: str | EnergySpec,
    mode: str = "apsq",
    gs: GsSpec | Sequence[int] = None,
    psum_bits: int = 8,
    accelerator: Accelerator | None = None,
    **options: Any,
) -> EnergyReport:
    """Energy of ``workload`` at one point: an :class:`EnergySpec`, or its fields as arguments.

    ``evaluate(w, EnergySpec("is", "apsq", gs=2, schedule="tiled"))`` and ``evaluate(w, "is", "apsq", 2,
    schedule="tiled")`` are the same; ``options`` are the spec's other fields (``baseline_bits``,
    ``schedule``, ``spill``, ``psum_granularity``, ``tile``, ``override_tile``, ``gs_above_banks``,
    ``tile_mismatch``, ``on_limit``; meanings in :class:`EnergySpec`). ``gs=None`` prices a traced
    quantized model's own group sizes (else 1); an explicit ``gs`` that contradicts them is an error
    (:meth:`Workload.gs_array`). Layers a traced model left in full precision (``Layer.full_precision``)
    are priced as ``none`` at the baseline width in every mode. Errors are :class:`APSQError`, raised
    before anything is computed.
    """
    return _price(workload, EnergySpec.of(dataflow, mode, gs, psum_bits, accelerator, **options))


def _price(workload: Workload, spec: EnergySpec) -> EnergyReport:
    """The energy of ``workload`` at ``spec`` (the model of the module docstring)."""
    acc, mode, dataflow, bb = spec.acc, spec.mode, spec.dataflow, spec.baseline_bits
    fp = workload.arrays["full_precision"]
    if bb is not None:
        if mode != "none" and not fp.any():
            raise APSQError(f"baseline_bits applies to mode 'none' only (and to layers a quantized model left in full "
                            f"precision, of which workload {workload.name!r} has none), got mode={mode!r}")
        if isinstance(bb, tuple) and len(bb) != len(workload.layers):
            raise APSQError(f"baseline_bits has {len(bb)} values but workload {workload.name!r} has "
                            f"{len(workload.layers)} layers")
    check_streamed_buffer(acc, dataflow)
    names = [ly.name for ly in workload.layers]
    gs_arr = workload.gs_array(spec.gs)
    check_traced_tiles(workload.own_tiles, acc, spec.override_tile, spec.tile_mismatch)
    if mode == "apsq":
        check_gs_banks(np.where(fp, 1, gs_arr), acc, names, error=spec.gs_above_banks == "error")
    granularity: str | np.ndarray = spec.psum_granularity or "tensor"
    if spec.psum_granularity is None and isinstance(spec.gs, APSQConfig):  # per layer, overrides applied
        granularity = np.array([layer_config(spec.gs, n).psum_granularity == "channel" for n in names])
    g = shapes_of(workload, acc)
    plan = psum_plan(ceil_div(g.k, spec.rows), mode, gs_arr, spec.psum_bits,
                     acc.acc_bits if bb is None else (np.asarray(bb) if isinstance(bb, tuple) else bb), fp)
    counts, sched = map_layers(g, acc, dataflow, plan, names, f"{workload.name} ({dataflow.upper()})",
                               spec.schedule, spec.spill, mode, granularity, fp)
    e: LayerEnergy = layer_energy(counts, acc, mode, g, granularity, fp)
    return EnergyReport(
        workload.name,
        dataflow,
        mode,
        spec.psum_bits,
        gs_arr,
        tuple(names),
        e.memory,
        e.mac,
        counts,
        acc.clock_mhz,
        e.rae,
        e.exponents,
        sched,
        spec.spill,
        fp,
    )


@dataclass(frozen=True)
class Comparison:
    """INT32-PSUM baseline vs a quantized-PSUM mode on the same workload and dataflow."""

    baseline: EnergyReport
    apsq: EnergyReport

    @property
    def reduction(self) -> float:
        """Fraction of total energy saved vs the baseline."""
        return 1.0 - self.apsq.total_pj / self.baseline.total_pj

    @property
    def psum_reduction(self) -> float:
        """Fraction of stored-PSUM energy saved (0 when the baseline has none, e.g. OS)."""
        b = self.baseline.psum_pj
        return 1.0 - self.apsq.psum_pj / b if b > 0 else 0.0

    @property
    def on_chip_reduction(self) -> float:
        """Fraction of on-chip energy (all but DRAM traffic) saved."""
        return 1.0 - self.apsq.on_chip_pj / self.baseline.on_chip_pj

    @property
    def psum_share_baseline(self) -> float:
        return self.baseline.psum_pj / self.baseline.total_pj

    @property
    def layer_reduction(self) -> np.ndarray:
        return 1.0 - self.apsq.layer_total_pj / self.baseline.layer_total_pj

    def to_json(self, per_layer: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "workload": self.baseline.workload,
            "dataflow": self.baseline.dataflow,
            "mode": self.apsq.mode,
            "schedule": self.apsq.schedule.kind if self.apsq.schedule is not None else "untiled",
            "spill": self.apsq.spill,
            "gs": self.apsq.gs_used(),
            "psum_bits": self.apsq.psum_bits,
            "baseline_bits": int(self.baseline.counts.bits[0, PS, SRAM]),
            "baseline_pj": self.baseline.total_pj,
            "apsq_pj": self.apsq.total_pj,
            "reduction": self.reduction,
            "psum_reduction": self.psum_reduction,
            "on_chip_reduction": self.on_chip_reduction,
            "psum_share_baseline": self.psum_share_baseline,
            "baseline_psum_pj": self.baseline.psum_pj,
            "apsq_psum_pj": self.apsq.psum_pj,
            "full_precision_layers": [n for n, f in zip(self.apsq.layer_names, self.apsq.full_precision
                                                        if self.apsq.full_precision is not None else []) if f],
            "baseline_spills": self.baseline.psum_spills,
            "apsq_spills": self.apsq.psum_spills,
            "latency_us": {"baseline": self.baseline.latency_us, "apsq": self.apsq.latency_us},
            "breakdown": {"baseline": self.baseline.breakdown(), "apsq": self.apsq.breakdown()},
        }
        if per_layer:
            out["layers"] = {"baseline": self.baseline.per_layer(), "apsq": self.apsq.per_layer()}
        return out


def compare(
    workload: Workload,
    dataflow: str | EnergySpec,
    gs: GsSpec | Sequence[int] = None,
    psum_bits: int = 8,
    accelerator: Accelerator | None = None,
    mode: str = "apsq",
    **options: Any,
) -> Comparison:
    """Baseline (``none``: INT32 PSUMs or ``baseline_bits``) vs ``mode`` (default APSQ) at one point.

    ``compare(w, EnergySpec("ws", gs=2, schedule="tiled"))`` or the spec's fields as arguments
    (``options``: see :func:`evaluate`); one spec, validated once, prices both columns. ``gs=None``
    (default): a traced quantized model's own group sizes, else 1. ``baseline_bits`` is the baseline's
    stored width, and that of layers left in full precision in both columns.
    """
    spec = EnergySpec.of(dataflow, mode, gs, psum_bits, accelerator, **options)
    base = _price(workload, spec.with_mode("none"))
    if spec.baseline_bits is not None and not workload.arrays["full_precision"].any():
        spec = spec.without_baseline_bits()  # the baseline's width only; else also the full-precision layers'
    return Comparison(base, _price(workload, spec))
