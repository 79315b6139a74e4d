"""NaN voxels in NIfTI volumes: a warning with the file and share, an error when every voxel is NaN."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from radprobe.data import ImageRef, check_dataset, read_image
from radprobe.errors import DataError


def _volume(path: Path, nan_share: float = 0.0, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    vol = np.random.default_rng(seed).normal(100.0, 20.0, (8, 8, 4)).astype(np.float32)
    vol.reshape(-1)[: round(nan_share * vol.size)] = np.nan
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    return path


def _folder(root: Path) -> Path:
    for i in range(10):
        _volume(root / ("tumor" if i % 2 else "normal") / f"case{i}.nii.gz", seed=i)
    return root


def test_nan_voxels_warn_with_file_and_share(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _volume(tmp_path / "quarter.nii.gz", nan_share=0.25)
    with caplog.at_level(logging.WARNING, logger="radprobe.data"):
        vol = read_image(ImageRef(str(path), "nifti"))
    assert np.isfinite(vol).all() and vol.max() > 0.5  # the finite voxels keep their contrast
    assert (vol == 0).sum() >= 64  # NaN voxels read as the lowest value
    messages = [r.getMessage() for r in caplog.records]
    assert any(str(path) in m and "64 of 256 voxels (25%) are NaN" in m for m in messages), messages


def test_data_check_lists_nan_voxels_as_a_warning(tmp_path: Path) -> None:
    root = _folder(tmp_path / "ct")
    bad = _volume(root / "tumor" / "case1.nii.gz", nan_share=0.5, seed=1)
    problems = check_dataset(f"nifti:{root}")
    hits = [p for p in problems if str(bad) in p.message and "are NaN" in p.message]
    assert len(hits) == 1 and hits[0].severity == "warning", problems
    assert "(50%)" in hits[0].message
    assert not [p for p in problems if p.severity == "error"], problems


def test_an_all_nan_volume_is_an_error_naming_the_file(tmp_path: Path) -> None:
    root = _folder(tmp_path / "ct")
    bad = _volume(root / "normal" / "case0.nii.gz", nan_share=1.0)
    with pytest.raises(DataError, match=r"case0\.nii\.gz: every voxel is NaN"):
        read_image(ImageRef(str(bad), "nifti"))
    errors = [p.message for p in check_dataset(f"nifti:{root}") if p.severity == "error"]
    assert len(errors) == 1 and str(bad) in errors[0] and "every voxel is NaN" in errors[0], errors
