"""Small synthetic radiology-like datasets with a known, learnable signal, written as real files.

Each dataset is generated deterministically (fixed seed) in a real on-disk format, so loading it
exercises the same indexers and readers as real data. Every patient has several samples that share a
patient-specific "anatomy", so patient-level splitting matters. ``synthetic:<name>`` generates into
``cache_dir()/synthetic/<name>-v1/`` on first use (in a temp folder, renamed when complete) and
reuses it afterwards.

=================== ================================================================================
cls2d-binary        X-ray-like, 300 x 64x64 16-bit PNG in class folders normal/ abnormal/ (60
                    patients); abnormal = a bright nodule inside a lung field. Patient ids via
                    ``patient_re`` on the file name.
cls2d-multiclass    300 x 64x64 8-bit PNG + CSV manifest (image, label, patient_id; 75 patients);
                    class = quadrant of a lesion: left_upper, left_lower, right_upper, right_lower.
cls2d-multilabel    300 x 64x64 8-bit TIFF + CSV manifest with 0/1 columns opacity, nodule, effusion
                    and a rare mass (~7 %), each drawn in its own region (60 patients).
seg2d               240 x 64x64 8-bit PNG images/ + masks/ (background, organ, lesion; 48 patients).
cls3d               MRI-like, 40 x 32^3 float32 NIfTI in class folders healthy/ tumor/ (20 patients,
                    2 scans each; non-canonical LPS affine); tumor = a bright sphere.
seg3d               CT-like, 40 x 32^3 int16 HU NIfTI images/ (nnU-Net ``_0000`` names) + masks/
                    (background, organ, lesion), CT soft-tissue window, non-canonical affine.
=================== ================================================================================
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radprobe.config import cache_dir
from radprobe.errors import DataError

VERSION = "v1"
SIZE_2D = 64
SIZE_3D = 32


@dataclass(frozen=True)
class SyntheticInfo:
    name: str
    task: str
    modality: str
    ndim: int
    description: str
    format: str
    scheme: str
    entry: str  # file inside the dataset folder that the spec points at ("" = the folder)
    generate: Callable[[Path], None]


# ---------------------------------------------------------------------------- drawing helpers


def _grid(shape: tuple[int, ...]) -> list[np.ndarray]:
    return np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")


def gaussian(shape: tuple[int, ...], center: Any, sigma: float) -> np.ndarray:
    """Unit-peak isotropic Gaussian blob."""
    d2 = sum((g - c) ** 2 for g, c in zip(_grid(shape), center, strict=True))
    return np.exp(-d2 / (2.0 * sigma**2)).astype(np.float32)


def ellipsoid(shape: tuple[int, ...], center: Any, radii: Any) -> np.ndarray:
    """Boolean filled ellipse / ellipsoid."""
    d = sum(((g - c) / r) ** 2 for g, c, r in zip(_grid(shape), center, radii, strict=True))
    return d <= 1.0


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], blobs: int = 6, scale: float = 1.0
) -> np.ndarray:
    """Low-frequency texture: a sum of random wide Gaussians, roughly in [-scale, scale]."""
    out = np.zeros(shape, dtype=np.float32)
    for _ in range(blobs):
        c = [rng.uniform(0, s) for s in shape]
        out += rng.uniform(-1, 1) * gaussian(shape, c, rng.uniform(0.15, 0.3) * min(shape))
    return scale * out / max(1.0, float(np.abs(out).max()))


def _chest(rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """A patient's radiograph-like anatomy: bright mediastinum/soft tissue, two darker lung fields."""
    n = SIZE_2D
    img = 0.62 + smooth_noise(rng, (n, n), scale=0.06) + rng.normal(0, 0.02)
    lungs = []
    for side in (-1, 1):
        c = (n * 0.5 + rng.normal(0, 1.5), n * 0.5 + side * n * 0.2 + rng.normal(0, 1.0))
        lungs.append(c)
        img[ellipsoid((n, n), c, (n * 0.32, n * 0.14))] -= 0.3
    return img.astype(np.float32), lungs


