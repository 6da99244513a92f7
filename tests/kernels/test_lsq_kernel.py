"""The one-pass LSQ kernel (apsq.kernels.lsq) equals the autograd reference (quant.ops.fake_quantize)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from apsq.kernels import lsq as _clsq
from apsq.kernels import options
from apsq.quant.lsq import LSQQuantizer
from apsq.quant.ops import fake_quantize

pytestmark = pytest.mark.skipif(not _clsq.available(), reason="LSQ kernel unavailable (no C compiler)")


def _grads(fn, x, step, g):
    xl, sl = x.clone().requires_grad_(), step.clone().requires_grad_()
    y = fn(xl, sl)
    return (y, *torch.autograd.grad(y, (xl, sl), g))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_kernel_equals_fake_quantize(data):
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    shape = tuple(data.draw(st.lists(st.integers(1, 9), min_size=1, max_size=3)))
    shape = (shape[0], *shape[1:], data.draw(st.sampled_from([1, 7, 9000])))  # 9000: several chunks
    per_channel = data.draw(st.booleans())
    bits = data.draw(st.sampled_from([2, 4, 8, 16]))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * data.draw(st.sampled_from([0.1, 3.0, 1e3]))
         ).to(dtype)
    exps = torch.randint(-12, 3, (shape[0] if per_channel else 1,), generator=gen).to(dtype)
    step = torch.exp2(exps).reshape((-1,) + (1,) * (len(shape) - 1)) if per_channel else torch.exp2(exps[0])
    axis = 0 if per_channel else None
    assert _clsq.applicable(x, step, axis)
    g = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    ref = _grads(lambda a, s: fake_quantize(a, s, bits), x, step, g)
    got = _grads(lambda a, s: _clsq.lsq_fake_quantize(a, s, bits, axis), x, step, g)
    assert torch.equal(got[0], ref[0])
    assert torch.equal(got[1], ref[1])  # g inside the range, 0 where clamped
    # LSQ step gradient: sums of g * (round(u) - u | qn | qp); the reference sums in the tensor's dtype
    bound = g.abs().double().sum() * 2 ** (bits - 1)
    assert float((got[2].double() - ref[2].double()).abs().max()) <= (1e-5 if dtype == torch.float32 else 1e-12) * float(bound) + 1e-9
    assert got[2].shape == step.shape


def test_quantizer_uses_kernel_and_matches_reference(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(5, 33) * 4
    for q in (LSQQuantizer(6), LSQQuantizer(5, channel_axis=0, num_channels=5)):
        q.init_from(x)
        q.log2_scale.data -= 1.3  # some codes clamp
        outs = {}
        for mode in ("auto", "off"):
            monkeypatch.setenv("APSQ_KERNELS", "auto" if mode == "auto" else "reference")
            q.zero_grad()
            xl = x.clone().requires_grad_()
            y = q(xl)
            y.backward(torch.ones_like(y))
            outs[mode] = (y, xl.grad, q.log2_scale.grad.clone(), y.grad_fn.name())
        assert "LSQFakeQuant" in outs["auto"][3] and "LSQFakeQuant" not in outs["off"][3]
        assert torch.equal(outs["auto"][0], outs["off"][0]) and torch.equal(outs["auto"][1], outs["off"][1])
        assert torch.allclose(outs["auto"][2], outs["off"][2], rtol=1e-5, atol=1e-6)


def test_not_applicable_falls_back():
    x = torch.randn(4, 6)
    assert not _clsq.applicable(x, torch.tensor(3.0, dtype=torch.float64), None)  # not a power of two
    assert not _clsq.applicable(x.double(), torch.tensor(3.0, dtype=torch.float64), None)
    assert not _clsq.applicable(x, torch.ones(6), 1)  # channels on another axis
    assert not _clsq.applicable(x, torch.ones(2), None)
    assert not _clsq.applicable(x.half(), torch.tensor(1.0), None)
    assert not _clsq.applicable(x, torch.tensor(2.0**-140), None)  # 1/s not representable in float32
    q = LSQQuantizer(8, channel_axis=1, num_channels=6)
    q.init_from(x)
    y = q(x)  # the autograd reference
    assert torch.equal(y, fake_quantize(x, q.scale().reshape(1, 6), 8))


def test_bad_switch_is_named(monkeypatch):
    from apsq.errors import APSQError

    monkeypatch.setenv("APSQ_KERNELS", "fast")
    with pytest.raises(APSQError, match="APSQ_KERNELS.*reference"):
        _clsq.applicable(torch.ones(2), torch.tensor(1.0), None)


@pytest.mark.parametrize("backend", ["torch", "reference", "triton"])
def test_only_auto_and_c_use_the_kernel(monkeypatch, backend):
    x, step = torch.randn(4, 6), torch.tensor(0.25)
    assert _clsq.applicable(x, step, None)
    monkeypatch.setenv("APSQ_KERNELS", backend)
    assert not _clsq.applicable(x, step, None)
    monkeypatch.setenv("APSQ_KERNELS", "c")
    assert _clsq.applicable(x, step, None)
    with options.override(fused_lsq=False):  # the ablation switch of the benchmarks
        assert not _clsq.applicable(x, step, None)
