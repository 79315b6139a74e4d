"""Synthetic segmentation data shared by the model tests."""

from __future__ import annotations

import numpy as np


def shapes(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc (class 1) and a grey square (class 2) on a dark noisy background: (n, 1, size,
    size) float16 images in [0, 1] and their (n, size, size) uint8 masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((n, 1, size, size), np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx, r = rng.uniform(8, 24), rng.uniform(8, 14), rng.uniform(5, 7)
        masks[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        y0 = int(rng.uniform(4, 16))
        masks[i, y0 : y0 + 10, 19:29] = 2
        images[i, 0] = 0.1 + 0.6 * (masks[i] == 1) + 0.3 * (masks[i] == 2) + rng.normal(0, 0.03, (size, size))
    return np.clip(images, 0, 1).astype(np.float16), masks
