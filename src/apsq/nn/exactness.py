"""When the float (fake-quant) path is exact, and in which dtype to accumulate so that it is.

The float path of a quantized layer computes with values that are all integer multiples of a power
of two: operand codes times ``2^ex`` / ``2^ew``, tile sums ``T_i`` in units ``u = 2^(ex + ew)``,
PSUM codes times ``2^e_i``. A float format with a ``p``-bit significand (24 for float32, 53 for
float64) represents every multiple of ``2^lo`` up to ``2^(p + lo)`` exactly; when every intermediate
of the accumulation stays within that, each operation is exact and the float path equals the
integer golden model (:func:`apsq.integer.integer_forward`) bit for bit before the final cast to
the layer's dtype. The bounds here are per output lane (per-channel weight steps) and cheap:

* ``none``: ``|Y| <= max_row sum_k |x_k/s_x| * max |w/s_w|`` units (data-dependent), or
  ``K * 2^(a-1) * 2^(w-1)`` (static); also every running sum of the narrow accumulator
  (``acc_bits``), which never exceeds ``sum_i |T_i|``;
* tiles: ``|T_i| <= tile * 2^(a-1) * 2^(w-1)`` units, each exact on its grid ``u``;
* ``psq``: the output ``sum_i c_i 2^e_i`` (``|c_i| <= 2^(b-1)``) lies on the grid ``2^e_min`` below
  ``n * 2^(b-1) * 2^e_max``; the rounding ``floor(T_i / s_i + 1/2)`` of a value that does not
  saturate needs ``b + max(1, e_max - log2 u_min)`` bits;
* ``apsq``: a closing step quantizes ``v = T_l + (pending codes) + A``, ``|v| <= T_max + (gs + 1)
  * 2^(b-1) * 2^e_max``, on the grid ``2^min(log2 u, e_min)`` (per lane); this bound also covers the
  rounding of every value that does not saturate.

:func:`exact_dtype` returns the layer's dtype where these bounds fit its significand, float64
where they fit 53 bits, and raises :class:`~apsq.errors.APSQError` otherwise (steps the float path
cannot reproduce).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from apsq.errors import APSQError

__all__ = ["SIGNIFICAND_BITS", "exact_dtype", "exact_sum_dtype", "fits", "psum_bound_bits", "psum_dtype",
           "static_sum_bits", "work_dtype"]

SIGNIFICAND_BITS = {torch.float16: 11, torch.bfloat16: 8, torch.float32: 24, torch.float64: 53}
"""Significand width (with the implicit bit) of each floating dtype."""


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a layer quantizes and accumulates in at least: float16 / bfloat16 layers use float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def fits(span_bits: float, dtype: torch.dtype) -> bool:
    """Whether every multiple of ``2^lo`` below ``2^(lo + span_bits)`` is exact in ``dtype``."""
    return span_bits <= SIGNIFICAND_BITS[dtype]


def psum_bound_bits(unit_e: torch.Tensor, psum_e: torch.Tensor, *, mode: str, gs: int, bits: int,
                    tile_units: float) -> float:
    """``log2(bound / grid)`` for the PSUM accumulation, maximised over output lanes.

    Args:
        unit_e: operand exponent ``ex + ew`` per lane (int tensor, any shape).
        psum_e: PSUM step exponents ``e_i`` (int tensor ``[n]`` or ``[n, C]``), absolute.
        mode: ``psq`` or ``apsq``; gs, bits: group size and PSUM code width.
        tile_units: bound on ``|T_i|`` in units ``u`` (``tile * 2^(a-1) * 2^(w-1)``).
    """
    u = unit_e.detach().reshape(-1).to(torch.float64)
    e = psum_e.detach().to(torch.float64)
    n = e.shape[0]
    e_max, e_min = float(e.max()), float(e.min())
    tile_bits = math.log2(tile_units)  # every T_i exact on its own grid
    if mode == "psq":  # sum_i c_i 2^e_i on the grid 2^e_min; rounding of T_i / s_i where it does not saturate
        sum_bits = math.log2(n * 2.0 ** (bits - 1)) + e_max - e_min
        round_bits = bits + max(1.0, e_max - float(u.min()))
        return max(tile_bits, sum_bits, round_bits)
    lo = torch.clamp(u, max=e_min)
    bound = tile_units * torch.exp2(u) + (gs + 1) * 2.0 ** (bits - 1) * 2.0**e_max
    return max(tile_bits, float((torch.log2(bound) - lo).max()))


def exact_dtype(span_bits: float, dtype: torch.dtype, layer: str) -> torch.dtype:
    """``dtype`` if ``span_bits`` fit its significand (float16/bfloat16 layers use float32 at least),
    else float64; an :class:`APSQError` naming ``layer`` if not even float64 is exact."""
    base = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    if fits(span_bits, base):
        return base
    if fits(span_bits, torch.float64):
        return torch.float64
    raise APSQError(
        f"layer {layer or '?'}: its quantization steps span {math.ceil(span_bits)} bits of one accumulation, "
        f"more than float64's 53; the float path cannot match the integer path. Re-calibrate the layer "
        f"(apsq.calibrate), lower its bits or tile, or leave it out with exclude=[{layer!r}]"
    )


def static_sum_bits(k: int, a_bits: int, b_bits: int) -> float:
    """``log2`` of the static bound ``K * 2^(a-1) * 2^(b-1)`` on every running sum of an exact (mode
    ``none``) reduction of length ``k``, in units ``u`` (every product of two codes is at most
    ``2^(a-1) * 2^(b-1)``)."""
    return math.log2(k) + a_bits - 1 + b_bits - 1


def exact_sum_dtype(dtype: torch.dtype, layer: str, *, k: int, a_bits: int, b_bits: int,
                    sum_bound: Callable[[torch.dtype], float]) -> torch.dtype:
    """Accumulation dtype of mode ``none`` (and its saturating ``acc_bits`` accumulator).

    The work dtype (:func:`work_dtype`) when the static bound (:func:`static_sum_bits`) fits float32
    or the work dtype is float64; else the bound ``sum_bound(work dtype)`` (data-dependent: a bound
    on every running sum of this input, in units ``u``, e.g. ``max_row sum_k |x codes| * 2^(w-1)``)
    decides (:func:`exact_dtype`).
    """
    dt = work_dtype(dtype)
    if fits(static_sum_bits(k, a_bits, b_bits), torch.float32) or dt == torch.float64:
        return dt
    return exact_dtype(math.log2(max(sum_bound(dt), 1.0)), dt, layer)


def psum_dtype(dtype: torch.dtype, layer: str, *, unit_e: torch.Tensor, psum_e: torch.Tensor, mode: str, gs: int,
               bits: int, tile: int, a_bits: int, b_bits: int) -> torch.dtype:
    """Accumulation dtype of mode ``psq`` / ``apsq``: :func:`psum_bound_bits` with the tile bound
    ``tile * 2^(a-1) * 2^(b-1)`` units, through :func:`exact_dtype`."""
    tile_units = float(tile) * 2.0 ** (a_bits - 1) * 2.0 ** (b_bits - 1)
    span = psum_bound_bits(unit_e, psum_e, mode=mode, gs=gs, bits=bits, tile_units=tile_units)
    return exact_dtype(span, dtype, layer)
