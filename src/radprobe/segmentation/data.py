"""Segmentation samples: validated masks, 2D training rows, and the cases that are scored.

A *case* is what a metric is computed on: one 2D image, or one 3D volume. A *row* is one 2D training
sample: the image itself, or one slice of a volume along the dataset's axis (axial by default; set
with the dataset spec option ``axis=``). Rows of a split are laid out case after case, slice after
slice, exactly like a per-slice feature-cache entry, so row ``i`` of the masks, the images and the
cached patch grids always describe the same pixels.

Masks are checked when loaded — same spatial shape as the image, values inside the declared
classes — and a failure raises a :class:`DataError` naming the file. Training targets are the masks
resized (nearest) to the square input resolution; scoring uses the original masks.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from radprobe.data import Dataset
from radprobe.data.records import Record
from radprobe.errors import DataError

# What ``norm="auto"`` means for each reader (see radprobe.data.readers), recorded in result rows.
AUTO_NORM = {
    "image": "dtype",
    "npz": "dtype",
    "h5": "dtype",
    "nifti": "percentile 0.5-99.5 per volume",
    "dicom": "DICOM header window, else min-max",
    "dicom-series": "DICOM header window, else min-max",
}


@dataclass
class Case:
    """One scored unit: an image (2D) or a volume (3D), and its rows in the split's arrays."""

    sample_id: str
    patient: str
    record: Record
    rows: slice
    shape: tuple[int, ...]  # original mask shape: (H, W) or (D, H, W)
    spacing: tuple[float, ...] | None = None  # mm per voxel along ``shape``'s axes, when known


