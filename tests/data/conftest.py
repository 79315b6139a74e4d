"""Fixtures for the data tests: an isolated cache, and the synthetic datasets generated once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One cache for the whole session, so each synthetic dataset is generated once."""
    root = tmp_path_factory.mktemp("radprobe-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("RADPROBE_CACHE", str(root))
    yield root
    mp.undo()


@pytest.fixture(autouse=True)
def _cache_env(synthetic_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Never touch the user's real cache; tests needing a private cache set it again.
    monkeypatch.setenv("RADPROBE_CACHE", str(synthetic_cache))
    return synthetic_cache


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("RADPROBE_CACHE", str(cache))
    return cache
