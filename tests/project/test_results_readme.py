"""``results/README.md`` says what its JSON files say (issue 27 item 5: the index had drifted from its own
JSONs -- a step-size rate of 5e-2 where the run used 0.2, a duration from an earlier run).

Every row of the file table that names a JSON is checked against that JSON: the command it lists is the
one the JSON recorded, a duration ``N s`` in the row is the JSON's ``seconds``, and a ``step-size rate X``
is the JSON's ``settings.scale_lr``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INDEX = ROOT / "results" / "README.md"


def _rows() -> list[tuple[Path, str, str]]:
    """``(json path, row text, command cell)`` per table row whose first cell names a JSON file."""
    out = []
    for line in INDEX.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        first = re.match(r"`([^`]+\.json)`", cells[0])
        if first and (ROOT / "results" / first.group(1)).is_file():
            out.append((ROOT / "results" / first.group(1), " | ".join(cells[1:-1]), cells[-1]))
    return out


ROWS = _rows()


def test_the_index_has_rows() -> None:
    assert len(ROWS) >= 10


def _in_order(words: list[str], within: list[str]) -> bool:
    it = iter(within)
    return all(w in it for w in words)


def _number(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.mark.parametrize(("path", "what", "command"), ROWS, ids=[str(p.relative_to(ROOT)) for p, _, _ in ROWS])
def test_row_agrees_with_its_json(path: Path, what: str, command: str) -> None:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        return
    recorded = data.get("command")
    listed = [c for c in re.findall(r"`([^`]+)`", command) if c.startswith("apsq ")]
    if isinstance(recorded, str) and recorded.startswith("apsq ") and listed:
        # some commands record their options but not their output paths: every recorded word must appear,
        # in order, in the listed command
        assert any(_in_order(recorded.split(), c.split()) for c in listed), (
            f"{path.name}: the index lists {listed}, the JSON was made by {recorded!r}")
    seconds = data.get("seconds")
    for claim in re.findall(r"([\d,]+(?:\.\d+)?) s on the shared CPU", what):
        assert isinstance(seconds, (int, float)) and abs(_number(claim) - seconds) <= max(1.0, 0.01 * seconds), (
            f"{path.name}: the index says {claim} s, the JSON's seconds is {seconds}")
    rate = (data.get("settings") or {}).get("scale_lr") if isinstance(data.get("settings"), dict) else None
    for claim in re.findall(r"step-size rate ([0-9.e-]+)", what):
        assert rate is not None and _number(claim) == rate, (
            f"{path.name}: the index says step-size rate {claim}, the JSON's settings.scale_lr is {rate}")
