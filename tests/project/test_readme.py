"""Every command the README shows works as written (issue 17).

* The Python API snippet runs verbatim.
* Every ``apsq ...`` command line in the README parses against the real command line (each option
  and argument exists and has a valid value) — a renamed option or command breaks this test.
* The cheap ones run exactly as written; the expensive ones (``apsq demo``, training) run their own
  tests at a small size (tests/train/, tests/cli/test_demo_cli.py).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli_parse import ELIDED, click_module, parse

README = Path(__file__).resolve().parents[2] / "README.md"

RUN_AS_WRITTEN = {
    "apsq energy -m bert-base -d is --gs 2",
    "apsq energy sweep -m bert-base -d ws --values 128,512,2048",
}
"""README commands cheap enough to run here exactly as written (a few seconds each)."""


def _text() -> str:
    return README.read_text()


def _command_lines() -> list[str]:
    """``apsq ...`` lines from code blocks and backticked table cells, optional parts (``[...]``),
    alternatives (``a / b``, ``x | y``) and ``...`` removed or expanded."""
    text = _text()
    found: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for part in block.split("&&"):
            part = part.strip()
            if part.startswith("apsq"):
                found.append(part)
    for cell in re.findall(r"`(apsq [^`]+)`", text):
        found.append(cell.replace("\\|", "|"))
    lines: list[str] = []
    for raw in found:
        raw = re.sub(r"\s*\[[^\]]*\]", "", raw)  # optional parts
        raw = raw.replace("...", ELIDED).strip()
        if " / " in raw:  # "apsq rae simulate / verilog / area": one command per alternative
            head, *alts = raw.split(" / ")
            base = head.rsplit(" ", 1)[0]
            lines += [head] + [f"{base} {a.strip()}" for a in alts]
        else:
            lines.append(raw)
    return sorted(set(lines))


def test_readme_lists_commands() -> None:
    lines = _command_lines()
    assert "apsq demo" in lines and any(c.startswith("apsq energy") for c in lines), lines
    assert len(lines) >= 10, lines


@pytest.mark.parametrize("line", _command_lines())
def test_every_readme_command_parses(line: str) -> None:
    argv = shlex.split(line)[1:]
    if "--help" in argv:
        argv.remove("--help")
    _, click = click_module()
    try:
        parse(argv)
    except click.exceptions.NoArgsIsHelpError:
        pass  # a group without a command shows its help
    except click.exceptions.UsageError as exc:
        raise AssertionError(f"README command {line!r} does not parse: {exc.format_message()}") from None


def test_the_parser_check_can_fail() -> None:
    _, click = click_module()
    for argv in (["energy", "--no-such-option"], ["no-such-command"], ["energy", "-d", "is", "--gs", "x"]):
        with pytest.raises(click.exceptions.UsageError):
            parse(argv)


@pytest.mark.parametrize("line", sorted(RUN_AS_WRITTEN))
def test_cheap_readme_commands_run_as_written(line: str) -> None:
    from apsq.cli import app

    assert line in _command_lines(), f"{line!r} is no longer in the README"
    r = CliRunner().invoke(app, shlex.split(line)[1:])
    assert r.exit_code == 0, r.output[-2000:]


def test_api_snippets_run_verbatim() -> None:
    snippets = re.findall(r"```python\n(.*?)```", _text(), flags=re.S)
    assert len(snippets) >= 2  # quantization, and pricing your own model's energy
    for snippet in snippets:
        exec(compile(snippet, str(README), "exec"), {"__name__": "readme"})


def test_train_as_documented_says_what_to_run_first(tmp_path, monkeypatch) -> None:
    """The README's second training command without the first one's checkpoint: an error naming the
    command to run first, and nothing left behind."""
    import shutil

    from apsq.cli import app

    shutil.copytree(README.parent / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["train", "--config", "configs/train_minilm_apsq_gs2.yaml"])
    assert r.exit_code != 0
    assert "apsq train --config configs/train_minilm_fp32.yaml" in " ".join(r.output.split())
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))
