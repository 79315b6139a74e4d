"""Fixtures for backbone tests: offline hubs and small deterministic inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Force every HF-hub lookup to fail fast against an empty cache (no network, no stale cache).

    huggingface_hub reads HF_HUB_OFFLINE and its cache path at import, so the constants are
    patched as well as the environment.
    """
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def batch() -> torch.Tensor:
    """Two 64x64 images, fixed seed (the test backbones' native resolution)."""
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
