"""One-pass LSQ fake quantization (C, ``csrc/lsq*.c``) with a hand-written backward.

:func:`lsq_fake_quantize` computes what :func:`apsq.quant.ops.fake_quantize` computes — the same
values; the gradient to ``x`` bit for bit (``g`` inside the range, 0 where clamped); LSQ's gradient
to the step (Esser et al., ICLR 2020) up to summation order (summed in float64) — in one pass forward
and one backward, instead of autograd through the division, STE rounding, clamp and multiplication
(about ten passes over the tensor). :meth:`apsq.quant.lsq.LSQQuantizer.forward` uses it where
:func:`applicable`.
"""

from __future__ import annotations

import ctypes

import torch

from apsq.errors import check_bits
from apsq.kernels import options
from apsq.kernels.autograd import first_order_only
from apsq.kernels.build import LazyLibrary, instantiate, read_source, warn_fallback_once
from apsq.kernels.cabi import Entry, doubles, scalar, tensor, threads
from apsq.kernels.steps import powers_of_two, reciprocals_exact, step_arrays

__all__ = ["available", "applicable", "lsq_fake_quantize", "FWD", "BWD"]

_XC = lambda a: a["C"] * a["inner"]  # noqa: E731
_C = lambda a: a["C"]  # noqa: E731

FWD = Entry("lsq_fwd", [tensor("x", "T", _XC), scalar("C", "long"), scalar("inner", "long"), doubles("sd", _C),
                        doubles("si", _C), scalar("qn"), scalar("qp"), tensor("y", "T", _XC), threads()])
"""``y = Q_s(x)`` for ``x [C, inner]`` with one step per channel."""
BWD = Entry("lsq_bwd", [tensor("x", "T", _XC), tensor("g", "T", _XC), scalar("C", "long"), scalar("inner", "long"),
                        doubles("sd", _C), doubles("si", _C), scalar("qn"), scalar("qp"),
                        tensor("gx", "T", _XC, optional=True), tensor("gs", torch.float64, _C), threads()],
            restype=ctypes.c_int)
"""``gx = g * m`` (optional) and ``gs [C]`` (double); returns 0 when out of memory."""


def _declare(lib) -> None:
    FWD.declare(lib)
    BWD.declare(lib)


_LIB = LazyLibrary("lsq_kernel", lambda: instantiate(read_source("lsq.c"), read_source("lsq_body.c")), _declare)


def available() -> bool:
    """True when the kernel compiled (or was cached) and loaded."""
    return _LIB.get() is not None


def _steps(step: torch.Tensor) -> torch.Tensor:
    """The steps as a flat float64 CPU tensor (thousands of per-channel steps: no Python floats)."""
    return step.detach().reshape(-1).to(device="cpu", dtype=torch.float64).contiguous()


def applicable(x: torch.Tensor, step: torch.Tensor, channel_axis: int | None) -> bool:
    """Whether the kernel computes ``fake_quantize(x, step)`` here: CPU float32/float64, a per-tensor
    step or one per channel along axis 0, power-of-two steps with exact reciprocals, the kernel built,
    the backend (``APSQ_KERNELS``) ``auto`` or ``c`` and :attr:`~apsq.kernels.options.Options.fused_lsq`."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    chosen = options.backend()
    if chosen not in ("auto", "c") or not options.current().fused_lsq:
        return False
    if step.device.type != "cpu" or x.dim() == 0:
        return False
    if channel_axis is None:
        if step.numel() != 1:
            return False
    elif channel_axis % x.dim() != 0 or step.numel() != x.shape[0]:
        return False
    if not available():
        if chosen == "c":
            from apsq.errors import APSQError

            raise APSQError(f"APSQ_KERNELS=c but the C LSQ kernel did not build: {_LIB.error}")
        warn_fallback_once(_LIB.error)
        return False
    steps = _steps(step)
    return powers_of_two(steps) and reciprocals_exact(steps, x.dtype)


def _qrange(bits: int) -> tuple[int, int]:
    check_bits("bits", bits)
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


class _LSQFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, step, bits: int, channels: int):  # noqa: D102
        qn, qp = _qrange(bits)
        xc = x.detach().contiguous()
        sd, si = step_arrays(_steps(step))
        y = torch.empty_like(xc)
        FWD(_LIB.require(), x=xc, C=channels, inner=xc.numel() // channels, sd=sd, si=si, qn=qn, qp=qp, y=y)
        ctx.bits, ctx.channels = bits, channels
        ctx.save_for_backward(xc, step)
        return y

    @staticmethod
    @first_order_only
    def backward(ctx, grad_out):  # noqa: D102
        xc, step = ctx.saved_tensors
        qn, qp = _qrange(ctx.bits)
        g = grad_out.to(xc.dtype).contiguous()
        gx = torch.empty_like(xc) if ctx.needs_input_grad[0] else None
        gs = torch.empty(ctx.channels, dtype=torch.float64)
        sd, si = step_arrays(_steps(step))
        ok = BWD(_LIB.require(), x=xc, g=g, C=ctx.channels, inner=xc.numel() // ctx.channels, sd=sd, si=si, qn=qn,
                 qp=qp, gx=gx, gs=gs)
        if not ok:
            raise MemoryError("the LSQ kernel could not allocate its partial sums")
        return gx, gs.to(step.dtype).reshape(step.shape), None, None


def lsq_fake_quantize(x: torch.Tensor, step: torch.Tensor, bits: int, channel_axis: int | None) -> torch.Tensor:
    """``fake_quantize(x, step, bits)`` in one pass (requires :func:`applicable`).

    ``step``: one power of two (per tensor, any shape with one element) or one per channel along
    axis 0 (any shape with ``x.shape[0]`` elements, e.g. ``[C, 1, ...]``); its gradient has its shape.
    """
    channels = 1 if channel_axis is None else x.shape[0]
    return _LSQFakeQuant.apply(x, step, bits, channels)
