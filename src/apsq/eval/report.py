"""Result files and plots of a gs sweep (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def best_gs(scores: Mapping[int, float]) -> int | None:
    """The gs with the highest score, ties to the smaller gs; None for no scores. The one rule by which
    every sweep, study and table names its gs: on a selection split where one was measured, else on the
    reported split (optimistic: ``docs/training-recipe.md``)."""
    return max(scores, key=lambda g: (scores[g], -g)) if scores else None


def accuracy_table(fp32: float | None, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{"fp32": acc, "w8a8": acc, "psq": acc, "apsq": {"<gs>": acc}}`` from per-variant results.

    ``runs`` maps a variant name to its ``result.json`` (``apsq.mode`` / ``apsq.gs`` / ``accuracy``).
    """
    out: dict[str, Any] = {"fp32": fp32, "w8a8": None, "psq": None, "apsq": {}}
    for res in runs.values():
        mode, gs = res["apsq"]["mode"], res["apsq"]["gs"]
        if mode == "none":
            out["w8a8"] = res["accuracy"]
        elif mode == "psq":
            out["psq"] = res["accuracy"]
        else:
            out["apsq"][str(gs)] = res["accuracy"]
    out["apsq"] = dict(sorted(out["apsq"].items(), key=lambda kv: int(kv[0])))
    return out


def plot_accuracy_vs_gs(table: dict[str, Any], path: str | Path, title: str = "",
                        energy: dict[str, dict[str, float]] | None = None,
                        calibrated: Mapping[str, float | None] | None = None, energy_schedule: str = "tiled") -> Path:
    """Accuracy (%) of APSQ per gs with the FP32 / W8A8 / psq levels as lines; energy reduction (%)
    per gs on a second axis when ``energy`` (``{dataflow: {gs: reduction}}``, under the schedule
    ``energy_schedule`` names in the legend) is given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gs = [int(g) for g in table["apsq"]]
    acc = [100 * table["apsq"][str(g)] for g in gs]
    fig, ax = plt.subplots(figsize=(6.4, 5.4), dpi=120)
    ax.plot(gs, acc, "o-", color="C0", lw=2, label="APSQ INT8 PSUM (QAT+KD)")
    for a, g in zip(acc, gs):
        ax.annotate(f"{a:.2f}", (g, a), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    if calibrated:
        cal = [(g, c) for g in gs if (c := calibrated.get(str(g))) is not None]
        ax.plot([g for g, _ in cal], [100 * c for _, c in cal], "x--", color="C0", alpha=0.5,
                label="APSQ, calibration only")
    styles = (("fp32", "FP32", "k", "-"), ("w8a8", "W8A8, INT32 PSUM", "C2", "--"), ("psq", "PSQ INT8", "C3", ":"))
    for key, label, color, ls in styles:
        if table.get(key) is not None:
            ax.axhline(100 * table[key], color=color, ls=ls, lw=1.2, label=f"{label} ({100 * table[key]:.2f})")
    ax.set_xlabel("APSQ group size gs")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(gs)
    ax.grid(alpha=0.3)
    if energy:
        ax2 = ax.twinx()
        for i, (df, red) in enumerate(energy.items()):
            eg = [g for g in gs if str(g) in red]
            ax2.plot(eg, [100 * red[str(g)] for g in eg], "s-.", color=f"C{4 + i}", alpha=0.7,
                     label=f"total energy saved {df.upper()} ({energy_schedule} schedule)")
        ax2.set_ylabel("total energy saved vs INT32 PSUM (%)")
        top = max((100 * v for red in energy.values() for v in red.values()), default=0.0)
        ax2.set_ylim(0, min(100.0, max(10.0, 1.2 * top)))  # from 0: small differences are not magnified
        h2, l2 = ax2.get_legend_handles_labels()
    else:
        h2, l2 = [], []
    h1, l1 = ax.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    ax.set_title(title or "Accuracy vs APSQ group size", fontsize=10)
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (folders created; the format from the suffix) and close it, so a
    long run that draws many figures does not keep them in memory. Returns the path written."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
