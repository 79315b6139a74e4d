"""Spec parsing and indexing: folders, manifests, options, sidecars, digests."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from radprobe.data import check_leakage, list_datasets, load_dataset, parse_spec
from radprobe.data.synthetic import write_dicom
from radprobe.errors import DataError


def _png(path: Path, value: int = 100, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def _folder(root: Path, patients: int = 12, per: int = 3) -> Path:
    for p in range(patients):
        for k in range(per):
            cls = "pneumonia" if (p + k) % 3 == 0 else "normal"
            _png(root / cls / f"person{p}_img{k}.png", value=10 * k + p)
    return root


def _manifest(root: Path, rows: list[dict[str, object]], name: str = "m.csv") -> Path:
    for row in rows:
        if not Path(str(row["path"])).is_absolute():
            _png(root / str(row["path"]))
    pd.DataFrame(rows).to_csv(root / name, index=False)
    return root / name


# ---------------------------------------------------------------------------- specs


def test_unknown_scheme_and_missing_path_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown dataset scheme 'zip'.*folder:<dir>"):
        load_dataset("zip:/x")
    with pytest.raises(DataError, match=r"not found: .*nope"):
        load_dataset(str(tmp_path / "nope"))
    with pytest.raises(DataError, match=r"not found: .*nope\.csv"):
        load_dataset(f"csv:{tmp_path / 'nope.csv'}")
    with pytest.raises(DataError, match="unknown synthetic dataset 'nope'"):
        load_dataset("synthetic:nope")


def test_unknown_option_lists_valid_ones(tmp_path: Path) -> None:
    _folder(tmp_path / "d")
    with pytest.raises(DataError, match=r"unknown option\(s\) colour.*patient_re"):
        load_dataset(f"folder:{tmp_path / 'd'}?colour=red")


def test_bare_paths_are_auto_detected(tmp_path: Path) -> None:
    _folder(tmp_path / "d")
    csv = _manifest(tmp_path / "m", [{"path": f"{i}.png", "label": i % 2} for i in range(6)])
    (tmp_path / "n").mkdir()
    shutil.copy(tmp_path / "d" / "normal" / "person1_img0.png", tmp_path / "n" / "x.nii.gz")
    assert parse_spec(str(tmp_path / "d")).scheme == "folder"
    assert parse_spec(str(csv)).scheme == "csv"
    assert parse_spec(str(tmp_path / "n")).scheme == "nifti"
    assert parse_spec(f"csv:{csv}?label=label&patient=pid").options == {"label": "label", "patient": "pid"}


# ---------------------------------------------------------------------------- folders


def test_folder_with_patient_regex(tmp_path: Path) -> None:
    root = _folder(tmp_path / "xr")
    ds = load_dataset(f"folder:{root}?patient_re=(person\\d+)_")
    assert ds.task == "binary" and ds.classes == ("normal", "pneumonia")  # normal-like class first
    assert ds.ndim == 2 and len(ds.records) == 36
    r = next(r for r in ds.records if r.sample_id == "pneumonia/person3_img0")
    assert r.patient_id == "person3" and r.label == 1
    assert len(set(ds.patients(ds.records))) == 12
    assert check_leakage(ds.records) == []
    assert set(ds.splits()) == {"train", "val", "test"}


def test_folder_with_split_folders_and_sidecar(tmp_path: Path) -> None:
    root = tmp_path / "cxr"
    for split, n in [("train", 20), ("test", 6)]:
        for p in range(n):
            _png(root / split / ("A" if p % 2 else "B") / f"pt{p}_{split}.png")
    (root / "radprobe.yaml").write_text("patient_re: '(pt\\d+)_'\nmodality: xray\nname: cxr-test\n")
    ds = load_dataset(str(root))
    assert ds.name == "cxr-test" and ds.modality == "xray"
    sizes = {s: len(v) for s, v in ds.splits().items()}
    assert (
        sizes["test"] == 6 and sizes["train"] + sizes["val"] == 20 and sizes["val"] > 0
    )  # val carved from train
    assert all(r.split == "test" for r in ds.records if r.sample_id.startswith("test/"))


def test_dicom_folder_uses_patient_id_tag(tmp_path: Path) -> None:
    root = tmp_path / "dcm"
    for i in range(8):
        cls = "effusion" if i % 2 else "normal"
        write_dicom(root / cls / f"im{i}.dcm", np.full((4, 4), i, np.uint16), patient_id=f"PX{i // 2}")
    ds = load_dataset(f"dicom:{root}")
    assert {r.patient_id for r in ds.records} == {"PX0", "PX1", "PX2", "PX3"}
    assert ds.has_patients and ds.ndim == 2
    assert ds.load_image(ds.records[0]).shape == (4, 4)


def test_dicom_series_folders_are_volumes(tmp_path: Path) -> None:
    root = tmp_path / "ct"
    for s in range(6):
        cls = "tumor" if s % 2 else "normal"
        for z in range(3):
            write_dicom(
                root / cls / f"series{s}" / f"{z}.dcm",
                np.full((5, 5), z * 10 + s, np.uint16),
                position=(0, 0, float(z)),
                patient_id=f"P{s}",
            )
    ds = load_dataset(f"dicom:{root}")
    assert ds.ndim == 3 and len(ds.records) == 6
    assert ds.load_image(ds.records[0]).shape == (3, 5, 5)


# ---------------------------------------------------------------------------- manifests


def test_csv_manifest_with_patient_and_split_columns(tmp_path: Path) -> None:
    rows = [
        {
            "Image Index": f"img/{i}.png",
            "Finding": "Mass" if i % 4 == 0 else "No Finding",
            "PatientID": f"P{i // 2}",
            "fold": "training" if i < 16 else "testing",
        }
        for i in range(24)
    ]
    for row in rows:
        _png(tmp_path / str(row["Image Index"]))
    pd.DataFrame(rows).to_csv(tmp_path / "data.csv", index=False)
    ds = load_dataset(
        f"csv:{tmp_path / 'data.csv'}?path=Image Index&label=Finding&patient=PatientID&split=fold"
    )
    assert ds.classes == ("No Finding", "Mass") and ds.task == "binary"
    assert {r.patient_id for r in ds.records} == {f"P{i}" for i in range(12)}
    assert len(ds.split("test")) == 8 and len(ds.split("val")) > 0
    assert Path(ds.records[0].image.path).is_absolute()  # relative paths resolve against the manifest
    np.testing.assert_allclose(ds.load_image(ds.records[0]), 100 / 255, atol=1e-6)


def test_parquet_multilabel_columns_detected(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [
        {
            "path": f"{i}.png",
            "patient_id": f"P{i // 3}",
            "edema": int(rng.random() < 0.4),
            "nodule": float(rng.random() < 0.3),
            "age": 40 + i,
        }
        for i in range(30)
    ]
    for row in rows:
        _png(tmp_path / str(row["path"]))
    pd.DataFrame(rows).to_parquet(tmp_path / "labels.parquet")
    ds = load_dataset(f"parquet:{tmp_path / 'labels.parquet'}")
    assert ds.task == "multilabel" and ds.classes == ("edema", "nodule")  # 'age' is not 0/1
    labels = ds.labels(ds.records)
    assert labels.shape == (30, 2) and labels.dtype == np.int64
    assert labels[:, 0].tolist() == [r["edema"] for r in rows]


def test_separator_labels_with_negative_token(tmp_path: Path) -> None:
    findings = ["Effusion|Mass", "No Finding", "Mass", "Effusion", "No Finding", "Atelectasis|Effusion"] * 3
    rows = [{"path": f"{i}.png", "labels": f, "patient_id": f"P{i}"} for i, f in enumerate(findings)]
    csv = _manifest(tmp_path, rows)
    ds = load_dataset(f"csv:{csv}?sep=|&negative=No Finding")
    assert ds.task == "multilabel" and ds.classes == ("Atelectasis", "Effusion", "Mass")
    assert ds.labels(ds.records)[:2].tolist() == [[0, 1, 1], [0, 0, 0]]


def test_multiclass_manifest_with_classes_option(tmp_path: Path) -> None:
    rows = [{"path": f"{i}.png", "label": ["glioma", "meningioma", "pituitary"][i % 3]} for i in range(12)]
    csv = _manifest(tmp_path, rows)
    ds = load_dataset(f"csv:{csv}?classes=pituitary,glioma,meningioma")
    assert ds.task == "multiclass" and ds.classes == ("pituitary", "glioma", "meningioma")
    assert ds.records[0].label == 1
    assert not ds.has_patients  # no patient column: every sample is its own patient


def test_segmentation_manifest_with_binary_255_masks(tmp_path: Path) -> None:
    rows = []
    for i in range(10):
        _png(tmp_path / f"im{i}.png", 50)
        m = np.zeros((8, 8), np.uint8)
        m[2:4, 2:4] = 255
        Image.fromarray(m).save(tmp_path / f"im{i}_mask.png")
        rows.append({"image": f"im{i}.png", "mask": f"im{i}_mask.png", "patient": f"P{i}"})
    pd.DataFrame(rows).to_csv(tmp_path / "seg.csv", index=False)
    ds = load_dataset(str(tmp_path / "seg.csv"))
    assert ds.task == "segmentation" and ds.classes == ("background", "class_1")  # inferred from values
    mask = ds.load_mask(ds.records[0])
    assert mask.dtype == np.int64 and set(np.unique(mask).tolist()) == {0, 1} and mask.sum() == 4
    with pytest.raises(ValueError):
        ds.labels(ds.records)


# ---------------------------------------------------------------------------- digests, pickling


def test_manifest_digest_stable_and_sensitive_to_labels(tmp_path: Path) -> None:
    rows = [{"path": f"{i}.png", "label": i % 2, "patient_id": f"P{i // 2}"} for i in range(20)]
    csv = _manifest(tmp_path / "a", rows)
    d1 = load_dataset(str(csv)).manifest_digest()
    assert load_dataset(str(csv)).manifest_digest() == d1
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # moving the dataset keeps the digest
    assert load_dataset(str(tmp_path / "b" / "m.csv")).manifest_digest() == d1
    rows[3]["label"] = 1 - int(rows[3]["label"])  # type: ignore[call-overload]
    pd.DataFrame(rows).to_csv(csv, index=False)
    assert load_dataset(str(csv)).manifest_digest() != d1
    assert load_dataset(f"{csv}?window=40,400").manifest_digest() != load_dataset(str(csv)).manifest_digest()


def test_split_digest_and_pickle(tmp_path: Path) -> None:
    ds = load_dataset(str(_folder(tmp_path / "d")) + "?patient_re=(person\\d+)_")
    digests = {s: ds.split_digest(s) for s in ("train", "val", "test")}
    assert len(set(digests.values())) == 3
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.split_digest("test") == digests["test"]
    np.testing.assert_array_equal(clone.load_image(clone.records[0]), ds.load_image(ds.records[0]))
    with pytest.raises(DataError, match="unknown split"):
        ds.split("holdout")


def test_list_datasets_describes_synthetic_sets() -> None:
    entries = list_datasets()
    names = {e["name"] for e in entries}
    assert {"cls2d-binary", "cls2d-multiclass", "cls2d-multilabel", "seg2d", "cls3d", "seg3d"} <= names
    for e in entries:
        assert {"name", "spec", "task", "modality", "ndim", "description", "source"} <= set(e)
        # presets (tests/data/test_presets_meta.py) follow the synthetic sets
        assert e["source"] == ("synthetic" if e["spec"].startswith("synthetic:") else "preset")
