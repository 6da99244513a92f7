"""The fixed train / validation / test split used by every offline dataset.

An example goes to a split by a hash of ``"<dataset>:<example id>"`` (SHA-256, first 8 hex digits,
mod 10): buckets 0-7 -> ``train`` (80 %), 8 -> ``validation`` (10 %), 9 -> ``test`` (10 %). The
assignment depends only on the dataset name and the example's own id, so it is the same on every
machine, Python and library version, and adding or removing an example moves no other.
"""

from __future__ import annotations

import hashlib

from apsq.errors import check_choice

SPLITS = ("train", "validation", "test")


def split_of(dataset: str, example_id: str) -> str:
    """The split (``train`` / ``validation`` / ``test``) of one example."""
    bucket = int(hashlib.sha256(f"{dataset}:{example_id}".encode()).hexdigest()[:8], 16) % 10
    return "train" if bucket < 8 else ("validation" if bucket == 8 else "test")


def check_split(split: str) -> str:
    return check_choice("split", split, SPLITS)
