"""Where fetched data lives: ``<cache root>/...`` (:func:`apsq.cache.cache_root`)."""

from __future__ import annotations

from pathlib import Path

from apsq.cache import CACHE_ENV, cache_root

__all__ = ["CACHE_ENV", "cache_dir"]


def cache_dir() -> Path:
    """The cache root (not created): ``$APSQ_CACHE`` if set, else ``~/.cache/apsq``."""
    return cache_root()
