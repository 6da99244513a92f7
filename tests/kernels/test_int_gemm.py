"""The fused integer kernel (apsq.kernels.int_gemm): tile products from operand codes inside the kernel.

When a layer passes its operand steps, ``linear_psum`` computes each tile's partial sum from int16
codes in registers and quantizes it at once. The values must be the reference's bit for bit (the
tile sums are exact integers times a power of two), the gradients equal up to summation order, and
the path must refuse operands for which it would not be exact.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apsq.errors import APSQError
from apsq.nn.config import LayerQuantConfig
from apsq.nn.layers import QuantConv2d, QuantLinear, QuantMatmul
from apsq.nn.psum_quantizer import set_psum_impl
from apsq.kernels import int_gemm as _cgemm
from apsq.kernels import options
from apsq.psum.accumulate import psum_accumulate
from apsq.psum.fused import Plan, conv2d_psum, linear_psum, matmul_psum
from apsq.psum.tiling import conv2d_partials, linear_partials, matmul_partials

pytestmark = pytest.mark.skipif(not _cgemm.available(), reason=f"C kernel unavailable: {_cgemm.build_error()}")


def _cpu_has(flag: str) -> bool:
    try:
        return flag in open("/proc/cpuinfo").read().split()
    except OSError:
        return False


@pytest.fixture(params=["native", "avx512bw", "avx2", "portable"])
def variant(request):
    """The micro-kernel this machine compiles, AVX-512 BW without VNNI, AVX2 and plain C (other CPUs)."""
    if request.param in ("avx512bw", "avx2") and not _cpu_has(request.param):
        pytest.skip(f"this CPU has no {request.param}")
    with options.override(isa=request.param):
        expect = {"avx512bw": "avx512-bw", "avx2": "avx2", "portable": "portable"}.get(request.param)
        assert expect is None or _cgemm.isa() == expect
        yield request.param


def _operands(gen, m, k, n_out, x_bits, w_bits, per_row, dtype):
    sx = torch.tensor(2.0 ** int(torch.randint(-6, 0, (1,), generator=gen)))
    sw = torch.exp2(torch.randint(-9, -3, (n_out if per_row else 1,), generator=gen).double())
    hx, hw = 2 ** (x_bits - 1), 2 ** (w_bits - 1)
    x = torch.randint(-hx, hx, (m, k), generator=gen).double() * sx
    w = torch.randint(-hw, hw, (n_out, k), generator=gen).double() * sw.reshape(-1, 1)
    return x.to(dtype), w.to(dtype), sx.to(dtype), sw.to(dtype)


def _run(fn, x, w, scales, g):
    leaves = [t.clone().requires_grad_() for t in (x, w, scales)]
    y = fn(*leaves)
    return (y, *torch.autograd.grad(y, leaves, g))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_int_path_equals_reference(variant, dtype, data):
    m, n_out = data.draw(st.integers(1, 19)), data.draw(st.integers(1, 40))  # edges of the MR x NR blocks
    tile = data.draw(st.sampled_from([1, 3, 8, 16]))  # odd tiles are zero-padded to an even depth
    k = data.draw(st.integers(1, 6 * tile))
    mode = data.draw(st.sampled_from(["psq", "apsq"]))
    gs = data.draw(st.integers(1, 4))
    bits = data.draw(st.sampled_from([3, 6, 8]))
    per_row = data.draw(st.booleans())
    shift = data.draw(st.sampled_from([0.0, -3.0, 2.0]))  # -3: heavy saturation of tiles and sums
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    x, w, sx, sw = _operands(gen, m, k, n_out, 8, 8, per_row, dtype)
    assert _cgemm.int_operands(x, w, tile, sx, sw) is not None  # the integer path is the one tested
    parts = linear_partials(x, w, tile)
    n = parts.shape[0]
    mag = parts.abs().reshape(n, -1).amax(1).clamp_min(1e-30).double()
    scales = torch.exp2(torch.round(torch.log2(mag / 2 ** (bits - 1))) + shift).to(dtype)
    g = torch.randn(m, n_out, generator=gen, dtype=torch.float64).to(dtype)
    ref = _run(lambda a, b, s: psum_accumulate(linear_partials(a, b, tile), s, mode=mode, gs=gs, bits=bits),
               x, w, scales, g)
    got = _run(lambda a, b, s: linear_psum(a, b, s, tile, mode=mode, gs=gs, bits=bits, x_step=sx, w_step=sw),
               x, w, scales, g)
    assert torch.equal(got[0], ref[0])
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for a, b in zip(got[1:3], ref[1:3]):  # operand gradients: the same terms, summed in another order
        assert torch.allclose(a, b, rtol=tol, atol=tol * float(b.abs().max().clamp_min(1.0)))
    bound = float(g.abs().sum()) * 2 ** (bits - 1) * n  # step gradients: sums over all outputs
    assert torch.all((got[3] - ref[3]).abs() <= (1e-13 if dtype == torch.float64 else 1e-6) * bound + 1e-12)


def test_the_layers_take_the_integer_path(monkeypatch):
    calls = []
    real = _cgemm.forward
    monkeypatch.setattr(_cgemm, "forward", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    torch.manual_seed(0)
    cfg = LayerQuantConfig(tile=16, mode="apsq", gs=2)
    lin = QuantLinear(70, 24, qcfg=cfg)
    conv = QuantConv2d(4, 6, 3, padding=1, groups=2, qcfg=cfg)
    mm = QuantMatmul(40, cfg)
    cases = [(lin, (torch.randn(5, 70),)), (conv, (torch.randn(2, 4, 5, 5),)),
             (mm, (torch.randn(2, 3, 5, 40), torch.randn(2, 3, 40, 9)))]
    for layer, inputs in cases:
        layer(*inputs)  # initialises the steps (reference path)
        calls.clear()
        layer(*inputs)
        assert calls, type(layer).__name__


@pytest.mark.parametrize("mode,gs", [("psq", 1), ("apsq", 1), ("apsq", 3)])
def test_quant_layers_integer_path_matches_reference(variant, mode, gs):
    """Linear and grouped Conv2d in training, calibrated steps: fused == reference (float64, so the
    gradients, whose terms the two paths sum in different orders, agree to 1e-9; the step parameters
    stay float32 through ``.double()`` (issue 25 item 1), so their gradients agree to float32 rounding)."""
    torch.manual_seed(3)
    cfg = LayerQuantConfig(tile=8, mode=mode, gs=gs)
    cases = [(QuantLinear(45, 20, qcfg=cfg), torch.randn(3, 6, 45)),
             (QuantConv2d(6, 8, 3, padding=1, groups=2, qcfg=cfg), torch.randn(2, 6, 7, 7))]
    for layer, x in cases:
        layer.double().train()
        x = x.double()
        layer(x)
        g = torch.randn_like(layer(x))
        outs = {}
        for impl in ("reference", "fused"):
            set_psum_impl(layer, impl)
            xi = x.clone().requires_grad_()
            y = layer(xi)
            params = [p for p in layer.parameters() if p.requires_grad]
            outs[impl] = (y, *torch.autograd.grad(y, [xi, *params], g))
        assert torch.equal(outs["fused"][0], outs["reference"][0])
        for a, b in zip(outs["fused"][1:], outs["reference"][1:]):
            tol = 1e-9 if a.dtype == torch.float64 else 1e-6
            assert torch.allclose(a, b, rtol=tol, atol=tol * 1e-3)


def test_conv2d_psum_with_steps_equals_partials_path():
    gen = torch.Generator().manual_seed(7)
    x = torch.randint(-50, 50, (2, 4, 6, 5), generator=gen).double() * 2.0**-3
    sw = torch.exp2(torch.tensor([-4.0, -5.0, -4.0, -6.0, -5.0, -4.0], dtype=torch.float64))
    w = torch.randint(-100, 100, (6, 2, 3, 3), generator=gen).double() * sw.reshape(-1, 1, 1, 1)
    scales = torch.exp2(torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64))
    args = (8, (1, 2), (1, 1), (1, 1), 2)
    ref = conv2d_partials(x, w, *args)
    y_ref = psum_accumulate(ref, scales, mode="apsq", gs=2, bits=6)
    assert _cgemm.int_operands(x[0, :2].reshape(2, -1).t().contiguous(), w[:3].reshape(3, -1)[:, :2], 8,
                               torch.tensor(2.0**-3), sw[:3]) is not None
    y = conv2d_psum(x, w, scales, *args, mode="apsq", gs=2, bits=6, x_step=torch.tensor(2.0**-3), w_step=sw)
    assert torch.equal(y, y_ref)


def test_operands_that_would_not_be_exact_are_refused():
    gen = torch.Generator().manual_seed(1)
    x, w, sx, sw = _operands(gen, 4, 40, 5, 8, 8, True, torch.float32)
    assert _cgemm.int_operands(x, w, 8, sx, sw) is not None
    assert _cgemm.int_operands(x + 1e-3, w, 8, sx, sw) is None  # not on the step's grid
    assert _cgemm.int_operands(x, w, 8, sx * 3, sw) is None  # not a power of two
    assert _cgemm.int_operands(x, w, 8, sx.repeat(2), sw) is None  # activation step must be one value
    assert _cgemm.int_operands(x, w, 8, sx, sw[:2]) is None  # one weight step per output row, or one
    assert _cgemm.int_operands(x, w, 8, sx / 2**12, sw) is None  # codes beyond 15 bits
    # 15-bit codes (step / 2^7): max|cx| max|cw| tile = 2^14 * 2^7 * 16 > 2^24, float32 sums inexact
    assert float((x / (sx / 2**7)).abs().max()) > 2**13
    assert _cgemm.int_operands(x, w, 16, sx / 2**7, sw) is None
    assert _cgemm.int_operands(x.double(), w.double(), 16, sx.double() / 2**7, sw.double()) is not None
    nan = x.clone()
    nan[1, 3] = float("nan")
    assert _cgemm.int_operands(nan, w, 8, sx, sw) is None
    # a refused operand still gives the reference's values (batched-matmul path)
    s = torch.ones(5)
    y = linear_psum(x + 1e-3, w, s, 8, mode="apsq", gs=2, x_step=sx, w_step=sw)
    assert torch.equal(y, psum_accumulate(linear_partials(x + 1e-3, w, 8), s, mode="apsq", gs=2))


def test_codes_layout_pads_each_tile():
    x = torch.arange(1.0, 8.0).reshape(1, 7) * 0.5
    ops = _cgemm.int_operands(x, torch.ones(1, 7), 3, torch.tensor(0.5), torch.tensor(1.0))
    assert ops.te == 4
    assert ops.xa.tolist() == [[1, 2, 3, 0, 4, 5, 6, 0, 7, 0, 0, 0]]
    assert ops.wb.tolist() == [[1, 1, 1, 0, 1, 1, 1, 0, 1, 0, 0, 0]]


def test_correction_does_not_depend_on_thread_count_or_chunking(monkeypatch):
    """The backward walks the rows in chunks (``ZB_BYTES`` of zero-tile bits at a time, issue 26 A): the
    step gradients and the corrected operand gradients are the same bits for 1 or 2 threads and for one
    chunk or chunks of one block of rows, per tensor and per channel."""
    gen = torch.Generator().manual_seed(4)
    x, w, sx, sw = _operands(gen, 30, 96, 50, 8, 8, True, torch.float32)
    ops = _cgemm.int_operands(x, w, 16, sx, sw)
    plan = Plan("apsq", 6, 2, 5)
    g = torch.randn(1, 30, 50, generator=gen)
    for s in ([2.0**-3] * 6, torch.full((6 * 50,), 2.0**-3, dtype=torch.float64)):  # small steps: most saturate
        out, lb = torch.empty(30, 50), torch.empty(30, 50, dtype=plan.bad_dtype)
        _cgemm.forward(ops, s, plan, out, lb)
        results = []
        for threads, zb_bytes in ((1, 1 << 20), (2, 1 << 20), (1, 1), (2, 1)):
            prev = torch.get_num_threads()
            torch.set_num_threads(threads)
            monkeypatch.setattr(_cgemm, "ZB_BYTES", zb_bytes)
            try:
                gx, gw = x @ torch.zeros(96, 96), torch.randn(50, 96, generator=torch.Generator().manual_seed(1))
                grad_s, flagged = _cgemm.backward(x, w, 1, 16, sx, sw, s, plan, g, lb, gx, gw)
            finally:
                torch.set_num_threads(prev)
            results.append((flagged, grad_s, gx, gw))
        assert results[0][0] > 100
        assert _cgemm._chunk_rows(30, 50, 1) < 30  # the small scratch does split the rows
        for r in results[1:]:
            assert r[0] == results[0][0]
            assert all(torch.equal(a, b) for a, b in zip(r[1:], results[0][1:]))


def test_int_path_saves_only_operands_and_one_byte_per_output():
    from test_fast_path import _saved_bytes  # tests/ is on sys.path (pytest prepend import mode)

    gen = torch.Generator().manual_seed(2)
    x, w, sx, sw = _operands(gen, 64, 256, 96, 8, 8, True, torch.float32)
    x.requires_grad_()
    w.requires_grad_()
    s = torch.ones(8, requires_grad=True)
    saved = _saved_bytes(lambda: linear_psum(x, w, s, 32, mode="apsq", gs=2, x_step=sx, w_step=sw))
    assert saved <= (x.numel() + w.numel()) * 4 + 64 * 96 + 64


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_batched_matmul_equals_reference(variant, data):
    """Attention-shaped products [B, H, M, K] @ [B, H, K, N]: each of the B*H products in the kernel."""
    lead = tuple(data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    m, k, n_out = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 40)), data.draw(st.integers(1, 35))
    tile = data.draw(st.sampled_from([3, 8, 16]))
    mode, gs = data.draw(st.sampled_from([("psq", 1), ("apsq", 1), ("apsq", 2), ("apsq", 3)]))
    shift = data.draw(st.sampled_from([0.0, -3.0]))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    sa, sb = torch.tensor(2.0**-4, dtype=torch.float64), torch.tensor(2.0**-6, dtype=torch.float64)
    a = torch.randint(-128, 128, (*lead, m, k), generator=gen).double() * sa
    b = torch.randint(-128, 128, (*lead, k, n_out), generator=gen).double() * sb
    parts = matmul_partials(a, b, tile)
    n = parts.shape[0]
    mag = parts.abs().reshape(n, -1).amax(1).clamp_min(1e-30)
    scales = torch.exp2(torch.round(torch.log2(mag / 128)) + shift)
    g = torch.randn(*lead, m, n_out, generator=gen, dtype=torch.float64)
    ref = _run(lambda x, y, s: psum_accumulate(matmul_partials(x, y, tile), s, mode=mode, gs=gs, bits=8),
               a, b, scales, g)
    got = _run(lambda x, y, s: matmul_psum(x, y, s, tile, mode=mode, gs=gs, bits=8, a_step=sa, b_step=sb),
               a, b, scales, g)
    assert torch.equal(got[0], ref[0])
    for x, y in zip(got[1:3], ref[1:3]):
        assert torch.allclose(x, y, rtol=1e-12, atol=1e-12 * float(y.abs().max().clamp_min(1.0)))
    assert torch.allclose(got[3], ref[3], rtol=1e-10, atol=1e-10)


def test_matmul_broadcast_batch_uses_the_partials_path():
    a = torch.randint(-9, 9, (2, 3, 4, 16)).double() / 4
    b = torch.randint(-9, 9, (1, 3, 16, 5)).double() / 8  # broadcast over the first batch dimension
    s = torch.ones(2, dtype=torch.float64)
    y = matmul_psum(a, b, s, 8, mode="apsq", gs=2, a_step=torch.tensor(0.25), b_step=torch.tensor(0.125))
    assert torch.equal(y, psum_accumulate(matmul_partials(a, b, 8), s, mode="apsq", gs=2))


@pytest.mark.parametrize("mode,gs", [("psq", 1), ("apsq", 1), ("apsq", 2), ("apsq", 3)])
@pytest.mark.parametrize("shift", [0.0, -3.0])
def test_gradients_bit_identical_when_every_sum_is_exact(variant, mode, gs, shift, monkeypatch):
    """float64, operands and output gradient on dyadic grids: every product and partial sum of both
    paths is exact, so their different summation orders must give the same bits — the gradients of
    the integer path are the reference's gradients, not approximations of them."""
    gen = torch.Generator().manual_seed(11)
    x, w, sx, sw = _operands(gen, 13, 50, 37, 8, 8, True, torch.float64)
    tile = 8
    parts = linear_partials(x, w, tile)
    n = parts.shape[0]
    scales = torch.exp2(torch.round(torch.log2(parts.abs().reshape(n, -1).amax(1) / 128)) + shift)
    g = torch.randint(-64, 64, (13, 37), generator=gen).double() / 16
    ref = _run(lambda a, b, s: psum_accumulate(linear_partials(a, b, tile), s, mode=mode, gs=gs, bits=8),
               x, w, scales, g)
    corrected = []
    real = _cgemm.backward
    monkeypatch.setattr(_cgemm, "backward", lambda *a, **kw: (lambda out: corrected.append(out[1]) or out)(real(*a, **kw)))
    got = _run(lambda a, b, s: linear_psum(a, b, s, tile, mode=mode, gs=gs, bits=8, x_step=sx, w_step=sw),
               x, w, scales, g)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)
    if shift < 0:  # saturation: the correction kernel ran on many outputs
        assert corrected and corrected[0] > 100


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("mode,gs", [("psq", 1), ("apsq", 2), ("apsq", 5)])
def test_zero_gradient_tiles_past_64_tiles_bit_identical(mode, gs, per_channel):
    """150 tiles: each output's zero-gradient tiles span three 64-bit words of the first backward pass
    (``int_gemm.backward``), which the correction pass reads; saturating steps put zero tiles in every
    word (for apsq also whole groups before ``last_bad``). Exact sums: the gradients equal the
    reference's bit for bit."""
    gen = torch.Generator().manual_seed(21)
    tile, k = 4, 600
    x, w, sx, sw = _operands(gen, 9, k, 11, 8, 8, True, torch.float64)
    parts = linear_partials(x, w, tile)
    n = parts.shape[0]
    assert n == 150
    amax = parts.abs().amax(1) if per_channel else parts.abs().reshape(n, -1).amax(1)  # [n, N] or [n]
    scales = torch.exp2(torch.round(torch.log2(amax.clamp_min(1e-30) / 128)) - 2)
    g = torch.randint(-64, 64, (9, 11), generator=gen).double() / 16
    ref = _run(lambda a, b, s: psum_accumulate(linear_partials(a, b, tile), s, mode=mode, gs=gs, bits=8),
               x, w, scales, g)
    flagged = []
    real = _cgemm.backward

    def spy(*a, **kw):
        out = real(*a, **kw)
        flagged.append(out[1])
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_cgemm, "backward", spy)
        got = _run(lambda a, b, s: linear_psum(a, b, s, tile, mode=mode, gs=gs, bits=8, x_step=sx, w_step=sw),
                   x, w, scales, g)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)
    # the premise: zero-gradient tiles in the third word (tiles 128..149), per the reference's tile gradients
    p = parts.clone().requires_grad_()
    psum_accumulate(p, scales, mode=mode, gs=gs, bits=8).backward(g)
    assert flagged and flagged[0] > 0 and bool((p.grad[128:] != g).any())


