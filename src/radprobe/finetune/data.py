"""Images of one split for training: the backbone's preprocessing plus radiology-aware augmentation.

Augmentation is conservative, because radiographs are not natural photos: a random resized crop that
keeps most of the image (a finding near the border must survive), small rotations (patient
positioning), brightness/contrast jitter (exposure and windowing differ between sites) and, only
when asked, horizontal flips — off by default, since laterality carries meaning in chest X-rays
(dextrocardia, situs, side markers).

Every random draw comes from a generator seeded by (seed, epoch, sample index), so an epoch is the
same whatever the number of workers and whether the run was resumed.

Two augmentations: :class:`Augment`, radprobe's own (one affine resampling of the resized image), and
:class:`ResizedCrop`, torchvision's ``RandomResizedCrop`` + ``RandomHorizontalFlip`` taken on the
decoded original image as Baharoon et al. train (``preset=paper``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from radprobe.core.sampling import derived_seed, stream_batches, stream_order
from radprobe.features.images import PIXELS, to_float
from radprobe.features.views import crop_and_flip

if TYPE_CHECKING:
    from radprobe.backbones.base import Preprocess
    from radprobe.data import Dataset
    from radprobe.data.records import Record
    from radprobe.features.cache import FeatureSet


@dataclass(frozen=True)
class Augment:
    """Random resized crop + rotation (+ optional flip) in one affine resampling, then intensity jitter.

    Works on an image in [0, 1] of shape (3, R, R). :meth:`pair` moves a segmentation mask with the
    image: the same affine (nearest neighbour, background where the image is padded), no jitter.
    """

    crop_scale: float = 0.85  # smallest kept area fraction
    rotate: float = 10.0  # degrees
    intensity: float = 0.1  # brightness and contrast amplitude
    hflip: bool = False
    ratio: tuple[float, float] = (0.9, 1.1)  # aspect ratio of the crop: near square, anatomy keeps shape

    def _grid(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """The sampling grid of one random affine (draws 7 numbers from ``g``)."""
        u = torch.rand(7, generator=g, dtype=torch.float64).tolist()
        area = self.crop_scale + (1.0 - self.crop_scale) * u[0]
        # aspect ratios whose crop fits inside the image at this area (area 1: square, no crop)
        lo = max(math.log(self.ratio[0]), math.log(area))
        hi = max(lo, min(math.log(self.ratio[1]), -math.log(area)))
        aspect = math.exp(lo + (hi - lo) * u[1])
        sx, sy = min(1.0, math.sqrt(area * aspect)), min(1.0, math.sqrt(area / aspect))
        tx, ty = (1 - sx) * (2 * u[2] - 1), (1 - sy) * (2 * u[3] - 1)
        angle = math.radians(self.rotate * (2 * u[4] - 1))
        flip = -1.0 if self.hflip and u[5] < 0.5 else 1.0
        c, s = math.cos(angle), math.sin(angle)
        # output -> input sampling coordinates: rotate the scaled (cropped) grid, then shift it
        theta = torch.tensor([[flip * sx * c, -sy * s, tx], [flip * sx * s, sy * c, ty]], dtype=x.dtype)[None]
        return F.affine_grid(theta, [1, *x.shape], align_corners=False)

    def _jitter(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.intensity:
            v = torch.rand(2, generator=g, dtype=torch.float64).tolist()
            contrast = 1.0 + self.intensity * (2 * v[0] - 1)
            brightness = self.intensity * (2 * v[1] - 1)
            mean = x.mean()
            x = (x - mean) * contrast + mean + brightness
        return x.clamp(0.0, 1.0)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return self.pair(x, None, g)[0]

    def pair(
        self, x: torch.Tensor, mask: torch.Tensor | None, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The augmented image and, when given, its (R, R) class map moved by the same affine."""
        grid = self._grid(x, g)
        out = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        if mask is not None:
            m = F.grid_sample(
                mask[None, None].to(grid.dtype),
                grid,
                mode="nearest",
                padding_mode="zeros",
                align_corners=False,
            )
            mask = m[0, 0].round().to(mask.dtype)
        return self._jitter(out, g), mask


