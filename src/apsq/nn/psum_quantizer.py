"""The PSUM quantizer module: one learned power-of-two step per tile step."""

from __future__ import annotations

import torch
from torch import nn

from apsq.errors import APSQError, check_choice
from apsq.psum.accumulate import closing_steps, psum_accumulate
from apsq.psum.fused import conv2d_psum, linear_psum, matmul_psum, psum_accumulate_fused
from apsq.psum.tiling import conv2d_partials, linear_partials, matmul_partials
from apsq.quant.ops import fake_quantize, grad_scale, lsq_grad_factor, pow2_ste, qrange
from apsq.quant.search import best_pow2_exponent


class PSUMQuantizer(nn.Module):
    """Accumulates PSUM tiles with the configured mode, learning ``s_i = 2^round(log2_scales[i])``.

    Args:
        max_tiles: number of step sizes held (the layer's ``n``; for attention's AV matmul, whose K
            is the sequence length, the longest ``n`` expected — more are an error).
        mode, gs, bits: accumulation mode, APSQ group size, PSUM code width.
        impl: ``"fused"`` (default: :mod:`apsq.psum.fused`, chunked kernel with a hand-written
            backward) or ``"reference"`` (the plain loop of :mod:`apsq.psum.accumulate`). Both give
            the same values and gradients; the attribute can be changed at any time.
    """

    IMPLS = ("fused", "reference")

    def __init__(self, max_tiles: int, mode: str = "apsq", gs: int = 2, bits: int = 8, impl: str = "fused") -> None:
        super().__init__()
        qrange(bits)
        check_choice("impl", impl, self.IMPLS)
        self.mode, self.gs, self.bits, self.impl = mode, gs, bits, impl
        self.log2_scales = nn.Parameter(torch.zeros(max_tiles))
        self.register_buffer("initialized", torch.tensor(mode == "none"))
        self.observe = None  # set by statistics tracking

    def extra_repr(self) -> str:
        return f"tiles={self.log2_scales.numel()}, mode={self.mode}, gs={self.gs}, bits={self.bits}, impl={self.impl}"

    def _check_n(self, n: int) -> None:
        if n > self.log2_scales.numel():
            raise APSQError(
                f"this layer has PSUM step sizes for at most {self.log2_scales.numel()} tiles, got n={n} "
                "(a longer sequence than the quantizer was built for: raise max_tiles)"
            )

    def scales(self, n: int) -> torch.Tensor:
        """The first ``n`` power-of-two steps, detached."""
        return torch.exp2(torch.floor(self.log2_scales.detach()[:n] + 0.5))

    def exponents(self, n: int) -> torch.Tensor:
        """Integer exponents ``e_i`` (int64) of the first ``n`` steps."""
        return torch.floor(self.log2_scales.detach()[:n] + 0.5).to(torch.int64)

    def _steps(self, n: int, numel: int) -> torch.Tensor:
        """The first ``n`` steps as a differentiable tensor (STE rounding, LSQ gradient scaling)."""
        self._check_n(n)
        log2_s = self.log2_scales[:n]
        if self.training and log2_s.requires_grad:
            log2_s = grad_scale(log2_s, lsq_grad_factor(numel, self.bits))
        return pow2_ste(log2_s)

    def _use_fused(self) -> bool:
        impl = getattr(self, "impl", "fused")  # modules pickled before ``impl`` existed
        check_choice("impl", impl, self.IMPLS)
        return impl == "fused"

    def _operand_path(self) -> bool:
        """Whether :meth:`linear` / :meth:`conv2d` / :meth:`matmul` can skip the partials: the fused
        implementation, steps already initialised (initialisation needs the partials), PSUMs modelled."""
        return self.mode != "none" and self._use_fused() and bool(self.initialized)

    def forward(self, partials: torch.Tensor) -> torch.Tensor:
        """``partials [n, *shape]`` -> dequantized output ``[*shape]``."""
        n = partials.shape[0]
        if self.mode == "none":
            return psum_accumulate(partials, mode="none")
        self._check_n(n)
        if not bool(self.initialized):
            self.init_from(partials)
        fn = psum_accumulate_fused if self._use_fused() else psum_accumulate
        return fn(partials, self._steps(n, partials[0].numel()), mode=self.mode, gs=self.gs, bits=self.bits,
                  observe=self.observe)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, tile: int, x_step: torch.Tensor | None = None,
               w_step: torch.Tensor | None = None) -> torch.Tensor:
        """``self(linear_partials(x, weight, tile))`` — fused: without materialising the tiles.

        ``x_step`` / ``w_step``: the operands' quantization steps (scalar / per output row); with
        them the fused path computes the tile products from integer codes inside its kernel.
        """
        if not self._operand_path():
            return self(linear_partials(x, weight, tile))
        n = -(-x.shape[-1] // tile)
        self._check_n(n)
        numel = x.numel() // x.shape[-1] * weight.shape[0]
        return linear_psum(x, weight, self._steps(n, numel), tile, mode=self.mode, gs=self.gs, bits=self.bits,
                           observe=self.observe, x_step=x_step, w_step=w_step)

    def conv2d(self, x: torch.Tensor, weight: torch.Tensor, tile: int, stride: tuple[int, int],
               padding: tuple[int, int], dilation: tuple[int, int], groups: int,
               x_step: torch.Tensor | None = None, w_step: torch.Tensor | None = None) -> torch.Tensor:
        """``self(conv2d_partials(x, weight, tile, ...))`` — fused: im2col rows, tiles never materialised
        (``x_step`` / ``w_step`` as in :meth:`linear`)."""
        if not self._operand_path():
            return self(conv2d_partials(x, weight, tile, stride, padding, dilation, groups))
        co, cig, kh, kw = weight.shape
        n = -(-(cig * kh * kw) // tile)
        h = (x.shape[2] + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        w = (x.shape[3] + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        return conv2d_psum(x, weight, self._steps(n, x.shape[0] * co * h * w), tile, stride, padding, dilation,
                           groups, mode=self.mode, gs=self.gs, bits=self.bits, observe=self.observe,
                           x_step=x_step, w_step=w_step)

    def matmul(self, a: torch.Tensor, b: torch.Tensor, tile: int, a_step: torch.Tensor | None = None,
               b_step: torch.Tensor | None = None) -> torch.Tensor:
        """``self(matmul_partials(a, b, tile))`` — fused: with the operand steps, through the integer
        kernel without materialising the tiles."""
        if not self._operand_path():
            return self(matmul_partials(a, b, tile))
        n = -(-a.shape[-1] // tile)
        self._check_n(n)
        numel = a.numel() // a.shape[-1] * b.shape[-1]
        return matmul_psum(a, b, self._steps(n, numel), tile, mode=self.mode, gs=self.gs, bits=self.bits,
                           observe=self.observe, a_step=a_step, b_step=b_step)

    @torch.no_grad()
    def init_from(self, partials: torch.Tensor) -> None:
        """Calibrate the steps greedily along the accumulation (running-sum statistics).

        Step ``i`` gets the MSE-optimal power of two for the value it actually quantizes: ``Tp_i``
        for ``psq`` and for APSQ's pending tiles, ``Tp_l + sum P_j + A_{g-1}`` — the running sum
        built from the already-quantized history — for a group-closing tile.
        """
        n = partials.shape[0]
        self._check_n(n)
        p = partials.detach().to(torch.float32)
        closing = closing_steps(n, self.gs) if self.mode == "apsq" else [False] * n
        acc = torch.zeros_like(p[0])
        pending = torch.zeros_like(p[0])
        for i in range(n):
            v = p[i] + pending + acc if closing[i] else p[i]
            e = best_pow2_exponent(v, self.bits)
            self.log2_scales[i] = e
            q = fake_quantize(v, torch.exp2(e), self.bits)
            if closing[i]:
                acc, pending = q, torch.zeros_like(pending)
            else:
                pending = pending + q
        self.log2_scales[n:] = self.log2_scales[n - 1]  # longer inputs (attention AV) reuse the last step
        self.initialized.fill_(True)


def set_psum_impl(model: nn.Module, impl: str) -> int:
    """Switch every :class:`PSUMQuantizer` in ``model`` to ``impl`` (``fused`` | ``reference``); returns how many."""
    check_choice("impl", impl, PSUMQuantizer.IMPLS)
    count = 0
    for mod in model.modules():
        if isinstance(mod, PSUMQuantizer):
            mod.impl = impl
            count += 1
    return count
