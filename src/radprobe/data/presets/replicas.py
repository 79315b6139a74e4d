"""Tiny synthetic replicas of each preset's published on-disk layout, for tests and demos.

Every generator writes real files (same folder names, file names, CSV headers, HDF5 groups and
``dataset.json`` keys as the public release) with a handful of tiny images, and returns the spec
that loads them. Pixel content is noise plus a per-sample pattern (nothing learnable is promised);
what is faithful is the format. ``make_replica(preset, root)`` dispatches by preset name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from radprobe.data.presets.medmnist import file_name as medmnist_file_name
from radprobe.data.presets.medmnist_info import MEDMNIST
from radprobe.data.presets.registry import AMOS_ORGANS, BTCV_ORGANS, CHEXPERT_ALL, NIH_FINDINGS
from radprobe.errors import DataError

NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_ALL]
MATLAB_HEADER = (
    b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2015 HDF5 schema 1.00 ."
)
AFFINE = np.diag([-1.5, -1.5, 2.0, 1.0])  # LPS-like, as many CT exports: readers must reorient


def _gray(rng: np.random.Generator, shape: tuple[int, ...], level: float = 100.0) -> np.ndarray:
    img = rng.normal(level, 25.0, shape)
    img[: shape[0] // 2] += 40.0  # a structure, so no image is constant
    return np.clip(img, 0, 255).astype(np.uint8)


def _png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _jpg(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=95)


def _nifti(path: Path, arr: np.ndarray) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, AFFINE), str(path))


def _write_csv(
    path: Path, header: list[str] | str, rows: list[list[Any]], trailing_comma: bool = False
) -> None:
    head = header if isinstance(header, str) else ",".join(header)
    end = "," if trailing_comma else ""
    lines = [head] + [",".join(str(v) for v in row) + end for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------- NIH ChestX-ray14


def make_nih(root: str | os.PathLike[str], *, layout: str = "flat", patients: int = 16, seed: int = 0) -> str:
    """``Data_Entry_2017.csv`` + official lists + ``images/`` (or Kaggle ``images_00N/images/``).

    The last quarter of the patients form the official test list, as in the release (patient-disjoint).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows, names_by_patient = [], []
    for p in range(1, patients + 1):
        names = []
        for k in range(int(rng.integers(2, 5))):
            name = f"{p:08d}_{k:03d}.png"
            if rng.random() < 0.35:
                findings = "No Finding"
            else:
                picks = rng.choice(len(NIH_FINDINGS), size=int(rng.integers(1, 3)), replace=False)
                findings = "|".join(NIH_FINDINGS[i] for i in sorted(picks))
            rows.append(
                [name, findings, k, p, int(rng.integers(20, 80)), "MF"[p % 2], "PA", 2500, 2048, 0.143, 0.143]
            )
            names.append(name)
        names_by_patient.append(names)
    for i, f in enumerate(NIH_FINDINGS):  # every finding at least once
        rows[(2 * i) % len(rows)][1] = f
    n_test = max(1, patients // 4)
    train_val = [n for names in names_by_patient[:-n_test] for n in names]
    test = [n for names in names_by_patient[-n_test:] for n in names]
    _write_csv(root / "Data_Entry_2017.csv", NIH_HEADER, rows, trailing_comma=True)
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    for i, row in enumerate(rows):
        folder = root / "images" if layout == "flat" else root / f"images_{i % 3 + 1:03d}" / "images"
        _png(folder / row[0], _gray(rng, (16, 16)))
    return f"nih-cxr14:{root}"


# ---------------------------------------------------------------------------- CheXpert


def make_chexpert(
    root: str | os.PathLike[str],
    *,
    patients: int = 10,
    test: bool = True,
    folder: str = "CheXpert-v1.0-small",
    seed: int = 0,
) -> str:
    """``<root>/CheXpert-v1.0-small/{train,valid}.csv`` (+ ``test_labels.csv``) and JPEGs, CSV paths
    prefixed with the release folder as in the download."""
    base = Path(root) / folder
    rng = np.random.default_rng(seed)

    def study_rows(split: str, first: int, n: int, values: tuple[str, ...], prefix: bool) -> list[list[Any]]:
        rows = []
        for p in range(first, first + n):
            for view, kind in (("view1_frontal.jpg", "Frontal"), ("view2_lateral.jpg", "Lateral")):
                if kind == "Lateral" and rng.random() < 0.5:
                    continue
                rel = f"{split}/patient{p:05d}/study1/{view}"
                _jpg(base / rel, _gray(rng, (16, 16)))
                labels = [values[int(rng.integers(len(values)))] for _ in CHEXPERT_ALL]
                path = f"{folder}/{rel}" if prefix else rel
                rows.append(
                    [
                        path,
                        "Female",
                        int(rng.integers(20, 90)),
                        kind,
                        "AP" if kind == "Frontal" else "",
                        *labels,
                    ]
                )
        return rows

    train = study_rows("train", 1, patients, ("1.0", "0.0", "-1.0", ""), True)
    # guarantee the label values the policies act on
    train[0][5:] = ["-1.0"] * len(CHEXPERT_ALL)
    train[1][5:] = ["1.0"] * len(CHEXPERT_ALL)
    valid = study_rows("valid", 64541, max(2, patients // 3), ("1.0", "0.0"), True)
    valid[0][5:] = ["1.0"] * len(CHEXPERT_ALL)
    _write_csv(base / "train.csv", CHEXPERT_HEADER, train)
    _write_csv(base / "valid.csv", CHEXPERT_HEADER, valid)
    if test:
        rows = study_rows("test", 64741, max(2, patients // 3), ("1", "0"), False)
        rows[0][5:] = ["1"] * len(CHEXPERT_ALL)
        # the test labels file has no view, sex or age columns
        _write_csv(base / "test_labels.csv", ["Path", *CHEXPERT_ALL], [[r[0], *r[5:]] for r in rows])
    return f"chexpert:{base}"


# ---------------------------------------------------------------------------- SARS-CoV-2 CT


def make_sars(
    root: str | os.PathLike[str],
    *,
    per_class: dict[str, int] | None = None,
    wrapper: str = "New_Data_CoV2",
    seed: int = 0,
) -> str:
    """``<root>/New_Data_CoV2/{Covid,Healthy,Others}/Patient N/<k>.png`` with 3-12 slices each; slice
    ``k`` is brighter than slice ``k - 1`` so its order can be verified."""
    base = Path(root) / wrapper if wrapper else Path(root)
    rng = np.random.default_rng(seed)
    for cls, n in (per_class or {"Covid": 6, "Healthy": 4, "Others": 4}).items():
        for p in range(1, n + 1):
            for k in range(1, int(rng.integers(3, 13)) + 1):
                img = np.clip(rng.normal(8.0 * k, 2.0, (12, 12)), 0, 255).astype(np.uint8)
                _png(base / cls / f"Patient {p}" / f"{k}.png", img)
    return f"sars-cov-2-ct:{Path(root)}"


# ---------------------------------------------------------------------------- Figshare brain tumour


def write_cjdata_mat(path: Path, image: np.ndarray, label: int, pid: str, mask: np.ndarray) -> None:
    """One Figshare-style MATLAB v7.3 file: HDF5 with a 512-byte MATLAB header and struct ``cjdata``.

    MATLAB stores arrays column-major, so h5py sees them transposed: write ``.T``.
    """
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as f:
        g = f.create_group("cjdata")
        g.attrs["MATLAB_class"] = np.bytes_("struct")
        d = g.create_dataset("image", data=np.ascontiguousarray(image.astype(np.int16).T))
        d.attrs["MATLAB_class"] = np.bytes_("int16")
        d = g.create_dataset("label", data=np.full((1, 1), float(label)))
        d.attrs["MATLAB_class"] = np.bytes_("double")
        d = g.create_dataset("PID", data=np.asarray([[ord(c) for c in pid]], dtype=np.uint16).T)
        d.attrs["MATLAB_class"] = np.bytes_("char")
        d.attrs["MATLAB_int_decode"] = np.int32(2)
        d = g.create_dataset("tumorBorder", data=np.arange(8, dtype=np.float64)[None, :])
        d.attrs["MATLAB_class"] = np.bytes_("double")
        d = g.create_dataset("tumorMask", data=np.ascontiguousarray(mask.astype(np.uint8).T))
        d.attrs["MATLAB_class"] = np.bytes_("logical")
    with open(path, "r+b") as fh:
        fh.write(MATLAB_HEADER.ljust(116) + b"\x00" * 8 + b"\x00\x02IM")


def make_brain_tumor(root: str | os.PathLike[str], *, patients: int = 9, seed: int = 0) -> str:
    """``brainTumorDataPublic_1-99/<n>.mat`` (2-4 slices per patient, one tumour type each) + cvind.mat."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    n = 0
    for p in range(patients):
        pid = f"{100000 + 37 * p}" if p % 3 else f"MR{p:05d}"
        label = p % 3 + 1
        for _ in range(int(rng.integers(2, 5))):
            n += 1
            img = rng.integers(0, 900, (20, 16)).astype(np.int16)  # non-square: catches transposition
            mask = np.zeros((20, 16), np.uint8)
            mask[5:10, 4:9] = 1
            img[mask > 0] += 600
            write_cjdata_mat(root / "brainTumorDataPublic_1-99" / f"{n}.mat", img, label, pid, mask)
    import h5py

    with h5py.File(root / "cvind.mat", "w") as f:  # the release's fold index file: must be ignored
        f.create_dataset("cvind", data=np.ones((1, n)))
    return f"brain-tumor-mri:{root}"


# ---------------------------------------------------------------------------- Montgomery / Shenzhen


def _lung_masks(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    right, left = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    right[4 : h - 4, 2 : w // 2 - 1] = 255  # patient's right lung is on the image's left
    left[4 : h - 4, w // 2 + 1 : w - 2] = 255
    return left, right


def make_montgomery(root: str | os.PathLike[str], *, n: int = 12, seed: int = 0) -> str:
    """``MontgomerySet/CXR_png/MCUCXR_XXXX_Y.png`` + ``ManualMask/{left,right}Mask/`` (0/255 PNGs)."""
    base = Path(root) / "MontgomerySet"
    rng = np.random.default_rng(seed)
    for i in range(n):
        name = f"MCUCXR_{i + 1:04d}_{i % 2}.png"
        _png(base / "CXR_png" / name, _gray(rng, (24, 20)))
        left, right = _lung_masks(24, 20)
        _png(base / "ManualMask" / "leftMask" / name, left)
        _png(base / "ManualMask" / "rightMask" / name, right)
        (base / "ClinicalReadings").mkdir(parents=True, exist_ok=True)
        (base / "ClinicalReadings" / name.replace(".png", ".txt")).write_text("Patient's Sex: F\nnormal\n")
    return f"montgomery:{base}"


def make_shenzhen(root: str | os.PathLike[str], *, n: int = 12, unmasked: int = 2, seed: int = 0) -> str:
    """``CXR_png/CHNCXR_XXXX_Y.png`` + ``mask/CHNCXR_XXXX_Y_mask.png``; the last ``unmasked`` images
    have no mask, as 96 of the real 662 do not."""
    base = Path(root) / "ChinaSet_AllFiles"
    rng = np.random.default_rng(seed)
    for i in range(n + unmasked):
        stem = f"CHNCXR_{i + 1:04d}_{i % 2}"
        _png(base / "CXR_png" / f"{stem}.png", _gray(rng, (24, 20)))
        if i < n:
            left, right = _lung_masks(24, 20)
            _png(base / "mask" / f"{stem}_mask.png", np.maximum(left, right))
    return f"shenzhen:{base}"


# ---------------------------------------------------------------------------- BTCV / AMOS / MSD


def _ct_case(
    rng: np.random.Generator, labels: int, shape: tuple[int, int, int] = (12, 12, 6)
) -> tuple[np.ndarray, np.ndarray]:
    """An int16 HU volume and a uint8 label map with every label 1..labels as a small block."""
    hu = rng.normal(40, 20, shape)
    hu[:, :, 0] = -1000
    lab = np.zeros(shape, np.uint8)
    slots = int(np.ceil(np.sqrt(labels)))
    step = shape[0] // slots
    for k in range(labels):
        r, c = divmod(k, slots)
        lab[r * step : r * step + max(1, step - 1), c * step : c * step + max(1, step - 1), 1:4] = k + 1
    hu[lab > 0] += 60
    return np.round(hu).astype(np.int16), lab


def make_btcv(root: str | os.PathLike[str], *, n: int = 6, layout: str = "raw", seed: int = 0) -> str:
    """``RawData/Training/{img,label}/`` (+ unlabelled ``RawData/Testing/img/``), or with
    ``layout="json"`` the ``imagesTr/ labelsTr/ dataset_0.json`` conversion with training/validation."""
    base = Path(root) / "BTCV"
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(1, n + 1):
        vol, lab = _ct_case(rng, 13)
        if layout == "raw":
            _nifti(base / "RawData" / "Training" / "img" / f"img{i:04d}.nii.gz", vol)
            _nifti(base / "RawData" / "Training" / "label" / f"label{i:04d}.nii.gz", lab)
        else:
            _nifti(base / "imagesTr" / f"img{i:04d}.nii.gz", vol)
            _nifti(base / "labelsTr" / f"label{i:04d}.nii.gz", lab)
            entries.append({"image": f"imagesTr/img{i:04d}.nii.gz", "label": f"labelsTr/label{i:04d}.nii.gz"})
    if layout == "raw":
        _nifti(base / "RawData" / "Testing" / "img" / "img0061.nii.gz", _ct_case(rng, 13)[0])
    else:
        k = max(1, n // 4)
        meta = {
            "description": "btcv yucheng",
            "labels": {"0": "background", **{str(i + 1): o for i, o in enumerate(BTCV_ORGANS)}},
            "modality": {"0": "CT"},
            "name": "btcv",
            "numTest": 0,
            "numTraining": n - k,
            "tensorImageSize": "3D",
            "training": entries[:-k],
            "validation": entries[-k:],
        }
        (base / "dataset_0.json").write_text(json.dumps(meta, indent=4))
    return f"btcv:{base}"


def make_amos(root: str | os.PathLike[str], *, ct: int = 5, mri: int = 2, val: int = 2, seed: int = 0) -> str:
    """``amos22/`` with dataset.json, imagesTr/labelsTr (CT ids <= 500, MRI ids > 500), imagesVa/labelsVa
    and unlabelled imagesTs."""
    base = Path(root) / "amos22"
    rng = np.random.default_rng(seed)

    def case(folder: str, num: int) -> dict[str, str]:
        vol, lab = _ct_case(rng, 15)
        _nifti(base / f"images{folder}" / f"amos_{num:04d}.nii.gz", vol)
        _nifti(base / f"labels{folder}" / f"amos_{num:04d}.nii.gz", lab)
        return {
            "image": f"./images{folder}/amos_{num:04d}.nii.gz",
            "label": f"./labels{folder}/amos_{num:04d}.nii.gz",
        }

    training = [case("Tr", i) for i in range(1, ct + 1)] + [case("Tr", 540 + i) for i in range(mri)]
    validation = [case("Va", 400 + i) for i in range(val)]
    _nifti(base / "imagesTs" / "amos_0600.nii.gz", _ct_case(rng, 15)[0])
    meta = {
        "name": "AMOS",
        "description": "MICCAI2022 Multi-Modality Abdominal Multi-Organ Segmentation Challenge",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", **{str(i + 1): o for i, o in enumerate(AMOS_ORGANS)}},
        "numTraining": len(training),
        "numValidation": len(validation),
        "numTest": 1,
        "training": training,
        "validation": validation,
        "test": [{"image": "./imagesTs/amos_0600.nii.gz"}],
    }
    (base / "dataset.json").write_text(json.dumps(meta, indent=4))
    return f"amos:{base}"


MSD_TASKS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "Task02_Heart": ("LeftAtrium", "MRI", "la", {"0": "background", "1": "left atrium"}),
    "Task04_Hippocampus": (
        "Hippocampus",
        "MRI",
        "hippocampus",
        {"0": "background", "1": "Anterior", "2": "Posterior"},
    ),
    "Task09_Spleen": ("Spleen", "CT", "spleen", {"0": "background", "1": "spleen"}),
}


def make_msd(root: str | os.PathLike[str], *, task: str = "Task02_Heart", n: int = 6, seed: int = 0) -> str:
    """``TaskNN_Name/dataset.json`` + imagesTr/labelsTr/imagesTs, including the macOS ``._*`` files the
    Decathlon tarballs carry (which must be ignored)."""
    name, modality, prefix, labels = MSD_TASKS[task]
    base = Path(root) / task
    rng = np.random.default_rng(seed)
    training = []
    for i in range(n):
        num = 3 + 2 * i
        vol, lab = _ct_case(rng, len(labels) - 1)
        _nifti(base / "imagesTr" / f"{prefix}_{num:03d}.nii.gz", vol)
        _nifti(base / "labelsTr" / f"{prefix}_{num:03d}.nii.gz", lab)
        (base / "imagesTr" / f"._{prefix}_{num:03d}.nii.gz").write_bytes(b"\x00\x05\x16\x07AppleDouble")
        training.append(
            {
                "image": f"./imagesTr/{prefix}_{num:03d}.nii.gz",
                "label": f"./labelsTr/{prefix}_{num:03d}.nii.gz",
            }
        )
    _nifti(base / "imagesTs" / f"{prefix}_001.nii.gz", _ct_case(rng, 1)[0])
    meta = {
        "name": name,
        "description": f"{name} segmentation",
        "reference": "King's College London",
        "licence": "CC-BY-SA 4.0",
        "release": "1.0 04/05/2018",
        "tensorImageSize": "3D",
        "modality": {"0": modality},
        "labels": labels,
        "numTraining": n,
        "numTest": 1,
        "training": training,
        "test": [f"./imagesTs/{prefix}_001.nii.gz"],
    }
    (base / "dataset.json").write_text(json.dumps(meta, indent=4))
    return f"msd:{base}"


# ---------------------------------------------------------------------------- MedMNIST


def make_medmnist(
    root: str | os.PathLike[str],
    *,
    name: str = "pneumoniamnist",
    size: int = 28,
    counts: tuple[int, int, int] = (24, 8, 10),
    seed: int = 0,
) -> str:
    """``<set>.npz`` / ``<set>_<size>.npz`` with train/val/test _images (uint8) and _labels, shaped as
    the release: (N, S, S) gray, (N, S, S, 3) RGB, (N, S, S, S) 3D; labels (N, 1) or (N, 14) multi-hot."""
    if name not in MEDMNIST:
        raise DataError(f"unknown MedMNIST set {name!r}")
    meta = MEDMNIST[name]
    rng = np.random.default_rng(seed)
    shape = (size,) * 3 if meta.ndim == 3 else (size, size) if meta.channels == 1 else (size, size, 3)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *shape)).astype(np.uint8)
        if meta.task == "multilabel":
            lab = (rng.random((n, len(meta.labels))) < 0.3).astype(np.uint8)
            lab[0] = 1  # every label has a positive in every split
        else:
            lab = (np.arange(n) % len(meta.labels)).astype(np.uint8)[:, None]
        arrays[f"{split}_labels"] = lab
    path = Path(root) / medmnist_file_name(name, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return f"medmnist:{path}"


REPLICAS: dict[str, Callable[..., str]] = {
    "nih-cxr14": make_nih,
    "chexpert": make_chexpert,
    "sars-cov-2-ct": make_sars,
    "brain-tumor-mri": make_brain_tumor,
    "montgomery": make_montgomery,
    "shenzhen": make_shenzhen,
    "btcv": make_btcv,
    "amos": make_amos,
    "msd": make_msd,
    "medmnist": make_medmnist,
}


def make_replica(preset: str, root: str | os.PathLike[str], **kwargs: Any) -> str:
    """Write a tiny replica of ``preset``'s layout under ``root``; returns the spec that loads it."""
    if preset not in REPLICAS:
        raise DataError(f"no replica for {preset!r}; presets: {', '.join(REPLICAS)}")
    return REPLICAS[preset](root, **kwargs)
