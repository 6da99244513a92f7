"""What the engine did, counted: PSUM bank reads / writes per bank, requantizations, alignments, adds.

:func:`count_layer` walks the RAE's schedule for one layer call exactly as the engine runs it
(:mod:`apsq.hw.rae.engine`, WS order: the outputs cut into blocks of ``lanes``, block ``q`` of a pass
in bank set ``q // depth``; a group of ``gs`` banks per set; step ``i`` of a group writes its code to
bank ``base + slot``, a closing step reads the group's pending codes and the previous ``A`` and writes
``A`` to bank ``base + gs - 1``) and counts per real output element (padding lanes excluded).
:func:`price` turns the counts into pJ with the accelerator's per-access energies, and
:func:`analytical` gives the energy model's PSUM and RAE terms (:mod:`apsq.hw.energy`: reads and
writes of stored PSUMs, one requantization per stored code, one accumulation per read) for the same
layer, gs and steps, so the two can be set side by side (``apsq deploy run --energy``).

Terms the analytical model abstracts away (reported separately, with their size):

* ``final_writes``: the engine writes the last step's ``A`` back to its bank (it is the same word the
  output register takes); the model sends the final result to the output buffer instead -- one write
  of ``psum_bits`` per output element;
* ``final_requantizations``: the last step's requantization produces the output code, which the model
  counts under the output path, not as a stored PSUM -- one per output element;
* ``padding_lane_steps``: lanes of the last block of a layer that carry no output still step through
  the pipeline (zero tile sums).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from apsq.deploy.program import EngineLayer, EngineSpec
from apsq.errors import APSQError

__all__ = ["Activity", "count_layer", "price", "analytical", "energy_side_by_side"]


@dataclass
class Activity:
    """Counts of one layer (all its calls), per output element and code (not per SRAM word)."""

    outputs: int = 0
    lane_steps: int = 0
    bank_writes: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    bank_reads: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    requantizations: int = 0
    accumulations: int = 0
    final_writes: int = 0
    final_requantizations: int = 0
    padding_lane_steps: int = 0

    @property
    def stored_writes(self) -> int:
        """Bank writes of codes a later step reads (the analytical model's stored PSUMs)."""
        return sum(self.bank_writes) - self.final_writes

    @property
    def reads(self) -> int:
        return sum(self.bank_reads)

    def add(self, other: Activity) -> None:
        for k, v in other.__dict__.items():
            cur = getattr(self, k)
            setattr(self, k, [a + b for a, b in zip(cur, v, strict=True)] if isinstance(v, list) else cur + v)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "stored_writes": self.stored_writes, "reads": self.reads}


def _base(bset: int, gs: int) -> int:
    """First bank of bank set ``bset`` (gs 1: four sets, gs 2: two, gs 3 / 4: one)."""
    return bset if gs == 1 else (bset << 1) if gs == 2 else 0


def _per_output(n: int, gs: int, base: int) -> Activity:
    """The counts of one output element whose group sits in banks ``base .. base + gs - 1``."""
    act = Activity(outputs=1, lane_steps=n)
    slot, have_a = 0, False
    for i in range(n):
        closing = slot == gs - 1 or i == n - 1
        act.requantizations += 1
        if closing:
            for j in range(slot):
                act.bank_reads[base + j] += 1
            if have_a:
                act.bank_reads[base + gs - 1] += 1
            act.accumulations += slot + (1 if have_a else 0)
            act.bank_writes[base + gs - 1] += 1
            slot, have_a = 0, True
        else:
            act.bank_writes[base + slot] += 1
            slot += 1
    act.final_writes = act.final_requantizations = 1
    return act


