"""The integer kernel's autograd Function (moved here from ``apsq/psum/fused_int.py``, beside its kernel):
PSUM accumulation with the tile products computed from operand codes.

``y[b] = PSUM-accumulate(x[b] @ w[b].T tiles)`` for B stacked products (B = 1 for Linear / Conv2d,
batch x heads for attention), where ``x = cx * sx`` and ``w = cw * sw`` are fake-quantized with
power-of-two steps. The C kernel (:mod:`apsq.kernels.int_gemm`) computes each tile's partial sum in
integer arithmetic inside the accumulation (exact, hence bit-identical to the reference), and its
backward as documented in ``docs/performance.md``:

* ``grad_x = g @ W``, ``grad_W = g^T @ x`` as full GEMMs, as if every tile received ``g``;
* one kernel pass for the LSQ step-size gradients (float64) which, chunk of rows by chunk of rows,
  records the zero-gradient tiles of the chunk's outputs and subtracts their terms from the operand
  gradients (the tile bits of all outputs never exist together: issue 26 A).

Saved for backward: the operands (a matmul keeps them anyway) and ``last_bad``, one small integer
per output; the backward kernel packs the codes from the operands (no int16 copy).
"""

from __future__ import annotations

import torch

from apsq.kernels import int_gemm as _cgemm
from apsq.kernels.autograd import first_order_only
from apsq.kernels.plan import pad_to_tiles

__all__ = ["int_operands", "int_gemm_psum"]


def int_operands(x2: torch.Tensor, w2: torch.Tensor, tile: int, steps: tuple[torch.Tensor, torch.Tensor] | None,
                 batch: int = 1) -> _cgemm.IntOperands | None:
    """The kernel's operands (:func:`apsq.kernels.int_gemm.int_operands`), or None when the integer
    path does not apply (``steps`` None, inexact codes, kernel unavailable)."""
    if steps is None:
        return None
    return _cgemm.int_operands(x2.detach(), w2.detach(), tile, steps[0], steps[1], batch=batch)


def _steps(scales: torch.Tensor) -> torch.Tensor:
    """The PSUM steps as a contiguous float64 tensor: ``[n]`` per tensor, ``[n, N]`` per channel flattened
    row-major (passed to the kernel by pointer: no Python floats for thousands of steps)."""
    return scales.detach().to(torch.float64).reshape(-1).contiguous()


class _IntGemmPsum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x3, w3, scales, tile: int, plan, steps, ops):  # noqa: D102
        b, m, _ = x3.shape
        n_out = w3.shape[1]
        out = torch.empty(b, m, n_out, dtype=x3.dtype)
        last_bad = None if plan.mode == "psq" else torch.empty(b, m, n_out, dtype=plan.bad_dtype)
        _cgemm.forward(ops, _steps(scales), plan, out, last_bad)
        ctx.tile, ctx.plan, ctx.steps = tile, plan, steps
        ctx.save_for_backward(x3, w3, scales, last_bad)
        return out

    @staticmethod
    @first_order_only
    def backward(ctx, grad_out):  # noqa: D102
        x3, w3, scales, last_bad = ctx.saved_tensors
        tile, plan = ctx.tile, ctx.plan
        b, m, k = x3.shape
        n_out = w3.shape[1]
        need = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        x2, w2 = x3.detach().reshape(b * m, k), w3.detach().reshape(b * n_out, k)
        s = _steps(scales)
        g = grad_out.to(x3.dtype).contiguous()
        xp = pad_to_tiles(x2, tile).contiguous()
        wp = pad_to_tiles(w2, tile).contiguous()
        kt = xp.shape[1]
        gxp = gwp = None
        if b == 1:
            gxp = torch.mm(g[0], wp) if need[0] else None
            gwp = torch.mm(g[0].t(), xp) if need[1] else None
        else:
            gxp = torch.bmm(g, wp.view(b, n_out, kt)).view(b * m, kt) if need[0] else None
            gwp = torch.bmm(g.transpose(1, 2), xp.view(b, m, kt)).view(b * n_out, kt) if need[1] else None
        x_step, w_step = ctx.steps
        grad_s, _ = _cgemm.backward(xp, wp, b, tile, x_step, w_step, s, plan, g, last_bad, gxp, gwp)
        gx = gxp[:, :k].reshape(b, m, k) if gxp is not None else None  # computed iff needed
        gw = gwp[:, :k].reshape(b, n_out, k) if gwp is not None else None
        return gx, gw, grad_s.reshape(scales.shape).to(scales.dtype), None, None, None, None


def int_gemm_psum(x3: torch.Tensor, w3: torch.Tensor, scales: torch.Tensor, tile: int, plan, steps) -> torch.Tensor | None:
    """``[B, M, N]`` PSUM-accumulated ``x3 [B, M, K] @ w3 [B, N, K]^T`` through the integer kernel, or
    None when it does not apply (steps missing, operands not exact codes, kernel unavailable); the
    dispatcher (:func:`apsq.kernels.dispatch.use_int_gemm`) decides whether to try it.
    ``steps = (x_step, w_step)``: one activation step, one weight step per row of ``w3[b]`` or one."""
    if steps is None:
        return None
    b, m, k = x3.shape
    ops = int_operands(x3.reshape(b * m, k), w3.reshape(-1, k), tile, steps, b)
    if ops is None:
        return None
    return _IntGemmPsum.apply(x3, w3, scales, tile, plan, steps, ops)
