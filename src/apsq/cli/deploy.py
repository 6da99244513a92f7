"""``apsq deploy export RUN_OR_CHECKPOINT -o PROGRAM`` and ``apsq deploy run PROGRAM --input ... --backend ...``.

Argument parsing and printing only: the work is :mod:`apsq.deploy` (imported inside each command). Bad
input exits 2, a failed run (or a verification mismatch) 1, both with one ``error: ...`` line on stderr.
"""

from __future__ import annotations

from pathlib import Path

import typer

from apsq.cli.common import command_line, console, fail, table, typer_app, write_json
from apsq.errors import APSQError

__all__ = ["register"]

deploy_app = typer_app(name="deploy", help="Deploy a trained model to the RAE: export the engine program, run it "
                                           "(golden | amaranth | verilator) with a stage-by-stage exact check.",
                       no_args_is_help=True)


@deploy_app.command("export")
def export_cmd(
    run_dir: Path = typer.Argument(..., metavar="RUN_OR_CHECKPOINT", help="An `apsq train` run folder (QAT stage) or "
                                   "its checkpoint.safetensors."),
    output: Path = typer.Option(..., "--output", "-o", file_okay=False, help="Program folder to write (manifest.json + "
                                "tensors.safetensors)."),
    lanes: int = typer.Option(32, min=1, help="RAE lanes (outputs per beat)."),
    depth: int = typer.Option(16, min=1, help="Words per PSUM bank."),
    frac_bits: int = typer.Option(8, min=0, help="RAE fraction bits (smallest shift -frac_bits)."),
    shift_bits: int = typer.Option(5, min=1, help="RAE shift width (largest shift 2^shift_bits - 1 - frac_bits)."),
) -> None:
    """Write the engine program of a trained run (never recalibrates; refuses what the engine cannot hold)."""
    import torch

    from apsq.deploy import export, save
    from apsq.deploy.batches import input_batches
    from apsq.deploy.export import load_trained

    torch.set_num_threads(1)
    try:
        model, cfg, ckpt = load_trained(run_dir)
        prog_cfg = cfg.model_dump(mode="json")
        _, batches = input_batches(prog_cfg, "eval", limit=2, batch_size=2)  # the traced example
        example = next(batches)
        example.pop("labels", None)
        prog = export(model, example, lanes=lanes, depth=depth, frac_bits=frac_bits, shift_bits=shift_bits,
                      source=str(ckpt), train_config=prog_cfg)
        save(prog, output)
    except APSQError as exc:
        fail(exc)
    m = prog.manifest
    lo = min(min(_flat(lay.engine_exponents)) for lay in m.layers)
    hi = max(max(_flat(lay.engine_exponents)) for lay in m.layers)
    widest = max(lay.tile_sum_bits for lay in m.layers)
    console().print(f"{len(m.layers)} engine layers, {len(m.host_ops)} host ops; shifts [{lo}, {hi}] of "
                    f"[{m.engine.exp_min}, {m.engine.exp_max}]; widest tile sum {widest} of {m.engine.tile_bits} bits; "
                    f"lane exponents {m.engine.lane_exponents}; written to {output}")


def _flat(e):
    return [v for row in e for v in (row if isinstance(row, list) else [row])]


