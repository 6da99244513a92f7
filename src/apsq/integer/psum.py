"""Bit-exact integer PSUM accumulation: int tile sums, power-of-two exponents, shifts only.

This is the golden model of the hardware (``docs/apsq-method.md`` section 4). Tile sums ``T_i`` are
integers in units of ``s_x * s_w``; step ``i``'s PSUM step is ``s_i = 2^(e_i) * s_x * s_w``.
Quantizing is an arithmetic right shift by ``e_i`` with round half up and a clamp (a left shift
when ``e_i < 0``); dequantizing a stored code is a left shift. To keep every intermediate an
integer when exponents are negative, values are carried with ``F = max(0, -min_i e_i)`` fraction
bits: ``v_F = v * 2^F``, and quantizing shifts right by ``e_i + F >= 0``.

No floating point appears in the datapath; results are ``int64`` tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from apsq.errors import PSUM_MODES, APSQError, check_bits, check_choice, check_int
from apsq.psum.accumulate import closing_steps, lane_steps

__all__ = ["IntPSUM", "shift_round_clamp", "psum_accumulate_int"]


@dataclass(frozen=True)
class IntPSUM:
    """An integer result ``value = code * 2^exponent`` in units of ``s_x * s_w``.

    ``code``: int64 tensor; ``exponent``: int64 tensor broadcastable to ``code`` (per lane when the
    weight scales are per channel).
    """

    code: torch.Tensor
    exponent: torch.Tensor

    def to_float(self, unit: torch.Tensor | float = 1.0) -> torch.Tensor:
        """Dequantize: ``code * 2^exponent * unit`` (float64)."""
        return self.code.to(torch.float64) * torch.exp2(self.exponent.to(torch.float64)) * unit


def shift_round_clamp(v: torch.Tensor, shift: torch.Tensor, bits: int) -> torch.Tensor:
    """``clamp(floor(v / 2^shift + 1/2))`` for ``shift >= 0`` with integer ops only.

    Round half up as hardware does it: ``((v >> (shift - 1)) + 1) >> 1`` for ``shift >= 1``.
    """
    check_bits("bits", bits)
    qn, qp = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    shift = torch.as_tensor(shift, dtype=torch.int64)
    if bool((shift < 0).any()):
        raise APSQError("shift must be >= 0 (negative exponents are aligned by the caller)")
    rounded = torch.where(
        shift > 0,
        ((v >> torch.clamp(shift - 1, min=0)) + 1) >> 1,
        v,
    )
    return torch.clamp(rounded, qn, qp)


def _check_int_tensor(name: str, t: torch.Tensor) -> None:
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise APSQError(f"{name} must be an integer tensor, got dtype {t.dtype}")


def psum_accumulate_int(
    tile_sums: torch.Tensor,
    exponents: torch.Tensor | None = None,
    *,
    mode: str,
    gs: int = 1,
    bits: int = 8,
    acc_bits: int | None = None,
) -> IntPSUM:
    """Integer twin of :func:`apsq.functional.psum_accumulate`.

    Args:
        tile_sums: integer ``[n, *shape]``, exact tile sums ``T_i`` (units of ``s_x * s_w``).
        exponents: integer ``e_i``: ``[n]`` (one per tile step) or ``[n, *lane]`` per tile step and
            lane, ``lane`` broadcasting (right-aligned, as in the float path) against
            ``tile_sums.shape[1:]`` — e.g. ``[n, N]`` per output channel (a shift amount per lane).
        mode, gs, bits: as for the float path.
        acc_bits: ``mode="none"`` only: saturate the running sum to a signed ``acc_bits`` integer
            at every step (twin of :func:`apsq.psum.accumulate.saturating_accumulate`).

    Returns:
        :class:`IntPSUM`. For ``apsq`` the code is the INT ``bits`` code of ``A_{G-1}`` and the
        exponent ``e_{n-1}``; for ``psq`` the exact sum of the dequantized codes (exponent
        ``min e``); for ``none`` the exact sum (exponent 0).
    """
    check_choice("mode", mode, PSUM_MODES)
    check_int("gs", gs, lo=1)
    check_bits("bits", bits)
    _check_int_tensor("tile_sums", tile_sums)
    t = tile_sums.to(torch.int64)
    n = t.shape[0]
    if mode == "none":
        if acc_bits is None:
            return IntPSUM(t.sum(0), torch.zeros((), dtype=torch.int64))
        check_int("acc_bits", acc_bits, lo=2, hi=63)
        lo, hi = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
        acc = torch.zeros_like(t[0])
        for i in range(n):
            acc = torch.clamp(acc + t[i], lo, hi)
        return IntPSUM(acc, torch.zeros((), dtype=torch.int64))
    if exponents is None:
        raise APSQError(f"exponents are required for mode={mode!r}")
    _check_int_tensor("exponents", exponents)
    e = exponents.to(torch.int64)
    if e.dim() < 1 or e.shape[0] != n or e.dim() > t.dim():
        raise APSQError(f"exponents must be [n] or [n, *lane] with one entry per tile (n={n}), got shape "
                        f"{tuple(e.shape)} for tile sums {tuple(t.shape)}")
    e = lane_steps(e, t.dim())
    try:
        torch.broadcast_shapes(e.shape[1:], t.shape[1:])
    except RuntimeError:
        raise APSQError(f"exponents {tuple(exponents.shape)} do not broadcast against the tile sums "
                        f"{tuple(t.shape)} (lanes are matched from the last dim)") from None
    frac = torch.clamp(-e.amin(0), min=0)  # F per lane
    if mode == "psq":
        codes = shift_round_clamp(t << frac, e + frac, bits)
        emin = e.amin(0)
        return IntPSUM((codes << (e - emin)).sum(0), emin)
    closing = closing_steps(n, gs)
    acc = torch.zeros_like(t[0])  # A code * 2^(e+F), i.e. aligned value of A_{g-1}
    pending = torch.zeros_like(t[0])
    code = torch.zeros_like(t[0])
    for i in range(n):
        shift = e[i] + frac
        if closing[i]:
            code = shift_round_clamp((t[i] << frac) + pending + acc, shift, bits)
            acc = code << shift
            pending = torch.zeros_like(pending)
        else:
            pending = pending + (shift_round_clamp(t[i] << frac, shift, bits) << shift)
    return IntPSUM(code, e[n - 1])
