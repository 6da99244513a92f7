"""``apsq paper table1 | glue``: the paper's Table I from the runs that exist, and the GLUE study behind its
BERT-Base row.

Argument parsing and printing only: the work is :mod:`apsq.eval.table1` and :mod:`apsq.eval.glue_study`
(imported inside each command). Bad arguments exit 2, failed runs 1, both with ``error: ...`` on stderr.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from apsq.cli.common import command_line, console, fail, typer_app, write_json
from apsq.errors import APSQError

__all__ = ["register"]


def table1_cmd(
    rows: str = typer.Option(None, "--rows", help="Comma-separated rows (default all): bert-base-glue, "
                             "segformer-b0-ade20k, efficientvit-b1-ade20k, llama2-7b-zero-shot."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List each row's commands and where their JSON lands."),
    root: Path = typer.Option(Path("."), "--root", exists=True, file_okay=False,
                              help="Project folder the runs' paths are relative to."),
    energy: bool = typer.Option(True, help="Add the energy reduction of the paper's model at the best gs."),
    json_out: Path = typer.Option(None, "--json", dir_okay=False, help="Write the collected table here."),
    markdown: Path = typer.Option(None, "--markdown", dir_okay=False, help="Write the markdown table here."),
) -> None:
    """The paper's Table I: per model the accuracy / mIoU drop at the best gs and the IS / WS energy
    reduction, from the full runs where they exist, else their CPU stand-ins, beside the paper's numbers."""
    from apsq.eval.table1 import dry_run as list_rows
    from apsq.eval.table1 import select_rows, table1, table1_markdown

    try:
        chosen = select_rows([r.strip() for r in rows.split(",") if r.strip()] if rows else None)
    except APSQError as exc:
        fail(exc)
    if dry_run:
        for r in list_rows(chosen, root):
            est = r["gpu_estimate"]
            typer.echo(f"{r['row']}:\n  full ({r['needs']}; about {est['hours']} GPU-hours, an estimate): {r['full']}"
                       f"\n    -> {r['full_json']}{' (exists)' if r['full_exists'] else ''}"
                       f"\n  stand-in ({r['standin']}): {r['standin_command']}"
                       f"\n    -> {r['standin_found'] or ' or '.join(r['standin_json']) + ' (not yet)'}")
        return
    try:
        res = table1(chosen, root, energy)
    except APSQError as exc:
        fail(exc, code=1)
    res["command"] = command_line()
    text = table1_markdown(res)
    console().print(text, markup=False, highlight=False, soft_wrap=True)
    if markdown:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text + "\n")
    write_json(json_out, res)


def glue_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="GLUE study YAML, e.g. configs/paper/bert_base_glue.yaml."),
    output: Path = typer.Option(None, "--output", "-o", help="Study folder (default: the config's output)."),
) -> None:
    """Every GLUE task of the study with every PSUM variant (QAT + KD), each task's official metric and the
    GLUE average per variant: glue.json + glue.md."""
    from apsq.eval.glue_study import glue_table, load_glue_study, run_glue_study

    try:
        study = load_glue_study(config)
    except APSQError as exc:
        fail(exc)
    try:
        res = run_glue_study(study, output, command=command_line())
    except APSQError as exc:
        fail(exc, code=1)
    typer.echo(glue_table(res))
    if res["missing"]:
        typer.echo("missing runs: " + ", ".join(res["missing"]))
    typer.echo(json.dumps({v: a["average"] for v, a in res["glue_average"].items()}))


def register(app: typer.Typer) -> None:
    """Add the ``paper`` sub-app to the ``apsq`` command line."""
    paper = typer_app(help="The paper's Table I: its rows' commands and the table from the runs.", no_args_is_help=True)
    paper.command("table1")(table1_cmd)
    paper.command("glue")(glue_cmd)
    app.add_typer(paper, name="paper")
