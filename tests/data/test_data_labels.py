"""Label cells: NaN is a missing label, and a stray value that becomes a class is reported by row."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from radprobe.data import check_dataset, load_dataset
from radprobe.errors import DataError


def _manifest(root: Path, labels: list[str], splits: list[str] | None = None, **columns: list[str]) -> Path:
    rows = []
    for i, label in enumerate(labels):
        path = root / "img" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), i, np.uint8) + np.eye(8, dtype=np.uint8)).save(path)
        row = {"path": f"img/{i}.png", "label": label, "patient_id": f"P{i}"}
        if splits:
            row["split"] = splits[i]
        row.update({k: v[i] for k, v in columns.items()})
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "m.csv", index=False)
    return root / "m.csv"


def _messages(spec: str, severity: str) -> list[str]:
    return [p.message for p in check_dataset(spec) if p.severity == severity]


@pytest.mark.parametrize("cell", ["NaN", "nan", ""])
def test_nan_or_empty_label_is_an_error_naming_the_row(tmp_path: Path, cell: str) -> None:
    labels = ["normal", "effusion"] * 10
    labels[6] = cell  # file line 8
    csv = _manifest(tmp_path, labels)
    errors = _messages(f"csv:{csv}", "error")
    assert len(errors) == 1, errors
    assert "m.csv row 8" in errors[0] and "missing label" in errors[0] and "'label'" in errors[0]
    assert "\n" not in errors[0]
    if cell:
        assert repr(cell) in errors[0]
    with pytest.raises(DataError, match=r"m\.csv row 8.*missing label"):
        load_dataset(f"csv:{csv}")


def test_nan_is_no_class_in_multilabel_columns(tmp_path: Path) -> None:
    n = 20
    labels = ["a|b" if i % 2 else "a" for i in range(n)]
    labels[4] = "nan"
    csv = _manifest(tmp_path, labels)
    problems = check_dataset(f"csv:{csv}?sep=|")
    errors = [p.message for p in problems if p.severity == "error"]
    assert any("m.csv row 6" in m and "missing label 'nan'" in m for m in errors), errors
    assert not [p.message for p in problems if "label 'nan' has" in p.message]  # no class named nan


def test_a_stray_label_is_reported_with_its_row(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    labels = ["normal", "effusion"] * 10
    labels[13] = "martian"  # file line 15
    csv = _manifest(tmp_path, labels)
    warnings = _messages(f"csv:{csv}", "warning")
    stray = [m for m in warnings if "'martian'" in m]
    assert len(stray) == 1, warnings
    assert "m.csv row 15" in stray[0] and "classes=" in stray[0]
    with caplog.at_level(logging.WARNING, logger="radprobe.data"):
        ds = load_dataset(f"csv:{csv}")
    assert "martian" in ds.classes  # a warning, not an error: the value may be a real class
    assert any("'martian'" in r.getMessage() and "m.csv row 15" in r.getMessage() for r in caplog.records)
    # named classes: the stray value is an error on its row, as before
    with pytest.raises(DataError, match=r"m\.csv row 15.*'martian' not in classes"):
        load_dataset(f"csv:{csv}?classes=normal,effusion")


def test_a_class_missing_from_a_given_split_names_its_rows(tmp_path: Path) -> None:
    labels = ["normal", "effusion"] * 9 + ["nodule"] * 7
    splits = ["train"] * 10 + ["val"] * 4 + ["test"] * 4 + ["train"] * 7  # every nodule in train
    csv = _manifest(tmp_path, labels, splits)
    warnings = _messages(f"csv:{csv}", "warning")
    for split in ("val", "test"):
        hits = [m for m in warnings if "'nodule'" in m and f"split {split}" in m]
        assert len(hits) == 1, warnings
        assert "m.csv rows 20, 21, 22, 23, 24 and 2 more" in hits[0]


def test_nan_labels_in_an_npz_file_are_an_error(tmp_path: Path) -> None:
    labels = np.arange(12, dtype=np.float64).reshape(12, 1) % 2
    labels[7] = np.nan
    path = tmp_path / "m.npz"
    imgs = np.zeros((12, 8, 8), np.uint8)
    np.savez(path, train_images=imgs, train_labels=labels, test_images=imgs[:4], test_labels=labels[:4])
    with pytest.raises(DataError, match=r"m\.npz: train_labels\[7\] = \[nan\] is missing"):
        load_dataset(f"npz:{path}")
