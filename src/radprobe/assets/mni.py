"""MRI tissue datasets from the MNI ICBM152 2009a template shipped in the nilearn wheel.

Sources (1 mm grid, 197x233x189, RAS): the skull-stripped T1 template and the grey- and white-matter
probability maps. Labels per voxel: 0 background (outside the brain mask, T1 == 0, holes filled),
else the argmax of (other = 1 - GM - WM, GM, WM) -> 1 other brain (CSF, vessels, ...), 2 GM, 3 WM.

There is a single subject, so samples must not be split by slice: adjacent 1 mm slices are nearly
identical. Axial slices z in [16, 148) (each with > ~3000 brain voxels) are cut into slabs of 5
slices separated by 4-slice gaps that are left out, and the slabs are dealt to splits in the cycle
train, val, train, test, so every split spans the whole brain from inferior to superior. The slab is
the ``patient_id``, so patient-level splitting, bootstrap and leakage checks keep slabs whole.

* ``mni_tissue_seg``: 75 axial slices (15 slabs) (233x197 8-bit PNG, radiological orientation) with 8-bit PNG
  masks (values 0-3).
* ``mni_tissue_cls``: 32x32 T1 patches labelled by the majority tissue (>= 60 %) of their central 8x8
  core, which must lie inside the brain: other_brain / gray_matter / white_matter, up to 4 patches per
  class and slice.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from radprobe.assets._files import write_csv, write_png, write_readme, write_sidecar
from radprobe.assets.wheels import NILEARN, read_member
from radprobe.errors import RadprobeError

_DATA = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
T1_MEMBER, GM_MEMBER, WM_MEMBER = (_DATA.format(k) for k in ("t1", "gm", "wm"))
SHAPE = (197, 233, 189)
SEG_CLASSES = ("background", "other_brain", "gray_matter", "white_matter")
CLS_CLASSES = SEG_CLASSES[1:]
Z_RANGE = (16, 148)
SLAB, GAP = 5, 4
SPLIT_CYCLE = ("train", "val", "train", "test")
PATCH, CORE, STRIDE, PER_CLASS, CORE_MAJORITY = 32, 8, 4, 4, 0.6
SEED = 20241128

README = f"""
MNI ICBM152 2009a nonlinear symmetric template: brain tissue {{what}}

Source: nilearn=={NILEARN.version} wheel (sha256 {NILEARN.sha256}), files
  {T1_MEMBER}
  {GM_MEMBER}
  {WM_MEMBER}
  (T1 template and grey/white-matter probability maps, 1 mm, 197x233x189; nilearn's "converted",
  skull-stripped uint8 copies). Built by radprobe.assets.

Citation: Fonov VS, Evans AC, McKinstry RC, Almli CR, Collins DL. Unbiased nonlinear average
age-appropriate brain templates from birth to adulthood. NeuroImage 47 (2009) S102. Fonov V, Evans AC,
Botteron K, Almli CR, McKinstry RC, Collins DL. Unbiased average age-appropriate atlases for pediatric
studies. NeuroImage 54(1) (2011) 313-327. Collins DL, Zijdenbos AP, Baaré WFC, Evans AC. ANIMAL+INSECT:
improved cortical structure segmentation. IPMI 1999.

Licence: nilearn is BSD-3-Clause; nilearn's own dataset description lists the template's licence as
"unknown". The ICBM 2009 templates are distributed by the McConnell Brain Imaging Centre (MNI, McGill
University) under a copyright notice permitting use, copying and distribution with the notice kept
(Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological
Institute, McGill University). Check it before redistributing these files.

