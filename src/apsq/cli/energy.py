"""``apsq energy`` (one workload, baseline vs APSQ) and ``apsq energy sweep`` (energy vs size).

Argument parsing and printing only: the computations are :mod:`apsq.hw.energy_runs` and
:mod:`apsq.hw.energy`, the figures :mod:`apsq.hw.energy_plots`. Nothing heavy (torch, matplotlib) is
imported until a command runs; the choices named in ``--help`` are literals here, checked against the
energy model's own tables by ``tests/cli/test_cli_startup.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from apsq.cli.common import console, fail, parse_ints, table, typer_app
from apsq.errors import APSQError, literal

if TYPE_CHECKING:  # pragma: no cover
    from rich.table import Table

    from apsq.hw.accelerator import Accelerator
    from apsq.hw.energy import Comparison, EnergyReport
    from apsq.hw.workloads import Workload

__all__ = ["ACCELERATORS", "DRAM_PRESETS", "WORKLOADS", "register"]

WORKLOADS = ("bert-base", "segformer-b0", "efficientvit-b1", "llama2-7b")
"""``apsq.hw.workloads.BUILTIN_WORKLOADS`` (literal: naming them in ``--help`` must not import torch)."""
ACCELERATORS = ("default", "apsq-28nm-int8", "zigzag-tpu-like", "zigzag-tpu-like-is", "worked-example")
"""``apsq.hw.accelerator.BUILTIN_ACCELERATORS``."""
DRAM_PRESETS = ("ddr3", "ddr4", "lpddr4", "hbm2", "zigzag")
"""``apsq.hw.accelerator.DRAM_PRESETS``."""


def _gs_label(r: EnergyReport) -> str:
    gs = r.gs_used()
    return str(gs) if isinstance(gs, int) else "per-layer"


def _baseline_bits(cmp: Comparison) -> int:
    """The baseline's stored PSUM width (the accelerator's ``acc_bits``, or ``--baseline-bits``)."""
    return int(cmp.baseline.summary()["psum_bits"])


def _report_table(cmp: Comparison) -> Table:
    from apsq.hw.dataflow import LEVELS, OPERANDS

    sched = cmp.baseline.schedule.kind if cmp.baseline.schedule is not None else "untiled"
    t = table(f"{literal(cmp.baseline.workload)} — {cmp.baseline.dataflow.upper()} ({sched}) — energy (µJ)",
              "operand", "level", f"baseline (INT{_baseline_bits(cmp)} PSUM)",
              f"{cmp.apsq.mode} (gs={_gs_label(cmp.apsq)}, {cmp.apsq.psum_bits}b)", left=("operand", "level"))
    b, a = cmp.baseline.energy_pj.sum(axis=0), cmp.apsq.energy_pj.sum(axis=0)
    for i, op in enumerate(OPERANDS):
        for j, lv in enumerate(LEVELS):
            if b[i, j] > 0 or a[i, j] > 0:
                t.add_row(op, lv, f"{b[i, j] / 1e6:,.3f}", f"{a[i, j] / 1e6:,.3f}")
    t.add_row("mac", "", f"{cmp.baseline.mac_pj.sum() / 1e6:,.3f}", f"{cmp.apsq.mac_pj.sum() / 1e6:,.3f}")
    for label, attr in (("rae logic", "rae_pj"), ("exponents", "exponent_pj")):
        b_e, a_e = getattr(cmp.baseline, attr), getattr(cmp.apsq, attr)
        b_v = 0.0 if b_e is None else float(b_e.sum())
        a_v = 0.0 if a_e is None else float(a_e.sum())
        if b_v > 0 or a_v > 0:
            t.add_row(label, "", f"{b_v / 1e6:,.3f}", f"{a_v / 1e6:,.3f}")
    t.add_row(
        "[b]total[/b]", "", f"[b]{cmp.baseline.total_pj / 1e6:,.3f}[/b]", f"[b]{cmp.apsq.total_pj / 1e6:,.3f}[/b]"
    )
    return t


def _mapping(m: dict[str, Any]) -> str:
    """``N>K>M x1 w512``: order, tiles of the streamed dimension, and the width of the live PSUM set (the
    stationary elements, output columns in WS / tokens in IS, whose sums stay in the PSUM buffer together;
    ``docs/energy-model.md`` §5). Not gs."""
    return f"{m.get('order', '')} x{m.get('tiles', 1)}" + (f" w{m['group']}" if m.get("group", 1) > 1 else "")


def _layer_table(cmp: Comparison, w: Workload) -> Table:
    sched = cmp.baseline.schedule.kind if cmp.baseline.schedule is not None else "untiled"
    t = table(f"per layer ({sched} schedule)", "layer", "M", "K", "N", "count", "baseline µJ", "apsq µJ",
              "PSUM KiB b/a", "spill share b/a", "mapping b / a (order, xTILES, wLIVE WIDTH)",
              left=("layer", "mapping b / a (order, xTILES, wLIVE WIDTH)"))
    for ly, b, a in zip(w.layers, cmp.baseline.per_layer(), cmp.apsq.per_layer()):
        mb, ma = b.get("mapping", {}), a.get("mapping", {})
        t.add_row(
            literal(ly.name), str(ly.m), str(ly.k), str(ly.n), str(ly.count),
            f"{b['total_pj'] / 1e6:,.3f}", f"{a['total_pj'] / 1e6:,.3f}",
            f"{b['psum_footprint_kib']:.1f}/{a['psum_footprint_kib']:.1f}",
            f"{b['psum_spill']:.2f}/{a['psum_spill']:.2f}",
            f"{_mapping(mb)} / {_mapping(ma)}",
        )
    return t


def _schedules_table(summ: dict[str, Any], dataflow: str, mode: str, baseline_bits: int) -> Table:
    base = f"INT{baseline_bits}"
    os_beside = dataflow != "os"  # under -d os the OS column would repeat the baseline column
    t = table(f"{dataflow.upper()} under both schedules{', OS beside' if os_beside else ''} "
              f"(energy µJ; saved = 1 - {mode} / {base})",
              "schedule", f"{base} baseline", mode, "total saved", "PSUM saved", "on-chip saved", "spills b/a",
              *(("OS",) if os_beside else ()), left=("schedule",))
    for sched, r in summ.items():
        t.add_row(sched, f"{r['baseline_pj'] / 1e6:,.3f}", f"{r['apsq_pj'] / 1e6:,.3f}", f"{100 * r['reduction']:.2f} %",
                  f"{100 * r['psum_reduction']:.2f} %", f"{100 * r['on_chip_reduction']:.2f} %",
                  f"{'yes' if r['baseline_spills'] else 'no'}/{'yes' if r['apsq_spills'] else 'no'}",
                  *((f"{r['os_pj'] / 1e6:,.3f}",) if os_beside else ()))
    return t


def _zigzag_table(res: dict[str, Any], w: Workload, dataflow: str, acc_name: str, psum_bits: int,
                  spill: str) -> Table:
    t = table(f"{literal(w.name)} {dataflow.upper()} on {literal(acc_name)}: total energy saved, "
              f"INT{res['baseline_bits']} -> INT{psum_bits} PSUMs (ZigZag {res['zigzag_mapping']} vs "
              f"apsq {res['apsq_model']['schedule']}, {spill} spill)",
              "layer", "ZigZag", "apsq", "diff (pp)", left=("layer",))
    for row in res["layers"]:
        t.add_row(literal(row["name"]), f"{100 * row['reduction']:.2f} %",
                  f"{100 * row['apsq_model_reduction']:.2f} %", f"{row['difference_pp']:+.2f}")
    return t


def energy_main(
    ctx: typer.Context,
    model: str | None = typer.Option(None, "--model", "-m", help=f"built-in: {', '.join(WORKLOADS)}"),
    trace: str | None = typer.Option(
        None, "--trace", help="module:factory returning (model, inputs) or a Workload; called on the meta device "
        "(build from a config, not from_pretrained)"
    ),
    workload_file: Path | None = typer.Option(
        None, "--workload", help="workload YAML: layers: [{name, m, k, n, count} or {name, conv: {...}}]"
    ),
    dataflow: str = typer.Option("ws", "--dataflow", "-d", help="is | ws | os"),
    gs: int | None = typer.Option(
        None, "--gs", min=1, help="APSQ group size (≥ 1, at most the PSUM buffer's banks; default: a traced quantized "
                           "model's own, else 2)"),
    gs_config: Path | None = typer.Option(
        None, "--gs-config", help="APSQConfig YAML: per-layer gs from its gs + overrides (instead of --gs)"
    ),
    other_gs: bool = typer.Option(
        False, "--other-gs", help="with --trace of a quantized model: price --gs / --gs-config instead of the "
        "model's own group sizes (without it a different gs is refused)"),
    psum_bits: int = typer.Option(8, "--psum-bits", min=1, max=32, help="stored PSUM width in APSQ mode (bits)"),
    baseline_bits: int | None = typer.Option(
        None, "--baseline-bits", min=1, max=64, help="stored PSUM width of the baseline (default: the accelerator's acc_bits)"
    ),
    mode: str = typer.Option("apsq", "--mode", help="quantized PSUM mode to compare: apsq | psq"),
    accelerator: str | None = typer.Option(
        None, "--accelerator", help=f"accelerator YAML or a built-in: {', '.join(ACCELERATORS)}"
    ),
    dram: str | None = typer.Option(None, "--dram", help=f"DRAM energy preset: {', '.join(DRAM_PRESETS)}"),
    schedule: str = typer.Option("untiled", "--schedule", help="untiled (fixed loop orders) | tiled (mapper)"),
    spill: str = typer.Option("fractional", "--spill", help="fractional | all-or-nothing | zigzag"),
    psum_granularity: str | None = typer.Option(
        None, "--psum-granularity",
        help="tensor | channel (one stored exponent per tile step and channel); default: --gs-config's, else tensor",
    ),
    override_tile: bool = typer.Option(
        False, "--override-tile", help="price the array's rows even if the --gs-config tile differs"
    ),
    engine: str = typer.Option("apsq", "--engine", help="apsq (this model) | zigzag (zigzag-dse, optional)"),
    zigzag_mapping: str = typer.Option(
        "fixed", "--zigzag-mapping",
        help="with --engine zigzag: fixed (both engines on the untiled orders) | temporal (ZigZag searches the "
        "loop order at the dataflow's unrolling) | search (the unrolling too); searched mappings are compared "
        "with this model's mapper (tiled)"),
    seq_len: int | None = typer.Option(None, "--seq-len", min=1, help="bert-base / llama2-7b prefill tokens"),
    image_size: int | None = typer.Option(None, "--image-size", min=1, help="segformer-b0 / efficientvit-b1 input size"),
    phase: str | None = typer.Option(None, "--phase", help="llama2-7b: prefill | decode"),
    context: int | None = typer.Option(None, "--context", min=1, help="llama2-7b decode: KV-cache length"),
    as_json: bool = typer.Option(False, "--json", help="print JSON (always with the per-layer breakdown)"),
    per_layer: bool = typer.Option(False, "--per-layer", help="per-layer table"),
    plot: Path | None = typer.Option(None, "--plot", dir_okay=False,
                                     help="write a breakdown PNG (baseline vs gs=1..4)"),
    plot_layers_png: Path | None = typer.Option(None, "--plot-layers", dir_okay=False,
                                                help="write a per-layer energy PNG"),
) -> None:
    # No docstring: the group's help is the one given to typer_app in register().
    if ctx.invoked_subcommand is not None:
        return
    from apsq.hw.energy_runs import load_workload

    try:
        _check_options(dataflow, mode, engine, schedule, spill, gs, baseline_bits, zigzag_mapping)
        if gs is not None and gs_config is not None:
            raise APSQError(f"--gs {gs} and --gs-config {str(gs_config)!r} both given: the config sets every "
                            "layer's gs (its gs and overrides); give one of them")
        if engine == "zigzag":
            _refuse_unused_by_zigzag({"--gs": gs is not None, "--gs-config": gs_config is not None,
                                      # a searched mapping is compared with the tiled schedule anyway
                                      "--schedule tiled": schedule != "untiled" and zigzag_mapping == "fixed",
                                      "--mode psq": mode != "apsq",
                                      "--psum-granularity": psum_granularity is not None,
                                      "--override-tile": override_tile, "--plot": plot is not None,
                                      "--plot-layers": plot_layers_png is not None})
        acc = _load_accelerator(accelerator, dram)
        opts = {"seq_len": seq_len, "image_size": image_size, "phase": phase, "context": context}
        w = load_workload(model, trace, workload_file=workload_file, **opts)
        if other_gs:
            if gs is None and gs_config is None:
                raise APSQError("--other-gs prices --gs or --gs-config instead of a traced model's own group "
                                "sizes: give one of them")
            w = w.without_own_gs()
        if engine == "zigzag":
            res = _run_zigzag(w, dataflow, psum_bits, acc, baseline_bits, spill, zigzag_mapping,
                              progress=not as_json)
        else:
            options = {"baseline_bits": baseline_bits, "spill": spill, "psum_granularity": psum_granularity,
                       "override_tile": override_tile, "gs_above_banks": "error",
                       "tile_mismatch": "error"}
            cmp, summ = _run_apsq(w, dataflow, _gs_spec(gs, gs_config, w), psum_bits, acc, mode, schedule, options,
                                  plot=plot, plot_layers_png=plot_layers_png)
    except APSQError as exc:
        fail(exc)
    if engine == "zigzag":
        _print_zigzag(res, w, dataflow, acc.name, psum_bits, spill, as_json=as_json, per_layer=per_layer)
    elif as_json:
        _print_json(cmp, acc.name, summ)
    else:
        _print_report(cmp, summ, w, dataflow, mode, schedule, acc, per_layer=per_layer,
                      written=(plot, plot_layers_png))


def _check_options(dataflow: str, mode: str, engine: str, schedule: str, spill: str, gs: int | None,
                   baseline_bits: int | None, zigzag_mapping: str = "fixed") -> None:
    """The choices and ranges of ``apsq energy``'s options (:class:`APSQError` naming the first bad one)."""
    from apsq.errors import check_choice, check_int
    from apsq.hw.dataflow import DATAFLOWS
    from apsq.hw.dataflow.common import SPILL_RULES
    from apsq.hw.engine_zigzag import MAPPINGS
    from apsq.hw.mapper import SCHEDULES

    check_choice("--dataflow", dataflow, tuple(DATAFLOWS))  # the options as the command spells them
    check_choice("--mode", mode, ("apsq", "psq"))
    check_choice("--engine", engine, ("apsq", "zigzag"))
    check_choice("--schedule", schedule, SCHEDULES)
    check_choice("--spill", spill, SPILL_RULES)
    check_choice("--zigzag-mapping", zigzag_mapping, MAPPINGS)
    if engine != "zigzag" and zigzag_mapping != "fixed":
        raise APSQError(f"--zigzag-mapping {zigzag_mapping} applies to --engine zigzag only (--engine {engine})")
    if gs is not None:
        check_int("--gs", gs, lo=1)
    if baseline_bits is not None:
        check_int("--baseline-bits", baseline_bits, lo=1, hi=64)


