"""End to end ``tune-gs``: profile, energy table, both searches, Pareto front, chosen config, plot."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from apsq.errors import APSQError, check_choice
from apsq.hw.accelerator import Accelerator
from apsq.hw.dataflow import DATAFLOWS
from apsq.hw.energy import evaluate
from apsq.hw.workloads.base import Workload
from apsq.nn.config import APSQConfig
from apsq.nn.transform import quant_layers
from apsq.tune.energy_table import energy_table
from apsq.tune.profile import profile_gs
from apsq.tune.search import (
    SearchPoint,
    choice_config,
    choose,
    measure_points,
    measured_search,
    pareto_front,
    predictor_search,
    uniform_points,
)

METHODS = ("both", "predictor", "measured")


def tune_gs(
    fp_model: nn.Module,
    base: APSQConfig,
    workload: Workload,
    calib_batches: Sequence[Any],
    eval_batches: Sequence[Any],
    *,
    gs_values: Sequence[int] = (1, 2, 3, 4),
    dataflow: str = "is",
    accelerator: Accelerator | None = None,
    method: str = "both",
    budget_uj: float | None = None,
    budget_frac: float = 0.5,
    max_points: int | None = 12,
    progress: Callable[[str], None] | None = None,
    override_tile: bool = False,
) -> dict[str, Any]:
    """Run the searches and return the result (JSON-able dict plus ``"config"``, the chosen APSQConfig).

    Budget: ``budget_uj`` (µJ of the whole workload), else ``E_lo + budget_frac·(E_hi − E_lo)`` between
    the cheapest and the dearest uniform gs.

    The energy model steps K by the accelerator's ``pe_array.rows``; ``base.tile`` (and every override's
    tile) must equal it, else an :class:`APSQError` before anything runs, unless ``override_tile`` says
    that pricing the array's tiles for a config trained at another tile is on purpose
    (:func:`apsq.hw.energy.resolve_tile`).
    """
    check_choice("dataflow", dataflow, tuple(DATAFLOWS))
    check_choice("method", method, METHODS)
    if not 0.0 <= budget_frac <= 1.0:
        raise APSQError(f"budget_frac must be in [0, 1], got {budget_frac}")
    from apsq.hw.accelerator import load_accelerator
    from apsq.hw.energy import resolve_tile

    accelerator = accelerator or load_accelerator(None)
    resolve_tile(base, accelerator, override_tile=override_tile, on_mismatch="error")
    prof = profile_gs(fp_model, base, gs_values, calib_batches, eval_batches, progress)
    table = energy_table(workload, prof.layers, base, dataflow, prof.gs_values, accelerator, override_tile=True)
    uni = uniform_points(prof, table)
    e_lo, e_hi = min(p.energy_pj for p in uni), max(p.energy_pj for p in uni)
    budget_pj = budget_uj * 1e6 if budget_uj is not None else e_lo + budget_frac * (e_hi - e_lo)
    paths: dict[str, list[SearchPoint]] = {}
    if method in ("both", "predictor"):
        paths["predictor"] = measure_points(prof, predictor_search(prof, table), max_points, progress)
    if method in ("both", "measured"):
        paths["measured"] = measured_search(prof, table, progress)
    allp = uni + [p for ps in paths.values() for p in ps]
    best = choose(allp, budget_pj)
    # overrides by the names quantize_ matches (an attention matmul module <attn>.apsq_qk is <attn>.qk_matmul)
    config_names = {n: m.layer_name or n for n, m in quant_layers(prof.model)}
    cfg = choice_config(base, {config_names.get(n, n): g for n, g in best.choice.items()})
    check = evaluate(workload, dataflow, "apsq", cfg, base.psum_bits, accelerator, override_tile=True).total_pj
    if abs(check - best.energy_pj) > 1e-6 * check:
        raise APSQError(f"internal: energy table ({best.energy_pj}) and energy model ({check}) disagree")
    base_int32 = evaluate(workload, dataflow, "none", 1, base.psum_bits, accelerator).total_pj
    front = pareto_front(allp)
    return {
        "workload": workload.name,
        "dataflow": dataflow,
        "psum_bits": base.psum_bits,
        "tile": base.tile,
        "gs_values": list(prof.gs_values),
        "layers": list(prof.layers),
        "eval_examples": int(prof.labels.numel()),
        "evaluations": prof.evaluations + len(prof.gs_values),
        "int32_baseline_uj": base_int32 / 1e6,
        "budget_uj": budget_pj / 1e6,
        "layer_stats": {str(g): prof.stats[g] for g in prof.gs_values},
        "layer_energy_uj": {n: {str(g): table.pj[n][g] / 1e6 for g in prof.gs_values} for n in prof.layers},
        "layer_footprint_kib": {n: {str(g): table.footprint_kib[n][g] for g in prof.gs_values} for n in prof.layers},
        "uniform": [p.to_dict() for p in uni],
        "paths": {k: [p.to_dict() for p in v] for k, v in paths.items()},
        "pareto": [p.to_dict() for p in front],
        "chosen": best.to_dict(),
        "config": cfg,
    }


def plot_tune(result: dict[str, Any], out: str) -> None:
    """Accuracy vs energy: uniform gs points, both search paths, the Pareto front, the budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "accuracy", "accuracy"), (axes[1], "kl", "KL(FP || quantized), nats")):
        for name, marker in (("predictor", "o"), ("measured", "s")):
            pts = result["paths"].get(name, [])
            if pts:
                ax.plot([p["energy_uj"] for p in pts], [p[key] for p in pts], marker=marker, ms=3, lw=1,
                        label=f"{name} path")
        for p in result["uniform"]:
            ax.plot([p["energy_uj"]], [p[key]], marker="*", ms=12, ls="none", color="k")
            ax.annotate(p["method"].replace("uniform ", ""), (p["energy_uj"], p[key]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
        fr = result["pareto"]
        ax.plot([p["energy_uj"] for p in fr], [p[key] for p in fr], ls="--", color="grey", lw=1, label="Pareto front")
        ax.axvline(result["budget_uj"], color="r", lw=0.8, label="budget")
        c = result["chosen"]
        ax.plot([c["energy_uj"]], [c[key]], marker="D", ms=8, mfc="none", color="r", ls="none", label="chosen")
        ax.set_xlabel(f"energy (µJ), {result['workload']} {result['dataflow'].upper()}")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"per-layer gs vs uniform gs ({result['eval_examples']} eval examples, stars = uniform gs)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
