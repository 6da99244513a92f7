"""The PSUM quantizer module: one learned power-of-two step per tile step (and output channel)."""

from __future__ import annotations

import torch
from torch import nn

from apsq.errors import APSQError, check_choice, check_int
from apsq.nn.config import PSUM_GRANULARITIES
from apsq.psum.accumulate import calibrate_psum_exponents, lane_steps, psum_accumulate
from apsq.psum.fused import conv2d_psum, linear_psum, matmul_psum, psum_accumulate_fused
from apsq.psum.tiling import conv2d_partials, linear_partials, matmul_partials
from apsq.quant.fp32_steps import STEP_DTYPE, Float32Steps
from apsq.quant.ops import grad_scale, lsq_grad_factor, pow2_ste, qrange


class PSUMQuantizer(Float32Steps):
    """Accumulates PSUM tiles with the configured mode, learning ``s_i = 2^round(log2_scales[i])``.

    Args:
        max_tiles: number of step sizes held (the layer's ``n``; for attention's AV matmul, whose K
            is the sequence length, the longest ``n`` expected — more are an error).
        mode, gs, bits: accumulation mode, APSQ group size, PSUM code width.
        impl: ``"fused"`` (default: :mod:`apsq.psum.fused`, chunked kernel with a hand-written
            backward) or ``"reference"`` (the plain loop of :mod:`apsq.psum.accumulate`). Both give
            the same values and gradients; the attribute can be changed at any time.
        granularity: ``"tensor"`` (``log2_scales [max_tiles]``) or ``"channel"`` (``[max_tiles,
            channels]``: one step per tile step and output channel, a shift amount per lane in
            hardware; ``docs/per-channel.md``). Per-channel steps always run the reference loop
            (the fused kernels take per-tensor steps only).
        channels: number of output channels ``C`` (``"channel"`` only).
        channel_axis: where the channel lies in one output tile ``partials[i]``, counted from the end:
            ``-1`` for Linear / matmul outputs ``[..., N]``, ``-3`` for Conv2d ``[B, Co, Ho, Wo]``.

    ``log2_scales`` is float32 whatever the module's dtype (:class:`~apsq.quant.fp32_steps.Float32Steps`):
    a dtype cast never moves an exponent.

    Raises:
        APSQError: bad bits / impl / granularity / channels / channel_axis.
    """

    _float32_steps = ("log2_scales",)
    initialized: torch.Tensor  # a bool buffer: the steps were set from data
    IMPLS = ("fused", "reference")

    def __init__(self, max_tiles: int, mode: str = "apsq", gs: int = 2, bits: int = 8, impl: str = "fused",
                 granularity: str = "tensor", channels: int = 1, channel_axis: int = -1) -> None:
        super().__init__()
        qrange(bits)
        check_choice("impl", impl, self.IMPLS)
        check_choice("granularity", granularity, PSUM_GRANULARITIES)
        check_int("channels", channels, lo=1)
        check_int("channel_axis", channel_axis, hi=-1)
        self.mode, self.gs, self.bits, self.impl = mode, gs, bits, impl
        self.granularity, self.channel_axis = granularity, channel_axis
        shape = (max_tiles, channels) if granularity == "channel" else (max_tiles,)
        if mode == "none":  # never used by the forward: a buffer, so DDP sees no unused parameter
            self.register_buffer("log2_scales", torch.zeros(shape, dtype=STEP_DTYPE))
        else:
            self.log2_scales = nn.Parameter(torch.zeros(shape, dtype=STEP_DTYPE))
        self.register_buffer("initialized", torch.tensor(mode == "none"))
        self.observe = None  # set by statistics tracking

    @property
    def per_channel(self) -> bool:
        """Whether the steps are per tile step and output channel (``log2_scales [max_tiles, C]``)."""
        return getattr(self, "granularity", "tensor") == "channel"  # modules pickled before it existed

    @property
    def channels(self) -> int:
        """Number of output channels with their own steps (1 for per-tensor steps)."""
        return self.log2_scales.shape[1] if self.per_channel else 1

    def extra_repr(self) -> str:
        return (f"tiles={self.log2_scales.shape[0]}, mode={self.mode}, gs={self.gs}, bits={self.bits}, "
                f"impl={self.impl}, granularity={getattr(self, 'granularity', 'tensor')}, channels={self.channels}")

    def _check_n(self, n: int) -> None:
        if n > self.log2_scales.shape[0]:
            raise APSQError(
                f"this layer has PSUM step sizes for at most {self.log2_scales.shape[0]} tiles, got n={n} "
                "(a longer sequence than the quantizer was built for: raise max_tiles)"
            )

    def _check_channels(self, size: int) -> None:
        if self.per_channel and size != self.channels:
            raise APSQError(
                f"this layer has per-channel PSUM steps for {self.channels} output channels, got an output with "
                f"{size} along axis {self.channel_axis} (psum_granularity 'channel' needs a fixed output width)"
            )

    def scales(self, n: int) -> torch.Tensor:
        """The first ``n`` power-of-two steps, detached: ``[n]``, or ``[n, C]`` per channel."""
        return torch.exp2(torch.floor(self.log2_scales.detach()[:n] + 0.5))

    def exponents(self, n: int) -> torch.Tensor:
        """Integer exponents ``e_i`` (int64) of the first ``n`` steps: ``[n]``, or ``[n, C]`` per channel."""
        return torch.floor(self.log2_scales.detach()[:n] + 0.5).to(torch.int64)

    def lanes(self, t: torch.Tensor) -> torch.Tensor:
        """Per-step values ``[n]`` / ``[n, C]`` shaped to broadcast (right-aligned) against one output
        tile: ``[n]`` unchanged, ``[n, C]`` -> ``[n, C, 1, ...]`` with ``-channel_axis - 1`` trailing ones."""
        if not self.per_channel:
            return t
        return t.reshape(*t.shape, *([1] * (-self.channel_axis - 1)))

    def _steps(self, n: int, numel: int) -> torch.Tensor:
        """The first ``n`` steps as a differentiable tensor (STE rounding, LSQ gradient scaling; per
        channel, ``numel`` counts the values sharing one step: ``numel / C``). Shaped by :meth:`lanes`."""
        self._check_n(n)
        log2_s = self.log2_scales[:n]
        if self.training and log2_s.requires_grad:
            log2_s = grad_scale(log2_s, lsq_grad_factor(max(1, numel // self.channels), self.bits))
        return self.lanes(pow2_ste(log2_s))

    def _use_fused(self) -> bool:
        impl = getattr(self, "impl", "fused")  # modules pickled before ``impl`` existed
        check_choice("impl", impl, self.IMPLS)
        return impl == "fused"

    def _operand_path(self, per_channel_ok: bool = False) -> bool:
        """Whether :meth:`linear` / :meth:`conv2d` / :meth:`matmul` can skip the partials: the fused
        implementation, steps already initialised (initialisation needs the partials), PSUMs modelled,
        and per-tensor steps unless the caller takes per-channel ones (:meth:`linear`, :meth:`conv2d`,
        :meth:`matmul`: the integer C kernel, Triton, or the reference for other layouts)."""
        return (self.mode != "none" and self._use_fused() and (per_channel_ok or not self.per_channel)
                and bool(self.initialized))

    def forward(self, partials: torch.Tensor) -> torch.Tensor:
        """``partials [n, *shape]`` -> dequantized output ``[*shape]``."""
        n = partials.shape[0]
        if self.mode == "none":
            return psum_accumulate(partials, mode="none")
        self._check_n(n)
        if self.per_channel:
            self._check_channels(partials.shape[self.channel_axis])
        if not bool(self.initialized):
            self.init_from(partials)
        fn = psum_accumulate_fused if self._use_fused() else psum_accumulate  # the route table decides the rest
        return fn(partials, self._steps(n, partials[0].numel()), mode=self.mode, gs=self.gs, bits=self.bits,
                  observe=self.observe)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, tile: int, x_step: torch.Tensor | None = None,
               w_step: torch.Tensor | None = None) -> torch.Tensor:
        """``self(linear_partials(x, weight, tile))`` — fused: without materialising the tiles.

        ``x_step`` / ``w_step``: the operands' quantization steps (scalar / per output row); with
        them the fused path computes the tile products from integer codes inside its kernel.
        """
        if not self._operand_path(per_channel_ok=True):
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
        (``x_step`` / ``w_step`` as in :meth:`linear`; per-channel steps ``[n, Co, 1, 1]`` included)."""
        if not self._operand_path(per_channel_ok=True):
            return self(conv2d_partials(x, weight, tile, stride, padding, dilation, groups))
        co, cig, kh, kw = weight.shape
        n = -(-(cig * kh * kw) // tile)
        self._check_n(n)
        self._check_channels(co)
        h = (x.shape[2] + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        w = (x.shape[3] + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        return conv2d_psum(x, weight, self._steps(n, x.shape[0] * co * h * w), tile, stride, padding, dilation,
                           groups, mode=self.mode, gs=self.gs, bits=self.bits, observe=self.observe,
                           x_step=x_step, w_step=w_step)

    def matmul(self, a: torch.Tensor, b: torch.Tensor, tile: int, a_step: torch.Tensor | None = None,
               b_step: torch.Tensor | None = None) -> torch.Tensor:
        """``self(matmul_partials(a, b, tile))`` — fused: with the operand steps, through the integer
        kernel without materialising the tiles (per-channel steps ``[n, N]`` included: attention AV)."""
        if not self._operand_path(per_channel_ok=True):
            return self(matmul_partials(a, b, tile))
        n = -(-a.shape[-1] // tile)
        self._check_n(n)
        self._check_channels(b.shape[-1])
        numel = a.numel() // a.shape[-1] * b.shape[-1]
        return matmul_psum(a, b, self._steps(n, numel), tile, mode=self.mode, gs=self.gs, bits=self.bits,
                           observe=self.observe, a_step=a_step, b_step=b_step)

    @torch.no_grad()
    def init_from(self, partials: torch.Tensor) -> None:
        """Calibrate the steps greedily along the accumulation (running-sum statistics).

        Step ``i`` gets the MSE-optimal power of two for the value it actually quantizes: ``Tp_i``
        for ``psq`` and for APSQ's pending tiles, ``Tp_l + sum P_j + A_{g-1}`` — the running sum
        built from the already-quantized history — for a group-closing tile
        (:func:`apsq.psum.accumulate.calibrate_psum_exponents`, the reference recursion); per channel
        each output channel gets its own.
        """
        n = partials.shape[0]
        self._check_n(n)
        if self.per_channel:
            self._check_channels(partials.shape[self.channel_axis])
        axis = self.channel_axis if self.per_channel else None
        e = calibrate_psum_exponents(partials, mode=self.mode, gs=self.gs, bits=self.bits, channel_axis=axis)
        self.log2_scales[:n] = e.to(self.log2_scales.dtype)
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
