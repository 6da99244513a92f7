"""Join the seven ``apsq rae area --json`` reports of ``run.sh`` into ``results/rae/rae_area.json``.

Each ``apsq rae area`` run writes a list of reports; this keeps them in ``run.sh``'s order under
``reports`` and records the commands (``--json ...`` elided), the Yosys version, the liberty, the
commit, the machine and its load average when joined (right after the last synthesis).

    python results/rae/join_area.py runs/rae_area results/rae/rae_area.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from apsq.machine import cpu_label, load_average

RUNS = (("l4_d16", "--lanes 4 --depth 16 --banks macro"),
        ("l4_d16_lane_exponents", "--lanes 4 --depth 16 --banks macro --lane-exponents"),
        ("l32_d64", "--lanes 32 --depth 64 --banks macro"),
        ("l32_d64_lane_exponents", "--lanes 32 --depth 64 --banks macro --lane-exponents"),
        ("l4_d16_flops", "--lanes 4 --depth 16 --banks flops"),
        ("l8_d32", "--lanes 8 --depth 32 --banks macro"),
        ("l16_d64", "--lanes 16 --depth 64 --banks macro"))
"""``(file stem in the runs folder, the options of its apsq rae area command)``, in run.sh's order."""


def _out(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False,
                              cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return ""


def main(runs: Path, out: Path) -> None:
    cpu = cpu_label()
    reports = []
    for stem, _ in RUNS:
        reports += json.loads((runs / f"{stem}.json").read_text())
    yosys = _out("yosys", "-V")
    data = {
        "commands": [f"apsq rae area {opts} --json ..." for _, opts in RUNS],
        "yosys": yosys or "unknown",
        "liberty": "src/apsq/hw/rae/sky130hd_area.lib (SKY130 HD footprints, area only)",
        "commit": _out("git", "rev-parse", "--short", "HEAD"),
        "machine": f"shared {os.cpu_count()}-core {cpu}, loaded by other jobs (yosys_s are wall times under "
                   f"that load)",
        "load_average_at_join": load_average(),
        "reports": reports,
    }
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/rae_area"),
         Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).parent / "rae_area.json")
