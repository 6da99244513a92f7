"""``apsq demo``: the main job on its embedded default.

MiniLM (the real all-MiniLM-L6-v2) on the Rotten Tomatoes movie-review sentences, W8A8 with PSUMs in
every mode (INT32 ``none``, ``psq`` INT8, ``apsq`` INT8 with gs = 1..4): a short QAT + distillation
per variant (:func:`apsq.eval.demo.demo_run`), test accuracy beside the energy model's reduction.
``--calibration-only`` skips training and compares hidden states against full precision.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from apsq.cli.common import console as make_console
from apsq.cli.common import table
from apsq.errors import literal

if TYPE_CHECKING:
    from apsq.eval.demo_report import DemoRow

QAT_STEPS, FINETUNE_STEPS = 60, 400
"""The CLI's defaults: those of :func:`apsq.eval.demo.demo_run` (kept here so that parsing the command line
imports no training code; ``tests/cli/test_demo_cli.py`` checks they agree)."""


def print_rows(rows: list[DemoRow], console: Console) -> None:
    """The calibration-only table."""
    t = table("all-MiniLM-L6-v2, calibration only (no training): output vs full precision",
              "variant", "rel. error (hidden)", "cosine (embedding)", "PSUM saturation", left=("variant",))
    for r in rows:
        t.add_row(r.variant, f"{r.rel_error:.4f}", f"{r.cosine:.4f}", f"{r.psum_saturation:.2e}")
    console.print(t)


def _pp(x: float) -> str:
    return f"{100 * x:.1f} pp"


def _qat_table(res: dict, console: Console) -> None:
    energy = res.get("energy_reduction", {})
    total = energy.get("total", {}) if isinstance(energy, dict) else {}
    with_cal = any(r.get("calibrated_accuracy") is not None for r in res["variants"].values())
    with_val = any(r.get("selection_accuracy") is not None for r in res["variants"].values())
    n = res.get("eval_examples")
    half = res.get("fp32_interval95")
    fp = f"{res['fp32']:.4f}" + (f" ± {half:.3f}" if half else "")
    console.print(f"all-MiniLM-L6-v2, movie-review sentences: FP32 accuracy {fp}"
                  + (f" ({n} test sentences; ± is the 95 % interval)" if n else ""))
    sched = energy.get("schedule", "untiled") if isinstance(energy, dict) else "untiled"
    cols = (["variant", "QAT+KD acc."] + (["calib. acc."] if with_cal else []) + (["val. acc."] if with_val else [])
            + [f"energy saved IS ({sched})", f"energy saved WS ({sched})"])
    t = table("", *cols, left=("variant",))
    for name, row in res["variants"].items():
        saved = [total.get(df, {}).get(str(row["gs"])) if row["mode"] == "apsq" else None for df in ("is", "ws")]
        iv = row.get("interval95")
        cells = [name, f"{row['accuracy']:.4f}" + (f" ± {iv:.3f}" if iv else "")]
        if with_cal:
            cal = row.get("calibrated_accuracy")
            cells.append("-" if cal is None else f"{cal:.4f}")
        if with_val:
            val = row.get("selection_accuracy")
            cells.append("-" if val is None else f"{val:.4f}")
        cells += ["-" if e is None else f"{100 * e:.1f} %" for e in saved]
        t.add_row(*cells)
    console.print(t)
    from apsq.eval.sweep import energy_lines

    for line in energy_lines(energy):
        console.print(line)
    from apsq.eval.demo_report import best_apsq

    best = best_apsq(res)
    if best is None:
        return
    name, row, chosen_on = best
    gap = res["fp32"] - row["accuracy"]
    steps = res.get("settings", {}).get("qat_steps")
    which = f"Best APSQ INT8 ({name}, chosen on the {chosen_on} split)"
    if gap <= 0.015:
        console.print(f"{which} is {_pp(gap)} below FP32 on the test split (within 1.5 pp) after {steps} QAT steps.")
    else:
        console.print(f"{which} is {_pp(gap)} below FP32 on the test split: this demo's budget ({steps} QAT steps per "
                      f"variant) does not close the gap; the full recipe (200 steps x 32, five seeds, "
                      f"results/sentiment_minilm/sentiment_minilm.json) is: {res.get('full_recipe', '')}")


def demo(
    output: Path = typer.Option(Path("apsq-demo"), "--output", "-o", help="Folder for demo.json and demo.png."),
    calibration_only: bool = typer.Option(
        False, "--calibration-only", help="Skip training: calibrate each variant and compare hidden states (minutes on 2 CPU cores, README)."),
    qat_steps: int = typer.Option(QAT_STEPS, min=0, help="QAT + distillation steps per variant."),
    finetune_steps: int = typer.Option(FINETUNE_STEPS, min=0, help="Full-precision fine-tuning steps (cached after the "
                                                           "first run)."),
    eval_limit: int = typer.Option(0, min=0, help="Test sentences evaluated per variant (0: all 1,041; "
                                           "the validation split is limited alike); the table prints the 95 % "
                                           "interval either way."),
    threads: int = typer.Option(0, min=0, help="torch CPU threads per variant process (0: the cores shared out)."),
    workers: int = typer.Option(0, min=0, help="Variants trained at once, each in its own process (0: one per core, "
                                        "up to the variants and the memory; 1 on CUDA)."),
) -> None:
    """The main job: MiniLM on movie-review sentences, W8A8 with INT32 / PSQ / APSQ(gs=1..4) INT8 PSUMs.

    Fine-tunes all-MiniLM-L6-v2 once (cached), then for each PSUM variant calibrates and runs QAT
    with distillation from the full-precision model; prints test accuracy (with its 95 % interval)
    beside the energy reduction of the energy model (IS and WS) and writes demo.json and demo.png.
    """
    from apsq.cli.common import fail
    from apsq.errors import APSQError

    try:
        _demo(output, calibration_only, qat_steps, finetune_steps, eval_limit, threads, workers)
    except APSQError as exc:
        fail(exc, code=1)


def _demo(output: Path, calibration_only: bool, qat_steps: int, finetune_steps: int, eval_limit: int, threads: int,
          workers: int) -> None:
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    console = make_console()
    output.mkdir(parents=True, exist_ok=True)
    if calibration_only:
        from apsq.eval.demo_report import run_calibration_demo

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
                   threads=threads or None, workers=workers or None, on_variant=done, progress=True,
                   log=lambda m: console.print(literal(m)))
    _qat_table(res, console)
    from apsq.eval.demo_report import write_report

    write_report(res, output)
    console.print(f"wrote {literal(output / 'demo.json')} and {literal(output / 'demo.png')} ({res['seconds']:.0f} s)")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
