"""GLUE with every PSUM variant: one gs sweep per task, then GLUE's metrics per task and the GLUE average.

``apsq paper glue --config configs/paper/bert_base_glue.yaml`` reads a *GLUE study* YAML:

.. code-block:: yaml

    base: {model: {name: bert-base-uncased, max_len: 128}, finetune: {...}, apsq: {...}, qat: {...}}
    tasks: [cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte]
    per_task: {stsb: {finetune: {steps: 540}}}   # merged into base for that task (mappings key by key)
    data_files: {cola: {train: cola_train.jsonl, validation: cola_val.jsonl}}   # optional local copies
    gs: [1, 2, 3, 4]
    output: runs/paper/bert_base_glue

Each task's training config is ``base`` + ``per_task[task]`` + ``data: glue-<task>`` (``num_labels``
set from the task: 1 for STS-B, 3 for MNLI, else 2), swept by :func:`apsq.eval.sweep.sweep` into
``output/<task>/`` (the FP32 model fine-tuned once, then W8A8-INT32, psq and APSQ per gs; finished
runs are reused, interrupted ones resumed). ``glue.json`` collects every task's official metrics
(:mod:`apsq.train.glue`) per variant from the runs' ``result.json``, the GLUE average per variant
(mean of the task scores) and its drop from FP32 in points. With ``data: {validation_from_train: true}``
and ``eval: {selection_split: validation}`` in ``base`` (as ``configs/paper/bert_base_glue.yaml``), every
run also scores the 10 % of GLUE train it never trained on, and the gs is chosen there
(:func:`collect_glue`): GLUE's validation set, the reported one, is never used to choose.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from apsq.data.registry import GLUE_CLASSES
from apsq.errors import APSQError, read_yaml
from apsq.eval.report import best_gs
from apsq.train.config import TrainConfig, parse_config
from apsq.train.glue import GLUE_METRICS, glue_average

__all__ = ["GlueStudy", "collect_glue", "glue_table", "load_glue_study", "run_glue_study", "task_configs"]


class GlueStudy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base: dict[str, Any]
    """A training config (``model``, ``finetune``, ``apsq``, ``qat``, ``distill``, ...); its ``data`` section
    may set options such as ``validation_from_train`` (each task sets ``name``, ``eval_split`` and files)."""
    tasks: tuple[str, ...] = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")
    per_task: dict[str, dict[str, Any]] = {}
    data_files: dict[str, dict[str, str]] = {}
    """``{task: {train: path, validation: path}}``: local JSON lines in GLUE's fields instead of the hub."""
    gs: tuple[int, ...] = (1, 2, 3, 4)
    baselines: bool = True
    energy: bool = True
    output: str = "runs/glue"
    seq_len: int = Field(128, ge=1)
    """Tokens of the traced model for the energy reduction (BERT's GLUE length)."""

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [t for t in v if t not in GLUE_METRICS]
        if bad or not v:
            raise ValueError(f"tasks must be GLUE tasks ({', '.join(GLUE_METRICS)}); got {list(v)}")
        return v


