"""Choosing power-of-two step sizes from data (calibration)."""

from __future__ import annotations

import math

import torch

from apsq.quant.ops import qrange, round_half_up

CANDIDATES_BELOW_MAX = 8
"""How many exponents below the no-clipping one are tried (each halves the step)."""


def _reduce_dims(x: torch.Tensor, channel_axis: int | None) -> list[int]:
    if channel_axis is None:
        return list(range(x.dim()))
    axis = channel_axis % x.dim()
    return [d for d in range(x.dim()) if d != axis]


@torch.no_grad()
def best_pow2_exponent(x: torch.Tensor, bits: int, channel_axis: int | None = None) -> torch.Tensor:
    """Integer exponent ``e`` (as float tensor) minimising ``||Q_{2^e}(x) - x||^2``.

    Candidates run from ``ceil(log2(max|x| / qp))`` — the smallest step that never clips — down
    ``CANDIDATES_BELOW_MAX`` halvings, trading clipping against resolution. Per tensor (0-d result)
    or per channel along ``channel_axis`` (1-d result). All-zero data gets ``e = 0``.
    """
    qn, qp = qrange(bits)
    x = x.detach().to(torch.float32)
    dims = _reduce_dims(x, channel_axis)
    absmax = x.abs().amax(dim=dims) if dims else x.abs()
    e_top = torch.ceil(torch.log2(torch.clamp(absmax, min=torch.finfo(torch.float32).tiny) / qp))
    e_top = torch.where(absmax > 0, e_top, torch.zeros_like(e_top))
    best_err = torch.full_like(e_top, math.inf)
    best_e = e_top.clone()
    shape = [1] * x.dim()
    if channel_axis is not None:
        shape[channel_axis % x.dim()] = -1
    for k in range(CANDIDATES_BELOW_MAX + 1):
        e = e_top - k
        s = torch.exp2(e).reshape(shape) if channel_axis is not None else torch.exp2(e)
        err = ((torch.clamp(round_half_up(x / s), qn, qp) * s - x) ** 2)
        err = err.sum(dim=dims) if dims else err
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_e = torch.where(better, e, best_e)
    return best_e