def count_layer(n: int, gs: int, outputs: int, engine: EngineSpec) -> Activity:
    """Activity of one layer call: ``n`` tile steps, ``outputs`` output elements, on ``engine``.

    Every output element of a position runs the same step sequence in its bank set, so the walk is
    done once per bank set and scaled by the real outputs the set holds (padding lanes excluded)."""
    lanes, depth = engine.lanes, engine.depth
    blocks = math.ceil(outputs / lanes)
    cap = (engine.num_banks // gs) * depth
    per_set = [0] * (engine.num_banks // gs)
    for b in range(blocks):  # block b: position b % cap of its pass, bank set (b % cap) // depth
        per_set[(b % cap) // depth] += min(lanes, outputs - b * lanes)
    act = Activity(padding_lane_steps=n * (blocks * lanes - outputs))
    for bset, real in enumerate(per_set):
        one = _per_output(n, gs, _base(bset, gs))
        for k, v in one.__dict__.items():
            cur = getattr(act, k)
            setattr(act, k, [a + real * b for a, b in zip(cur, v, strict=True)] if isinstance(v, list) else cur + real * v)
    return act


def price(act: Activity, psum_bits: int, accelerator: Any = None) -> dict[str, float]:
    """pJ of the counted activity with the accelerator's per-access energies (the analytical model's
    terms: stored writes and reads of the PSUM buffer, a requantization per stored code and an
    accumulation per read) and, apart, the abstracted terms."""
    from apsq.hw.accelerator import default_accelerator

    acc = accelerator or default_accelerator()
    buf, rae = acc.buffers.psum, acc.rae
    return {
        "psum_pj": (act.stored_writes * buf.write_pj_per_bit + act.reads * buf.read_pj_per_bit) * psum_bits,
        "rae_pj": act.stored_writes * rae.requant_pj + act.accumulations * rae.accumulate_pj,
        "abstracted_pj": act.final_writes * psum_bits * buf.write_pj_per_bit + act.final_requantizations * rae.requant_pj,
    }


def analytical(lay: EngineLayer, outputs: int, accelerator: Any = None) -> dict[str, float]:
    """The energy model's PSUM (on-chip, no spill) and RAE terms of ``outputs`` output elements of
    ``lay``: per output ``n - 1`` stored writes and reads (:func:`apsq.hw.dataflow.psum_plan`)."""
    import numpy as np

    from apsq.hw.accelerator import default_accelerator
    from apsq.hw.dataflow import psum_plan

    acc = accelerator or default_accelerator()
    plan = psum_plan(np.array([lay.n_steps]), "apsq", lay.gs, lay.psum_bits, acc.acc_bits)
    writes, reads = float(plan.writes[0]) * outputs, float(plan.reads[0]) * outputs
    buf, rae = acc.buffers.psum, acc.rae
    return {
        "stored_writes": writes,
        "reads": reads,
        "psum_pj": (writes * buf.write_pj_per_bit + reads * buf.read_pj_per_bit) * lay.psum_bits,
        "rae_pj": writes * rae.requant_pj + reads * rae.accumulate_pj,
    }


def energy_side_by_side(layers: list[tuple[EngineLayer, list[tuple[int, int, int]], Activity]], dataflow: str = "ws",
                        accelerator: Any = None) -> dict[str, Any]:
    """Counted activity beside :func:`apsq.hw.energy.evaluate` on the same GEMMs.

    ``layers``: ``(program layer, [(M rows, K, N) per call], counted activity of all its calls)``. Each
    call becomes one :class:`apsq.hw.workloads.Layer` (``M x K x N``, the layer's gs) priced in
    ``mode='apsq'`` under the untiled ``dataflow`` schedule; per program layer the counted stored writes
    / reads are compared with the model's ``stored_psums`` / PSUM reads (on chip + spilled), and both
    are priced. The model prices spilled PSUMs at DRAM energies, the counts price every access at the
    PSUM buffer's (the engine's banks): the pJ agree where nothing spills.
    """
    import numpy as np

    from apsq.hw.accelerator import default_accelerator
    from apsq.hw.dataflow import OPERANDS
    from apsq.hw.energy import evaluate
    from apsq.hw.workloads import Layer, Workload

    acc = accelerator or default_accelerator()
    gemms, owner = [], []
    for li, (lay, shapes, _) in enumerate(layers):
        for ci, (m, k, n) in enumerate(shapes):
            attn = lay.op.startswith("attention") or lay.op == "matmul"
            gemms.append(Layer(f"{lay.name}#{ci}", "matmul" if attn else "linear", m, k, n, w_is_weight=not attn,
                               gs=lay.gs))
            owner.append(li)
    first = layers[0][0]
    if len({lay.tile for lay, _, _ in layers}) > 1:
        raise APSQError("the energy model prices one tile depth (pe_array.rows); this program's layers use several")
    if acc.pe_array.rows != first.tile:  # the same accumulation: an array as deep as the program's tile
        acc = acc.model_copy(update={"pe_array": acc.pe_array.model_copy(update={"rows": first.tile}),
                                     "name": f"{acc.name} (rows={first.tile})"})
    rep = evaluate(Workload("deployed program", tuple(gemms)), dataflow, "apsq", psum_bits=first.psum_bits,
                   accelerator=acc, tile=first.tile)
    ps = OPERANDS.index("psum")
    writes = np.bincount(owner, rep.counts.stored_psums, len(layers))
    reads = np.bincount(owner, rep.counts.reads[:, ps, 1:].sum(axis=1), len(layers))
    psum_pj = np.bincount(owner, rep.energy_pj[:, ps, 1:].sum(axis=1), len(layers))
    rae_pj = np.bincount(owner, rep.rae_pj, len(layers))
    out = []
    for li, (lay, _, act) in enumerate(layers):
        priced = price(act, lay.psum_bits, acc)
        out.append({"index": lay.index, "name": lay.name, "gs": lay.gs, "counted": act.to_dict(),
                    "model_stored_writes": float(writes[li]), "model_reads": float(reads[li]),
                    "writes_equal": act.stored_writes == round(writes[li]), "reads_equal": act.reads == round(reads[li]),
                    "counted_psum_pj": priced["psum_pj"], "model_psum_pj": float(psum_pj[li]),
                    "counted_rae_pj": priced["rae_pj"], "model_rae_pj": float(rae_pj[li]),
                    "abstracted_pj": priced["abstracted_pj"]})
    total = {k: sum(r[k] for r in out) for k in ("counted_psum_pj", "model_psum_pj", "counted_rae_pj", "model_rae_pj",
                                                 "abstracted_pj")}
    return {"dataflow": dataflow, "schedule": "untiled", "accelerator": acc.name, "layers": out, "total": total,
            "all_counts_equal": all(r["writes_equal"] and r["reads_equal"] for r in out),
            "psum_spill_max": float(np.max(rep.counts.psum_spill)) if gemms else 0.0,
            "abstracted_terms": ["final_writes: the last step's A written back to its bank (the model sends the result "
                                 "to the output buffer)", "final_requantizations: the output code's requantization",
                                 "padding_lane_steps: lanes of a layer's last block that carry no output"]}
