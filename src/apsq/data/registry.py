"""What each dataset name of a training config is: its modality and its number of classes.

The training config validates a model / data pairing against this table before anything is loaded
or fetched (:func:`apsq.train.config.TrainConfig`), so a wrong head size or a text model on images
is refused with the allowed values named instead of failing deep inside a forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from apsq.errors import APSQError

TEXT, IMAGE, SEGMENTATION = "text", "image", "segmentation"
"""Modalities: sentences, images with one class each, images with one class per pixel."""

GLUE_CLASSES: dict[str, int] = {
    "cola": 2, "sst2": 2, "mrpc": 2, "qqp": 2, "stsb": 1, "mnli": 3, "qnli": 2, "rte": 2, "wnli": 2,
}
"""GLUE task -> outputs of its head (STS-B: one, a regression of the similarity 0..5)."""
GLUE_REGRESSION = frozenset({"stsb"})


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset of a training config."""

    name: str
    modality: str
    """``text`` (sentences: needs a tokenizer and a text model), ``image`` (pixel tensors, one class each)
    or ``segmentation`` (pixel tensors, one class per pixel)."""
    num_classes: int
    """Classes of its labels (the model head must have exactly this many outputs; 1 for a regression)."""
    regression: bool = False
    """Real-valued labels (mean-squared error, Pearson / Spearman) instead of classes."""


_FIXED = {
    "rt-sentences": DatasetInfo("rt-sentences", TEXT, 2),
    "digits": DatasetInfo("digits", IMAGE, 10),
    "ade20k": DatasetInfo("ade20k", SEGMENTATION, 150),
    "digit-scenes": DatasetInfo("digit-scenes", SEGMENTATION, 12),
}


def dataset_names() -> tuple[str, ...]:
    """Every accepted ``data.name``: the offline sets and the ``glue-<task>`` tasks."""
    return (*_FIXED, *(f"glue-{t}" for t in GLUE_CLASSES))


def dataset_info(name: object) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; an unknown name raises :class:`APSQError` listing all names."""
    if isinstance(name, str):
        if name in _FIXED:
            return _FIXED[name]
        if name.startswith("glue-") and name[len("glue-"):] in GLUE_CLASSES:
            task = name[len("glue-"):]
            return DatasetInfo(name, TEXT, GLUE_CLASSES[task], regression=task in GLUE_REGRESSION)
    raise APSQError(f"data.name must be one of {', '.join(dataset_names())}; got {name!r}")
