"""The paper's Table I, collected from the runs that exist: ``apsq paper table1 [--rows ...] [--dry-run]``.

One row per model of the paper (BERT-Base / GLUE, Segformer-B0 and EfficientViT-B1 / ADE20K, LLaMA2-7B /
seven zero-shot tasks). Each row has

* the **full** run: the command on the paper's model and data (needs a GPU and the Hugging Face hub)
  and the JSON it writes;
* a **stand-in** measured here on a CPU: MiniLM on the Rotten Tomatoes sentences for BERT-Base
  (``results/sentiment_minilm/``), the offline segmentation set for the vision models
  (``results/segmentation/``), the small LLaMA through ``apsq eval zero-shot`` on four task formats
  built from held-out sentences for LLaMA2-7B (``results/zero_shot_small_llama/``);
* the paper's published numbers (``docs/apsq-method.md`` section 6).

Collected per row, from the full run when its JSON exists, else from the stand-in: the score of the
full-precision model and of APSQ at the best gs, their drop (accuracy points, mIoU points), where the
gs was chosen (``selected_gs`` of a JSON that picked it on validation data, else the best on the
evaluated split, said so), and the energy model's reduction of total energy vs INT32 PSUMs for IS and
WS at that gs -- always priced on the *paper's* model (the built-in workload, :mod:`apsq.hw.energy`),
whichever run gave the accuracy, and marked as such.

Result JSON formats read (any of them, per file): a gs sweep (``{"fp32": x, "apsq": {"<gs>": x}}``,
``apsq sweep`` / the MiniLM seed driver; values may be ``{"acc": x}`` mappings as in ``llm_mc.json``),
``apsq eval zero-shot``'s ``zero_shot.json`` (``variants``) and ``apsq paper glue``'s ``glue.json``
(``glue_average``). A segmentation sweep may name its metric in ``metric`` (``miou``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apsq.errors import APSQError
from apsq.eval.report import best_gs

__all__ = ["ROWS", "Row", "collect_row", "dry_run", "gpu_hours", "table1", "table1_markdown"]


@dataclass(frozen=True)
class Row:
    """One row of Table I."""

    key: str
    model: str
    task: str
    metric: str
    """``accuracy`` (points of %) or ``miou`` (mIoU points)."""
    workload: str
    """The built-in workload the energy model prices (:mod:`apsq.hw.workloads.builtin`)."""
    workload_options: tuple[tuple[str, Any], ...]
    paper_drop: str
    paper_is: str
    paper_ws: str
    full_command: str
    full_json: str
    standin: str
    standin_command: str
    standin_json: tuple[str, ...]
    """Candidate files, the first that exists is read (``*`` globs allowed)."""
    standin_key: str | None
    fp_examples: int
    """Examples (sequences / images) of the full-precision fine-tune (0: the weights come from the hub)."""
    qat_examples: int
    """Examples of QAT + KD per quantized variant (0: calibration only)."""
    eval_units: int
    """Evaluated examples (LLaMA: tokens) per variant."""


ROWS: tuple[Row, ...] = (
    Row("bert-base-glue", "BERT-Base", "GLUE (8 tasks)", "accuracy", "bert-base", (("seq_len", 128),),
        "0.16 %", "64.38 %", "74.37 %",
        "apsq paper glue --config configs/paper/bert_base_glue.yaml", "runs/paper/bert_base_glue/glue.json",
        "MiniLM (all-MiniLM-L6-v2) on the Rotten Tomatoes sentences, 5 seeds",
        "bash results/sentiment_minilm/run.sh", ("results/sentiment_minilm/sentiment_minilm.json",), None,
        # configs/paper/bert_base_glue.yaml: 88,980 fine-tune and 30,220 QAT steps of 32; 59,808 validation rows
        # plus the ~94,910 rows held out of GLUE train (10 % of 949,098) that choose the gs
        88_980 * 32, 30_220 * 32, 59_808 + 94_910),
    Row("segformer-b0-ade20k", "Segformer-B0", "ADE20K (mIoU)", "miou", "segformer-b0", (("image_size", 512),),
        "0.61 mIoU", "86.81 %", "66.22 %",
        "apsq sweep --config configs/train_segformer_ade20k.yaml --output runs/sweep_segformer_ade20k",
        "runs/sweep_segformer_ade20k/sweep.json",
        "Segformer-B0 (random init) on the offline segmentation set (results/segmentation/)",
        "bash results/segmentation/run.sh",
        ("results/segmentation/segmentation.json",), "segformer-b0",
        # ADE20K weights from the hub (no FP training); QAT 16k iterations x 16 (10 % of mmseg's 160k schedule)
        0, 16_000 * 16, 2_000),
    Row("efficientvit-b1-ade20k", "EfficientViT-B1", "ADE20K (mIoU)", "miou", "efficientvit-b1",
        (("image_size", 512),), "0.83 mIoU", "87.42 %", "72.92 %",
        "apsq sweep --config configs/train_efficientvit_ade20k.yaml --output runs/sweep_efficientvit_ade20k",
        "runs/sweep_efficientvit_ade20k/sweep.json",
        "EfficientViT-B1 on the offline segmentation set (results/segmentation/)",
        "bash results/segmentation/run.sh",
        ("results/segmentation/segmentation.json",), "efficientvit-b1",
        # no ADE20K weights of our EfficientViT-B1: FP training 160k x 16, then QAT 16k x 16 per variant
        160_000 * 16, 16_000 * 16, 2_000),
    Row("llama2-7b-zero-shot", "LLaMA2-7B", "7 zero-shot tasks", "accuracy", "llama2-7b", (("seq_len", 512),),
        "0.59 %", "≈1.02×", "31.7×",
        "apsq eval zero-shot --config configs/paper/llama2_7b_zero_shot.yaml",
        "runs/paper/llama2_7b_zero_shot/zero_shot.json",
        "small LLaMA (2 layers, hidden 128) trained here, calibration only: lm-eval on HellaSwag / PIQA / "
        "WinoGrande / ARC-e formats built from held-out sentences (else the sentence-completion task of results/llm)",
        "bash results/zero_shot_small_llama/run.sh",
        ("results/zero_shot_small_llama/zero_shot.json", "results/llm/llm_mc.json"), None,
        # calibration only; ~175k lm-eval log-likelihood requests of ~100 tokens per variant, plus ~11k for the
        # 500 training-split items per task that choose the gs (2-4 choices each)
        0, 0, 18_600_000),
)

ASSUMED_TFLOPS = 50.0
"""Effective dense FP16 / BF16 throughput of one H100-class GPU in TFLOP/s assumed by :func:`gpu_hours`
(about 5 % of its 989 TFLOP/s peak: small layers, attention, data loading; an assumption, not measured)."""
APSQ_STEP_RATIO = 1.95
"""Cost of an APSQ layer's forward + backward over a plain layer's: the largest ratio measured for an APSQ
INT8 layer (gs 1-4 per tensor 1.63-1.95x, per channel 1.83-1.88x at BERT FFN shapes; the largest is gs = 1 at
K3072 -> N768; ``results/bench/bench_layer.json``, ``docs/performance.md``; CPU, one thread).
``tests/eval/test_table1.py`` keeps it equal to that file's largest ratio."""
VARIANTS = 6
"""Quantized variants per row: W8A8-INT32, psq, APSQ gs = 1..4."""


