"""The Triton PSUM GEMM (apsq.kernels.triton_psum) against the reference loop, bit for bit.

On the CPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, set by the ``device``
fixture before the kernels are compiled; they are compiled per interpreter setting on first use), so
every example is tiny. The same tests run on CUDA when a GPU is present. Values must be
``torch.equal`` to ``psum_accumulate(linear_partials(...))``; with float64 operands and dyadic output
gradients every sum is exact, so the operand and step gradients must be ``torch.equal`` too.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[gpu]')")

from apsq.errors import APSQError
from apsq.kernels import triton_psum
from apsq.psum.accumulate import psum_accumulate
from apsq.psum.fused import Plan
from apsq.psum.tiling import conv2d_im2col, conv2d_partials, linear_partials, num_tiles

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
HYP = settings(max_examples=12, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(params=DEVICES)
def device(request, monkeypatch):
    """``cpu``: the interpreter; ``cuda``: compiled kernels."""
    if request.param == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return torch.device(request.param)


def _reference(x3, w3, scales, tile, mode, gs, bits):
    """The reference loop over materialised tiles, one product of the batch at a time."""
    return torch.stack([psum_accumulate(linear_partials(x3[b], w3[b], tile), scales, mode=mode, gs=gs, bits=bits)
                        for b in range(x3.shape[0])])


def _case(seed, b, m, n_out, k, tile, x_bits, w_bits, per_row, per_ch, e_lo, dtype):
    """Fake-quantized operands (codes times power-of-two steps), PSUM steps 2^[e_lo, e_lo+4) in code
    units and a dyadic output gradient."""
    gen = torch.Generator().manual_seed(seed)
    sx = torch.tensor(2.0 ** int(torch.randint(-5, 0, (1,), generator=gen)), dtype=torch.float64)
    sw = torch.exp2(torch.randint(-7, -2, (n_out if per_row else 1,), generator=gen).double())
    hx, hw = 2 ** (x_bits - 1), 2 ** (w_bits - 1)
    x = torch.randint(-hx, hx, (b, m, k), generator=gen).double() * sx
    w = torch.randint(-hw, hw, (b, n_out, k), generator=gen).double() * sw.reshape(1, -1, 1)
    n = num_tiles(k, tile)
    unit = float(sx) * float(sw.max())
    e = torch.randint(e_lo, e_lo + 4, (n, n_out) if per_ch else (n,), generator=gen).double()
    scales = torch.exp2(e) * unit
    g = torch.randint(-8, 9, (b, m, n_out), generator=gen).double() / 8
    return tuple(t.to(dtype) for t in (x, w, scales, g, sx, sw))


def _grads(fn, x, w, scales, g):
    leaves = [t.clone().requires_grad_() for t in (x, w, scales)]
    y = fn(*leaves)
    return (y.detach(), *torch.autograd.grad(y, leaves, g, allow_unused=True))


shapes = st.tuples(st.integers(1, 2), st.integers(1, 19), st.integers(1, 19), st.integers(1, 37),
                   st.sampled_from([1, 3, 4, 5, 7, 8, 11]))


@HYP
@given(shape=shapes, mode=st.sampled_from(["psq", "apsq", "apsq", "none"]), gs=st.integers(1, 4),
       bits=st.sampled_from([2, 4, 6, 8, 12]), x_bits=st.sampled_from([2, 8, 8, 10]), w_bits=st.sampled_from([3, 8]),
       per_row=st.booleans(), per_ch=st.booleans(), e_lo=st.integers(-2, 8), seed=st.integers(0, 2**16))
@example(shape=(2, 5, 7, 23, 5), mode="apsq", gs=3, bits=4, x_bits=10, w_bits=8, per_row=True, per_ch=True, e_lo=-2,
         seed=1)  # int16 codes, saturating closing steps, per-channel everything
@example(shape=(1, 3, 17, 9, 4), mode="apsq", gs=4, bits=8, x_bits=8, w_bits=8, per_row=False, per_ch=False, e_lo=3,
         seed=2)  # gs > n: one short group
@example(shape=(2, 17, 3, 12, 1), mode="psq", gs=1, bits=2, x_bits=2, w_bits=3, per_row=True, per_ch=False, e_lo=-2,
         seed=3)  # 2-bit PSUMs, tile 1
def test_float64_values_and_gradients_equal_reference(device, shape, mode, gs, bits, x_bits, w_bits, per_row, per_ch,
                                                      e_lo, seed):
    """Modes, gs 1-4, PSUM bits 2-12 (saturating often at low e_lo), odd tiles, int8 and int16 codes
    (x_bits 10), per-row weight steps, per-channel PSUM steps, B = 2 (attention's batched products)."""
    b, m, n_out, k, tile = shape
    x, w, scales, g, sx, sw = _case(seed, b, m, n_out, k, tile, x_bits, w_bits, per_row, per_ch, e_lo, torch.float64)
    plan = Plan(mode, num_tiles(k, tile), gs, bits)
    x, w, scales, g = (t.to(device) for t in (x, w, scales, g))

    def fast(xl, wl, sl):
        y = triton_psum.gemm_psum(xl, wl, sl, tile, plan, sx.to(device), sw.to(device))
        assert y is not None, "exact codes must take the Triton path"
        return y

    got = _grads(fast, x, w, scales, g)
    want = _grads(lambda xl, wl, sl: _reference(xl, wl, sl, tile, mode, gs, bits), x, w, scales, g)
    for name, a, r in zip(("y", "grad_x", "grad_w", "grad_scales"), got, want):
        if mode == "none" and name == "grad_scales":
            assert a is None or not a.any()
            continue
        assert a.dtype == r.dtype and a.shape == r.shape, name
        assert torch.equal(a, r), f"{name}: max |diff| {(a - r).abs().max().item()}"


@HYP
@given(shape=shapes, mode=st.sampled_from(["psq", "apsq"]), gs=st.integers(1, 4), bits=st.sampled_from([4, 8]),
       per_ch=st.booleans(), e_lo=st.integers(0, 8), seed=st.integers(0, 2**16))
def test_float32_values_equal_reference(device, shape, mode, gs, bits, per_ch, e_lo, seed):
    b, m, n_out, k, tile = shape
    x, w, scales, _, sx, sw = _case(seed, b, m, n_out, k, tile, 8, 8, True, per_ch, e_lo, torch.float32)
    plan = Plan(mode, num_tiles(k, tile), gs, bits)
    y = triton_psum.gemm_psum(x.to(device), w.to(device), scales.to(device), tile, plan, sx.to(device), sw.to(device))
    assert y is not None and y.dtype == torch.float32
    assert torch.equal(y.cpu(), _reference(x, w, scales, tile, mode, gs, bits))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_computes_in_float32(device, dtype):
    """bf16 / fp16 operands with <= 8-bit codes: the float32 result rounded once to the dtype; so are
    the gradients (the float32 reference's, exact here, rounded once)."""
    x, w, scales, g, sx, sw = _case(7, 2, 9, 11, 29, 5, 8, 6, True, False, 2, torch.float32)
    plan = Plan("apsq", num_tiles(29, 5), 2, 8)
    got = _grads(lambda a, b_, s: triton_psum.gemm_psum(a, b_, s, 5, plan, sx.to(device), sw.to(device)),
                 *(t.to(device, dtype) for t in (x, w, scales, g)))
    want = _grads(lambda a, b_, s: _reference(a, b_, s, 5, "apsq", 2, 8), x, w, scales, g)
    assert got[0].dtype == dtype
    assert torch.equal(got[0].cpu(), want[0].to(dtype))
    for a, r in zip(got[1:], want[1:]):
        assert a.dtype == dtype and torch.equal(a.cpu(), r.to(dtype)), (a.cpu().float() - r).abs().max()


def test_conv2d_through_im2col(device):
    """A Conv2d's im2col rows through the GEMM equal the reference over conv2d_partials (per-channel
    weight steps; per-channel PSUM steps in the Conv2d lane layout ``[n, Co, 1, 1]``)."""
    gen = torch.Generator().manual_seed(3)
    sx, sw = torch.tensor(0.125, dtype=torch.float64), torch.exp2(-torch.randint(3, 6, (5,), generator=gen).double())
    x = torch.randint(-128, 128, (2, 3, 6, 5), generator=gen).double() * sx
    wt = torch.randint(-128, 128, (5, 3, 3, 3), generator=gen).double() * sw.reshape(-1, 1, 1, 1)
    tile, k = 8, 27
    n = num_tiles(k, tile)
    scales = torch.exp2(torch.randint(4, 8, (n, 5, 1, 1), generator=gen).double()) * float(sx * sw.max())
    plan = Plan("apsq", n, 2, 8)
    cols, (h, w_out) = conv2d_im2col(x, (3, 3), (1, 1), (1, 1), (1, 1))  # [B, K, L]
    rows = cols.transpose(1, 2).reshape(1, -1, k)
    y = triton_psum.gemm_psum(rows.to(device), wt.reshape(1, 5, k).to(device), scales.to(device), tile, plan,
                              sx.to(device), sw.to(device))
    y = y.cpu().reshape(2, h * w_out, 5).transpose(1, 2).reshape(2, 5, h, w_out)
    ref = psum_accumulate(conv2d_partials(x, wt, tile, padding=(1, 1)), scales, mode="apsq", gs=2, bits=8)
    assert torch.equal(y, ref)


def test_inexact_operands_fall_back(device):
    """None (the caller takes another path) where the integer path would not equal the reference."""
    x, w, scales, _, sx, sw = _case(1, 1, 4, 6, 16, 4, 8, 8, False, False, 3, torch.float32)
    plan = Plan("psq", 4, 1, 8)
    d = {"device": device}

    def run(xx=x, ww=w, s_x=sx, s_w=sw, tile=4, sc=scales):
        return triton_psum.gemm_psum(xx.to(**d), ww.to(**d), sc.to(**d), tile, plan, None if s_x is None else
                                     s_x.to(**d), None if s_w is None else s_w.to(**d))

    assert run() is not None
    assert run(xx=x + 0.01) is None  # not codes of x_step
    assert run(s_x=None) is None  # steps unknown
    assert run(s_x=sx * 3) is None  # not a power of two
    assert run(s_w=sw.repeat(2)) is None  # neither one nor one per row
    assert run(xx=x * 2**6, ww=w * 2**2) is not None  # max|cx| max|cw| tile <= 8192 * 512 * 4 = 2^24
    assert run(xx=x * 2**7, ww=w * 2**2) is None  # up to 16384 * 512 * 4 > 2^24: float32 tile sums inexact
    assert run(xx=x.double()) is None  # operands of different dtypes
    wide = torch.zeros(1, 2, 600)
    assert triton_psum.gemm_psum(wide.to(**d), wide.to(**d), torch.ones(1, **d), 600, Plan("psq", 1, 1, 8),
                                 sx.to(**d), sx.to(**d)) is None  # tile 600 pads to 1024: deeper than 512
    bad = x.clone()
    bad[0, 1, 2] = float("nan")
    assert run(xx=bad) is None  # NaN is not a code
    bad[0, 1, 2] = float("inf")
    assert run(xx=bad) is None
    assert run(xx=x * 2**9) is None  # |codes| > 32767


def test_bad_arguments_raise(device):
    x, w, scales, _, sx, sw = _case(2, 1, 4, 6, 16, 4, 8, 8, False, False, 3, torch.float64)
    x, w, scales = x.to(device), w.to(device), scales.to(device)
    sx, sw = sx.to(device), sw.to(device)
    with pytest.raises(APSQError, match="x3 \\[B, M, K\\]"):
        triton_psum.gemm_psum(x[0], w, scales, 4, Plan("psq", 4, 1, 8), sx, sw)
    with pytest.raises(APSQError, match="plan.n"):
        triton_psum.gemm_psum(x, w, scales, 4, Plan("psq", 5, 1, 8), sx, sw)
    with pytest.raises(APSQError, match="scales must be \\[n\\]"):
        triton_psum.gemm_psum(x, w, scales[:3], 4, Plan("psq", 4, 1, 8), sx, sw)
    with pytest.raises(APSQError, match="powers of two"):
        triton_psum.gemm_psum(x, w, scales * 3, 4, Plan("psq", 4, 1, 8), sx, sw)
    with pytest.raises(APSQError, match="tile"):
        triton_psum.gemm_psum(x, w, scales, 0, Plan("psq", 4, 1, 8), sx, sw)


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    """CPU tensors without TRITON_INTERPRET=1: None (the caller's fallback runs), with it: the kernels."""
    x = torch.ones(1, 2, 4)
    args = (x, x, torch.ones(1), 4, Plan("psq", 1, 1, 8), torch.tensor(1.0), torch.tensor(1.0))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert triton_psum.gemm_psum(*args) is None
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert torch.equal(triton_psum.gemm_psum(*args), torch.full((1, 2, 2), 4.0))


def test_imports_without_triton():
    """The module imports without Triton (and without a GPU); only gemm_psum then raises ImportError."""
    code = ("import sys; sys.modules['triton'] = None\n"
            "from apsq.kernels import triton_psum as t\n"
            "assert not t.available()\n"
            "try:\n    t.gemm_psum(None, None, None, 1, None, None, None)\n"
            "except ImportError as e:\n    assert 'pip install' in str(e), e\nelse:\n    raise SystemExit('no error')\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_launch_grid_takes_any_row_count_nn_linear_takes():
    """Issue 25 item 7 (from Triton / PyTorch reports of CUDA grid limits: axes 1 and 2 hold 65,535 blocks):
    row blocks sat on grid axis 1, so >= 4.19 M rows (a 1x1 conv on 64 images of 256 x 256) were refused.
    Now one flat axis 0 (2^31 - 1 programs) holds products x row blocks x column blocks / tiles; every
    program decodes to a distinct block, and only launches beyond 2^31 - 1 programs are refused."""
    rows = 64 * 256 * 256  # 4,194,304 rows of a 1x1 conv
    for b, g1, g2 in ((1, -(-rows // 64), 1), (1, -(-rows // 64), 48), (96, 3, 7), (1, 1, 70_000)):
        grid = triton_psum.launch_grid(b, g1, g2)
        assert len(grid) == 1 and grid[0] == b * g1 * g2 <= triton_psum.MAX_PROGRAMS
    b, g1, g2 = 3, 5, 7
    coords = {triton_psum.program_coords(p, g1, g2) for p in range(b * g1 * g2)}
    assert coords == {(i, j, k) for i in range(b) for j in range(g1) for k in range(g2)}
    assert triton_psum.program_coords(b * g1 * g2 - 1, g1, g2) == (b - 1, g1 - 1, g2 - 1)
    with pytest.raises(APSQError, match="split the input"):
        triton_psum.launch_grid(1, 2**20, 2**12)


def test_flat_grid_decodes_every_block_under_the_interpreter(monkeypatch):
    """The kernels themselves decode the flat grid (issue 25 item 7): with 2 products, 3 row blocks of 16
    rows (interpreter) and several column blocks / tiles on one axis, values and gradients equal the
    reference bit for bit (the 4 M-row case itself needs a GPU-sized tensor; its grid is tested above)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x, w, scales, g, sx, sw = _case(5, 2, 40, 18, 20, 4, 8, 8, True, False, 1, torch.float64)
    plan = Plan("apsq", 5, 2, 8)
    seen = []
    real = triton_psum.launch_grid
    monkeypatch.setattr(triton_psum, "launch_grid", lambda *a: seen.append(a) or real(*a))
    got = _grads(lambda a, b, s: triton_psum.gemm_psum(a, b, s, 4, plan, sx, sw), x, w, scales, g)
    ref = _grads(lambda a, b, s: _reference(a, b, s, 4, "apsq", 2, 8), x, w, scales, g)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)
    assert {a[1] for a in seen} >= {3}  # 40 rows: 3 row blocks of 16, with 2 products and 2 column blocks