@pytest.mark.parametrize("mode,gs", [("psq", 1), ("apsq", 2)])
def test_zero_gradient_bits_only_where_written_across_chunks(variant, monkeypatch, mode, gs):
    """The first backward pass writes an output block's zero-gradient bits only from its first nonzero
    64-tile word on and flags the blocks it wrote; the correction reads only flagged blocks. Chunks of one
    block of rows reuse one scratch, so a block whose zero tiles all lie in the third word (rows of group 1
    below) follows one that wrote bits in every word (group 0): stale bits would correct the wrong tiles.
    Column blocks past the first never saturate (small weights). Exact sums: the reference's bits."""
    monkeypatch.setattr(_cgemm, "ZB_BYTES", 1)  # one block of rows per chunk
    mr = _cgemm.MR(_cgemm.library())
    gen = torch.Generator().manual_seed(33)
    tile, k, n_out, groups = 4, 600, 40, 4
    m = groups * mr
    sx, sw = torch.tensor(2.0**-2, dtype=torch.float64), torch.tensor(2.0**-5, dtype=torch.float64)
    big = torch.randint(-100, 101, (m, k), generator=gen).double()
    small = torch.randint(-1, 2, (m, k), generator=gen).double()
    group = torch.arange(m) // mr
    late = torch.arange(k) >= 512  # tiles 128..149: the third word
    use_big = (group == 0).reshape(-1, 1) | ((group == 1).reshape(-1, 1) & late)
    x = torch.where(use_big, big, small) * sx
    cw = torch.randint(-127, 128, (n_out, k), generator=gen).double()
    cw[16:] = cw[16:].clamp(-1, 1)  # columns 16+: no tile saturates
    w = cw * sw
    n = k // tile
    scales = torch.full((n,), 8.0 * float(sx * sw), dtype=torch.float64)  # small tiles stay in range
    sign = torch.randint(0, 2, (m, n_out), generator=gen).double() * 2 - 1
    g = sign * torch.randint(1, 64, (m, n_out), generator=gen).double() / 16  # nonzero: zero tiles are the kernel's
    ref = _run(lambda a, b, s: psum_accumulate(linear_partials(a, b, tile), s, mode=mode, gs=gs, bits=8),
               x, w, scales, g)
    got = _run(lambda a, b, s: linear_psum(a, b, s, tile, mode=mode, gs=gs, bits=8, x_step=sx, w_step=sw.expand(n_out)),
               x, w, scales, g)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)
    # the premise: group 0 has zero-gradient tiles in the first word; group 1 in the third, and for psq
    # (tiles quantized on their own) in the third only (apsq: a saturated late closing step zeroes the
    # earlier groups too, every word)
    p = linear_partials(x, w, tile).clone().requires_grad_()
    psum_accumulate(p, scales, mode=mode, gs=gs, bits=8).backward(g)
    zero = p.grad == 0
    rows1 = group == 1
    assert bool(zero[:64, group == 0].any()) and bool(zero[128:, rows1].any())
    assert mode == "apsq" or not bool(zero[:128, rows1].any())


