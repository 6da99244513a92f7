"""INT32 -> INT8 stored PSUMs under ZigZag's own mapping search, beside the fixed order and apsq's mapper.

docs/energy-results.md said that ZigZag's own mapping search "gives the same regime" as apsq's mapper
(a few percent of total energy) without a command behind it. This measures it on BERT-Base (128 tokens)
with the machines of the agreement study (WS on ``zigzag-tpu-like``, IS on ``zigzag-tpu-like-is``) and on
apsq's default accelerator (``apsq-28nm-int8``, the one docs/energy-results.md's tiled figures use). Per
distinct layer shape and per network, the total-energy reduction of INT8 over INT32 stored PSUMs (gs = 1):

- ``zigzag_search``: ZigZag chooses spatial mapping and temporal order itself, separately for each PSUM
  width (``evaluate_zigzag(..., mapping="search")``; the dataflow then only links the operands);
- ``zigzag_temporal``: the dataflow's spatial unrolling, the temporal order searched (``mapping="temporal"``);
- ``zigzag_fixed``: apsq's fixed untiled order (what ``agreement.json`` holds);
- ``apsq_tiled`` / ``apsq_untiled``: apsq's model on the same accelerator with its mapper / fixed order.

Writes ``mapping_search.json`` beside this file.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python results/energy_zigzag/run_mapping_search.py
"""

from __future__ import annotations

import json
import platform
import time
import warnings
from pathlib import Path

from apsq.hw.accelerator import load_accelerator
from apsq.hw.energy import compare
from apsq.hw.engine_zigzag import evaluate_zigzag
from apsq.hw.workloads import builtin_workload
from apsq.machine import cpu_label, load_average

OUT = Path(__file__).resolve().parent / "mapping_search.json"


def main() -> None:
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    w = builtin_workload("bert-base", seq_len=128)
    nets = []
    for df, name in (("ws", "zigzag-tpu-like"), ("is", "zigzag-tpu-like-is"), ("ws", "default"), ("is", "default")):
        acc = load_accelerator(name)
        zs = evaluate_zigzag(w, df, 8, acc, mapping="search")
        zt = evaluate_zigzag(w, df, 8, acc, mapping="temporal")
        zf = evaluate_zigzag(w, df, 8, acc)
        tiled = compare(w, df, 1, 8, acc, schedule="tiled")
        untiled = compare(w, df, 1, 8, acc)
        layers, seen = [], set()
        for i, ly in enumerate(w.layers):
            if (ly.m, ly.k, ly.n, ly.count) in seen:
                continue
            seen.add((ly.m, ly.k, ly.n, ly.count))
            layers.append({"name": ly.name, "m": ly.m, "k": ly.k, "n": ly.n, "count": ly.count,
                           "zigzag_search": float(zs.layer_reduction[i]),
                           "zigzag_temporal": float(zt.layer_reduction[i]), "zigzag_fixed": float(zf.layer_reduction[i]),
                           "apsq_tiled": float(tiled.layer_reduction[i]),
                           "apsq_untiled": float(untiled.layer_reduction[i]),
                           "zigzag_search_pj": [zs.baseline[i].total_pj, zs.quantized[i].total_pj],
                           "zigzag_temporal_pj": [zt.baseline[i].total_pj, zt.quantized[i].total_pj],
                           "zigzag_fixed_pj": [zf.baseline[i].total_pj, zf.quantized[i].total_pj],
                           "apsq_tiled_pj": [float(tiled.baseline.layer_total_pj[i]), float(tiled.apsq.layer_total_pj[i])]})
        nets.append({"workload": "bert-base", "options": {"seq_len": 128}, "dataflow": df, "accelerator": acc.name,
                     "zigzag_search": zs.reduction, "zigzag_temporal": zt.reduction, "zigzag_fixed": zf.reduction, "apsq_tiled": tiled.reduction,
                     "apsq_untiled": untiled.reduction,
                     "zigzag_search_pj": [zs.baseline_pj, zs.baseline_pj * (1 - zs.reduction)],
                     "zigzag_temporal_pj": [zt.baseline_pj, zt.baseline_pj * (1 - zt.reduction)],
                     "zigzag_fixed_pj": [zf.baseline_pj, zf.baseline_pj * (1 - zf.reduction)],
                     "apsq_tiled_pj": [tiled.baseline.total_pj, tiled.apsq.total_pj],
                     "distinct_layers": layers})
        big = [x["zigzag_search"] for x in layers if x["m"] * x["k"] * x["n"] * x["count"] >= 1 << 20]
        print(f"bert-base {df.upper()} on {acc.name}: ZigZag search {100 * zs.reduction:.2f} % "
              f"(layers of >= 1 M MACs {100 * min(big):.1f}-{100 * max(big):.1f} %), temporal search "
              f"{100 * zt.reduction:.2f} %, ZigZag fixed "
              f"{100 * zf.reduction:.2f} %, apsq tiled {100 * tiled.reduction:.2f} %, "
              f"untiled {100 * untiled.reduction:.2f} %", flush=True)
    OUT.write_text(json.dumps({
        "command": "HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python results/energy_zigzag/run_mapping_search.py",
        "zigzag": "zigzag-dse 3.9.1", "settings": {"baseline_bits": 32, "psum_bits": 8, "gs": 1},
        "machine": f"{cpu_label()}, python {platform.python_version()}", "load_average": load_average(),
        "networks": nets, "wall_s": time.perf_counter() - t0}, indent=2) + "\n")
    print(f"wrote {OUT} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
