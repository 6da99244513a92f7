"""Input validation with messages that name the parameter and what is allowed."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import yaml

BITS_MIN, BITS_MAX = 2, 16
PSUM_MODES = ("none", "psq", "apsq")


class APSQError(ValueError):
    """A parameter, file or tensor that apsq cannot accept; the message says what is allowed."""


class NonFiniteInputError(APSQError):
    """NaN or Inf reached a quantized layer."""


def check_int(name: str, value: object, *, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` must be an int (not bool) within ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise APSQError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        lo_s = "-inf" if lo is None else str(lo)
        hi_s = "inf" if hi is None else str(hi)
        raise APSQError(f"{name} must be in [{lo_s}, {hi_s}], got {value}")
    return value


def check_bits(name: str, bits: object, lo: int = BITS_MIN, hi: int = BITS_MAX) -> int:
    """Bit widths are integers in ``[2, 16]`` unless a caller narrows the range."""
    return check_int(name, bits, lo=lo, hi=hi)


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """``value`` must be one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise APSQError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value  # type: ignore[return-value]


def check_finite(name: str, x: torch.Tensor) -> torch.Tensor:
    """Raise :class:`NonFiniteInputError` if ``x`` holds NaN or Inf."""
    if not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise NonFiniteInputError(
            f"{name} contains non-finite values ({n_nan} NaN, {n_inf} Inf of {x.numel()}); "
            "quantized layers accept finite inputs only"
        )
    return x


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse the YAML file ``path``; a missing file or bad YAML raises :class:`APSQError` naming ``what``."""
    p = Path(path)
    if not p.is_file():
        raise APSQError(f"{what} {str(p)!r} does not exist")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise APSQError(f"{what} {str(p)!r} is not valid YAML: {exc}") from None
