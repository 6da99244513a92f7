"""``results/segmentation/run.sh`` reruns the seeds its committed JSON holds (trial-vis).

The study's tables (``results/segmentation/README.md``, ``docs/segmentation.md``, and through
``apsq paper table1`` the vision rows of Table I) are the mean of the seeds in ``segmentation.json``;
``run.sh`` once ran seeds 0 and 1 only, so rerunning it as documented rewrote the JSON with two seeds
and changed Table I.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "results" / "segmentation"


def _seed_lists(script: str) -> list[list[int]]:
    """The ``--seeds a b c`` lists of every command line of ``script`` (comments skipped)."""
    out = []
    for line in script.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for m in re.finditer(r"--seeds((?:\s+\d+)+)", line):
            out.append([int(s) for s in m.group(1).split()])
    return out


def test_run_sh_reruns_the_committed_seeds() -> None:
    committed = json.loads((STUDY / "segmentation.json").read_text())["seeds"]
    per_class = json.loads((STUDY / "fp32_per_class.json").read_text())["command"]
    lists = _seed_lists((STUDY / "run.sh").read_text())
    assert len(lists) == 3, lists  # train, collect, per-class
    assert all(seeds == committed for seeds in lists), (lists, committed)
    assert _seed_lists(per_class) == [committed]


def test_collect_without_finished_runs_leaves_the_committed_json(tmp_path):
    """``run_segmentation.py --collect`` over a root with no finished run wrote a JSON of empty tables over
    the committed one (trial-vis: run.sh's collect line run alone, or after an interrupted first line)."""
    import subprocess
    import sys

    out = tmp_path / "segmentation.json"
    out.write_text("committed\n")
    proc = subprocess.run([sys.executable, str(STUDY / "run_segmentation.py"), "--collect", "--models", "segformer-b0",
                           "--root", str(tmp_path / "no_runs"), "--json", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode != 0 and "no finished run under" in proc.stderr, proc.stderr[-2000:]
    assert out.read_text() == "committed\n" and not out.with_suffix(".png").exists()
