"""PSUM accumulation modes: ``none``, ``psq`` and ``apsq`` with group size ``gs``.

Reference implementation of ``docs/apsq-method.md`` section 3 — a plain loop over tile steps that the
fast paths are tested against. With ``Q_s(v) = s * clamp(floor(v/s + 1/2), qn, qp)``:

* ``none``: ``Y = sum_i Tp_i`` (exact INT32 accumulation, the baseline);
* ``psq``: ``Y = sum_i Q_{s_i}(Tp_i)`` — each tile quantized on its own;
* ``apsq``: groups of ``gs`` consecutive tiles, ``G = ceil(n / gs)``; a tile ``j`` that is not its
  group's last is stored as ``P_j = Q_{s_j}(Tp_j)``; the group's last tile ``l`` closes it with
  ``A_g = Q_{s_l}(Tp_l + sum_{j in g, j != l} P_j + A_{g-1})``, ``A_{-1} = 0``; ``Y = A_{G-1}``.
  With ``gs = 1`` this is the paper's Eq. (10), ``AP_i = Q(Tp_i + alpha_{i-1} AP_{i-1})``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from apsq.errors import PSUM_MODES, APSQError, check_bits, check_choice, check_finite, check_int
from apsq.quant.ops import fake_quantize, is_power_of_two

__all__ = ["psum_accumulate", "closing_steps", "validate_psum_args", "saturating_accumulate"]


def closing_steps(n: int, gs: int) -> list[bool]:
    """``closing[i]`` is True when tile ``i`` is the last of its group (it runs the additive path)."""
    return [(i + 1) % gs == 0 or i == n - 1 for i in range(n)]


def validate_psum_args(
    partials: torch.Tensor, scales: torch.Tensor | None, mode: str, gs: int, bits: int
) -> None:
    """Shared argument checks of every accumulation implementation."""
    check_choice("mode", mode, PSUM_MODES)
    check_int("gs", gs, lo=1)
    check_bits("bits", bits)
    if partials.dim() < 1 or partials.shape[0] < 1:
        raise APSQError(f"partials must be [n, *shape] with n >= 1, got shape {tuple(partials.shape)}")
    check_finite("partials", partials)
    if mode == "none":
        return
    if scales is None:
        raise APSQError(f"scales are required for mode={mode!r}")
    n = partials.shape[0]
    if scales.dim() != 1 or scales.shape[0] != n:
        raise APSQError(
            f"scales must be a 1-D tensor with one step size per tile (n={n}), got shape "
            f"{tuple(scales.shape)}"
        )
    if not bool(is_power_of_two(scales).all()):
        bad = scales.detach()[~is_power_of_two(scales)][:4].tolist()
        raise APSQError(f"scales must be positive powers of two (2^e, integer e); got {bad}")


def psum_accumulate(
    partials: torch.Tensor,
    scales: torch.Tensor | None = None,
    *,
    mode: str,
    gs: int = 1,
    bits: int = 8,
    observe: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Accumulate PSUM tiles ``partials [n, *shape]`` into the dequantized output ``Y [*shape]``.

    Args:
        partials: float tile partial sums ``Tp_0 .. Tp_{n-1}``.
        scales: 1-D tensor of ``n`` power-of-two PSUM step sizes ``s_i`` (ignored for ``none``).
        mode: ``"none" | "psq" | "apsq"``.
        gs: APSQ group size, ``>= 1``; may exceed ``n`` (one group, the last one short).
        bits: PSUM code width, 2..16.
        observe: optional callback ``observe(value, scale)`` called (without gradient) with every
            value that gets quantized and its step — used for saturation statistics.

    Differentiable: STE through every rounding, LSQ's gradient to ``scales`` (unscaled; modules
    apply LSQ's gradient scaling).
    """
    validate_psum_args(partials, scales, mode, gs, bits)
    if mode == "none":
        return partials.sum(0)
    n = partials.shape[0]
    if mode == "psq":
        s = scales.to(partials.dtype).reshape(n, *([1] * (partials.dim() - 1)))
        if observe is not None:
            observe(partials.detach(), s)
        return fake_quantize(partials, s, bits).sum(0)
    closing = closing_steps(n, gs)
    acc = torch.zeros_like(partials[0])  # A_{-1}
    pending = torch.zeros_like(partials[0])  # sum of the group's stored P_j
    for i in range(n):
        s_i = scales[i].to(partials.dtype)
        v = partials[i] + pending + acc if closing[i] else partials[i]
        if observe is not None:
            observe(v.detach(), s_i)
        if closing[i]:
            acc = fake_quantize(v, s_i, bits)
            pending = torch.zeros_like(pending)
        else:
            pending = pending + fake_quantize(v, s_i, bits)
    return acc


def saturating_accumulate(partials: torch.Tensor, unit: torch.Tensor, acc_bits: int) -> torch.Tensor:
    """Baseline with a narrow accumulator: ``A_i = clamp(A_{i-1} + Tp_i, -2^(B-1) u, (2^(B-1) - 1) u)``.

    Models INT ``B`` PSUM storage (``B = acc_bits``) that saturates, never wraps, at every tile step;
    ``unit`` (``u = s_x * s_w``, broadcastable to ``partials[0]``) is the value of one integer LSB.
    With ``B >= 16 + log2(K)`` (INT8 operands) nothing can saturate and this equals ``mode="none"``.
    Gradient: identity where the running sum stays in range, zero where it saturates.
    """
    check_int("acc_bits", acc_bits, lo=2, hi=64)
    check_finite("partials", partials)
    unit = unit.to(partials.dtype)
    lo, hi = -(2.0 ** (acc_bits - 1)) * unit, (2.0 ** (acc_bits - 1) - 1) * unit
    acc = torch.zeros_like(partials[0])
    for i in range(partials.shape[0]):
        acc = torch.clamp(acc + partials[i], lo, hi)
    return acc