def gpu_hours(row: Row) -> dict[str, Any]:
    """An **estimate** of the full row's time on one GPU: FLOPs from the paper model's traced MACs
    (built-in workload; LLaMA per token) times the work of the row, at :data:`ASSUMED_TFLOPS`.

    FP fine-tune ``6 MACs`` per example (forward + backward), QAT ``(6 r + 2) MACs`` (student at the
    measured APSQ step ratio ``r`` = :data:`APSQ_STEP_RATIO`, plus the teacher's forward), evaluation
    ``2 MACs`` per unit (``2 r`` quantized), for :data:`VARIANTS` quantized variants."""
    from apsq.hw.workloads.builtin import builtin_workload

    opts = dict(row.workload_options)
    macs = builtin_workload(row.workload, **opts).macs
    if row.workload == "llama2-7b":
        macs /= opts["seq_len"]  # per token
    r = APSQ_STEP_RATIO
    flop_macs = (6 * row.fp_examples + VARIANTS * (6 * r + 2) * row.qat_examples
                 + (1 + VARIANTS * r) * 2 * row.eval_units)
    hours = flop_macs * macs / (ASSUMED_TFLOPS * 1e12) / 3600
    return {"hours": round(hours, 1), "gmacs_per_unit": round(macs / 1e9, 3), "fp_examples": row.fp_examples,
            "qat_examples_per_variant": row.qat_examples, "eval_units_per_variant": row.eval_units,
            "assumed_tflops": ASSUMED_TFLOPS, "apsq_step_ratio": r, "estimate": True}


