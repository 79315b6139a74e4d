"""Converted datasets: shapes, classes per split, slab separation, CT mask placement and alignment."""

from __future__ import annotations

import csv
import itertools
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radprobe.assets import DemoAssets, lung, mni


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _check_slabs(rows: list[dict[str, str]]) -> None:
    """One split per slab, slab == patient, and any two slabs at least GAP + 1 slices apart."""
    split_of: dict[str, set[str]] = defaultdict(set)
    z_of: dict[str, set[int]] = defaultdict(set)
    for r in rows:
        split_of[r["patient_id"]].add(r["split"])
        z_of[r["patient_id"]].add(int(r["z"]))
        assert r["patient_id"] == f"mni152_slab{int(r['slab']):02d}"
    assert all(len(s) == 1 for s in split_of.values())
    by_split: dict[str, set[int]] = defaultdict(set)
    for slab, zs in z_of.items():
        by_split[next(iter(split_of[slab]))] |= zs
    assert set(by_split) == {"train", "val", "test"}
    assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"])
    assert not by_split["val"] & by_split["test"]
    slabs = sorted(z_of.values(), key=min)
    for a, b in itertools.pairwise(slabs):
        assert min(b) - max(a) >= mni.GAP + 1


def test_mni_segmentation_dataset(demo: DemoAssets) -> None:
    rows = _rows(demo.mni_tissue_seg)
    assert len(rows) == len(mni.slabs()) * mni.SLAB == 75
    _check_slabs(rows)
    classes: dict[str, set[int]] = defaultdict(set)
    root = demo.mni_tissue_seg.parent
    for r in rows:
        img, mask = _png(root / r["path"]), _png(root / r["mask"])
        assert img.shape == mask.shape == (233, 197)
        assert img.dtype == mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) <= {0, 1, 2, 3}
        assert (img[mask == 0] == 0).all() and (img[mask > 0] > 0).all()
        classes[r["split"]] |= set(np.unique(mask).tolist())
    assert all(c == {0, 1, 2, 3} for c in classes.values())
    assert (root / "README.txt").read_text().count("Fonov") >= 1


def test_mni_patch_dataset(demo: DemoAssets) -> None:
    rows = _rows(demo.mni_tissue_cls)
    _check_slabs(rows)
    root = demo.mni_tissue_cls.parent
    per_split: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        assert _png(root / r["path"]).shape == (mni.PATCH, mni.PATCH)
        per_split[r["split"]].add(r["label"])
    assert all(labels == set(mni.CLS_CLASSES) for labels in per_split.values())
    counts = {c: sum(r["label"] == c for r in rows) for c in mni.CLS_CLASSES}
    assert min(counts.values()) > 100


def test_mni_patch_labels_match_the_masks(demo: DemoAssets) -> None:
    """The labelled patch core agrees with the segmentation mask of the same slice."""
    seg_root = demo.mni_tissue_seg.parent
    masks = {int(r["z"]): seg_root / r["mask"] for r in _rows(demo.mni_tissue_seg)}
    for r in _rows(demo.mni_tissue_cls)[::25]:
        mask = _png(masks[int(r["z"])])
        row, col, core = int(r["row"]), int(r["col"]), mni.CORE // 2
        block = mask[row - core : row + core, col - core : col + core]
        assert (block == mni.SEG_CLASSES.index(r["label"])).mean() >= mni.CORE_MAJORITY


@pytest.fixture(scope="module")
def volumes(demo: DemoAssets) -> dict[str, tuple[object, object]]:
    import nibabel as nib

    root = demo.lung_gtv_seg3d.parent
    return {
        p: (nib.load(root / "images" / f"{p}.nii.gz"), nib.load(root / "masks" / f"{p}.nii.gz"))
        for p in lung.PATIENTS
    }


