"""The released segmentation augmentation, through the frozen backbone, inside the training loop.

Baharoon et al. augment each training image before the frozen backbone: resized to the input size,
then ``RandomVerticalFlip(0.25)`` twice (the "hflip" line builds a vertical flip too), then
``RandomRotation(90)`` (an angle uniform in [-90, 90], nearest neighbour, outside filled 0), the mask
alike under the same seed; then ``RescaleImage`` (min-max per image and channel) and the
normalisation (``dinov2/data/transforms.py:117-151``, ``data/datasets/mc.py:104-111``). A rotated
image gives the backbone other patches, so no transform of cached grids can stand in for it.

:class:`OnlineGrids` does what the released loader and feature model do, per batch: it reads the
rows' resized images before min-max (a decoded-image entry of that geometry, decoded once and
shared by every backbone of the size), turns each image and its target by its own draw, stretches,
normalises, and runs the frozen backbone for the grids the heads read. A row's draw is a function of
(seed, pass over the data, row id) (:func:`draw`), so every pass gets a fresh, reproducible draw and
every learning rate of a sweep sees the same ones. Grids are rounded to float16, as the cached grids
of the un-augmented validation and test rows are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from radprobe.core.sampling import derived_seed
from radprobe.features.extract import extraction_autocast
from radprobe.features.images import stored_tensor, to_float
from radprobe.segmentation.train import Fetch, concat_fetch, read_rows

if TYPE_CHECKING:
    from radprobe.backbones.base import Backbone

FLIP_P = 0.25  # each of the two vertical flips
DEGREES = 90.0  # RandomRotation(90): an angle uniform in [-90, 90]
DESCRIPTION = (
    "vertical flip p=0.25 twice, rotation U(-90, 90) deg (nearest, fill 0) of each resized image and "
    "its mask before the frozen backbone, run per batch (as released)"
)


def draw(seed: int, pass_: int, row_id: str) -> tuple[bool, float]:
    """Row ``row_id``'s flip and angle on pass ``pass_`` over the training rows."""
    rng = np.random.default_rng(derived_seed("seg-augment", seed, pass_, row_id))
    flip = bool(rng.random() < FLIP_P) ^ bool(rng.random() < FLIP_P)
    return flip, float(rng.uniform(-DEGREES, DEGREES))


def turn(
    x: torch.Tensor, y: torch.Tensor, flip: np.ndarray, degrees: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each square image of ``x`` (B, C, S, S) and its class map in ``y`` (B, S, S) together: mirrored
    top-bottom where ``flip``, then rotated by ``degrees`` counter-clockwise about the centre,
    nearest neighbour, outside filled 0: torchvision's ``vflip`` and ``rotate`` on tensors."""
    flip_rows = torch.from_numpy(np.flatnonzero(flip)).to(x.device)
    x, y = x.clone(), y.clone()
    x[flip_rows], y[flip_rows] = x[flip_rows].flip(-2), y[flip_rows].flip(-2)
    a = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    c, s = np.cos(a), np.sin(a)
    # affine_grid maps output to input coordinates (x right, y down): the inverse rotation
    theta = np.stack([np.stack([c, -s, 0 * c], -1), np.stack([s, c, 0 * c], -1)], 1)
    grid = F.affine_grid(torch.as_tensor(theta, dtype=x.dtype, device=x.device), list(x.shape), False)
    kw = {"mode": "nearest", "padding_mode": "zeros", "align_corners": False}
    xs = F.grid_sample(x, grid, **kw)
    ys = F.grid_sample(y[:, None].to(x.dtype), grid, **kw)
    return xs, ys[:, 0].round().to(y.dtype)


@dataclass
class Pixels:
    """One split's rows resized to the input size, before min-max and normalisation, as a
    decoded-image entry stores them (``storage``: uint8, uint16 or float32)."""

    rows: np.ndarray  # (rows, 1 or 3, S, S)
    storage: str
    row_ids: list[str]


def _pixels(part: Pixels) -> Fetch:
    """Rows of one split's stored pixels -> their float32 values (CPU)."""
    return lambda rows: to_float(stored_tensor(read_rows(part.rows, rows)), part.storage)


class OnlineGrids:
    """Grids of augmented training rows, computed by the frozen ``backbone`` per batch.

    ``parts``: the splits whose rows follow one another in the row numbering (the training split, or
    training then validation for a refit). Called with rows, each row's pass over the data and the
    targets of that numbering, it returns the grids of ``layers`` and the turned targets.
    """

    def __init__(
        self, backbone: Backbone, layers: Sequence[int], parts: Sequence[Pixels], seed: int, device: str
    ) -> None:
        self.device = torch.device(device)
        self.backbone = backbone.to(self.device).eval()
        self.layers = tuple(layers)
        self.row_ids = [i for p in parts for i in p.row_ids]
        # each part's rows read as float pixels; later parts' rows follow earlier ones
        self._read = _pixels(parts[0])
        n = len(parts[0].rows)
        for p in parts[1:]:
            self._read, n = concat_fetch(self._read, _pixels(p), n), n + len(p.rows)
        self.seed = seed
        self.forwards = 0  # images through the backbone, for the row's accounting

    def __call__(
        self, rows: np.ndarray, passes: np.ndarray, targets: np.ndarray
    ) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        draws = [draw(self.seed, int(p), self.row_ids[int(r)]) for r, p in zip(rows, passes, strict=True)]
        flip = np.array([d[0] for d in draws])
        degrees = np.array([d[1] for d in draws])
        x = self._read(rows).to(self.device)
        y = torch.from_numpy(np.asarray(targets[rows], dtype=np.int64)).to(self.device)
        if x.shape[-2:] != y.shape[-2:]:
            raise ValueError(f"images of {tuple(x.shape[-2:])} px for targets of {tuple(y.shape[-2:])} px")
        x, y = turn(x, y, flip, degrees)
        pp = self.backbone.preprocess
        if pp.minmax:  # RescaleImage comes after the rotation in the released transform
            x = pp.stretch(x)
        with torch.no_grad(), extraction_autocast(self.device, self.backbone):
            out = self.backbone(pp.normalise(x), n_blocks=1, grid_layers=self.layers)
        self.forwards += len(rows)
        grids = {la: out.grid[la].to(torch.float16).float() for la in self.layers}
        return grids, y
