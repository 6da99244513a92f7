"""Energy of access counts: ``Σ (reads·e_read + writes·e_write)·bits + MACs·e_MAC + RAE logic + exponents``.

Shared by :mod:`apsq.hw.energy` (reports) and :mod:`apsq.hw.mapper` (which needs a per-layer cost to
choose a schedule). Terms, all pJ, arrays over layers:

- memory: ``(reads[o,l]·e_read[o,l] + writes[o,l]·e_write[o,l])·bits[o,l]`` with per-operand register
  energies (``PEArray.reg_pj``), the operand's buffer and DRAM;
- MAC: ``MACs · mac_pj``;
- RAE (``psq`` / ``apsq`` only): every stored PSUM code costs one requantization when written and one
  accumulation when read back (``RAE.requant_pj``, ``RAE.accumulate_pj``; sources in ``accelerator.py``);
- per-channel exponents (``psum_granularity="channel"``): one ``exponent_bits`` exponent per tile step
  and output channel, fetched once from DRAM into the PSUM buffer and read from it per use
  (``AccessCounts.exponent_reads``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from apsq.errors import check_choice
from apsq.hw.dataflow.common import OPERANDS, AccessCounts, GemmShapes, ceil_div

__all__ = ["energy_per_bit", "LayerEnergy", "layer_energy", "PSUM_GRANULARITIES"]

PSUM_GRANULARITIES = ("tensor", "channel")
"""One PSUM step per tile step (``tensor``), or one per tile step and output channel (``channel``)."""


def energy_per_bit(acc) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """Read and write energy per bit, ``[operand, level]`` arrays (pJ/bit); registers per operand."""
    bufs = (acc.buffers.input, acc.buffers.weight, acc.buffers.psum, acc.buffers.output)
    regs = [acc.pe_array.reg_pj(op) for op in OPERANDS]
    er = np.array([[r, b.read_pj_per_bit, acc.dram.read_pj_per_bit] for r, b in zip(regs, bufs)])
    ew = np.array([[r, b.write_pj_per_bit, acc.dram.write_pj_per_bit] for r, b in zip(regs, bufs)])
    return er, ew


@dataclass(frozen=True)
class LayerEnergy:
    """Energy terms per layer (pJ)."""

    memory: np.ndarray  # [L, operand, level]
    mac: np.ndarray  # [L]
    rae: np.ndarray  # [L] RAE requantize / accumulate logic
    exponents: np.ndarray  # [L] per-channel PSUM exponent storage traffic

    @property
    def total(self) -> np.ndarray:
        return self.memory.sum(axis=(1, 2)) + self.mac + self.rae + self.exponents


def layer_energy(counts: AccessCounts, acc, mode: str, g: GemmShapes,  # noqa: ANN001
                 psum_granularity: str | np.ndarray = "tensor",
                 full_precision: np.ndarray | None = None) -> LayerEnergy:
    """The energy terms of ``counts`` on ``acc`` for PSUM ``mode`` (see the module docstring).

    ``psum_granularity``: ``tensor`` / ``channel`` for every layer, or a bool array (True = channel) per layer.
    ``full_precision``: bool per layer; those layers have no RAE logic and no exponents in any mode.
    """
    if isinstance(psum_granularity, str):
        check_choice("psum_granularity", psum_granularity, PSUM_GRANULARITIES)
        per_channel = np.full(len(counts.macs), psum_granularity == "channel")
    else:
        per_channel = np.broadcast_to(np.asarray(psum_granularity, dtype=bool), counts.macs.shape)
    er, ew = energy_per_bit(acc)
    memory = (counts.reads * er + counts.writes * ew) * counts.bits
    mac = counts.macs * acc.pe_array.mac_pj
    L = len(counts.macs)
    rae = np.zeros(L)
    exps = np.zeros(L)
    if mode != "none" and counts.stored_psums is not None:
        ps = OPERANDS.index("psum")
        stored_reads = counts.reads[:, ps, 1:].sum(axis=1)
        rae = counts.stored_psums * acc.rae.requant_pj + stored_reads * acc.rae.accumulate_pj
        if per_channel.any() and counts.exponent_reads is not None:
            steps = ceil_div(g.k, acc.pe_array.rows)
            stores = per_channel & (steps > 1) & (counts.stored_psums > 0)
            e_bits = acc.rae.exponent_bits
            fetched = (steps * g.n * g.count).astype(np.float64) * e_bits  # DRAM -> PSUM buffer, once
            psum_buf = acc.buffers.psum
            exps = np.where(
                stores,
                fetched * (acc.dram.read_pj_per_bit + psum_buf.write_pj_per_bit)
                + counts.exponent_reads * e_bits * psum_buf.read_pj_per_bit,
                0.0,
            )
    if full_precision is not None:
        keep = ~np.broadcast_to(np.asarray(full_precision, dtype=bool), rae.shape)
        rae, exps = rae * keep, exps * keep
    return LayerEnergy(memory, mac, rae, exps)
