"""The user cache folder (weights, exported models, engines, compiled kernels)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SMALLDEPTHMASK_CACHE"


def cache_dir() -> Path:
    """`$SMALLDEPTHMASK_CACHE`, else the platform's user cache dir (~/.cache/smalldepthmask on Linux)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("smalldepthmask"))
