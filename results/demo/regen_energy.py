"""Recompute ``demo.json``'s energy block on today's code and redraw ``demo.png`` (issue 27 item 5).

The energy block is what :func:`apsq.eval.demo.demo_run` computes after its variants: the demo's QAT
config (:func:`apsq.eval.demo.demo_configs`) with APSQ INT8 PSUMs, priced by
:func:`apsq.eval.sweep.energy_reductions` for the gs of its APSQ variants. It needs no training, so it
can be brought up to date when the accuracy rows (a full ``apsq demo`` run) cannot. The accuracy rows,
``seconds``, ``settings``, ``command`` and ``measured_on`` are left as the last full run wrote them;
``energy_regenerated`` records this script's command, commit, machine and load.

    python results/demo/regen_energy.py [results/demo]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from apsq.eval.demo import DEFAULT_VARIANTS, demo_configs
from apsq.eval.demo_report import plot_demo
from apsq.eval.sweep import energy_reductions
from apsq.machine import cpu_label, load_average
from apsq.train.config import parse_config


def main(folder: Path) -> None:
    cpu = cpu_label()
    path = folder / "demo.json"
    res = json.loads(path.read_text())
    load_before = load_average()
    t = time.time()
    _, qat = demo_configs(**{k: res["settings"][k] for k in ("max_len", "seed", "model") if k in res["settings"]})
    gs = sorted({g for _, mode, g in DEFAULT_VARIANTS if mode == "apsq"}) or [1]
    res["energy_reduction"] = energy_reductions(parse_config({**qat, "apsq": {"mode": "apsq", "psum_bits": 8}}), gs)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    res["energy_regenerated"] = {
        "command": "python results/demo/regen_energy.py",
        "commit": commit,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)),
        "seconds": round(time.time() - t, 1),
        "machine": f"{os.cpu_count()}-core {cpu}, shared with other jobs (load_average_before)",
        "load_average_before": load_before,
        "what": "energy_reduction only (tiled schedule, untiled beside); the accuracy rows, seconds, settings "
                "and measured_on are the last full apsq demo run's",
    }
    plot_demo(res, folder / "demo.png")
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {path} and {folder / 'demo.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