Labels: 0 background (outside the template's brain mask), else the argmax of (1 - GM - WM, GM, WM):
1 other_brain (CSF and other non-GM/WM tissue inside the brain mask), 2 gray_matter, 3 white_matter.

Splits: ONE template subject. Axial slices z={Z_RANGE[0]}..{Z_RANGE[1] - 1} are cut into slabs of {SLAB}
slices separated by {GAP}-slice gaps (never used); slabs are dealt to train/val/test in the cycle
{", ".join(SPLIT_CYCLE)}. patient_id is the slab, so slabs stay whole under patient-level machinery.
Columns: slab, z (axial index in the template grid; the slab's slices are z..z+{SLAB - 1}).
Images are in radiological orientation (anterior up, patient right on the left).
Results on this dataset measure within-template generalisation across brain levels, not across people.
"""


@dataclass(frozen=True)
class Slab:
    """A run of ``SLAB`` consecutive axial slices assigned to one split."""

    index: int
    split: str
    z: tuple[int, ...]

    @property
    def patient_id(self) -> str:
        return f"mni152_slab{self.index:02d}"


def slabs() -> list[Slab]:
    """The slab layout: SLAB slices, GAP unused slices, repeated over Z_RANGE."""
    out: list[Slab] = []
    start = Z_RANGE[0]
    while start + SLAB <= Z_RANGE[1]:
        i = len(out)
        out.append(Slab(i, SPLIT_CYCLE[i % len(SPLIT_CYCLE)], tuple(range(start, start + SLAB))))
        start += SLAB + GAP
    return out


def _nifti(wheel: Path, member: str) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.Nifti1Image.from_bytes(gzip.decompress(read_member(wheel, member)))
    if img.shape != SHAPE or nib.aff2axcodes(img.affine) != ("R", "A", "S"):
        raise RadprobeError(
            f"{member}: expected a {SHAPE} RAS volume, got {img.shape} {nib.aff2axcodes(img.affine)}"
        )
    return np.asarray(img.dataobj), img.affine


@lru_cache(maxsize=1)
def load_template(wheel: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T1 uint8, labels uint8, affine) on the template grid; labels as in the module docstring."""
    from scipy import ndimage

    t1, affine = _nifti(wheel, T1_MEMBER)
    gm, gm_aff = _nifti(wheel, GM_MEMBER)
    wm, wm_aff = _nifti(wheel, WM_MEMBER)
    if not (np.allclose(affine, gm_aff) and np.allclose(affine, wm_aff)):
        raise RadprobeError("nilearn MNI template and tissue maps are not on the same grid")
    brain = ndimage.binary_fill_holes(t1 > 0)
    gm_p = gm.astype(np.float32) / 255.0
    wm_p = wm.astype(np.float32) / 255.0
    probs = np.stack([np.clip(1.0 - gm_p - wm_p, 0.0, 1.0), gm_p, wm_p])
    labels = (np.argmax(probs, axis=0) + 1).astype(np.uint8)
    labels[~brain] = 0
    return t1.astype(np.uint8), labels, affine


def axial(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice ``z`` of a RAS volume in radiological display orientation (as the readers show it)."""
    return np.ascontiguousarray(volume[:, :, z].T[::-1, ::-1])


def _patch_centres(labels: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """(row, col, class index 1-3) of up to PER_CLASS patches per tissue class in one slice."""
    h, w = labels.shape
    half, core = PATCH // 2, CORE // 2
    found: dict[int, list[tuple[int, int]]] = {1: [], 2: [], 3: []}
    for r in range(half, h - half + 1, STRIDE):
        for c in range(half, w - half + 1, STRIDE):
            block = labels[r - core : r + core, c - core : c + core]
            if (block == 0).any():
                continue
            counts = np.bincount(block.ravel(), minlength=4)
            top = int(np.argmax(counts))
            if counts[top] >= CORE_MAJORITY * block.size:
                found[top].append((r, c))
    out: list[tuple[int, int, int]] = []
    for cls, cands in found.items():
        if cands:
            for i in rng.permutation(len(cands))[:PER_CLASS]:
                out.append((*cands[int(i)], cls))
    return out


def build_seg(wheel: Path, folder: Path) -> dict[str, Any]:
    """Write the slice segmentation dataset into ``folder``; returns a summary."""
    t1, labels, _ = load_template(wheel)
    rows: list[dict[str, Any]] = []
    for slab in slabs():
        for z in slab.z:
            name = f"{slab.patient_id}_z{z:03d}.png"
            write_png(folder / "images" / name, axial(t1, z))
            write_png(folder / "masks" / name, axial(labels, z))
            rows.append(
                {"path": f"images/{name}", "mask": f"masks/{name}", "patient_id": slab.patient_id,
                 "split": slab.split, "slab": slab.index, "z": z}
            )  # fmt: skip
    manifest = folder / "mni_tissue_seg.csv"
    write_csv(manifest, rows)
    write_sidecar(
        manifest,
        {"name": "mni_tissue_seg", "task": "segmentation", "classes": list(SEG_CLASSES), "modality": "mri"},
        "MNI ICBM152 2009a tissue segmentation; see README.txt (one subject, slab splits).",
    )
    write_readme(folder, README.format(what="segmentation (axial slices + label masks)"))
    return {"manifest": manifest.name, "samples": len(rows), "classes": list(SEG_CLASSES)}


def build_cls(wheel: Path, folder: Path) -> dict[str, Any]:
    """Write the tissue-patch classification dataset into ``folder``; returns a summary."""
    t1, labels, _ = load_template(wheel)
    half = PATCH // 2
    rows: list[dict[str, Any]] = []
    for slab in slabs():
        for z in slab.z:
            img, lab = axial(t1, z), axial(labels, z)
            rng = np.random.default_rng([SEED, z])
            for r, c, cls in sorted(_patch_centres(lab, rng)):
                name = f"{slab.patient_id}_z{z:03d}_r{r:03d}_c{c:03d}.png"
                write_png(folder / "patches" / name, img[r - half : r + half, c - half : c + half])
                rows.append(
                    {"path": f"patches/{name}", "label": SEG_CLASSES[cls], "patient_id": slab.patient_id,
                     "split": slab.split, "slab": slab.index, "z": z, "row": r, "col": c}
                )  # fmt: skip
    manifest = folder / "mni_tissue_cls.csv"
    write_csv(manifest, rows)
    write_sidecar(
        manifest,
        {"name": "mni_tissue_cls", "task": "multiclass", "classes": list(CLS_CLASSES), "modality": "mri"},
        "MNI ICBM152 2009a tissue-patch classification; see README.txt (one subject, slab splits).",
    )
    text = README.format(what="patch classification (32x32 T1 patches)")
    text += (
        f"\nPatches: {PATCH}x{PATCH} px cut from the axial slices; label = majority tissue (>= "
        f"{int(CORE_MAJORITY * 100)} %) of the central {CORE}x{CORE} core, which lies inside the brain; "
        f"up to {PER_CLASS} per class and slice (seeded). Columns row/col: patch centre in the slice.\n"
    )
    write_readme(folder, text)
    counts = {c: sum(r["label"] == c for r in rows) for c in CLS_CLASSES}
    return {"manifest": manifest.name, "samples": len(rows), "classes": list(CLS_CLASSES), "counts": counts}