def _refuse_unused_by_zigzag(given: dict[str, bool]) -> None:
    """``--engine zigzag`` runs one fixed comparison; an option it would ignore is an error naming it."""
    unused = [flag for flag, is_given in given.items() if is_given]
    if unused:
        raise APSQError("--engine zigzag compares ZigZag and this model on one setting: PSUMs stored at --psum-bits "
                        "without grouping (gs 1), mode apsq, per-tensor steps, no plots, and the fixed untiled IS / WS "
                        "orders (--zigzag-mapping fixed; with temporal or search, this model's side is tiled); "
                        f"{', '.join(unused)} would be ignored: drop it, or price it with --engine apsq")


def _load_accelerator(accelerator: str | None, dram: str | None) -> Accelerator:
    """``--accelerator`` (a YAML or a built-in; default the 28 nm INT8 one) with ``--dram``'s preset."""
    from apsq.hw.accelerator import load_accelerator, with_dram

    acc = load_accelerator(accelerator)
    return acc if dram is None else with_dram(acc, dram)


def _gs_spec(gs: int | None, gs_config: Path | None, w: Workload) -> Any:
    """``--gs``, or the per-layer gs of ``--gs-config``'s APSQConfig; without either, a traced quantized
    model's own group sizes (``None``), else 2."""
    if gs_config is None:
        return gs if gs is not None else (None if w.own_gs else 2)
    from apsq.nn.config import APSQConfig

    if not gs_config.is_file():
        raise APSQError(f"--gs-config file {str(gs_config)!r} does not exist")
    return APSQConfig.from_yaml(gs_config)


