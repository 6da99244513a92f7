"""The static description of one PSUM accumulation that every backend receives, and the tiling of K."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from apsq.errors import PSUM_MODES, APSQError, check_bits, check_choice, check_int

__all__ = ["Plan", "num_tiles", "pad_to_tiles"]


def num_tiles(k: int, tile: int) -> int:
    """``n = ceil(K / tile)``, the number of reduction steps."""
    check_int("tile", tile, lo=1)
    check_int("K", k, lo=1)
    return math.ceil(k / tile)


def pad_to_tiles(x: torch.Tensor, tile: int) -> torch.Tensor:
    """Zero-pad the last dimension (K) of ``x`` up to a multiple of ``tile``."""
    k = x.shape[-1]
    pad = num_tiles(k, tile) * tile - k
    return F.pad(x, (0, pad)) if pad else x


@dataclass(frozen=True)
class Plan:
    """One accumulation (``docs/apsq-method.md`` section 3): ``mode`` (``psq`` / ``apsq``), ``n`` tiles,
    group size ``gs``, PSUM code width ``bits``; the groups as (first tile, closing tile).

    Raises APSQError for a bad mode, gs, bits, or more than 32766 groups (``last_bad`` is int16).
    """

    mode: str
    n: int
    gs: int
    bits: int

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, PSUM_MODES)
        check_int("n", self.n, lo=1)
        check_int("gs", self.gs, lo=1)
        check_bits("bits", self.bits)
        if len(self.groups) > 32766:
            raise APSQError(f"at most 32766 PSUM groups are supported, got n={self.n} tiles with gs={self.gs}")

    @property
    def qn(self) -> int:
        """Smallest code, ``-2^(bits-1)``."""
        return -(1 << (self.bits - 1))

    @property
    def qp(self) -> int:
        """Largest code, ``2^(bits-1) - 1``."""
        return (1 << (self.bits - 1)) - 1

    @property
    def apsq(self) -> bool:
        return self.mode == "apsq"

    @property
    def groups(self) -> list[tuple[int, int]]:
        """``(first, closing)`` tile of every APSQ group."""
        return [(g0, min(g0 + self.gs, self.n) - 1) for g0 in range(0, self.n, self.gs)]

    @property
    def bad_dtype(self) -> torch.dtype:
        """Smallest integer type holding ``last_bad`` in ``0 .. G``."""
        return torch.uint8 if len(self.groups) < 255 else torch.int16
