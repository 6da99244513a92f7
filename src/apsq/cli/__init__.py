"""The ``apsq`` command line (typer).

Each area of the project registers its own commands through a ``register(app)`` function in its
own module; this file only assembles them.
"""

from __future__ import annotations

import importlib
import os

import typer

app = typer.Typer(
    name="apsq",
    help="APSQ: PSUM-aware quantization (DAC 2025) — quantize, train, measure energy, build the RAE engine.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

COMMAND_MODULES = (
    "apsq.demo",  # apsq demo
    "apsq.hw.energy_cli",  # apsq energy, apsq energy sweep
    "apsq.hw.rae.cli",  # apsq rae verilog | area | simulate
    "apsq.data.cli",  # apsq data fetch
    "apsq.train.cli",  # apsq train
    "apsq.eval.cli",  # apsq eval, apsq sweep
    "apsq.cli.tune",  # apsq tune-gs
    "apsq.cli.beyond",  # apsq beyond baseline | low-bit | a2q
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
