"""scikit-learn's handwritten digits (1,797 8x8 images, 10 classes) with the fixed hash split."""

from __future__ import annotations

import torch

from apsq.data.splits import check_split, split_of
from apsq.errors import require


def load_digits_split(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """``(x [N, 1, 8, 8] float32 in [0, 1], y [N] int64)`` of one split (ids = row numbers)."""
    datasets = require("sklearn.datasets", extra="demo", what="the digits set (scikit-learn's load_digits)")

    check_split(split)
    d = datasets.load_digits()
    keep = [i for i in range(len(d.target)) if split_of("digits", str(i)) == split]
    x = torch.tensor(d.images[keep], dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target[keep], dtype=torch.long)
    return x, y
