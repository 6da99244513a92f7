"""Output paths are checked when the command line is parsed, before any work: a folder given for an output
file (``--json``, ``--png``, ``--plot``, ``--plot-layers``, ``--markdown``, ``apsq rae verilog -o``) and a file
given for an output folder (``apsq deploy export -o``, ``--mismatch-dir``) are refused with exit 2. They used to
end in a traceback (``IsADirectoryError``) after the work: after a whole ``apsq deploy run`` for ``--json``,
and ``apsq energy --plot DIR`` printed "wrote DIR"."""

from __future__ import annotations

import click
import pytest
import typer
from typer.testing import CliRunner

from apsq.cli import app

FILE_OPTIONS = {"--json", "--png", "--plot", "--plot-layers", "--markdown"}


def _commands(cmd, path: str = "apsq"):
    yield path, cmd
    if hasattr(cmd, "list_commands"):  # a group (typer's own click classes): ask for each sub-command
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            yield from _commands(cmd.get_command(ctx, name), f"{path} {name}")


def test_every_output_file_option_refuses_a_folder():
    seen = 0
    for path, cmd in _commands(typer.main.get_command(app)):
        for p in cmd.params:
            td = getattr(p, "type_descriptor", None)
            if td is not None and "Path" in str(td.annotation) and FILE_OPTIONS & set(p.opts):
                assert td.parameter_info.dir_okay is False, f"{path} {p.opts[0]}"
                seen += 1
    assert seen >= 20  # --json / --png / --plot ... of energy, rae, deploy, eval, paper, beyond, tune, llm


@pytest.mark.parametrize(("args", "needle"), [
    (["rae", "verilog", "-o", "{dir}"], "is a directory"),
    (["rae", "area", "--json", "{dir}"], "is a directory"),
    (["energy", "-m", "bert-base", "--plot", "{dir}"], "is a directory"),
    (["deploy", "run", "{dir}", "--json", "{dir}"], "is a directory"),
    (["deploy", "export", "{dir}", "-o", "{file}"], "is a file"),
])
def test_a_wrong_kind_of_output_path_exits_2_before_any_work(tmp_path, args, needle):
    (tmp_path / "f").write_text("keep")
    argv = [a.format(dir=tmp_path, file=tmp_path / "f") for a in args]
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 2 and needle in " ".join(r.output.replace("│", " ").split()), r.output
    assert (tmp_path / "f").read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]
