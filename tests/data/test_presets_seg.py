"""Segmentation presets: Montgomery, Shenzhen (2D lungs) and BTCV, AMOS, MSD (3D NIfTI)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from radprobe.data import Problem, check_dataset, load_dataset
from radprobe.data.presets.registry import AMOS_ORGANS, BTCV_ORGANS
from radprobe.data.presets.replicas import make_amos, make_btcv, make_montgomery, make_msd, make_shenzhen
from radprobe.errors import DataError


def _one(problems: list[Problem], severity: str, *needles: str) -> str:
    hits = [p.message for p in problems if p.severity == severity and all(n in p.message for n in needles)]
    assert hits, f"no {severity} mentions {needles}; got:\n" + "\n".join(map(str, problems))
    return hits[0]


def _root(spec: str) -> Path:
    return Path(spec.split(":", 1)[1].split("?")[0])


# ---------------------------------------------------------------------------- Montgomery / Shenzhen


def test_montgomery_left_and_right_lungs_as_classes_or_merged(tmp_path: Path) -> None:
    spec = make_montgomery(tmp_path)
    ds = load_dataset(spec)
    assert ds.task == "segmentation" and ds.ndim == 2
    assert ds.classes == ("background", "left lung", "right lung")
    mask = ds.load_mask(ds.records[0])
    assert mask.shape == ds.load_image(ds.records[0]).shape == (24, 20)
    assert set(np.unique(mask)) == {0, 1, 2}
    assert (mask[:, 10:] != 2).all() and (
        mask[:, :10] != 1
    ).all()  # patient's left lung is on the image right
    merged = load_dataset(f"{spec}?lungs=merged")
    assert merged.classes == ("background", "lung")
    assert np.array_equal(merged.load_mask(merged.records[0]), (mask > 0).astype(np.int64))
    counts = load_dataset(f"{spec}?patients=6,2,4")
    assert Counter(r.split for r in counts.records) == {"train": 6, "val": 2, "test": 4}
    assert ds.manifest_digest() != merged.manifest_digest()


def test_montgomery_faults_are_named(tmp_path: Path) -> None:
    root = _root(make_montgomery(tmp_path))
    (root / "ManualMask" / "rightMask" / "MCUCXR_0003_0.png").unlink()
    for side in ("leftMask", "rightMask"):
        Image.fromarray(np.zeros((30, 30), np.uint8)).save(root / "ManualMask" / side / "MCUCXR_0005_0.png")
    problems = check_dataset(f"montgomery:{root}")
    _one(problems, "error", "no mask ManualMask/rightMask/MCUCXR_0003_0.png", "CXR_png/MCUCXR_0003_0.png")
    _one(
        problems,
        "error",
        "shape mismatch",
        "CXR_png/MCUCXR_0005_0.png (24, 20)",
        "MCUCXR_0005_0.png (30, 30)",
    )
    (root / "ManualMask" / "rightMask" / "MCUCXR_0002_1.png").write_bytes(b"\x89PNG cut")
    _one(check_dataset(f"montgomery:{root}"), "error", "unusable mask", "MCUCXR_0002_1.png")
    for f in (root / "ManualMask" / "leftMask").iterdir():
        f.unlink()
    (root / "ManualMask" / "leftMask").rmdir()
    (msg,) = [p.message for p in check_dataset(f"montgomery:{root}")]
    assert "missing folder ManualMask/leftMask/" in msg


def test_shenzhen_pairs_mask_suffix_and_skips_unmasked_images(tmp_path: Path) -> None:
    spec = make_shenzhen(tmp_path, n=10, unmasked=3)
    ds = load_dataset(spec)
    assert ds.classes == ("background", "lung") and len(ds.records) == 10
    rec = ds.records[0]
    assert Path(rec.mask.path).name == f"{rec.sample_id}_mask.png"  # type: ignore[union-attr]
    assert set(np.unique(ds.load_mask(rec))) == {0, 1}  # stored 0/255
    problems = check_dataset(spec)
    assert [p for p in problems if p.severity == "error"] == []
    _one(problems, "warning", "3 image(s)", "have no mask", "CHNCXR_0011_0.png")
    (_root(spec) / "mask").rename(_root(spec) / "labels")
    (msg,) = [p.message for p in check_dataset(spec)]
    assert "missing mask folder" in msg and "mask, masks" in msg


# ---------------------------------------------------------------------------- BTCV


def test_btcv_raw_layout_13_organs_as_volumes(tmp_path: Path) -> None:
    spec = make_btcv(tmp_path)
    ds = load_dataset(spec)
    assert ds.ndim == 3 and ds.classes == ("background", *BTCV_ORGANS)
    assert sorted(r.sample_id for r in ds.records) == [f"img{i:04d}" for i in range(1, 7)]  # Testing/ skipped
    vol, mask = ds.load_image(ds.records[0]), ds.load_mask(ds.records[0])
    assert vol.ndim == 3 and vol.shape == mask.shape and set(np.unique(mask)) == set(range(14))


def test_btcv_json_layout_keeps_its_training_and_validation_lists(tmp_path: Path) -> None:
    spec = make_btcv(tmp_path, n=8, layout="json")
    meta = json.loads((_root(spec) / "dataset_0.json").read_text())
    ds = load_dataset(spec)
    val = {Path(e["image"]).name.split(".")[0] for e in meta["validation"]}
    assert {r.sample_id for r in ds.split("val")} == val
    assert ds.split("test") and {r.sample_id for r in ds.split("test")}.isdisjoint(val)


def test_btcv_faults_are_named(tmp_path: Path) -> None:
    root = _root(make_btcv(tmp_path))
    train = root / "RawData" / "Training"
    (train / "label" / "label0002.nii.gz").unlink()
    cut = train / "img" / "img0003.nii.gz"
    cut.write_bytes(cut.read_bytes()[:200])
    nib.save(
        nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)), str(train / "label" / "label0004.nii.gz")
    )
    problems = check_dataset(f"btcv:{root}")
    _one(problems, "error", "no label for image", "img0002.nii.gz")
    _one(problems, "error", "unreadable image", "img0003.nii.gz")
    _one(problems, "error", "shape mismatch", "img0004.nii.gz", "label0004.nii.gz (5, 5, 5)")
    (train / "label").rename(train / "labels")
    (msg,) = [p.message for p in check_dataset(f"btcv:{root}")]
    assert "no BTCV layout" in msg and "RawData/Training/img/ + label/" in msg


# ---------------------------------------------------------------------------- AMOS


def test_amos_subsets_and_json_splits(tmp_path: Path) -> None:
    spec = make_amos(tmp_path)
    ct = load_dataset(spec)
    assert ct.classes == ("background", *AMOS_ORGANS) and ct.ndim == 3
    assert all(int(r.sample_id[5:]) <= 500 for r in ct.records)
    assert {r.sample_id for r in ct.split("val")} == {"amos_0400", "amos_0401"}
    assert ct.split("test") and ct.conventions["subset"] == "ct"
    mri = load_dataset(f"{spec}?subset=mri")
    assert sorted(r.sample_id for r in mri.records) == ["amos_0540", "amos_0541"]
    assert len(load_dataset(f"{spec}?subset=all").records) == len(ct.records) + 2


def test_amos_faults_are_named(tmp_path: Path) -> None:
    root = _root(make_amos(tmp_path))
    (root / "labelsTr" / "amos_0002.nii.gz").unlink()
    problems = check_dataset(f"amos:{root}")
    _one(problems, "error", "dataset.json training[1]", "file not found", "labelsTr/amos_0002.nii.gz")
    (root / "dataset.json").unlink()
    (msg,) = [p.message for p in check_dataset(f"amos:{root}")]
    assert msg.startswith("amos: missing dataset.json in")


# ---------------------------------------------------------------------------- MSD


def test_msd_heart_ignores_apple_double_files(tmp_path: Path) -> None:
    spec = make_msd(tmp_path)
    assert list((_root(spec) / "imagesTr").glob("._*"))
    ds = load_dataset(spec)
    assert ds.classes == ("background", "left atrium") and ds.name == "msd-Task02_Heart"
    assert ds.modality == "mri" and len(ds.records) == 6 and ds.ndim == 3
    assert all(not Path(r.image.path).name.startswith("._") for r in ds.records)


def test_msd_task_is_chosen_by_number_or_name(tmp_path: Path) -> None:
    make_msd(tmp_path, task="Task09_Spleen")
    make_msd(tmp_path, task="Task04_Hippocampus")
    spleen = load_dataset(f"msd:{tmp_path}?task=9")
    assert spleen.classes == ("background", "spleen") and spleen.modality == "ct"
    hippo = load_dataset(f"msd:{tmp_path}?task=Hippocampus")
    assert hippo.classes == ("background", "Anterior", "Posterior")
    with pytest.raises(DataError, match=r"holds several tasks .*Task04_Hippocampus, Task09_Spleen.*task="):
        load_dataset(f"msd:{tmp_path}")
    with pytest.raises(DataError, match="no task '3'"):
        load_dataset(f"msd:{tmp_path}?task=3")
