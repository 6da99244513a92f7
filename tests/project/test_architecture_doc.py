"""``docs/architecture.md`` names only files and folders that exist (issue 27 item 5: it named a ``demo``
layer and a ``demo.py`` that had moved). The "Files" block is a tree: a name in the first column is a
file or folder under the folder above it (by indentation); every ``*.py`` named anywhere in the doc exists
somewhere under ``src/``, ``tests/`` or ``benchmarks/``; every layer of the "Layers" block is a package."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "architecture.md").read_text()
NAME_COLUMN = 20  # names start left of this column; descriptions (and their continuations) right of it


def _block(heading: str) -> str:
    part = DOC.split(heading, 1)[1]
    return part.split("```", 2)[1]


def _tree_paths() -> list[Path]:
    paths: list[Path] = []
    stack: list[tuple[int, Path]] = []
    for line in _block("## Files").splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent >= NAME_COLUMN:
            continue
        cell = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        names = [n for n in re.split(r",\s*|\s+\+\s+|\s+", cell) if n and "<" not in n]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1] if stack else ROOT
        for name in names:
            paths.append(parent / name.rstrip("/"))
        if len(names) == 1 and names[0].endswith("/"):
            stack.append((indent, parent / names[0].rstrip("/")))
    return paths


def test_every_file_in_the_tree_exists() -> None:
    paths = _tree_paths()
    assert len(paths) > 30 and ROOT / "src" / "apsq" / "hw" / "rae" in paths
    missing = [str(p.relative_to(ROOT)) for p in paths if not p.exists()]
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_every_python_file_named_exists() -> None:
    have = {p.name for top in ("src", "tests", "benchmarks", "results") for p in (ROOT / top).rglob("*.py")}
    named = set(re.findall(r"\b([a-z_0-9]+\.py)\b", DOC))
    assert named and not sorted(named - have), f"docs/architecture.md names missing modules: {sorted(named - have)}"


def _doc_layers() -> list[str]:
    rows = [line for line in _block("## Layers").splitlines() if line.strip() and not line.startswith(" ")]
    return [re.split(r"\s{2,}", row.strip())[0].replace(" ", "") for row in rows]


def test_the_layers_are_the_enforced_contract() -> None:
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    enforced = next(c["layers"] for c in contracts if c.get("type") == "layers" and "apsq.cli" in c["layers"])
    assert _doc_layers() == [layer.replace("apsq.", "").replace(" ", "") for layer in enforced]


def test_every_layer_is_a_package() -> None:
    layers = _doc_layers()
    names = [n for layer in layers for n in layer.split("|") if n]
    missing = [n for n in names if not ((ROOT / "src" / "apsq" / n).is_dir() or (ROOT / "src" / "apsq" / f"{n}.py").is_file())]
    assert len(names) > 10 and not missing, f"layers that are no package or module of apsq: {missing}"


def test_tests_mirror_src() -> None:
    """``tests/<path>/`` holds the tests of ``src/apsq/<path>/`` (issue 27 item 5); ``project/`` checks the
    repository as a whole (docs, README, results, layers, types) and ``regressions/`` replays reported field
    failures across packages. Tests of the root modules (errors, cache, device, config) sit at ``tests/``."""
    tests = ROOT / "tests"
    folders = sorted(p.relative_to(tests) for p in tests.rglob("*") if p.is_dir() and any(p.glob("test_*.py")))
    stray = [str(f) for f in folders if f.parts[0] not in ("project", "regressions")
             and not (ROOT / "src" / "apsq" / f).is_dir()]
    assert folders and not stray, f"test folders with no package of the same path under src/apsq: {stray}"
