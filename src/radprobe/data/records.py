"""The dataset contract: records that name a sample, its patient, split, image, labels and mask.

Readers hide the file format: every image reaches a backbone as float32 in [0, 1], HxW (grayscale)
or HxWx3, and every 3D volume as (D, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

TaskType = Literal["binary", "multiclass", "multilabel", "segmentation"]
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageRef:
    """Where an image lives.

    kind:  "image" (PNG/JPEG/TIFF/BMP, 8- or 16-bit), "dicom" (one file), "dicom-series" (a folder),
           "nifti" (a .nii/.nii.gz volume), "npz" (MedMNIST-style array file), "h5" (HDF5 / v7.3 .mat).
    index: slice index for volumes, or sample index in an npz/h5 array; None for a whole file/volume.
    axis:  slicing axis for volumes (after canonical orientation).
    key:   array name inside npz/h5.
    """

    path: str
    kind: str = "image"
    index: int | None = None
    axis: int = 2
    key: str | None = None


@dataclass(frozen=True)
class Record:
    """One sample. ``label`` is a class index (binary/multiclass), a multi-hot tuple (multilabel),
    or None (segmentation, where ``mask`` carries the target)."""

    sample_id: str
    patient_id: str
    image: ImageRef
    label: int | tuple[int, ...] | None = None
    mask: ImageRef | None = None
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def origin(record: Record) -> str:
    """Where a record comes from, for messages: its manifest row, else its image file."""
    row = record.meta.get("row")
    return f"{record.meta['manifest']} row {row}" if row is not None else record.image.path


def labels_array(records: list[Record], task: TaskType, num_classes: int) -> np.ndarray:
    """Stack record labels: (N,) int64 for binary/multiclass, (N, C) int64 multi-hot for multilabel."""
    if task == "multilabel":
        out = np.zeros((len(records), num_classes), dtype=np.int64)
        for i, r in enumerate(records):
            lab = r.label
            if not isinstance(lab, tuple) or len(lab) != num_classes:
                raise ValueError(f"record {r.sample_id}: expected a multi-hot tuple of length {num_classes}")
            out[i] = lab
        return out
    if task == "segmentation":
        raise ValueError("segmentation datasets carry masks, not labels")
    return np.asarray([int(r.label) for r in records], dtype=np.int64)  # type: ignore[arg-type]
