"""Augmented training views, extracted once and cached like any other features.

Linear probes that train on augmented images (Baharoon et al. train on RandomResizedCrop(scale
0.75-1) + horizontal-flip views, drawn afresh every epoch) read ``n`` cached views of each training
image instead of running the backbone inside the training loop: epoch ``e`` trains on view
``e mod n``, so with ``n`` equal to the number of epochs every epoch sees its own independent draw,
as the on-the-fly pipeline would, at the cost of one extraction per view.

A view is a crop box and a flip, drawn by torchvision's own ``RandomResizedCrop.get_params`` under a
generator seeded by (seed, view index, sample id): the same image gets the same view on every
machine, in any split and batch order. The crop is taken from the decoded image before the
backbone's preprocessing, which then resizes it to the input size: crop-then-resize is what
``RandomResizedCrop`` does, and flipping commutes with resizing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from radprobe.utils import digest


@dataclass(frozen=True)
class AugmentView:
    """One augmented view of every image: view ``index`` of a family drawn with ``seed``."""

    index: int
    seed: int = 0
    scale: tuple[float, float] = (0.75, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "seed": self.seed,
            "scale": list(self.scale),
            "ratio": [round(r, 6) for r in self.ratio],
            "hflip": self.hflip,
            "transform": "random_resized_crop+hflip",
        }

    def params(self, height: int, width: int, sample_id: str) -> tuple[int, int, int, int, bool]:
        """Crop box (top, left, height, width) and flip of ``sample_id``'s image in this view."""
        seed = int(digest({"seed": self.seed, "view": self.index, "sample": sample_id}, 15), 16)
        return crop_and_flip(height, width, seed, self.scale, self.ratio, self.hflip)

    def __call__(self, image: np.ndarray, sample_id: str) -> np.ndarray:
        """The view of a decoded image (HxW or HxWxC): cropped, and mirrored left-right if drawn."""
        top, left, h, w, flip = self.params(image.shape[0], image.shape[1], sample_id)
        out = image[top : top + h, left : left + w]
        return np.ascontiguousarray(out[:, ::-1] if flip else out)


def crop_and_flip(
    height: int,
    width: int,
    seed: int,
    scale: tuple[float, float] = (0.75, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
) -> tuple[int, int, int, int, bool]:
    """torchvision's ``RandomResizedCrop`` box (top, left, height, width) of a ``height`` x ``width``
    image and its ``RandomHorizontalFlip`` draw, as the two transforms draw them one after the other
    from torch's global generator seeded with ``seed`` (which is restored afterwards)."""
    from torchvision.transforms import RandomResizedCrop

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # get_params reads only the image's size; a stand-in spares a copy of the pixels
        top, left, h, w = RandomResizedCrop.get_params(
            torch.empty(1, height, width), list(scale), list(ratio)
        )
        flip = bool(torch.rand(1).item() < hflip)
    return int(top), int(left), int(h), int(w), flip


def view_family(n: int, seed: int = 0) -> list[AugmentView]:
    """The ``n`` views a probe trains on."""
    if n < 1 or not math.isfinite(n):
        raise ValueError(f"views must be a positive count, got {n}")
    return [AugmentView(index=i, seed=seed) for i in range(n)]