def _score(v: Any) -> float | None:
    """A variant's score: a number, or the ``acc`` / ``mean`` / ``average`` of a mapping."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, dict):
        for k in ("average", "acc", "mean", "miou", "score", "accuracy"):
            if isinstance(v.get(k), (int, float)):
                return float(v[k])
    return None


def scores_of(res: dict[str, Any], key: str | None = None) -> tuple[float | None, dict[int, float], dict[str, Any]]:
    """``(fp score, {gs: APSQ score}, notes)`` of one result JSON in any supported format; ``key``: the
    model of a multi-model study (``{"models": {key: {"test_miou": {variant: {"mean": x}}, "best_gs":
    {"chosen_on_validation": "apsq_gs<g>"}}}}``, the segmentation study)."""
    notes: dict[str, Any] = {}
    if "models" in res and key is not None:  # the segmentation study: means over seeds
        if key not in res["models"]:
            raise APSQError(f"the result has no model {key!r}; it has {sorted(res['models'])}")
        m = res["models"][key]
        table = m.get("test_miou") or {}
        fp = _score(table.get("fp32"))
        gs = {int(k.removeprefix("apsq_gs")): _score(v) for k, v in table.items() if k.startswith("apsq_gs")}
        chosen = (m.get("best_gs") or {}).get("chosen_on_validation")
        if isinstance(chosen, str) and chosen.startswith("apsq_gs"):
            notes["selected_gs"] = int(chosen.removeprefix("apsq_gs"))
        notes["format"] = f"multi-model study, model {key} (mean over seeds)"
        return fp, {g: s for g, s in gs.items() if s is not None}, notes
    if "glue_average" in res:  # apsq paper glue
        avg = res["glue_average"]
        fp = _score(avg.get("fp32"))
        gs = {int(k.removeprefix("apsq_gs")): _score(v) for k, v in avg.items() if k.startswith("apsq_gs")}
        notes["format"] = "glue.json (GLUE average over the tasks run)"
    elif "variants" in res and "tasks" in res:  # apsq eval zero-shot
        var = res["variants"]
        fp = _score(var.get("fp"))
        gs = {int(k.removeprefix("apsq_gs")): _score(v) for k, v in var.items() if k.startswith("apsq_gs")}
        notes["format"] = "zero_shot.json (average over the tasks)"
    elif "apsq" in res:  # a gs sweep
        fp = _score(res.get("fp32"))
        gs = {int(k): _score(v) for k, v in (res.get("apsq") or {}).items()}
        notes["format"] = "gs sweep"
    else:
        raise APSQError("unrecognised result JSON: expected a gs sweep (fp32, apsq), zero_shot.json or glue.json")
    for key in ("selected_gs", "gs_selected_on"):
        if key in res:
            notes[key] = res[key]
    return fp, {g: s for g, s in gs.items() if s is not None}, notes


def _find(patterns: tuple[str, ...] | list[str], root: Path) -> Path | None:
    for pat in patterns:
        hits = sorted(root.glob(pat)) if any(c in pat for c in "*?[") else [root / pat]
        hits = [h for h in hits if h.is_file()]
        if hits:
            return hits[0]
    return None


def row_energy(row: Row, gs: int) -> dict[str, Any]:
    """Total and PSUM energy reduction vs INT32 PSUMs (IS, WS) of the row's paper model at ``gs``."""
    from apsq.hw.energy import compare
    from apsq.hw.workloads.builtin import builtin_workload

    wl = builtin_workload(row.workload, **dict(row.workload_options))
    out: dict[str, Any] = {"workload": row.workload, "options": dict(row.workload_options), "gs": gs}
    for df in ("is", "ws"):
        c = compare(wl, df, gs=gs, psum_bits=8)
        out[df] = {"total": round(float(c.reduction), 6), "psum": round(float(c.psum_reduction), 6)}
    return out