def _run_zigzag(w: Workload, dataflow: str, psum_bits: int, acc: Accelerator, baseline_bits: int | None,
                spill: str, mapping: str, progress: bool = True) -> dict[str, Any]:
    """``--engine zigzag``: ZigZag's total-energy saving beside this model's (stored PSUMs only: IS / WS)."""
    from apsq.hw.energy_runs import zigzag_report

    if dataflow == "os":
        raise APSQError("--engine zigzag compares stored PSUMs; use --dataflow is or ws")
    return zigzag_report(w, dataflow, psum_bits, acc, baseline_bits, spill, progress=progress,
                         console=console(stderr=True), mapping=mapping)


def _run_apsq(w: Workload, dataflow: str, gs_spec: Any, psum_bits: int, acc: Accelerator, mode: str, schedule: str,
              options: dict[str, Any], *, plot: Path | None,
              plot_layers_png: Path | None) -> tuple[Comparison, dict[str, Any]]:
    """This model: baseline vs ``mode`` under ``schedule``, both schedules' summary, and the PNGs asked for."""
    from apsq.hw.energy import compare
    from apsq.hw.energy_plots import plot_breakdown, plot_layers
    from apsq.hw.energy_runs import schedules_summary

    cmp = compare(w, dataflow, gs_spec, psum_bits, acc, mode=mode, schedule=schedule, **options)
    summ = schedules_summary(w, dataflow, gs_spec, psum_bits, acc, mode, **options)
    if plot is not None:
        plot_breakdown(w, dataflow, psum_bits, acc, str(plot), mode=mode, schedule=schedule, **options)
    if plot_layers_png is not None:
        plot_layers(cmp, str(plot_layers_png))
    return cmp, summ


