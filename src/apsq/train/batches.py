"""Which rows each training step and each evaluation batch take: seeded, resumable, sharded.

The global batch of step ``t`` is a fixed slice of seeded permutations of the training set (one per
epoch) and the RNG is reseeded from ``(seed, stage, t, rank)`` before every step, so a resumed run
repeats exactly the steps an uninterrupted one would take. With ``P`` processes each takes
``batch_size / P`` rows of the global batch; evaluation deals rows round-robin.
"""

from __future__ import annotations

import hashlib

import torch

from apsq.device import to_device

__all__ = ["global_batch", "lockstep_batches", "split_batch", "step_seed"]


def step_seed(seed: int, stage: str, step: int, rank: int = 0) -> int:
    """The RNG seed of one step (a hash, so nearby steps are unrelated)."""
    h = hashlib.sha256(f"{seed}:{stage}:{step}:{rank}".encode()).hexdigest()
    return int(h[:15], 16)


def global_batch(n: int, batch: int, step: int, seed: int, stage: str) -> list[int]:
    """Row indices of global batch ``step``: consecutive slices of seeded permutations (one per epoch)."""
    out: list[int] = []
    pos = step * batch
    while len(out) < batch:
        epoch, off = divmod(pos, n)
        g = torch.Generator().manual_seed(step_seed(seed, stage, -1 - epoch))
        perm = torch.randperm(n, generator=g)
        take = min(batch - len(out), n - off)
        out.extend(perm[off: off + take].tolist())
        pos += take
    return out


def split_batch(batch: dict[str, torch.Tensor], device: torch.device | str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``(model inputs, labels)`` of a batch, moved to ``device`` (:func:`apsq.device.to_device`)."""
    moved = to_device(dict(batch), device)
    labels = moved.pop("labels")
    return moved, labels


def lockstep_batches(n: int, world: int, batch_size: int) -> int:
    """Batches every rank runs when ``n`` rows are dealt round-robin over ``world`` ranks: the same
    number on each (a sharded FSDP2 model's forward is a collective; a rank short of rows repeats a
    row, uncounted)."""
    return -(-(-(-n // world)) // batch_size)
