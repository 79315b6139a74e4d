"""check_dataset reports every injected problem, each with its file or sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from radprobe.data import check_dataset, load_dataset
from radprobe.errors import DataError


def _png(path: Path, value: int = 100, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8) + np.eye(size, dtype=np.uint8)).save(path)


def _messages(problems: list, severity: str | None = None) -> list[str]:
    return [p.message for p in problems if severity is None or p.severity == severity]


def _one(messages: list[str], *needles: str) -> str:
    hits = [m for m in messages if all(n in m for n in needles)]
    assert hits, f"no problem mentions {needles}; got:\n" + "\n".join(messages)
    return hits[0]


@pytest.fixture
def broken_manifest(tmp_path: Path) -> Path:
    root = tmp_path / "broken"
    rows = []
    for i in range(30):
        _png(root / "img" / f"{i}.png", value=i)
        label = ["normal", "effusion"][i % 2]
        split = "train" if i < 20 else "test"
        rows.append({"path": f"img/{i}.png", "label": label, "patient_id": f"P{i // 2}", "split": split})
    (root / "img" / "3.png").write_bytes(b"\x89PNG garbage")  # corrupt file
    rows[5]["label"] = ""  # missing label
    rows[7]["path"] = "img/missing.png"  # missing file
    rows.append(dict(rows[9]))  # duplicated sample id
    rows[18]["split"] = "test"  # patient P9 now in train and test
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


def test_check_reports_every_problem_in_a_broken_manifest(broken_manifest: Path) -> None:
    problems = check_dataset(f"csv:{broken_manifest}?classes=normal,effusion,nodule")
    errors = _messages(problems, "error")
    _one(errors, "unreadable image", "3.png")
    _one(errors, "labels.csv row 7", "missing label")
    _one(errors, "not found", "missing.png", "labels.csv row 9")
    _one(errors, "duplicated sample id", "img/9", "row 11", "row 32")
    _one(errors, "patient P9", "train", "test", "img/18")
    warnings = _messages(problems, "warning")
    _one(warnings, "'nodule'", "no samples")  # empty class
    assert all(p.severity in ("error", "warning") for p in problems)


def test_load_dataset_refuses_broken_manifest(broken_manifest: Path) -> None:
    with pytest.raises(DataError, match=r"labels\.csv row \d+.*\(and \d+ more; run `radprobe data check`"):
        load_dataset(str(broken_manifest))


def test_check_reports_problems_in_a_broken_folder(tmp_path: Path) -> None:
    root = tmp_path / "xr"
    for i in range(12):
        _png(root / ("normal" if i % 2 else "pneumonia") / f"p{i}.png", value=i)
    (root / "pneumonia" / "p4.png").write_bytes(b"truncated")
    (root / "nodule").mkdir()  # empty class folder
    _png(root / "stray.png")  # no label
    (root / "normal" / "notes.xyz").write_text("?")
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(root / "normal" / "blank.png")
    problems = check_dataset(f"folder:{root}")
    errors, warnings = _messages(problems, "error"), _messages(problems, "warning")
    _one(errors, "p4.png", "cannot read image")
    _one(errors, "stray.png", "not inside a class folder")
    _one(warnings, "'nodule'", "no samples", str(root / "nodule"))
    _one(warnings, "notes.xyz", "unsupported")
    _one(warnings, "blank.png", "constant")
    _one(warnings, "no patient ids")


def test_check_reports_segmentation_problems(tmp_path: Path) -> None:
    root = tmp_path / "seg"
    for i in range(9):
        _png(root / "images" / f"c{i}.png")
        if i == 8:
            continue  # image without a mask
        mask = np.zeros((4, 4) if i == 2 else (8, 8), np.uint8)
        mask[1, 1] = 7 if i == 5 else 1
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(root / "masks" / f"c{i}_mask.png")
    problems = check_dataset(f"folder:{root}?classes=background,lesion,cyst&mask_values=0,1,2")
    errors = _messages(problems, "error")
    _one(errors, "shape mismatch", "c2.png", "c2_mask.png", "(8, 8)", "(4, 4)")
    _one(errors, "no mask for image", "c8.png")
    _one(errors, "c5_mask.png", "[7]")
    _one(_messages(problems, "warning"), "'cyst'", "no mask")


def test_check_leakage_from_identical_files(tmp_path: Path) -> None:
    root = tmp_path / "dup"
    for split in ("train", "test"):
        for i in range(4):
            _png(
                root / split / ("a" if i % 2 else "b") / f"{split}{i}.png",
                value=i + (0 if split == "train" else 50),
            )
    (root / "test" / "a" / "test1.png").write_bytes((root / "train" / "a" / "train1.png").read_bytes())
    problems = check_dataset(str(root), fractions=(0.75, 0.0, 0.25))
    _one(_messages(problems, "warning"), "identical image files", "train1.png", "test1.png")


def test_check_warns_about_a_class_missing_from_a_split(tmp_path: Path) -> None:
    root = tmp_path / "splitdirs"
    for i in range(16):
        _png(root / "train" / ("a" if i % 2 else "b") / f"t{i}.png", value=i)
    for i in range(4):
        _png(root / "test" / "a" / f"s{i}.png", value=100 + i)
    problems = check_dataset(str(root))
    _one(_messages(problems, "warning"), "class 'b'", "no samples in split test")


def test_clean_dataset_has_no_errors(tmp_path: Path) -> None:
    root = tmp_path / "ok"
    for i in range(20):
        _png(root / ("a" if i % 2 else "b") / f"pt{i // 2}_{i}.png", value=i)
    problems = check_dataset(f"folder:{root}?patient_re=(pt\\d+)_")
    assert _messages(problems, "error") == []


def test_check_of_a_missing_dataset_is_one_error(tmp_path: Path) -> None:
    problems = check_dataset(str(tmp_path / "none"))
    assert len(problems) == 1 and problems[0].severity == "error" and "none" in problems[0].message
