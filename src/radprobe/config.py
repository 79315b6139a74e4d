"""Process-wide settings: where caches live."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of radprobe's caches (features, synthetic data, assets).

    ``RADPROBE_CACHE`` overrides the per-user default so tests and clusters can point elsewhere.
    """
    env = os.environ.get("RADPROBE_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("radprobe"))