SELECTED_ON = {"validation": "validation data", "train split": "the tasks' training splits",
               "held-out train rows": "rows held out of the training split"}
"""A result's ``gs_selected_on`` in words (``gs_chosen``): the sweeps and studies' validation split, the
zero-shot tasks' training splits, GLUE's rows held out of its training split."""


def _full_measured_on(row: Row, res: dict[str, Any]) -> str:
    """"the paper's model and data", unless the full run's JSON (a gs sweep records its ``model`` and
    ``dataset``) says it was run on another model or data set: then that, so a sweep of the offline
    stand-in saved at the full run's path is not reported as the paper's."""
    model, data = res.get("model"), res.get("dataset")
    if row.metric == "miou" and isinstance(data, str) and (data != "ade20k" or model not in (None, row.workload)):
        return f"{model} on {data}: not the paper's ADE20K (found at {row.full_json})"
    return "the paper's model and data"


def collect_row(row: Row, root: str | Path = ".", energy: bool = True) -> dict[str, Any]:
    """One row: the paper's numbers, the source measured (full run, stand-in or none), its FP and best-gs
    APSQ scores, the drop in points, and the energy reduction of the paper's model at that gs."""
    root = Path(root)
    out: dict[str, Any] = {"row": row.key, "model": row.model, "task": row.task, "metric": row.metric,
                           "paper": {"drop": row.paper_drop, "is": row.paper_is, "ws": row.paper_ws},
                           "full_command": row.full_command, "needs": "a GPU and the Hugging Face hub (network)"}
    full = root / row.full_json
    src = full if full.is_file() else _find(row.standin_json, root)
    if src is None:
        out.update(source="not run", measured_on=None)
        if energy:  # the energy model needs no run: the paper model's reduction over gs = 1..4
            out["energy_by_gs"] = {str(g): row_energy(row, g) for g in (1, 2, 3, 4)}
        return out
    res = json.loads(src.read_text())
    out.update(source=str(src.relative_to(root) if src.is_relative_to(root) else src),
               measured_on=_full_measured_on(row, res) if src == full else f"stand-in: {row.standin}")
    fp, gs, notes = scores_of(res, None if src == full else row.standin_key)
    out["notes"] = notes
    if not gs:
        out["error"] = "no APSQ variant in the result"
        return out
    sel = notes.get("selected_gs")
    best = int(sel) if isinstance(sel, (int, str)) and str(sel).isdigit() and int(sel) in gs else best_gs(gs)
    assert best is not None  # gs is not empty
    on = SELECTED_ON.get(notes.get("gs_selected_on") or "validation", notes.get("gs_selected_on"))
    out.update(best_gs=best, gs_chosen=f"on {on}" if sel is not None else
               "best on the evaluated split (no validation selection in this result)",
               fp=fp, apsq=gs[best], apsq_per_gs={str(g): s for g, s in sorted(gs.items())})
    if fp is not None:
        out["drop"] = round(100 * (fp - gs[best]), 4)  # points (accuracy % or mIoU), positive = worse
    if energy:
        out["energy"] = row_energy(row, best)
    return out


