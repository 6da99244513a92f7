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

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from apsq.errors import PSUM_MODES, APSQError, check_bits, check_choice, check_int
from apsq.hw.accelerator import Accelerator, default_accelerator
from apsq.hw.cost import PSUM_GRANULARITIES, LayerEnergy, energy_per_bit, layer_energy
from apsq.hw.dataflow import (
    DATAFLOWS,
    LEVELS,
    OPERANDS,
    AccessCounts,
    psum_plan,
    shapes_of,
)
from apsq.hw.dataflow.common import BOUNDS, SPILL_RULES, ceil_div, check_streamed_buffer
from apsq.hw.mapper import SCHEDULES, Schedule, map_layers
from apsq.hw.workloads.base import Workload, config_name

__all__ = ["EnergyReport", "Comparison", "evaluate", "compare", "energy_per_bit", "resolve_tile", "check_gs_banks"]

PS, SRAM, DRAM = OPERANDS.index("psum"), LEVELS.index("sram"), LEVELS.index("dram")


def resolve_tile(gs: Any, acc: Accelerator, tile: int | None = None, override_tile: bool = False,
                 on_mismatch: str = "error") -> int | None:
    """The PSUM tile of a quantization config checked against the array's reduction depth (``rows``).

    ``gs`` may be an :class:`apsq.APSQConfig` (its ``tile`` and per-layer overrides' tiles), ``tile`` an
    explicit value. The energy model steps K by ``pe_array.rows``; a config that trains with another
    tile describes a different accumulation, so a mismatch is an :class:`APSQError` (``on_mismatch=
    "error"``, the CLI) or a :class:`UserWarning` (``"warn"``) unless ``override_tile`` says the mismatch
    is on purpose; the array's rows are then priced. Returns the tile in force, or ``None`` when nothing
    was given.
    """
    tiles: set[int] = set()
    if tile is not None:
        tiles.add(check_int("tile", tile, lo=1))
    if hasattr(gs, "for_module") and hasattr(gs, "tile"):
        tiles.add(int(gs.tile))
        for values in (getattr(gs, "overrides", None) or {}).values():
            if isinstance(values, Mapping) and "tile" in values:
                tiles.add(int(values["tile"]))
    if not tiles:
        return None
    rows = acc.pe_array.rows
    bad = sorted(t for t in tiles if t != rows)
    if bad and not override_tile:
        if on_mismatch == "warn":
            warnings.warn(
                f"the quantization config's PSUM tile {bad[0]} differs from pe_array.rows = {rows} of {acc.name!r}: "
                f"pricing {rows}-deep tiles (pass override_tile=True to say this is on purpose)",
                UserWarning, stacklevel=3)
            return rows
        raise APSQError(
            f"the quantization config's PSUM tile {bad if len(bad) > 1 else bad[0]} does not match the accelerator's "
            f"reduction depth pe_array.rows = {rows} ({acc.name!r}); train with tile={rows}, use an accelerator "
            f"with rows={bad[0]}, or pass override_tile=True (--override-tile) to price {rows}-deep tiles anyway"
        )
    return rows


