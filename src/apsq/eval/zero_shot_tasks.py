"""The paper's seven zero-shot tasks as lm-eval tasks, from the hub or from local files in each task's format.

LLaMA2-7B's row of the paper's Table I averages "7 zero-shot tasks"; we read them as the seven that
LLM-QAT / OmniQuant-style papers report: BoolQ, PIQA, HellaSwag, WinoGrande, ARC-easy, ARC-challenge,
OpenBookQA. Each runs through lm-eval's own task definition (prompt, choices, target, metrics) of the
pinned lm-eval 0.4.13.

Offline (and in CI), :func:`write_local_tasks` turns a folder of ``<task>.jsonl`` files -- rows in the
hub dataset's own format, fields as in :data:`TASK_FIELDS` -- into lm-eval task YAMLs that ``include``
lm-eval's built-in definition and swap only the data source (JSON lines instead of the hub) and the
splits (the evaluated split only). The task keeps its name, its prompt and its metrics, so the same
command and the same JSON keys serve both.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from apsq.errors import APSQError

__all__ = ["PAPER_TASKS", "SELECTION_SUFFIX", "STANDIN_TASKS", "TASK_FIELDS", "TaskSpec", "lm_eval_task_dir",
           "selection_task", "sentence_task_rows", "write_local_tasks", "write_selection_tasks", "write_sentence_tasks"]


@dataclass(frozen=True)
class TaskSpec:
    """One zero-shot task: lm-eval's YAML (relative to ``lm_eval/tasks``), the split lm-eval evaluates,
    the fields of one hub row, and the metric the average uses (``acc_norm`` where lm-eval normalises
    by length and papers report it)."""

    yaml: str
    split: str
    fields: tuple[str, ...]
    metric: str


TASK_FIELDS: dict[str, TaskSpec] = {
    "boolq": TaskSpec("super_glue/boolq/default.yaml", "validation", ("passage", "question", "label"), "acc"),
    "piqa": TaskSpec("piqa/piqa.yaml", "validation", ("goal", "sol1", "sol2", "label"), "acc"),
    "hellaswag": TaskSpec("hellaswag/hellaswag.yaml", "validation",
                          ("activity_label", "ctx_a", "ctx_b", "endings", "label"), "acc_norm"),
    "winogrande": TaskSpec("winogrande/default.yaml", "validation", ("sentence", "option1", "option2", "answer"),
                           "acc"),
    "arc_easy": TaskSpec("arc/arc_easy.yaml", "test", ("question", "choices", "answerKey"), "acc"),
    "arc_challenge": TaskSpec("arc/arc_challenge.yaml", "test", ("question", "choices", "answerKey"), "acc_norm"),
    "openbookqa": TaskSpec("openbookqa/openbookqa.yaml", "test", ("question_stem", "choices", "answerKey"),
                           "acc_norm"),
}
"""Task name (lm-eval's) -> :class:`TaskSpec`. ARC / OpenBookQA ``choices`` is ``{"text": [...], "label":
[...]}``; HellaSwag's ``label`` is a digit string, WinoGrande's ``answer`` ``"1"`` / ``"2"`` (as on the hub)."""

PAPER_TASKS: tuple[str, ...] = tuple(TASK_FIELDS)


def lm_eval_task_dir() -> Path:
    """The folder of lm-eval's built-in task YAMLs."""
    try:
        import lm_eval.tasks
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise APSQError("the zero-shot tasks need lm-eval: pip install 'apsq[eval]'") from exc
    return Path(lm_eval.tasks.__file__).parent


def _check_rows(task: str, path: Path, fields: Sequence[str]) -> int:
    """Rows in ``path`` (JSON lines); a row that is not an object or lacks a field raises APSQError."""
    n = 0
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise APSQError(f"{path}:{i}: not a JSON line ({exc})") from exc
        missing = [f for f in fields if not isinstance(row, dict) or f not in row]
        if missing:
            raise APSQError(f"{path}:{i}: a {task} row needs the fields {list(fields)} (the hub's format); "
                            f"missing {missing}")
        n += 1
    if n == 0:
        raise APSQError(f"{path}: no rows")
    return n


