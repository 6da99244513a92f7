"""Fixtures for the training tests: a small stand-in of the Rotten Tomatoes file and a tiny config."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from standin_words import WORDS_NEG, WORDS_POS


def write_standin(path: Path, n: int = 240, seed: int = 0) -> Path:
    """A file in the ground-truth format (id, rating, sentence) with an obvious word-level signal."""
    rng = random.Random(seed)
    lines = []
    for i in range(1, n + 1):
        rating = rng.choice([-3.2, -1.5, -0.4, 0.0, 0.6, 1.8, 2.9])
        words = WORDS_POS if rating > 0 else WORDS_NEG
        text = "the movie is " + " and ".join(rng.sample(words, 2))
        lines.append(f"{i}\t{rating}\t{text}")
    path.write_text("\r\n".join(lines) + "\r\n")
    return path


@pytest.fixture(scope="session")
def standin(tmp_path_factory) -> Path:
    return write_standin(tmp_path_factory.mktemp("rt") / "rt_standin.txt")


def tiny_config(standin: Path, **over) -> dict:
    cfg = {
        "seed": 0,
        "model": {"name": "bert-tiny", "max_len": 16, "hidden_size": 32, "num_layers": 2},
        "data": {"name": "rt-sentences", "path": str(standin)},
        "finetune": {"steps": 4, "batch_size": 8, "lr": 1e-3},
        "apsq": {"mode": "apsq", "gs": 2, "tile": 8, "exclude": ["classifier"]},
        "qat": {"steps": 6, "batch_size": 8, "lr": 1e-4, "calib_batches": 2},
        "distill": {"temperature": 2.0, "ce_weight": 0.5, "hidden_weight": 0.1},
        "save_every": 2,
        "threads": 1,
    }
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg


@pytest.fixture(scope="session")
def make_config():
    """``make_config(standin, **overrides)`` -> a tiny training config mapping."""
    return tiny_config
