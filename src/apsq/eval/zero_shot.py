"""The paper's zero-shot protocol as one run: ``apsq eval zero-shot --model PATH_OR_HUB_ID``.

For one causal LM it evaluates the full-precision model and every PSUM variant -- W8A8 with INT32
PSUMs (``w8a8``), PSQ INT8 (``psq``) and APSQ INT8 per group size (``apsq_gs<g>``) -- on the zero-shot
tasks of :mod:`apsq.eval.zero_shot_tasks` through lm-eval (each metric with its standard error), each
quantized variant calibrated on the same documented set (:mod:`apsq.eval.calibration`; no training).
A checkpoint that is already quantized (a QAT-trained model saved in Hugging Face format) is evaluated
as loaded, as the single variant ``loaded`` (the ``fp`` variant, listed first, loads it and finds it
quantized; without ``fp`` the quantized variants refuse to re-quantize it).

The summary per variant is the mean over tasks of each task's metric (``acc`` or ``acc_norm``, see
:data:`apsq.eval.zero_shot_tasks.TASK_FIELDS`) and its drop from full precision in percentage points,
with a standard error ``sqrt(sum se_t^2) / T`` that treats the tasks and the two models as
independent (lm-eval gives per-task errors only; paired errors would be smaller). Beside it: the
energy model's reduction of total energy vs INT32 PSUMs for input- and weight-stationary arrays
(:mod:`apsq.hw.energy`, read-only) for the same model traced on the meta device.

Zero-shot tasks have no tuning split: the "best gs" is the one with the highest average on the
evaluated splits themselves, as the paper reports it; every gs is in the JSON and the table.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from apsq.config import APSQConfig
from apsq.errors import APSQError, read_yaml
from apsq.eval.calibration import CalibrationSet
from apsq.eval.report import best_gs
from apsq.eval.zero_shot_tasks import PAPER_TASKS, TASK_FIELDS
from apsq.train.config import APSQSection

__all__ = ["ZeroShotConfig", "load_zero_shot_config", "run_zero_shot", "summarize", "zero_shot_table"]

DTYPES = ("auto", "float16", "bfloat16", "float32")
BASELINES = ("fp", "w8a8", "psq")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class CalibrationConfig(_Strict):
    source: str = "wikitext2"
    """``wikitext2`` (hub), ``corpus`` (apsq's offline sentences) or a text file (:mod:`apsq.eval.calibration`)."""
    samples: int = Field(128, ge=1, le=1_000_000)
    seq_len: int = Field(512, ge=2, le=1 << 20)
    seed: int = Field(0, ge=0)

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        try:
            CalibrationSet(source=v, samples=1, seq_len=2)
        except APSQError as exc:
            raise ValueError(str(exc)) from exc
        return v


class EnergyConfig(_Strict):
    enabled: bool = True
    workload: str | None = None
    """A built-in workload (e.g. ``llama2-7b``) instead of tracing the model's own config."""
    seq_len: int = Field(512, ge=1, le=1 << 20)
    """Prefill tokens of the traced model (logits of the last token only, as in generation)."""
    dataflows: tuple[str, ...] = ("is", "ws")


class ZeroShotConfig(_Strict):
    """``apsq eval zero-shot``'s settings (one YAML file; command-line options override its keys)."""

    model: str
    """A Hugging Face causal LM: a local folder or a hub id."""
    dtype: str = "auto"
    """``auto``: float16 on CUDA, float32 on the CPU (CPU half-precision matmuls are slow)."""
    tasks: tuple[str, ...] = PAPER_TASKS
    metrics: dict[str, str] = {}
    """Per-task metric of the average (default :data:`~apsq.eval.zero_shot_tasks.TASK_FIELDS`' ``metric``, else ``acc``)."""
    variants: tuple[str, ...] = ("fp", "w8a8", "psq", "apsq")
    gs: tuple[int, ...] = (1, 2, 3, 4)
    apsq: APSQSection = APSQSection(tile=32, psum_bits=8, weight_bits=8, act_bits=8)
    """:class:`apsq.APSQConfig` settings shared by the variants (``mode`` and ``gs`` set per variant), typed and
    checked as a training config's ``apsq`` section (:class:`apsq.train.config.APSQSection`)."""
    calibration: CalibrationConfig = CalibrationConfig()
    local_data: str | None = None
    """A folder of ``<task>.jsonl`` in each task's hub format (offline); ``None``: lm-eval's hub tasks."""
    limit: int | None = Field(None, ge=1)
    """Items per task (a quick look; ``None``: the whole split, as the paper)."""
    selection_items: int = Field(0, ge=0, le=10**7)
    """Items of each task's *training* split (the first N, lm-eval's ``limit``) that every variant is also
    scored on; the gs is chosen on their average and the evaluated splits reported once (``selected_gs``;
    issue 24). Local data: ``<task>.selection.jsonl`` beside ``<task>.jsonl``. 0: off (the best gs is then
    the best on the evaluated splits, as the paper)."""
    num_fewshot: int = Field(0, ge=0, le=0)
    batch_size: int = Field(8, ge=1, le=1 << 16)
    add_bos: bool = False
    """Put the tokenizer's BOS before every context (LLaMA's tokenizer already does)."""
    device: str = "auto"
    output: str | None = None
    energy: EnergyConfig = EnergyConfig()

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {v!r}")
        return v

    @field_validator("variants")
    @classmethod
    def _variants(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [x for x in v if x not in (*BASELINES, "apsq")]
        if bad or not v:
            raise ValueError(f"variants must be a non-empty list of fp, w8a8, psq, apsq; got {list(v)}")
        return v

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"tasks must be a non-empty list without repeats; got {list(v)}")
        return v

    @field_validator("gs")
    @classmethod
    def _gs(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(g < 1 for g in v):
            raise ValueError(f"gs values must be >= 1; got {list(v)}")
        return v

    @field_validator("apsq")
    @classmethod
    def _apsq(cls, v: APSQSection) -> APSQSection:
        bad = sorted(v.model_fields_set & {"mode", "gs"})
        if bad:
            raise ValueError(f"{bad} are set per variant (variants / gs), not here")
        return v

    def metric_of(self, task: str) -> str:
        return self.metrics.get(task) or (TASK_FIELDS[task].metric if task in TASK_FIELDS else "acc")

    def calibration_set(self) -> CalibrationSet:
        return CalibrationSet(**self.calibration.model_dump())

    def variant_configs(self) -> dict[str, APSQConfig | None]:
        """``{name: APSQConfig or None}`` in report order (``fp`` first)."""
        out: dict[str, APSQConfig | None] = {}
        for v in sorted(self.variants, key=lambda v: v != "fp"):  # fp first: it finds a quantized checkpoint
            if v == "fp":
                out["fp"] = None
            elif v == "apsq":
                for g in self.gs:
                    out[f"apsq_gs{g}"] = self.apsq.variant(mode="apsq", gs=int(g)).to_apsq_config()
            else:
                out[v] = self.apsq.variant(mode="none" if v == "w8a8" else "psq", gs=1).to_apsq_config()
        return out


def parse_zero_shot_config(data: Any, source: str = "zero-shot config") -> ZeroShotConfig:
    """Validate a mapping; errors name every bad or unknown key."""
    if not isinstance(data, dict):
        raise APSQError(f"{source}: a zero-shot config must be a mapping, got {type(data).__name__}")
    try:
        return ZeroShotConfig.model_validate(data)
    except ValidationError as exc:
        msgs = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
            msgs.append(f"unknown key {loc!r}" if e["type"] == "extra_forbidden"
                        else f"{loc}: {e['msg'].removeprefix('Value error, ')}")
        raise APSQError(f"{source}: invalid zero-shot config: " + "; ".join(msgs)) from None


def load_zero_shot_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> ZeroShotConfig:
    """The YAML at ``path`` (``None``: defaults) with ``overrides`` on top: keys whose value is None are
    ignored; a mapping (``calibration``, ``energy``) updates the file's mapping key by key."""
    data = read_yaml(path, "zero-shot config") if path else {}
    if not isinstance(data, dict):
        raise APSQError(f"{path}: a zero-shot config must be a mapping, got {type(data).__name__}")
    for k, v in (overrides or {}).items():
        if isinstance(v, dict):
            v = {**(data.get(k) or {}), **{a: b for a, b in v.items() if b is not None}} or None
        if v is not None:
            data[k] = v
    return parse_zero_shot_config(data, str(path) if path else "zero-shot options")


def _torch_dtype(cfg: ZeroShotConfig, device: Any) -> Any:
    import torch

    if cfg.dtype == "auto":
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    return getattr(torch, cfg.dtype)


def _task_scores(res: dict[str, Any], task: str, metric: str) -> dict[str, Any]:
    r = res[task]
    if f"{metric},none" not in r:
        have = sorted(k.split(",")[0] for k in r if "," in k and "_stderr" not in k)
        raise APSQError(f"task {task!r} reports no metric {metric!r}; it reports {have} (set metrics.{task})")
    out: dict[str, Any] = {"metric": metric}
    for k, v in r.items():
        if "," in k:
            name = k.split(",")[0]
            out[name] = None if v == "N/A" else float(v)
    out["n"] = int(r.get("sample_len", 0)) or None
    return out


def summarize(variants: dict[str, dict[str, Any]], tasks: list[str]) -> dict[str, Any]:
    """Per variant: ``average`` (mean of each task's metric), ``average_stderr`` (``sqrt(sum se^2) / T``),
    and, beside full precision ``fp``, ``drop_pp`` (``100 (fp - variant)``, positive = worse) with its
    ``drop_stderr_pp`` (independent errors); ``best_gs``: the APSQ gs to report. When every APSQ variant
    was also scored on the tasks' training splits (``selection``), each gets ``selection_average`` and the
    gs is chosen there (``selected_gs``, ``gs_selected_on: "train split"``, ties to the smaller gs;
    ``best_gs_on_reported`` keeps the best on the evaluated splits); otherwise it is the best on the
    evaluated splits (as the paper picks it)."""
    out: dict[str, Any] = {}
    for name, v in variants.items():
        vals = [v["tasks"][t][v["tasks"][t]["metric"]] for t in tasks]
        ses = [v["tasks"][t].get(f"{v['tasks'][t]['metric']}_stderr") for t in tasks]
        avg = sum(vals) / len(vals)
        se = math.sqrt(sum(s * s for s in ses)) / len(ses) if all(s is not None for s in ses) else None
        out[name] = {"average": avg, "average_stderr": se}
        sel = v.get("selection")
        if sel:
            out[name]["selection_average"] = sum(sel[t][sel[t]["metric"]] for t in tasks) / len(tasks)
    fp = out.get("fp")
    if fp is not None:
        for name, s in out.items():
            if name == "fp":
                continue
            s["drop_pp"] = 100 * (fp["average"] - s["average"])
            if s["average_stderr"] is not None and fp["average_stderr"] is not None:
                s["drop_stderr_pp"] = 100 * math.hypot(s["average_stderr"], fp["average_stderr"])
    gs_avgs = {int(n.removeprefix("apsq_gs")): s["average"] for n, s in out.items() if n.startswith("apsq_gs")}
    best = best_gs(gs_avgs)
    summary: dict[str, Any] = {"per_variant": out, "best_gs": best}
    sel = {g: out[f"apsq_gs{g}"].get("selection_average") for g in gs_avgs}
    if sel and all(v is not None for v in sel.values()):
        chosen = best_gs(sel)
        summary.update(best_gs=chosen, selected_gs=chosen, gs_selected_on="train split", best_gs_on_reported=best)
    return summary


def _energy(cfg: ZeroShotConfig) -> dict[str, Any]:
    """Total and PSUM energy reduction vs INT32 PSUMs per dataflow and gs for the model (or the
    configured built-in workload), at the APSQ tile / PSUM bits of the config."""
    from apsq.hw.accelerator import default_accelerator
    from apsq.hw.energy import compare, resolve_tile

    qcfg = cfg.apsq.variant(mode="apsq", gs=1).to_apsq_config()
    resolve_tile(qcfg, default_accelerator(), on_mismatch="error")
    e = cfg.energy
    if e.workload:
        from apsq.hw.workloads.builtin import builtin_workload

        wl = builtin_workload(e.workload, seq_len=e.seq_len)
    else:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from apsq.hw.workloads.trace import trace_factory

        try:
            conf = AutoConfig.from_pretrained(cfg.model)
        except OSError as exc:
            raise APSQError(f"energy: could not read the config of {cfg.model!r} ({exc}); set energy.workload "
                            "(e.g. llama2-7b)") from exc

        def factory():
            m = AutoModelForCausalLM.from_config(conf)
            # lm_head on the last token only, as the built-in llama2-7b workload prices it
            return m, {"input_ids": torch.zeros(1, e.seq_len, dtype=torch.long), "logits_to_keep": 1}

        wl = trace_factory(factory, name=f"{Path(cfg.model).name}@{e.seq_len}")
    out: dict[str, Any] = {"workload": wl.name, "seq_len": e.seq_len, "psum_bits": qcfg.psum_bits, "tile": qcfg.tile,
                           "total": {}, "psum": {}}
    for df in e.dataflows:
        out["total"][df], out["psum"][df] = {}, {}
        for g in cfg.gs:
            c = compare(wl, df, gs=int(g), psum_bits=qcfg.psum_bits)
            out["total"][df][str(g)] = round(float(c.reduction), 6)
            out["psum"][df][str(g)] = round(float(c.psum_reduction), 6)
    return out


def run_zero_shot(cfg: ZeroShotConfig, output: str | Path, *, progress: bool = True,
                  command: str | None = None) -> dict[str, Any]:
    """Evaluate every variant of ``cfg``; write ``zero_shot.json``, ``zero_shot.md`` (the table) and
    ``zero_shot.png`` into ``output``; return the JSON's content.

    Raises:
        APSQError: bad local task files (before any model is loaded), an unloadable model, a task
            without the configured metric.
    """
    from tqdm.auto import tqdm

    from apsq.device import resolve_device
    from apsq.eval.lm_eval_adapter import (
        evaluate_lm,
        is_quantized,
        quantized_causal_lm,
        require_lm_eval,
        with_head_excluded,
    )
    from apsq.eval.zero_shot_tasks import (
        selection_task,
        write_local_tasks,
        write_selection_tasks,
    )

    require_lm_eval()
    t0 = time.time()
    output = Path(output)
    tasks = list(cfg.tasks)
    include_path, source = None, "hub (lm-eval's task definitions and datasets)"
    if cfg.local_data:
        include_path = output / "tasks"
        rows = write_local_tasks(cfg.local_data, include_path, tasks)
        source = f"local files {Path(cfg.local_data).resolve()} ({', '.join(f'{t}: {n}' for t, n in rows.items())} rows)"
    sel_tasks = [selection_task(t) for t in tasks] if cfg.selection_items else []
    if sel_tasks:  # each task's training split, where the gs is chosen (checked before any model loads)
        include_path = output / "tasks"
        write_selection_tasks(include_path, tasks, cfg.local_data)
    device = resolve_device(cfg.device, "device")
    dtype = _torch_dtype(cfg, device)
    variants = cfg.variant_configs()
    calib = cfg.calibration_set()
    results: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for name, qcfg in tqdm(list(variants.items()), desc="zero-shot variants", disable=not progress):
        t = time.time()
        model, tok = quantized_causal_lm(cfg.model, qcfg, calib, dtype=dtype, add_bos=cfg.add_bos, device=device)
        lm_args: dict[str, Any] = dict(batch_size=cfg.batch_size, include_path=include_path, num_fewshot=cfg.num_fewshot,
                                       include_defaults=not cfg.local_data, add_bos=cfg.add_bos)
        res = evaluate_lm(model, tok, tasks, limit=cfg.limit, **lm_args)
        if qcfg is None and is_quantized(model):  # a QAT-trained checkpoint: evaluated as loaded, alone
            name = "loaded"
        results[name] = {"config": None if qcfg is None else with_head_excluded(qcfg).to_dict(),
                         "tasks": {tk: _task_scores(res["results"], tk, cfg.metric_of(tk)) for tk in tasks}}
        if sel_tasks:
            sel = evaluate_lm(model, tok, sel_tasks, limit=cfg.selection_items, **lm_args)["results"]
            results[name]["selection"] = {tk: _task_scores(sel, selection_task(tk), cfg.metric_of(tk))
                                          for tk in tasks}
        del model
        seconds[name] = round(time.time() - t, 1)
        if name == "loaded":
            break
    summary = summarize(results, tasks)
    for name, s in summary["per_variant"].items():
        results[name].update(s)
    out: dict[str, Any] = {
        "model": cfg.model, "dtype": str(dtype).removeprefix("torch."), "device": str(device), "tasks": tasks,
        "metrics": {t: cfg.metric_of(t) for t in tasks}, "task_source": source, "limit": cfg.limit,
        "num_fewshot": cfg.num_fewshot, "calibration": calib.to_dict() if "loaded" not in results else None,
        "apsq": cfg.apsq.model_dump(mode="json"), "variants": results, "best_gs": summary["best_gs"],
        **{k: summary[k] for k in ("selected_gs", "gs_selected_on", "best_gs_on_reported") if k in summary},
        "selection_items": cfg.selection_items or None,
        "stderr_note": "average_stderr = sqrt(sum of per-task stderr^2) / tasks; drop_stderr_pp combines the two "
                       "variants' errors as independent (an upper bound for paired data)",
        "best_gs_note": ("best_gs is chosen on the first selection_items items of each task's training split "
                         "(never evaluated), the evaluated splits reported once; every gs is reported"
                         if "selected_gs" in summary else
                         "best_gs is chosen on the evaluated splits (as the paper; selection_items scores the tasks' "
                         "training splits to choose there instead); every gs is reported"),
    }
    if cfg.energy.enabled and "loaded" not in results:
        try:
            out["energy_reduction"] = _energy(cfg)
        except APSQError as exc:
            out["energy_reduction"] = {"error": str(exc)}
    out["seconds"] = seconds
    out["total_seconds"] = round(time.time() - t0, 1)
    out["command"] = command or shlex.join(["apsq", *sys.argv[1:]])
    output.mkdir(parents=True, exist_ok=True)
    from apsq.data.fileio import atomic_write_text

    atomic_write_text(output / "zero_shot.json", json.dumps(out, indent=1) + "\n")
    atomic_write_text(output / "zero_shot.md", zero_shot_table(out) + "\n")
    plot_zero_shot(out, output / "zero_shot.png")
    return out


VARIANT_LABELS = {"fp": "FP", "w8a8": "W8A8 INT32 PSUM", "psq": "PSQ INT8", "loaded": "as loaded"}


def variant_label(name: str, dtype: str = "") -> str:
    if name == "fp":
        return {"float16": "FP16", "bfloat16": "BF16", "float32": "FP32"}.get(dtype, "FP")
    if name.startswith("apsq_gs"):
        return f"APSQ INT8 gs={name.removeprefix('apsq_gs')}"
    return VARIANT_LABELS.get(name, name)


def zero_shot_table(res: dict[str, Any]) -> str:
    """The result as a markdown table: per task the metric (%) +- stderr, the average, the drop from FP
    (pp) and, for APSQ rows, the energy reduction IS / WS (% of total)."""
    tasks = res["tasks"]
    er = res.get("energy_reduction") or {}
    dfs = list(er.get("total", {}))
    chosen = res.get("selected_gs")
    head = ["variant", *[f"{t} ({res['metrics'][t]})" for t in tasks], "average", "drop (pp)",
            *[f"energy red. {d.upper()}" for d in dfs]] + (["train-split avg (gs chosen)"] if chosen else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, v in res["variants"].items():
        cells = [variant_label(name, res.get("dtype", ""))]
        for t in tasks:
            s = v["tasks"][t]
            se = s.get(f"{s['metric']}_stderr")
            cells.append(f"{100 * s[s['metric']]:.2f}" + (f" ± {100 * se:.2f}" if se is not None else ""))
        se = v.get("average_stderr")
        cells.append(f"{100 * v['average']:.2f}" + (f" ± {100 * se:.2f}" if se is not None else ""))
        drop = v.get("drop_pp")
        cells.append("" if drop is None else f"{drop:+.2f}" + (
            f" ± {v['drop_stderr_pp']:.2f}" if v.get("drop_stderr_pp") is not None else ""))
        g = name.removeprefix("apsq_gs") if name.startswith("apsq_gs") else None
        cells += [f"{100 * er['total'][d][g]:.1f} %" if g is not None and g in er["total"][d] else "" for d in dfs]
        if chosen:
            sa = v.get("selection_average")
            cells.append("" if sa is None else f"{100 * sa:.2f}")
            if g == str(chosen):
                cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_zero_shot(res: dict[str, Any], path: str | Path) -> Path:
    """Average accuracy per variant (bars with +- 1 stderr) and each task's metric (points); the energy
    reduction of each APSQ gs on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["variants"])
    labels = [variant_label(n, res.get("dtype", "")) for n in names]
    avg = [100 * res["variants"][n]["average"] for n in names]
    err = [100 * (res["variants"][n].get("average_stderr") or 0.0) for n in names]
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(names) + 2), 5.0), dpi=120)
    x = list(range(len(names)))
    ax.bar(x, avg, yerr=err, color="C0", alpha=0.55, capsize=3, label="average over tasks (± 1 s.e.)")
    for i, t in enumerate(res["tasks"]):
        ys = [100 * res["variants"][n]["tasks"][t][res["metrics"][t]] for n in names]
        ax.plot(x, ys, "o", ms=3, color=f"C{(i + 1) % 10}", label=t)
    for xi, a in zip(x, avg):
        ax.annotate(f"{a:.1f}", (xi, a), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("zero-shot accuracy (%)")
    ax.grid(alpha=0.3, axis="y")
    h2: list[Any] = []
    l2: list[str] = []
    er = res.get("energy_reduction") or {}
    if "total" in er:
        ax2 = ax.twinx()
        for j, (df, red) in enumerate(er["total"].items()):
            pts = [(i, 100 * red[n.removeprefix("apsq_gs")]) for i, n in enumerate(names)
                   if n.startswith("apsq_gs") and n.removeprefix("apsq_gs") in red]
            if pts:
                ax2.plot([p[0] for p in pts], [p[1] for p in pts], "s-.", color=f"C{8 + j}",
                         label=f"energy reduction {df.upper()}")
        ax2.set_ylabel("energy reduction vs INT32 PSUM (%)")
        ax2.set_ylim(0, 100)
        h2, l2 = ax2.get_legend_handles_labels()
    h1, l1 = ax.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=4, frameon=False)
    ax.set_title(f"{Path(res['model']).name}: zero-shot, {len(res['tasks'])} tasks", fontsize=10)
    from apsq.eval.report import save_figure

    return save_figure(fig, path)
