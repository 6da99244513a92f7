"""The ``apsq`` command line: fast start-up (no torch for ``--help``), Markdown help text that keeps shapes
such as ``[n, L]``, piped output that is not wrapped mid-sentence, table titles that are not wrapped."""

from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest
import typer.main
from typer.testing import CliRunner

HEAVY = ("torch", "transformers", "matplotlib", "amaranth")
GROUP_HELPS = ([], ["energy"], ["energy", "sweep"], ["rae"], ["rae", "simulate"], ["rae", "area"], ["data"],
               ["data", "fetch"], ["train"], ["sweep"], ["eval"], ["eval", "lm-eval"], ["tune-gs"], ["beyond"],
               ["beyond", "a2q"], ["demo"])


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("COLUMNS", None)
    return env


def _commands(cmd: click.Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out = [(path, cmd)]
    for name, sub in getattr(cmd, "commands", {}).items():
        out += _commands(sub, (*path, name))
    return out


def test_apsq_help_subprocess_imports_no_torch() -> None:
    """``apsq --help`` (``python -m apsq.cli``, the console script's code) finishes without torch & co."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "apsq.cli", "--help"], capture_output=True,
                       text=True, timeout=120, env=_env(), check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Usage: apsq" in r.stdout and "energy" in r.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_every_group_help_imports_no_torch() -> None:
    """``apsq <group> [command] --help`` for every group: parsed and printed without the heavy libraries."""
    code = (
        "import sys\nfrom apsq.cli import app\n"
        f"for args in {GROUP_HELPS!r}:\n"
        "    try:\n        app([*args, '--help'], prog_name='apsq')\n"
        "    except SystemExit as e:\n        assert e.code in (0, None), (args, e.code)\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env(), check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.rstrip().endswith("HEAVY []"), r.stdout[-500:]


def test_help_choices_are_the_energy_models() -> None:
    """The names ``apsq energy --help`` lists (literals, so that help needs no torch) are the real ones."""
    from apsq.cli.energy import ACCELERATORS, DRAM_PRESETS, WORKLOADS
    from apsq.hw.accelerator import BUILTIN_ACCELERATORS
    from apsq.hw.accelerator import DRAM_PRESETS as PRESETS
    from apsq.hw.workloads import BUILTIN_WORKLOADS

    assert WORKLOADS == tuple(BUILTIN_WORKLOADS)
    assert ACCELERATORS == tuple(BUILTIN_ACCELERATORS)
    assert DRAM_PRESETS == tuple(PRESETS)


def test_every_command_uses_markdown_help_without_rest_markup() -> None:
    """One Typer factory: every group and command renders Markdown; no ``x`` reST markup shows literally,
    and shapes such as [n, L] survive."""
    from apsq.cli import app

    root = typer.main.get_command(app)
    cmds = _commands(root)
    assert len(cmds) > 15
    runner = CliRunner()
    for path, cmd in cmds:
        assert getattr(cmd, "rich_markup_mode", None) == "markdown", path
        r = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"}, prog_name="apsq")
        assert r.exit_code == 0, (path, r.output)
        assert "``" not in r.output, (path, r.output)
        if path == ("rae", "simulate"):
            assert "exponents [n, L]" in r.output and "\\[" not in r.output


@pytest.mark.slow
def test_piped_output_keeps_sentences_whole() -> None:
    """``apsq energy -m bert-base -d is --gs 2 | cat``: the summary sentence is one line, not wrapped at 80."""
    r = subprocess.run([sys.executable, "-m", "apsq.cli", "energy", "-m", "bert-base", "-d", "is", "--gs", "2"],
                       capture_output=True, text=True, timeout=300, env=_env(), check=False)  # stdout: a pipe
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    summary = [ln for ln in lines if ln.startswith("untiled schedule: reduction")]
    assert len(summary) == 1, r.stdout
    assert "PSUMs spill to DRAM" in summary[0] and summary[0].rstrip().endswith(")")
    assert "IS under both schedules, OS beside (energy µJ; saved = 1 - apsq / INT32)" in lines


@pytest.fixture()
def tty_120(monkeypatch):
    """The CLI's consoles believe they write to a 120-column terminal."""
    from apsq.cli import common

    monkeypatch.setattr(common, "_is_tty", lambda stderr: True)
    monkeypatch.setenv("COLUMNS", "120")


def test_table_titles_do_not_wrap_at_120_columns(tty_120, tmp_path) -> None:
    from apsq.cli import app

    wl = tmp_path / "net.yaml"
    wl.write_text("name: net\nlayers: [{name: fc1, m: 128, k: 768, n: 3072}, {name: fc2, m: 128, k: 3072, n: 768}]\n")
    r = CliRunner().invoke(app, ["energy", "--workload", str(wl), "-d", "is", "--per-layer"])
    assert r.exit_code == 0, r.output
    lines = [ln.strip() for ln in r.output.splitlines()]
    for title in ("net — IS (untiled) — energy (µJ)", "per layer (untiled schedule)",
                  "IS under both schedules, OS beside (energy µJ; saved = 1 - apsq / INT32)"):
        assert title in lines, (title, r.output[:3000])
    assert max(len(ln) for ln in r.output.splitlines()) <= 120


def test_zigzag_table_title_longer_than_its_columns_stays_whole(tty_120, tmp_path) -> None:
    pytest.importorskip("zigzag.api")
    from apsq.cli import app

    wl = tmp_path / "net.yaml"
    wl.write_text("name: net\nlayers: [{name: fc1, m: 128, k: 768, n: 3072}]\n")
    r = CliRunner().invoke(app, ["energy", "--workload", str(wl), "-d", "ws", "--engine", "zigzag", "--per-layer",
                                 "--accelerator", "zigzag-tpu-like"])
    assert r.exit_code == 0, r.output
    title = ("net WS on zigzag-tpu-like: total energy saved, INT32 -> INT8 PSUMs (ZigZag fixed vs apsq untiled, "
             "fractional spill)")
    assert title in [ln.strip() for ln in r.output.splitlines()], r.output


def test_table_factory_keeps_long_titles_on_one_line() -> None:
    import io

    from rich.console import Console

    from apsq.cli.common import table
    from apsq.errors import literal

    title = "low-bit variants, configs/[x]_train.yaml (256 eval examples): a title longer than its columns"
    t = table(literal(title), "a", "b")
    t.add_row("1", "2")
    buf = io.StringIO()
    Console(file=buf, width=120, color_system=None).print(t)
    assert title in buf.getvalue().splitlines()[0]


def test_fail_prints_user_text_literally_and_exits_2() -> None:
    from apsq.cli import app

    r = CliRunner().invoke(app, ["energy", "--trace", "[bold]no_such_module:f"])
    assert r.exit_code == 2
    assert "error: --trace: cannot import module '[bold]no_such_module'" in " ".join(r.output.split())


def test_sweep_progress_goes_to_stderr() -> None:
    """``apsq energy sweep ... | cat``: stdout holds the table only, the progress bar is on stderr."""
    from apsq.cli import app

    r = CliRunner().invoke(app, ["energy", "sweep", "-m", "bert-base", "--values", "32"])
    assert r.exit_code == 0, r.output
    assert "sweep bert-base seq_len" not in r.stdout and "sweep bert-base seq_len" in r.stderr
    assert r.stdout.splitlines()[0].strip() == ("bert-base WS: total energy (µJ) and saved vs the baseline; * = "
                                                "PSUMs spill to DRAM")
