"""Learned-step-size quantizer with power-of-two steps (LSQ, Esser et al. 2020)."""

from __future__ import annotations

import torch
from torch import nn

from apsq.kernels import lsq as _clsq
from apsq.quant.ops import (
    fake_quantize,
    grad_scale,
    lsq_grad_factor,
    pow2_ste,
    qrange,
    quantize_codes,
)
from apsq.quant.fp32_steps import STEP_DTYPE, Float32Steps
from apsq.quant.search import best_pow2_exponent


class LSQQuantizer(Float32Steps):
    """Signed ``bits``-bit fake quantizer with a learned power-of-two step ``s = 2^round(log2_scale)``.

    Args:
        bits: code width, 2..16.
        channel_axis: ``None`` for one step per tensor, else the axis holding channels (per-channel).
        num_channels: number of channels when ``channel_axis`` is set.

    The step is initialised on the first batch it sees (or by :meth:`init_from`) to the MSE-optimal
    power of two; afterwards ``log2_scale`` is a trainable parameter, rounded with the STE and trained
    with LSQ's gradient, scaled by ``1/sqrt(numel * qp)``. ``log2_scale`` is float32 whatever the
    module's dtype (:class:`~apsq.quant.fp32_steps.Float32Steps`): a dtype cast never moves an exponent.
    """

    _float32_steps = ("log2_scale",)
    initialized: torch.Tensor  # a bool buffer: the step was set from data

    def __init__(self, bits: int = 8, channel_axis: int | None = None, num_channels: int = 1) -> None:
        super().__init__()
        qrange(bits)  # validates
        self.bits = bits
        self.channel_axis = channel_axis
        n = num_channels if channel_axis is not None else 1
        self.log2_scale = nn.Parameter(torch.zeros(n, dtype=STEP_DTYPE))
        self.register_buffer("initialized", torch.tensor(False))

    def extra_repr(self) -> str:
        kind = "per-tensor" if self.channel_axis is None else f"per-channel(axis={self.channel_axis})"
        return f"bits={self.bits}, {kind}"

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        """Set the step to the MSE-optimal power of two for ``x``."""
        e = best_pow2_exponent(x, self.bits, self.channel_axis)
        self.log2_scale.copy_(e.reshape(self.log2_scale.shape).to(self.log2_scale))
        self.initialized.fill_(True)

    def _broadcast(self, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.channel_axis is None:
            return s.reshape(())
        shape = [1] * x.dim()
        shape[self.channel_axis % x.dim()] = -1
        return s.reshape(shape)

    def scale(self) -> torch.Tensor:
        """The current power-of-two step(s), detached, shape ``[C]`` or ``[1]``."""
        return torch.exp2(torch.floor(self.log2_scale.detach() + 0.5))

    def exponent(self) -> torch.Tensor:
        """Integer exponent(s) ``e`` with ``s = 2^e`` (int64)."""
        return torch.floor(self.log2_scale.detach() + 0.5).to(torch.int64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.init_from(x)
        log2_s: torch.Tensor = self.log2_scale
        if self.training and log2_s.requires_grad:
            log2_s = grad_scale(log2_s, lsq_grad_factor(x.numel() // log2_s.numel(), self.bits))
        step = self._broadcast(pow2_ste(log2_s), x).to(x.dtype)  # a bf16 / fp16 step is exact in x's dtype
        if _clsq.applicable(x, step, self.channel_axis):  # one pass each way, same values and gradients
            return _clsq.lsq_fake_quantize(x, step, self.bits, self.channel_axis)
        return fake_quantize(x, step, self.bits)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes of ``x`` (int64) under the current step."""
        return quantize_codes(x, self._broadcast(self.scale().to(x.dtype), x), self.bits)