def _print_zigzag(res: dict[str, Any], w: Workload, dataflow: str, acc_name: str, psum_bits: int, spill: str, *,
                  as_json: bool, per_layer: bool) -> None:
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    con = console()
    if per_layer:
        con.print(_zigzag_table(res, w, dataflow, acc_name, psum_bits, spill))
    con.print(f"ZigZag ({res['zigzag_mapping']} mapping): {100 * res['reduction']:.2f} % of total energy saved; "
              f"apsq model ({res['apsq_model']['schedule']}): {100 * res['apsq_model']['reduction']:.2f} % "
              f"({res['difference_pp']:+.2f} pp)")


def _print_json(cmp: Comparison, acc_name: str, summ: dict[str, Any]) -> None:
    out = cmp.to_json(per_layer=True)
    out["accelerator"] = acc_name
    out["schedules"] = summ
    typer.echo(json.dumps(out, indent=2))


def _print_report(cmp: Comparison, summ: dict[str, Any], w: Workload, dataflow: str, mode: str, schedule: str,
                  acc: Accelerator, *, per_layer: bool, written: tuple[Path | None, ...]) -> None:
    """The tables, the one-line summary and the files written."""
    con = console()
    con.print(_report_table(cmp))
    if per_layer:
        con.print(_layer_table(cmp, w))
    bits = _baseline_bits(cmp)
    con.print(_schedules_table(summ, dataflow, mode, bits))
    bound_b = cmp.baseline.per_layer()
    con.print(
        f"{schedule} schedule: reduction {100 * cmp.reduction:.2f} % of total energy, "
        f"{100 * cmp.psum_reduction:.2f} % of PSUM energy; "
        f"PSUM share of the baseline {100 * cmp.psum_share_baseline:.2f} %; "
        f"stored PSUMs {bits} -> {cmp.apsq.psum_bits} bits (β = stored PSUM bits / act_bits: {bits / acc.act_bits:g} -> "
        f"{cmp.apsq.psum_bits / acc.act_bits:g}); PSUMs spill to DRAM: "
        f"baseline {cmp.baseline.psum_spills}, {mode} {cmp.apsq.psum_spills}; "
        f"latency {cmp.baseline.latency_us:,.1f} / {cmp.apsq.latency_us:,.1f} µs "
        f"(max of compute, DRAM and each buffer port per layer; baseline bound by "
        f"{', '.join(sorted({r['bound_by'] for r in bound_b}))})"
    )
    for f in written:
        if f is not None:
            con.print(f"wrote {literal(f)}")


