"""Our energy model at the paper's settings: total / PSUM-only / on-chip savings, untiled and tiled.

Default accelerator (``accel_28nm_int8.yaml``), INT32 -> INT8 stored PSUMs, APSQ gs = 1..4, IS / WS with
OS beside; plus the PSUM-buffer and DRAM sensitivity (16 KiB .. 1 MiB, the DRAM presets) at gs = 2.
Writes ``paper_settings.json`` beside this file; docs/energy-results.md quotes it.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python results/energy_paper/run_paper_settings.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from apsq.hw.accelerator import (
    DRAM_PRESETS,
    Accelerator,
    default_accelerator,
    with_dram,
)
from apsq.hw.energy import compare, evaluate
from apsq.hw.workloads import builtin_workload

OUT = Path(__file__).resolve().parent / "paper_settings.json"
SETTINGS = [
    ("bert-base", {"seq_len": 128}),
    ("segformer-b0", {"image_size": 512}),
    ("efficientvit-b1", {"image_size": 512}),
    ("llama2-7b", {"phase": "decode", "context": 2048}),
    ("llama2-7b", {"phase": "prefill", "seq_len": 512}),
    ("llama2-7b", {"phase": "prefill", "seq_len": 2048}),
]


def _psum_buffer(kib: float) -> Accelerator:
    d = default_accelerator().model_dump()
    d["buffers"]["psum"]["capacity_kib"] = kib
    return Accelerator.from_dict(d)


def _point(w, df, gs, acc, schedule):  # noqa: ANN001, ANN202
    c = compare(w, df, gs, 8, acc, schedule=schedule)
    return {"reduction": c.reduction, "psum_reduction": c.psum_reduction, "on_chip_reduction": c.on_chip_reduction,
            "psum_ratio": (c.baseline.psum_pj / c.apsq.psum_pj) if c.apsq.psum_pj > 0 else None,
            "total_ratio": c.baseline.total_pj / c.apsq.total_pj,
            "on_chip_ratio": c.baseline.on_chip_pj / c.apsq.on_chip_pj,
            "psum_share_baseline": c.psum_share_baseline, "baseline_pj": c.baseline.total_pj,
            "apsq_pj": c.apsq.total_pj, "baseline_spills": c.baseline.psum_spills, "apsq_spills": c.apsq.psum_spills,
            "baseline_weight_dram_share":
                c.baseline.breakdown()["by_operand_level"]["weight"]["dram"] / c.baseline.total_pj}


def main() -> None:
    t0 = time.perf_counter()
    rows = []
    for name, opts in SETTINGS:
        w = builtin_workload(name, **opts)
        for schedule in ("untiled", "tiled"):
            os_pj = evaluate(w, "os", "none", 1, 8, schedule=schedule).total_pj
            for df in ("is", "ws"):
                per_gs = {gs: _point(w, df, gs, None, schedule) for gs in (1, 2, 3, 4)}
                best = max(per_gs, key=lambda g: per_gs[g]["reduction"])
                rows.append({"model": name, "options": opts, "dataflow": df, "schedule": schedule, "os_pj": os_pj,
                             "best_gs": best, "gs": {str(g): v for g, v in per_gs.items()}})
                b = per_gs[best]
                print(f"{name} {opts} {df.upper()} {schedule}: best gs {best}: total {100 * b['reduction']:.1f} %, "
                      f"PSUM {100 * b['psum_reduction']:.1f} %, on-chip {100 * b['on_chip_reduction']:.1f} %", flush=True)
    sens = []
    for name, opts in SETTINGS[:4]:
        w = builtin_workload(name, **opts)
        for df in ("is", "ws"):
            for schedule in ("untiled", "tiled"):
                row = {"model": name, "options": opts, "dataflow": df, "schedule": schedule, "psum_kib": {}, "dram": {}}
                for kib in (16, 64, 256, 1024):
                    row["psum_kib"][str(kib)] = _point(w, df, 2, _psum_buffer(kib), schedule)["reduction"]
                for preset in DRAM_PRESETS:
                    row["dram"][preset] = _point(w, df, 2, with_dram(default_accelerator(), preset), schedule)["reduction"]
                sens.append(row)
    OUT.write_text(json.dumps({"command": "HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python "
                                          "results/energy_paper/run_paper_settings.py",
                               "accelerator": "apsq-28nm-int8 (src/apsq/accelerators/accel_28nm_int8.yaml)",
                               "settings": rows, "sensitivity_gs2": sens,
                               "wall_s": time.perf_counter() - t0}, indent=2) + "\n")
    print(f"wrote {OUT} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
