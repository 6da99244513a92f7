"""Sub-8-bit: W4A4 and W4A8 with APSQ PSUMs at 8, 6 and 4 bits (and W8A8 / exact-PSUM references).

Energy uses an accelerator whose operand widths are the variant's (``act_bits``/``weight_bits``;
MAC energy per operation is kept at the INT8 value, a conservative choice), stored PSUMs at
``psum_bits``; savings are quoted against the same-precision INT32-PSUM baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from apsq.hw.accelerator import Accelerator, default_accelerator
from apsq.hw.energy import evaluate
from apsq.hw.workloads.base import Workload
from apsq.train.config import APSQSection

WA = ((4, 4), (4, 8))
PSUM_BITS = (8, 6, 4)


def lowbit_variants(base: APSQSection, gs: int = 2, wa: Sequence[tuple[int, int]] = WA,
                    psum_bits: Sequence[int] = PSUM_BITS) -> dict[str, APSQSection]:
    """Named variants of the config's ``apsq`` settings ``base`` (its tile, exclusions, layer types kept):
    ``w8a8_none``, ``w8a8_apsq8``, and per (W, A): ``wWaA_none`` (exact PSUMs) and ``wWaA_apsqP`` for each
    PSUM width P (validated: a bad ``gs`` or width raises :class:`APSQError` naming it)."""
    keep = base.without("mode", "gs", "psum_bits", "weight_bits", "act_bits", "acc_bits", "overrides")
    out = {"w8a8_none": keep.variant(mode="none"),
           "w8a8_apsq8": keep.variant(mode="apsq", gs=gs, psum_bits=8)}
    for w, a in wa:
        out[f"w{w}a{a}_none"] = keep.variant(mode="none", weight_bits=w, act_bits=a)
        for p in psum_bits:
            out[f"w{w}a{a}_apsq{p}"] = keep.variant(mode="apsq", gs=gs, psum_bits=p, weight_bits=w, act_bits=a)
    return out


def accelerator_for(w_bits: int, a_bits: int, base: Accelerator | None = None) -> Accelerator:
    d = (base or default_accelerator()).model_dump()
    d["weight_bits"], d["act_bits"] = int(w_bits), int(a_bits)
    return Accelerator.from_dict(d, source=f"W{w_bits}A{a_bits} accelerator")


def variant_energy(workload: Workload, dataflow: str, v: APSQSection, base: Accelerator | None = None,
                   ref_uj: float | None = None, override_tile: bool = False) -> dict[str, Any]:
    """Energy (µJ) of variant ``v`` and its reduction vs the same-precision INT32 baseline (and vs
    ``ref_uj``, e.g. the W8A8 INT32 baseline). A ``tile`` the variant gives is checked against the array's
    rows (:func:`apsq.hw.energy.resolve_tile`; a mismatch warns unless ``override_tile``)."""
    acc = accelerator_for(v.weight_bits, v.act_bits, base)
    r = evaluate(workload, dataflow, v.mode, v.gs, v.psum_bits, acc, tile=v.model_dump().get("tile"),
                 override_tile=override_tile)
    b = evaluate(workload, dataflow, "none", 1, 8, acc)
    out = {"total_uj": r.total_pj / 1e6, "psum_uj": r.psum_pj / 1e6,
           "reduction_vs_same_precision_int32": 1 - r.total_pj / b.total_pj}
    if ref_uj:
        out["reduction_vs_w8a8_int32"] = 1 - r.total_pj / 1e6 / ref_uj
    return out
