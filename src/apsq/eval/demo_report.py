"""The demo's calibration-only run and its report files (``demo.json``, ``demo.png``).

``apsq demo --calibration-only`` (:func:`run_calibration_demo`): the real all-MiniLM-L6-v2, quantized
per PSUM variant and calibrated, hidden states compared with full precision. :func:`write_report`
writes the QAT demo's result (:func:`apsq.eval.demo.demo_run`) as JSON and a two-panel figure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import apsq

if TYPE_CHECKING:  # torch is imported when a run starts
    import torch

__all__ = ["DemoRow", "best_apsq", "plot_demo", "run_calibration_demo", "write_report"]

# Movie-review sentences used when the review corpus has not been fetched (the demo must run offline).
CALIBRATION_SENTENCES = (
    "A gripping, beautifully shot story that never loses its nerve.",
    "The plot is thin and the jokes land with a thud.",
    "Its performances are so natural that you forget you are watching actors.",
    "Two hours of noise, explosions and nothing else.",
    "A small film with a big heart and a sharp sense of humour.",
    "The director seems to have lost interest halfway through.",
    "Every frame is packed with detail, and the score is haunting.",
    "Predictable, overlong and strangely joyless.",
)
EVALUATION_SENTENCES = (
    "An intelligent, moving drama that earns every one of its tears.",
    "The dialogue is clumsy and the characters are cardboard cut-outs.",
    "Funny, warm and surprisingly wise about growing older.",
    "I kept checking my watch, waiting for something to happen.",
    "A bold experiment that mostly pays off.",
    "The sequel repeats the original's mistakes and adds a few of its own.",
    "Visually stunning, though the story never quite catches fire.",
    "One of the most charming films of the year.",
)


@dataclass
class DemoRow:
    """One quantization variant: relative error of the hidden states and embedding similarity."""

    variant: str
    mode: str
    gs: int
    rel_error: float
    cosine: float
    psum_saturation: float
    max_tiles: int


def _variants() -> list[tuple[str, apsq.APSQConfig]]:
    out = [("W8A8, INT32 PSUM", apsq.APSQConfig(mode="none", attention_matmuls=True)),
           ("W8A8, PSQ INT8", apsq.APSQConfig(mode="psq", attention_matmuls=True))]
    out += [(f"W8A8, APSQ INT8 gs={g}", apsq.APSQConfig(mode="apsq", gs=g, attention_matmuls=True)) for g in (1, 2, 3, 4)]
    return out


def _mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1)


def run_calibration_demo(max_rows: int = 512, progress: bool = True) -> list[DemoRow]:
    """Quantize MiniLM in each mode, calibrate on one set of sentences, evaluate on another.

    The model is loaded once; each variant quantizes its own copy of it."""
    import copy

    import torch
    from rich.progress import Progress

    from apsq.models.minilm import load_minilm

    fp, tok = load_minilm()
    fp.eval()
    calib = tok(list(CALIBRATION_SENTENCES), padding=True, return_tensors="pt")
    evalb = tok(list(EVALUATION_SENTENCES), padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = fp(**evalb).last_hidden_state
    ref_emb = _mean_pool(ref, evalb["attention_mask"])
    rows = []
    variants = _variants()
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("quantize + calibrate MiniLM", total=len(variants))
        for name, cfg in variants:
            model = copy.deepcopy(fp)
            apsq.quantize_(model, cfg)
            apsq.calibrate(model, [calib], max_rows=max_rows)
            with torch.no_grad(), apsq.track_stats(model) as stats:
                h = model(**evalb).last_hidden_state
            emb = _mean_pool(h, evalb["attention_mask"])
            n_val = sum(s.psum_values for s in stats)
            rows.append(DemoRow(
                variant=name, mode=cfg.mode, gs=cfg.gs,
                rel_error=float((h - ref).norm() / ref.norm()),
                cosine=float(torch.nn.functional.cosine_similarity(emb, ref_emb).mean()),
                psum_saturation=(sum(s.psum_saturated for s in stats) / n_val) if n_val else 0.0,
                max_tiles=max(s.n_tiles for s in stats),
            ))
            bar.advance(task)
    return rows


def best_apsq(res: dict) -> tuple[str, dict, str] | None:
    """The APSQ variant to report: ``(name, row, chosen_on)``, or None without APSQ variants.

    Chosen on the validation split (the highest ``selection_accuracy``, ties to the smaller gs, as
    :func:`apsq.eval.sweep.select_gs`) when every APSQ row has one, ``chosen_on = "validation"``; otherwise
    on the reported test accuracy itself, ``chosen_on = "test"`` (an optimistic choice, issue 24)."""
    rows = [(n, r) for n, r in res["variants"].items() if r["mode"] == "apsq"]
    if not rows:
        return None
    from apsq.eval.report import best_gs

    on = "validation" if all(r.get("selection_accuracy") is not None for _, r in rows) else "test"
    key = "selection_accuracy" if on == "validation" else "accuracy"
    g = best_gs({r["gs"]: r[key] for _, r in rows})
    name, row = next((n, r) for n, r in rows if r["gs"] == g)
    return name, row, on


def plot_demo(res: dict, path: Path) -> Path:
    """Two panels: test accuracy per variant (with 95 % intervals, FP32 as a line) and the energy
    model's reduction per gs (IS, WS), so that markers of the two never share an axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["variants"])
    acc = [100 * res["variants"][k]["accuracy"] for k in names]
    err = [100 * (res["variants"][k].get("interval95") or 0.0) for k in names]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.4), dpi=120, gridspec_kw={"width_ratios": [3, 2]})
    ax.errorbar(range(len(names)), acc, yerr=err, fmt="o", color="C0", capsize=4, label="QAT + KD (95 % interval)")
    for i, a in enumerate(acc):
        ax.annotate(f"{a:.1f}", (i, a), textcoords="offset points", xytext=(8, 0), va="center", fontsize=8)
    ax.axhline(100 * res["fp32"], color="k", lw=1.2, label=f"FP32 ({100 * res['fp32']:.1f})")
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    energy = res.get("energy_reduction", {})
    total = energy.get("total") if isinstance(energy, dict) else None
    if total:
        sched = energy.get("schedule", "untiled")
        untiled = (energy.get("untiled") or {}).get("total", {})
        spills = (energy.get("untiled") or {}).get("spills", {})
        for i, (df, red) in enumerate(sorted(total.items())):
            gs = sorted(int(g) for g in red)
            ax2.plot(gs, [100 * red[str(g)] for g in gs], "s-", color=f"C{i + 1}", label=f"{df.upper()}, {sched}")
            ax2.set_xticks(gs)
            if df in untiled:  # the fixed loop orders beside, labelled with whether INT32 PSUMs spill
                sp = any(v["baseline"] for v in spills.get(df, {}).values())
                ax2.plot(gs, [100 * untiled[df][str(g)] for g in gs], "s--", color=f"C{i + 1}", alpha=0.5,
                         label=f"{df.upper()}, untiled ({'INT32 PSUMs spill to DRAM' if sp else 'no spill'})")
        ax2.set_xlabel("APSQ group size gs")
        ax2.set_ylabel("total energy saved vs INT32 PSUMs (%)")
        ax2.legend(fontsize=7)
    else:
        ax2.text(0.5, 0.5, "energy model unavailable", ha="center", transform=ax2.transAxes)
    ax2.set_title("energy (accelerator model; solid: the mapper's tiled schedule)", fontsize=9)
    ax2.grid(alpha=0.3)
    fig.suptitle("apsq demo: all-MiniLM-L6-v2, movie-review sentences, W8A8")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def write_report(res: dict, out: Path) -> None:
    """``out/demo.png`` (:func:`plot_demo`) and ``out/demo.json``."""
    plot_demo(res, out / "demo.png")
    (out / "demo.json").write_text(json.dumps(res, indent=2))
