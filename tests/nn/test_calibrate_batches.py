"""apsq.calibrate on the batches a PyTorch user has: a DataLoader of (inputs, labels) pairs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import apsq


def test_a_dataloader_of_input_label_pairs_says_how_to_calibrate():
    """``apsq.calibrate(model, loader)`` with a DataLoader of ``(x, y)`` pairs (the usual PyTorch loader)
    raised the model's own ``TypeError: forward() takes 2 positional arguments but 3 were given``."""
    from torch.utils.data import DataLoader, TensorDataset

    from apsq.errors import APSQError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 36, 3))
    apsq.quantize_(model, apsq.APSQConfig(tile=8, gs=2))
    loader = DataLoader(TensorDataset(torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))), batch_size=4)
    with pytest.raises(APSQError, match=r"batch of 2 items .*forward=lambda model, batch: model\(batch\[0\]\)"):
        apsq.calibrate(model, loader)
    assert not any(bool(b) for n, b in model.named_buffers() if n.endswith("initialized"))  # nothing changed
    apsq.calibrate(model, loader, forward=lambda m, b: m(b[0]))
    assert all(bool(b) for n, b in model.named_buffers() if n.endswith("initialized"))
