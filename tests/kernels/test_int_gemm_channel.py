"""Per-channel PSUM steps ``[n, N]`` in the integer C kernel (apsq.kernels.int_gemm, ``cs = 1``).

``linear_psum`` / ``conv2d_psum`` with 2-D steps on the CPU take the integer kernel (one step per tile
step and output column) instead of the reference loop. Values must be the reference's bit for bit;
with float64 and dyadic output gradients every sum is exact, so the operand and step gradients must
be too (the kernel sums the step gradients in an order that does not depend on the thread count).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apsq.kernels import int_gemm as _cgemm
from apsq.kernels import options
from apsq.nn.config import LayerQuantConfig
from apsq.nn.layers import QuantConv2d, QuantLinear
from apsq.nn.psum_quantizer import set_psum_impl
from apsq.psum.accumulate import psum_accumulate
from apsq.psum.fused import conv2d_psum, linear_psum
from apsq.psum.tiling import conv2d_partials, linear_partials

pytestmark = pytest.mark.skipif(not _cgemm.available(), reason=f"C kernel unavailable: {_cgemm.build_error()}")


@pytest.fixture(params=["native", "avx2", "portable"])
def variant(request):
    """The SIMD micro-kernel this machine compiles, the AVX2 one and the plain-C one (other CPUs)."""
    if request.param == "avx2" and "avx2" not in open("/proc/cpuinfo").read().split():
        pytest.skip("this CPU has no avx2")
    with options.override(isa=request.param):
        yield request.param


@pytest.fixture
def int_calls(monkeypatch):
    """Counts the integer kernel's forward calls (the path under test must be the one taken)."""
    calls = []
    real = _cgemm.forward
    monkeypatch.setattr(_cgemm, "forward", lambda *a, **kw: calls.append(len(a[1])) or real(*a, **kw))
    return calls


def _operands(gen, m, k, n_out, dtype):
    sx = torch.tensor(2.0 ** int(torch.randint(-6, 0, (1,), generator=gen)), dtype=torch.float64)
    sw = torch.exp2(torch.randint(-9, -3, (n_out,), generator=gen).double())
    x = torch.randint(-128, 128, (m, k), generator=gen).double() * sx
    w = torch.randint(-128, 128, (n_out, k), generator=gen).double() * sw.reshape(-1, 1)
    return x.to(dtype), w.to(dtype), sx.to(dtype), sw.to(dtype)


def _channel_steps(parts, bits, shift, gen):
    """``[n, N]`` powers of two near each channel's range, each moved by ``shift`` + a random -2..1."""
    n, n_out = parts.shape[0], parts.shape[-1]
    mag = parts.abs().reshape(n, -1, n_out).amax(1).clamp_min(1e-30).double()
    jitter = torch.randint(-2, 2, (n, n_out), generator=gen).double()
    return torch.exp2(torch.round(torch.log2(mag / 2 ** (bits - 1))) + shift + jitter)


def _run(fn, x, w, scales, g):
    leaves = [t.clone().requires_grad_() for t in (x, w, scales)]
    y = fn(*leaves)
    return (y, *torch.autograd.grad(y, leaves, g))


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_channel_steps_bit_identical_to_reference(variant, int_calls, data):
    """float64, dyadic output gradient: values, operand and step gradients are the reference's bits."""
    m, n_out = data.draw(st.integers(1, 19)), data.draw(st.integers(1, 40))  # edges of the MR x NR blocks
    tile = data.draw(st.sampled_from([1, 3, 8, 16]))
    k = data.draw(st.integers(1, 6 * tile))
    mode = data.draw(st.sampled_from(["psq", "apsq"]))
    gs = data.draw(st.integers(1, 4))
    bits = data.draw(st.sampled_from([3, 6, 8]))
    shift = data.draw(st.sampled_from([0.0, -3.0, 2.0]))  # -3: heavy saturation of tiles and sums
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    x, w, sx, sw = _operands(gen, m, k, n_out, torch.float64)
    parts = linear_partials(x, w, tile)
    scales = _channel_steps(parts, bits, shift, gen)
    g = torch.randint(-64, 64, (m, n_out), generator=gen).double() / 16
    ref = _run(lambda a, b, s: psum_accumulate(linear_partials(a, b, tile), s, mode=mode, gs=gs, bits=bits),
               x, w, scales, g)
    int_calls.clear()
    got = _run(lambda a, b, s: linear_psum(a, b, s, tile, mode=mode, gs=gs, bits=bits, x_step=sx, w_step=sw),
               x, w, scales, g)
    assert int_calls == [scales.numel()]  # the integer kernel, with n x N steps
    for a, b in zip(got, ref):
        assert a.shape == b.shape and torch.equal(a, b)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_channel_steps_float32_values_exact(int_calls, data):
    """float32: values bit for bit; gradients equal up to summation order."""
    m, n_out, tile = data.draw(st.integers(1, 13)), data.draw(st.integers(1, 35)), data.draw(st.sampled_from([4, 8]))
    k = data.draw(st.integers(1, 5 * tile))
    mode, gs = data.draw(st.sampled_from(["psq", "apsq"])), data.draw(st.integers(1, 4))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    x, w, sx, sw = _operands(gen, m, k, n_out, torch.float32)
    parts = linear_partials(x, w, tile)
    scales = _channel_steps(parts, 8, data.draw(st.sampled_from([0.0, -2.0])), gen).float()
    g = torch.randn(m, n_out, generator=gen)
    ref = _run(lambda a, b, s: psum_accumulate(linear_partials(a, b, tile), s, mode=mode, gs=gs), x, w, scales, g)
    int_calls.clear()
    got = _run(lambda a, b, s: linear_psum(a, b, s, tile, mode=mode, gs=gs, x_step=sx, w_step=sw), x, w, scales, g)
    assert int_calls
    assert torch.equal(got[0], ref[0])
    for a, b in zip(got[1:], ref[1:]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max().clamp_min(1.0)))


