"""The PSUM quantizer module: one learned power-of-two step per tile step."""

from __future__ import annotations

import torch
from torch import nn

from apsq.errors import APSQError
from apsq.psum.accumulate import closing_steps, psum_accumulate
from apsq.quant.ops import fake_quantize, grad_scale, lsq_grad_factor, pow2_ste, qrange
from apsq.quant.search import best_pow2_exponent


class PSUMQuantizer(nn.Module):
    """Accumulates PSUM tiles with the configured mode, learning ``s_i = 2^round(log2_scales[i])``.

    Args:
        max_tiles: number of step sizes held (the layer's ``n``; for attention's AV matmul, whose K
            is the sequence length, the longest ``n`` expected — more are an error).
        mode, gs, bits: accumulation mode, APSQ group size, PSUM code width.
    """

    def __init__(self, max_tiles: int, mode: str = "apsq", gs: int = 2, bits: int = 8) -> None:
        super().__init__()
        qrange(bits)
        self.mode, self.gs, self.bits = mode, gs, bits
        self.log2_scales = nn.Parameter(torch.zeros(max_tiles))
        self.register_buffer("initialized", torch.tensor(mode == "none"))
        self.observe = None  # set by statistics tracking

    def extra_repr(self) -> str:
        return f"tiles={self.log2_scales.numel()}, mode={self.mode}, gs={self.gs}, bits={self.bits}"

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

    def forward(self, partials: torch.Tensor) -> torch.Tensor:
        """``partials [n, *shape]`` -> dequantized output ``[*shape]``."""
        n = partials.shape[0]
        if self.mode == "none":
            return psum_accumulate(partials, mode="none")
        self._check_n(n)
        if not bool(self.initialized):
            self.init_from(partials)
        log2_s = self.log2_scales[:n]
        if self.training and log2_s.requires_grad:
            log2_s = grad_scale(log2_s, lsq_grad_factor(partials[0].numel(), self.bits))
        return psum_accumulate(
            partials, pow2_ste(log2_s), mode=self.mode, gs=self.gs, bits=self.bits, observe=self.observe
        )

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
