"""Calibration subsamples that depend on the data only, not on its order or batching.

:class:`ContentSample` keeps the ``capacity`` items (rows, images, matmul slices) with the smallest
*content keys* among all items it was offered: a 64-bit hash of each item's values (exact float64
bit patterns, mixed with fixed per-position odd multipliers and a SplitMix64 finaliser). A hash
behaves like a uniform random key, so the kept set is a uniform subsample without replacement of the
distinct items seen ("bottom-k" sampling); because the key is a function of the content, the kept
set -- and, sorted by key, the kept tensor -- is the same for ``[b1, b2]``, ``[b2, b1]`` and
``[cat(b1, b2)]`` (issue 15 item 4). Identical items share a key and are kept or dropped together;
since they are identical, which copy is kept never matters.
"""

from __future__ import annotations

import torch

__all__ = ["ContentSample", "content_keys"]

_MULT_SEED = 0x5EED
_MIX1 = -0x40A7B892E31B1A47  # 0xBF58476D1CE4E5B9 as a signed int64
_MIX2 = -0x6B2FB644ECCEEE15  # 0x94D049BB133111EB as a signed int64
_multipliers: dict[tuple[int, str], torch.Tensor] = {}


def _mults(width: int, device: torch.device) -> torch.Tensor:
    key = (width, str(device))
    if key not in _multipliers:
        g = torch.Generator().manual_seed(_MULT_SEED + width)
        m = torch.randint(-(1 << 62), 1 << 62, (width,), generator=g, dtype=torch.int64) | 1
        _multipliers[key] = m.to(device)
    return _multipliers[key]


def _srl(h: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (h >> k) & ((1 << (64 - k)) - 1)


def content_keys(items: torch.Tensor) -> torch.Tensor:
    """One int64 hash per item: ``items [R, ...]`` -> ``[R]``; equal values give equal keys.

    Values are hashed as exact float64 bit patterns (every float16 / bfloat16 / float32 value is
    exact in float64); ``-0.0`` is hashed as ``0.0``. Integer overflow wraps (two's complement).
    """
    r = items.shape[0]
    flat = items.detach().reshape(r, -1).to(torch.float64) + 0.0  # -0.0 + 0.0 == +0.0
    bits = flat.view(torch.int64)
    h = (bits * _mults(bits.shape[1], bits.device)).sum(1)
    h = (h ^ _srl(h, 30)) * _MIX1
    h = (h ^ _srl(h, 27)) * _MIX2
    return h ^ _srl(h, 31)


class ContentSample:
    """The ``capacity`` items with the smallest content keys among everything :meth:`add` was given.

    Items are slices along dim 0 of the tensors passed to :meth:`add` (all with the same trailing
    shape). Memory: at most ``capacity`` items plus one incoming batch.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.items: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None
        self.offered = 0

    def add(self, items: torch.Tensor) -> None:
        """Offer ``items [R, ...]`` (detached; kept on their device)."""
        items = items.detach()
        self.offered += items.shape[0]
        if items.shape[0] == 0:
            return
        keys = content_keys(items)
        if self.items is not None and self.keys is not None:  # set together
            items = torch.cat([self.items, items.to(self.items.dtype)], 0)
            keys = torch.cat([self.keys, keys], 0)
        order = torch.sort(keys, stable=True).indices[: self.capacity]
        self.items, self.keys = items[order], keys[order]

    def tensor(self) -> torch.Tensor | None:
        """The kept items sorted by key (``None`` if no item was offered)."""
        return self.items

    def __len__(self) -> int:
        return 0 if self.items is None else self.items.shape[0]
