"""``apsq beyond baseline | low-bit | a2q``: the studies of docs/beyond-the-paper.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from apsq.errors import APSQError, literal

if TYPE_CHECKING:
    from apsq.train.config import APSQSection, TrainConfig


def _apsq_given(cfg: TrainConfig) -> APSQSection:
    """The training config's ``apsq`` settings (none given without a section): the base of the study's variants."""
    from apsq.train.config import APSQSection

    return cfg.apsq if cfg.apsq is not None else APSQSection()


def _write_keyed(path: Path | None, key: str | None, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path``, or with ``key`` merge it as ``{key: data}`` into the file's mapping."""
    if path is None or key is None:
        write_json(path, data)
        return
    old: dict[str, Any] = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise APSQError(f"--json {path}: not valid JSON ({exc}); cannot merge --key {key!r}") from None
    old[key] = data
    write_json(path, old)


def baseline_cmd(
    config: Path | None = typer.Option(None, "--config", "-c", help="training config for the accuracy part"),
    fp32: Path | None = typer.Option(None, "--fp32", help="FP32 checkpoint (default: finetune.init)"),
    acc_bits: str = typer.Option("16,20,24", "--acc-bits", help="narrow baseline widths to evaluate"),
    eval_limit: int | None = typer.Option(256, "--eval-limit", min=0, help="evaluation examples (0: all)"),
    threads: int = typer.Option(1, "--threads", min=1),
    device: str = typer.Option("auto", "--device", help="where the models run: auto (CUDA if present) | cpu | cuda[:N]"),
    json_path: Path | None = typer.Option(None, "--json", dir_okay=False),
) -> None:
    """Energy of 16/24/32-bit and exact-width (16 + ceil(log2 K)) baseline PSUMs vs APSQ, built-in
    workloads, IS and WS; with --config, PTQ accuracy of saturating narrow baselines."""
    import torch

    from apsq.beyond.baseline import baseline_study

    try:
        torch.set_num_threads(threads)
        res: dict[str, Any] = {"command": command_line(), "energy": baseline_study()}
        if config is not None:
            res["accuracy"] = _baseline_accuracy(config, fp32, acc_bits, eval_limit, device)
    except APSQError as exc:
        fail(exc)
        return
    write_json(json_path, res)
    _print_baseline(res)


def _baseline_accuracy(config: Path, fp32: Path | None, acc_bits: str, eval_limit: int | None,
                       device: str) -> dict[str, Any]:
    """``apsq beyond baseline --config``: PTQ accuracy of exact, saturating narrow and APSQ gs=2 INT8 PSUMs."""
    from apsq.beyond.baseline import baseline_energy
    from apsq.beyond.variants import run_variants
    from apsq.eval.setup import load_setup, workload_of

    s = load_setup(config, fp32, eval_limit or None, device=device)
    keep = _apsq_given(s.cfg).without("mode", "gs", "psum_bits", "acc_bits")
    variants = {"none_exact": keep.variant(mode="none")}
    for b in parse_ints("--acc-bits", acc_bits):
        variants[f"none_acc{b}"] = keep.variant(mode="none", acc_bits=b)
    variants["apsq_gs2_int8"] = keep.variant(mode="apsq", gs=2, psum_bits=8)
    log = console(stderr=True).log
    wl = workload_of(s.cfg)
    return {"config": str(config), "eval_examples": sum(len(y) for _, y in s.eval),
            "variants": run_variants(s, variants, progress=log),
            "energy": [baseline_energy(wl, df) for df in ("is", "ws")]}


def _print_baseline(res: dict[str, Any]) -> None:
    t = table("total energy (µJ) by baseline PSUM width; APSQ gs=2 INT8 saving vs each")
    for col in ("workload", "df", "16", "24", "32", "exact", "APSQ gs2", "save vs 32", "vs exact", "vs 16"):
        t.add_column(col, justify="right")
    for r in res["energy"]:
        b, a = r["baseline"], r["apsq"]["2"]
        t.add_row(r["workload"], r["dataflow"], *(f"{b[k]['total_uj']:,.0f}" for k in ("16", "24", "32", "exact")),
                  f"{a['total_uj']:,.0f}", *(f"{100 * a['reduction_vs'][k]:.1f}%" for k in ("32", "exact", "16")))
    console().print(t)
    if "accuracy" in res:
        for k, v in res["accuracy"]["variants"].items():
            console().print(f"{k}: PTQ accuracy {v['ptq']['accuracy']:.4f}, KL {v['ptq']['kl']:.5f}")


