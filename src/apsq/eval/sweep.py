"""The gs sweep: train every PSUM variant of one config, report accuracy beside energy reduction.

Variants: W8A8 with INT32 PSUMs (``none``), ``psq`` (optional baselines) and APSQ with each gs. A
variant whose run folder already holds a finished run of the same config is reused; one with a
checkpoint is resumed — so variants can also be trained in parallel with ``apsq train`` into
``<output>/<variant>`` and collected here.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apsq.errors import APSQError
from apsq.eval.report import accuracy_table, best_gs, plot_accuracy_vs_gs
from apsq.nn.config import APSQConfig
from apsq.train.checkpoint import atomic_write_text
from apsq.train.config import TrainConfig, parse_config
from apsq.train.loop import CKPT, FP32, RESULT, train
from apsq.train.models import check_apsq_section


def _apsq_of(cfg: TrainConfig) -> APSQConfig:
    """The config's quantization settings; :class:`APSQError` when it has none."""
    qcfg = cfg.apsq_config()
    if qcfg is None:
        raise APSQError("the sweep needs a config with an `apsq:` section (the quantization settings)")
    return qcfg


def sweep_variants(base: TrainConfig, gs_values: Sequence[int], baselines: bool = True) -> dict[str, TrainConfig]:
    """``{name: config}``: ``w8a8`` (mode none), ``psq`` and ``apsq_gs<g>``, all else from ``base``."""
    if base.apsq is None:
        raise APSQError("the sweep needs a config with an `apsq:` section (the quantization settings)")
    out: dict[str, TrainConfig] = {}
    variants = ([("w8a8", "none", 1), ("psq", "psq", 1)] if baselines else []) + [
        (f"apsq_gs{g}", "apsq", int(g)) for g in gs_values]
    for name, mode, gs in variants:
        out[name] = base.with_apsq(mode=mode, gs=gs)
    return out


