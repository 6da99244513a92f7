"""``apsq sweep`` (the gs sweep of a training config) and ``apsq eval llm-ppl | llm-mc | lm-eval | zero-shot | vision``.

Argument parsing and printing only: the runs are :mod:`apsq.eval` (imported inside each command).
Bad arguments exit 2, failed runs 1, both with ``error: ...`` on stderr.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from apsq.cli.common import (
    OVERRIDE_TILE,
    command_line,
    console,
    fail,
    parse_ints,
    table,
    typer_app,
    write_json,
)
from apsq.errors import APSQError

__all__ = ["register"]


def _ints(text: str, name: str) -> list[int]:
    """:func:`parse_ints` as a list, exiting 2 with a clear message on bad input."""
    try:
        return list(parse_ints(name, text))
    except APSQError as exc:
        fail(exc)


def sweep_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="Training YAML with an `apsq:` section."),
    gs: str = typer.Option("1,2,3,4", help="Comma-separated APSQ group sizes."),
    output: Path = typer.Option(None, "--output", "-o", help="Sweep folder (default `runs/sweep_<config>`)."),
    baselines: bool = typer.Option(True, help="Also W8A8 with INT32 PSUMs and psq."),
    energy: bool = typer.Option(True, help="Add the energy reduction of the traced model (IS, WS)."),
    json_out: Path = typer.Option(None, "--json", dir_okay=False, help="Result JSON (default `<output>/sweep.json`)."),
    png_out: Path = typer.Option(None, "--png", dir_okay=False, help="Plot (default `<output>/sweep.png`)."),
    override_tile: bool = OVERRIDE_TILE,
) -> None:
    """Train every PSUM variant (reusing finished runs, resuming interrupted ones) and report."""
    from apsq.eval.sweep import sweep
    from apsq.train.config import load_config

    gs_values = _ints(gs, "--gs")
    try:
        cfg = load_config(config)
        out = output or Path("runs") / f"sweep_{config.stem}"
        res = sweep(cfg, out, gs_values, baselines=baselines, json_path=json_out, png_path=png_out,
                    energy=energy, override_tile=override_tile)
    except APSQError as exc:
        fail(exc, code=1)
    _print_sweep(res)


def _print_sweep(res: dict) -> None:
    """The sweep's table: the score per variant (accuracy, or mIoU for a segmentation model: ``metric``)
    beside the energy reduction (IS / WS) of each APSQ gs, then the gs chosen on the selection split."""
    er = res.get("energy_reduction", {})
    sched = er.get("schedule", "untiled") if isinstance(er, dict) else "untiled"
    metric = "mIoU" if res.get("metric") == "miou" else "accuracy"
    t = table(f"gs sweep ({res['eval_split']} {metric})", "variant", metric,
              f"energy saved {' / '.join(df.upper() for df in er.get('total', {}))} ({sched})"
              if isinstance(er, dict) and "total" in er else "energy saved", left=("variant",))
    for key in ("fp32", "w8a8", "psq"):
        if res.get(key) is not None:
            t.add_row(key, f"{100 * res[key]:.2f} %", "")
    for g, acc in res["apsq"].items():
        e = ""
        if "total" in er:
            e = " / ".join(f"{100 * er['total'][df][g]:.1f} %" for df in er["total"])
        t.add_row(f"apsq gs={g}", f"{100 * acc:.2f} %", e)
    con = console()
    con.print(t)
    if res.get("selected_gs") is not None:
        con.print(f"gs chosen on the {res.get('gs_selected_on') or 'selection'} split: {res['selected_gs']} "
                  f"(report its {res['eval_split']} {metric}, not the best of the table)")
    from apsq.eval.sweep import energy_lines

    for line in energy_lines(er):
        con.print(line)


def llm_ppl(
    gs: str = typer.Option("1,2,3,4", help="Comma-separated APSQ group sizes."),
    train_steps: int = typer.Option(800, min=0, help="FP32 training steps of the small LLaMA."),
    qat_steps: int = typer.Option(0, min=0, help="QAT + KD steps per variant (0: calibration only)."),
    json_out: Path = typer.Option(Path("runs/llm_ppl.json"), "--json", dir_okay=False, help="Result JSON."),
    save_model: Path = typer.Option(None, help="Keep the trained FP model + tokenizer here."),
    threads: int = typer.Option(None, min=1, help="torch threads."),
) -> None:
    """Small LLaMA trained on the review/tweet/news sentences: test perplexity per PSUM variant."""
    import torch

    from apsq.eval.llm import LLMSettings, llm_sweep

    if threads:
        torch.set_num_threads(threads)
    res = llm_sweep(LLMSettings(train_steps=train_steps, qat_steps=qat_steps), _ints(gs, "--gs"),
                    save_dir=save_model)
    res["command"] = command_line()
    write_json(json_out, res)
    typer.echo(json.dumps({k: res[k] for k in ("fp32", "w8a8", "psq", "apsq")}))


def llm_mc(
    model: Path = typer.Option(Path("runs/llm_tiny"), "--model",
                               help="Small LLaMA saved by `apsq eval llm-ppl --save-model`."),
    items: int = typer.Option(400, min=1, help="Sentence-completion items from the held-out movie-review sentences."),
    seed: int = typer.Option(0, min=0, help="Item-generation seed (sentences, distractors, choice order)."),
    ending_words: int = typer.Option(3, min=0, help="Words in each ending to pick (0: the sentence's second half)."),
    gs: str = typer.Option("1,2,3,4", help="Comma-separated APSQ group sizes."),
    tile: int = typer.Option(32, min=1, help="PE-array reduction depth."),
    calib: int = typer.Option(16, min=1, help="Training-split movie-review sentences used for calibration."),
    batch_size: int = typer.Option(32, min=1),
    task_dir: Path = typer.Option(Path("runs/llm_mc_task"), help="Where the JSONL + task YAML are written."),
    json_out: Path = typer.Option(Path("runs/llm_mc.json"), "--json", dir_okay=False, help="Result JSON."),
    threads: int = typer.Option(None, min=1, help="torch threads."),
) -> None:
    """Local lm-eval multiple-choice task (sentence completion, 4 choices) per PSUM variant."""
    import torch

    from apsq.eval.mc_study import movie_mc_study

    gs_values = _ints(gs, "--gs")
    if threads:
        torch.set_num_threads(threads)
    try:
        res = movie_mc_study(model, task_dir, gs_values, items=items, seed=seed, ending_words=ending_words,
                             tile=tile, calib=calib, batch_size=batch_size)
    except APSQError as exc:
        fail(exc, code=1)
    res["command"] = command_line()
    write_json(json_out, res)
    typer.echo(json.dumps({k: res[k] for k in ("fp32", "w8a8", "psq", "apsq")}))


CALIBRATION_HELP = ("Calibration text: wikitext2 (WikiText-2 train, the hub), corpus (apsq's offline sentences) or a "
                    "text file; windows of --calib-seq-len tokens (apsq.eval.calibration).")


def zero_shot_cmd(
    model: str = typer.Option(None, "--model", help="Hugging Face causal LM folder or hub id (or the config's model)."),
    config: Path = typer.Option(None, "--config", "-c", help="Zero-shot YAML, e.g. configs/paper/llama2_7b_zero_shot.yaml."),
    tasks: str = typer.Option(None, "--tasks", help="Comma-separated lm-eval tasks (default: the paper's seven)."),
    variants: str = typer.Option(None, "--variants", help="Comma-separated: fp, w8a8, psq, apsq (default: all)."),
    gs: str = typer.Option(None, "--gs", help="Comma-separated APSQ group sizes (default 1,2,3,4)."),
    local_data: Path = typer.Option(None, "--local-data",
                                    help="Folder of `<task>.jsonl` in each task's hub format (offline)."),
    calibration: str = typer.Option(None, "--calibration", help=CALIBRATION_HELP),
    calib_samples: int = typer.Option(None, "--calib-samples", min=1, help="Calibration windows (default 128)."),
    calib_seq_len: int = typer.Option(None, "--calib-seq-len", min=1, help="Tokens per calibration window (default 512)."),
    limit: int = typer.Option(None, min=1, help="Items per task (a quick look; default: all)."),
    selection_items: int = typer.Option(None, min=0, help="Items of each task's training split scored to choose gs "
                                        "on (local data: `<task>.selection.jsonl`; 0: off, gs best on the evaluated splits)."),
    batch_size: int = typer.Option(None, min=1, help="lm-eval batch size (default 8)."),
    dtype: str = typer.Option(None, help="auto (float16 on CUDA, float32 on the CPU), float16, bfloat16, float32."),
    device: str = typer.Option(None, "--device", help="Where the model runs: auto (CUDA if present), cpu, cuda[:N]."),
    output: Path = typer.Option(None, "--output", "-o", help="Result folder (default `runs/zero_shot_<model>`)."),
    energy_workload: str = typer.Option(None, help="Price a built-in workload (e.g. llama2-7b) instead of the model's config."),
    add_bos: bool = typer.Option(None, "--add-bos/--no-add-bos",
                                 help="Put the tokenizer's BOS before every context (a tokenizer that adds none)."),
) -> None:
    """The paper's zero-shot protocol: FP / W8A8-INT32 / psq / APSQ per gs on the zero-shot tasks (lm-eval, with
    stderr), calibration only; JSON + table + PNG, the average drop beside the IS / WS energy reduction."""
    from apsq.eval.zero_shot import load_zero_shot_config, run_zero_shot, variant_label, zero_shot_table

    def _list(text: str | None) -> list[str] | None:
        return None if text is None else [t.strip() for t in text.split(",") if t.strip()]

    try:
        cfg = load_zero_shot_config(config, {
            "model": model, "tasks": _list(tasks), "variants": _list(variants),
            "gs": None if gs is None else list(parse_ints("--gs", gs)),
            "local_data": None if local_data is None else str(local_data), "limit": limit, "batch_size": batch_size,
            "selection_items": selection_items,
            "dtype": dtype, "device": device, "energy": {"workload": energy_workload}, "add_bos": add_bos,
            "calibration": {"source": calibration, "samples": calib_samples, "seq_len": calib_seq_len}})
    except APSQError as exc:
        fail(exc)
    out = output or Path(cfg.output or f"runs/zero_shot_{Path(cfg.model).name}")
    try:
        res = run_zero_shot(cfg, out, command=command_line())
    except APSQError as exc:
        fail(exc, code=1)
    typer.echo(zero_shot_table(res))
    best, er = res["best_gs"], res.get("energy_reduction") or {}
    if best is not None:
        v = res["variants"][f"apsq_gs{best}"]
        on = "its training splits" if res.get("gs_selected_on") else "the evaluated splits"
        line = f"best gs = {best} (chosen on {on}): average {100 * v['average']:.2f} %"
        if "drop_pp" in v:
            line += f", drop {v['drop_pp']:+.2f} pp vs {variant_label('fp', res['dtype'])}"
        if "total" in er:
            line += "; energy reduction " + " / ".join(f"{d.upper()} {100 * r[str(best)]:.1f} %"
                                                     for d, r in er["total"].items())
        typer.echo(line)
    if "error" in er:
        typer.echo(f"energy: {er['error']}")
    typer.echo(f"wrote {out / 'zero_shot.json'}, zero_shot.md, zero_shot.png")


def lm_eval_cmd(
    model: str = typer.Option(..., "--model", help="Hugging Face causal LM folder or hub id."),
    tasks: str = typer.Option(..., "--tasks", help="Comma-separated lm-eval tasks, e.g. piqa,hellaswag."),
    mode: str = typer.Option("apsq", help="PSUM mode: none, psq, apsq (quantized and calibrated here); 'fp': the model as loaded (full precision, or a QAT checkpoint's own trained quantization)."),
    gs: int = typer.Option(2, min=1, help="APSQ group size."),
    tile: int = typer.Option(32, min=1, help="PE-array reduction depth."),
    limit: int = typer.Option(None, min=1, help="Examples per task (for a quick look)."),
    batch_size: int = typer.Option(8, min=1),
    include_path: Path = typer.Option(None, help="Folder of extra (local) lm-eval task YAMLs."),
    calibration: str = typer.Option("wikitext2", "--calibration", help=CALIBRATION_HELP),
    calib_samples: int = typer.Option(128, "--calib-samples", min=1, help="Calibration windows."),
    calib_seq_len: int = typer.Option(512, "--calib-seq-len", min=1, help="Tokens per calibration window."),
    device: str = typer.Option("auto", "--device", help="Where the model runs: auto (CUDA if present), cpu, cuda[:N]."),
    json_out: Path = typer.Option(None, "--json", dir_okay=False, help="Write the results here."),
) -> None:
    """lm-eval zero-shot tasks on an APSQ-quantized Hugging Face model (each metric with its stderr)."""
    import apsq
    from apsq.eval.calibration import CalibrationSet
    from apsq.eval.lm_eval_adapter import run_lm_eval

    try:
        cfg = None if mode == "fp" else apsq.APSQConfig(mode=mode, gs=gs, tile=tile)
        cal = CalibrationSet(source=calibration, samples=calib_samples, seq_len=calib_seq_len)
        res = run_lm_eval(model, [t for t in tasks.split(",") if t], cfg, limit=limit, batch_size=batch_size,
                          include_path=include_path, device=device, calibration=cal)
    except APSQError as exc:
        fail(exc, code=1)
    text = json.dumps(res, indent=1, default=str)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(text + "\n")
    typer.echo(json.dumps(res["results"], indent=1, default=str))


def vision(
    models: str = typer.Option("segformer-b0,efficientvit-b1", help="Comma-separated: segformer-b0, efficientvit-b1."),
    image_size: int = typer.Option(512, min=1, help="Square input size in pixels."),
    seed: int = typer.Option(0, min=0, help="Weight-initialisation and crop seed."),
    device: str = typer.Option("auto", "--device", help="Where the model runs: auto (CUDA if present), cpu, cuda[:N]."),
    json_out: Path = typer.Option(None, "--json", dir_okay=False, help="Write the results here."),
    png_out: Path = typer.Option(None, "--png", dir_okay=False, help="Plot the relative errors here."),
) -> None:
    """Output error vs full precision per PSUM variant of random-init Segformer-B0 / EfficientViT-B1 on real photos."""
    from apsq.errors import check_choice, check_int
    from apsq.eval.vision import VISION_MODELS, run_vision

    names = [m.strip() for m in models.split(",") if m.strip()]
    try:  # the options as this command spells them, before any model is built
        if not names:
            raise APSQError(f"--models: name at least one of {', '.join(VISION_MODELS)} (got {models!r})")
        for m in names:
            check_choice("--models", m, VISION_MODELS)
        check_int("--image-size", image_size, lo=32)
        results = run_vision(names, image_size, seed, json_out, png_out, device=device)
    except APSQError as exc:
        fail(exc, code=1)
    for res in results:
        rows = ", ".join(f"{k} {100 * v['rel_error']:.1f}%" for k, v in res["variants"].items())
        typer.echo(f"{res['model']} @ {res['image_size']}px: {rows}")


def register(app: typer.Typer) -> None:
    """Add ``sweep`` and the ``eval`` sub-app to the ``apsq`` command line."""
    app.command("sweep")(sweep_cmd)
    eval_app = typer_app(help="Evaluate quantized language models.", no_args_is_help=True)
    eval_app.command("llm-ppl")(llm_ppl)
    eval_app.command("llm-mc")(llm_mc)
    eval_app.command("lm-eval")(lm_eval_cmd)
    eval_app.command("zero-shot")(zero_shot_cmd)
    eval_app.command("vision")(vision)
    app.add_typer(eval_app, name="eval")
