"""``apsq.deploy.export(model, example)`` of a model that was quantized but never calibrated: the docs
promise an APSQError naming the layer ("export never calibrates", a pure function of the trained state),
but the traced forward on ``example`` ran first and lazily initialised every step from that one batch,
so the export succeeded and the user's model was changed (the new-user run of "bring your own model")."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import apsq
from apsq import deploy
from apsq.errors import APSQError


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 64, 10))


@pytest.mark.parametrize("with_example", [True, False])
def test_an_uncalibrated_model_is_refused_and_left_unchanged(with_example):
    m = _net()
    apsq.quantize_(m, apsq.APSQConfig(tile=8, gs=2))
    m.eval()
    before = copy.deepcopy(m.state_dict())
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(APSQError, match=r"layer 0: its quantization steps are not calibrated.*never calibrates"):
        deploy.export(m, x if with_example else None)
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_calibrated_model_still_exports():
    m = _net()
    apsq.quantize_(m, apsq.APSQConfig(tile=8, gs=2))
    x = torch.rand(4, 1, 8, 8)
    apsq.calibrate(m, [x])
    m.eval()
    prog = deploy.export(m, x)
    assert [ly.name for ly in prog.manifest.layers] == ["0", "4"]
