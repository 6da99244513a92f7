"""Verilog export of the RAE (Amaranth's back end, Yosys-for-Amaranth as WebAssembly) and lint helpers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from apsq.errors import APSQError
from apsq.hw.rae.engine import RAE, RAEParams

__all__ = ["TOP_NAME", "to_verilog", "write_verilog", "lint_commands", "lint"]

TOP_NAME = "rae"


def to_verilog(params: RAEParams | None = None, *, name: str = TOP_NAME) -> str:
    """Verilog text of one engine instance (no source attributes: reproducible output).

    Ports: ``clk``, ``rst`` (synchronous, active high), ``s0``, ``s1``, ``last_pos``,
    ``i__valid``/``i__ready``/``i__payload``, ``o__valid``/``o__ready``/``o__payload``, ``busy``.
    """
    from amaranth.back import verilog

    return verilog.convert(RAE(params or RAEParams()), name=name, emit_src=False)


def write_verilog(path: str | Path, params: RAEParams | None = None, *, name: str = TOP_NAME) -> Path:
    """Write :func:`to_verilog` to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_verilog(params, name=name))
    return path


def lint_commands(path: str | Path) -> dict[str, list[str]]:
    """The lint command lines: Icarus (``-g2012 -Wall``) and Verilator (``--lint-only -Wno-WIDTH``).

    ``-Wno-WIDTH``: Amaranth's implicit sign/zero extensions are WIDTH warnings, not bugs (Verilator
    5.006 has no WIDTHEXPAND/WIDTHTRUNC split).
    """
    p = str(path)
    return {
        "iverilog": ["iverilog", "-g2012", "-Wall", "-o", "/dev/null", p],
        "verilator": ["verilator", "--lint-only", "-Wno-WIDTH", p],
    }


def lint(path: str | Path, tool: str) -> subprocess.CompletedProcess[str]:
    """Run one linter on ``path``; raise :class:`APSQError` if it is not installed."""
    cmds = lint_commands(path)
    if tool not in cmds:
        raise APSQError(f"tool must be one of {', '.join(map(repr, cmds))}; got {tool!r}")
    if shutil.which(cmds[tool][0]) is None:
        raise APSQError(f"{tool} is not installed (Debian: apt-get install {tool})")
    return subprocess.run(cmds[tool], capture_output=True, text=True, check=False)
