"""How wide must the baseline's stored PSUMs be? Energy (and accuracy) at 16/24/32 bits and exact width.

An INT8 x INT8 product needs 16 bits (signed, incl. the -128·-128 corner) and a K-term sum grows by
``ceil(log2 K)`` bits, so ``16 + ceil(log2 K)`` per layer is the narrowest width that can never
overflow ("exact"). A 32-bit baseline (the paper's) over-provisions most layers; 16 and 24 bits
saturate on long reductions (accuracy: :class:`apsq.APSQConfig` ``mode="none", acc_bits=B``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from apsq.errors import check_choice
from apsq.hw.accelerator import Accelerator, default_accelerator
from apsq.hw.dataflow import DATAFLOWS
from apsq.hw.energy import evaluate
from apsq.hw.workloads import BUILTIN_WORKLOADS, builtin_workload
from apsq.hw.workloads.base import Workload

BASELINES: tuple[int | str, ...] = (16, 24, 32, "exact")


def exact_bits(workload: Workload, act_bits: int = 8, weight_bits: int = 8) -> np.ndarray:
    """Per-layer overflow-free accumulator width ``act_bits + weight_bits + ceil(log2 K)`` (bits)."""
    k = workload.arrays["k"]
    return np.array([act_bits + weight_bits + math.ceil(math.log2(int(x))) for x in k], dtype=np.int64)


def baseline_energy(workload: Workload, dataflow: str, baselines: Sequence[int | str] = BASELINES,
                    gs_values: Sequence[int] = (1, 2, 3, 4), psum_bits: int = 8,
                    accelerator: Accelerator | None = None) -> dict[str, Any]:
    """Energy (µJ) of each baseline width and of APSQ at each gs; APSQ's saving vs every baseline."""
    check_choice("dataflow", dataflow, tuple(DATAFLOWS))
    acc = accelerator or default_accelerator()
    ex = exact_bits(workload, acc.act_bits, acc.weight_bits)
    base: dict[str, dict[str, Any]] = {}
    for b in baselines:
        bits = ex if b == "exact" else int(b)
        r = evaluate(workload, dataflow, "none", 1, psum_bits, acc, baseline_bits=bits)
        base[str(b)] = {"total_uj": r.total_pj / 1e6, "psum_uj": r.psum_pj / 1e6, "spills": r.psum_spills}
    apsq: dict[str, dict[str, Any]] = {}
    for g in gs_values:
        r = evaluate(workload, dataflow, "apsq", int(g), psum_bits, acc)
        apsq[str(g)] = {
            "total_uj": r.total_pj / 1e6,
            "psum_uj": r.psum_pj / 1e6,
            "spills": r.psum_spills,
            "reduction_vs": {k: 1 - r.total_pj / 1e6 / v["total_uj"] for k, v in base.items()},
            "psum_reduction_vs": {k: (1 - r.psum_pj / 1e6 / v["psum_uj"]) if v["psum_uj"] > 0 else 0.0
                                  for k, v in base.items()},
        }
    return {
        "workload": workload.name,
        "dataflow": dataflow,
        "psum_bits": psum_bits,
        "exact_bits": {"min": int(ex.min()), "max": int(ex.max()),
                       "macs_weighted_mean": float((ex * workload.arrays["m"] * workload.arrays["k"]
                                                    * workload.arrays["n"] * workload.arrays["count"]).sum()
                                                   / workload.macs)},
        "baseline": base,
        "apsq": apsq,
    }


def baseline_study(models: Sequence[str] = tuple(BUILTIN_WORKLOADS), dataflows: Sequence[str] = ("is", "ws"),
                   accelerator: Accelerator | None = None) -> list[dict[str, Any]]:
    """:func:`baseline_energy` for each built-in workload (default options) and dataflow."""
    out = []
    for m in models:
        check_choice("model", m, tuple(BUILTIN_WORKLOADS))
        w = builtin_workload(m)
        for df in dataflows:
            out.append(baseline_energy(w, df, accelerator=accelerator))
    return out
