"""Messages that say what is wrong and how to fix it: delimiters, truncated files, empty splits."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from radprobe.data import check_dataset, load_dataset
from radprobe.errors import DataError


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), value, np.uint8) + np.eye(16, dtype=np.uint8)).save(path)


def _rows(root: Path, n: int = 12) -> list[dict[str, object]]:
    rows = []
    for i in range(n):
        _png(root / "img" / f"{i}.png", value=i)
        rows.append({"path": f"img/{i}.png", "label": ["normal", "effusion"][i % 2], "patient_id": f"P{i}"})
    return rows


def test_a_semicolon_csv_gets_a_delimiter_hint(tmp_path: Path) -> None:
    pd.DataFrame(_rows(tmp_path)).to_csv(tmp_path / "m.csv", index=False, sep=";")
    with pytest.raises(DataError, match=r"m\.csv.*semicolon-separated.*save it with commas") as e:
        load_dataset(f"csv:{tmp_path / 'm.csv'}")
    assert "'path;label;patient_id'" in str(e.value) and "\n" not in str(e.value)
    # European decimals add commas to the rows, which pandas cannot parse at all: the same hint
    rows = [{**r, "score": "0,5"} for r in _rows(tmp_path)]
    pd.DataFrame(rows).to_csv(tmp_path / "eu.csv", index=False, sep=";")
    [problem] = check_dataset(f"csv:{tmp_path / 'eu.csv'}")
    assert "semicolon-separated" in problem.message and "\n" not in problem.message


def test_a_truncated_image_names_its_manifest_row(tmp_path: Path) -> None:
    rows = _rows(tmp_path)
    data = (tmp_path / "img" / "4.png").read_bytes()
    (tmp_path / "img" / "4.png").write_bytes(data[: len(data) // 2])  # file line 6
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    errors = [p.message for p in check_dataset(f"csv:{tmp_path / 'm.csv'}") if p.severity == "error"]
    assert len(errors) == 1 and "m.csv row 6" in errors[0] and "4.png" in errors[0], errors
    ds = load_dataset(f"csv:{tmp_path / 'm.csv'}")  # indexing does not read pixels
    record = next(r for r in ds.records if r.sample_id == "img/4")
    with pytest.raises(DataError, match=r"^m\.csv row 6 \(sample img/4\): cannot read image .*4\.png"):
        ds.load_image(record)


def test_many_errors_point_at_radprobe_data_check(tmp_path: Path) -> None:
    rows = _rows(tmp_path)
    rows[2]["label"] = rows[3]["label"] = ""
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError, match=r"\(and 1 more; run `radprobe data check` on it"):
        load_dataset(f"csv:{tmp_path / 'm.csv'}")


def test_a_one_volume_nifti_folder_says_why_eval_will_refuse_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "seg"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    vol = np.random.default_rng(0).random((16, 16, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), root / "images" / "case1.nii.gz")
    nib.save(nib.Nifti1Image((vol > 0.5).astype(np.uint8), np.eye(4)), root / "masks" / "case1.nii.gz")
    problems = check_dataset(f"nifti:{root}")
    hits = [p.message for p in problems if "splits val and test are empty" in p.message]
    assert len(hits) == 1, problems
    assert "1 patient(s)" in hits[0] and "eval needs every split" in hits[0]
    assert "add samples from at least 3 patients" in hits[0]
    with caplog.at_level(logging.WARNING, logger="radprobe.data"):
        ds = load_dataset(f"nifti:{root}")
    assert not ds.split("val")
    assert any("splits val and test are empty" in r.getMessage() for r in caplog.records)