def energy_sweep(
    model: str = typer.Option(..., "--model", "-m", help=f"built-in: {', '.join(WORKLOADS)}"),
    dataflow: str = typer.Option("ws", "--dataflow", "-d", help="is | ws | os"),
    values: str | None = typer.Option(None, "--values", help="comma-separated sizes (seq len / image size)"),
    phase: str | None = typer.Option(
        None, "--phase", help="llama2-7b: prefill (sweeps seq len) | decode (context)"
    ),
    psum_bits: int = typer.Option(8, "--psum-bits", min=1, max=32),
    accelerator: str | None = typer.Option(
        None, "--accelerator", help=f"accelerator YAML or a built-in: {', '.join(ACCELERATORS)}"
    ),
    schedule: str = typer.Option("untiled", "--schedule", help="untiled | tiled"),
    as_json: bool = typer.Option(False, "--json"),
    plot: Path | None = typer.Option(None, "--plot", dir_okay=False, help="write energy-vs-size PNG"),
) -> None:
    """Energy vs sequence length / image size for the baseline and gs = 1..4, marking DRAM spills."""
    from apsq.errors import check_choice
    from apsq.hw.accelerator import load_accelerator
    from apsq.hw.energy_plots import plot_sweep
    from apsq.hw.energy_runs import SWEEP_DEFAULTS, run_sweep, sweep_option
    from apsq.hw.mapper import SCHEDULES

    try:
        option = sweep_option(model, phase)
        acc = load_accelerator(accelerator)
        vals = parse_ints("--values", values) if values else SWEEP_DEFAULTS[option]
        check_choice("schedule", schedule, SCHEDULES)
        res = run_sweep(model, dataflow, vals, psum_bits, acc, phase, progress=not as_json, schedule=schedule,
                        console=console(stderr=True))
        if plot is not None:
            plot_sweep(res, str(plot))
    except APSQError as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    _print_sweep(res, model, dataflow, option, vals, plot)


