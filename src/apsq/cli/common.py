"""What every command group shares: one Typer factory, one console factory, one table factory, one error
exit and one list parser.

User-supplied text (file names, model names, shapes such as ``[n, L]``) is printed literally, never read
as rich markup; piped output is not wrapped at 80 columns; table titles are never wrapped when the
console is wide enough for them. Only light modules (typer, rich, :mod:`apsq.errors`) are imported here,
so that ``apsq --help`` starts without torch.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from apsq.errors import APSQError, print_error

__all__ = ["MARKUP_MODE", "PIPED_WIDTH", "console", "escape", "fail", "parse_ints", "table", "typer_app"]

PIPED_WIDTH = 200
"""Columns used when output goes to a pipe or file: wide enough that tables keep their rows whole."""

MARKUP_MODE = "markdown"
"""How ``--help`` reads docstrings and option help: Markdown, so ````demo.json```` shows as code and
shapes such as ``[n, L]`` stay as written (rich markup would swallow them)."""


OVERRIDE_TILE = typer.Option(False, "--override-tile", help="price the array's pe_array.rows-deep tiles although "
                             "the config trains at another tile")
"""The ``--override-tile`` option of every command that prices a trained config (one tile:
:func:`apsq.hw.energy.resolve_tile`)."""


def _hide_flag_types() -> None:
    """Show no value placeholder for on/off flags in ``--help``.

    typer (>= 0.2x) prints ``<bool>`` in the type column of every flag (``--resume <bool>``), which reads
    as "takes a value" although ``--resume true`` is rejected: flags take none. Value options keep their
    placeholder (``<int>``, ``<path>``) and their range (``x>=0``)."""
    from typer.core import TyperOption

    if getattr(TyperOption, "_apsq_flags_bare", False):
        return
    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]
    TyperOption._apsq_flags_bare = True  # type: ignore[attr-defined]


def typer_app(**kwargs: Any) -> typer.Typer:
    """A :class:`typer.Typer` for ``apsq`` or one of its groups: Markdown help (:data:`MARKUP_MODE`), no
    local variables in tracebacks, flags shown without a value placeholder (:func:`_hide_flag_types`);
    ``kwargs`` go to :class:`typer.Typer` (``name``, ``help``, ...)."""
    _hide_flag_types()
    kwargs.setdefault("rich_markup_mode", MARKUP_MODE)
    kwargs.setdefault("pretty_exceptions_show_locals", False)
    return typer.Typer(**kwargs)


def _is_tty(stderr: bool) -> bool:
    stream = sys.stderr if stderr else sys.stdout
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def console(stderr: bool = False) -> Console:
    """A rich console: the terminal's width on a TTY, at least :data:`PIPED_WIDTH` columns and no soft
    wrapping of prose when piped (so ``apsq energy ... | cat`` keeps sentences on one line)."""
    if _is_tty(stderr):
        return Console(stderr=stderr)
    cols = shutil.get_terminal_size((PIPED_WIDTH, 24)).columns
    return Console(stderr=stderr, width=max(cols, PIPED_WIDTH), soft_wrap=True)


def table(title: str, *columns: str, left: tuple[str, ...] = ()) -> Table:
    """A :class:`rich.table.Table` at least as wide as its ``title`` (rich would wrap the title to the width
    of the columns); ``columns`` are added right-justified except those named in ``left``. ``title`` is
    rich markup: escape user text in it with :func:`apsq.errors.literal`."""
    from rich.text import Text

    t = Table(title=title, min_width=cell_len(Text.from_markup(title).plain) + 4)
    for col in columns:
        t.add_column(col, justify="left" if col in left else "right")
    return t


def fail(exc: BaseException | str, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` on stderr through :func:`apsq.errors.print_error` (the message
    literally, never as markup) and exit with ``code`` (2: bad input, 1: a run that failed)."""
    print_error(exc, console=console(stderr=True))
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


def command_line() -> str:
    """The command as the user typed it (``apsq`` + the arguments, shell-quoted), for result files."""
    import shlex
    import sys

    return shlex.join(["apsq", *sys.argv[1:]])


def write_json(path: Path | None, data: object) -> None:
    """Write ``data`` as indented JSON to ``path`` (folders created); nothing when ``path`` is None."""
    if path is None:
        return
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
