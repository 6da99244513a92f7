"""The quantized layers through the Triton kernels equal the reference loop (CPU under the Triton
interpreter; on CUDA, compiled, wherever a GPU is present: benchmarks/gpu_check.sh runs them there).

``APSQ_KERNELS=triton`` (here :func:`apsq.kernels.options.override`) routes every PSUM product of a
layer to :func:`apsq.kernels.triton_psum.gemm_psum`: Linear as one GEMM, Conv2d through im2col,
attention's ``QK^T`` / ``AV`` as a batch of products. Outputs and every gradient (operands, weights,
activation / weight / PSUM steps) must equal the ``reference`` backend's bit for bit (float64, dyadic
output gradients), and the Triton kernels must actually have run.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[gpu]')")

from apsq.kernels import options, triton_psum
from apsq.nn.config import LayerQuantConfig
from apsq.nn.layers import QuantConv2d, QuantLinear, QuantMatmul


class Calls(list):
    """The Triton calls of a test (True: the kernel ran) and the device the test runs on."""

    device = torch.device("cpu")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                             reason="no CUDA"))])
def interpreter(request, monkeypatch):
    """``cpu``: the Triton interpreter; ``cuda``: the compiled kernels on the GPU."""
    if request.param == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    calls = Calls()
    calls.device = torch.device(request.param)
    orig = triton_psum.gemm_psum

    def counted(*args, **kwargs):
        y = orig(*args, **kwargs)
        calls.append(y is not None)
        return y

    monkeypatch.setattr(triton_psum, "gemm_psum", counted)
    return calls


def _compare(layer: torch.nn.Module, inputs: tuple[torch.Tensor, ...], calls: Calls) -> None:
    layer = layer.to(calls.device)
    inputs = tuple(t.to(calls.device) for t in inputs)
    torch.manual_seed(1)
    with torch.no_grad():
        layer(*inputs)  # lazy step initialisation (same for both twins)
    twin = copy.deepcopy(layer)
    results = []
    for backend, mod in (("triton", layer), ("reference", twin)):
        leaves = [t.clone().requires_grad_() for t in inputs]
        with options.override(backend=backend):
            y = mod(*leaves)
        g = (torch.randint(-4, 5, y.shape, generator=torch.Generator().manual_seed(2)).double() / 4).to(y.device)
        params = [p for p in mod.parameters() if p.requires_grad]
        grads = torch.autograd.grad(y, leaves + params, g, allow_unused=True)
        results.append((y.detach(), grads))
    assert calls and all(calls), "the Triton kernels did not run (or fell back)"
    (y_t, g_t), (y_r, g_r) = results
    assert torch.equal(y_t, y_r)
    for a, b in zip(g_t, g_r):
        assert (a is None and b is None) or torch.equal(a, b), (a - b).abs().max()


@pytest.mark.parametrize("mode,gs", [("apsq", 2), ("psq", 1), ("apsq", 3)])
def test_linear(interpreter, mode, gs):
    """Per-channel weight steps (the default), per-tensor PSUM steps."""
    torch.manual_seed(0)
    cfg = LayerQuantConfig(tile=8, mode=mode, gs=gs)
    layer = QuantLinear(37, 11, qcfg=cfg).double()
    _compare(layer, (torch.randn(2, 5, 37, dtype=torch.float64),), interpreter)


@pytest.mark.parametrize("mode,gs", [("apsq", 2), ("psq", 1)])
def test_linear_per_channel_psum_steps(interpreter, mode, gs):
    """``psum_granularity="channel"`` (``[n, N]`` PSUM steps) reaches the Triton kernel from the layer."""
    torch.manual_seed(0)
    cfg = LayerQuantConfig(tile=8, mode=mode, gs=gs, psum_granularity="channel")
    layer = QuantLinear(29, 7, qcfg=cfg).double()
    _compare(layer, (torch.randn(3, 29, dtype=torch.float64),), interpreter)
    assert layer.psum.per_channel and layer.psum.log2_scales.dim() == 2


def test_conv2d_im2col(interpreter):
    torch.manual_seed(0)
    layer = QuantConv2d(3, 6, 3, padding=1, qcfg=LayerQuantConfig(tile=8, mode="apsq", gs=2)).double()
    _compare(layer, (torch.randn(2, 3, 5, 4, dtype=torch.float64),), interpreter)


def test_attention_matmul_per_channel_psum_steps(interpreter):
    """Per-channel attention AV (``[n, N]`` steps) reaches the Triton kernel (issue 27 item 1: it took the
    reference loop on CUDA while per-channel Linear / Conv2d took Triton)."""
    torch.manual_seed(0)
    layer = QuantMatmul(12, LayerQuantConfig(tile=4, mode="apsq", gs=2, psum_granularity="channel"),
                        out_features=5).double()
    a = torch.randn(2, 3, 6, 12, dtype=torch.float64)
    b = torch.randn(2, 3, 12, 5, dtype=torch.float64)
    _compare(layer, (a, b), interpreter)
    assert layer.psum.per_channel


def test_attention_matmul_batches(interpreter):
    torch.manual_seed(0)
    layer = QuantMatmul(12, LayerQuantConfig(tile=4, mode="apsq", gs=2)).double()
    a = torch.randn(2, 3, 6, 12, dtype=torch.float64)
    b = torch.randn(2, 3, 12, 5, dtype=torch.float64)
    _compare(layer, (a, b), interpreter)
