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


def image_cache_enabled() -> bool:
    """Whether extraction may use the decoded-image cache (``<cache_dir>/images``):
    ``RADPROBE_IMAGE_CACHE=0`` turns it off for every run, as ``--no-image-cache`` does for one."""
    return os.environ.get("RADPROBE_IMAGE_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")
