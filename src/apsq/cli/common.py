"""What every command group shares: one console factory, one error exit, one list parser.

User-supplied text (file names, model names, shapes such as ``[n, L]``) is printed literally, never
read as rich markup; piped output is not wrapped at 80 columns.
"""

from __future__ import annotations

import shutil
import sys
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from apsq.errors import APSQError

__all__ = ["console", "fail", "parse_ints", "escape"]

PIPED_WIDTH = 200
"""Columns used when output goes to a pipe or file: wide enough that tables keep their rows whole."""


def console(stderr: bool = False) -> Console:
    """A rich console: the terminal's width on a TTY, :data:`PIPED_WIDTH` columns and no soft
    wrapping of prose when piped (so ``apsq energy ... | cat`` keeps sentences on one line)."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    cols = shutil.get_terminal_size((PIPED_WIDTH, 24)).columns
    return Console(stderr=stderr, width=max(cols, PIPED_WIDTH), soft_wrap=True)


def fail(exc: BaseException | str, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` on stderr (the message literally) and exit with ``code``."""
    console(stderr=True).print(f"[red]error:[/red] {escape(str(exc))}")
    raise typer.Exit(code)


def parse_ints(name: str, text: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``; anything else raises :class:`APSQError` naming ``name``."""
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise APSQError(f"{name} must be comma-separated integers, got {text!r}") from None
    if not vals:
        raise APSQError(f"{name} is empty")
    return vals