def test_uniform_channel_steps_equal_per_tensor_steps():
    """``[n, N]`` steps all equal to ``s_i`` give the per-tensor values and, summed over N, its step gradients."""
    gen = torch.Generator().manual_seed(5)
    x, w, sx, sw = _operands(gen, 21, 60, 37, torch.float64)
    parts = linear_partials(x, w, 8)
    n = parts.shape[0]
    s1 = torch.exp2(torch.round(torch.log2(parts.abs().reshape(n, -1).amax(1) / 128)) - 1)
    g = torch.randint(-64, 64, (21, 37), generator=gen).double() / 16
    fn = lambda a, b, s: linear_psum(a, b, s, 8, mode="apsq", gs=2, x_step=sx, w_step=sw)
    per_tensor = _run(fn, x, w, s1, g)
    per_channel = _run(fn, x, w, s1[:, None].expand(n, 37).contiguous(), g)
    for a, b in zip(per_channel[:3], per_tensor[:3]):
        assert torch.equal(a, b)
    assert torch.equal(per_channel[3].sum(1), per_tensor[3])


@pytest.mark.parametrize("mode,gs", [("psq", 1), ("apsq", 2)])
def test_channel_step_gradients_do_not_depend_on_thread_count(mode, gs):
    """float32 random gradients (inexact sums): the same bits at 1 and 2 threads (fixed summation order)."""
    gen = torch.Generator().manual_seed(9)
    x, w, sx, sw = _operands(gen, 300, 96, 70, torch.float32)
    scales = _channel_steps(linear_partials(x, w, 16), 8, -1.0, gen).float()
    g = torch.randn(300, 70, generator=gen)
    fn = lambda a, b, s: linear_psum(a, b, s, 16, mode=mode, gs=gs, x_step=sx, w_step=sw)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(fn, x, w, scales, g)
        torch.set_num_threads(2)
        two = _run(fn, x, w, scales, g)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode,gs", [("psq", 1), ("apsq", 2), ("apsq", 4)])
def test_many_row_chunks_bit_identical(int_calls, mode, gs):
    """More rows than one per-channel gradient job holds (16 row blocks): the job slots add up to the
    reference's bits (float64, dyadic gradient, saturating steps)."""
    gen = torch.Generator().manual_seed(8)
    x, w, sx, sw = _operands(gen, 333, 70, 45, torch.float64)
    scales = _channel_steps(linear_partials(x, w, 8), 8, -2.0, gen)
    g = torch.randint(-64, 64, (333, 45), generator=gen).double() / 16
    ref = _run(lambda a, b, s: psum_accumulate(linear_partials(a, b, 8), s, mode=mode, gs=gs), x, w, scales, g)
    int_calls.clear()
    got = _run(lambda a, b, s: linear_psum(a, b, s, 8, mode=mode, gs=gs, x_step=sx, w_step=sw), x, w, scales, g)
    assert int_calls
    for a, b in zip(got, ref):
        assert torch.equal(a, b)