@dataclass
class SegSplit:
    """One split: its cases, resized training targets, original masks and (optionally) images."""

    name: str
    cases: list[Case]
    targets: np.ndarray  # (rows, T, T) uint8/int16 class indices at the training resolution
    masks: list[np.ndarray] | None = None  # original-size masks per case (for scoring)
    images: np.ndarray | None = None  # (rows, channels, T, T) float16 in [0, 1] (seg-unet input)
    features: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> (rows, D, h, w)
    at_input: bool = False  # scored at the input resolution (``at_input``): heads upsample as they train
    original: SegSplit | None = None  # the split at its masks' own size, when this one is ``at_input``

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def n_rows(self) -> int:
        return int(self.targets.shape[0])

    def patients(self, idx: Sequence[int] | None = None) -> np.ndarray:
        cases = self.cases if idx is None else [self.cases[i] for i in idx]
        return np.asarray([c.patient for c in cases], dtype=str)

    def rows(self, idx: Sequence[int] | None = None) -> np.ndarray:
        """Row indices of the cases ``idx`` (all cases when None), in case order."""
        cases = self.cases if idx is None else [self.cases[i] for i in idx]
        if not cases:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(c.rows.start, c.rows.stop) for c in cases])

    def assemble(self, row_preds: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per-row class maps (split order) -> one per case: an image's map, or a volume's slices stacked."""
        if len(row_preds) != self.n_rows:
            raise ValueError(f"split {self.name}: {len(row_preds)} row predictions for {self.n_rows} rows")
        return [
            np.stack(row_preds[c.rows]) if len(c.shape) == 3 else row_preds[c.rows.start] for c in self.cases
        ]

    def row_ids(self) -> list[str]:
        """Sample ids of the rows as a per-slice cache entry names them."""
        out = []
        for c in self.cases:
            n = c.rows.stop - c.rows.start
            out += [f"{c.sample_id}#{k}" for k in range(n)] if len(c.shape) == 3 else [c.sample_id]
        return out


def at_input(split: SegSplit) -> SegSplit:
    """``split`` scored at the input resolution: each case's masks are its training targets (resized
    nearest-exact to T x T, as the released eval transform resizes them) and its shape and in-plane
    voxel size follow, so predictions are made and scored at T x T."""
    size = int(split.targets.shape[-1])
    cases, masks = [], []
    for c in split.cases:
        h, w = c.shape[-2:]
        spacing = None
        if c.spacing is not None:
            spacing = (*c.spacing[:-2], c.spacing[-2] * h / size, c.spacing[-1] * w / size)
        cases.append(replace(c, shape=(*c.shape[:-2], size, size), spacing=spacing))
        rows = split.targets[c.rows]
        masks.append(rows if len(c.shape) == 3 else rows[0])
    return replace(split, cases=cases, masks=masks, at_input=True, original=split)


def to_original(split: SegSplit, preds: Sequence[np.ndarray]) -> tuple[SegSplit, list[np.ndarray]]:
    """Predictions of an ``at_input`` split brought back to each case's own mask size (nearest
    neighbour), with the original split, for the outputs written beside the rows."""
    if split.original is None:
        return split, list(preds)
    back = []
    for case, pred in zip(split.original.cases, preds, strict=True):
        up = resize_masks(pred if pred.ndim == 3 else pred[None], case.shape[-2:]).astype(pred.dtype)
        back.append(up if pred.ndim == 3 else up[0])
    return split.original, back


def intensity(dataset: Dataset) -> dict[str, object]:
    """How the dataset layer turned stored values into [0, 1] (recorded with every result row)."""
    read = dataset.read
    kinds = sorted({r.image.kind for r in dataset.records})
    if read.window is not None:
        used = f"window center {read.window[0]:g}, width {read.window[1]:g}"
    elif read.norm != "auto":
        used = read.norm
    else:
        used = "; ".join(f"{k}: {AUTO_NORM.get(k, 'auto')}" for k in kinds)
    return {**read.to_dict(), "used": used}


def nifti_spacing(path: str, axis: int, orient: str = "canonical") -> tuple[float, float, float] | None:
    """Voxel size (mm) along the (D, H, W) axes the NIfTI reader produces for slicing ``axis`` with
    ``ReadOptions.orient`` = ``orient``."""
    import nibabel as nib

    try:
        img = nib.load(path)
        zooms = (img if orient == "stored" else nib.as_closest_canonical(img)).header.get_zooms()[:3]
    except Exception:  # spacing is a nicety for HD95; unreadable headers fail later, loudly
        return None
    if len(zooms) < 3:
        return None
    rest = [a for a in range(3) if a != axis]
    if orient == "stored":  # readers.orient_volume: moveaxis(axis -> 0) only
        return (float(zooms[axis]), float(zooms[rest[0]]), float(zooms[rest[1]]))
    # readers.to_display: moveaxis(axis -> 0) then swap the two in-plane axes
    return (float(zooms[axis]), float(zooms[rest[1]]), float(zooms[rest[0]]))


def resize_masks(masks: np.ndarray, size: int | tuple[int, ...]) -> np.ndarray:
    """(N, H, W) class maps -> (N, size, size) (or (N, *size)), nearest neighbour (pixel centres, no
    half-pixel shift)."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    t = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))[:, None]
    if tuple(t.shape[-2:]) != hw:
        t = F.interpolate(t, size=hw, mode="nearest-exact")
    dtype = np.uint8 if masks.max(initial=0) < 256 else np.int16
    return t[:, 0].round().numpy().astype(dtype)


def resize_images(
    images: np.ndarray, size: int, mode: str = "bilinear", released: bool = False
) -> np.ndarray:
    """(N, C, H, W) float [0, 1] -> (N, C, size, size) float16, ``mode`` with antialiasing, clamped.
    ``released``: Baharoon et al.'s resize of their float tensors (torchvision 0.15): bicubic without
    antialiasing, the overshoot kept."""
    t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    mode = "bicubic" if released else mode
    if tuple(t.shape[-2:]) != (size, size):
        smooth = mode in ("bilinear", "bicubic")
        t = F.interpolate(
            t,
            size=(size, size),
            mode=mode,
            align_corners=False if smooth else None,
            antialias=smooth and not released,
        )
    return (t if released else t.clamp(0.0, 1.0)).numpy().astype(np.float16)


