"""GLUE's official metric of each task (Wang et al. 2019, the benchmark's leaderboard) from predictions.

* CoLA: Matthews correlation;
* MRPC, QQP: F1 of the positive class and accuracy;
* STS-B: Pearson and Spearman correlation of the predicted similarity (regression, labels 0..5);
* SST-2, MNLI (matched), QNLI, RTE, WNLI: accuracy.

A task's *score* is the mean of its metrics (how the GLUE leaderboard averages MRPC, QQP and STS-B);
the GLUE average of a model is the mean of its task scores. Computed with scikit-learn and SciPy on
CPU float64 arrays. Metric values are fractions (correlations in [-1, 1]); reports show them x 100.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from apsq.errors import APSQError, check_choice

__all__ = ["GLUE_METRICS", "REGRESSION_TASKS", "glue_average", "glue_metrics", "task_score"]

GLUE_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews",),
    "sst2": ("accuracy",),
    "mrpc": ("f1", "accuracy"),
    "qqp": ("f1", "accuracy"),
    "stsb": ("pearson", "spearman"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}
"""GLUE task -> its official metrics, in the leaderboard's order."""

REGRESSION_TASKS = frozenset({"stsb"})


def glue_metrics(task: str, predictions: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray
                 ) -> dict[str, float]:
    """``{metric: value, ..., "score": mean}`` of ``task`` (a key of :data:`GLUE_METRICS`).

    ``predictions``: predicted class ids (classification) or predicted similarities (STS-B), one per
    example, in the order of ``labels``.

    Raises:
        APSQError: unknown task, different lengths, no examples.
    """
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    check_choice("task", task, GLUE_METRICS)
    p, y = np.asarray(predictions, dtype=np.float64).ravel(), np.asarray(labels, dtype=np.float64).ravel()
    if p.shape != y.shape or p.size == 0:
        raise APSQError(f"GLUE {task}: need as many predictions as labels (>= 1); got {p.size} and {y.size}")
    out: dict[str, float] = {}
    for m in GLUE_METRICS[task]:
        if m == "accuracy":
            out[m] = float(accuracy_score(y.astype(np.int64), p.astype(np.int64)))
        elif m == "f1":
            out[m] = float(f1_score(y.astype(np.int64), p.astype(np.int64), pos_label=1, zero_division=0))
        elif m == "matthews":
            out[m] = float(matthews_corrcoef(y.astype(np.int64), p.astype(np.int64)))
        else:  # correlations; a constant prediction has none: 0 (how an untrained model scores)
            if np.ptp(p) == 0 or np.ptp(y) == 0:
                out[m] = 0.0
            else:
                out[m] = float((pearsonr if m == "pearson" else spearmanr)(p, y)[0])
    out["score"] = task_score(task, out)
    return out


def task_score(task: str, metrics: Mapping[str, float]) -> float:
    """The mean of ``task``'s official metrics in ``metrics``."""
    check_choice("task", task, GLUE_METRICS)
    return float(np.mean([metrics[m] for m in GLUE_METRICS[task]]))


def glue_average(scores: Mapping[str, float]) -> float:
    """The GLUE average: the mean of the task scores ``{task: score}`` given (a subset states which)."""
    if not scores:
        raise APSQError("glue_average: no task scores")
    return float(np.mean(list(scores.values())))
