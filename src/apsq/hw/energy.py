"""Energy of a workload on an accelerator: access counts x bits x pJ/bit, plus MACs.

``E = Σ_{operand, level} (reads + writes)·bits·e_level + MACs·e_MAC`` (pJ), per layer. PSUM energy
("psum_pj") is the stored-PSUM traffic only (PSUM buffer + DRAM), the part that β = psum_bits /
act_bits scales; the in-PE INT32 accumulator register energy is listed under psum/reg in the breakdown
and is the same in every mode. Formulas and a worked example: ``docs/energy-model.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from apsq.errors import PSUM_MODES, APSQError, check_bits, check_choice
from apsq.hw.accelerator import Accelerator, default_accelerator
from apsq.hw.dataflow import DATAFLOWS, LEVELS, OPERANDS, AccessCounts, access_counts
from apsq.hw.workloads.base import Workload

__all__ = ["EnergyReport", "Comparison", "evaluate", "compare", "energy_per_bit"]

PS, SRAM, DRAM = OPERANDS.index("psum"), LEVELS.index("sram"), LEVELS.index("dram")


def energy_per_bit(acc: Accelerator) -> tuple[np.ndarray, np.ndarray]:
    """Read and write energy per bit, ``[operand, level]`` arrays (pJ/bit)."""
    bufs = (acc.buffers.input, acc.buffers.weight, acc.buffers.psum, acc.buffers.output)
    er = np.array([[acc.pe_array.reg_pj_per_bit, b.read_pj_per_bit, acc.dram.read_pj_per_bit] for b in bufs])
    ew = np.array([[acc.pe_array.reg_pj_per_bit, b.write_pj_per_bit, acc.dram.write_pj_per_bit] for b in bufs])
    return er, ew


@dataclass(frozen=True)
class EnergyReport:
    """Per-layer energy of one (workload, accelerator, dataflow, mode, gs) point."""

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

    @property
    def total_pj(self) -> float:
        return float(self.energy_pj.sum() + self.mac_pj.sum())

    @property
    def psum_pj(self) -> float:
        """Stored-PSUM traffic energy (PSUM buffer + DRAM), pJ."""
        return float(self.energy_pj[:, PS, SRAM:].sum())

    @property
    def layer_total_pj(self) -> np.ndarray:
        return self.energy_pj.sum(axis=(1, 2)) + self.mac_pj

    @property
    def psum_spills(self) -> bool:
        return bool((self.counts.psum_spill > 0).any())

    @property
    def latency_us(self) -> float:
        return float(self.counts.cycles.sum() / self.clock_mhz)

    def breakdown(self) -> dict[str, Any]:
        """Energy (pJ) by operand, by level, and the full operand x level table, plus MACs."""
        e = self.energy_pj.sum(axis=0)
        return {
            "by_operand": {op: float(e[i].sum()) for i, op in enumerate(OPERANDS)} | {"mac": float(self.mac_pj.sum())},
            "by_level": {lv: float(e[:, j].sum()) for j, lv in enumerate(LEVELS)} | {"mac": float(self.mac_pj.sum())},
            "by_operand_level": {
                op: {lv: float(e[i, j]) for j, lv in enumerate(LEVELS)} for i, op in enumerate(OPERANDS)
            },
        }

    def per_layer(self) -> list[dict[str, Any]]:
        rows = []
        for i, name in enumerate(self.layer_names):
            rows.append(
                {
                    "name": name,
                    "total_pj": float(self.layer_total_pj[i]),
                    "psum_pj": float(self.energy_pj[i, PS, SRAM:].sum()),
                    "macs": float(self.counts.macs[i]),
                    "gs": int(self.gs[i]),
                    "psum_footprint_kib": float(self.counts.psum_footprint_bits[i] / 8192),
                    "psum_spill": float(self.counts.psum_spill[i]),
                    "cycles": float(self.counts.cycles[i]),
                }
            )
        return rows

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "psum_bits": self.psum_bits if self.mode != "none" else int(self.counts.bits[0, PS, SRAM]),
            "total_pj": self.total_pj,
            "psum_pj": self.psum_pj,
            "psum_spills_to_dram": self.psum_spills,
            "max_psum_footprint_kib": float(self.counts.psum_footprint_bits.max() / 8192),
            "latency_us": self.latency_us,
            "breakdown": self.breakdown(),
        }


def evaluate(
    workload: Workload,
    dataflow: str,
    mode: str = "apsq",
    gs: int | Mapping[str, int] | Sequence[int] = 1,
    psum_bits: int = 8,
    accelerator: Accelerator | None = None,
    baseline_bits: int | Sequence[int] | None = None,
) -> EnergyReport:
    """Energy of ``workload`` under ``dataflow`` (``is``/``ws``/``os``) and PSUM ``mode``.

    ``gs``: APSQ group size, one int or per layer (see :meth:`Workload.gs_array`); ``psum_bits``: the
    stored PSUM width in ``psq``/``apsq`` (``none`` stores the accelerator's ``acc_bits``, or
    ``baseline_bits``: one width or one per layer; the in-PE register stays ``acc_bits`` wide).
    """
    acc = accelerator or default_accelerator()
    check_choice("dataflow", dataflow, tuple(DATAFLOWS))
    check_choice("mode", mode, PSUM_MODES)
    check_bits("psum_bits", psum_bits, lo=1, hi=64)
    if baseline_bits is not None:
        if mode != "none":
            raise APSQError(f"baseline_bits applies to mode 'none' only, got mode={mode!r}")
        if np.ndim(baseline_bits) == 0:
            check_bits("baseline_bits", int(baseline_bits), lo=1, hi=64)
        elif len(baseline_bits) != len(workload.layers):
            raise APSQError(f"baseline_bits has {len(baseline_bits)} values but workload {workload.name!r} has "
                            f"{len(workload.layers)} layers")
    counts = access_counts(workload, acc, dataflow, mode, gs, psum_bits, baseline_bits)
    er, ew = energy_per_bit(acc)
    energy = (counts.reads * er + counts.writes * ew) * counts.bits
    mac = counts.macs * acc.pe_array.mac_pj
    return EnergyReport(
        workload.name,
        dataflow,
        mode,
        psum_bits,
        workload.gs_array(gs),
        tuple(ly.name for ly in workload.layers),
        energy,
        mac,
        counts,
        acc.clock_mhz,
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
    def psum_share_baseline(self) -> float:
        return self.baseline.psum_pj / self.baseline.total_pj

    def to_json(self, per_layer: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "workload": self.baseline.workload,
            "dataflow": self.baseline.dataflow,
            "mode": self.apsq.mode,
            "gs": int(self.apsq.gs[0]) if len(set(self.apsq.gs.tolist())) == 1 else self.apsq.gs.tolist(),
            "psum_bits": self.apsq.psum_bits,
            "baseline_pj": self.baseline.total_pj,
            "apsq_pj": self.apsq.total_pj,
            "reduction": self.reduction,
            "psum_reduction": self.psum_reduction,
            "psum_share_baseline": self.psum_share_baseline,
            "baseline_psum_pj": self.baseline.psum_pj,
            "apsq_psum_pj": self.apsq.psum_pj,
            "baseline_spills": self.baseline.psum_spills,
            "apsq_spills": self.apsq.psum_spills,
            "breakdown": {"baseline": self.baseline.breakdown(), "apsq": self.apsq.breakdown()},
        }
        if per_layer:
            out["layers"] = {"baseline": self.baseline.per_layer(), "apsq": self.apsq.per_layer()}
        return out


def compare(
    workload: Workload,
    dataflow: str,
    gs: int | Mapping[str, int] | Sequence[int] = 1,
    psum_bits: int = 8,
    accelerator: Accelerator | None = None,
    mode: str = "apsq",
) -> Comparison:
    """Baseline (``none``, INT32 PSUMs) vs ``mode`` (default APSQ) at ``psum_bits`` and ``gs``."""
    base = evaluate(workload, dataflow, "none", gs, psum_bits, accelerator)
    q = evaluate(workload, dataflow, mode, gs, psum_bits, accelerator)
    return Comparison(base, q)
