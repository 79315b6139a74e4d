"""Figshare brain-tumour MRI preset (Cheng et al.): MATLAB v7.3 files with a ``cjdata`` struct."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from radprobe.data.formats.common import Source
from radprobe.data.presets.common import finish, root_dir
from radprobe.data.problems import Problem, error
from radprobe.data.readers import natural_key
from radprobe.data.records import ImageRef, Record
from radprobe.data.spec import Spec
from radprobe.errors import DataError

CLASSES = ("meningioma", "glioma", "pituitary")  # cjdata.label 1, 2, 3
FIELDS = ("image", "label", "PID", "tumorMask")
IGNORED = frozenset({"cvind.mat"})  # the release's 5-fold index file, not a sample


def read_meta(path: Path) -> tuple[int, str]:
    """(cjdata.label, cjdata.PID) of one file, without reading the image."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        with open(path, "rb") as fh:
            head = fh.read(20)
        if head.startswith(b"MATLAB 5.0"):
            raise DataError(f"{path}: a MATLAB v5 .mat file; the Figshare release is v7.3 (HDF5)") from None
        raise DataError(f"cannot read {path}: truncated or not a MATLAB v7.3 (HDF5) file ({e})") from None
    with f:
        group = f.get("cjdata")
        if group is None:
            raise DataError(f"{path}: no cjdata struct (has: {', '.join(f.keys())})")
        missing = [k for k in FIELDS if k not in group]
        if missing:
            raise DataError(
                f"{path}: cjdata lacks field(s) {', '.join(missing)} (has: {', '.join(group.keys())})"
            )
        try:
            label = float(np.asarray(group["label"][()]).ravel()[0])
            # MATLAB char arrays are stored as uint16 code units.
            pid = "".join(chr(int(c)) for c in np.asarray(group["PID"][()]).ravel() if int(c)).strip()
        except (OSError, ValueError, IndexError) as e:
            raise DataError(f"cannot read cjdata.label/PID of {path}: {e}") from None
    if label != int(label):
        raise DataError(
            f"{path}: cjdata.label = {label}; expected 1 (meningioma), 2 (glioma) or 3 (pituitary)"
        )
    return int(label), pid


def index_brain_tumor(spec: Spec) -> Source:
    root = root_dir(spec)
    target = (spec.options.get("task") or "classification").strip().lower()
    if target not in ("classification", "segmentation"):
        raise DataError(f"task={target!r}: expected classification or segmentation")
    files = sorted(
        (
            p
            for p in root.rglob("*.mat")
            if p.name.lower() not in IGNORED
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        ),
        key=lambda p: natural_key(p.relative_to(root).as_posix()),
    )
    if not files:
        raise DataError(
            f"brain-tumor-mri: no .mat files under {root}; expected the Figshare release "
            "(brainTumorDataPublic_*/<n>.mat)"
        )
    issues: list[Problem] = []
    records: list[Record] = []
    for path in files:
        try:
            label, pid = read_meta(path)
        except DataError as e:
            issues.append(error(str(e)))
            continue
        if label not in (1, 2, 3):
            issues.append(
                error(f"{path}: cjdata.label = {label}; expected 1 (meningioma), 2 (glioma) or 3 (pituitary)")
            )
            continue
        if not pid:
            issues.append(error(f"{path}: empty cjdata.PID, so its patient is unknown"))
            continue
        image = ImageRef(str(path), "h5", key="cjdata/image")
        if target == "segmentation":
            mask = ImageRef(str(path), "h5", key="cjdata/tumorMask")
            records.append(Record(path.stem, pid, image, None, mask, meta={"tumor": CLASSES[label - 1]}))
        else:
            records.append(Record(path.stem, pid, image, label - 1))
    task = "segmentation" if target == "segmentation" else "multiclass"
    classes = ("background", "tumor") if target == "segmentation" else CLASSES
    conventions = {"patient": "cjdata.PID", "target": target}
    return finish(
        spec,
        records,
        task,
        classes,
        root,
        issues,
        conventions,
        default_name="brain-tumor-mri",
        patients_allowed=True,
        modality="mri",
    )