def test_conv2d_channel_steps_take_the_integer_kernel(int_calls):
    """Grouped conv, steps ``[n, Co, 1, 1]``: each group's ``[n, Co/G]`` slice through the kernel; the
    values and (float64, dyadic) gradients are the reference's bits."""
    gen = torch.Generator().manual_seed(4)
    sx, sw = torch.tensor(2.0**-3, dtype=torch.float64), torch.exp2(torch.randint(-7, -4, (6,), generator=gen).double())
    x = torch.randint(-100, 100, (2, 4, 6, 5), generator=gen).double() * sx
    w = torch.randint(-100, 100, (6, 2, 3, 3), generator=gen).double() * sw.reshape(-1, 1, 1, 1)
    parts = conv2d_partials(x, w, 8, (1, 1), (1, 1), (1, 1), 2)  # [n, B, Co, Ho, Wo]
    n = parts.shape[0]
    mag = parts.abs().transpose(1, 2).reshape(n, 6, -1).amax(2)
    scales = torch.exp2(torch.round(torch.log2(mag / 128)) - 1).reshape(n, 6, 1, 1)
    g = torch.randint(-64, 64, parts.shape[1:], generator=gen).double() / 16
    ref = _run(lambda a, b, s: psum_accumulate(conv2d_partials(a, b, 8, (1, 1), (1, 1), (1, 1), 2), s, mode="apsq",
                                               gs=2), x, w, scales, g)
    int_calls.clear()
    got = _run(lambda a, b, s: conv2d_psum(a, b, s, 8, (1, 1), (1, 1), (1, 1), 2, mode="apsq", gs=2, x_step=sx,
                                           w_step=sw), x, w, scales, g)
    assert int_calls == [n * 3, n * 3]  # two groups of 3 channels
    for a, b in zip(got, ref):
        assert a.shape == b.shape and torch.equal(a, b)


def test_other_step_layouts_keep_the_reference(int_calls):
    """``[n, N, 1]`` steps broadcast over rows, not columns: never read as per-column steps."""
    gen = torch.Generator().manual_seed(6)
    x, w, sx, sw = _operands(gen, 9, 24, 9, torch.float64)  # M == N: the layouts have equal sizes
    parts = linear_partials(x, w, 8)
    scales = torch.exp2(torch.randint(-2, 3, (parts.shape[0], 9, 1), generator=gen).double()) * 2.0**-6
    ref = psum_accumulate(parts, scales, mode="apsq", gs=2)
    int_calls.clear()
    got = linear_psum(x, w, scales, 8, mode="apsq", gs=2, x_step=sx, w_step=sw)
    assert not int_calls and torch.equal(got, ref)


@pytest.mark.parametrize("mode,gs", [("psq", 1), ("apsq", 2), ("apsq", 3)])
def test_quant_layers_channel_steps_match_reference(int_calls, mode, gs):
    """QuantLinear and grouped QuantConv2d with ``psum_granularity='channel'`` in training: fused (the
    integer kernel) == ``impl='reference'``, values bit for bit, gradients to float64 summation order."""
    torch.manual_seed(3)
    cfg = LayerQuantConfig(tile=8, mode=mode, gs=gs, psum_granularity="channel")
    cases = [(QuantLinear(45, 20, qcfg=cfg), torch.randn(3, 6, 45)),
             (QuantConv2d(6, 8, 3, padding=1, groups=2, qcfg=cfg), torch.randn(2, 6, 7, 7))]
    for layer, x in cases:
        layer.double().train()
        x = x.double()
        layer(x)  # initialises the steps
        g = torch.randn_like(layer(x))
        outs = {}
        for impl in ("reference", "fused"):
            set_psum_impl(layer, impl)
            int_calls.clear()
            xi = x.clone().requires_grad_()
            y = layer(xi)
            params = [p for p in layer.parameters() if p.requires_grad]
            outs[impl] = (y, *torch.autograd.grad(y, [xi, *params], g))
            assert bool(int_calls) == (impl == "fused"), type(layer).__name__
        assert torch.equal(outs["fused"][0], outs["reference"][0])
        for a, b in zip(outs["fused"][1:], outs["reference"][1:]):
            assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode,gs", [("psq", 1), ("apsq", 2)])
def test_batched_matmul_channel_steps_bit_identical(int_calls, mode, gs):
    """Attention AV ``[B, H, S, S] @ [B, H, S, d]`` with ``[n, d]`` steps shared by the heads: every product
    through the kernel, the reference's bits (float64, dyadic gradient, saturating steps)."""
    from apsq.psum.fused import matmul_psum
    from apsq.psum.tiling import matmul_partials

    gen = torch.Generator().manual_seed(13)
    sa, sb = torch.tensor(2.0**-3, dtype=torch.float64), torch.tensor(2.0**-5, dtype=torch.float64)
    a = torch.randint(-128, 128, (2, 3, 9, 40), generator=gen).double() * sa
    b = torch.randint(-128, 128, (2, 3, 40, 11), generator=gen).double() * sb
    parts = matmul_partials(a, b, 8)
    scales = _channel_steps(parts, 8, -2.0, gen)  # [n, 11]
    g = torch.randint(-64, 64, (2, 3, 9, 11), generator=gen).double() / 16
    ref = _run(lambda x, y, s: psum_accumulate(matmul_partials(x, y, 8), s, mode=mode, gs=gs), a, b, scales, g)
    int_calls.clear()
    got = _run(lambda x, y, s: matmul_psum(x, y, s, 8, mode=mode, gs=gs, a_step=sa, b_step=sb), a, b, scales, g)
    assert int_calls == [scales.numel()]
    for x, y in zip(got, ref):
        assert x.shape == y.shape and torch.equal(x, y)