def _print_sweep(res: dict[str, Any], model: str, dataflow: str, option: str, vals: tuple[int, ...],
                 plot: Path | None) -> None:
    cfgs = list(res["first_spill"])  # baseline, then the gs values the accelerator's PSUM banks allow
    t = table(f"{literal(model)} {dataflow.upper()}: total energy (µJ) and saved vs the baseline; * = PSUMs spill "
              "to DRAM", option, *cfgs)
    for v in vals:
        cells = []
        base = next(r for r in res["rows"] if r[option] == v and r["config"] == cfgs[0])["total_pj"]
        for c in cfgs:
            r = next(r for r in res["rows"] if r[option] == v and r["config"] == c)
            saved = "" if c == cfgs[0] else f" ({100 * (1 - r['total_pj'] / base):.1f} %)"
            cells.append(f"{r['total_pj'] / 1e6:,.1f}{'*' if r['spills'] else ''}{saved}")
        t.add_row(str(v), *cells)
    con = console()
    con.print(t)
    con.print("first size that spills: " + ", ".join(f"{c}: {'none' if s is None else s}"
                                                     for c, s in res["first_spill"].items()))
    if plot is not None:
        con.print(f"wrote {literal(plot)}")


def register(app: typer.Typer) -> None:
    """Add the ``energy`` sub-app (default action + ``sweep``) to the ``apsq`` CLI."""
    energy = typer_app(help="Energy of a workload on an IS/WS/OS accelerator: INT32-PSUM baseline vs APSQ.")
    energy.callback(invoke_without_command=True)(energy_main)
    energy.command("sweep")(energy_sweep)
    app.add_typer(energy, name="energy")
