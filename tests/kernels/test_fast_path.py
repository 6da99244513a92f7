"""The fused PSUM path (apsq.psum.fused) equals the reference loop: values and gradients.

Forward values and the gradients to the partial sums / operands are compared bit for bit where the
arithmetic is the same IEEE operations in the same order (the partial sums, the running sums, the
masks); the step-size gradients are sums over all output elements, whose summation order differs
(the fused path accumulates in float64), so they are compared to 1e-6 of the sum of |terms|.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from apsq.errors import APSQError
from apsq.nn.config import LayerQuantConfig
from apsq.nn.layers import QuantConv2d, QuantLinear, QuantMatmul
from apsq.psum.tiling import matmul_partials
from apsq.nn.psum_quantizer import PSUMQuantizer, set_psum_impl
from apsq.nn.stats import LayerStats, StatsRecorder
from apsq.kernels import dispatch, options
from apsq.kernels import chunk as c_chunk
from apsq.kernels.steps import reciprocals_exact
from apsq.psum.accumulate import psum_accumulate
from apsq.psum.fused import conv2d_psum, linear_psum, psum_accumulate_fused
from apsq.psum.tiling import conv2d_partials, linear_partials
from apsq.quant.ops import fake_quantize

BACKENDS = ["torch"] + (["c"] if c_chunk.available() else [])


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv("APSQ_KERNELS", request.param)
    return request.param


@pytest.fixture
def kernel_options():
    """``kernel_options(chunk_elements=...)``: kernel options for the rest of the test."""
    with contextlib.ExitStack() as stack:
        yield lambda **kw: stack.enter_context(options.override(**kw))


def _scale_close(got: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor) -> None:
    """Step-size gradients: |got - ref| <= 1e-6 * (|ref| + bound), bound ~ sum of |terms|."""
    tol = 1e-6 * (ref.abs() + bound) + 1e-12
    assert torch.all((got - ref).abs() <= tol), (got, ref)


def _lsq_bound(partials: torch.Tensor, g: torch.Tensor, bits: int) -> torch.Tensor:
    """A per-step bound on sum |g * term| (|term| <= 2^(bits-1), |g| summed over elements)."""
    return torch.full((partials.shape[0],), float(g.abs().sum()) * 2 ** (bits - 1) * partials.shape[0])


@st.composite
def psum_case(draw, dtype=torch.float64):
    n = draw(st.integers(1, 9))
    lanes = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**16))
    mag = draw(st.sampled_from([0.7, 20.0, 300.0, 5000.0]))  # 5000: heavy saturation
    gen = torch.Generator().manual_seed(seed)
    partials = (torch.randn(n, lanes, generator=gen, dtype=torch.float64) * mag).to(dtype)
    exps = draw(st.lists(st.integers(-3, 4), min_size=n, max_size=n))
    scales = torch.exp2(torch.tensor(exps, dtype=torch.float64)).to(dtype)
    g = torch.randn(lanes, generator=gen, dtype=torch.float64).to(dtype)
    return partials, scales, g


def _both(fn_ref, fn_fast, partials, scales, g):
    p1 = partials.clone().requires_grad_()
    s1 = scales.clone().requires_grad_()
    y1 = fn_ref(p1, s1)
    gp1, gs1 = torch.autograd.grad(y1, (p1, s1), g)
    p2 = partials.clone().requires_grad_()
    s2 = scales.clone().requires_grad_()
    y2 = fn_fast(p2, s2)
    gp2, gs2 = torch.autograd.grad(y2, (p2, s2), g)
    return (y1, gp1, gs1), (y2, gp2, gs2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fused_equals_reference(backend, dtype, data):
    partials, scales, g = data.draw(psum_case(dtype))
    mode = data.draw(st.sampled_from(["psq", "apsq"]))
    gs = data.draw(st.integers(1, 5))  # gs > n and a short last group both occur (n <= 9)
    bits = data.draw(st.sampled_from([3, 8]))
    ref, fast = _both(
        lambda p, s: psum_accumulate(p, s, mode=mode, gs=gs, bits=bits),
        lambda p, s: psum_accumulate_fused(p, s, mode=mode, gs=gs, bits=bits),
        partials, scales, g,
    )
    assert torch.equal(ref[0], fast[0])
    assert torch.equal(ref[1], fast[1])
    _scale_close(fast[2], ref[2], _lsq_bound(partials, g, bits) * (1e-9 if dtype == torch.float64 else 1.0))


def test_gradients_hand_checked_gs2(backend):
    """Two groups of two tiles, one saturating closing step: the gradients written out by hand."""
    # tiles 0,1 form group 0 (tile 1 closes), tiles 2,3 group 1; steps 1, bits 3 -> codes [-4, 3]
    p = torch.tensor([[1.25], [1.0], [10.0], [-9.6]], dtype=torch.float64, requires_grad=True)
    s = torch.ones(4, dtype=torch.float64, requires_grad=True)
    y = psum_accumulate_fused(p, s, mode="apsq", gs=2, bits=3)
    # P0 = Q(1.25) = 1; A0 = Q(1.0 + 1) = 2; P2 = Q(10) = 3 (clamped); A1 = Q(-9.6 + 3 + 2) = Q(-4.6) = -4 (clamped)
    assert y.item() == -4.0
    y.backward(torch.tensor([1.0], dtype=torch.float64))
    # the last closing step saturates: no gradient reaches any tile feeding it
    assert p.grad.flatten().tolist() == [0.0, 0.0, 0.0, 0.0]
    # step 3 (clamped at qn) gets qn = -4; the others see zero incoming gradient
    assert s.grad.tolist() == [0.0, 0.0, 0.0, -4.0]


def test_gradients_hand_checked_in_range(backend):
    p = torch.tensor([[1.25], [1.0], [2.5], [-2.2]], dtype=torch.float64, requires_grad=True)
    s = torch.ones(4, dtype=torch.float64, requires_grad=True)
    y = psum_accumulate_fused(p, s, mode="apsq", gs=2, bits=3)
    # P0 = 1; A0 = Q(2) = 2; P2 = Q(2.5) = 3; A1 = Q(-2.2 + 3 + 2) = Q(2.8) = 3
    assert y.item() == 3.0
    y.backward(torch.tensor([1.0], dtype=torch.float64))
    assert p.grad.flatten().tolist() == [1.0, 1.0, 1.0, 1.0]
    # LSQ: round(u) - u per step: 1-1.25, 2-2, 3-2.5, 3-2.8
    assert torch.allclose(s.grad, torch.tensor([-0.25, 0.0, 0.5, 0.2], dtype=torch.float64))


def _grid(shape, gen, scale, lo=-40, hi=40):
    return torch.randint(lo, hi, shape, generator=gen).to(torch.float64) * scale


@pytest.mark.parametrize("mode,gs", [("psq", 1), ("apsq", 1), ("apsq", 2), ("apsq", 3), ("apsq", 7)])
@pytest.mark.parametrize("k", [64, 70])  # 70: a zero-padded short last tile
@pytest.mark.parametrize("chunk", [300, 10**6])  # several row blocks / one
# the operand-gradient split (dense / sparse correction, or tile-wise) exists on the C backend only
@pytest.mark.parametrize("backend,split", [("torch", "dense")] + [("c", s) for s in ("dense", "sparse", "tilewise")
                                                                   if "c" in BACKENDS])
@pytest.mark.parametrize("shift", [0.0, -3.0])  # step exponent offset; -3: many tiles and sums saturate
def test_linear_psum_equals_partials_path(backend, mode, gs, k, chunk, split, shift, monkeypatch, kernel_options):
    kernel_options(chunk_elements=chunk)
    # full GEMMs with g plus a correction (per chunk: dense matmuls or gathered entries), or tile-wise
    monkeypatch.setattr("apsq.psum.fused.SPARSE_FRACTION", 1.0 if split == "sparse" else 0.0)
    monkeypatch.setattr("apsq.psum.fused.TILEWISE_FRACTION", 0.0 if split == "tilewise" else 1.0)
    gen = torch.Generator().manual_seed(k + gs)
    x = _grid((2, 9, k), gen, 2.0**-4)
    w = _grid((11, k), gen, 2.0**-5)
    n = -(-k // 16)
    scales = torch.exp2(torch.tensor([-1.0, 0.0, 1.0, 0.0, 2.0][:n], dtype=torch.float64) + shift)
    g = torch.randn(2, 9, 11, generator=gen, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, w, scales)]
    y_ref = psum_accumulate(linear_partials(leaves[0], leaves[1], 16), leaves[2], mode=mode, gs=gs, bits=6)
    ref = torch.autograd.grad(y_ref, leaves, g)
    leaves2 = [t.clone().requires_grad_() for t in (x, w, scales)]
    y = linear_psum(leaves2[0], leaves2[1], leaves2[2], 16, mode=mode, gs=gs, bits=6)
    got = torch.autograd.grad(y, leaves2, g)
    assert torch.equal(y, y_ref)
    assert torch.allclose(got[0], ref[0], rtol=1e-12, atol=1e-12)
    assert torch.allclose(got[1], ref[1], rtol=1e-12, atol=1e-12)
    assert torch.allclose(got[2], ref[2], rtol=1e-9, atol=1e-9)


def test_conv2d_psum_equals_partials_path(backend):
    gen = torch.Generator().manual_seed(3)
    for groups in (1, 2):
        x = _grid((2, 4, 7, 6), gen, 2.0**-3)
        w = _grid((6, 4 // groups, 3, 3), gen, 2.0**-4)
        n = -(-(4 // groups * 9) // 8)
        scales = torch.exp2(torch.arange(n, dtype=torch.float64) - 1)
        args = (8, (2, 1), (1, 1), (1, 1), groups)
        xs, ws, ss = (t.clone().requires_grad_() for t in (x, w, scales))
        y_ref = psum_accumulate(conv2d_partials(xs, ws, *args), ss, mode="apsq", gs=2, bits=5)
        y_ref.square().sum().backward()
        xf, wf, sf = (t.clone().requires_grad_() for t in (x, w, scales))
        y = conv2d_psum(xf, wf, sf, *args, mode="apsq", gs=2, bits=5)
        y.square().sum().backward()
        assert torch.equal(y, y_ref)
        for a, b in ((xf, xs), (wf, ws), (sf, ss)):
            assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-10)


def _layer_grads(layer: nn.Module, inputs: tuple[torch.Tensor, ...], g: torch.Tensor):
    ins = [t.clone().requires_grad_() for t in inputs]
    y = layer(*ins)
    params = [p for p in layer.parameters() if p.requires_grad]
    grads = torch.autograd.grad(y, ins + params, g)
    return y, grads


@pytest.mark.parametrize("mode,gs", [("psq", 1), ("apsq", 2), ("apsq", 4)])
def test_quant_layers_fused_match_reference(backend, mode, gs):
    torch.manual_seed(1)
    cfg = LayerQuantConfig(tile=16, mode=mode, gs=gs)
    lin = QuantLinear(70, 24, qcfg=cfg)
    conv = QuantConv2d(5, 6, 3, padding=1, qcfg=cfg)
    mm = QuantMatmul(40, cfg)
    f64 = torch.float64
    cases = [(lin, (torch.randn(3, 7, 70, dtype=f64),)), (conv, (torch.randn(2, 5, 6, 6, dtype=f64),)),
             (mm, (torch.randn(2, 5, 40, dtype=f64), torch.randn(2, 40, 9, dtype=f64)))]
    for layer, inputs in cases:
        layer.double().train()
        with torch.no_grad():
            layer(*inputs)  # first batch initialises every step size
        g = torch.randn_like(layer(*inputs))
        set_psum_impl(layer, "reference")
        y_ref, g_ref = _layer_grads(layer, inputs, g)
        set_psum_impl(layer, "fused")
        y, got = _layer_grads(layer, inputs, g)
        assert torch.equal(y, y_ref), type(layer).__name__
        for a, b in zip(got, g_ref):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), type(layer).__name__


def _saved_bytes(fn) -> int:
    """Bytes of distinct storages autograd keeps for backward while ``fn`` runs."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_fused_linear_saves_no_partial_sums():
    m, k, n_out, tile = 64, 256, 96, 32
    x = torch.randn(m, k, requires_grad=True)
    w = torch.randn(n_out, k, requires_grad=True)
    s = torch.ones(k // tile, requires_grad=True)
    fused = _saved_bytes(lambda: linear_psum(x, w, s, tile, mode="apsq", gs=2))
    ref = _saved_bytes(lambda: psum_accumulate(linear_partials(x, w, tile), s, mode="apsq", gs=2))
    operands = (x.numel() + w.numel()) * 4
    one_byte_per_output = m * n_out
    assert fused <= operands + one_byte_per_output + 64
    assert ref > 8 * m * n_out * 4  # the reference keeps several float copies per tile step


def test_observe_sees_the_same_values():
    torch.manual_seed(2)
    p = torch.randn(6, 50) * 40
    s = torch.exp2(torch.tensor([0.0, 1, 2, 0, 1, 3]))
    stats = [LayerStats("x", "linear", "apsq", 2, 96, 6) for _ in range(2)]
    psum_accumulate(p, s, mode="apsq", gs=4, bits=6, observe=StatsRecorder(stats[0], 6))
    psum_accumulate_fused(p, s, mode="apsq", gs=4, bits=6, observe=StatsRecorder(stats[1], 6))
    assert stats[0].psum_values == stats[1].psum_values == 300
    assert stats[0].psum_saturated == stats[1].psum_saturated > 0


def test_extreme_steps_fall_back_exactly(backend):
    """A step whose reciprocal is not representable (float32 2^-140) is still exact."""
    p = torch.tensor([[1e-40, -3e-42], [2e-41, 5e-42]], dtype=torch.float32)
    s = torch.tensor([2.0**-140, 2.0**-138], dtype=torch.float32)
    assert not reciprocals_exact(s.tolist(), torch.float32)
    assert reciprocals_exact([0.5, 2.0**100], torch.float32)
    for mode in ("psq", "apsq"):
        assert torch.equal(psum_accumulate_fused(p, s, mode=mode), psum_accumulate(p, s, mode=mode))


def test_bad_arguments_are_named():
    p = torch.randn(3, 4)
    with pytest.raises(APSQError, match="powers of two"):
        psum_accumulate_fused(p, torch.tensor([1.0, 3.0, 1.0]), mode="psq")
    with pytest.raises(APSQError, match="scales must be"):
        psum_accumulate_fused(p, torch.ones(2), mode="apsq")
    with pytest.raises(APSQError, match="mode"):
        psum_accumulate_fused(p, torch.ones(3), mode="bogus")
    with pytest.raises(APSQError, match="impl"):
        PSUMQuantizer(3, impl="triton")
    with pytest.raises(APSQError, match="K="):
        linear_psum(torch.randn(2, 5), torch.randn(3, 6), torch.ones(1), 8, mode="psq")


def test_mode_none_and_default_impl():
    x, w = torch.randn(4, 40), torch.randn(5, 40)
    assert torch.allclose(linear_psum(x, w, None, 16, mode="none"), x @ w.T, atol=1e-5)
    assert PSUMQuantizer(2).impl == "fused"
    assert dispatch.choose(x) in ("c", "torch")


def test_matmul_partials_through_fused_accumulate():
    """Attention matmuls go through PSUMQuantizer.forward, i.e. psum_accumulate_fused."""
    gen = torch.Generator().manual_seed(5)
    a = _grid((2, 3, 5, 40), gen, 2.0**-6)
    b = _grid((2, 3, 40, 7), gen, 2.0**-6)
    parts = matmul_partials(a, b, 16)
    s = torch.exp2(torch.tensor([-3.0, -2.0, -2.0]))
    ref = psum_accumulate(parts, s.double(), mode="apsq", gs=2, bits=8)
    assert torch.equal(psum_accumulate_fused(parts, s.double(), mode="apsq", gs=2, bits=8), ref)
    assert torch.equal(ref, fake_quantize(ref, torch.tensor(2.0**-2, dtype=torch.float64), 8))  # A is on s_l's grid