def write_local_tasks(data_dir: str | Path, out_dir: str | Path, tasks: Sequence[str]) -> dict[str, int]:
    """Write one lm-eval YAML per task into ``out_dir`` (to pass as ``include_path``), each reading
    ``data_dir/<task>.jsonl``; returns ``{task: rows}``.

    Raises:
        APSQError: an unknown task (allowed: :data:`PAPER_TASKS`), a missing file, a row without the
            task's fields -- before anything is written.
    """
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir).resolve()
    bad = [t for t in tasks if t not in TASK_FIELDS]
    if bad:
        raise APSQError(f"tasks: local task files are supported for {', '.join(PAPER_TASKS)}; got {bad}")
    root = lm_eval_task_dir()
    rows = {}
    for t in tasks:
        rows[t] = _local_rows(t, data_dir / f"{t}.jsonl")
    out_dir.mkdir(parents=True, exist_ok=True)
    for t in tasks:
        (out_dir / f"{t}.yaml").write_text(_task_yaml(root, t, t, TASK_FIELDS[t].split, data_dir / f"{t}.jsonl"))
    return rows


def _local_rows(task: str, f: Path, hint: str = "") -> int:
    if not f.is_file():
        kind = f.name.removeprefix(task)
        raise APSQError(f"local data: {f} does not exist (one <task>{kind} per task, rows in the hub's format: "
                        f"{', '.join(TASK_FIELDS[task].fields)}){hint}")
    return _check_rows(task, f, TASK_FIELDS[task].fields)


def _task_yaml(root: Path, task: str, name: str, split: str, data_file: Path | None) -> str:
    """An lm-eval task ``name`` that includes ``task``'s built-in definition and evaluates only ``split``
    (read from ``data_file``, JSON lines, when given; else the hub dataset of the definition)."""
    other = {"training_split": None, "validation_split": split if split == "validation" else None,
             "test_split": None if split == "validation" else split}
    text = f"include: {json.dumps(str(root / TASK_FIELDS[task].yaml))}\ntask: {name}\n"
    if data_file is not None:
        text += ("dataset_path: json\ndataset_name: null\n"
                 f"dataset_kwargs:\n  data_files:\n    {split}: {json.dumps(str(data_file))}\n")
    return text + "".join(f"{k}: {'null' if v is None else v}\n" for k, v in other.items())


SELECTION_SUFFIX = "_selection"
"""The lm-eval name of a task's selection variant: ``piqa_selection`` scores PIQA's *training* split."""


def selection_task(task: str) -> str:
    """``task``'s selection variant (:func:`write_selection_tasks`)."""
    return task + SELECTION_SUFFIX


def write_selection_tasks(out_dir: str | Path, tasks: Sequence[str], data_dir: str | Path | None = None
                          ) -> dict[str, int | None]:
    """One lm-eval YAML per task into ``out_dir``: ``<task>_selection``, the task's own definition (prompt,
    choices, metrics) on its *training* split, which zero-shot evaluation never scores. The gs (or any
    knob) is chosen there and the evaluated split reported once (issue 24; ``docs/paper-protocol.md``).
    From the hub (``data_dir`` None: every task of :data:`PAPER_TASKS` has a ``train`` split there) or
    from ``data_dir/<task>.selection.jsonl`` (rows in the hub's format). Returns ``{task: rows}`` (None
    for the hub, where lm-eval counts them).

    Raises:
        APSQError: an unknown task, a missing or malformed local file -- before anything is written.
    """
    out_dir = Path(out_dir).resolve()
    off = "; or set selection_items: 0 (--selection-items 0) to choose the gs on the evaluated splits"
    bad = [t for t in tasks if t not in TASK_FIELDS]
    if bad:
        raise APSQError(f"tasks: a selection split is defined for {', '.join(PAPER_TASKS)}; got {bad}{off}")
    files = {t: None if data_dir is None else Path(data_dir).resolve() / f"{t}.selection.jsonl" for t in tasks}
    rows = {t: None if f is None else _local_rows(t, f, off) for t, f in files.items()}
    root = lm_eval_task_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    for t in tasks:
        (out_dir / f"{selection_task(t)}.yaml").write_text(_task_yaml(root, t, selection_task(t), "train", files[t]))
    return rows


# --- a stand-in built from real held-out sentences, in the tasks' own formats --------------------------

