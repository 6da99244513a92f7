"""``apsq train --config FILE [--resume] [--output DIR]``."""

from __future__ import annotations

import os
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        config: Path = typer.Option(..., "--config", "-c", help="Training YAML (see configs/)."),
        output: Path = typer.Option(None, "--output", "-o", help="Run folder (default `runs/<config name>`)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --output from its checkpoint."),
    ) -> None:
        """Fine-tune in full precision, quantize with APSQ, calibrate, then QAT + distillation.

        Runs on one CPU as is, or on several processes / GPUs under `accelerate launch` (DDP; FSDP2 with
        --use_fsdp --fsdp_version 2 or configs/accelerate_fsdp2.yaml: docs/fsdp.md).
        """
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from apsq.cli.common import console as make_console
        from apsq.errors import APSQError, literal, print_error
        from apsq.train.config import load_config
        from apsq.train.loop import train

        from apsq.train.checkpoint import checkpoint_position
        from apsq.train.loop import CKPT

        console = make_console(stderr=True)
        out = output or Path("runs") / config.stem
        main = int(os.environ.get("RANK", "0")) == 0
        if resume and main and (pos := checkpoint_position(out / CKPT)) is not None:
            console.print(f"resuming {literal(out)} from its checkpoint: {pos[0]} step {pos[1]}")
        try:
            cfg = load_config(config)
            res = train(cfg, out, resume=resume)
        except APSQError as exc:
            print_error(exc, console=console)
            raise typer.Exit(1) from exc
        except KeyboardInterrupt:
            if main:
                pos = checkpoint_position(out / CKPT)
                where = (f"the last checkpoint holds {pos[0]} step {pos[1]}" if pos is not None
                         else "no checkpoint was written yet")
                again = f"apsq train --config {literal(str(config))} --output {literal(str(out))} --resume"
                world = int(os.environ.get("WORLD_SIZE", "1"))
                if world > 1:  # a bare `apsq train` would resume on one process (a sharded model may not fit)
                    again = (f"the same launch ({world} processes), its command ending in "
                             f"-m apsq.cli train --config {literal(str(config))} --output {literal(str(out))} --resume")
                console.print(f"interrupted: {where} ({literal(out / CKPT)}); continue with {again}")
            raise typer.Exit(130) from None
        res.pop("model", None)
        if res.get("processes", 1) == 1 or int(os.environ.get("RANK", "0")) == 0:
            acc = res.get("accuracy")
            metric = "mIoU" if res.get("metric") == "miou" else "accuracy"
            msg = f"fp32 {res['eval_split']} {metric} {res['fp32_accuracy']:.4f}"
            if acc is not None:
                msg += f", quantized {acc:.4f}"
            console.print(f"{msg}; results in {literal(out / 'result.json')}")
