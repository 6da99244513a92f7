"""``apsq demo``: the main job on its embedded default.

MiniLM (the real all-MiniLM-L6-v2) on the Rotten Tomatoes movie-review sentences, W8A8 with PSUMs in
every mode (INT32 ``none``, ``psq`` INT8, ``apsq`` INT8 with gs = 1..4): a short QAT + distillation
per variant (:func:`apsq.eval.demo.demo_run`), test accuracy beside the energy model's reduction.
``--calibration-only`` skips training and compares hidden states against full precision.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

import apsq
from apsq.errors import literal

if TYPE_CHECKING:  # torch is imported when a command runs: `apsq --help` starts without it
    import torch

QAT_STEPS, FINETUNE_STEPS = 60, 400
"""The CLI's defaults: those of :func:`apsq.eval.demo.demo_run` (kept here so that parsing the command line
imports no training code; ``tests/test_demo_cli.py`` checks they agree)."""

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
    base = dict(attention_matmuls=True)
    out = [("W8A8, INT32 PSUM", apsq.APSQConfig(mode="none", **base)),
           ("W8A8, PSQ INT8", apsq.APSQConfig(mode="psq", **base))]
    out += [(f"W8A8, APSQ INT8 gs={g}", apsq.APSQConfig(mode="apsq", gs=g, **base)) for g in (1, 2, 3, 4)]
    return out


def _mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1)


def run_calibration_demo(max_rows: int = 512, progress: bool = True) -> list[DemoRow]:
    """Quantize MiniLM in each mode, calibrate on one set of sentences, evaluate on another."""
    import torch

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
            model, _ = load_minilm()
            model.eval()
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


def print_rows(rows: list[DemoRow], console: Console) -> None:
    t = Table(title="all-MiniLM-L6-v2, calibration only (no training): output vs full precision")
    for col in ("variant", "rel. error (hidden)", "cosine (embedding)", "PSUM saturation"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        t.add_row(r.variant, f"{r.rel_error:.4f}", f"{r.cosine:.4f}", f"{r.psum_saturation:.2e}")
    console.print(t)


def _pp(x: float) -> str:
    return f"{100 * x:.1f} pp"


def _best_apsq(res: dict) -> tuple[str, dict] | None:
    rows = [(n, r) for n, r in res["variants"].items() if r["mode"] == "apsq"]
    return max(rows, key=lambda nr: nr[1]["accuracy"]) if rows else None


def _qat_table(res: dict, console: Console) -> None:
    energy = res.get("energy_reduction", {})
    total = energy.get("total", {}) if isinstance(energy, dict) else {}
    with_cal = any(r.get("calibrated_accuracy") is not None for r in res["variants"].values())
    n = res.get("eval_examples")
    half = res.get("fp32_interval95")
    fp = f"{res['fp32']:.4f}" + (f" ± {half:.3f}" if half else "")
    console.print(f"all-MiniLM-L6-v2, movie-review sentences: FP32 accuracy {fp}"
                  + (f" ({n} test sentences; ± is the 95 % interval)" if n else ""))
    t = Table()
    cols = ["variant", "QAT+KD acc."] + (["calib. acc."] if with_cal else []) + ["energy saved IS", "energy saved WS"]
    for col in cols:
        t.add_column(col, justify="left" if col == "variant" else "right")
    for name, row in res["variants"].items():
        saved = [total.get(df, {}).get(str(row["gs"])) if row["mode"] == "apsq" else None for df in ("is", "ws")]
        iv = row.get("interval95")
        cells = [name, f"{row['accuracy']:.4f}" + (f" ± {iv:.3f}" if iv else "")]
        if with_cal:
            cal = row.get("calibrated_accuracy")
            cells.append("-" if cal is None else f"{cal:.4f}")
        cells += ["-" if e is None else f"{100 * e:.1f} %" for e in saved]
        t.add_row(*cells)
    console.print(t)
    best = _best_apsq(res)
    if best is None:
        return
    name, row = best
    gap = res["fp32"] - row["accuracy"]
    steps = res.get("settings", {}).get("qat_steps")
    if gap <= 0.015:
        console.print(f"Best APSQ INT8 ({name}) is {_pp(gap)} below FP32 (within 1.5 pp) after {steps} QAT steps.")
    else:
        console.print(f"Best APSQ INT8 ({name}) is {_pp(gap)} below FP32: this demo's budget ({steps} QAT steps per "
                      f"variant) does not close the gap; the full recipe (100 steps, three seeds, "
                      f"results/sentiment_minilm/sentiment_minilm.json) is: {res.get('full_recipe', '')}")


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
        for i, (df, red) in enumerate(sorted(total.items())):
            gs = sorted(int(g) for g in red)
            ax2.plot(gs, [100 * red[str(g)] for g in gs], "s-", color=f"C{i + 1}", label=df.upper())
            ax2.set_xticks(gs)
        ax2.set_xlabel("APSQ group size gs")
        ax2.set_ylabel("energy saved vs INT32 PSUMs (%)")
        ax2.legend(fontsize=8)
    else:
        ax2.text(0.5, 0.5, "energy model unavailable", ha="center", transform=ax2.transAxes)
    ax2.set_title("energy (accelerator model)")
    ax2.grid(alpha=0.3)
    fig.suptitle("apsq demo: all-MiniLM-L6-v2, movie-review sentences, W8A8")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _qat_report(res: dict, out: Path) -> None:
    plot_demo(res, out / "demo.png")
    (out / "demo.json").write_text(json.dumps(res, indent=2))


def demo(
    output: Path = typer.Option(Path("apsq-demo"), "--output", "-o", help="Folder for demo.json and demo.png."),
    calibration_only: bool = typer.Option(
        False, "--calibration-only", help="Skip training: calibrate each variant and compare hidden states (~30 s)."),
    qat_steps: int = typer.Option(QAT_STEPS, help="QAT + distillation steps per variant."),
    finetune_steps: int = typer.Option(FINETUNE_STEPS, help="Full-precision fine-tuning steps (cached after the "
                                                           "first run)."),
    eval_limit: int = typer.Option(0, help="Test sentences evaluated per variant (0: all 1,041); the table "
                                           "prints the 95 % interval either way."),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's default)."),
) -> None:
    """The main job: MiniLM on movie-review sentences, W8A8 with INT32 / PSQ / APSQ(gs=1..4) INT8 PSUMs.

    Fine-tunes all-MiniLM-L6-v2 once (cached), then for each PSUM variant calibrates and runs QAT
    with distillation from the full-precision model; prints test accuracy (with its 95 % interval)
    beside the energy reduction of the energy model (IS and WS) and writes demo.json and demo.png.
    """
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    console = Console()
    output.mkdir(parents=True, exist_ok=True)
    if calibration_only:
        rows = run_calibration_demo()
        print_rows(rows, console)
        path = output / "demo_calibration.json"
        path.write_text(json.dumps([asdict(r) for r in rows], indent=2))
        console.print(f"wrote {literal(path)}")
        return
    from apsq.eval.demo import demo_run

    def done(name: str, row: dict) -> None:
        console.print(f"  {name}: accuracy {row['accuracy']:.4f} ± {row['interval95']:.3f} ({row['seconds']:.0f} s)")

    res = demo_run(qat_steps=qat_steps, finetune_steps=finetune_steps, eval_limit=eval_limit or None,
                   threads=threads or None, on_variant=done, progress=True,
                   log=lambda m: console.print(literal(m)))
    _qat_table(res, console)
    _qat_report(res, output)
    console.print(f"wrote {literal(output / 'demo.json')} and {literal(output / 'demo.png')} ({res['seconds']:.0f} s)")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