def test_lung_volumes_masks_aligned_and_inside_the_body(volumes: dict) -> None:
    from scipy import ndimage

    assert len(volumes) == 4
    for patient, (img, msk) in volumes.items():
        assert img.shape == msk.shape
        assert np.allclose(img.affine, msk.affine)
        assert np.allclose(np.abs(np.diag(img.affine)[:3]), [0.977, 0.977, 3.0], atol=0.01)
        hu = np.asarray(img.dataobj)
        mask = np.asarray(msk.dataobj).astype(bool)
        assert mask.sum() > 1000, patient
        # In-plane dilation (about 5 mm) of the >-500 HU tissue; aerated parts of a GTV sit next to it.
        st = np.zeros((3, 3, 3), dtype=bool)
        st[:, :, 1] = ndimage.generate_binary_structure(2, 1)
        body = ndimage.binary_dilation(hu > -500, structure=st, iterations=5)
        assert (mask & body).sum() / mask.sum() > 0.98, patient
        assert np.median(hu[mask]) > -400, patient  # soft tissue, not lung or air


def test_lung_nifti_shows_like_the_dicom_slices(demo: DemoAssets, wheels: dict[str, Path]) -> None:
    """Read back through the data layer's NIfTI reader, volumes come out as the DICOM pixel arrays
    (anterior up, patient right on the left): the affine is right, not just self-consistent."""
    from radprobe.data import ReadOptions
    from radprobe.data.readers import read_nifti

    root = demo.lung_gtv_seg3d.parent
    for p in ("pat_1", "pat_4"):
        case = lung.load_case(wheels["pycerr"], p)
        vol = read_nifti(str(root / "masks" / f"{p}.nii.gz"), ReadOptions(), axis=2, mask=True)
        assert vol.shape == case.mask.shape
        assert (vol == case.mask).all()


def test_lung_folds_leave_one_patient_out(demo: DemoAssets) -> None:
    tested = []
    for manifest in demo.lung_gtv_seg3d_folds:
        rows = _rows(manifest)
        assert sorted(r["patient_id"] for r in rows) == list(lung.PATIENTS)
        assert sorted(r["split"] for r in rows) == ["test", "train", "train", "val"]
        tested += [r["patient_id"] for r in rows if r["split"] == "test"]
    assert sorted(tested) == list(lung.PATIENTS)


def test_lung_patch_dataset(demo: DemoAssets, wheels: dict[str, Path]) -> None:
    from scipy import ndimage

    root = demo.lung_gtv_cls.parent
    folds = [_rows(m) for m in demo.lung_gtv_cls_folds]
    for rows in folds:
        for split in ("train", "val", "test"):
            assert {r["label"] for r in rows if r["split"] == split} == {"background", "tumour"}
        assert len({r["patient_id"] for r in rows if r["split"] == "test"}) == 1
    for r in folds[0][::7]:
        patch = _png(root / r["path"])
        assert patch.shape == (lung.PATCH, lung.PATCH) and patch.dtype == np.uint16
        mask = lung.load_case(wheels["pycerr"], r["patient_id"]).mask[int(r["slice"])].astype(bool)
        row, col = int(r["row"]), int(r["col"])
        if r["label"] == "tumour":
            assert mask[row, col]
        else:
            assert ndimage.distance_transform_edt(~mask)[row, col] >= lung.BG_DISTANCE


def test_manifests_load_in_the_data_layer(demo: DemoAssets) -> None:
    from radprobe.data import check_dataset, load_dataset

    expected = {
        "mni_tissue_seg": ("segmentation", 4, 2),
        "mni_tissue_cls": ("multiclass", 3, 2),
        "lung_gtv_seg3d": ("segmentation", 2, 3),
        "lung_gtv_cls": ("binary", 2, 2),
    }
    for name, manifest in demo.datasets().items():
        ds = load_dataset(str(manifest))
        assert (ds.task, len(ds.classes), ds.ndim) == expected[name]
        assert set(ds.splits()) == {"train", "val", "test"}
        assert not [p for p in check_dataset(str(manifest), read=False) if p.severity == "error"]
        assert "licen" in (manifest.parent / "README.txt").read_text().lower()
