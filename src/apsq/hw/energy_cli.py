"""``apsq energy`` (one workload, baseline vs APSQ) and ``apsq energy sweep`` (energy vs size)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from apsq.errors import APSQError, check_choice, check_int, literal, print_error
from apsq.hw.accelerator import (
    BUILTIN_ACCELERATORS,
    DRAM_PRESETS,
    Accelerator,
    load_accelerator,
    with_dram,
)
from apsq.hw.dataflow import DATAFLOWS, LEVELS, OPERANDS
from apsq.hw.dataflow.common import SPILL_RULES
from apsq.hw.energy import Comparison, EnergyReport, compare, evaluate
from apsq.hw.engine_zigzag import evaluate_zigzag
from apsq.hw.mapper import SCHEDULES
from apsq.hw.workloads import (
    BUILTIN_WORKLOADS,
    SWEEP_OPTION,
    Workload,
    builtin_workload,
    load_workload_file,
    trace_factory,
)

__all__ = ["register", "load_workload", "plot_breakdown", "plot_layers", "run_sweep", "plot_sweep", "SWEEP_DEFAULTS",
           "schedules_summary"]

SWEEP_DEFAULTS = {
    "seq_len": (32, 64, 128, 256, 512, 1024, 2048),
    "image_size": (128, 256, 384, 512, 768, 1024),
    "context": (128, 512, 2048, 8192, 32768),
}
GS_RANGE = (1, 2, 3, 4)


def _import_factory(spec: str):  # noqa: ANN202
    if ":" not in spec:
        raise APSQError(f"--trace must be 'module:factory' or 'path/file.py:factory', got {spec!r}")
    mod_name, attr = spec.rsplit(":", 1)
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise APSQError(f"--trace: file {mod_name!r} does not exist")
        s = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(s)
        s.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise APSQError(f"--trace: cannot import module {mod_name!r}: {exc}") from None
    if not hasattr(module, attr):
        raise APSQError(f"--trace: module {mod_name!r} has no attribute {attr!r}")
    return getattr(module, attr)


def load_workload(model: str | None, trace: str | None, workload_file: str | Path | None = None,
                  **options: Any) -> Workload:
    """A built-in workload (``model``), one traced from ``module:factory`` (``trace``) or a workload YAML."""
    if sum(x is not None for x in (model, trace, workload_file)) != 1:
        raise APSQError(f"give exactly one of --model ({', '.join(BUILTIN_WORKLOADS)}), --trace module:factory "
                        "or --workload FILE")
    if model is not None:
        return builtin_workload(model, **options)
    given = sorted(k for k, v in options.items() if v is not None)
    if given:
        raise APSQError(f"options {given} apply to built-in models only; a --trace factory or --workload file sets "
                        "its own shapes")
    if workload_file is not None:
        return load_workload_file(workload_file)
    factory = _import_factory(trace)
    try:
        return trace_factory(factory, name=trace)
    except APSQError:
        raise
    except Exception as exc:  # the user's model failed to run on the meta device
        raise APSQError(f"--trace {trace}: tracing on the meta device failed: {type(exc).__name__}: {exc}") from exc


def _report_table(cmp: Comparison) -> Table:
    sched = cmp.baseline.schedule.kind if cmp.baseline.schedule is not None else "untiled"
    t = Table(title=f"{literal(cmp.baseline.workload)} — {cmp.baseline.dataflow.upper()} ({sched}) — energy (µJ)")
    t.add_column("operand")
    t.add_column("level")
    t.add_column("baseline (INT32 PSUM)", justify="right")
    t.add_column(f"{cmp.apsq.mode} (gs={_gs_label(cmp.apsq)}, {cmp.apsq.psum_bits}b)", justify="right")
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


def _gs_label(r: EnergyReport) -> str:
    vals = sorted(set(r.gs.tolist()))
    return str(vals[0]) if len(vals) == 1 else "per-layer"


def _layer_table(cmp: Comparison, w: Workload) -> Table:
    sched = cmp.baseline.schedule.kind if cmp.baseline.schedule is not None else "untiled"
    t = Table(title=f"per layer ({sched} schedule)")
    for col in ("layer", "M", "K", "N", "count", "baseline µJ", "apsq µJ", "PSUM KiB b/a", "spill b/a",
                "mapping b / a (order, tiles)"):
        t.add_column(col, justify="left" if col in ("layer", "mapping b / a (order, tiles)") else "right")
    for ly, b, a in zip(w.layers, cmp.baseline.per_layer(), cmp.apsq.per_layer()):
        mb, ma = b.get("mapping", {}), a.get("mapping", {})
        t.add_row(
            literal(ly.name),
            str(ly.m),
            str(ly.k),
            str(ly.n),
            str(ly.count),
            f"{b['total_pj'] / 1e6:,.3f}",
            f"{a['total_pj'] / 1e6:,.3f}",
            f"{b['psum_footprint_kib']:.1f}/{a['psum_footprint_kib']:.1f}",
            f"{b['psum_spill']:.2f}/{a['psum_spill']:.2f}",
            f"{mb.get('order', '')} x{mb.get('tiles', 1)} / {ma.get('order', '')} x{ma.get('tiles', 1)}",
        )
    return t


def plot_breakdown(
    workload: Workload,
    dataflow: str,
    psum_bits: int,
    acc: Accelerator | None,
    out: str,
    gs_values: tuple[int, ...] = GS_RANGE,
    mode: str = "apsq",
    schedule: str = "untiled",
) -> None:
    """Stacked bars (the look of the paper's Figure 1): baseline and APSQ per gs, split by operand/level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = [evaluate(workload, dataflow, "none", 1, psum_bits, acc, schedule=schedule)]
    reports += [evaluate(workload, dataflow, mode, g, psum_bits, acc, schedule=schedule) for g in gs_values]
    labels = ["INT32\nbaseline"] + [f"{mode.upper()}\ngs={g}" for g in gs_values]
    parts = [
        ("MAC + RAE logic", None, None),
        ("input", 0, None),
        ("weight", 1, None),
        ("output", 3, None),
        ("PSUM reg", 2, 0),
        ("PSUM SRAM", 2, 1),
        ("PSUM DRAM", 2, 2),
    ]
    colors = ["#999999", "#4c72b0", "#55a868", "#8172b2", "#f5c396", "#dd8452", "#c44e52"]
    fig, ax = plt.subplots(figsize=(1.4 * len(labels) + 2.5, 4.2))
    bottom = [0.0] * len(reports)
    for (label, op, lv), color in zip(parts, colors):
        vals = []
        for r in reports:
            e = r.energy_pj.sum(axis=0)
            v = r.mac_pj.sum() + (0 if r.rae_pj is None else r.rae_pj.sum()) if op is None else (
                e[op].sum() if lv is None else e[op, lv])
            vals.append(v / 1e6)
        ax.bar(labels, vals, bottom=bottom, label=label, color=color)
        bottom = [b + v for b, v in zip(bottom, vals)]
    base = reports[0].total_pj
    for i, r in enumerate(reports[1:], start=1):
        ax.text(i, bottom[i], f"-{100 * (1 - r.total_pj / base):.1f}%", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("energy (µJ)")
    ax.set_title(f"{workload.name}, {dataflow.upper()} ({schedule}), PSUM {psum_bits} b vs INT32")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def run_sweep(
    model: str,
    dataflow: str,
    values: tuple[int, ...],
    psum_bits: int = 8,
    acc: Accelerator | None = None,
    phase: str | None = None,
    progress: bool = True,
    mode: str = "apsq",
    schedule: str = "untiled",
) -> dict[str, Any]:
    """Energy vs the model's size option, for the baseline and gs = 1..4; first spilling size per config."""
    check_choice("model", model, tuple(BUILTIN_WORKLOADS))
    check_choice("dataflow", dataflow, tuple(DATAFLOWS))
    option = "context" if (model == "llama2-7b" and phase == "decode") else SWEEP_OPTION[model]
    extra = {"phase": phase} if model == "llama2-7b" and phase else {}
    configs = ["baseline"] + [f"gs={g}" for g in GS_RANGE]
    rows: list[dict[str, Any]] = []
    from rich.progress import track

    it = track(values, description=f"sweep {model} {option}") if progress else values
    for v in it:
        w = builtin_workload(model, **{option: check_int(option, v, lo=1)}, **extra)
        reps = [evaluate(w, dataflow, "none", 1, psum_bits, acc, schedule=schedule)]
        reps += [evaluate(w, dataflow, mode, g, psum_bits, acc, schedule=schedule) for g in GS_RANGE]
        for c, r in zip(configs, reps):
            rows.append({option: v, "config": c, "total_pj": r.total_pj, "psum_pj": r.psum_pj, "spills": r.psum_spills})
    first_spill = {}
    for c in configs:
        hits = [r[option] for r in rows if r["config"] == c and r["spills"]]
        first_spill[c] = min(hits) if hits else None
    return {
        "model": model,
        "dataflow": dataflow,
        "option": option,
        "psum_bits": psum_bits,
        "schedule": schedule,
        "rows": rows,
        "first_spill": first_spill,
    }


def plot_sweep(result: dict[str, Any], out: str) -> None:
    """Total energy vs size per config (log-log), with a marker at each config's first DRAM spill."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    opt = result["option"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for c in ["baseline"] + [f"gs={g}" for g in GS_RANGE]:
        pts = [r for r in result["rows"] if r["config"] == c]
        xs, ys = [p[opt] for p in pts], [p["total_pj"] / 1e6 for p in pts]
        (line,) = ax.plot(xs, ys, marker="o", ms=3, label=c, ls="--" if c == "baseline" else "-")
        s = result["first_spill"][c]
        if s is not None:
            y = next(p["total_pj"] / 1e6 for p in pts if p[opt] == s)
            ax.plot([s], [y], marker="X", ms=9, color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(opt)
    ax.set_ylabel("energy (µJ)")
    ax.set_title(f"{result['model']} {result['dataflow'].upper()} ({result.get('schedule', 'untiled')}): "
                 "X = PSUMs start spilling to DRAM")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _fail(exc: Exception) -> None:
    print_error(exc)  # the message literally: user file / model names are never read as markup
    raise typer.Exit(2)


def _console() -> Console:
    """A console that keeps sentences whole when piped (no wrapping at 80 columns)."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=200, soft_wrap=True)


def schedules_summary(w: Workload, dataflow: str, gs_spec: Any, psum_bits: int, acc: Accelerator, mode: str,
                      **options: Any) -> dict[str, Any]:
    """Total / PSUM-only / on-chip savings under both schedules, and OS beside them (pJ and fractions)."""
    out: dict[str, Any] = {}
    for sched in SCHEDULES:
        c = compare(w, dataflow, gs_spec, psum_bits, acc, mode=mode, schedule=sched, **options)
        os_e = evaluate(w, "os", "none", gs_spec, psum_bits, acc, schedule=sched,
                        **{k: v for k, v in options.items() if k != "baseline_bits"})
        out[sched] = {
            "baseline_pj": c.baseline.total_pj,
            "apsq_pj": c.apsq.total_pj,
            "reduction": c.reduction,
            "psum_reduction": c.psum_reduction,
            "on_chip_reduction": c.on_chip_reduction,
            "baseline_spills": c.baseline.psum_spills,
            "apsq_spills": c.apsq.psum_spills,
            "os_pj": os_e.total_pj,
        }
    return out


def _schedules_table(summ: dict[str, Any], dataflow: str, mode: str) -> Table:
    t = Table(title=f"{dataflow.upper()} under both schedules, OS beside (energy µJ; saved = 1 - {mode} / INT32)")
    for col in ("schedule", "INT32 baseline", mode, "total saved", "PSUM saved", "on-chip saved", "spills b/a", "OS"):
        t.add_column(col, justify="left" if col == "schedule" else "right")
    for sched, r in summ.items():
        t.add_row(sched, f"{r['baseline_pj'] / 1e6:,.3f}", f"{r['apsq_pj'] / 1e6:,.3f}", f"{100 * r['reduction']:.2f} %",
                  f"{100 * r['psum_reduction']:.2f} %", f"{100 * r['on_chip_reduction']:.2f} %",
                  f"{'yes' if r['baseline_spills'] else 'no'}/{'yes' if r['apsq_spills'] else 'no'}",
                  f"{r['os_pj'] / 1e6:,.3f}")
    return t


def plot_layers(cmp: Comparison, out: str) -> None:
    """Per-layer energy bars (baseline vs quantized PSUMs, stacked DRAM / on-chip) and the saving per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    b, a = cmp.baseline, cmp.apsq
    L = len(b.layer_names)
    x = np.arange(L)
    b_dram, a_dram = b.energy_pj[:, :, 2].sum(axis=1) / 1e6, a.energy_pj[:, :, 2].sum(axis=1) / 1e6
    b_tot, a_tot = b.layer_total_pj / 1e6, a.layer_total_pj / 1e6
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(max(7.0, 0.12 * L + 3), 6.2), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    w = 0.42
    ax.bar(x - w / 2, b_tot - b_dram, w, color="#4c72b0", label="INT32: on-chip")
    ax.bar(x - w / 2, b_dram, w, bottom=b_tot - b_dram, color="#c44e52", label="INT32: DRAM")
    ax.bar(x + w / 2, a_tot - a_dram, w, color="#55a868", label=f"{a.mode} {a.psum_bits} b: on-chip")
    ax.bar(x + w / 2, a_dram, w, bottom=a_tot - a_dram, color="#dd8452", label=f"{a.mode} {a.psum_bits} b: DRAM")
    ax.set_ylabel("energy (µJ)")
    ax.set_yscale("log")
    sched = b.schedule.kind if b.schedule is not None else "untiled"
    ax.set_title(f"{b.workload}, {b.dataflow.upper()}, {sched} schedule: energy per layer")
    ax.legend(fontsize=7, ncol=2)
    ax2.bar(x, 100 * cmp.layer_reduction, color="#8172b2")
    ax2.set_ylabel("saved (%)")
    ax2.set_xticks(x)
    ax2.set_xticklabels([n[-28:] for n in b.layer_names], rotation=90, fontsize=5 if L > 40 else 7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _zigzag_report(w: Workload, dataflow: str, psum_bits: int, acc: Accelerator, baseline_bits: int | None,
                   spill: str) -> dict[str, Any]:
    """ZigZag's result beside ours (same fixed orders, untiled), per layer and in total."""
    z = evaluate_zigzag(w, dataflow, psum_bits, acc, baseline_bits)
    ours = compare(w, dataflow, 1, psum_bits, acc, mode="apsq", baseline_bits=baseline_bits, spill=spill,
                   gs_above_banks="warn")
    out = z.to_json()
    out["accelerator"] = acc.name
    out["apsq_model"] = {"spill": spill, "schedule": "untiled", "gs": 1, "reduction": ours.reduction,
                         "baseline_pj": ours.baseline.total_pj, "apsq_pj": ours.apsq.total_pj}
    for row, r in zip(out["layers"], ours.layer_reduction):
        row["apsq_model_reduction"] = float(r)
        row["difference_pp"] = 100 * (float(r) - row["reduction"])
    out["difference_pp"] = 100 * (ours.reduction - z.reduction)
    return out


def register(app: typer.Typer) -> None:
    """Add the ``energy`` sub-app (default action + ``sweep``) to the ``apsq`` CLI."""
    energy = typer.Typer(help="Energy of a workload on an IS/WS/OS accelerator: INT32-PSUM baseline vs APSQ.")

    @energy.callback(invoke_without_command=True)
    def energy_main(
        ctx: typer.Context,
        model: str | None = typer.Option(None, "--model", "-m", help=f"built-in: {', '.join(BUILTIN_WORKLOADS)}"),
        trace: str | None = typer.Option(
            None, "--trace", help="module:factory returning (model, inputs) or a Workload"
        ),
        workload_file: Path | None = typer.Option(
            None, "--workload", help="workload YAML: layers: [{name, m, k, n, count} or {name, conv: {...}}]"
        ),
        dataflow: str = typer.Option("ws", "--dataflow", "-d", help="is | ws | os"),
        gs: int = typer.Option(2, "--gs", help="APSQ group size (>= 1, at most the PSUM buffer's banks)"),
        gs_config: Path | None = typer.Option(
            None, "--gs-config", help="APSQConfig YAML: per-layer gs from its gs + overrides (replaces --gs)"
        ),
        psum_bits: int = typer.Option(8, "--psum-bits", help="stored PSUM width in APSQ mode (bits)"),
        baseline_bits: int | None = typer.Option(
            None, "--baseline-bits", help="stored PSUM width of the baseline (default: the accelerator's acc_bits)"
        ),
        mode: str = typer.Option("apsq", "--mode", help="quantized PSUM mode to compare: apsq | psq"),
        accelerator: str | None = typer.Option(
            None, "--accelerator", help=f"accelerator YAML or a built-in: {', '.join(BUILTIN_ACCELERATORS)}"
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
        seq_len: int | None = typer.Option(None, "--seq-len", help="bert-base / llama2-7b prefill tokens"),
        image_size: int | None = typer.Option(None, "--image-size", help="segformer-b0 / efficientvit-b1 input size"),
        phase: str | None = typer.Option(None, "--phase", help="llama2-7b: prefill | decode"),
        context: int | None = typer.Option(None, "--context", help="llama2-7b decode: KV-cache length"),
        as_json: bool = typer.Option(False, "--json", help="print JSON (always with the per-layer breakdown)"),
        per_layer: bool = typer.Option(False, "--per-layer", help="per-layer table"),
        plot: Path | None = typer.Option(None, "--plot", help="write a breakdown PNG (baseline vs gs=1..4)"),
        plot_layers_png: Path | None = typer.Option(None, "--plot-layers", help="write a per-layer energy PNG"),
    ) -> None:
        if ctx.invoked_subcommand is not None:
            return
        try:
            check_choice("dataflow", dataflow, tuple(DATAFLOWS))
            check_choice("mode", mode, ("apsq", "psq"))
            check_choice("engine", engine, ("apsq", "zigzag"))
            check_choice("schedule", schedule, SCHEDULES)
            check_choice("spill", spill, SPILL_RULES)
            check_int("gs", gs, lo=1)
            if baseline_bits is not None:
                check_int("--baseline-bits", baseline_bits, lo=1, hi=64)
            acc = load_accelerator(accelerator)
            if dram is not None:
                acc = with_dram(acc, dram)
            opts = {"seq_len": seq_len, "image_size": image_size, "phase": phase, "context": context}
            w = load_workload(model, trace, workload_file=workload_file, **opts)
            if engine == "zigzag":
                if dataflow == "os":
                    raise APSQError("--engine zigzag compares stored PSUMs; use --dataflow is or ws")
                res = _zigzag_report(w, dataflow, psum_bits, acc, baseline_bits, spill)
            else:
                gs_spec: Any = gs
                if gs_config is not None:
                    from apsq.nn.config import APSQConfig

                    if not gs_config.is_file():
                        raise APSQError(f"--gs-config file {str(gs_config)!r} does not exist")
                    gs_spec = APSQConfig.from_yaml(gs_config)
                options = {"baseline_bits": baseline_bits, "spill": spill, "psum_granularity": psum_granularity,
                           "override_tile": override_tile, "gs_above_banks": "error",
                           "tile_mismatch": "error"}
                cmp = compare(w, dataflow, gs_spec, psum_bits, acc, mode=mode, schedule=schedule, **options)
                summ = schedules_summary(w, dataflow, gs_spec, psum_bits, acc, mode, **options)
                if plot is not None:
                    plot_breakdown(w, dataflow, psum_bits, acc, str(plot), mode=mode, schedule=schedule)
                if plot_layers_png is not None:
                    plot_layers(cmp, str(plot_layers_png))
        except APSQError as exc:
            _fail(exc)
            return
        con = _console()
        if engine == "zigzag":
            if as_json:
                typer.echo(json.dumps(res, indent=2))
                return
            t = Table(title=f"{literal(w.name)} {dataflow.upper()} on {literal(acc.name)}: total energy saved, "
                            f"INT{res['baseline_bits']} -> INT{psum_bits} PSUMs (ZigZag vs apsq, {spill} spill)")
            for col in ("layer", "ZigZag", "apsq", "diff (pp)"):
                t.add_column(col, justify="left" if col == "layer" else "right")
            for row in res["layers"]:
                t.add_row(literal(row["name"]), f"{100 * row['reduction']:.2f} %",
                          f"{100 * row['apsq_model_reduction']:.2f} %", f"{row['difference_pp']:+.2f}")
            if per_layer:
                con.print(t)
            con.print(f"ZigZag: {100 * res['reduction']:.2f} % of total energy saved; apsq model: "
                      f"{100 * res['apsq_model']['reduction']:.2f} % ({res['difference_pp']:+.2f} pp)")
            return
        if as_json:
            out = cmp.to_json(per_layer=True)
            out["accelerator"] = acc.name
            out["schedules"] = summ
            typer.echo(json.dumps(out, indent=2))
            return
        con.print(_report_table(cmp))
        if per_layer:
            con.print(_layer_table(cmp, w))
        con.print(_schedules_table(summ, dataflow, mode))
        bound_b = cmp.baseline.per_layer()
        con.print(
            f"{schedule} schedule: reduction {100 * cmp.reduction:.2f} % of total energy, "
            f"{100 * cmp.psum_reduction:.2f} % of PSUM energy; "
            f"PSUM share of the baseline {100 * cmp.psum_share_baseline:.2f} %; PSUMs spill to DRAM: "
            f"baseline {cmp.baseline.psum_spills}, {mode} {cmp.apsq.psum_spills}; "
            f"latency {cmp.baseline.latency_us:,.1f} / {cmp.apsq.latency_us:,.1f} µs "
            f"(max of compute, DRAM and each buffer port per layer; baseline bound by "
            f"{', '.join(sorted({r['bound_by'] for r in bound_b}))})"
        )
        for f in (plot, plot_layers_png):
            if f is not None:
                con.print(f"wrote {literal(f)}")

    @energy.command("sweep")
    def energy_sweep(
        model: str = typer.Option(..., "--model", "-m", help=f"built-in: {', '.join(BUILTIN_WORKLOADS)}"),
        dataflow: str = typer.Option("ws", "--dataflow", "-d", help="is | ws | os"),
        values: str | None = typer.Option(None, "--values", help="comma-separated sizes (seq len / image size)"),
        phase: str | None = typer.Option(
            None, "--phase", help="llama2-7b: prefill (sweeps seq len) | decode (context)"
        ),
        psum_bits: int = typer.Option(8, "--psum-bits"),
        accelerator: str | None = typer.Option(
            None, "--accelerator", help=f"accelerator YAML or a built-in: {', '.join(BUILTIN_ACCELERATORS)}"
        ),
        schedule: str = typer.Option("untiled", "--schedule", help="untiled | tiled"),
        as_json: bool = typer.Option(False, "--json"),
        plot: Path | None = typer.Option(None, "--plot", help="write energy-vs-size PNG"),
    ) -> None:
        """Energy vs sequence length / image size for the baseline and gs = 1..4, marking DRAM spills."""
        try:
            check_choice("model", model, tuple(BUILTIN_WORKLOADS))
            acc = load_accelerator(accelerator)
            option = "context" if (model == "llama2-7b" and phase == "decode") else SWEEP_OPTION[model]
            if values:
                try:
                    vals = tuple(int(v) for v in values.split(","))
                except ValueError:
                    raise APSQError(f"--values must be comma-separated integers, got {values!r}") from None
            else:
                vals = SWEEP_DEFAULTS[option]
            check_choice("schedule", schedule, SCHEDULES)
            res = run_sweep(model, dataflow, vals, psum_bits, acc, phase, progress=not as_json, schedule=schedule)
            if plot is not None:
                plot_sweep(res, str(plot))
        except APSQError as exc:
            _fail(exc)
            return
        if as_json:
            typer.echo(json.dumps(res, indent=2))
            return
        t = Table(title=f"{literal(model)} {dataflow.upper()}: total energy (µJ); * = PSUMs spill to DRAM")
        t.add_column(option, justify="right")
        cfgs = ["baseline"] + [f"gs={g}" for g in GS_RANGE]
        for c in cfgs:
            t.add_column(c, justify="right")
        for v in vals:
            cells = []
            for c in cfgs:
                r = next(r for r in res["rows"] if r[option] == v and r["config"] == c)
                cells.append(f"{r['total_pj'] / 1e6:,.1f}{'*' if r['spills'] else ''}")
            t.add_row(str(v), *cells)
        con = Console()
        con.print(t)
        con.print("first size that spills: " + ", ".join(f"{c}: {s}" for c, s in res["first_spill"].items()))
        if plot is not None:
            con.print(f"wrote {literal(plot)}")

    app.add_typer(energy, name="energy")


if __name__ == "__main__":  # pragma: no cover
    _app = typer.Typer()
    register(_app)
    _app(sys.argv[1:])
