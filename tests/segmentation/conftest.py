"""Segmentation test fixtures: single-threaded torch, and small on-disk datasets with known answers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

EASY_CLASSES = ["background", "disc", "square"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny convolutions are slower with several threads on a shared 2-core machine (oversubscription).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_easy2d(root: Path, n: int = 60, size: int = 64, seed: int = 0) -> Path:
    """Large bright disc (class 1) on the left, grey square (class 2) on the right, dark noisy background.

    synthetic:seg2d's lesions are a few pixels wide — below the 8-pixel patches of ``test:vit-tiny`` —
    so a random-init tiny ViT cannot reach Dice 0.9 there; these shapes are several patches wide.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img = 0.15 + rng.normal(0, 0.03, (size, size))
        mask = np.zeros((size, size), np.uint8)
        cy, cx, r = rng.uniform(20, 44), rng.uniform(14, 22), rng.uniform(10, 13)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        y0, x0, s = int(rng.uniform(8, 28)), int(rng.uniform(36, 40)), int(rng.uniform(20, 24))
        square = np.zeros_like(disc)
        square[y0 : y0 + s, x0 : x0 + s] = True
        mask[disc] = 1
        mask[square & ~disc] = 2
        img[mask == 1] += 0.7
        img[mask == 2] += 0.35
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / "images" / f"p{i:03d}.png")
        Image.fromarray(mask).save(root / "masks" / f"p{i:03d}.png")
    (root / "radprobe.yaml").write_text(yaml.safe_dump({"classes": EASY_CLASSES}))
    return root


@pytest.fixture
def easy2d(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``easy2d(n=60)`` writes the easy dataset and returns its folder."""

    def make(**kw: int) -> Path:
        return write_easy2d(tmp_path / f"easy{len(list(tmp_path.iterdir()))}", **kw)

    return make


# LPS-like, anisotropic: the reader must reorient to canonical RAS+ and back.
AFFINE = np.array([[-1.2, 0, 0, 10.0], [0, -0.8, 0, 12.0], [0, 0, 2.5, -20.0], [0, 0, 0, 1]])


def write_volumes(root: Path, n: int = 6, shape: tuple[int, int, int] = (20, 24, 12), seed: int = 0) -> Path:
    """NIfTI volumes whose image intensity is (label + 1) / 4, so a reader of pixels knows the mask."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    g = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    for i in range(n):
        c = [rng.uniform(0.3, 0.7) * s for s in shape]
        label = np.zeros(shape, np.uint8)
        label[sum(((a - ci) / (0.25 * s)) ** 2 for a, ci, s in zip(g, c, shape, strict=True)) <= 1] = 1
        label[: shape[0] // 4, : shape[1] // 3] = 2  # an asymmetric block: flips would show
        img = (label.astype(np.float32) + 1) / 4
        nib.save(nib.Nifti1Image(img, AFFINE), root / "images" / f"p{i:02d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, AFFINE), root / "masks" / f"p{i:02d}.nii.gz")
    (root / "radprobe.yaml").write_text(
        yaml.safe_dump({"classes": ["background", "blob", "block"], "norm": "minmax"})
    )
    return root


@pytest.fixture
def volumes(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``volumes(n=6, shape=(20, 24, 12))`` writes NIfTI volumes (see :func:`write_volumes`)."""

    def make(**kw: object) -> Path:
        return write_volumes(tmp_path / f"vol{len(list(tmp_path.iterdir()))}", **kw)  # type: ignore[arg-type]

    return make