AFFINE = "one bilinear affine resampling of the resized image (crop, rotation, flip) + intensity jitter"
EXACT = "torchvision RandomResizedCrop on the decoded image (bicubic) + hflip"


@dataclass(frozen=True)
class ResizedCrop:
    """torchvision's ``RandomResizedCrop(scale, ratio)`` then ``RandomHorizontalFlip(hflip)``.

    The crop box comes from torchvision's own ``get_params`` (its 10 tries and centre-crop
    fallback) on the decoded original image; the backbone's preprocessing then resizes the crop
    (bicubic, antialiased) as ``RandomResizedCrop`` would, and the flip is applied after it (flipping
    commutes with resizing and with the per-channel min-max stretch). Rows that only exist resized
    (slices of volumes) or that carry a mask use :meth:`affine`, the closest :class:`Augment`.
    """

    scale: tuple[float, float] = (0.75, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5

    def params(self, height: int, width: int, seed: int) -> tuple[int, int, int, int, bool]:
        """Crop box (top, left, height, width) and flip of a ``height`` x ``width`` image."""
        return crop_and_flip(height, width, seed, self.scale, self.ratio, self.hflip)

    def affine(self) -> Augment:
        """The affine approximation, for rows whose original image is not at hand."""
        return Augment(
            crop_scale=self.scale[0], rotate=0.0, intensity=0.0, hflip=self.hflip > 0, ratio=self.ratio
        )


def describe(augment: Augment | ResizedCrop | None, resized_rows: bool = False) -> str:
    """What augmentation a training row gets; ``resized_rows``: rows from ``pixels`` or with masks."""
    if augment is None:
        return "none"
    if isinstance(augment, ResizedCrop):
        if resized_rows:
            return (
                "one bilinear affine resampling of the resized image (crop + hflip), approximating "
                f"{EXACT}: the rows are stored resized or carry masks"
            )
        return EXACT
    return AFFINE


class ImageSet(TorchDataset):
    """Preprocessed (and, for training, augmented) images of one split, with their row index.

    Rows are decoded from ``records`` one image each, or — slices of volumes — read from ``pixels``,
    the split's images already resized to the input resolution (each volume decoded once, not once
    per slice and epoch) — or, 2D, read from ``decoded``, the split's decoded-image entry
    (:mod:`radprobe.features.images`: decoded once for every epoch and backbone of its geometry; the
    same numbers as decoding). Targets stay in the main process (indexed by the returned row), so workers
    only produce pixels — except ``masks`` (segmentation training): augmentation moves a mask with
    its image, so each item is then ``(image, row, mask)``.

    A :class:`ResizedCrop` augmentation decodes each training row's original image (not the decoded
    entry, which is already resized), except for rows from ``pixels`` or with masks, which get its
    affine approximation (:attr:`augmentation` says which).
    """

    def __init__(
        self,
        dataset: Dataset,
        records: list[Record],
        preprocess: Preprocess,
        augment: Augment | ResizedCrop | None = None,
        seed: int = 0,
        masks: np.ndarray | None = None,
        pixels: np.ndarray | None = None,
        decoded: FeatureSet | None = None,
    ) -> None:
        self.dataset = dataset
        self.records = records
        self.preprocess = preprocess
        resized = pixels is not None or masks is not None
        self.augmentation = describe(augment, resized)
        self.crop = augment if isinstance(augment, ResizedCrop) and not resized else None
        # RandomResizedCrop resizes the crop straight to the input size: no eval-style centre crop
        self._crop_pre = replace(preprocess, crop_from=None)
        self.augment = augment.affine() if isinstance(augment, ResizedCrop) else augment
        self.seed = seed
        self.masks = masks  # (rows, R, R) class maps at the preprocessed resolution
        self.pixels = pixels  # (rows, 1 or 3, R, R) in [0, 1] at the preprocessed resolution
        self.decoded = decoded
        if decoded is not None and len(decoded) != len(records):
            raise ValueError(
                f"decoded-image entry {decoded.path} has {len(decoded)} rows, expected {len(records)}"
            )
        self.epoch = 0
        # stream sampling: an index is pass * len + row, and a row's view is drawn per pass
        self.stream = False
        self._mean = torch.tensor(preprocess.mean).view(3, 1, 1)
        self._std = torch.tensor(preprocess.std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.records) if self.pixels is None else len(self.pixels)

    def _raw(self, i: int) -> torch.Tensor:
        """Row ``i`` as a (3, R, R) image in [0, 1]."""
        if self.pixels is not None:
            return torch.from_numpy(np.asarray(self.pixels[i], dtype=np.float32)).expand(3, -1, -1)
        return self._load(i) * self._std + self._mean

    def _load(self, i: int) -> torch.Tensor:
        """Row ``i`` preprocessed: decoded now, or read from the decoded-image entry."""
        if self.decoded is None:
            return self.preprocess(self.dataset.load_image(self.records[i]))
        row = np.array(self.decoded.arrays[PIXELS][i])
        stored = torch.from_numpy(row.astype(np.int32) if row.dtype == np.uint16 else row)
        return self.preprocess.normalise(to_float(stored, str(self.decoded.meta["storage"])))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, int, torch.Tensor]:
        draw, i = divmod(i, len(self)) if self.stream else (self.epoch, i)
        mask = None if self.masks is None else torch.from_numpy(np.asarray(self.masks[i]))
        if self.crop is not None:
            return self._cropped(i, draw), i
        if self.pixels is None and self.augment is None:
            x = self._load(i)  # no round trip through [0, 1]
        else:
            x = self._raw(i)
            if self.augment is not None:
                g = torch.Generator().manual_seed(derived_seed("aug", self.seed, draw, i))
                x, mask = self.augment.pair(x, mask, g)
            x = (x - self._mean) / self._std
        return (x, i) if mask is None else (x, i, mask)

    def _cropped(self, i: int, draw: int) -> torch.Tensor:
        """Row ``i`` through :attr:`crop` in draw ``draw``: crop of the decoded original, preprocessed."""
        assert self.crop is not None
        image = self.dataset.load_image(self.records[i])
        top, left, h, w, flip = self.crop.params(
            image.shape[0], image.shape[1], derived_seed("aug", self.seed, draw, i)
        )
        x = self._crop_pre.geometry(image[top : top + h, left : left + w])
        return self._crop_pre.normalise(x.flip(-1) if flip else x)


