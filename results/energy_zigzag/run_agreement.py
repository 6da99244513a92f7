"""Agreement of apsq's energy model with ZigZag (zigzag-dse 3.9.1) on BERT-Base and Segformer-B0.

Same layers (traced built-ins: BERT-Base at 128 tokens, Segformer-B0 at 512x512), same accelerator,
same fixed IS / WS loop orders (apsq's untiled schedule), INT32 -> INT8 stored PSUMs at gs = 1. WS runs
on ``zigzag-tpu-like`` (ZigZag's tpu_like energies and sizes, output register widened to 32 bits), IS on
its input-stationary twin ``zigzag-tpu-like-is`` (stationary inputs in the per-PE register, weights from
the shared SRAM; issue 23 item 5). IS on ``zigzag-tpu-like`` itself (a WS machine with no weight SRAM:
every input tile re-reads the weights from DRAM) is kept as ``machine: "ws-machine"`` for the record:
it is what this study measured before. For every layer and network: the total-energy reduction by
ZigZag and by apsq under each spill rule, and the difference in percentage points. Writes
``agreement.json`` beside this file: per network ``accelerator``, ``zigzag_reduction`` and
``apsq[<spill>]``; per distinct layer shape ``zigzag_dse`` (ZigZag's reduction) and ``apsq_<spill>``.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python results/energy_zigzag/run_agreement.py
"""

from __future__ import annotations

import json
import platform
import time
import warnings
from pathlib import Path

from apsq.hw.accelerator import load_accelerator
from apsq.hw.dataflow.common import SPILL_RULES
from apsq.hw.energy import compare
from apsq.hw.engine_zigzag import evaluate_zigzag
from apsq.hw.workloads import builtin_workload
from apsq.machine import cpu_label

OUT = Path(__file__).resolve().parent / "agreement.json"
TOL_PP = 5.0


def main() -> None:
    warnings.simplefilter("ignore")
    machines = {"ws": load_accelerator("zigzag-tpu-like"), "is": load_accelerator("zigzag-tpu-like-is")}
    result: dict = {
        "command": "HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python results/energy_zigzag/run_agreement.py",
        "zigzag": "zigzag-dse 3.9.1",
        "accelerator": "zigzag-tpu-like (src/apsq/accelerators/zigzag_tpu_like.yaml)",
        "settings": {"baseline_bits": 32, "psum_bits": 8, "gs": 1, "schedule": "untiled (fixed IS/WS orders)"},
        "machine": f"{cpu_label()}, python {platform.python_version()}",
        "tolerance_pp": TOL_PP,
        "networks": [],
    }
    t0 = time.perf_counter()
    for name, opts in (("bert-base", {"seq_len": 128}), ("segformer-b0", {"image_size": 512})):
        w = builtin_workload(name, **opts)
        for df, machine in (("ws", "ws"), ("is", "is"), ("is", "ws")):
            acc = machines[machine]
            z = evaluate_zigzag(w, df, 8, acc)
            entry = {"workload": name, "options": opts, "dataflow": df, "accelerator": acc.name,
                     "machine": "own" if machine == df else "ws-machine", "zigzag_reduction": z.reduction,
                     "zigzag_baseline_pj": z.baseline_pj, "zigzag_apsq_pj": z.quantized_pj, "apsq": {}}
            layers = {}
            for spill in SPILL_RULES:
                c = compare(w, df, 1, 8, acc, spill=spill)
                diffs = 100 * (c.layer_reduction - z.layer_reduction)
                for ly, d, ours, zz in zip(w.layers, diffs, c.layer_reduction, z.layer_reduction):
                    key = (ly.m, ly.k, ly.n, ly.count)
                    row = layers.setdefault(key, {"name": ly.name, "m": ly.m, "k": ly.k, "n": ly.n,
                                                  "count": ly.count, "zigzag_dse": float(zz), "instances": 0})
                    row[f"apsq_{spill}"] = float(ours)
                row_count = {}
                for ly in w.layers:
                    row_count[(ly.m, ly.k, ly.n, ly.count)] = row_count.get((ly.m, ly.k, ly.n, ly.count), 0) + 1
                worst = float(max(abs(d) for d in diffs))
                entry["apsq"][spill] = {
                    "reduction": c.reduction,
                    "difference_pp": 100 * (c.reduction - z.reduction),
                    "worst_layer_difference_pp": worst,
                    "layers_within_tolerance": int(sum(abs(d) <= TOL_PP for d in diffs)),
                    "layers": len(w.layers),
                }
            for key, n in row_count.items():
                layers[key]["instances"] = n
            entry["distinct_layers"] = list(layers.values())
            result["networks"].append(entry)
            print(f"{name} {df.upper()} on {acc.name}: ZigZag {100 * z.reduction:.2f} %; apsq " + ", ".join(
                f"{s} {100 * v['reduction']:.2f} % ({v['difference_pp']:+.2f} pp, worst layer "
                f"{v['worst_layer_difference_pp']:.2f} pp, {v['layers_within_tolerance']}/{v['layers']} within "
                f"±{TOL_PP:g} pp)" for s, v in entry["apsq"].items()), flush=True)
    result["wall_s"] = time.perf_counter() - t0
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT} in {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
