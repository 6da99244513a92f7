"""Figures of ``apsq energy``: the breakdown bars (the look of the paper's Figure 1), energy vs size, and
energy per layer. matplotlib (Agg) is imported inside each function, so importing this module is cheap.
"""

from __future__ import annotations

from typing import Any

from apsq.hw.accelerator import Accelerator, default_accelerator
from apsq.hw.energy import Comparison, compare
from apsq.hw.energy_runs import GS_RANGE
from apsq.hw.workloads import Workload

__all__ = ["plot_breakdown", "plot_layers", "plot_sweep"]


def plot_breakdown(
    workload: Workload,
    dataflow: str,
    psum_bits: int,
    acc: Accelerator | None,
    out: str,
    gs_values: tuple[int, ...] = GS_RANGE,
    mode: str = "apsq",
    schedule: str = "untiled",
    **options: Any,
) -> list[tuple[str, float]]:
    """Stacked bars (the look of the paper's Figure 1): baseline and APSQ per gs, split by operand/level.

    ``options`` are :func:`apsq.hw.energy.compare`'s (``baseline_bits``, ``spill``, ``psum_granularity``,
    ...), so the bars price what the command's table prices; gs values above the PSUM buffer's banks are
    left out (the machine cannot run them); ``psq`` (no groups) is one bar. Returns the bars drawn: (label,
    total energy in pJ).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workload = workload.without_own_gs()  # a sweep over gs: a traced model's own gs is one of the bars
    banks = (acc or default_accelerator()).buffers.psum.banks
    gs_values = tuple(g for g in gs_values if g <= banks) or (1,)
    if mode == "psq":  # PSQ has no groups: one bar, not four equal ones labelled gs = 1..4
        gs_values = (1,)
    cmps = [compare(workload, dataflow, g, psum_bits, acc, mode=mode, schedule=schedule, **options)
            for g in gs_values]
    reports = [cmps[0].baseline] + [c.apsq for c in cmps]
    base_bits = int(reports[0].summary()["psum_bits"])
    labels = [f"INT{base_bits}\nbaseline"] + [mode.upper() if mode == "psq" else f"{mode.upper()}\ngs={g}"
                                               for g in gs_values]
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
    ax.set_title(f"{workload.name}, {dataflow.upper()} ({schedule}), PSUM {psum_bits} b vs INT{base_bits}")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return [(label, r.total_pj) for label, r in zip(labels, reports)]


def plot_sweep(result: dict[str, Any], out: str) -> None:
    """Total energy vs size per config (log-log), with a marker at each config's first DRAM spill."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    opt = result["option"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for c in result["first_spill"]:  # the configs, in column order
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
    base = f"INT{b.summary()['psum_bits']}"
    ax.bar(x - w / 2, b_tot - b_dram, w, color="#4c72b0", label=f"{base}: on-chip")
    ax.bar(x - w / 2, b_dram, w, bottom=b_tot - b_dram, color="#c44e52", label=f"{base}: DRAM")
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