def load_glue_study(path: str | Path) -> GlueStudy:
    """Validate the GLUE study YAML at ``path`` (errors name every bad key)."""
    data = read_yaml(path, "GLUE study config")
    try:
        study = GlueStudy.model_validate(data)
    except ValidationError as exc:
        msg = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                        for e in exc.errors())
        raise APSQError(f"{path}: invalid GLUE study config: {msg}") from None
    extra = sorted((set(study.per_task) | set(study.data_files)) - set(study.tasks))
    if extra:
        raise APSQError(f"{path}: per_task / data_files name tasks not in tasks: {extra}")
    task_configs(study)  # every task's training config validates before anything runs
    return study


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def task_configs(study: GlueStudy) -> dict[str, TrainConfig]:
    """``{task: TrainConfig}`` of every task of the study (validated; the head sized for the task)."""
    out = {}
    for t in study.tasks:
        data = _merge(study.base, study.per_task.get(t, {}))
        data = _merge(data, {"model": {"num_labels": GLUE_CLASSES[t]}})
        d: dict[str, Any] = {"name": f"glue-{t}", "eval_split": "validation"}
        files = study.data_files.get(t)
        if files:
            d.update(path=files.get("train"), eval_path=files.get("validation"))
        data["data"] = {**data.get("data", {}), **d}
        out[t] = parse_config(data, f"GLUE task {t}")
    return out


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def collect_glue(output: str | Path, tasks: tuple[str, ...] | list[str], gs: tuple[int, ...] | list[int]
                 ) -> dict[str, Any]:
    """GLUE metrics per task and variant from the run folders under ``output`` (``<task>/<variant>/
    result.json``), the GLUE average of each variant over the tasks it has, and its drop from FP32.
    Missing runs are left out and listed in ``missing``.

    ``best_gs`` is the APSQ gs to report. When every APSQ run of every task measured the rows held out of
    GLUE train (``data.validation_from_train`` + ``eval.selection_split: validation``), it is chosen on their
    GLUE average (``selection_average``; ``selected_gs``, ``gs_selected_on: "held-out train rows"``, which
    ``apsq paper table1`` reads; ties to the smaller gs) and ``best_gs_on_reported`` keeps the best on
    GLUE's validation set for contrast. Otherwise it is the best on GLUE's validation set itself, the
    reported split (as the paper picks it; optimistic, issue 24)."""
    output = Path(output)
    names = ["w8a8", "psq", *[f"apsq_gs{g}" for g in gs]]
    per_task: dict[str, dict[str, Any]] = {}
    selection: dict[str, dict[str, float]] = {}  # {variant: {task: score on the held-out rows of GLUE train}}
    missing = []
    for t in tasks:
        row: dict[str, Any] = {}
        for n in names:
            r = _read(output / t / n / "result.json")
            if r is None or r.get("glue") is None:
                missing.append(f"{t}/{n}")
                continue
            row[n] = r["glue"]
            if "fp32" not in row and r.get("fp32_glue") is not None:
                row["fp32"] = r["fp32_glue"]
            if r.get("selection_split") == "validation" and r.get("selection_accuracy") is not None:
                selection.setdefault(n, {})[t] = r["selection_accuracy"]
        if row:
            per_task[t] = row
    variants = ["fp32", *names]
    avg: dict[str, Any] = {}
    for v in variants:
        scores = {t: row[v]["score"] for t, row in per_task.items() if v in row}
        if scores:
            avg[v] = {"average": glue_average(scores), "tasks": sorted(scores)}
    fp = avg.get("fp32")
    for v, a in avg.items():
        if v != "fp32" and fp is not None and a["tasks"] == fp["tasks"]:
            a["drop_pp"] = 100 * (fp["average"] - a["average"])
    gs_avg = {int(v.removeprefix("apsq_gs")): a["average"] for v, a in avg.items() if v.startswith("apsq_gs")}
    best = best_gs(gs_avg)
    out: dict[str, Any] = {"tasks": list(tasks), "metrics": {t: list(GLUE_METRICS[t]) for t in tasks},
                           "per_task": per_task, "glue_average": avg, "best_gs": best, "missing": missing}
    # gs chosen on the rows held out of GLUE train (data.validation_from_train), when every APSQ run of every
    # task measured them: the GLUE average there, ties to the smaller gs; best_gs is then that gs
    apsq_runs = [f"apsq_gs{g}" for g in gs_avg]
    done = sorted(per_task)
    if apsq_runs and done and all(sorted(selection.get(n, {})) == done for n in apsq_runs):
        sel_avg = {int(n.removeprefix("apsq_gs")): glue_average(selection[n]) for n in apsq_runs}
        chosen = best_gs(sel_avg)
        out.update(selection_average={v: glue_average(s) for v, s in selection.items() if sorted(s) == done},
                   selected_gs=chosen, gs_selected_on="held-out train rows", best_gs=chosen, best_gs_on_reported=best)
    return out


def run_glue_study(study: GlueStudy, output: str | Path | None = None, *, progress: bool = True,
                   command: str | None = None) -> dict[str, Any]:
    """Sweep every task (:func:`apsq.eval.sweep.sweep`), then write ``glue.json`` and ``glue.md``."""
    from apsq.data.fileio import atomic_write_text
    from apsq.eval.sweep import sweep

    out = Path(output or study.output)
    energy = None
    for t, cfg in task_configs(study).items():
        res = sweep(cfg, out / t, study.gs, baselines=study.baselines, energy=study.energy, progress=progress,
                    command=command)
        energy = energy or res.get("energy_reduction")
    table = collect_glue(out, study.tasks, study.gs)
    table.update(energy_reduction=energy, model=study.base.get("model", {}).get("name"), command=command)
    atomic_write_text(out / "glue.json", json.dumps(table, indent=1) + "\n")
    atomic_write_text(out / "glue.md", glue_table(table) + "\n")
    return table


def glue_table(res: dict[str, Any]) -> str:
    """Markdown: one row per variant, each task's metrics (x 100, ``/``-joined) and the GLUE average."""
    tasks = [t for t in res["tasks"] if t in res["per_task"]]
    head = ["variant", *[f"{t} ({'/'.join(res['metrics'][t])})" for t in tasks], "GLUE avg", "drop (pp)"]
    sel = res.get("selection_average") or {}
    if sel:
        head.append("avg on held-out train rows (gs chosen)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v, a in res["glue_average"].items():
        cells = [f"**{v}**" if sel and v == f"apsq_gs{res.get('selected_gs')}" else v]
        for t in tasks:
            m = res["per_task"][t].get(v)
            cells.append("" if m is None else "/".join(f"{100 * m[k]:.2f}" for k in res["metrics"][t]))
        cells.append(f"{100 * a['average']:.2f}")
        cells.append("" if "drop_pp" not in a else f"{a['drop_pp']:+.2f}")
        if sel:
            cells.append("" if v not in sel else f"{100 * sel[v]:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
