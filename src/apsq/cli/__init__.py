"""The ``apsq`` command line (typer).

Each command group lives in a module of this package (or, for the groups not moved yet, of its area)
with a ``register(app)`` function; this file only assembles them. Registration imports only typer,
rich and light modules, so that ``apsq --help`` and ``apsq <group> --help`` start without torch,
transformers, matplotlib or amaranth (``tests/cli/test_cli_startup.py``); each command imports what it
needs when it runs.
"""

from __future__ import annotations

import importlib
import os

from apsq.cli.common import typer_app

app = typer_app(
    name="apsq",
    help="APSQ: PSUM-aware quantization (DAC 2025) — quantize, train, measure energy, build the RAE engine.",
    no_args_is_help=True,
)

COMMAND_MODULES = (
    "apsq.cli.demo",  # apsq demo
    "apsq.cli.energy",  # apsq energy, apsq energy sweep
    "apsq.cli.rae",  # apsq rae verilog | area | simulate | equivalence
    "apsq.cli.data",  # apsq data fetch
    "apsq.cli.train",  # apsq train
    "apsq.cli.llm",  # apsq llm dry-run
    "apsq.cli.eval",  # apsq eval, apsq sweep
    "apsq.cli.tune",  # apsq tune-gs
    "apsq.cli.beyond",  # apsq beyond baseline | low-bit | a2q
    "apsq.cli.paper",  # apsq paper table1 | glue
    "apsq.cli.deploy",  # apsq deploy export | run
)


@app.callback()
def _main() -> None:
    """APSQ: PSUM-aware quantization (DAC 2025) — quantize, train, measure energy, build the RAE engine."""


def _register_all() -> None:
    for mod_name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name and mod_name.startswith(exc.name):
                continue  # area not built in this checkout
            raise
        mod.register(app)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_register_all()

if __name__ == "__main__":
    app()
