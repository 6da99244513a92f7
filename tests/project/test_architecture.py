"""The layer contracts of docs/architecture.md hold (import-linter, configured in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_kept() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.fail("lint-imports is missing: install the dev extra (pip install -e '.[dev]')")
    r = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_cli_help_does_not_import_torch() -> None:
    """``apsq --help`` and the parsing of the command line need no torch (fast start-up): importing the app
    registers every group without torch, transformers, matplotlib or amaranth."""
    code = ("import sys, apsq, apsq.errors, apsq.cli.common, apsq.cli\n"
            "heavy = [m for m in ('torch', 'transformers', 'matplotlib', 'amaranth') if m in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
