"""Issue 25 item 1: a dtype cast never moves a learned exponent.

Reported kind: torchao keeps its fake quantizers' scales in float32 while the model casts to bf16;
apsq's step parameters followed the module's dtype, so ``model.to(torch.bfloat16)`` after QAT rounded the
continuous ``log2`` step and ``floor(x + 1/2)`` landed on the neighbouring exponent (5 of 256
per-channel weight exponents of one layer after 30 QAT steps). Every quantizer (weight / activation LSQ,
PSUM per tensor and per channel, attention matmuls) keeps its steps in float32 through any cast.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import apsq
from apsq.device import module_dtype
from apsq.nn.psum_quantizer import PSUMQuantizer
from apsq.quant.lsq import LSQQuantizer
from apsq.train.config import ScheduleConfig
from apsq.train.optim import is_step_size, make_optimizer

CASTS = {
    "bf16": lambda m: m.to(torch.bfloat16),
    "fp16": lambda m: m.half(),
    "f64": lambda m: m.double(),
    "bf16-method": lambda m: m.bfloat16(),
    "to(dtype=)": lambda m: m.to(dtype=torch.float16),
}


def _steps(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t for n, t in list(model.named_parameters()) + list(model.named_buffers()) if is_step_size(n)}


def _exponents(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: torch.floor(t.detach() + 0.5).long() for n, t in _steps(model).items()}


def _trained_mlp() -> tuple[nn.Module, torch.Tensor]:
    """256 -> 256 -> 10, per-channel weight steps (and PSUM steps on the last layer), 20 QAT steps of the library's optimizer rule."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    apsq.quantize_(model, apsq.APSQConfig(mode="apsq", gs=2, tile=32, weight_per_channel=True,
                                          overrides={"2": {"psum_granularity": "channel"}}))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 256, generator=g), torch.randint(0, 10, (64,), generator=g)
    apsq.calibrate(model, [x])
    opt = make_optimizer(model, ScheduleConfig(lr=1e-3, scale_lr=0.2, steps=20))
    for _ in range(20):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x


@pytest.fixture(scope="module")
def trained():
    return _trained_mlp()


@pytest.mark.parametrize("cast", list(CASTS))
def test_cast_after_qat_keeps_every_exponent(trained, cast):
    model, _ = trained
    before = {n: t.detach().clone() for n, t in _steps(model).items()}
    low = CASTS[cast](copy.deepcopy(model))
    assert module_dtype(low) != torch.float32  # the model did change dtype
    for n, t in _steps(low).items():
        assert t.dtype == torch.float32, n
        assert torch.equal(t, before[n]), n  # the exact float32 values, not just the exponents
    back = low.float()
    assert all(torch.equal(a, b) for a, b in zip(_exponents(back).values(), _exponents(model).values()))


def test_trained_steps_sit_near_the_rounding_boundary(trained):
    """The case the report saw: some trained log2 steps are closer to a .5 boundary than bf16 resolves,
    so a bf16 copy of them rounds to the neighbouring exponent -- the cast above must not do that."""
    model, _ = trained
    moved = 0
    for t in _steps(model).values():
        e32 = torch.floor(t.detach() + 0.5)
        ebf = torch.floor(t.detach().bfloat16().float() + 0.5)
        moved += int((e32 != ebf).sum())
    assert moved > 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-20, 20, allow_nan=False, width=32), min_size=1, max_size=8),
       st.sampled_from([torch.bfloat16, torch.float16, torch.float64]))
def test_any_value_survives_any_cast(values, dtype):
    q = LSQQuantizer(8, channel_axis=0, num_channels=len(values))
    p = PSUMQuantizer(len(values), "apsq", 2, 8, granularity="channel", channels=3)
    with torch.no_grad():
        q.log2_scale.copy_(torch.tensor(values))
        p.log2_scales.copy_(torch.tensor(values)[:, None].expand(-1, 3))
    e_q, e_p = q.exponent(), p.exponents(len(values))
    for m in (q, p):
        m.to(dtype)
        m.to(torch.float32)
    assert torch.equal(q.exponent(), e_q) and torch.equal(p.exponents(len(values)), e_p)
    assert q.log2_scale.dtype == torch.float32 and p.log2_scales.dtype == torch.float32


def test_mode_none_buffer_and_attention_matmuls_stay_float32():
    from apsq.nn.layers import QuantMatmul
    from apsq.nn.config import LayerQuantConfig

    m = QuantMatmul(64, LayerQuantConfig(tile=16))
    lin = nn.Sequential(nn.Linear(8, 8))
    apsq.quantize_(lin, apsq.APSQConfig(mode="none"))
    for mod in (m, lin):
        mod.to(torch.bfloat16)
        assert all(t.dtype == torch.float32 for t in _steps(mod).values())
    assert isinstance(lin[0].psum.log2_scales, torch.Tensor) and not isinstance(lin[0].psum.log2_scales, nn.Parameter)


def test_bf16_qat_still_trains_and_grads_are_float32(trained):
    """After the cast a bf16 model trains with the same optimizer rule: step gradients are float32, the
    loss falls, and exponents can still move."""
    model, x = trained
    low = copy.deepcopy(model).to(torch.bfloat16)
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(1))
    opt = make_optimizer(low, ScheduleConfig(lr=1e-3, scale_lr=0.5, steps=4))
    start = {n: t.detach().clone() for n, t in _steps(low).items()}
    losses = []
    for _ in range(4):
        opt.zero_grad()
        out = low(x.bfloat16())
        assert out.dtype == torch.bfloat16
        loss = nn.functional.cross_entropy(out.float(), y)
        loss.backward()
        for n, t in _steps(low).items():
            if isinstance(t, nn.Parameter) and t.grad is not None:
                assert t.grad.dtype == torch.float32, n
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert any(not torch.equal(t, start[n]) for n, t in _steps(low).items())
    assert all(t.dtype == torch.float32 for t in _steps(low).values())