def train_loader(
    images: ImageSet,
    batch_size: int,
    epoch: int,
    seed: int,
    num_workers: int = 0,
    shard: tuple[int, int] | None = None,
    stream: bool = False,
) -> DataLoader:
    """Shuffled batches of one epoch; the order is a function of (seed, epoch) only.

    The last incomplete batch is dropped when there is more than one batch (BatchNorm in train mode
    fails on a batch of one, and an odd small batch adds noise to the last step). ``stream``: the
    epoch is instead the next ``ceil(n / batch)`` full batches of one endless stream of permutations
    (:func:`stream_order`). ``shard=(rank, world)``: this rank's rows of every batch (rows rank,
    rank + world, ...), for data-parallel training; the batches together are the single-process
    batches.
    """
    images.epoch, images.stream = epoch, stream
    if stream:
        order = stream_order(len(images), batch_size, epoch, seed)
    else:
        g = torch.Generator().manual_seed(derived_seed("order", seed, epoch))
        order = torch.randperm(len(images), generator=g).tolist()
    if shard is None:
        return DataLoader(
            images,
            batch_size=batch_size,
            sampler=order,
            num_workers=num_workers,
            drop_last=not stream and len(images) > batch_size,
        )
    rank, world = shard
    n = stream_batches(len(images), batch_size) if stream else batches_per_epoch(len(images), batch_size)
    batches = [order[i * batch_size : (i + 1) * batch_size][rank::world] for i in range(n)]
    return DataLoader(images, batch_sampler=batches, num_workers=num_workers)


def eval_loader(
    images: ImageSet, batch_size: int, num_workers: int = 0, shard: tuple[int, int] | None = None
) -> DataLoader:
    """Rows in order; ``shard=(rank, world)``: rows rank, rank + world, ... only."""
    sampler = None if shard is None else range(shard[0], len(images), shard[1])
    return DataLoader(images, batch_size=batch_size, sampler=sampler, num_workers=num_workers)


def batches_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size if n > batch_size else 1


def targets_of(labels: np.ndarray, rows: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(labels)[rows.numpy()])
