"""One-pass LSQ fake quantization (C, ``csrc/lsq*.c``) with a hand-written backward.

:func:`lsq_fake_quantize` computes what :func:`apsq.quant.ops.fake_quantize` computes — the same
values; the gradient to ``x`` bit for bit (``g`` inside the range, 0 where clamped); LSQ's gradient
to the step up to summation order (summed in float64) — in one pass forward and one backward,
instead of autograd through the division, STE rounding, clamp and multiplication (about ten passes
over the tensor). :meth:`apsq.quant.lsq.LSQQuantizer.forward` uses it where :func:`applicable`.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

from apsq._cbuild import DTYPE_SUFFIXES, LazyLibrary, dtype_suffix, instantiate, reciprocals_exact, step_arrays
from apsq.errors import check_choice
from apsq.quant.ops import is_power_of_two, qrange

__all__ = ["available", "applicable", "lsq_fake_quantize", "FUSED_LSQ"]

_CSRC = Path(__file__).with_name("csrc")
FUSED_LSQ = ("auto", "off")


def _source() -> str:
    return instantiate((_CSRC / "lsq.c").read_text(), (_CSRC / "lsq_body.c").read_text())


def _declare(lib: ctypes.CDLL) -> None:
    vp, lg, it = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    for suf in DTYPE_SUFFIXES:
        f = getattr(lib, f"lsq_fwd_{suf}")
        f.argtypes, f.restype = [vp, lg, lg, vp, vp, it, it, vp, it], None
        b = getattr(lib, f"lsq_bwd_{suf}")
        b.argtypes, b.restype = [vp, vp, lg, lg, vp, vp, it, it, vp, vp, it], it


_LIB = LazyLibrary("lsq_kernel", _source, _declare)


def available() -> bool:
    """True when the kernel compiled (or was cached) and loaded."""
    return _LIB.get() is not None


def _steps(step: torch.Tensor) -> list[float]:
    return step.detach().reshape(-1).to(torch.float64).tolist()


def applicable(x: torch.Tensor, step: torch.Tensor, channel_axis: int | None) -> bool:
    """Whether the kernel computes ``fake_quantize(x, step)`` here: CPU float32/float64, a per-tensor
    step or one per channel along axis 0, power-of-two steps with exact reciprocals, the kernel built
    and ``APSQ_FUSED_LSQ`` not ``off``."""
    mode = os.environ.get("APSQ_FUSED_LSQ", "auto")
    check_choice("APSQ_FUSED_LSQ", mode, FUSED_LSQ)
    if mode == "off" or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    if step.device.type != "cpu" or x.dim() == 0:
        return False
    if channel_axis is None:
        if step.numel() != 1:
            return False
    elif channel_axis % x.dim() != 0 or step.numel() != x.shape[0]:
        return False
    return available() and bool(is_power_of_two(step).all()) and reciprocals_exact(_steps(step), x.dtype)


class _LSQFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, step, bits: int, channels: int):  # noqa: D102
        qn, qp = qrange(bits)
        xc = x.detach().contiguous()
        sd, si = step_arrays(_steps(step))
        y = torch.empty_like(xc)
        getattr(_LIB.get(), f"lsq_fwd_{dtype_suffix(x.dtype)}")(
            xc.data_ptr(), channels, xc.numel() // channels, sd, si, qn, qp, y.data_ptr(), torch.get_num_threads())
        ctx.bits, ctx.channels = bits, channels
        ctx.save_for_backward(xc, step)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # noqa: D102
        xc, step = ctx.saved_tensors
        qn, qp = qrange(ctx.bits)
        g = grad_out.to(xc.dtype).contiguous()
        need_x = ctx.needs_input_grad[0]
        gx = torch.empty_like(xc) if need_x else None
        gs = torch.empty(ctx.channels, dtype=torch.float64)
        sd, si = step_arrays(_steps(step))
        ok = getattr(_LIB.get(), f"lsq_bwd_{dtype_suffix(xc.dtype)}")(
            xc.data_ptr(), g.data_ptr(), ctx.channels, xc.numel() // ctx.channels, sd, si, qn, qp,
            None if gx is None else gx.data_ptr(), gs.data_ptr(), torch.get_num_threads())
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
