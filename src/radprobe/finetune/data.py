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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from radprobe.core.sampling import derived_seed, stream_batches, stream_order
from radprobe.features.images import PIXELS, stored_tensor, to_float
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

    def params(self, g: torch.Generator) -> tuple[list[float], list[float] | None]:
        """One image's draws from ``g``: its affine ``theta`` (output -> input sampling coordinates, the
        2 x 3 matrix row by row) and its jitter (contrast, brightness; None without jitter).

        Draws 7 numbers, then 2 when jittering: the order the per-image path has always used, so
        drawing them ahead of the resampling gives the same numbers.
        """
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
        # rotate the scaled (cropped) grid, then shift it
        theta = [flip * sx * c, -sy * s, tx, flip * sx * s, sy * c, ty]
        if not self.intensity:
            return theta, None
        v = torch.rand(2, generator=g, dtype=torch.float64).tolist()
        return theta, [1.0 + self.intensity * (2 * v[0] - 1), self.intensity * (2 * v[1] - 1)]

    def draw(self, gens: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`params` of a batch, one generator per image: theta (B, 2, 3) and jitter (B, 2) or
        None, float64 on the CPU."""
        drawn = [self.params(g) for g in gens]
        theta = torch.tensor([t for t, _ in drawn], dtype=torch.float64).view(-1, 2, 3)
        jitter = None if not self.intensity else torch.tensor([j for _, j in drawn], dtype=torch.float64)
        return theta, jitter

    def apply(
        self,
        x: torch.Tensor,
        theta: torch.Tensor,
        jitter: torch.Tensor | None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch (B, C, R, R) in [0, 1] through its drawn affines and jitter, on ``x``'s device, and
        its (B, R, R) class maps, when given, moved by the same affines (nearest, no jitter)."""
        grid = _affine_grid(theta.to(x.device, x.dtype), x.shape[-2], x.shape[-1])
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if mask is not None:
            m = F.grid_sample(
                mask[:, None].to(grid.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False
            )
            mask = m[:, 0].round().to(mask.dtype)
        if jitter is not None:
            contrast, brightness = jitter.to(x.device, x.dtype).view(-1, 2, 1, 1, 1).unbind(1)
            mean = out.flatten(1).mean(1).view(-1, 1, 1, 1)  # each image's own mean
            # (out - mean) * contrast + mean + brightness, in place: a batch is one pass per step
            out.sub_(mean).mul_(contrast).add_(mean).add_(brightness)
        return out.clamp_(0.0, 1.0), mask

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return self.pair(x, None, g)[0]

    def pair(
        self, x: torch.Tensor, mask: torch.Tensor | None, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The augmented (C, R, R) image and, when given, its (R, R) class map moved by the same affine."""
        theta, jitter = self.draw([g])
        out, moved = self.apply(x[None], theta, jitter, None if mask is None else mask[None])
        return out[0], None if moved is None else moved[0]


def _affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, (B, C, height, width), align_corners=False)`` to float rounding, written
    out: each output coordinate is two products of a row and a column term, where affine_grid fills a
    (B, H, W, 3) base grid and multiplies it, which on a CPU batch costs more than the resampling."""
    # pixel centres in [-1, 1] without corner alignment: (2k + 1) / n - 1
    xs = (torch.arange(width, device=theta.device, dtype=theta.dtype) * 2 + 1) / width - 1
    ys = (torch.arange(height, device=theta.device, dtype=theta.dtype) * 2 + 1) / height - 1
    t = theta[:, :, :, None, None]  # (B, 2, 3, 1, 1)
    grid = torch.empty(len(theta), height, width, 2, device=theta.device, dtype=theta.dtype)
    for k in range(2):  # output x, then y: row k of theta
        torch.add(
            t[:, k, 0] * xs[None, None, :], t[:, k, 1] * ys[None, :, None] + t[:, k, 2], out=grid[..., k]
        )
    return grid


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


class _Rows:
    """Rows of several arrays read as one: row ``i`` of the first, then of the next, and so on."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[k][i - int(self.starts[k])]


class JoinedEntry:
    """Decoded-image entries of several splits read as one (a refit's train + val), in order; what
    :class:`ImageSet` reads of an entry: its pixel rows, storage, length and path."""

    def __init__(self, entries: list[FeatureSet]) -> None:
        storages = {str(e.meta["storage"]) for e in entries}
        if len(storages) != 1:
            raise ValueError(f"entries stored as {sorted(storages)}: rows of one set share one storage")
        self.meta = {"storage": storages.pop()}
        self.path = entries[0].path
        self.arrays = {PIXELS: _Rows([e.arrays[PIXELS] for e in entries])}

    def __len__(self) -> int:
        return len(self.arrays[PIXELS])

    @classmethod
    def of(cls, entries: list[FeatureSet | None]) -> JoinedEntry | None:
        """The joined entry, or None when a split has none or their storages differ."""
        found = [e for e in entries if e is not None]
        if len(found) < len(entries) or len({str(e.meta["storage"]) for e in found}) != 1:
            return None
        return cls(found)


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

    ``batched`` (set by the training loop where :attr:`batchable`): items are the stored rows as they
    are — un-augmented, un-normalised, in their storage dtype — with their row and draw, ``(stored,
    row, draw[, mask])``, and :meth:`device_batch` augments and normalises a whole batch on the
    device, with the same draws as the per-item path.
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
        decoded: FeatureSet | JoinedEntry | None = None,
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
        self.batched = False
        # stream sampling: an index is pass * len + row, and a row's view is drawn per pass
        self.stream = False
        self._mean = torch.tensor(preprocess.mean).view(3, 1, 1)
        self._std = torch.tensor(preprocess.std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.records) if self.pixels is None else len(self.pixels)

    @property
    def batchable(self) -> bool:
        """Whether :meth:`device_batch` can augment this set: stored rows (decoded entry or ``pixels``)
        and the affine augmentation (a torchvision crop needs each decoded original, on the CPU)."""
        stored = self.decoded is not None or self.pixels is not None
        return stored and self.crop is None and isinstance(self.augment, Augment)

    @property
    def augment_path(self) -> str:
        """Where training rows are augmented: ``device`` (batched), ``cpu`` (per item) or ``none``."""
        if self.augment is None:
            return "none"
        return "device" if self.batched else "cpu"

    @property
    def storage(self) -> str:
        """The dtype of :meth:`_stored` rows, as :func:`~radprobe.features.images.to_float` reads it."""
        return (
            "float32"
            if self.pixels is not None or self.decoded is None
            else str(self.decoded.meta["storage"])
        )

    def _stored(self, i: int) -> torch.Tensor:
        """Row ``i`` as stored: (1 or 3, R, R) in :attr:`storage` (uint16 widened: torch indexes int32)."""
        if self.pixels is not None:
            return torch.from_numpy(np.asarray(self.pixels[i], dtype=np.float32))
        assert self.decoded is not None
        return stored_tensor(np.array(self.decoded.arrays[PIXELS][i]))

    def _raw(self, i: int) -> torch.Tensor:
        """Row ``i`` as a (1 or 3, R, R) image in [0, 1], not normalised.

        Grayscale stays one channel through augmentation (a third of the work; the normalisation
        broadcasts it), as in :meth:`device_batch`, so both paths compute the same numbers.
        """
        if self.pixels is None and self.decoded is None:
            return self.preprocess.geometry(self.dataset.load_image(self.records[i]))
        return to_float(self._stored(i), self.storage)

    def _load(self, i: int) -> torch.Tensor:
        """Row ``i`` preprocessed: decoded now, or read from the decoded-image entry."""
        if self.decoded is None:
            return self.preprocess(self.dataset.load_image(self.records[i]))
        return self.preprocess.normalise(to_float(self._stored(i), self.storage))

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        draw, i = divmod(i, len(self)) if self.stream else (self.epoch, i)
        mask = None if self.masks is None else torch.from_numpy(np.asarray(self.masks[i]))
        if self.batched:
            return (self._stored(i), i, draw) if mask is None else (self._stored(i), i, draw, mask)
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

    def device_batch(self, batch: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        """A ``batched`` loader batch augmented and normalised on ``device``: ``[images, rows]``, or
        ``[images, rows, masks]``, as the per-item loader would have given them.

        Each row's affine and jitter are drawn on the CPU from the generator the per-item path seeds
        for it (seed, draw, row), while the stored pixels travel; then one resampling of the batch.
        """
        assert isinstance(self.augment, Augment)
        stored, rows, draws = batch[0].to(device, non_blocking=True), batch[1], batch[2]
        mask = batch[3].to(device, non_blocking=True) if len(batch) > 3 else None
        gens = [
            torch.Generator().manual_seed(derived_seed("aug", self.seed, d, r))
            for r, d in zip(rows.tolist(), draws.tolist(), strict=True)
        ]
        theta, jitter = self.augment.draw(gens)
        x, mask = self.augment.apply(to_float(stored, self.storage), theta, jitter, mask)
        x = self.preprocess.normalise(x)  # grayscale rows broadcast to three channels here
        return [x, rows] if mask is None else [x, rows, mask]

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
    pin_memory: bool = False,
) -> DataLoader:
    """Shuffled batches of one epoch; the order is a function of (seed, epoch) only.

    The last incomplete batch is dropped when there is more than one batch (BatchNorm in train mode
    fails on a batch of one, and an odd small batch adds noise to the last step). ``stream``: the
    epoch is instead the next ``ceil(n / batch)`` full batches of one endless stream of permutations
    (:func:`stream_order`). ``shard=(rank, world)``: this rank's rows of every batch (rows rank,
    rank + world, ...), for data-parallel training; the batches together are the single-process
    batches. ``pin_memory``: batches in page-locked memory, for non-blocking copies to CUDA.
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
            pin_memory=pin_memory,
        )
    rank, world = shard
    n = stream_batches(len(images), batch_size) if stream else batches_per_epoch(len(images), batch_size)
    batches = [order[i * batch_size : (i + 1) * batch_size][rank::world] for i in range(n)]
    return DataLoader(images, batch_sampler=batches, num_workers=num_workers, pin_memory=pin_memory)


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
