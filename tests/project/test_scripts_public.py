"""Every script under ``results/`` and ``benchmarks/`` compiles and imports only public apsq names (issue 27
item 5: scripts imported ``apsq.train.loop._inputs``, so a private rename would break a committed result's
recipe silently)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p for top in ("results", "benchmarks") for p in (ROOT / top).rglob("*.py"))


def test_there_are_scripts() -> None:
    assert len(SCRIPTS) > 10


@pytest.mark.parametrize("path", SCRIPTS, ids=[str(p.relative_to(ROOT)) for p in SCRIPTS])
def test_script_compiles_and_uses_public_names(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))  # a syntax error fails here
    compile(tree, str(path), "exec")
    private = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("apsq"):
            parts = (node.module or "").split(".")
            private += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            private += [node.module] if any(p.startswith("_") for p in parts) else []
        elif isinstance(node, ast.Import):
            private += [a.name for a in node.names if a.name.startswith("apsq") and
                        any(p.startswith("_") for p in a.name.split("."))]
    assert not private, f"{path.relative_to(ROOT)} imports private apsq names: {private}"