def check_gs_banks(gs_arr: np.ndarray, acc: Accelerator, names: Sequence[str], error: bool = False) -> None:
    """gs above the PSUM buffer's banks (the RAE's, 4 by default) warns, or raises when ``error``.

    The RAE reads a group's gs-1 pending codes and A in one step from separate banks (method doc §7),
    so gs <= banks. The energy model can still price a larger gs by capacity.
    """
    banks = acc.buffers.psum.banks
    over = np.flatnonzero(gs_arr > banks)
    if over.size == 0:
        return
    i = int(over[0])
    msg = (f"gs={int(gs_arr[i])} for layer {names[i]!r} exceeds the PSUM buffer's {banks} banks "
           f"(buffers.psum.banks of {acc.name!r}); the RAE closes a group from one code per bank, so gs must be "
           f"<= {banks}" + (f" ({over.size} layers affected)" if over.size > 1 else ""))
    if error:
        raise APSQError(msg)
    warnings.warn(msg + "; priced by capacity only", UserWarning, stacklevel=3)


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
    dataflow: str,
    mode: str = "apsq",
    gs: int | Mapping[str, int] | Sequence[int] | None = None,
    psum_bits: int = 8,
    accelerator: Accelerator | None = None,
    baseline_bits: int | Sequence[int] | None = None,
    schedule: str = "untiled",
    spill: str = "fractional",
    psum_granularity: str | None = None,
    tile: int | None = None,
    override_tile: bool = False,
    gs_above_banks: str = "warn",
    tile_mismatch: str = "warn",
) -> EnergyReport:
    """Energy of ``workload`` under ``dataflow`` (``is``/``ws``/``os``) and PSUM ``mode``.

    ``gs``: APSQ group size, one int, per layer (see :meth:`Workload.gs_array`) or an
    :class:`apsq.APSQConfig`; ``None`` (default) prices a traced quantized model's own group sizes,
    else 1, and an explicit ``gs`` that contradicts the model's own is an error
    (:meth:`Workload.gs_array`). ``psum_bits``: the stored PSUM width in ``psq``/``apsq`` (``none``
    stores the accelerator's ``acc_bits``, or ``baseline_bits``: one width or one per layer; the in-PE
    register stays ``acc_bits`` wide). Layers a traced model left in full precision
    (``Layer.full_precision``) are priced as ``none`` at that baseline width in every mode. ``schedule``: ``untiled`` (fixed loop orders) or ``tiled`` (the mapper's
    per-layer choice); ``spill``: ``fractional`` or ``all-or-nothing`` (ZigZag's semantics);
    ``psum_granularity``: ``tensor`` or ``channel`` (one PSUM exponent per tile step and output channel,
    stored and read: :mod:`apsq.hw.cost`); ``None`` takes each layer's from an APSQConfig ``gs`` (else
    ``tensor``). ``tile`` / an APSQConfig's tile must equal ``pe_array.rows``
    unless ``override_tile``: ``tile_mismatch`` = ``warn`` (API default) or ``error`` (``apsq energy``)
    (:func:`resolve_tile`). ``gs_above_banks``: ``warn`` or ``error`` when an APSQ gs exceeds the PSUM
    buffer's banks (:func:`check_gs_banks`). Errors are :class:`APSQError`, raised before anything is
    computed.
    """
    acc = accelerator or default_accelerator()
    check_choice("dataflow", dataflow, tuple(DATAFLOWS))
    check_choice("mode", mode, PSUM_MODES)
    check_bits("psum_bits", psum_bits, lo=1, hi=64)
    check_choice("schedule", schedule, SCHEDULES)
    check_choice("spill", spill, SPILL_RULES)
    if psum_granularity is not None:
        check_choice("psum_granularity", psum_granularity, PSUM_GRANULARITIES)
    check_choice("gs_above_banks", gs_above_banks, ("warn", "error"))
    check_choice("tile_mismatch", tile_mismatch, ("warn", "error"))
    if baseline_bits is not None:
        if mode != "none" and not workload.arrays["full_precision"].any():
            raise APSQError(f"baseline_bits applies to mode 'none' only (and to layers a quantized model left in full "
                            f"precision, of which workload {workload.name!r} has none), got mode={mode!r}")
        if np.ndim(baseline_bits) == 0:
            check_bits("baseline_bits", int(baseline_bits), lo=1, hi=64)
        elif len(baseline_bits) != len(workload.layers):
            raise APSQError(f"baseline_bits has {len(baseline_bits)} values but workload {workload.name!r} has "
                            f"{len(workload.layers)} layers")
    resolve_tile(gs, acc, tile, override_tile, tile_mismatch)
    check_streamed_buffer(acc, dataflow)
    names = [ly.name for ly in workload.layers]
    gs_arr = workload.gs_array(gs)
    fp = workload.arrays["full_precision"]
    if mode == "apsq":
        check_gs_banks(np.where(fp, 1, gs_arr), acc, names, error=gs_above_banks == "error")
    granularity: str | np.ndarray = psum_granularity or "tensor"
    if psum_granularity is None and hasattr(gs, "for_module"):  # an APSQConfig: per layer, overrides applied
        granularity = np.array([getattr(gs.for_module(config_name(n)), "psum_granularity", "tensor") == "channel"
                                for n in names])
    g = shapes_of(workload, acc)
    plan = psum_plan(ceil_div(g.k, acc.pe_array.rows), mode, gs_arr, psum_bits,
                     acc.acc_bits if baseline_bits is None else baseline_bits, fp)
    counts, sched = map_layers(g, acc, dataflow, plan, names, f"{workload.name} ({dataflow.upper()})",
                               schedule, spill, mode, granularity, fp)
    e: LayerEnergy = layer_energy(counts, acc, mode, g, granularity, fp)
    return EnergyReport(
        workload.name,
        dataflow,
        mode,
        psum_bits,
        gs_arr,
        tuple(names),
        e.memory,
        e.mac,
        counts,
        acc.clock_mhz,
        e.rae,
        e.exponents,
        sched,
        spill,
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
            "gs": int(self.apsq.gs[0]) if len(set(self.apsq.gs.tolist())) == 1 else self.apsq.gs.tolist(),
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
    dataflow: str,
    gs: int | Mapping[str, int] | Sequence[int] | None = None,
    psum_bits: int = 8,
    accelerator: Accelerator | None = None,
    mode: str = "apsq",
    **options: Any,
) -> Comparison:
    """Baseline (``none``, INT32 PSUMs or ``baseline_bits``) vs ``mode`` (default APSQ) at ``psum_bits``, ``gs``.

    ``gs=None`` (default): a traced quantized model's own group sizes, else 1; an explicit ``gs`` that
    contradicts the model's own is an :class:`APSQError` (:meth:`Workload.gs_array`). ``options``:
    ``baseline_bits`` (the baseline's stored width, and that of layers left in full precision in
    both columns) and every keyword of :func:`evaluate` (``schedule``, ``spill``,
    ``psum_granularity``, ``tile``, ``override_tile``, ``gs_above_banks``, ``tile_mismatch``),
    applied to both.
    """
    base = evaluate(workload, dataflow, "none", gs, psum_bits, accelerator, **options)
    if not workload.arrays["full_precision"].any():
        options.pop("baseline_bits", None)  # the baseline's width only; else also the full-precision layers'
    q = evaluate(workload, dataflow, mode, gs, psum_bits, accelerator, **options)
    return Comparison(base, q)
