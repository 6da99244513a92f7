"""GLUE and ADE20K (scene_parse_150) through Hugging Face ``datasets`` — for users with a network.

Both take ``data_files`` to read a local JSON / JSON-lines stand-in instead of the hub (that is how
they are tested offline). ``datasets`` is an optional dependency (``pip install apsq[eval]``).
"""

from __future__ import annotations

from typing import Any

from apsq.data.text import TextExample
from apsq.errors import APSQError, check_choice

GLUE_TEXT_KEYS: dict[str, tuple[str, str | None]] = {
    "cola": ("sentence", None),
    "sst2": ("sentence", None),
    "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "stsb": ("sentence1", "sentence2"),
    "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}
"""GLUE task -> its text field(s) (second ``None`` for single-sentence tasks)."""


def _datasets():
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise APSQError("this loader needs the `datasets` package: pip install 'apsq[eval]'") from exc
    return datasets


def _load(name: str, config: str | None, split: str, data_files: Any) -> Any:
    ds = _datasets()
    try:
        if data_files is not None:
            return ds.load_dataset("json", data_files={split: data_files}, split=split)
        return ds.load_dataset(name, config, split=split)
    except (ConnectionError, OSError, ValueError) as exc:
        if data_files is not None:
            raise APSQError(f"could not read {data_files!r} as JSON lines: {exc}") from exc
        raise APSQError(
            f"could not load {name}/{config or ''} split {split!r} from the Hugging Face hub ({type(exc).__name__}). "
            "It needs network access (unset HF_DATASETS_OFFLINE) or a local copy: pass data_files=... "
            "(JSON lines with the task's fields)."
        ) from exc


def load_glue(task: str, split: str = "train", data_files: Any = None) -> list[TextExample]:
    """A GLUE task as :class:`TextExample` rows (``label`` an int class, a float similarity for STS-B;
    ``idx`` or row number as id)."""
    check_choice("task", task, GLUE_TEXT_KEYS)
    a_key, b_key = GLUE_TEXT_KEYS[task]
    hub_split = "validation_matched" if task == "mnli" and split == "validation" else split  # MNLI-m, as GLUE reports
    data = _load("nyu-mll/glue", task, hub_split if data_files is None else split, data_files)
    missing = [k for k in (a_key, b_key, "label") if k is not None and k not in data.column_names]
    if missing:
        raise APSQError(f"GLUE {task} rows need fields {missing}; found {data.column_names}")
    out = []
    for i, row in enumerate(data):
        label = float(row["label"]) if task == "stsb" else int(row["label"])
        out.append(TextExample(id=str(row.get("idx", i)), text=row[a_key], label=label,
                               text_b=row[b_key] if b_key else None))
    return out


def load_ade20k(split: str = "train", data_files: Any = None, limit: int | None = None) -> list[dict[str, Any]]:
    """ADE20K scene parsing (150 classes) rows ``{"image": HxWx3 uint8, "annotation": HxW int64}``.

    From the hub it is ``scene_parse_150``; a local stand-in is JSON lines whose ``image`` and
    ``annotation`` fields are nested lists (or file paths readable by PIL). Class ids follow the
    hub: 0 is "other" (ignored by the metric), 1..150 the classes.
    """
    import numpy as np

    data = _load("zhoubolei/scene_parse_150", None, split, data_files)
    out = []
    for i, row in enumerate(data):
        if limit is not None and i >= limit:
            break
        img, ann = row["image"], row["annotation"]
        if isinstance(img, str) or isinstance(ann, str):
            from PIL import Image

            img = Image.open(img) if isinstance(img, str) else img
            ann = Image.open(ann) if isinstance(ann, str) else ann
        img = np.asarray(img.convert("RGB") if hasattr(img, "convert") else img, dtype=np.uint8)
        ann = np.asarray(ann, dtype=np.int64)
        if img.ndim != 3 or img.shape[2] != 3 or ann.shape != img.shape[:2]:
            raise APSQError(f"ADE20K row {i}: image must be HxWx3 and annotation HxW, got {img.shape} / {ann.shape}")
        out.append({"image": img, "annotation": ann})
    return out
