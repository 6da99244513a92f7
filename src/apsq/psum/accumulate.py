"""PSUM accumulation modes: ``none``, ``psq`` and ``apsq`` with group size ``gs``.

Reference implementation of ``docs/apsq-method.md`` section 3 — a plain loop over tile steps that the
fast paths are tested against. With ``Q_s(v) = s * clamp(floor(v/s + 1/2), qn, qp)``:

* ``none``: ``Y = sum_i Tp_i`` (exact INT32 accumulation, the baseline);
* ``psq``: ``Y = sum_i Q_{s_i}(Tp_i)`` — each tile quantized on its own;
* ``apsq``: groups of ``gs`` consecutive tiles, ``G = ceil(n / gs)``; a tile ``j`` that is not its
  group's last is stored as ``P_j = Q_{s_j}(Tp_j)``; the group's last tile ``l`` closes it with
  ``A_g = Q_{s_l}(Tp_l + sum_{j in g, j != l} P_j + A_{g-1})``, ``A_{-1} = 0``; ``Y = A_{G-1}``.
  With ``gs = 1`` this is the paper's Eq. (10), ``AP_i = Q(Tp_i + alpha_{i-1} AP_{i-1})``.

Step sizes are per tile step (``scales [n]``: one shift per step for the whole PE-array output) or per
tile step *and* output lane (``scales [n, *lane]``, e.g. ``[n, N]`` for a Linear / matmul whose output
channel is the last dim, ``[n, Co, 1, 1]`` for a Conv2d's ``[B, Co, Ho, Wo]``: a shift amount per lane
in hardware, ``docs/per-channel.md``). ``lane`` broadcasts against ``partials.shape[1:]`` by the usual
(right-aligned) rules.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from apsq.errors import PSUM_MODES, APSQError, check_bits, check_choice, check_finite, check_int
from apsq.quant.ops import fake_quantize, is_power_of_two, qrange
from apsq.quant.search import best_pow2_exponent

__all__ = [
    "psum_accumulate",
    "calibrate_psum_exponents",
    "closing_steps",
    "validate_psum_args",
    "saturating_accumulate",
    "lane_steps",
]

StepAt = Callable[[int, torch.Tensor], torch.Tensor]
"""``step_at(i, v)``: the PSUM step of tile step ``i`` given the value ``v`` it quantizes."""


def closing_steps(n: int, gs: int) -> list[bool]:
    """``closing[i]`` is True when tile ``i`` is the last of its group (it runs the additive path)."""
    return [(i + 1) % gs == 0 or i == n - 1 for i in range(n)]


def validate_psum_args(
    partials: torch.Tensor, scales: torch.Tensor | None, mode: str, gs: int, bits: int, *, finite: bool = True
) -> None:
    """Shared argument checks of every accumulation implementation (``finite=False`` skips the NaN/Inf
    scan of ``partials``; the fused paths pass a zero-stride stand-in of the partials' shape)."""
    check_choice("mode", mode, PSUM_MODES)
    check_int("gs", gs, lo=1)
    check_bits("bits", bits)
    if partials.dim() < 1 or partials.shape[0] < 1:
        raise APSQError(f"partials must be [n, *shape] with n >= 1, got shape {tuple(partials.shape)}")
    if finite:
        check_finite("partials", partials)
    if mode == "none":
        return
    if scales is None:
        raise APSQError(f"scales are required for mode={mode!r}")
    n = partials.shape[0]
    lane = tuple(scales.shape[1:])
    if scales.dim() < 1 or scales.shape[0] != n or not _broadcasts(lane, tuple(partials.shape[1:])):
        raise APSQError(
            f"scales must be [n] (one step size per tile, n={n}) or [n, *lane] with lane broadcasting against "
            f"the output shape {tuple(partials.shape[1:])} (per-channel steps, e.g. [n, N]); got shape "
            f"{tuple(scales.shape)}"
        )
    if not bool(is_power_of_two(scales).all()):
        bad = scales.detach()[~is_power_of_two(scales)][:4].tolist()
        raise APSQError(f"scales must be positive powers of two (2^e, integer e); got {bad}")


def _broadcasts(lane: tuple[int, ...], out: tuple[int, ...]) -> bool:
    """Whether ``lane`` broadcasts against ``out`` without changing ``out``'s shape."""
    if len(lane) > len(out):
        return False
    return all(a in (1, b) for a, b in zip(reversed(lane), reversed(out)))


def lane_steps(scales: torch.Tensor, ndim: int) -> torch.Tensor:
    """``scales [n]`` or ``[n, *lane]`` reshaped to ``[n, 1, ..., *lane]`` with ``ndim`` dims in all, so
    that row ``i`` broadcasts against one tile ``partials[i]`` (``ndim = partials.dim()``)."""
    n = scales.shape[0]
    if scales.dim() == 1:
        return scales.reshape(n, *([1] * (ndim - 1)))
    return scales.reshape(n, *([1] * (ndim - scales.dim())), *scales.shape[1:])


def _accumulate(
    partials: torch.Tensor,
    step_at: StepAt,
    mode: str,
    gs: int,
    bits: int,
    observe: Callable[[torch.Tensor, torch.Tensor], None] | None,
) -> torch.Tensor:
    """The recursion of section 3, one tile step at a time (``psq``: no closing step, the sum of the
    stored codes; ``apsq``: groups of ``gs``). ``step_at(i, v)`` gives the step of tile ``i``."""
    n = partials.shape[0]
    closing = closing_steps(n, gs) if mode == "apsq" else [False] * n
    acc = torch.zeros_like(partials[0])  # A_{-1}
    pending = torch.zeros_like(partials[0])  # sum of the group's stored P_j (psq: of all tiles)
    for i in range(n):
        v = partials[i] + pending + acc if closing[i] else partials[i]
        s_i = step_at(i, v)
        if observe is not None:
            observe(v.detach(), s_i)
        if closing[i]:
            acc = fake_quantize(v, s_i, bits)
            pending = torch.zeros_like(pending)
        else:
            pending = pending + fake_quantize(v, s_i, bits)
    return acc if mode == "apsq" else pending


CHUNK_VALUES = 1 << 16
"""Output values per chunk of :func:`_accumulate_values` (256 KiB in float32: the running sums of a
chunk stay in the CPU's cache across the ``n`` tile steps)."""


@torch.no_grad()
def _accumulate_values(partials: torch.Tensor, steps: torch.Tensor, gs: int, bits: int) -> torch.Tensor:
    """``apsq`` values of :func:`_accumulate` without autograd: the same operations in the same order
    (``floor(v / s + 1/2)``, clamp, ``* s``; ``(Tp + pending) + A``), in place and in chunks along
    ``partials``' dim 1 (when the steps do not vary along it). ``steps``: ``[n]`` or ``lane_steps``-shaped."""
    qn, qp = qrange(bits)
    n = partials.shape[0]
    closing = closing_steps(n, gs)
    out = torch.empty_like(partials[0])
    if out.dim() == 0 or (steps.dim() > 1 and steps.shape[1] != 1):
        rows = out.shape[0] if out.dim() else 1
    else:
        rows = max(1, CHUNK_VALUES // max(1, out[0].numel()))

    def q_(v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return v.div_(s).add_(0.5).floor_().clamp_(qn, qp).mul_(s)

    for r0 in range(0, out.shape[0] if out.dim() else 1, rows):
        pc = partials[:, r0:r0 + rows] if out.dim() else partials
        acc = torch.zeros_like(pc[0])
        pending = torch.zeros_like(pc[0])
        for i in range(n):
            if closing[i]:
                acc = q_((pc[i] + pending).add_(acc), steps[i])
                pending.zero_()
            else:
                pending.add_(q_(pc[i].clone(), steps[i]))
        if out.dim():
            out[r0:r0 + rows] = acc
        else:
            out = acc
    return out


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
        scales: power-of-two PSUM step sizes ``s_i`` (ignored for ``none``): ``[n]`` per tile step, or
            ``[n, *lane]`` per tile step and output lane (``lane`` broadcasting against
            ``partials.shape[1:]``, e.g. ``[n, N]``).
        mode: ``"none" | "psq" | "apsq"``.
        gs: APSQ group size, ``>= 1``; may exceed ``n`` (one group, the last one short).
        bits: PSUM code width, 2..16.
        observe: optional callback ``observe(value, scale)`` called (without gradient) with every
            value that gets quantized and its step — used for saturation statistics.

    Differentiable: STE through every rounding, LSQ's gradient to ``scales`` (unscaled; modules
    apply LSQ's gradient scaling).

    Raises:
        APSQError: bad mode / gs / bits, scales of the wrong shape or not powers of two, NaN/Inf.
    """
    validate_psum_args(partials, scales, mode, gs, bits)
    if mode == "none":
        return partials.sum(0)
    assert scales is not None  # validate_psum_args refuses None for psq / apsq
    steps = scales.to(partials.dtype)
    if mode == "psq":
        s = lane_steps(steps, partials.dim())
        if observe is not None:
            observe(partials.detach(), s)
        return fake_quantize(partials, s, bits).sum(0)
    if steps.dim() > 1:
        steps = lane_steps(steps, partials.dim())
    if observe is None and not (torch.is_grad_enabled() and (partials.requires_grad or steps.requires_grad)):
        return _accumulate_values(partials, steps, gs, bits)  # evaluation: same values, in place, cache-sized
    return _accumulate(partials, lambda i, v: steps[i], mode, gs, bits, observe)


@torch.no_grad()
def calibrate_psum_exponents(
    partials: torch.Tensor,
    *,
    mode: str,
    gs: int = 1,
    bits: int = 8,
    channel_axis: int | None = None,
) -> torch.Tensor:
    """Greedy calibration of the PSUM exponents along the accumulation (running-sum statistics).

    Runs the reference recursion (float32) and gives step ``i`` the MSE-optimal power of two
    (:func:`apsq.quant.search.best_pow2_exponent`) for the value it actually quantizes: ``Tp_i`` for
    ``psq`` and for APSQ's pending tiles, ``Tp_l + sum P_j + A_{g-1}`` — built from the
    already-quantized history — for a group-closing tile.

    Args:
        partials: ``[n, *shape]`` tile partial sums.
        mode: ``"psq" | "apsq"``; gs, bits: as for :func:`psum_accumulate`.
        channel_axis: ``None``: one exponent per tile step (result ``[n]``); else the axis of
            ``partials[0]`` holding the output channel, counted from the end (``-1`` for Linear /
            matmul outputs, ``-3`` for Conv2d ``[B, Co, Ho, Wo]``): one exponent per step and
            channel (result ``[n, C]``).

    Returns:
        float32 integer-valued exponents ``e`` (``s_i = 2^e_i``); all-zero data gets ``e = 0``.
    """
    check_choice("mode", mode, ("psq", "apsq"))
    validate_psum_args(partials, torch.ones(max(1, partials.shape[0] if partials.dim() else 1)), mode, gs, bits)
    p = partials.detach().to(torch.float32)
    if channel_axis is not None:
        check_int("channel_axis", channel_axis, lo=-(p.dim() - 1), hi=-1)
    trail = [1] * (-channel_axis - 1) if channel_axis is not None else []
    exps: list[torch.Tensor] = []

    def choose(i: int, v: torch.Tensor) -> torch.Tensor:
        e = best_pow2_exponent(v, bits, channel_axis)
        exps.append(e)
        return torch.exp2(e).reshape(-1, *trail) if channel_axis is not None else torch.exp2(e)

    _accumulate(p, choose, mode, gs, bits, None)
    return torch.stack(exps)


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
