"""``npz:`` files laid out like MedMNIST: ``{train,val,test}_images`` with ``_labels`` (or ``_masks``)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from radprobe.data.formats.common import Source, finish_source, infer_task
from radprobe.data.problems import Problem, error
from radprobe.data.records import ImageRef, Record, TaskType
from radprobe.data.spec import Spec, opt_list
from radprobe.errors import DataError


def npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Array shapes in an .npz file, read from the headers without decompressing the data."""
    out: dict[str, tuple[int, ...]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if not name.endswith(".npy"):
                    continue
                with zf.open(name) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, _ = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, _, _ = np.lib.format.read_array_header_2_0(f)
                out[name[:-4]] = tuple(int(s) for s in shape)
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        raise DataError(f"cannot read npz file {path}: {e}") from None
    return out


def _labels(path: Path, prefixes: list[str]) -> dict[str, np.ndarray]:
    """``<prefix>labels`` of each group; a NaN (or infinite) label is an error naming its index."""
    labels: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for p in prefixes:
                if f"{p}labels" not in z.files:
                    raise DataError(f"npz file {path} has {p}images but no {p}labels")
                labels[p] = np.asarray(z[f"{p}labels"])
    except DataError:
        raise
    except Exception as e:  # zip/format errors
        raise DataError(f"cannot read npz file {path}: {e}") from None
    for p, lab in labels.items():
        if np.issubdtype(lab.dtype, np.floating) and not np.isfinite(lab).all():
            i = int(np.flatnonzero(~np.isfinite(lab.reshape(len(lab), -1)).any(1))[0])
            raise DataError(
                f"npz file {path}: {p}labels[{i}] = {lab[i].tolist()} is missing (NaN); "
                "expected class indices (or 0/1 vectors)"
            )
    return labels


def index_npz(spec: Spec) -> Source:
    """Index an ``npz:`` file: one record per array item, with the file's splits."""
    path = Path(spec.path)
    opts = spec.options
    issues: list[Problem] = []
    shapes = npz_shapes(path)
    groups: list[tuple[str | None, str]] = [
        (s, f"{s}_") for s in ("train", "val", "test") if f"{s}_images" in shapes
    ]
    if not groups and "images" in shapes:
        groups = [(None, "")]
    if not groups:
        raise DataError(
            f"npz file {path} has no train_images/val_images/test_images (or images) array; "
            f"has: {', '.join(sorted(shapes))}"
        )
    segmentation = all(f"{p}masks" in shapes for _, p in groups) and not any(
        f"{p}labels" in shapes for _, p in groups
    )
    labels = {} if segmentation else _labels(path, [p for _, p in groups])
    first = shapes[f"{groups[0][1]}images"]
    ndim = 3 if len(first) == 4 and first[-1] not in (1, 3, 4) else 2
    multilabel = bool(labels) and any(v.ndim == 2 and v.shape[1] > 1 for v in labels.values())
    explicit_classes = opt_list(opts.get("classes")) or None
    if segmentation:
        task: TaskType = "segmentation"
        classes: tuple[str, ...] = ()
    elif multilabel:
        width = max(v.shape[1] for v in labels.values())
        classes = tuple(explicit_classes or [f"label_{i}" for i in range(width)])
        task = "multilabel"
    else:
        top = max(int(v.max()) for v in labels.values() if v.size)
        classes = tuple(explicit_classes or [str(i) for i in range(top + 1)])
        task = infer_task(classes, opts.get("task") or None)
    records: list[Record] = []
    for split, p in groups:
        n = shapes[f"{p}images"][0]
        lab = labels.get(p)
        if lab is not None:
            lab = lab.reshape(len(lab), -1)
            if len(lab) != n:
                issues.append(error(f"{path}: {p}labels has {len(lab)} rows but {p}images has {n}"))
                continue
        if segmentation and shapes[f"{p}masks"][0] != n:
            issues.append(error(f"{path}: {p}masks has {shapes[f'{p}masks'][0]} items but {p}images has {n}"))
            continue
        for i in range(n):
            sid = f"{split or 'sample'}-{i:05d}"
            image = ImageRef(str(path), "npz", index=i, key=f"{p}images")
            mask = ImageRef(str(path), "npz", index=i, key=f"{p}masks") if segmentation else None
            label: int | tuple[int, ...] | None = None
            if lab is not None:
                row = lab[i]
                if task == "multilabel":
                    if row.size != len(classes) or not np.isin(row, (0, 1)).all():
                        issues.append(error(f"{path}: {p}labels[{i}] = {row.tolist()} is not a 0/1 vector"))
                        continue
                    label = tuple(int(v) for v in row)
                else:
                    label = int(row[0])
                    if not 0 <= label < len(classes):
                        issues.append(
                            error(f"{path}: {p}labels[{i}] = {label} is outside 0..{len(classes) - 1}")
                        )
                        continue
            records.append(Record(sid, sid, image, label, mask, split))
    src = finish_source(
        spec, records, task, classes, path.name.split(".")[0], path.parent, issues, False, opts
    )
    src.ndim = ndim
    return src