@deploy_app.command("run")
def run_cmd(
    program: Path = typer.Argument(..., help="Program folder (apsq deploy export)."),
    input_: str = typer.Option("eval", "--input", "-i", help="'eval' (the run's evaluation split) or, for a text "
                               "model, a text file with one sentence per line."),
    backend: str = typer.Option("golden", help="golden | amaranth | verilator."),
    limit: int = typer.Option(None, min=1, help="Only the first N inputs."),
    batch_size: int = typer.Option(32, min=1, help="Inputs (sentences / images) per forward."),
    verify: bool = typer.Option(True, help="Check every layer stage by stage and the logits against PyTorch."),
    mismatch_dir: Path = typer.Option(Path("deploy-mismatch"), file_okay=False,
                                      help="Where a mismatch's .npz is written."),
    json_out: Path = typer.Option(None, "--json", dir_okay=False, help="Write the summary JSON here."),
    layer_batches: int = typer.Option(None, "--layer-batches", min=0, help="Check every layer stage by stage on the first N "
                                      "batches only (default: all); the logits of every batch are compared."),
    energy: bool = typer.Option(False, "--energy", help="Print the counted PSUM / RAE activity, priced, beside the "
                                "energy model's terms for the same layers (WS, untiled)."),
    accelerator: str = typer.Option(None, "--accelerator", help="with --energy: accelerator YAML or a built-in "
                                    "(apsq energy's) whose per-access energies price the counts; default: default"),
) -> None:
    """Whole-model inference with every quantized matmul's PSUMs on BACKEND, exactly verified."""
    import torch

    from apsq.deploy import DeployMismatch, load
    from apsq.deploy.batches import run_batches

    torch.set_num_threads(1)
    try:
        acc = None
        if accelerator is not None:  # checked before the model is built or anything runs
            from apsq.hw.accelerator import load_accelerator

            if not energy:
                raise APSQError("--accelerator prices the engine's counted activity: add --energy (without it "
                                "nothing is priced)")
            acc = load_accelerator(accelerator)
        prog = load(program)
        if backend not in ("golden", "amaranth", "verilator"):
            raise APSQError(f"--backend must be golden, amaranth or verilator, got {backend!r}")
        res = run_batches(prog, input_, backend, limit=limit, batch_size=batch_size, verify=verify,
                          mismatch_dir=mismatch_dir, energy=energy, accelerator=acc,
                          layer_batches=layer_batches, progress=_Progress(backend))
    except DeployMismatch as exc:
        fail(exc, code=1)
    except APSQError as exc:
        fail(exc)
    res["command"] = command_line()
    write_json(json_out, res)
    kind = res["input_kind"]  # sentences | images
    t = table(f"apsq deploy run: {res[kind]} {kind} on {backend}", "quantity", "value", left=("quantity",))
    for key in ("identical_predictions", "identical_logits", f"{kind}_checked_layer_by_layer", "accuracy", "lane_steps",
                "rtl_cycles", "rtl_lane_steps_per_s", f"{kind}_per_min", "wall_s"):
        if res.get(key) is not None:
            v = res[key]
            t.add_row(key, f"{v:.4f}" if isinstance(v, float) and key == "accuracy" else str(v))
    console().print(t)
    if energy and res.get("energy"):
        _print_energy(res["energy"])


class _Progress:
    """One line per batch on stderr: inputs done, seconds since the run started and an estimate of the
    rest (long runs: the RTL, or 1,041 sentences on a loaded machine). On ``amaranth`` (Python's RTL
    simulator, 3-8 k lane-steps/s, ~2,000x slower than Verilator: docs/rae.md; a MiniLM sentence is ~10 M
    lane-steps, results/deploy/gs2_verilator.json) a line says so first."""

    def __init__(self, backend: str) -> None:
        import sys
        import time

        self.t0 = time.perf_counter()
        if backend == "amaranth":
            print("--backend amaranth: Python's RTL simulator, ~2,000x slower than --backend verilator (a MiniLM "
                  "sentence, ~10 M lane-steps, takes 20-60 min); --limit N runs fewer inputs", file=sys.stderr,
                  flush=True)

    def __call__(self, done: int, total: int) -> None:
        import sys
        import time

        spent = time.perf_counter() - self.t0
        left = f", about {spent / done * (total - done):.0f} s left" if 0 < done < total else ""
        print(f"{done}/{total} inputs, {spent:.0f} s{left}", file=sys.stderr, flush=True)


def _print_energy(e: dict) -> None:
    t = table(f"energy of what the engine did vs the energy model ({e['dataflow'].upper()}, {e['schedule']}, "
              f"{e['accelerator']}), nJ", "layer", "gs", "writes", "reads", "equal", "PSUM counted", "PSUM model",
              "RAE counted", "RAE model", "abstracted", left=("layer",))
    for r in e["layers"]:
        c = r["counted"]
        t.add_row(r["name"], str(r["gs"]), f"{c['stored_writes']:,}", f"{c['reads']:,}",
                  "yes" if r["writes_equal"] and r["reads_equal"] else "NO",
                  *(f"{r[k] / 1000:.2f}" for k in ("counted_psum_pj", "model_psum_pj", "counted_rae_pj", "model_rae_pj",
                                                   "abstracted_pj")))
    tot = e["total"]
    t.add_row("total", "", "", "", "yes" if e["all_counts_equal"] else "NO",
              *(f"{tot[k] / 1000:.2f}" for k in ("counted_psum_pj", "model_psum_pj", "counted_rae_pj", "model_rae_pj",
                                                 "abstracted_pj")))
    console().print(t)
    console().print(f"largest PSUM spill share in the model: {e['psum_spill_max']:.3f} (spilled accesses are priced at "
                    "DRAM energies by the model, at the PSUM banks' by the counts); abstracted by the model: "
                    + "; ".join(e["abstracted_terms"]))


def register(app: typer.Typer) -> None:
    app.add_typer(deploy_app, name="deploy")
