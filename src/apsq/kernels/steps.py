"""PSUM steps as the kernels take them, and when a kernel's ``x * (1/s)`` equals the reference's ``x / s``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["step_arrays", "reciprocals_exact", "powers_of_two", "is_power_of_two"]


def step_arrays(steps: Sequence[float] | torch.Tensor) -> tuple[list[float], list[float]] | tuple[torch.Tensor, torch.Tensor]:
    """``(s, 1/s)`` as two lists of Python floats (the kernels take them as ``double[n]``); for a tensor
    (thousands of per-channel steps: no Python floats), two contiguous float64 CPU tensors, flattened
    (``1/s`` rounded the same way as Python's)."""
    if isinstance(steps, torch.Tensor):
        sd = steps.detach().to(device="cpu", dtype=torch.float64).reshape(-1).contiguous()
        return sd, torch.reciprocal(sd)
    vals = [float(v) for v in steps]
    return vals, [1.0 / v for v in vals]


def reciprocals_exact(steps: Sequence[float] | torch.Tensor, dtype: torch.dtype) -> bool:
    """True when every step is positive and ``1/s`` is exactly representable in ``dtype``, so that
    ``x * (1/s)`` (the kernels) is the same number as ``x / s`` (the reference) for power-of-two
    steps (:func:`powers_of_two`)."""
    if isinstance(steps, torch.Tensor):
        s = steps.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        if not bool((s != 0).all()):
            return False
        inv = torch.reciprocal(s)
    else:
        try:
            inv = torch.tensor([1.0 / v for v in steps], dtype=torch.float64)
        except (OverflowError, ZeroDivisionError):
            return False
        s = torch.tensor(list(steps), dtype=torch.float64)
    back = inv.to(dtype).to(torch.float64)
    return bool((s > 0).all() and torch.isfinite(back).all() and (back == inv).all() and (inv * s == 1).all())


def powers_of_two(steps: Sequence[float] | torch.Tensor) -> bool:
    """True when every value is finite, positive and exactly ``2^e`` for an integer ``e`` (a tensor, e.g.
    thousands of per-row weight steps, in one vectorised pass)."""
    if isinstance(steps, torch.Tensor):
        return bool(is_power_of_two(steps).all())
    for v in steps:
        v = float(v)
        if not (math.isfinite(v) and v > 0 and math.frexp(v)[0] == 0.5):
            return False
    return True


def is_power_of_two(scale: torch.Tensor) -> torch.Tensor:
    """Element-wise: ``scale`` is finite, positive and exactly ``2^e`` for an integer ``e``."""
    s = scale.detach().to(torch.float64)
    ok = torch.isfinite(s) & (s > 0)
    mant, _ = torch.frexp(torch.where(ok, s, torch.ones_like(s)))
    return ok & (mant == 0.5)
