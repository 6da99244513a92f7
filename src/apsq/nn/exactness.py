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

import torch

from apsq.errors import APSQError

__all__ = ["SIGNIFICAND_BITS", "exact_dtype", "fits", "psum_bound_bits"]

SIGNIFICAND_BITS = {torch.float16: 11, torch.bfloat16: 8, torch.float32: 24, torch.float64: 53}
"""Significand width (with the implicit bit) of each floating dtype."""


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