@pytest.mark.parametrize("mode,gs", [("psq", 1), ("apsq", 2)])
def test_batched_gradients_bit_identical_when_every_sum_is_exact(variant, mode, gs):
    gen = torch.Generator().manual_seed(12)
    sa, sb = torch.tensor(2.0**-3, dtype=torch.float64), torch.tensor(2.0**-5, dtype=torch.float64)
    a = torch.randint(-128, 128, (2, 3, 9, 40), generator=gen).double() * sa
    b = torch.randint(-128, 128, (2, 3, 40, 11), generator=gen).double() * sb
    parts = matmul_partials(a, b, 8)
    scales = torch.exp2(torch.round(torch.log2(parts.abs().reshape(5, -1).amax(1) / 128)) - 2)  # saturating
    g = torch.randint(-64, 64, (2, 3, 9, 11), generator=gen).double() / 16
    ref = _run(lambda x, y, s: psum_accumulate(matmul_partials(x, y, 8), s, mode=mode, gs=gs, bits=8), a, b, scales, g)
    got = _run(lambda x, y, s: matmul_psum(x, y, s, 8, mode=mode, gs=gs, bits=8, a_step=sa, b_step=sb), a, b, scales, g)
    for x, y in zip(got, ref):
        assert torch.equal(x, y)


