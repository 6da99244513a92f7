"""Where fetched data lives: ``$APSQ_CACHE`` or ``~/.cache/apsq``."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "APSQ_CACHE"


def cache_dir() -> Path:
    """The cache root (not created): ``$APSQ_CACHE`` if set, else ``~/.cache/apsq``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "apsq"