def finished_run(run: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """The result of a finished run of ``cfg`` in the folder ``run`` (same config fingerprint), None when
    there is none yet; an :class:`APSQError` when the folder holds a run of another config."""
    res, conf = run / RESULT, run / "config.json"
    if res.exists() and conf.exists():
        if parse_config(json.loads(conf.read_text())).fingerprint() == cfg.fingerprint():
            return json.loads(res.read_text())
        raise APSQError(f"{run} holds a run of a different config; remove it or choose another --output")
    return None


def run_variant(cfg: TrainConfig, run: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """The one way a variant is trained: reuse a finished run of the same config in ``run``, resume an
    interrupted one from its checkpoint, else train it (:func:`apsq.train.loop.train`). Returns the
    run's result (without the live model)."""
    run = Path(run)
    res = finished_run(run, cfg)
    if res is None:
        res = train(cfg, run, resume=(run / CKPT).exists(), progress=progress)
        res.pop("model", None)
    return res


def select_gs(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The APSQ gs to report, chosen without the reported split: the highest ``selection_accuracy``
    (``eval.selection_split``, e.g. validation data carved from training) among the APSQ runs; ties go
    to the smaller gs. Returns ``{"selection": {variant: acc}, "selection_split", "selected_gs",
    "gs_selected_on"}``, or ``{}`` when a run has no selection accuracy (then any best gs read off the
    table is chosen on the reported split itself and overfits it: ``docs/training-recipe.md``)."""
    apsq_runs = {n: r for n, r in runs.items() if r.get("apsq", {}).get("mode") == "apsq"}
    if not apsq_runs or any(r.get("selection_accuracy") is None for r in apsq_runs.values()):
        return {}
    g = best_gs({int(r["apsq"]["gs"]): r["selection_accuracy"] for r in apsq_runs.values()})
    best = next(r for r in apsq_runs.values() if int(r["apsq"]["gs"]) == g)
    split = best.get("selection_split")
    return {"selection": {n: r.get("selection_accuracy") for n, r in runs.items()}, "selection_split": split,
            "selected_gs": int(best["apsq"]["gs"]), "gs_selected_on": split}


def check_energy_tile(cfg: TrainConfig, override_tile: bool = False) -> int:
    """One tile: the config's PSUM tile against the default accelerator's ``pe_array.rows`` (the depth
    the energy model prices). Returns the priced depth.

    Raises:
        APSQError: they differ and ``override_tile`` is False (:func:`apsq.hw.energy.resolve_tile`).
    """
    from apsq.hw.accelerator import default_accelerator
    from apsq.hw.energy import resolve_tile

    acc = default_accelerator()
    return resolve_tile(cfg.apsq_config(), acc, override_tile=override_tile, on_mismatch="error") or acc.pe_array.rows


ENERGY_MEANING = ("total energy saved vs INT32 PSUMs by the accelerator model (default 28 nm accelerator, the model "
                  "traced at {input}), under the mapper's tiled schedule: each design tiled for least energy, "
                  "as a designer would build it (docs/energy-results.md)")
"""The one line the demo and the sweep print under their energy columns (``{input}`` filled in by
:func:`apsq.eval.setup.traced_input`: ``64 tokens``, ``one 32 x 32 image``)."""


def energy_reductions(cfg: TrainConfig, gs_values: Sequence[int], dataflows: Sequence[str] = ("is", "ws"),
                      seq_len: int | None = None, override_tile: bool = False) -> dict[str, Any]:
    """Energy reduction vs INT32 PSUMs per dataflow and gs for the config's model, traced on the
    meta device at ``seq_len`` tokens (default ``model.max_len``) with :mod:`apsq.hw.energy`.

    ``total`` / ``psum`` / ``spills`` are under the mapper's **tiled** schedule (``schedule``; what the
    demo and the sweep show), ``untiled`` holds the same three for the fixed loop orders (whose IS
    figures come from INT32 PSUMs spilling to DRAM); ``spills[df][gs]`` says whether the baseline's
    and APSQ's PSUMs spill; ``meaning`` is the line to print beside the numbers.
    The config's tile must be the array's depth unless ``override_tile`` (:func:`check_energy_tile`);
    ``config_tile`` and ``priced_tile`` are recorded."""
    from apsq.eval.setup import traced_input, workload_of
    from apsq.hw.energy import compare

    qcfg = _apsq_of(cfg)
    rows = check_energy_tile(cfg, override_tile)
    wl = workload_of(cfg, seq_len)
    out: dict[str, Any] = {"workload": wl.name, "psum_bits": qcfg.psum_bits, "config_tile": qcfg.tile,
                           "priced_tile": rows, "schedule": "tiled", "meaning": ENERGY_MEANING.format(input=traced_input(cfg, seq_len))}
    for sched in ("tiled", "untiled"):
        part: dict[str, Any] = {"total": {}, "psum": {}, "spills": {}}
        for df in dataflows:
            part["total"][df], part["psum"][df], part["spills"][df] = {}, {}, {}
            for g in gs_values:
                c = compare(wl, df, gs=int(g), psum_bits=qcfg.psum_bits, schedule=sched)
                part["total"][df][str(g)] = round(float(c.reduction), 6)
                part["psum"][df][str(g)] = round(float(c.psum_reduction), 6)
                part["spills"][df][str(g)] = {"baseline": c.baseline.psum_spills, "apsq": c.apsq.psum_spills}
        if sched == "tiled":
            out.update(part)
        else:
            out["untiled"] = part
    return out


def energy_lines(er: dict[str, Any]) -> list[str]:
    """What the energy numbers of :func:`energy_reductions` mean, and the untiled figures beside them
    (for the demo's and the sweep's tables; empty when the energy model did not run)."""
    if not isinstance(er, dict) or "total" not in er:
        return []

    def spill(part: dict[str, Any], who: str) -> str:
        return "yes" if any(v[who] for d in part["spills"].values() for v in d.values()) else "no"

    def span(red: dict[str, float]) -> str:
        lo, hi = min(red.values()), max(red.values())
        return f"{100 * lo:.1f} %" if round(100 * lo, 1) == round(100 * hi, 1) else f"{100 * lo:.1f}–{100 * hi:.1f} %"

    sched = er.get("schedule", "untiled")  # results written before issue 23 item 6 are untiled
    lines = [f"Energy: {er.get('meaning', 'total energy saved vs INT32 PSUMs, fixed (untiled) loop orders')}."]
    if "spills" in er:
        lines.append(f"{sched}: PSUMs spill to DRAM: INT32 baseline {spill(er, 'baseline')}, APSQ {spill(er, 'apsq')}.")
    un = er.get("untiled")
    if un:
        lines.append("untiled (fixed loop orders) for comparison: " + ", ".join(
            f"{df.upper()} {span(red)}" for df, red in un["total"].items())
            + f"; PSUMs spill: INT32 baseline {spill(un, 'baseline')}, APSQ {spill(un, 'apsq')}.")
    return lines


def sweep(base: TrainConfig, output: str | Path, gs_values: Sequence[int] = (1, 2, 3, 4), *, baselines: bool = True,
          json_path: str | Path | None = None, png_path: str | Path | None = None, energy: bool = True,
          progress: bool = True, command: str | None = None, override_tile: bool = False) -> dict[str, Any]:
    """Run (or reuse / resume) every variant; write ``sweep.json`` / ``sweep.png`` (or the given paths).

    With ``energy``, the config's tile is checked against the priced array depth before anything runs
    (:func:`check_energy_tile`; ``override_tile`` prices the array's depth anyway)."""
    if energy:
        check_energy_tile(base, override_tile)
    check_apsq_section(base)  # a bad exclude pattern fails now, not after the shared fine-tune
    output = Path(output)
    runs: dict[str, dict[str, Any]] = {}
    if base.finetune.init is None and base.finetune.steps > 0:  # fine-tune once, share it
        fp_cfg = base.model_copy(update={"apsq": None})
        fp_run = output / "fp32"
        run_variant(fp_cfg, fp_run, progress=progress)
        base = base.model_copy(update={"finetune": base.finetune.model_copy(update={"steps": 0,
                                                                                   "init": str(fp_run / FP32)})})
    for name, cfg in sweep_variants(base, gs_values, baselines).items():
        runs[name] = run_variant(cfg, output / name, progress=progress)
    fp32 = next((r["fp32_accuracy"] for r in runs.values() if r.get("fp32_accuracy") is not None), None)
    table = accuracy_table(fp32, runs)
    table["calibrated_only"] = {n: r.get("calibrated_accuracy") for n, r in runs.items()}
    table.update(select_gs(runs))
    if runs and next(iter(runs.values())).get("metric"):
        table["metric"] = next(iter(runs.values()))["metric"]
    first = next(iter(runs.values()))
    acfg = _apsq_of(base)
    table.update(seeds=[base.seed], eval_split=first["eval_split"], qat_steps=base.qat.steps,
                 qat_batch_size=base.qat.batch_size, finetune_steps=first.get("finetune_steps"),
                 model=base.model.name, dataset=base.data.name, apsq_config=acfg.to_dict(),
                 run_seconds={n: r.get("seconds") for n, r in runs.items()})
    if energy:
        try:
            table["energy_reduction"] = energy_reductions(base, gs_values, override_tile=override_tile)
        except Exception as exc:  # the energy model is optional for the accuracy sweep
            table["energy_reduction"] = {"error": f"{type(exc).__name__}: {exc}"}
    table["command"] = command or shlex.join(["apsq", *sys.argv[1:]])
    json_path = Path(json_path) if json_path else output / "sweep.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_path, json.dumps(table, indent=1) + "\n")
    calibrated = {str(r["apsq"]["gs"]): r.get("calibrated_accuracy") for r in runs.values()
                  if r["apsq"]["mode"] == "apsq"}
    er = table.get("energy_reduction", {})
    plot_accuracy_vs_gs(table, png_path or output / "sweep.png",
                        title=f"{base.model.name} on {base.data.name}: {base.qat.steps} QAT+KD steps, "
                              f"W{acfg.weight_bits}A{acfg.act_bits}, INT{acfg.psum_bits} PSUM",
                        energy=er.get("total") if isinstance(er, dict) and "total" in er else None,
                        calibrated=calibrated, energy_schedule=er.get("schedule", "untiled")
                        if isinstance(er, dict) else "untiled")
    return table
