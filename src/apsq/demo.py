"""``apsq demo``: the main job on its embedded default.

MiniLM (the real all-MiniLM-L6-v2) on the Rotten Tomatoes movie-review sentences, W8A8 with PSUMs in
every mode (INT32 ``none``, ``psq`` INT8, ``apsq`` INT8 with gs = 1..4): a short QAT + distillation
per variant (:func:`apsq.train.demo_run`), test accuracy beside the energy model's reduction.
``--calibration-only`` skips training and compares hidden states against full precision.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

import apsq
from apsq.errors import literal

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


def _qat_table(res: dict, console: Console) -> None:
    energy = res.get("energy_reduction", {})
    total = energy.get("total", {}) if isinstance(energy, dict) else {}
    with_cal = any(r.get("calibrated_accuracy") is not None for r in res["variants"].values())
    t = Table(title=f"all-MiniLM-L6-v2, movie-review sentences (FP32 accuracy {res['fp32']:.4f})")
    cols = ["variant", "QAT+KD acc."] + (["calib. acc."] if with_cal else []) + ["energy saved IS", "energy saved WS"]
    for col in cols:
        t.add_column(col, justify="left" if col == "variant" else "right")
    for name, row in res["variants"].items():
        saved = [total.get(df, {}).get(str(row["gs"])) if row["mode"] == "apsq" else None for df in ("is", "ws")]
        cells = [name, f"{row['accuracy']:.4f}"]
        if with_cal:
            cal = row.get("calibrated_accuracy")
            cells.append("-" if cal is None else f"{cal:.4f}")
        cells += ["-" if e is None else f"{100 * e:.1f} %" for e in saved]
        t.add_row(*cells)
    console.print(t)


def _qat_report(res: dict, out: Path) -> None:
    from apsq.eval.report import plot_accuracy_vs_gs

    table = {"fp32": res["fp32"], "w8a8": None, "psq": None, "apsq": {}}
    calibrated = {}
    for row in res["variants"].values():
        if row["mode"] == "none":
            table["w8a8"] = row["accuracy"]
        elif row["mode"] == "psq":
            table["psq"] = row["accuracy"]
        else:
            table["apsq"][str(row["gs"])] = row["accuracy"]
            calibrated[str(row["gs"])] = row.get("calibrated_accuracy")
    calibrated = {g: a for g, a in calibrated.items() if a is not None} or None
    energy = res.get("energy_reduction", {})
    total = energy.get("total") if isinstance(energy, dict) else None
    plot_accuracy_vs_gs(table, out / "demo.png", title="apsq demo: MiniLM, movie-review sentences",
                        energy=total, calibrated=calibrated)
    (out / "demo.json").write_text(json.dumps(res, indent=2))


def demo(
    output: Path = typer.Option(Path("apsq-demo"), "--output", "-o", help="Folder for demo.json and demo.png."),
    calibration_only: bool = typer.Option(
        False, "--calibration-only", help="Skip training: calibrate each variant and compare hidden states (~30 s)."),
    qat_steps: int = typer.Option(20, help="QAT + distillation steps per variant."),
    finetune_steps: int = typer.Option(150, help="Full-precision fine-tuning steps (cached after the first run)."),
    eval_limit: int = typer.Option(400, help="Test sentences evaluated per variant (0: all 1,041)."),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's default)."),
) -> None:
    """The main job: MiniLM on movie-review sentences, W8A8 with INT32 / PSQ / APSQ(gs=1..4) INT8 PSUMs.

    Fine-tunes all-MiniLM-L6-v2 once (cached), then for each PSUM variant calibrates and runs a short
    QAT with distillation from the full-precision model; prints test accuracy beside the energy
    reduction of the energy model (IS and WS) and writes ``demo.json`` and ``demo.png``.
    """
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
    from apsq.train import demo_run

    def done(name: str, row: dict) -> None:
        console.print(f"  {name}: accuracy {row['accuracy']:.4f} ({row['seconds']:.0f} s)")

    res = demo_run(qat_steps=qat_steps, finetune_steps=finetune_steps, eval_limit=eval_limit or None,
                   threads=threads or None, on_variant=done, progress=True)
    _qat_table(res, console)
    _qat_report(res, output)
    console.print(f"wrote {literal(output / 'demo.json')} and {literal(output / 'demo.png')} ({res['seconds']:.0f} s)")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
