"""Synthetic datasets: load through the real readers, have patient-level splits and a learnable signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, cross_val_score

from radprobe.data import Dataset, check_dataset, check_leakage, load_dataset, make_synthetic
from radprobe.data.synthetic import SYNTHETIC, ensure_synthetic

NAMES = sorted(SYNTHETIC)


@pytest.fixture(scope="session")
def datasets(synthetic_cache: Path) -> dict[str, Dataset]:
    return {name: load_dataset(f"synthetic:{name}") for name in NAMES}


def _pooled(ds: Dataset, records: list, factor: int = 4) -> np.ndarray:
    """Raw pixels, mean-pooled by ``factor`` per axis, one row per record."""
    rows = []
    for r in records:
        img = ds.load_image(r)
        shape = [s // factor for s in img.shape for _ in (0, 1)]
        shape[1::2] = [factor] * img.ndim
        rows.append(img.reshape(shape).mean(axis=tuple(range(1, 2 * img.ndim, 2))).ravel())
    return np.asarray(rows)


@pytest.mark.parametrize("name", NAMES)
def test_synthetic_dataset_loads_with_patient_level_splits(name: str, datasets: dict[str, Dataset]) -> None:
    ds = datasets[name]
    info = SYNTHETIC[name]
    assert ds.name == name and ds.spec == f"synthetic:{name}"
    assert ds.task == info.task and ds.ndim == info.ndim and ds.modality == info.modality
    assert list(ds.splits()) == ["train", "val", "test"]
    assert check_leakage(ds.records) == []
    per_patient = np.unique(ds.patients(ds.records), return_counts=True)[1]
    assert per_patient.min() >= 2  # several samples per patient
    first = ds.records[0]
    img = ds.load_image(first)
    assert img.dtype == np.float32 and img.min() >= 0.0 and img.max() <= 1.0
    expected = (32, 32, 32) if ds.ndim == 3 else (64, 64)
    assert img.shape == expected
    if ds.task == "segmentation":
        mask = ds.load_mask(first)
        assert mask.shape == img.shape and mask.dtype == np.int64
        assert ds.classes == ("background", "organ", "lesion")
    else:
        labels = ds.labels(ds.split("test"))
        assert labels.dtype == np.int64
        if ds.task == "multilabel":
            assert labels.shape == (len(ds.split("test")), len(ds.classes))
            assert labels.sum(0).min() >= 1  # even the rare label reaches the test split
        else:
            assert labels.shape == (len(ds.split("test")),)
            assert set(labels.tolist()) == set(range(len(ds.classes)))


@pytest.mark.parametrize("name", ["cls2d-binary", "cls2d-multiclass", "cls2d-multilabel"])
def test_2d_signal_is_learnable_from_raw_pixels(name: str, datasets: dict[str, Dataset]) -> None:
    ds = datasets[name]
    train, test = ds.split("train") + ds.split("val"), ds.split("test")
    x_train, x_test = _pooled(ds, train), _pooled(ds, test)
    y_train, y_test = ds.labels(train), ds.labels(test)
    if ds.task == "multilabel":
        aucs = [
            roc_auc_score(
                y_test[:, j],
                LogisticRegression(max_iter=2000).fit(x_train, y_train[:, j]).predict_proba(x_test)[:, 1],
            )
            for j in range(len(ds.classes))
        ]
        assert min(aucs) > 0.8, aucs
    else:
        clf = LogisticRegression(max_iter=2000).fit(x_train, y_train)
        accuracy = float(np.mean(clf.predict(x_test) == y_test))
        chance = np.bincount(y_test).max() / len(y_test)
        assert accuracy > chance + 0.2, (accuracy, chance)


def test_3d_signal_is_learnable_from_raw_voxels(datasets: dict[str, Dataset]) -> None:
    ds = datasets["cls3d"]
    x, y = _pooled(ds, ds.records), ds.labels(ds.records)
    # 40 volumes: patient-grouped cross-validation is steadier than the 8-volume test split.
    scores = cross_val_score(
        LogisticRegression(max_iter=5000), x, y, groups=ds.patients(ds.records), cv=GroupKFold(5)
    )
    assert scores.mean() > 0.8, scores


@pytest.mark.parametrize("name", ["seg2d", "seg3d"])
def test_segmentation_classes_are_separable_by_intensity(name: str, datasets: dict[str, Dataset]) -> None:
    ds = datasets[name]
    means = np.zeros(3)
    counts = np.zeros(3)
    for r in ds.split("test"):
        img, mask = ds.load_image(r), ds.load_mask(r)
        for c in range(3):
            means[c] += img[mask == c].sum()
            counts[c] += (mask == c).sum()
    assert counts.min() > 0
    means /= counts
    assert means[0] + 0.1 < means[1] < means[2] - 0.1, means


def test_synthetic_sets_check_clean() -> None:
    for name in NAMES:
        assert [p for p in check_dataset(f"synthetic:{name}") if p.severity == "error"] == [], name


def test_generation_is_atomic_reused_and_location_independent(
    tmp_path: Path, datasets: dict[str, Dataset]
) -> None:
    root = ensure_synthetic("seg2d")
    assert (root / ".complete").is_file() and root.name == "seg2d-v1"
    stamp = (root / ".complete").stat().st_mtime_ns
    assert ensure_synthetic("seg2d") == root and (root / ".complete").stat().st_mtime_ns == stamp
    assert not [p for p in root.parent.iterdir() if ".tmp-" in p.name]
    # Same generator elsewhere: identical files, so an identical digest (paths are root-relative).
    spec = make_synthetic("seg2d", tmp_path / "copy")
    copy = load_dataset(f"{spec}?name=seg2d")
    assert copy.manifest_digest() == datasets["seg2d"].manifest_digest()


def test_incomplete_synthetic_folder_is_regenerated(private_cache: Path) -> None:
    broken = private_cache / "synthetic" / "cls3d-v1"
    broken.mkdir(parents=True)
    (broken / "junk.txt").write_text("interrupted")
    root = ensure_synthetic("cls3d")
    assert root == broken and (root / ".complete").is_file() and not (root / "junk.txt").exists()
    assert len(load_dataset("synthetic:cls3d").records) == 40
