"""Folder trees (``folder:``, ``nifti:`` and ``dicom:`` share them; the scheme names the intent)::

<dir>/<class>/**/<file>                     classification, one sample per file
<dir>/<class>/**/<series folder>/*.dcm      classification, one 3D sample per DICOM series
<dir>/{train,val,test}/<class>/...          the same with given splits (aliases: valid, testing, ...)
<dir>/images/<name>.<ext> + <dir>/masks/<name>[_mask|_seg|_label|_gt].<ext>
                                            segmentation (also imagesTr/labelsTr, labels/, and
                                            nnU-Net "_0000" channel suffixes); optionally under
                                            {train,val,test}/
"""

from __future__ import annotations

import re
from pathlib import Path

from radprobe.data.formats.common import (
    PatientRule,
    Source,
    axis_option,
    finish_source,
    infer_task,
    order_classes,
    rel_id,
)
from radprobe.data.formats.dicom import is_series, series_patient
from radprobe.data.problems import Problem, error, warning
from radprobe.data.readers import kind_of
from radprobe.data.records import ImageRef, Record, TaskType
from radprobe.data.spec import Spec, opt_list
from radprobe.data.splits import normalize_split
from radprobe.errors import DataError

IMAGE_DIRS = ("images", "imagestr", "image", "imgs")
MASK_DIRS = ("masks", "mask", "labels", "labelstr", "segmentations", "seg", "gt")
MASK_SUFFIXES = ("_mask", "_seg", "_label", "_labels", "_gt", "_segmentation")
IGNORED_SUFFIXES = (".csv", ".tsv", ".json", ".txt", ".md", ".yaml", ".yml", ".xlsx", ".xls", ".pdf", ".log")


def _hidden(p: Path) -> bool:
    return p.name.startswith((".", "_")) or p.name == "radprobe.yaml"


def _children(d: Path) -> tuple[list[Path], list[Path]]:
    entries = sorted(p for p in d.iterdir() if not _hidden(p))
    return [p for p in entries if p.is_dir()], [p for p in entries if p.is_file()]


def _sample_kind(p: Path) -> str | None:
    kind = kind_of(p)
    return kind if kind in ("image", "dicom", "nifti") else None


def _class_samples(class_dir: Path, issues: list[Problem]) -> list[tuple[Path, str]]:
    """(path, kind) of every sample under a class folder; DICOM series folders count as one sample."""
    out: list[tuple[Path, str]] = []

    def walk(d: Path) -> None:
        dirs, files = _children(d)
        dicoms = [f for f in files if kind_of(f) == "dicom"]
        others = [f for f in files if f not in dicoms and not f.name.lower().endswith(IGNORED_SUFFIXES)]
        if d != class_dir and dicoms and not others and not dirs and is_series(dicoms):
            out.append((d, "dicom-series"))
            return
        for f in files:
            kind = "dicom" if f in dicoms else _sample_kind(f)
            if kind:
                out.append((f, kind))
            elif not f.name.lower().endswith(IGNORED_SUFFIXES):
                issues.append(warning(f"ignored file of unsupported type: {f}"))
        for sub in dirs:
            walk(sub)

    walk(class_dir)
    return out


def _seg_dirs(dirs: list[Path]) -> tuple[Path, Path] | None:
    by_name = {d.name.lower(): d for d in dirs}
    images = next((by_name[n] for n in IMAGE_DIRS if n in by_name), None)
    masks = next((by_name[n] for n in MASK_DIRS if n in by_name), None)
    if images is None or masks is None or len(dirs) > 3:
        return None
    return images, masks


def _mask_key(rel: str) -> str:
    low = rel.lower()
    for s in MASK_SUFFIXES:
        if low.endswith(s):
            return rel[: -len(s)]
    return rel


def _image_key(rel: str) -> str:
    return re.sub(r"_\d{4}$", "", rel)  # nnU-Net channel suffix


