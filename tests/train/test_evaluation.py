"""Evaluation runs without autograd and restores the model's mode (apsq.train.evaluation).

`evaluate` (accuracy: MiniLM / BERT classification during `apsq train`, the demo, A2Q) ran with autograd
on: every quantized layer saved its operands for a backward that never came. Measured before the fix on
all-MiniLM-L6-v2 quantized with APSQ gs = 2, 64 rows of 64 tokens at batch 32, one thread: peak RSS
1,181 MB against 647 MB without autograd, CPU time 2.13 s against 2.00 s.
"""

from __future__ import annotations

import torch
from torch import nn

from apsq.train.evaluation import evaluate, evaluate_glue, evaluate_segmentation


class _Rows:
    """``n`` rows of 4 features; labels ``i % classes`` (segmentation: a 2 x 2 map of them)."""

    def __init__(self, n: int, classes: int = 2, seg: bool = False, regression: bool = False) -> None:
        self.n, self.classes, self.seg, self.regression = n, classes, seg, regression

    def __len__(self) -> int:
        return self.n

    def batch(self, rows: list[int]) -> dict[str, torch.Tensor]:
        x = torch.tensor([[float(i), 1.0, -1.0, 0.5] for i in rows])
        y = torch.tensor([i % self.classes for i in rows])
        if self.seg:
            y = y.view(-1, 1, 1).expand(-1, 2, 2).contiguous()
        return {"x": x, "labels": y}


class _Probe(nn.Module):
    """Records whether autograd was on in each forward; ``out`` classes (``seg``: a 2 x 2 logit map)."""

    def __init__(self, out: int = 2, seg: bool = False) -> None:
        super().__init__()
        self.lin, self.seg = nn.Linear(4, out), seg
        self.grad_seen: list[bool] = []
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grad_seen.append(torch.is_grad_enabled())
        self.modes.append(self.training)
        y = self.lin(x)
        return y[:, :, None, None].expand(-1, -1, 2, 2) if self.seg else y


def test_evaluate_runs_without_autograd_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = _Probe()
    model.train()
    acc = evaluate(model, _Rows(10), batch_size=4, progress=False)
    assert 0.0 <= acc <= 1.0
    assert model.grad_seen == [False, False, False]  # fails when autograd records the forward
    assert model.modes == [False, False, False] and model.training  # eval inside, mode restored
    assert torch.is_grad_enabled()  # the caller's autograd state is untouched


def test_glue_and_segmentation_evaluation_run_without_autograd() -> None:
    torch.manual_seed(0)
    model = _Probe()
    evaluate_glue(model, _Rows(6), "sst2", batch_size=4, progress=False)
    seg = _Probe(out=3, seg=True)
    evaluate_segmentation(seg, _Rows(6, classes=3, seg=True), 3, batch_size=4, progress=False)
    assert model.grad_seen and not any(model.grad_seen)
    assert seg.grad_seen and not any(seg.grad_seen)
