"""``apsq beyond a2q``: brevitas A2Q / A2Q+ at P-bit accumulators beside APSQ INT8 PSUMs."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from apsq.errors import APSQError


def a2q_specs(base: dict[str, Any], acc_bits: tuple[int, ...], gs: int) -> dict[str, dict[str, Any]]:
    keep = {k: v for k, v in base.items() if k not in ("mode", "gs", "psum_bits", "acc_bits")}
    specs: dict[str, dict[str, Any]] = {
        "w8a8_int32": {"kind": "apsq", "apsq": {**keep, "mode": "none"}},
        f"apsq_gs{gs}_int8": {"kind": "apsq", "apsq": {**keep, "mode": "apsq", "gs": gs, "psum_bits": 8}},
    }
    for p in acc_bits:
        specs[f"a2q_acc{p}"] = {"kind": "a2q", "acc_bits": p, "plus": False}
        specs[f"a2q+_acc{p}"] = {"kind": "a2q", "acc_bits": p, "plus": True}
    return specs


def energy_of(workload, spec: dict[str, Any], dataflow: str) -> dict[str, float]:  # noqa: ANN001
    """A2Q: the baseline dataflow with stored PSUMs ``acc_bits`` wide; APSQ / W8A8: as configured."""
    from apsq.hw.energy import evaluate

    ref = evaluate(workload, dataflow, "none", 1, 8)
    if spec["kind"] == "a2q":
        r = evaluate(workload, dataflow, "none", 1, 8, baseline_bits=int(spec["acc_bits"]))
    else:
        a = spec["apsq"]
        r = evaluate(workload, dataflow, a.get("mode", "apsq"), int(a.get("gs", 2)), int(a.get("psum_bits", 8)))
    return {"total_uj": r.total_pj / 1e6, "psum_uj": r.psum_pj / 1e6, "reduction_vs_int32": 1 - r.total_pj / ref.total_pj}


def register_a2q(beyond: typer.Typer) -> None:
    @beyond.command("a2q")
    def a2q_cmd(
        config: Path = typer.Option(..., "--config", "-c", help="training config (model, data, qat, distill)"),
        fp32: Path | None = typer.Option(None, "--fp32", help="FP32 checkpoint (default: finetune.init)"),
        acc_bits: str = typer.Option("16,12", "--acc-bits", help="A2Q accumulator widths"),
        gs: int = typer.Option(2, "--gs", help="APSQ group size of the APSQ INT8 variant"),
        qat_steps: int = typer.Option(30, "--qat-steps", help="QAT+KD steps of every variant (0: PTQ only)"),
        only: str | None = typer.Option(None, "--only", help="comma-separated variant names"),
        dataflows: str = typer.Option("is,ws", "--dataflows"),
        seq_len: int | None = typer.Option(None, "--seq-len"),
        eval_limit: int | None = typer.Option(256, "--eval-limit", help="evaluation examples (0: all)"),
        threads: int = typer.Option(1, "--threads"),
        json_path: Path | None = typer.Option(None, "--json"),
    ) -> None:
        """A2Q / A2Q+ (brevitas) vs APSQ INT8 PSUMs vs W8A8 INT32: accuracy after the same QAT, and energy."""
        import torch

        from apsq.beyond.a2q import run_a2q_study
        from apsq.beyond.runner import load_setup, select_variants, workload_of
        from apsq.tune.cli import parse_ints

        try:
            torch.set_num_threads(threads)
            s = load_setup(config, fp32, eval_limit or None)
            specs = a2q_specs(dict(s.cfg.apsq or {}), parse_ints("--acc-bits", acc_bits), gs)
            specs = select_variants(specs, only)
            res = run_a2q_study(s, specs, qat_steps, progress=Console(stderr=True).log)
            wl = workload_of(s.cfg, seq_len)
            for name, spec in specs.items():
                res[name]["energy"] = {df: energy_of(wl, spec, df) for df in dataflows.split(",")}
        except APSQError as exc:
            Console(stderr=True).print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
        out = {"command": "apsq " + " ".join(shlex.quote(a) for a in sys.argv[1:]), "config": str(config),
               "workload": wl.name, "qat_steps": qat_steps, "eval_examples": sum(len(y) for _, y in s.eval),
               "fp32_accuracy": float(torch.cat([m.argmax(-1) == y for m, y in
                                                 zip(torch.split(_fp_logits(s), [len(y) for _, y in s.eval]),
                                                     [y for _, y in s.eval])]).double().mean()),
               "variants": res}
        if json_path:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(out, indent=1))
        t = Table(title=f"A2Q vs APSQ ({out['eval_examples']} eval examples, {qat_steps} QAT steps)")
        dfs = dataflows.split(",")
        for col in ("variant", "PTQ acc", "QAT acc", "QAT KL", *(f"save {d}" for d in dfs)):
            t.add_column(col, justify="left" if col == "variant" else "right")
        for n, r in res.items():
            q = r.get("qat")
            t.add_row(n, f"{r['ptq']['accuracy']:.4f}", "-" if q is None else f"{q['accuracy']:.4f}",
                      "-" if q is None else f"{q['kl']:.4f}",
                      *(f"{100 * r['energy'][d]['reduction_vs_int32']:.1f}%" for d in dfs))
        Console().print(t)


def _fp_logits(s):  # noqa: ANN001, ANN202
    from apsq.tune.profile import logits_on

    return logits_on(s.model, s.eval)