def lowbit_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="training config (model, data, apsq base)"),
    fp32: Path | None = typer.Option(None, "--fp32", help="FP32 checkpoint (default: finetune.init)"),
    gs: int = typer.Option(2, "--gs", min=1, help="APSQ group size of every variant"),
    psum_bits: str = typer.Option("8,6,4", "--psum-bits"),
    qat_steps: int = typer.Option(0, "--qat-steps", min=0, help="also QAT+KD each variant for N steps (0: PTQ only)"),
    only: str | None = typer.Option(None, "--only", help="comma-separated variant names to run"),
    run_dir: Path = typer.Option(Path("runs/beyond/low_bit"), "--run-dir", help="QAT run folders"),
    dataflow: str = typer.Option("is,ws", "--dataflows"),
    seq_len: int | None = typer.Option(None, "--seq-len", min=1, help="tokens of the energy workload"),
    eval_limit: int | None = typer.Option(256, "--eval-limit", min=0, help="evaluation examples (0: all)"),
    threads: int = typer.Option(1, "--threads", min=1),
    device: str = typer.Option("auto", "--device", help="where the models run: auto (CUDA if present) | cpu | cuda[:N]"),
    json_path: Path | None = typer.Option(None, "--json", dir_okay=False),
    key: str | None = typer.Option(None, "--key", help="merge into --json under this key (e.g. the task)"),
    override_tile: bool = OVERRIDE_TILE,
) -> None:
    """W4A4 / W4A8 with APSQ PSUMs at 8/6/4 bits: accuracy (PTQ, optional QAT) and energy."""
    import torch

    from apsq.beyond.lowbit import lowbit_variants, variant_energy
    from apsq.beyond.variants import run_variants
    from apsq.eval.setup import load_setup, select_variants, workload_of
    from apsq.eval.sweep import check_energy_tile
    from apsq.hw.energy import evaluate

    try:
        torch.set_num_threads(threads)
        s = load_setup(config, fp32, eval_limit or None, device=device)
        check_energy_tile(s.cfg, override_tile)
        variants = lowbit_variants(_apsq_given(s.cfg), gs, psum_bits=parse_ints("--psum-bits", psum_bits))
        variants = select_variants(variants, only)
        path = fp32 or s.cfg.finetune.init
        res = run_variants(s, variants, qat_steps=qat_steps, fp32=path, run_dir=run_dir,
                           qat_eval_limit=eval_limit or None, progress=console(stderr=True).log)
        wl = workload_of(s.cfg, seq_len)
        for df in dataflow.split(","):
            ref = evaluate(wl, df, "none", 1, 8).total_pj / 1e6
            for name, v in variants.items():
                res[name].setdefault("energy", {})[df] = variant_energy(wl, df, v, ref_uj=ref, override_tile=True)
    except APSQError as exc:
        fail(exc)
        return
    out = {"command": command_line(), "config": str(config), "workload": wl.name, "gs": gs,
           "eval_examples": sum(len(y) for _, y in s.eval), "qat_steps": qat_steps, "variants": res}
    try:
        _write_keyed(json_path, key, out)
    except APSQError as exc:
        fail(exc)
    _print_lowbit(out, config, dataflow.split(","))


def _print_lowbit(out: dict[str, Any], config: Path, dfs: list[str]) -> None:
    t = table(f"low-bit variants, {literal(config)} ({out['eval_examples']} eval examples)")
    for col in ("variant", "PTQ acc", "PTQ KL", "QAT acc", *(f"E {d} µJ" for d in dfs)):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for n, r in out["variants"].items():
        q = r.get("qat", {}).get("accuracy")
        t.add_row(n, f"{r['ptq']['accuracy']:.4f}", f"{r['ptq']['kl']:.4f}", "-" if q is None else f"{q:.4f}",
                  *(f"{r['energy'][d]['total_uj']:,.2f}" for d in dfs))
    console().print(t)