def select_rows(rows: list[str] | None) -> list[Row]:
    """The rows named (keys, comma list already split; None: all). An empty list (``--rows ","``) is an
    error, not "all"."""
    if rows is None:
        return list(ROWS)
    keys = {r.key: r for r in ROWS}
    if not rows:
        raise APSQError(f"--rows: no row named; allowed: {', '.join(keys)} (leave --rows out for all)")
    bad = [r for r in rows if r not in keys]
    if bad:
        raise APSQError(f"--rows: unknown rows {bad}; allowed: {', '.join(keys)}")
    return [keys[r] for r in rows]


def dry_run(rows: list[Row], root: str | Path = ".") -> list[dict[str, Any]]:
    """Each row's commands (full and stand-in), where their JSON lands, and whether it exists yet."""
    return [{"row": r.key, "full": r.full_command, "full_json": r.full_json, "needs": "GPU + network",
             "full_exists": (Path(root) / r.full_json).is_file(), "gpu_estimate": gpu_hours(r),
             "standin": r.standin, "standin_command": r.standin_command, "standin_json": list(r.standin_json),
             "standin_found": None if _find(r.standin_json, Path(root)) is None else
             str(_find(r.standin_json, Path(root)))} for r in rows]


def table1(rows: list[Row], root: str | Path = ".", energy: bool = True) -> dict[str, Any]:
    """Every selected row collected (:func:`collect_row`)."""
    return {"rows": [collect_row(r, root, energy) for r in rows],
            "energy_note": "energy: the reduction of total energy vs INT32 PSUMs of the paper's model (built-in "
                           "workload, fixed IS / WS loop orders) at the row's best gs, whatever run gave the accuracy",
            "paper_source": "docs/apsq-method.md section 6 (the seed paper's Table I)"}


def _chosen(r: dict[str, Any]) -> str:
    """Where the row's gs was chosen, in a few words for the table cell."""
    return "on test" if r.get("gs_chosen", "").startswith("best on the evaluated") else "not on test"


def table1_markdown(res: dict[str, Any]) -> str:
    """The table: ours beside the paper's, with the source of every number."""
    head = ["model / task", "measured on", "FP", "APSQ (best gs)", "drop (ours)", "drop (paper)",
            "energy red. IS (ours / paper)", "energy red. WS (ours / paper)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res["rows"]:
        unit = " mIoU" if r["metric"] == "miou" else " pp"
        pct = 100.0
        ours = r.get("energy", {})
        if r.get("source") in (None, "not run") or "apsq" not in r:
            eg = r.get("energy_by_gs") or {}

            def span(df: str, eg: dict = eg) -> str:
                v = [100 * e[df]["total"] for e in eg.values()]
                return f"{min(v):.1f}–{max(v):.1f} % (gs 1–4)" if v else "—"

            cells = [f"{r['model']} / {r['task']}", r.get("source", "not run") + f" — full: `{r['full_command']}`",
                     "", "", "", r["paper"]["drop"], f"{span('is')} / {r['paper']['is']}",
                     f"{span('ws')} / {r['paper']['ws']}"]
        else:
            fp = "" if r.get("fp") is None else f"{pct * r['fp']:.2f}"
            cells = [f"{r['model']} / {r['task']}", r["measured_on"], fp,
                     f"{pct * r['apsq']:.2f} (gs={r['best_gs']}, chosen {_chosen(r)})",
                     "" if "drop" not in r else f"{r['drop']:+.2f}{unit}", r["paper"]["drop"],
                     f"{100 * ours['is']['total']:.1f} % / {r['paper']['is']}" if ours else f"— / {r['paper']['is']}",
                     f"{100 * ours['ws']['total']:.1f} % / {r['paper']['ws']}" if ours else f"— / {r['paper']['ws']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


