"""What the engine did, per layer: PSUM bank reads / writes per bank, requantizations, closings.

The counts come from the RAE itself: with an RTL backend, :attr:`apsq.hw.rae.RunStats.activity`
(counted from the engine's bank-enable, requantize and accumulate ports); on the golden path,
:func:`apsq.hw.rae.expected_activity` (the same count predicted from the schedule, tested equal to
what every backend measures). :class:`LayerActivity` turns the engine's word counts (one word = one
code per lane) into codes and separates the padding lanes of a layer's last block. :func:`price`
prices them with the accelerator's per-access energies and :func:`energy_side_by_side` sets them
beside :func:`apsq.hw.energy.evaluate` on the same GEMMs (``apsq deploy run --energy``).

Terms the analytical model abstracts away (reported separately, with their size):

* ``padding_codes``: lanes of a layer's last block that carry no output still step, are written,
  read and requantized (zero tile sums) -- ``n - 1`` reads and writes and ``n`` requantizations each;
* ``output_requantizations``: the last step's requantization produces the output code, which the
  model charges to the output path, not as a stored PSUM -- one per output element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from apsq.deploy.program import EngineLayer, EngineSpec
from apsq.errors import APSQError

__all__ = ["LayerActivity", "engine_activity", "price", "energy_side_by_side"]


@dataclass
class LayerActivity:
    """Counts of one layer (all its calls), in codes (one per lane and word)."""

    outputs: int = 0
    lane_steps: int = 0
    bank_writes: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    bank_reads: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    requantizations: int = 0
    closings: int = 0
    padding_codes: int = 0
    padding_reads: int = 0
    padding_writes: int = 0
    padding_requantizations: int = 0
    source: str = ""

    @property
    def stored_writes(self) -> int:
        """Codes written for a later step, of real outputs (the analytical model's stored PSUMs)."""
        return sum(self.bank_writes) - self.padding_writes

    @property
    def reads(self) -> int:
        """Codes read back (aligned and added), of real outputs."""
        return sum(self.bank_reads) - self.padding_reads

    @property
    def output_requantizations(self) -> int:
        return self.outputs

    @property
    def stored_requantizations(self) -> int:
        """Requantizations that produced a stored code (all but each output's last)."""
        return self.requantizations - self.padding_requantizations - self.outputs

    def add(self, other: LayerActivity) -> None:
        for k, v in other.__dict__.items():
            if k == "source":
                self.source = v if self.source in ("", v) else "mixed"
                continue
            cur = getattr(self, k)
            setattr(self, k, [a + b for a, b in zip(cur, v, strict=True)] if isinstance(v, list) else cur + v)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "stored_writes": self.stored_writes, "reads": self.reads,
                "stored_requantizations": self.stored_requantizations}


def engine_activity(n: int, gs: int, outputs: int, engine: EngineSpec, measured: Any = None) -> LayerActivity:
    """One layer call of ``n`` steps and ``outputs`` output elements: ``measured`` (the RTL's
    :class:`apsq.hw.rae.Activity` of this call) or, without it, :func:`apsq.hw.rae.expected_activity`."""
    from apsq.hw.rae import LayerJob, RAEParams, expected_activity

    lanes = engine.lanes
    source = "schedule" if measured is None else "rtl"
    if measured is None:
        params = RAEParams(lanes=lanes, depth=engine.depth, bits=engine.bits, tile_bits=engine.tile_bits,
                           frac_bits=engine.frac_bits, shift_bits=engine.shift_bits,
                           lane_exponents=engine.lane_exponents)
        shape_only = np.broadcast_to(np.zeros((), dtype=np.int64), (n, outputs))  # the schedule needs the shape only
        measured = expected_activity([LayerJob(shape_only, np.zeros(n, dtype=np.int64), gs)], params)
    pad = math.ceil(outputs / lanes) * lanes - outputs
    return LayerActivity(
        outputs=outputs, lane_steps=n * outputs,
        bank_writes=[w * lanes for w in measured.bank_writes], bank_reads=[r * lanes for r in measured.bank_reads],
        requantizations=measured.requantizations * lanes, closings=measured.accumulations * lanes,
        padding_codes=pad, padding_reads=pad * (n - 1), padding_writes=pad * (n - 1), padding_requantizations=pad * n,
        source=source,
    )


def price(act: LayerActivity, psum_bits: int, accelerator: Any = None) -> dict[str, float]:
    """pJ of the counted activity with the accelerator's per-access energies, in the analytical
    model's terms (stored writes and reads of the PSUM buffer, one requantization per stored code, one
    accumulation per code read back) and, apart, the abstracted terms (padding lanes, the output's
    requantization)."""
    from apsq.hw.accelerator import default_accelerator

    acc = accelerator or default_accelerator()
    buf, rae = acc.buffers.psum, acc.rae
    return {
        "psum_pj": (act.stored_writes * buf.write_pj_per_bit + act.reads * buf.read_pj_per_bit) * psum_bits,
        "rae_pj": act.stored_requantizations * rae.requant_pj + act.reads * rae.accumulate_pj,
        "abstracted_pj": (act.padding_writes * buf.write_pj_per_bit + act.padding_reads * buf.read_pj_per_bit) * psum_bits
        + (act.padding_requantizations + act.output_requantizations) * rae.requant_pj
        + act.padding_reads * rae.accumulate_pj,
    }


def energy_side_by_side(layers: list[tuple[EngineLayer, list[tuple[int, int, int]], LayerActivity]], dataflow: str = "ws",
                        accelerator: Any = None) -> dict[str, Any]:
    """Counted activity beside :func:`apsq.hw.energy.evaluate` on the same GEMMs.

    ``layers``: ``(program layer, [(M rows, K, N) per call], counted activity of all its calls)``. Each
    call becomes one :class:`apsq.hw.workloads.Layer` (``M x K x N``, the layer's gs) priced in
    ``mode='apsq'`` under the untiled ``dataflow`` schedule; per program layer the counted stored writes
    / reads are compared with the model's ``stored_psums`` / PSUM reads (on chip + spilled), and both
    are priced. The model prices spilled PSUMs at DRAM energies, the counts price every access at the
    PSUM buffer's (the engine's banks): the pJ agree where nothing spills.
    """
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
                    "source": act.source,
                    "counted_psum_pj": priced["psum_pj"], "model_psum_pj": float(psum_pj[li]),
                    "counted_rae_pj": priced["rae_pj"], "model_rae_pj": float(rae_pj[li]),
                    "abstracted_pj": priced["abstracted_pj"]})
    total = {k: sum(r[k] for r in out) for k in ("counted_psum_pj", "model_psum_pj", "counted_rae_pj", "model_rae_pj",
                                                 "abstracted_pj")}
    return {"dataflow": dataflow, "schedule": "untiled", "accelerator": acc.name, "layers": out, "total": total,
            "all_counts_equal": all(r["writes_equal"] and r["reads_equal"] for r in out),
            "psum_spill_max": float(np.max(rep.counts.psum_spill)) if gemms else 0.0,
            "abstracted_terms": ["padding lanes of a layer's last block (n - 1 reads and writes, n requantizations "
                                 "each)", "the output code's requantization (one per output)"]}
