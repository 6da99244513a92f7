"""Grouped / depthwise convolutions: all groups in one batched PSUM product (per-tensor steps) give the
reference's values bit for bit and its gradients (to float rounding of the summation order)."""

from __future__ import annotations

import pytest
import torch

from apsq.psum.accumulate import psum_accumulate
from apsq.psum.fused import conv2d_psum
from apsq.psum.tiling import conv2d_partials


@pytest.mark.parametrize("mode,gs", [("psq", 1), ("apsq", 1), ("apsq", 2), ("apsq", 3)])
@pytest.mark.parametrize("ci,co,groups,k,tile", [(16, 16, 16, 3, 4), (12, 24, 4, 3, 8), (48, 48, 3, 1, 8)])
def test_grouped_conv_equals_reference(mode, gs, ci, co, groups, k, tile):
    g = torch.Generator().manual_seed(ci + co + groups + k + gs)
    x = (torch.randint(-8, 8, (2, ci, 5, 5), generator=g) / 4.0).requires_grad_()
    w = (torch.randint(-8, 8, (co, ci // groups, k, k), generator=g) / 8.0).requires_grad_()
    n = -(-(ci // groups * k * k) // tile)
    scales = torch.full((n,), 2.0 ** -2).requires_grad_()
    args = ((1, 1), (k // 2, k // 2), (1, 1), groups)
    y = conv2d_psum(x, w, scales, tile, *args, mode=mode, gs=gs, bits=8)
    ref = psum_accumulate(conv2d_partials(x, w, tile, *args), scales, mode=mode, gs=gs, bits=8)
    assert torch.equal(y, ref)
    up = torch.randn(y.shape, generator=g)
    grads = torch.autograd.grad((y * up).sum(), (x, w, scales))
    ref_grads = torch.autograd.grad((ref * up).sum(), (x, w, scales))
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)  # step-size sums: another order