def test_automatic_choice_skips_the_plain_c_build(monkeypatch):
    """Left to itself, the integer path runs only with a SIMD micro-kernel (plain C is ~20x slower
    than the float-tile path); asked for explicitly (tests), the plain-C build runs."""
    gen = torch.Generator().manual_seed(3)
    x, w, sx, sw = _operands(gen, 4, 16, 5, 8, 8, False, torch.float32)
    monkeypatch.setattr(_cgemm, "isa", lambda: "portable")
    assert _cgemm.int_operands(x, w, 8, sx, sw) is None
    with options.override(isa="portable"):
        assert _cgemm.int_operands(x, w, 8, sx, sw) is not None
    with pytest.raises(APSQError, match="isa"), options.override(isa="sse"):
        pass


def test_psum_steps_without_exact_reciprocals_leave_the_integer_path():
    """float32 PSUM step 2^-140: 1/s overflows float32, so the kernel's x * (1/s) would give NaN for a
    zero partial sum where the reference's x / s gives 0; the float path (torch kernels) is used."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(-8, 8, (3, 16), generator=gen).float() * 2.0**-60
    x[1] = 0
    w = torch.randint(-8, 8, (4, 16), generator=gen).float() * 2.0**-60
    s = torch.tensor([2.0**-140, 2.0**-138])
    steps = {"x_step": torch.tensor(2.0**-60), "w_step": torch.tensor(2.0**-60)}
    assert _cgemm.int_operands(x, w, 8, steps["x_step"], steps["w_step"]) is not None  # the operands qualify
    y = linear_psum(x, w, s, 8, mode="apsq", gs=2, **steps)
    assert torch.equal(y, psum_accumulate(linear_partials(x, w, 8), s, mode="apsq", gs=2))