def _files(d: Path, issues: list[Problem]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in sorted(d.rglob("*")):
        if not f.is_file() or any(_hidden(Path(part)) for part in f.relative_to(d).parts):
            continue
        if _sample_kind(f) is None:
            if not f.name.lower().endswith(IGNORED_SUFFIXES):
                issues.append(warning(f"ignored file of unsupported type: {f}"))
            continue
        out[rel_id(f, d)] = f
    return out


def index_tree(spec: Spec) -> Source:
    root = Path(spec.path)
    opts = spec.options
    issues: list[Problem] = []
    dirs, files = _children(root)
    split_dirs = [(normalize_split(d.name), d) for d in dirs]
    if dirs and all(s is not None for s, _ in split_dirs):
        layout = [(s, d) for s, d in split_dirs]
        for f in files:
            if _sample_kind(f):
                issues.append(error(f"{f} is outside the split folders, so it has no split or label"))
    else:
        layout = [(None, root)]
    patient_rule = PatientRule(opts.get("patient_re"))
    axis = axis_option(opts)
    explicit_classes = opt_list(opts.get("classes")) or None
    found: list[tuple[str | None, str | None, Path, str, Path | None]] = []  # split, class, path, kind, mask
    seg_flags = set()
    class_names: set[str] = set()
    for split, base in layout:
        sub_dirs, sub_files = _children(base)
        pair = _seg_dirs(sub_dirs)
        seg_flags.add(pair is not None)
        if pair is not None:
            images, masks = _files(pair[0], issues), _files(pair[1], issues)
            mask_by_key = {_mask_key(k): v for k, v in masks.items()}
            used = set()
            for k, img in images.items():
                m = mask_by_key.get(_image_key(k)) or mask_by_key.get(k)
                if m is None:
                    issues.append(error(f"no mask for image {img} in {pair[1]}"))
                    continue
                used.add(m)
                found.append((split, None, img, _sample_kind(img) or "image", m))
            for m in sorted(set(masks.values()) - used):
                issues.append(warning(f"mask {m} has no matching image in {pair[0]}"))
            continue
        for f in sub_files:
            if _sample_kind(f):
                issues.append(error(f"{f} is not inside a class folder, so it has no label"))
        for class_dir in sub_dirs:
            class_names.add(class_dir.name)
            for p, kind in _class_samples(class_dir, issues):
                found.append((split, class_dir.name, p, kind, None))
    if len(seg_flags) > 1:
        raise DataError(f"{root}: some split folders hold images/masks and others class folders")
    segmentation = seg_flags == {True}

    if segmentation:
        classes: tuple[str, ...] = ()
        task: TaskType = "segmentation"
    else:
        classes = order_classes(class_names, explicit_classes)
        unknown = sorted(class_names - set(classes))
        if unknown:
            raise DataError(f"{root}: class folders {unknown} are not in classes={','.join(classes)}")
        task = infer_task(classes, opts.get("task") or None)
        tables = [f for f in files if f.name.lower().endswith((".csv", ".tsv", ".parquet"))]
        if len(classes) < 2 and tables:
            raise DataError(
                f"{root}: found class folder(s) {list(classes)} only; to use the manifest, give its path "
                f"(e.g. {tables[0]})"
            )
    class_index = {c: i for i, c in enumerate(classes)}

    records: list[Record] = []
    dicom_patients = False
    for split, cls, p, kind, mask_path in found:
        rel = rel_id(p, root)
        patient = patient_rule(rel, issues, str(p))
        if patient is None and not patient_rule.regex and kind in ("dicom", "dicom-series"):
            patient = series_patient(p, kind)
            dicom_patients |= patient is not None
        image = ImageRef(str(p), kind, axis=axis)
        mask = ImageRef(str(mask_path), _sample_kind(mask_path) or "image", axis=axis) if mask_path else None
        label = class_index[cls] if cls is not None else None
        records.append(Record(rel, patient or rel, image, label, mask, split))
    has_patients = bool(patient_rule.regex) or dicom_patients
    return finish_source(spec, records, task, classes, root.name, root, issues, has_patients, opts)