def _channels_first(img: np.ndarray, ndim: int) -> np.ndarray:
    """Image -> (rows, C, H, W): a 2D image is one row, a volume one row per slice."""
    if ndim == 3:
        return img[:, None]
    return img[None, None] if img.ndim == 2 else np.moveaxis(img, -1, 0)[None]


def load_case(dataset: Dataset, rec: Record) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask of one record, checked against each other and the declared classes."""
    img = dataset.load_image(rec)
    mask = dataset.load_mask(rec)
    where = f"sample {rec.sample_id}: image {rec.image.path}"
    if dataset.ndim == 3:
        if img.ndim != 3:
            raise DataError(f"{where} has shape {img.shape}; expected a 3D volume")
        spatial = img.shape
    else:
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
            raise DataError(f"{where} has shape {img.shape}; expected HxW or HxWx3")
        spatial = img.shape[:2]
    mpath = rec.mask.path if rec.mask is not None else "?"
    if mask.shape != spatial:
        raise DataError(
            f"image/mask shape mismatch for sample {rec.sample_id}: image {rec.image.path} "
            f"{tuple(spatial)} vs mask {mpath} {tuple(mask.shape)}"
        )
    lo, hi = int(mask.min(initial=0)), int(mask.max(initial=0))
    c = len(dataset.classes)
    if lo < 0 or hi >= c:
        bad = [int(v) for v in np.unique(mask) if not 0 <= v < c][:5]
        raise DataError(
            f"mask {mpath} (sample {rec.sample_id}) has values {bad} outside the {c} classes "
            f"{list(dataset.classes)}"
        )
    return img, mask


def load_split(
    dataset: Dataset,
    split: str,
    size: int,
    *,
    keep_masks: bool = True,
    keep_images: bool = False,
    records: list[Record] | None = None,
    interpolation: str = "bilinear",
    released_resize: bool = False,
) -> SegSplit:
    """Read and check every case of ``split``; targets resized to ``size``.

    ``keep_images`` also keeps the images resized to ``size`` with ``interpolation`` (the
    from-scratch U-Net's input, or a backbone's slices; ``released_resize``: as Baharoon et al.'s
    loaders, see :func:`resize_images`); grayscale and colour images are mixed by repeating gray to
    3 channels.
    """
    records = dataset.split(split) if records is None else records
    if not records:
        raise DataError(f"dataset {dataset.name} has no {split!r} split")
    cases: list[Case] = []
    targets: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    images = SliceStack()
    row = 0
    small = np.uint8 if len(dataset.classes) <= 256 else np.int16
    for rec in records:
        img, mask = load_case(dataset, rec)
        n = mask.shape[0] if dataset.ndim == 3 else 1
        spacing = None
        if dataset.ndim == 3 and rec.image.kind == "nifti":
            spacing = nifti_spacing(rec.image.path, rec.image.axis, dataset.read.orient)
        cases.append(Case(rec.sample_id, rec.patient_id, rec, slice(row, row + n), mask.shape, spacing))
        row += n
        targets.append(resize_masks(mask if dataset.ndim == 3 else mask[None], size))
        if keep_masks:
            masks.append(mask.astype(small))
        if keep_images:
            rows = _channels_first(img, dataset.ndim)[:, :3]
            images.add(resize_images(rows, size, interpolation, released_resize))
    return SegSplit(
        split,
        cases,
        np.concatenate(targets),
        masks if keep_masks else None,
        images.finish() if keep_images else None,
    )


# Resized slices past this many bytes go to disk (RADPROBE_SPILL_MB): AMOS's 500 CT volumes at
# 448 px are about 20 GB of float16 slices, which a memory map serves from the page cache instead.
SPILL_BYTES = int(float(os.environ.get("RADPROBE_SPILL_MB", "2048")) * 2**20)


class SliceStack:
    """Collects per-case (rows, C, R, R) image arrays into one array, in memory while small.

    Past :data:`SPILL_BYTES` (and while every part has the same channels) the parts are appended to
    a file in the cache's ``tmp/`` folder that is unlinked as soon as it is created, and
    :meth:`finish` returns a read-only memory map of it: nothing stays on disk once the array is
    gone, even after a crash.
    """

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.nbytes = 0
        self.file: Any = None
        self.rows = 0
        self.layout: tuple[int, ...] = ()
        self.dtype: Any = None

    def add(self, part: np.ndarray) -> None:
        if self.file is not None and (tuple(part.shape[1:]) != self.layout or part.dtype != self.dtype):
            self.parts = [np.array(self._map())]  # mixed channels after spilling (rare): back to memory
        if self.file is None:
            self.parts.append(part)
            self.nbytes += part.nbytes
            if self.nbytes > SPILL_BYTES and len({(p.shape[1:], p.dtype) for p in self.parts}) == 1:
                self._spill()
            return
        self._write(part)

    def _spill(self) -> None:
        from radprobe.config import cache_dir

        folder = cache_dir() / "tmp"
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="slices-", suffix=".bin", dir=folder)
        with contextlib.suppress(OSError):  # POSIX keeps the open file; elsewhere the OS tmp sweep will
            os.unlink(name)
        self.file = os.fdopen(fd, "w+b")
        self.layout, self.dtype, self.rows = tuple(self.parts[0].shape[1:]), self.parts[0].dtype, 0
        parts, self.parts = self.parts, []
        for k, p in enumerate(parts):
            self._write(p)
            parts[k] = None  # type: ignore[call-overload]

    def _write(self, part: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(part).tobytes())
        self.rows += len(part)

    def _map(self) -> np.ndarray:
        self.file.flush()
        arr = np.memmap(self.file, dtype=self.dtype, mode="r", shape=(self.rows, *self.layout))
        self.file.close()  # the mapping keeps the data
        self.file = None
        return arr

    def finish(self) -> np.ndarray:
        """The stacked array: in memory, or a memory map of the spilled file."""
        if self.file is not None:
            return self._map()
        return _stack(self.parts)


def _stack(images: list[np.ndarray]) -> np.ndarray:
    """Concatenate per-case (rows, 1 or 3, R, R) arrays, gray repeated to 3 channels where colour
    is mixed in. Each part is dropped once copied, so memory peaks near one copy of the split
    (the result's pages are only taken as they are written), not two."""
    channels = max(i.shape[1] for i in images)
    out = np.empty((sum(len(i) for i in images), channels, *images[0].shape[2:]), dtype=images[0].dtype)
    row = 0
    for k, part in enumerate(images):
        out[row : row + len(part)] = part  # (n, 1, R, R) broadcasts to (n, 3, R, R)
        row += len(part)
        images[k] = None  # type: ignore[call-overload]
        del part
    return out


def uniform_spacing(splits: Iterable[SegSplit]) -> None:
    """Drop every case's spacing unless all are known, so HD95 has one unit (mm, else pixels)."""
    splits = list(splits)
    if not all(c.spacing is not None for sp in splits for c in sp.cases):
        for sp in splits:
            for c in sp.cases:
                c.spacing = None


def draw_cases(patients: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` training cases, from ``n`` distinct patients while there are enough."""
    order = rng.permutation(len(patients))
    picked: list[int] = []
    seen: set[str] = set()
    for i in order:
        if patients[i] not in seen:
            picked.append(int(i))
            seen.add(patients[i])
        if len(picked) == n:
            return np.sort(np.asarray(picked))
    rest = [int(i) for i in order if int(i) not in set(picked)]
    return np.sort(np.asarray(picked + rest[: n - len(picked)]))