def a2q_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="training config (model, data, qat, distill)"),
    fp32: Path | None = typer.Option(None, "--fp32", help="FP32 checkpoint (default: finetune.init)"),
    acc_bits: str = typer.Option("16,12", "--acc-bits", help="A2Q accumulator widths"),
    gs: int = typer.Option(2, "--gs", min=1, help="APSQ group size of the APSQ INT8 variant"),
    qat_steps: int = typer.Option(30, "--qat-steps", min=0, help="QAT+KD steps of every variant (0: PTQ only)"),
    only: str | None = typer.Option(None, "--only", help="comma-separated variant names"),
    dataflows: str = typer.Option("is,ws", "--dataflows"),
    seq_len: int | None = typer.Option(None, "--seq-len", min=1),
    eval_limit: int | None = typer.Option(256, "--eval-limit", min=0, help="evaluation examples (0: all)"),
    threads: int = typer.Option(1, "--threads", min=1),
    device: str = typer.Option("auto", "--device", help="where the models run: auto (CUDA if present) | cpu | cuda[:N]"),
    json_path: Path | None = typer.Option(None, "--json", dir_okay=False),
    override_tile: bool = OVERRIDE_TILE,
) -> None:
    """A2Q / A2Q+ (brevitas) vs APSQ INT8 PSUMs vs W8A8 INT32: accuracy after the same QAT, and energy."""
    import torch

    from apsq.beyond.a2q import a2q_specs, energy_of, fp32_accuracy, run_a2q_study
    from apsq.eval.setup import load_setup, select_variants, workload_of
    from apsq.eval.sweep import check_energy_tile

    try:
        torch.set_num_threads(threads)
        s = load_setup(config, fp32, eval_limit or None, device=device)
        check_energy_tile(s.cfg, override_tile)
        specs = a2q_specs(_apsq_given(s.cfg), parse_ints("--acc-bits", acc_bits), gs)
        specs = select_variants(specs, only)
        res = run_a2q_study(s, specs, qat_steps, progress=console(stderr=True).log)
        wl = workload_of(s.cfg, seq_len)
        for name, spec in specs.items():
            res[name]["energy"] = {df: energy_of(wl, spec, df, override_tile=True) for df in dataflows.split(",")}
    except APSQError as exc:
        fail(exc)
    out = {"command": command_line(), "config": str(config),
           "workload": wl.name, "qat_steps": qat_steps, "eval_examples": sum(len(y) for _, y in s.eval),
           "fp32_accuracy": fp32_accuracy(s),
           "variants": res}
    write_json(json_path, out)
    _print_a2q(out, dataflows.split(","))


def _print_a2q(out: dict[str, Any], dfs: list[str]) -> None:
    t = table(f"A2Q vs APSQ ({out['eval_examples']} eval examples, {out['qat_steps']} QAT steps)")
    for col in ("variant", "PTQ acc", "QAT acc", "QAT KL", *(f"save {d}" for d in dfs)):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for n, r in out["variants"].items():
        q = r.get("qat")
        t.add_row(n, f"{r['ptq']['accuracy']:.4f}", "-" if q is None else f"{q['accuracy']:.4f}",
                  "-" if q is None else f"{q['kl']:.4f}",
                  *(f"{100 * r['energy'][d]['reduction_vs_int32']:.1f}%" for d in dfs))
    console().print(t)


def register(app: typer.Typer) -> None:
    """Add the ``beyond`` sub-app (``baseline``, ``low-bit``, ``a2q``) to the ``apsq`` command line."""
    beyond = typer_app(help="Studies beyond the paper: baseline PSUM width, sub-8-bit, A2Q baseline.")
    beyond.command("baseline")(baseline_cmd)
    beyond.command("low-bit")(lowbit_cmd)
    beyond.command("a2q")(a2q_cmd)
    app.add_typer(beyond, name="beyond")
