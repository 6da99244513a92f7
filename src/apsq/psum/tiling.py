"""Tiling of a matmul's reduction dimension K into PE-array steps.

A PE array reduces ``tile`` elements of K per step, so a reduction of length K runs in
``n = ceil(K / tile)`` steps; step ``i`` covers ``K[i*tile : (i+1)*tile]`` and yields the partial sum
(PSUM) tile ``Tp_i``. The last step is zero-padded when ``tile`` does not divide K.

Convolutions are lowered with im2col (:func:`torch.nn.functional.unfold`): the reduction index of a
``Conv2d`` with ``Ci/groups`` input channels and a ``kh x kw`` kernel is ``k = (c * kh + u) * kw + v``
(channel-major, then kernel row, then kernel column) — the order of ``weight.reshape(Co, -1)``.
Grouped convolutions reduce within each group (``K = Ci/groups * kh * kw``); a depthwise conv has
``K = kh * kw`` and usually fits one tile.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from apsq.errors import APSQError
from apsq.kernels.plan import num_tiles, pad_to_tiles  # the tiling of K, shared with the kernels

__all__ = ["num_tiles", "pad_to_tiles", "linear_partials", "conv2d_partials", "conv2d_im2col", "matmul_partials"]


def linear_partials(x: torch.Tensor, weight: torch.Tensor, tile: int) -> torch.Tensor:
    """PSUM tiles of ``x @ weight.T`` along K: returns ``[n, *x.shape[:-1], N]``.

    ``x``: ``[..., K]``, ``weight``: ``[N, K]``. ``partials.sum(0)`` equals the matmul (up to float
    summation order; exactly, for quantized operands whose products are exact).
    """
    if x.shape[-1] != weight.shape[-1]:
        raise APSQError(
            f"x has K={x.shape[-1]} input features but weight has K={weight.shape[-1]} (weight shape "
            f"{tuple(weight.shape)}); they must match"
        )
    n = num_tiles(x.shape[-1], tile)
    lead = x.shape[:-1]
    xt = pad_to_tiles(x.reshape(-1, x.shape[-1]), tile).reshape(-1, n, tile).transpose(0, 1)  # [n, M, t]
    wt = pad_to_tiles(weight, tile).reshape(weight.shape[0], n, tile).permute(1, 2, 0)  # [n, t, N]
    return torch.bmm(xt, wt).reshape(n, *lead, weight.shape[0])


def conv2d_im2col(
    x: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[torch.Tensor, tuple[int, int]]:
    """im2col columns ``[B, Ci*kh*kw, L]`` (reduction order ``(c, u, v)``) and the output size.

    Integer inputs (codes) are moved through float64 — im2col is pure data movement, and every int
    code below 2^53 is carried exactly — and come back as the same integer dtype.
    """
    if x.dim() != 4:
        raise APSQError(f"Conv2d input must be [B, C, H, W], got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        cols, hw = conv2d_im2col(x.to(torch.float64), kernel_size, stride, padding, dilation)
        return cols.to(x.dtype), hw
    cols = F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)
    h = (x.shape[2] + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1) // stride[0] + 1
    w = (x.shape[3] + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1
    return cols, (h, w)


def conv2d_partials(
    x: torch.Tensor,
    weight: torch.Tensor,
    tile: int,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> torch.Tensor:
    """PSUM tiles of a Conv2d (no bias) along K: returns ``[n, B, Co, Ho, Wo]``.

    ``weight``: ``[Co, Ci/groups, kh, kw]``; the reduction of each group is tiled separately, with the
    same number of steps ``n = ceil(Ci/groups * kh * kw / tile)`` for every group.
    """
    co, cig, kh, kw = weight.shape
    if x.shape[1] != cig * groups:
        raise APSQError(
            f"Conv2d input has {x.shape[1]} channels, weight expects Ci = {cig} x groups {groups}"
        )
    cols, (h, w) = conv2d_im2col(x, (kh, kw), stride, padding, dilation)  # [B, G*Kg, L]
    b, _, length = cols.shape
    kg = cig * kh * kw
    cog = co // groups
    cols = cols.reshape(b, groups, kg, length).permute(1, 0, 3, 2)  # [G, B, L, Kg]
    wg = weight.reshape(groups, cog, kg)
    parts = [linear_partials(cols[g], wg[g], tile) for g in range(groups)]  # each [n, B, L, Cog]
    p = torch.stack(parts, dim=3)  # [n, B, L, G, Cog]
    n = p.shape[0]
    return p.reshape(n, b, length, co).transpose(2, 3).reshape(n, b, co, h, w)


def matmul_partials(a: torch.Tensor, b: torch.Tensor, tile: int) -> torch.Tensor:
    """PSUM tiles of ``a @ b`` along K: ``a [..., M, K]``, ``b [..., K, N]`` -> ``[n, ..., M, N]``."""
    k = a.shape[-1]
    n = num_tiles(k, tile)
    ap = pad_to_tiles(a, tile).reshape(*a.shape[:-1], n, tile)  # [..., M, n, t]
    bp = pad_to_tiles(b.transpose(-1, -2), tile).reshape(*b.shape[:-2], b.shape[-1], n, tile)  # [..., N, n, t]
    return torch.einsum("...mnt,...knt->n...mk", ap, bp)
