"""``check_dataset``: report every problem in a dataset, each naming its file or sample.

Errors: the spec or manifest cannot be read; missing label, file or mask; unreadable or corrupt file;
image/mask shape mismatch; mask values outside the classes; wrong image dimensionality; duplicated
sample ids; unknown split names; patient leakage across splits.
Warnings: a class (or segmentation label) with no samples, or none in some split; no patient ids;
byte-identical files in different splits; constant images; ignored files.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict

import numpy as np

from radprobe.data.dataset import Dataset, build
from radprobe.data.formats.common import OutsideRootError
from radprobe.data.problems import Problem, error, warning
from radprobe.data.readers import VOLUME_KINDS, collect_warnings
from radprobe.data.records import SPLITS, Record
from radprobe.data.splits import check_leakage
from radprobe.errors import DataError


def _expected_shape(ds: Dataset, img: np.ndarray) -> str | None:
    if ds.ndim == 3:
        return None if img.ndim == 3 else f"expected a 3D volume, got shape {img.shape}"
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3):
        return None
    return f"expected a 2D image (HxW or HxWx3), got shape {img.shape}"


def _hash(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _identical_files(records: list[Record]) -> list[Problem]:
    """Byte-identical image files that sit in different splits (a leak no patient id reveals)."""
    by_size: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        if r.image.kind in ("image", "dicom") and r.image.index is None and r.split:
            try:
                by_size[os.path.getsize(r.image.path)].append(r)
            except OSError:
                continue
    out = []
    for group in by_size.values():
        if len({r.split for r in group}) < 2:
            continue
        by_hash: dict[str, list[Record]] = defaultdict(list)
        for r in group:
            if (h := _hash(r.image.path)) is not None:
                by_hash[h].append(r)
        for same in by_hash.values():
            if len({r.split for r in same}) > 1:
                names = ", ".join(f"{r.image.path} ({r.split})" for r in same)
                out.append(warning(f"identical image files in different splits: {names}"))
    return out


def _read_problems(ds: Dataset, skip: set[str]) -> list[Problem]:
    out: list[Problem] = []
    bad_files: set[str] = set(skip)
    seen_values: set[int] = set()
    checked: set[tuple] = set()
    for r in ds.records:
        if r.image.path in bad_files:
            continue
        try:
            img = ds.load_image(r)
        except DataError as e:
            bad_files.add(r.image.path)
            out.append(error(f"unreadable image for sample {r.sample_id}: {e}"))
            continue
        if (msg := _expected_shape(ds, img)) is not None:
            out.append(error(f"image {r.image.path} (sample {r.sample_id}): {msg}"))
        elif img.size and r.image.kind not in VOLUME_KINDS and float(img.max()) == float(img.min()):
            out.append(warning(f"image {r.image.path} (sample {r.sample_id}) is constant"))
        if r.mask is None:
            if ds.task == "segmentation":
                out.append(error(f"sample {r.sample_id} ({r.image.path}) has no mask"))
            continue
        key = (r.image.path, r.image.index, r.mask.path, r.mask.index)
        if r.mask.path in bad_files or key in checked:
            continue
        checked.add(key)
        try:
            mask = ds.load_mask(r)
        except DataError as e:
            bad_files.add(r.mask.path)
            out.append(error(f"unusable mask for sample {r.sample_id}: {e}"))
            continue
        spatial = img.shape if ds.ndim == 3 else img.shape[:2]
        if mask.shape != spatial:
            out.append(
                error(
                    f"image/mask shape mismatch for sample {r.sample_id}: image {r.image.path} "
                    f"{tuple(spatial)} vs mask {r.mask.path} {tuple(mask.shape)}"
                )
            )
            continue
        values = np.unique(mask)
        outside = [int(v) for v in values if not 0 <= v < len(ds.classes)]
        if outside:
            out.append(
                error(
                    f"mask {r.mask.path} (sample {r.sample_id}) has values {outside[:5]} outside the "
                    f"{len(ds.classes)} classes {list(ds.classes)}"
                )
            )
        seen_values.update(int(v) for v in values)
    if ds.task == "segmentation" and ds.records:
        for i, c in enumerate(ds.classes):
            if i not in seen_values and i > 0:
                out.append(warning(f"segmentation class {c!r} (value {i}) appears in no mask"))
    return out


def check_dataset(
    spec: str,
    *,
    read: bool = True,
    split_seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
) -> list[Problem]:
    """Every problem found in the dataset ``spec`` (empty list: all good).

    ``read=False`` skips opening each image and mask (fast structural check only).
    """
    try:
        ds, problems = build(spec, split_seed=split_seed, fractions=fractions, save=False)
    except OutsideRootError:
        raise  # a refusal, not a problem to list: the dataset is not opened at all
    except DataError as e:
        return [error(str(e))]
    problems = list(problems)
    if not ds.has_patients and ds.records:
        problems.append(
            warning(
                f"dataset {ds.name}: no patient ids (add a patient column or patient_re=); every sample is "
                "treated as its own patient, so splits leak if patients have several images"
            )
        )
    if all(r.split in SPLITS for r in ds.records):
        problems.extend(error(msg) for msg in check_leakage(ds.records))
        problems.extend(_identical_files(ds.records))
    if read:
        refs = [ref for r in ds.records for ref in (r.image, r.mask) if ref is not None]
        missing = {ref.path for ref in refs if not os.path.exists(ref.path)}  # already reported
        with collect_warnings() as notes:
            problems.extend(_read_problems(ds, missing))
        problems.extend(warning(m) for m in dict.fromkeys(notes))  # slices of a volume repeat its notes
    return problems
