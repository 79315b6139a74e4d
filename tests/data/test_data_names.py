"""A manifest dataset is named after its file, or after its folder when the file name is generic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from radprobe.data import load_dataset


def _manifest(folder: Path, file: str) -> Path:
    folder.mkdir(parents=True)
    rows = ["path,label,patient"]
    for i in range(12):
        Image.fromarray(np.full((8, 8), i * 10, np.uint8)).save(folder / f"i{i}.png")
        rows.append(f"i{i}.png,{'ab'[i % 2]},p{i}")
    (folder / file).write_text("\n".join(rows) + "\n")
    return folder / file


def test_generic_manifest_names_give_way_to_the_folder(tmp_path: Path) -> None:
    assert load_dataset(f"csv:{_manifest(tmp_path / 'brain_mri', 'manifest.csv')}").name == "brain_mri"
    assert load_dataset(f"csv:{_manifest(tmp_path / 'x', 'cohort2.csv')}").name == "cohort2"
    named = _manifest(tmp_path / "y", "labels.csv")
    assert load_dataset(f"csv:{named}?name=mine").name == "mine"
