"""``apsq tune-gs``: per-layer APSQ group size under an energy / PSUM-buffer budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
import yaml

from apsq.cli.common import OVERRIDE_TILE, console, fail, parse_ints, table
from apsq.errors import APSQError


def _accelerator(path: Path | None, psum_kib: float | None):  # noqa: ANN202
    from apsq.hw.accelerator import Accelerator, load_accelerator

    acc = load_accelerator(path)
    if psum_kib is None:
        return acc
    if psum_kib <= 0:
        raise APSQError(f"--psum-kib must be > 0, got {psum_kib}")
    d = acc.model_dump()
    d["buffers"]["psum"]["capacity_kib"] = psum_kib
    return Accelerator.from_dict(d, source="--psum-kib")


def tune_gs_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="training config YAML (model, data, apsq base)"),
    fp32: Path | None = typer.Option(None, "--fp32", help="FP32 checkpoint (default: the config's finetune.init)"),
    gs: str = typer.Option("1,2,3,4", "--gs", help="candidate group sizes"),
    dataflow: str = typer.Option("is", "--dataflow", "-d", help="is | ws | os"),
    seq_len: int | None = typer.Option(None, "--seq-len", min=1, help="tokens of the energy workload (default max_len)"),
    accelerator: Path | None = typer.Option(None, "--accelerator", help="accelerator YAML (default 28 nm INT8)"),
    psum_kib: float | None = typer.Option(None, "--psum-kib", min=0, help="PSUM buffer capacity (KiB) override"),
    override_tile: bool = OVERRIDE_TILE,
    method: str = typer.Option("both", "--method", help="both | predictor | measured"),
    budget_uj: float | None = typer.Option(None, "--budget-uj", min=0, help="energy budget (µJ)"),
    budget_frac: float = typer.Option(0.5, "--budget-frac", min=0.0, max=1.0,
                                      help="budget between cheapest (0) and dearest (1) uniform gs"),
    eval_limit: int | None = typer.Option(256, "--eval-limit", min=0, help="evaluation examples (0: all)"),
    calib_batches: int | None = typer.Option(None, "--calib-batches", min=1, help="default: qat.calib_batches"),
    max_points: int = typer.Option(12, "--max-points", min=1, help="predictor-path points to measure"),
    threads: int = typer.Option(1, "--threads", min=1, help="torch threads"),
    device: str = typer.Option("auto", "--device", help="where the models run: auto (CUDA if present) | cpu | cuda[:N]"),
    out_yaml: Path | None = typer.Option(None, "--out-yaml", help="write the chosen APSQConfig (overrides)"),
    train_yaml: Path | None = typer.Option(None, "--train-yaml", help="write the training config with it"),
    json_path: Path | None = typer.Option(None, "--json", dir_okay=False, help="write the full result JSON"),
    png: Path | None = typer.Option(None, "--png", dir_okay=False, help="write the accuracy-energy plot"),
    replot: Path | None = typer.Option(None, "--replot", help="only redraw --png from this result JSON"),
) -> None:
    """Choose gs per layer (predictor vs measured search) under an energy budget; see docs/beyond-the-paper.md."""
    import torch

    from apsq.eval.setup import load_setup, workload_of
    from apsq.tune.run import plot_tune, tune_gs

    con = console(stderr=True)
    if replot is not None:
        if png is None or not replot.is_file():
            fail(APSQError(f"--replot needs an existing result JSON (got {str(replot)!r}) and --png"))
        plot_tune(json.loads(replot.read_text()), str(png))
        return
    try:
        torch.set_num_threads(threads)
        gs_values = parse_ints("--gs", gs)
        acc = _accelerator(accelerator, psum_kib)
        s = load_setup(config, fp32, eval_limit or None, calib_batches, device)
        base = s.cfg.apsq_config()
        if base is None:
            raise APSQError(f"{config}: the config has no 'apsq' section to tune")
        wl = workload_of(s.cfg, seq_len)
        res = tune_gs(s.model, base, wl, s.calib, s.eval, gs_values=gs_values, dataflow=dataflow,
                      accelerator=acc, method=method, budget_uj=budget_uj, budget_frac=budget_frac,
                      max_points=max_points, progress=lambda m: con.log(m), override_tile=override_tile)
    except APSQError as exc:
        fail(exc)
        return
    cfg = res.pop("config")
    res["command"] = ("apsq tune-gs --config {} --gs {} --dataflow {} --method {} --eval-limit {}".format(
        config, gs, dataflow, method, eval_limit) + (f" --psum-kib {psum_kib}" if psum_kib else "")
        + (f" --budget-uj {budget_uj}" if budget_uj is not None else f" --budget-frac {budget_frac}")
        + (" --override-tile" if override_tile else ""))
    _write_outputs(res, cfg, s.cfg, dataflow, out_yaml=out_yaml, train_yaml=train_yaml, json_path=json_path, png=png)
    _print_table(res, dataflow)


def _write_outputs(res: dict[str, Any], cfg: Any, train_cfg: Any, dataflow: str, *, out_yaml: Path | None,
                   train_yaml: Path | None, json_path: Path | None, png: Path | None) -> None:
    """The files ``tune-gs`` was asked for: the chosen APSQConfig, the training config with it, the JSON, the plot."""
    if out_yaml:
        out_yaml.parent.mkdir(parents=True, exist_ok=True)
        c = res["chosen"]
        head = (f"# APSQConfig with per-layer gs chosen by: {res['command']}\n"
                f"# chosen point: {c['method']}, {c['energy_uj']:.1f} uJ ({res['workload']} {dataflow.upper()}), "
                f"accuracy {c['accuracy']:.4f}, KL {c['kl']:.5f} on {res['eval_examples']} examples\n")
        out_yaml.write_text(head + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if train_yaml:
        d = train_cfg.with_apsq(**cfg.to_dict()).model_dump(mode="json")
        train_yaml.parent.mkdir(parents=True, exist_ok=True)
        train_yaml.write_text(yaml.safe_dump(d, sort_keys=False))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(res, indent=1))
    if png:
        from apsq.tune.run import plot_tune

        plot_tune(res, str(png))


def _print_table(res: dict[str, Any], dataflow: str) -> None:
    t = table(f"tune-gs {res['workload']} {dataflow.upper()} (budget {res['budget_uj']:.2f} µJ)")
    for col in ("point", "energy µJ", "accuracy", "KL", "pred. D"):
        t.add_column(col, justify="left" if col == "point" else "right")
    rows = res["uniform"] + [dict(p, method=p["method"] + " (Pareto)") for p in res["pareto"]
                             if not p["method"].startswith("uniform")]
    for p in rows + [dict(res["chosen"], method="[b]chosen: " + res["chosen"]["method"] + "[/b]")]:
        t.add_row(p["method"], f"{p['energy_uj']:.3f}", f"{p['accuracy']:.4f}", f"{p['kl']:.5f}",
                  f"{p['predicted_degradation']:.5f}")
    console().print(t)


def register(app: typer.Typer) -> None:
    """Add ``tune-gs`` to the ``apsq`` command line."""
    app.command("tune-gs")(tune_gs_cmd)
