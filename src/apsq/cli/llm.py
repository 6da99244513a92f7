"""``apsq llm dry-run``: sharded QAT of a LLaMA-class model planned on the meta device."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from apsq.cli.common import console, fail, parse_ints, table
from apsq.errors import APSQError


def dry_run_cmd(
    model: str = typer.Option("llama2-7b", "--model", help="architecture: llama2-7b"),
    gpus: str = typer.Option("1,2,4,8", "--gpus", help="GPU counts to plan for (FSDP2 over all of them)"),
    dtype: str = typer.Option("bfloat16", "--dtype", help="weights, gradients and AdamW moments: bfloat16 | float32"),
    mode: str = typer.Option("apsq", "--mode", help="PSUM mode: none | psq | apsq"),
    gs: int = typer.Option(2, "--gs", min=1, help="APSQ group size"),
    tile: int = typer.Option(32, "--tile", min=1, help="PSUM tile (rows of the PE array)"),
    psum_bits: int = typer.Option(8, "--psum-bits", min=1, max=32, help="stored PSUM width"),
    seq_len: int = typer.Option(512, "--seq-len", min=1, help="prefill tokens of the energy workload"),
    teacher: bool = typer.Option(True, "--teacher/--no-teacher", help="count a sharded distillation teacher"),
    energy: bool = typer.Option(True, "--energy/--no-energy", help="add the energy model's IS / WS report"),
    json_path: Path | None = typer.Option(None, "--json", dir_okay=False, help="also write the result as JSON"),
) -> None:
    """Quantized layers, memory per GPU (1/2/4/8) and the IS/WS energy report of a model built on the meta
    device -- nothing is allocated. Memory: parameters + gradients + AdamW + float32 quantizer steps (+ the
    teacher), sharded 1/N by FSDP2, plus one all-gathered decoder layer; activations are not included."""
    from apsq.train.dry_run import dry_run

    con = console()
    try:
        res = dry_run(model, parse_ints("--gpus", gpus), dtype, mode, gs, tile, psum_bits, seq_len, teacher, energy)
    except APSQError as exc:
        fail(exc)
    t = table(f"{model}: {res['quantized_layers']} quantized layers ({mode}, gs={gs}, tile {tile}, "
              f"{psum_bits}-bit PSUMs)", "layer", "kind", "K", "N", "tiles n", "count", left=("layer", "kind"))
    for name, k in res["layer_kinds"].items():
        t.add_row(name, k["kind"], f"keys <= {k['k']}" if k["k_tokens"] else str(k["k"]), str(k["n_out"] or "keys"),
                  f"<= {k['tiles']}" if k["k_tokens"] else str(k["tiles"]), str(k["count"]))
    con.print(t)
    if res["skipped"]:
        con.print(f"full precision: {', '.join(res['skipped'])}")
    mem = res["memory"]
    cols = [c for c in mem["per_gpu"][0] if c.endswith("_gib")]
    t = table(f"memory per GPU, FSDP2, {mem['dtype']} (GiB)", "GPUs", *[c[:-4] for c in cols])
    for row in mem["per_gpu"]:
        t.add_row(str(row["gpus"]), *[f"{row[c]:.2f}" for c in cols])
    con.print(t)
    con.print(f"includes: {mem['includes']}; not included: {mem['excludes']}")
    if energy:
        e = res["energy"]
        t = table(f"energy, {e['workload']}, untiled (the fixed loop orders): INT32 PSUMs vs {mode} gs={gs}, "
                  f"{psum_bits}-bit", "dataflow",
                  "baseline µJ", f"{mode} µJ", "reduction", "PSUM share (baseline)", left=("dataflow",))
        for df, v in e["dataflows"].items():
            t.add_row(df.upper(), f"{v['baseline_pj'] / 1e6:,.0f}", f"{v['apsq_pj'] / 1e6:,.0f}",
                      f"{v['reduction']:.1%}", f"{v['psum_share_baseline']:.1%}")
        con.print(t)
        con.print("untiled: IS never tiles N, WS never tiles M, so INT32 PSUMs may spill to DRAM and a large saving is "
                  "that spill; the mapper's tiled schedule (what a designer builds, no spill): apsq energy -m "
                  f"{model} --seq-len {seq_len} -d is|ws --schedule tiled (docs/energy-results.md)")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(res, indent=1) + "\n")


def register(app: typer.Typer) -> None:
    from apsq.cli.common import typer_app

    llm = typer_app(name="llm", help="LLM-scale planning: apsq llm dry-run", no_args_is_help=True)
    llm.command("dry-run")(dry_run_cmd)
    app.add_typer(llm, name="llm")
