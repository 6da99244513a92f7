"""Parse an ``apsq`` command line against the real command line without running it (shared by
tests/project/test_readme.py and tests/project/test_results_folders.py)."""

from __future__ import annotations

import importlib

import typer.main

ELIDED = "<elided>"
"""Where a document writes ``...`` (arguments left out): only the command and the options shown are checked."""


def click_module():
    """The root click command of ``apsq`` and the click module it is built on (typer ships its own
    click, ``typer._click``, or uses click)."""
    from apsq.cli import app

    root = typer.main.get_command(app)
    return root, importlib.import_module(type(root).__mro__[1].__module__.rsplit(".", 1)[0])


def parse(argv: list[str]) -> None:
    """Resolve the (sub)command and parse its options the way click would, without running it.
    Raises click's UsageError (unknown option or command, missing or bad value). With ``ELIDED`` in
    ``argv`` (arguments left out) missing required options are not an error."""
    cmd, click = click_module()
    elided = ELIDED in argv
    argv = [a for a in argv if a != ELIDED]
    if elided and argv and argv[-1].startswith("--"):
        argv = argv[:-1]  # "--tasks ...": the value is what was left out
    parent = click.Context(cmd, info_name="apsq")
    while getattr(cmd, "commands", None) and argv and not argv[0].startswith("-"):
        name, argv = argv[0], argv[1:]
        if name not in cmd.commands:
            raise click.exceptions.UsageError(f"no such command {name!r}")
        cmd = cmd.commands[name]
        if getattr(cmd, "commands", None) and argv and not argv[0].startswith("-"):
            parent = click.Context(cmd, info_name=name, parent=parent)
    cmd.make_context(cmd.name or "apsq", list(argv), parent=parent, resilient_parsing=elided)