STANDIN_TASKS = ("hellaswag", "piqa", "winogrande", "arc_easy")
"""The task formats a sentence-completion item fits honestly (BoolQ's yes / no questions about a passage
and the science questions of ARC-c / OpenBookQA have no counterpart in plain sentences)."""


def sentence_task_rows(sentences: Sequence[str], task: str, n: int, seed: int = 0) -> list[dict]:
    """``n`` rows of ``task`` (one of :data:`STANDIN_TASKS`), in its hub format, built from ``sentences``:

    * ``hellaswag``: a sentence's first half as ``ctx_a`` (``activity_label`` "Review"), its true second
      half among three second halves of other sentences (``endings``, ``label`` a digit string);
    * ``piqa``: first half as ``goal``, the true second half and one other as ``sol1`` / ``sol2``;
    * ``arc_easy``: first half as ``question``, four endings as ``choices`` A-D, ``answerKey``;
    * ``winogrande``: one word of the sentence's second half (4+ letters, two or more words after it:
      lm-eval scores the rest of the sentence) blanked by ``_``, the true word and a word of another
      sentence as ``option1`` / ``option2``, ``answer`` "1" / "2".

    Items are drawn with :func:`apsq.eval.lm_eval_adapter.completion_items` (seeded; distractors are
    other sentences' endings), so a model scores above chance only by modelling the text.
    """
    import random

    from apsq.eval.lm_eval_adapter import completion_items

    if task not in STANDIN_TASKS:
        raise APSQError(f"task must be one of {', '.join(STANDIN_TASKS)} for a sentence stand-in; got {task!r}")
    if task != "winogrande":
        k = {"hellaswag": 4, "piqa": 2, "arc_easy": 4}[task]
        items = completion_items(sentences, n, seed, n_choices=k)
        rows: list[dict] = []
        for it in items:
            if task == "hellaswag":
                rows.append({"ind": it["id"], "activity_label": "Review", "ctx_a": it["context"], "ctx_b": "",
                             "ctx": it["context"], "endings": it["choices"], "source_id": "standin",
                             "split": "val", "split_type": "indomain", "label": str(it["label"])})
            elif task == "piqa":
                rows.append({"goal": it["context"], "sol1": it["choices"][0], "sol2": it["choices"][1],
                             "label": it["label"]})
            else:
                keys = ["A", "B", "C", "D"]
                rows.append({"id": f"standin-{it['id']}", "question": it["context"],
                             "choices": {"text": it["choices"], "label": keys}, "answerKey": keys[it["label"]]})
        return rows
    rng = random.Random(f"winogrande:{seed}")
    pool = sorted({" ".join(s.split()) for s in sentences if len(s.split()) >= 6})
    words = sorted({w for s in pool for w in s.split() if len(w) >= 4 and w.isalpha()})
    cand = [(s, i) for s in pool for i, w in enumerate(s.split())
            if len(s.split()) // 2 <= i <= len(s.split()) - 3 and len(w) >= 4 and w.isalpha()]  # 2+ words follow
    if len(cand) < n or len(words) < 2:
        raise APSQError(f"n={n} winogrande items need n sentences with a 4+ letter word in their second half; "
                        f"{len(cand)} available")
    rows = []
    for s, i in (cand[j] for j in rng.sample(range(len(cand)), n)):
        toks = s.split()
        true = toks[i]
        other = true
        while other == true:
            other = words[rng.randrange(len(words))]
        first = rng.random() < 0.5
        rows.append({"sentence": " ".join(toks[:i] + ["_"] + toks[i + 1:]),
                     "option1": true if first else other, "option2": other if first else true,
                     "answer": "1" if first else "2"})
    return rows


def write_sentence_tasks(sentences: Sequence[str], folder: str | Path, n: int, seed: int = 0,
                         tasks: Sequence[str] = STANDIN_TASKS, selection: bool = False) -> Path:
    """Write ``folder/<task>.jsonl`` (:func:`sentence_task_rows`, seed ``seed + index``) for ``--local-data``;
    ``selection``: ``folder/<task>.selection.jsonl`` instead, the items a gs is chosen on
    (:func:`write_selection_tasks`; build them from other sentences than the evaluated ones)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k, t in enumerate(tasks):
        rows = sentence_task_rows(sentences, t, n, seed + k)
        name = f"{t}.selection.jsonl" if selection else f"{t}.jsonl"
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder
