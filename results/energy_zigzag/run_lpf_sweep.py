"""How ZigZag's search budget moves its INT32 and INT8 results on one layer (``lpf_sweep.json``).

``mapping_search.json`` runs ZigZag at its default loop-prime-factor limit (``lpf_limit = 6``: LOMA
merges the loop factors into at most six before it orders them). This reruns BERT-Base's FFN
up-projection (128 x 768 -> 3072) on ``apsq-28nm-int8`` under WS with ``lpf_limit`` 6..8 for the temporal
search and 6..7 for the full search, beside apsq's mapper, to show which figures are the search's budget.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python results/energy_zigzag/run_lpf_sweep.py
"""

from __future__ import annotations

import json
import platform
import time
import warnings
from pathlib import Path
from typing import Any

from apsq.hw import engine_zigzag
from apsq.hw.accelerator import load_accelerator
from apsq.hw.energy import compare
from apsq.hw.workloads import Workload, builtin_workload
from apsq.machine import cpu_label, load_average

OUT = Path(__file__).resolve().parent / "lpf_sweep.json"
RUNS = (("temporal", 6), ("temporal", 7), ("temporal", 8), ("search", 6), ("search", 7))


def main() -> None:
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    layer = next(ly for ly in builtin_workload("bert-base", seq_len=128).layers if (ly.k, ly.n) == (768, 3072))
    w = Workload(name="bert-base-ffn-up", layers=(layer,))
    acc = load_accelerator("default")
    api = engine_zigzag.require_zigzag()
    original = api.get_hardware_performance_zigzag
    tiled = compare(w, "ws", 1, 8, acc, schedule="tiled")
    rows: list[dict[str, Any]] = []
    try:
        for mapping, lpf in RUNS:
            def call(*args: Any, _lpf: int = lpf, **kwargs: Any) -> Any:
                return original(*args, **{**kwargs, "lpf_limit": _lpf})

            api.get_hardware_performance_zigzag = call
            t = time.perf_counter()
            z = engine_zigzag.evaluate_zigzag(w, "ws", 8, acc, mapping=mapping)
            quant = sum(ly.total_pj for ly in z.quantized)
            rows.append({"mapping": mapping, "lpf_limit": lpf, "int32_pj": z.baseline_pj, "int8_pj": quant,
                         "reduction": z.reduction, "wall_s": time.perf_counter() - t})
            print(f"{mapping} lpf_limit {lpf}: INT32 {z.baseline_pj / 1e9:.3f} INT8 {quant / 1e9:.3f} G pJ "
                  f"({100 * z.reduction:.1f} %)", flush=True)
    finally:
        api.get_hardware_performance_zigzag = original
    OUT.write_text(json.dumps({
        "command": "HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python results/energy_zigzag/run_lpf_sweep.py",
        "zigzag": "zigzag-dse 3.9.1", "layer": {"name": layer.name, "m": layer.m, "k": layer.k, "n": layer.n},
        "accelerator": acc.name, "dataflow": "ws",
        "apsq_tiled": {"int32_pj": tiled.baseline.total_pj, "int8_pj": tiled.apsq.total_pj,
                       "reduction": tiled.reduction},
        "runs": rows, "machine": f"{cpu_label()}, python {platform.python_version()}",
        "load_average": load_average(), "wall_s": time.perf_counter() - t0}, indent=2) + "\n")
    print(f"wrote {OUT} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