def _write_png(path: Path, img: np.ndarray, bits: int = 8) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    top = 2**bits - 1
    arr = np.round(np.clip(img, 0.0, 1.0) * top).astype(np.uint16 if bits > 8 else np.uint8)
    Image.fromarray(arr).save(path)


def _write_mask_png(path: Path, mask: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8)).save(path)


def _write_nifti(path: Path, vol: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(vol, affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def _sidecar(path: Path, options: dict[str, Any]) -> None:
    import yaml

    path.write_text(yaml.safe_dump(options, sort_keys=True))


# LPS-like orientation with anisotropic voxels: readers must reorient to canonical RAS+.
AFFINE_3D = np.array(
    [[-1.2, 0.0, 0.0, 20.0], [0.0, -1.2, 0.0, 20.0], [0.0, 0.0, 1.5, -24.0], [0.0, 0.0, 0.0, 1.0]]
)


# ---------------------------------------------------------------------------- generators


def _cls2d_binary(root: Path) -> None:
    rng = np.random.default_rng(1001)
    n = SIZE_2D
    for p in range(60):
        diseased = rng.random() < 0.4
        anatomy, lungs = _chest(rng)
        for k in range(5):
            positive = rng.random() < (0.7 if diseased else 0.15)
            img = anatomy + rng.normal(0, 0.03, (n, n)).astype(np.float32)
            if positive:
                cy, cx = lungs[rng.integers(2)]
                c = (cy + rng.uniform(-9, 9), cx + rng.uniform(-3, 3))
                img += 0.35 * gaussian((n, n), c, rng.uniform(3.0, 5.0))
            cls = "abnormal" if positive else "normal"
            _write_png(root / cls / f"p{p:03d}_{k}.png", img, bits=16)
    (root / "normal").mkdir(exist_ok=True)
    (root / "abnormal").mkdir(exist_ok=True)
    _sidecar(root / "radprobe.yaml", {"patient_re": r"(p\d+)_", "modality": "xray"})


MULTICLASS = ("left_upper", "left_lower", "right_upper", "right_lower")


def _cls2d_multiclass(root: Path) -> None:
    rng = np.random.default_rng(1002)
    n = SIZE_2D
    centers = {
        "left_upper": (18, 18),
        "left_lower": (46, 18),
        "right_upper": (18, 46),
        "right_lower": (46, 46),
    }
    rows = []
    for p in range(75):
        anatomy = 0.3 + smooth_noise(rng, (n, n), scale=0.08) + rng.normal(0, 0.03)
        for k in range(4):
            label = MULTICLASS[rng.integers(4)]
            cy, cx = centers[label]
            img = anatomy + rng.normal(0, 0.04, (n, n))
            img += 0.4 * gaussian(
                (n, n), (cy + rng.uniform(-5, 5), cx + rng.uniform(-5, 5)), rng.uniform(3.5, 5.5)
            )
            rel = f"images/P{p:03d}-{k}.png"
            _write_png(root / rel, img)
            rows.append([rel, label, f"P{p:03d}"])
    _write_csv(root / "manifest.csv", ["image", "label", "patient_id"], rows)
    _sidecar(root / "manifest.radprobe.yaml", {"modality": "xray"})


MULTILABEL = ("opacity", "nodule", "effusion", "mass")


def _cls2d_multilabel(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(1003)
    n = SIZE_2D
    rows = []
    rr, _ = _grid((n, n))
    for p in range(60):
        anatomy, _ = _chest(rng)
        for k in range(5):
            labels = [int(rng.random() < q) for q in (0.35, 0.3, 0.3, 0.07)]
            img = anatomy + rng.normal(0, 0.03, (n, n)).astype(np.float32)
            if labels[0]:
                img += 0.15 * gaussian((n, n), (22 + rng.uniform(-4, 4), 20 + rng.uniform(-3, 3)), 7.0)
            if labels[1]:
                img += 0.3 * gaussian((n, n), (18 + rng.uniform(-5, 5), 44 + rng.uniform(-3, 3)), 2.5)
            if labels[2]:
                level = 50 + rng.uniform(-3, 3)
                img[:, :32] += 0.12 / (1.0 + np.exp(-(rr[:, :32] - level) / 1.5))
            if labels[3]:
                img += 0.25 * gaussian((n, n), (44 + rng.uniform(-3, 3), 44 + rng.uniform(-3, 3)), 5.0)
            rel = f"images/{p:03d}_{k}.tif"
            (root / "images").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / rel)
            rows.append([rel, f"pt{p:03d}", *labels])
    _write_csv(root / "labels.csv", ["path", "patient_id", *MULTILABEL], rows)
    _sidecar(root / "labels.radprobe.yaml", {"modality": "xray"})


def _seg2d(root: Path) -> None:
    rng = np.random.default_rng(1004)
    n = SIZE_2D
    for p in range(48):
        texture = smooth_noise(rng, (n, n), scale=0.05)
        oc = (n / 2 + rng.normal(0, 4), n / 2 + rng.normal(0, 4))
        radii = (rng.uniform(12, 18), rng.uniform(9, 14))
        for k in range(5):
            c = (oc[0] + rng.normal(0, 1.5), oc[1] + rng.normal(0, 1.5))
            organ = ellipsoid((n, n), c, radii)
            mask = organ.astype(np.uint8)
            img = 0.2 + texture + 0.3 * organ
            if rng.random() < 0.8:
                r = rng.uniform(2.5, 5.0)
                lc = (c[0] + rng.uniform(-0.4, 0.4) * radii[0], c[1] + rng.uniform(-0.4, 0.4) * radii[1])
                lesion = ellipsoid((n, n), lc, (r, r)) & organ
                mask[lesion] = 2
                img = img + 0.3 * lesion
            img = img + rng.normal(0, 0.04, (n, n))
            _write_png(root / "images" / f"p{p:02d}_{k}.png", img)
            _write_mask_png(root / "masks" / f"p{p:02d}_{k}.png", mask)
    _sidecar(
        root / "radprobe.yaml",
        {"classes": ["background", "organ", "lesion"], "patient_re": r"(p\d+)_", "modality": "ct"},
    )


def _seg2d_labelled(root: Path) -> None:
    """seg2d's images and masks, listed in a manifest with a per-image label (lesion or none)."""
    from PIL import Image

    _seg2d(root)
    rows = []
    for mask_path in sorted((root / "masks").glob("*.png")):
        has_lesion = bool((np.asarray(Image.open(mask_path)) == 2).any())
        name = mask_path.name
        rows.append(
            [f"images/{name}", f"masks/{name}", "lesion" if has_lesion else "none", name.split("_")[0]]
        )
    _write_csv(root / "manifest.csv", ["path", "mask", "label", "patient"], rows)
    (root / "radprobe.yaml").unlink()  # the folder's; the manifest has its own
    _sidecar(
        root / "manifest.radprobe.yaml",
        {"classes": ["none", "lesion"], "mask_classes": ["background", "organ", "lesion"], "modality": "ct"},
    )


def _cls3d(root: Path) -> None:
    rng = np.random.default_rng(1005)
    n = SIZE_3D
    shape = (n, n, n)
    for p in range(20):
        scale = rng.uniform(280, 360)
        brain = ellipsoid(shape, [n / 2 + rng.normal(0, 1) for _ in range(3)], (13, 11, 12))
        texture = smooth_noise(rng, shape, blobs=5, scale=0.1)
        for k in range(2):
            tumor = rng.random() < 0.5
            vol = brain * (1.0 + texture) + rng.normal(0, 0.05, shape)
            if tumor:
                c = [n / 2 + rng.uniform(-5, 5) for _ in range(3)]
                vol = vol + 0.8 * ellipsoid(shape, c, [rng.uniform(4, 6)] * 3) * brain
            cls = "tumor" if tumor else "healthy"
            _write_nifti(
                root / cls / f"sub-{p:02d}_ses-{k}.nii.gz", (vol * scale).astype(np.float32), AFFINE_3D
            )
    (root / "healthy").mkdir(exist_ok=True)
    (root / "tumor").mkdir(exist_ok=True)
    _sidecar(root / "radprobe.yaml", {"patient_re": r"(sub-\d+)_", "modality": "mri"})


def _seg3d(root: Path) -> None:
    rng = np.random.default_rng(1006)
    n = SIZE_3D
    shape = (n, n, n)
    for p in range(20):
        body = ellipsoid(shape, (n / 2, n / 2, n / 2), (14, 12, 20))
        oc = [n / 2 + rng.normal(0, 2) for _ in range(3)]
        radii = (rng.uniform(6, 9), rng.uniform(5, 8), rng.uniform(6, 9))
        for k in range(2):
            organ = ellipsoid(shape, [c + rng.normal(0, 1) for c in oc], radii) & body
            mask = organ.astype(np.uint8)
            hu = np.where(body, 0.0, -1000.0) + 60.0 * organ
            if rng.random() < 0.85:
                lc = [c + rng.uniform(-2, 2) for c in oc]
                lesion = ellipsoid(shape, lc, [rng.uniform(2.0, 3.5)] * 3) & organ
                mask[lesion] = 2
                hu = hu + 70.0 * lesion
            hu = hu + rng.normal(0, 15, shape)
            stem = f"p{p:02d}_scan{k}"
            _write_nifti(root / "images" / f"{stem}_0000.nii.gz", np.round(hu).astype(np.int16), AFFINE_3D)
            _write_nifti(root / "masks" / f"{stem}.nii.gz", mask, AFFINE_3D)
    _sidecar(
        root / "radprobe.yaml",
        {
            "classes": ["background", "organ", "lesion"],
            "patient_re": r"(p\d+)_",
            "window": "soft",
            "modality": "ct",
        },
    )


SYNTHETIC: dict[str, SyntheticInfo] = {
    i.name: i
    for i in (
        SyntheticInfo(
            name="cls2d-binary", task="binary", modality="xray", ndim=2,
            description="nodule vs none, 300 images, 60 patients", format="folder (16-bit PNG)",
            scheme="folder", entry="", generate=_cls2d_binary,
        ),
        SyntheticInfo(
            name="cls2d-multiclass", task="multiclass", modality="xray", ndim=2,
            description="lesion quadrant, 4 classes, 300 images, 75 patients", format="csv (8-bit PNG)",
            scheme="csv", entry="manifest.csv", generate=_cls2d_multiclass,
        ),
        SyntheticInfo(
            name="cls2d-multilabel", task="multilabel", modality="xray", ndim=2,
            description="4 findings (one rare) as 0/1 columns, 300 images, 60 patients",
            format="csv (8-bit TIFF)", scheme="csv", entry="labels.csv", generate=_cls2d_multilabel,
        ),
        SyntheticInfo(
            name="seg2d", task="segmentation", modality="ct", ndim=2,
            description="organ + lesion masks, 3 classes, 240 images, 48 patients",
            format="folder (PNG images + masks)", scheme="folder", entry="", generate=_seg2d,
        ),
        SyntheticInfo(
            name="seg2d-labelled", task="binary", modality="ct", ndim=2,
            description="seg2d's images with masks and a lesion/none label: classification and segmentation",
            format="csv (PNG images + masks)", scheme="csv", entry="manifest.csv", generate=_seg2d_labelled,
        ),
        SyntheticInfo(
            name="cls3d", task="binary", modality="mri", ndim=3,
            description="tumor sphere vs none, 40 volumes of 32^3, 20 patients",
            format="nifti (class folders)", scheme="nifti", entry="", generate=_cls3d,
        ),
        SyntheticInfo(
            name="seg3d", task="segmentation", modality="ct", ndim=3,
            description="organ + lesion masks in HU volumes, 40 x 32^3, 20 patients",
            format="nifti (images + masks)", scheme="nifti", entry="", generate=_seg3d,
        ),
    )
}  # fmt: skip


def _info(name: str) -> SyntheticInfo:
    if name not in SYNTHETIC:
        raise DataError(f"unknown synthetic dataset {name!r}; available: {', '.join(SYNTHETIC)}")
    return SYNTHETIC[name]


def synthetic_spec(name: str, root: str | os.PathLike[str]) -> str:
    """The spec that loads a synthetic dataset generated in ``root``."""
    info = _info(name)
    target = Path(root) / info.entry if info.entry else Path(root)
    return f"{info.scheme}:{target}"


def make_synthetic(name: str, root: str | os.PathLike[str]) -> str:
    """Generate synthetic dataset ``name`` into folder ``root`` (created; must be empty if it exists).

    Returns the spec string that loads it (options live in a ``radprobe.yaml`` sidecar).
    """
    info = _info(name)
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise DataError(f"cannot generate synthetic dataset {name} into {root}: folder is not empty")
    root.mkdir(parents=True, exist_ok=True)
    info.generate(root)
    return synthetic_spec(name, root)


def ensure_synthetic(name: str) -> Path:
    """Folder of synthetic dataset ``name`` under the cache, generating it once (atomically)."""
    _info(name)
    final = cache_dir() / "synthetic" / f"{name}-{VERSION}"
    if (final / ".complete").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        make_synthetic(name, tmp)
        (tmp / ".complete").write_text(f"{name} {VERSION}\n")
        if final.exists() and not (final / ".complete").is_file():
            shutil.rmtree(final, ignore_errors=True)  # left over from an interrupted copy
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / ".complete").is_file():  # lost a race only if the winner finished
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def list_synthetic() -> list[dict[str, Any]]:
    """One dict per synthetic dataset (for ``list_datasets``)."""
    return [
        {
            "name": i.name,
            "spec": f"synthetic:{i.name}",
            "task": i.task,
            "modality": i.modality,
            "ndim": i.ndim,
            "description": i.description,
            "source": "synthetic",
            "format": i.format,
        }
        for i in SYNTHETIC.values()
    ]


# ---------------------------------------------------------------------------- DICOM writer (tests, demos)


def write_dicom(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    position: tuple[float, float, float] | None = None,
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    instance: int | None = None,
    patient_id: str = "PAT0",
    series_uid: str | None = None,
    modality: str = "CT",
) -> Path:
    """Write a minimal single-frame grayscale DICOM file (uint8/uint16/int16 pixels)."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(pixels)
    if arr.ndim != 2 or arr.dtype not in (np.uint8, np.uint16, np.int16):
        raise ValueError("write_dicom expects a 2D uint8, uint16 or int16 array")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[patient_id])
    ds.SeriesInstanceUID = series_uid or generate_uid(entropy_srcs=[str(path.parent)])
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits = 8 if arr.dtype == np.uint8 else 16
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if arr.dtype == np.int16 else 0
    if slope is not None or intercept is not None:
        ds.RescaleSlope = f"{slope if slope is not None else 1.0:g}"
        ds.RescaleIntercept = f"{intercept if intercept is not None else 0.0:g}"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    if position is not None:
        ds.ImagePositionPatient = [f"{v:g}" for v in position]
        ds.ImageOrientationPatient = [f"{v:g}" for v in orientation]
    if instance is not None:
        ds.InstanceNumber = instance
    ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(str(path), enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2.x
        ds.save_as(str(path), write_like_original=False)
    return path
