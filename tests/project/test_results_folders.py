"""Every ``results/<study>/`` folder says how it was made (issue 14, item 5).

* Each study folder has a ``README.md`` and an executable ``run.sh``.
* Every ``apsq ...`` command in a ``run.sh`` parses against the real command line (each option and
  argument exists and has a valid value), and every ``python <script>.py`` it runs exists.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from cli_parse import click_module, parse

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results"

OWNED_ELSEWHERE = {"sentiment_minilm", "demo"}
"""Folders whose run.sh other work adds: checked only once they have one."""


def _folders() -> list[Path]:
    return sorted(p for p in RESULTS.iterdir() if p.is_dir() and any(f.is_file() for f in p.rglob("*")))


def _scripts() -> list[Path]:
    return [p / "run.sh" for p in _folders() if (p / "run.sh").exists()]


def _logical_lines(script: Path) -> list[str]:
    """The script's lines with backslash continuations joined, comments and heredoc bodies dropped."""
    lines: list[str] = []
    heredoc_end: str | None = None
    pending = ""
    for raw in script.read_text().splitlines():
        if heredoc_end is not None:
            if raw.strip() == heredoc_end:
                heredoc_end = None
            continue
        line = pending + raw
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        if line.lstrip().startswith("#") or not line.strip():
            continue
        m = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if m:
            heredoc_end = m.group(1)
        lines.append(line.strip())
    return lines


def _commands(script: Path) -> list[list[str]]:
    """Each simple command of the script (split at ``&&``, ``||``, ``;``, ``|``; redirections and
    leading ``VAR=value`` assignments removed) as its argv."""
    out: list[list[str]] = []
    for line in _logical_lines(script):
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        argv: list[str] = []
        skip_next = False
        for tok in list(lex) + [";"]:
            if skip_next:
                skip_next = False
                continue
            if tok in {"&&", "||", ";", "|", "{", "}", "(", ")"}:
                while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
                    argv = argv[1:]
                if argv:
                    out.append(argv)
                argv = []
            elif tok in {">", ">>", "<", "<<", "<<-", "2>", ">&"}:
                skip_next = True  # the redirection's target
            else:
                argv.append(tok)
    return out


def test_every_study_folder_has_readme_and_executable_run_sh() -> None:
    folders = _folders()
    assert len(folders) >= 10, folders
    for folder in folders:
        if folder.name in OWNED_ELSEWHERE and not (folder / "run.sh").exists():
            continue
        assert (folder / "README.md").is_file(), f"{folder.relative_to(ROOT)} has no README.md"
        run = folder / "run.sh"
        assert run.is_file(), f"{folder.relative_to(ROOT)} has no run.sh"
        assert os.access(run, os.X_OK), f"{run.relative_to(ROOT)} is not executable"
        text = run.read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), run
        for must in ("set -euo pipefail", 'cd "$(dirname "$0")/../.."',
                     "export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1"):
            assert must in text, f"{run.relative_to(ROOT)} lacks {must!r}"


def test_the_command_splitter() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "run.sh"
        p.write_text("# apsq no-such-command\nA=1 B=2 apsq energy -d is \\\n  --gs 2 > out.json\n"
                     "test -f x || apsq demo\npython - <<'EOF'\napsq inside heredoc\nEOF\n")
        assert _commands(p) == [["apsq", "energy", "-d", "is", "--gs", "2"], ["test", "-f", "x"],
                                ["apsq", "demo"], ["python", "-"]]


@pytest.mark.parametrize("script", _scripts(), ids=lambda p: p.parent.name)
def test_run_sh_commands_parse(script: Path) -> None:
    _, click = click_module()
    commands = _commands(script)
    assert commands, f"{script} runs nothing"
    for argv in commands:
        line = shlex.join(argv)
        if argv[0] == "apsq":
            try:
                parse(argv[1:])
            except click.exceptions.UsageError as exc:
                raise AssertionError(f"{script.relative_to(ROOT)}: {line!r} does not parse: "
                                     f"{exc.format_message()}") from None
        elif argv[0] == "python" and len(argv) > 1 and argv[1].endswith(".py"):
            assert (ROOT / argv[1]).is_file(), f"{script.relative_to(ROOT)}: {argv[1]} does not exist"
        elif argv[0].endswith("run.sh"):
            assert (ROOT / argv[0]).is_file(), f"{script.relative_to(ROOT)}: {argv[0]} does not exist"


def test_the_run_sh_check_can_fail(tmp_path) -> None:
    _, click = click_module()
    bad = tmp_path / "run.sh"
    bad.write_text("apsq sweep --config configs/train_digits_cnn.yaml --no-such-option\n")
    ((argv),) = _commands(bad)
    with pytest.raises(click.exceptions.UsageError):
        parse(argv[1:])
