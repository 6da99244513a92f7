"""The PSUM quantizer module: accumulates a layer's tiles in every mode, learning one power-of-two step
per tile step (and output channel) where the mode quantizes PSUMs."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from apsq.errors import APSQError, check_choice, check_int
from apsq.nn.config import PSUM_GRANULARITIES
from apsq.nn.exactness import exact_sum_dtype, psum_dtype
from apsq.psum.accumulate import calibrate_psum_exponents, psum_accumulate, saturating_accumulate
from apsq.psum.fused import conv2d_psum, linear_psum, matmul_psum, psum_accumulate_fused
from apsq.psum.tiling import conv2d_partials, linear_partials, matmul_partials, num_tiles
from apsq.quant.fp32_steps import STEP_DTYPE, Float32Steps
from apsq.quant.ops import grad_scale, lsq_grad_factor, pow2_ste, qrange


class PSUMQuantizer(Float32Steps):
    """Accumulates a layer's PSUM tiles in its mode, learning ``s_i = 2^round(log2_scales[i])``.

    Every mode goes through here, so a quantized layer never branches on it: ``none`` is the exact
    sum (the plain product: INT32 accumulation), or -- with ``acc_bits`` -- the running sum saturating
    at a signed ``acc_bits`` integer after every tile step
    (:func:`apsq.psum.accumulate.saturating_accumulate`); ``psq`` / ``apsq`` quantize the PSUMs with the
    learned steps (:mod:`apsq.psum.fused`, or the reference loop). :meth:`work_dtype` says in which float
    dtype a layer's accumulation is exact (:mod:`apsq.nn.exactness`).

    Args:
        max_tiles: number of step sizes held (the layer's ``n``; for attention's AV matmul, whose K
            is the sequence length, the longest ``n`` expected — more are an error).
        mode, gs, bits: accumulation mode, APSQ group size, PSUM code width.
        impl: ``"fused"`` (default: :mod:`apsq.psum.fused`, chunked kernel with a hand-written
            backward) or ``"reference"`` (the plain loop of :mod:`apsq.psum.accumulate`). Both give
            the same values and gradients; the attribute can be changed at any time.
        granularity: ``"tensor"`` (``log2_scales [max_tiles]``) or ``"channel"`` (``[max_tiles,
            channels]``: one step per tile step and output channel, a shift amount per lane in
            hardware; ``docs/per-channel.md``). Both run the fused kernels (per-channel steps as
            ``[n, N]`` lanes; :func:`apsq.kernels.dispatch.route` picks the backend).
        channels: number of output channels ``C`` (``"channel"`` only).
        channel_axis: where the channel lies in one output tile ``partials[i]``, counted from the end:
            ``-1`` for Linear / matmul outputs ``[..., N]``, ``-3`` for Conv2d ``[B, Co, Ho, Wo]``.
        acc_bits: ``mode="none"`` only: width of the narrow accumulator that saturates (``None``: exact).

    ``log2_scales`` is float32 whatever the module's dtype (:class:`~apsq.quant.fp32_steps.Float32Steps`):
    a dtype cast never moves an exponent.

    Raises:
        APSQError: bad bits / impl / granularity / channels / channel_axis / acc_bits.
    """

    _float32_steps = ("log2_scales",)
    initialized: torch.Tensor  # a bool buffer: the steps were set from data
    IMPLS = ("fused", "reference")

    def __init__(self, max_tiles: int, mode: str = "apsq", gs: int = 2, bits: int = 8, impl: str = "fused",
                 granularity: str = "tensor", channels: int = 1, channel_axis: int = -1,
                 acc_bits: int | None = None) -> None:
        super().__init__()
        qrange(bits)
        check_choice("impl", impl, self.IMPLS)
        check_choice("granularity", granularity, PSUM_GRANULARITIES)
        check_int("channels", channels, lo=1)
        check_int("channel_axis", channel_axis, hi=-1)
        if acc_bits is not None:
            check_int("acc_bits", acc_bits, lo=2, hi=64)
            if mode != "none":
                raise APSQError(f"acc_bits models the narrow accumulator of mode 'none'; got mode={mode!r}")
        self.mode, self.gs, self.bits, self.impl = mode, gs, bits, impl
        self.acc_bits = acc_bits
        self.granularity, self.channel_axis = granularity, channel_axis
        shape = (max_tiles, channels) if granularity == "channel" else (max_tiles,)
        if mode == "none":  # never used by the forward: a buffer, so DDP sees no unused parameter
            self.register_buffer("log2_scales", torch.zeros(shape, dtype=STEP_DTYPE))
        else:
            self.log2_scales = nn.Parameter(torch.zeros(shape, dtype=STEP_DTYPE))
        self.register_buffer("initialized", torch.tensor(mode == "none"))
        self.observe: Callable[[torch.Tensor, torch.Tensor], None] | None = None  # set by statistics tracking

    @property
    def learns_steps(self) -> bool:
        """Whether the mode quantizes PSUMs (``psq`` / ``apsq``): the steps are learned and calibrated."""
        return self.mode != "none"

    @property
    def per_channel(self) -> bool:
        """Whether the steps are per tile step and output channel (``log2_scales [max_tiles, C]``)."""
        return getattr(self, "granularity", "tensor") == "channel"  # modules pickled before it existed

    @property
    def channels(self) -> int:
        """Number of output channels with their own steps (1 for per-tensor steps)."""
        return self.log2_scales.shape[1] if self.per_channel else 1

    def extra_repr(self) -> str:
        acc = "" if self._acc_bits() is None else f", acc_bits={self._acc_bits()}"
        return (f"tiles={self.log2_scales.shape[0]}, mode={self.mode}, gs={self.gs}, bits={self.bits}, "
                f"impl={self.impl}, granularity={getattr(self, 'granularity', 'tensor')}, channels={self.channels}"
                + acc)

    def _acc_bits(self) -> int | None:
        return getattr(self, "acc_bits", None)  # modules pickled before it existed: exact

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

    def _operand_path(self) -> bool:
        """Whether :meth:`linear` / :meth:`conv2d` / :meth:`matmul` hand the operands to :mod:`apsq.psum.fused`
        without materialising the tiles: the fused implementation and steps already initialised
        (initialisation needs the tiles). Per-tensor and per-channel steps alike -- the route table
        (:func:`apsq.kernels.dispatch.route`) picks the kernel for either. Mode ``none`` never asks: it
        is accumulated by :meth:`_exact_sum`."""
        return self._use_fused() and bool(self.initialized)

    def _exact_sum(self, product: Callable[[], torch.Tensor], partials: Callable[[], torch.Tensor],
                   unit: Callable[[], torch.Tensor | None]) -> torch.Tensor:
        """Mode ``none``: ``product()`` (the exact reduction), or with ``acc_bits`` the tiles ``partials()``
        summed by a running sum that saturates at a signed ``acc_bits`` integer of value ``unit()`` each."""
        acc_bits = self._acc_bits()
        if acc_bits is None:
            return product()
        u = unit()
        if u is None:
            raise APSQError(f"acc_bits={acc_bits}: the saturating accumulator needs the operand steps "
                            "(x_step / w_step, a_step / b_step, or unit): the value of one integer LSB")
        return saturating_accumulate(partials(), u, acc_bits)

    @staticmethod
    def _unit(a_step: torch.Tensor | None, b_step: torch.Tensor | None, lane_dims: int) -> torch.Tensor | None:
        """``a_step * b_step`` (one, or one per output channel) as ``[C, 1 x lane_dims]``: one integer
        LSB, broadcasting against one output tile; ``None`` without both steps."""
        if a_step is None or b_step is None:
            return None
        return (a_step * b_step).reshape(-1, *([1] * lane_dims))

    def work_dtype(self, dtype: torch.dtype, layer: str, *, k: int, tile: int, a_bits: int, b_bits: int,
                   unit_exponent: Callable[[], torch.Tensor], sum_bound: Callable[[torch.dtype], float]
                   ) -> torch.dtype:
        """The float dtype in which a layer with input ``dtype`` accumulates exactly (:mod:`apsq.nn.exactness`).

        Args:
            dtype: the layer input's dtype; layer: its name (for the error).
            k, tile: the reduction length and the tile; a_bits, b_bits: the operands' code widths.
            unit_exponent: ``() -> ex + ew`` per output lane (int; psq / apsq).
            sum_bound: ``work dtype -> bound`` on every running sum of the exact reduction, in units
                ``u = s_a * s_b`` (mode ``none``; called only when the static bound does not fit float32).

        Raises:
            APSQError: not even float64 is exact (:func:`apsq.nn.exactness.exact_dtype`).
        """
        if not self.learns_steps:
            return exact_sum_dtype(dtype, layer, k=k, a_bits=a_bits, b_bits=b_bits, sum_bound=sum_bound)
        return psum_dtype(dtype, layer, unit_e=unit_exponent(), psum_e=self.exponents(num_tiles(k, tile)),
                          mode=self.mode, gs=self.gs, bits=self.bits, tile=tile, a_bits=a_bits, b_bits=b_bits)

    def forward(self, partials: torch.Tensor, unit: torch.Tensor | None = None) -> torch.Tensor:
        """``partials [n, *shape]`` -> dequantized output ``[*shape]``.

        ``unit``: mode ``none`` with ``acc_bits`` only: the value of one integer LSB (``s_a * s_b``,
        broadcastable to ``shape``); :class:`APSQError` if it is missing there."""
        n = partials.shape[0]
        if not self.learns_steps:
            return self._exact_sum(lambda: psum_accumulate(partials, mode="none"), lambda: partials, lambda: unit)
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
        if not self.learns_steps:
            return self._exact_sum(lambda: F.linear(x, weight), lambda: linear_partials(x, weight, tile),
                                   lambda: self._unit(x_step, w_step, 0))
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
        (``x_step`` / ``w_step`` as in :meth:`linear`; per-channel steps ``[n, Co, 1, 1]`` included)."""
        if not self.learns_steps:
            return self._exact_sum(
                lambda: F.conv2d(x, weight, None, stride=stride, padding=padding, dilation=dilation, groups=groups),
                lambda: conv2d_partials(x, weight, tile, stride, padding, dilation, groups),
                lambda: self._unit(x_step, w_step, 2))
        if not self._operand_path():
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
        if not self.learns_steps:
            return self._exact_sum(lambda: a @ b, lambda: matmul_partials(a, b, tile),
                                   lambda: self._unit(a_step, b_step, 0))
        if not self._operand_path():
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
