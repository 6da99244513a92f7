"""``apsq eval llm-mc``'s study: a local lm-eval multiple-choice task (sentence completion, 4 choices) built
from the held-out movie-review sentences, scored per PSUM variant (:func:`apsq.eval.lm_eval_adapter.mc_sweep`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["movie_mc_study"]


def movie_mc_study(model: str | Path, task_dir: str | Path, gs_values: Sequence[int], *, items: int = 400,
                   seed: int = 0, ending_words: int = 3, tile: int = 32, calib: int = 16,
                   batch_size: int = 32) -> dict[str, Any]:
    """Write ``items`` sentence-completion items (seeded; ``ending_words`` words per ending, 0: the second
    half) as an lm-eval task in ``task_dir``, calibrate each variant on ``calib`` training sentences and
    return the accuracies (keys ``fp32``, ``w8a8``, ``psq``, ``apsq`` per gs) with the settings and one
    example item. Bad settings or a missing corpus raise :class:`apsq.errors.APSQError`."""
    from apsq.eval.llm import load_corpus
    from apsq.eval.lm_eval_adapter import (
        MC_TASK,
        completion_items,
        mc_sweep,
        write_mc_task,
    )

    corpus = load_corpus(names=("movies",))
    mc = completion_items(corpus["test"], items, seed, ending_words=ending_words or None)
    calibration = random.Random(seed).sample(corpus["train"], calib)
    write_mc_task(mc, task_dir)
    res = mc_sweep(str(model), task_dir, list(gs_values), tile=tile, calibration=calibration, batch_size=batch_size)
    res.update(task=MC_TASK, items=len(mc), choices=4, item_seed=seed, ending_words=ending_words or "half",
               source="movies test split", calibration_sentences=calib, tile=tile, model=str(model), example=mc[0])
    return res
