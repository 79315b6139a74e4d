"""``orient=stored``: NIfTI volumes sliced as Baharoon et al.'s released code slices them
(``nib.load(p).get_fdata().transpose(2, 0, 1)``, no reorientation), images and masks alike; and the
CT window that reproduces its ``torch.clamp(image, -1024, 600)``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from radprobe.data import ImageRef, ReadOptions, load_dataset, read_image, read_mask
from radprobe.data.readers import nifti_shape, volume_depth
from radprobe.data.spec import opt_window
from radprobe.errors import DataError

# Stored axes permuted and flipped: i -> -y, j -> z, k -> x. Canonical (RAS+) axes are then (k, i, j),
# so canonical and stored slicing along axis 2 differ in depth as well as in-plane.
PERMUTED = np.array([[0, 0, 1.5, 0], [-1.0, 0, 0, 9.0], [0, 2.0, 0, 0], [0, 0, 0, 1.0]])
SHAPE = (7, 9, 5)


def _volume(tmp_path: Path, name: str = "ct") -> tuple[Path, Path]:
    """An int16 HU volume (values beyond both clamp bounds on every slice) and its label map."""
    rng = np.random.default_rng(3)
    hu = rng.integers(-1500, 1500, SHAPE).astype(np.int16)
    hu[0, 0, :], hu[1, 0, :] = -2000, 2000  # each slice crosses -1024 and 600
    lab = np.zeros(SHAPE, np.uint8)
    lab[1:4, 2:6, 1:4] = 1
    lab[5, 7, 2] = 2
    img, mask = tmp_path / f"{name}.nii.gz", tmp_path / f"{name}_mask.nii.gz"
    nib.save(nib.Nifti1Image(hu, PERMUTED), img)
    nib.save(nib.Nifti1Image(lab, PERMUTED), mask)
    return img, mask


def _released(path: Path) -> np.ndarray:
    """The released code's slices (``data/datasets/btcv.py:87-88``, ``amos.py:131-132``)."""
    return nib.load(path).get_fdata().transpose(2, 0, 1)


def _minmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return (x - x.min()) / (x.max() - x.min())


def test_orient_stored_slices_are_the_released_transpose_for_image_and_mask(tmp_path: Path) -> None:
    img, mask = _volume(tmp_path)
    x, y = _released(img), _released(mask)
    stored = ReadOptions(norm="minmax", orient="stored")
    vol = read_image(ImageRef(str(img), "nifti"), stored)
    np.testing.assert_allclose(vol, _minmax(x), atol=1e-6)
    np.testing.assert_array_equal(read_mask(ImageRef(str(mask), "nifti"), stored), y)
    for k in (0, 3, 4):  # slices (read through the volume cache) are the released slice files
        np.testing.assert_allclose(read_image(ImageRef(str(img), "nifti", index=k), stored), vol[k])
        np.testing.assert_array_equal(read_mask(ImageRef(str(mask), "nifti", index=k), stored), y[k])
    assert nifti_shape(str(img), "stored") == SHAPE
    assert volume_depth(ImageRef(str(img), "nifti"), "stored") == SHAPE[2] == vol.shape[0]


def test_orient_canonical_stays_the_default_ras_display_orientation(tmp_path: Path) -> None:
    img, mask = _volume(tmp_path)
    ras = nib.as_closest_canonical(nib.load(img)).get_fdata()
    display = np.moveaxis(ras, 2, 0).transpose(0, 2, 1)[:, ::-1, ::-1]
    canonical = ReadOptions(norm="minmax")
    vol = read_image(ImageRef(str(img), "nifti"), canonical)
    np.testing.assert_allclose(vol, _minmax(display), atol=1e-6)
    labels = read_mask(ImageRef(str(mask), "nifti"))
    assert labels.shape == vol.shape == (9, 7, 5) != _released(img).shape
    assert nifti_shape(str(img)) == (5, 7, 9) and volume_depth(ImageRef(str(img), "nifti")) == 9
    # a slice read canonically first does not leak into the stored read of the same file (cache key)
    first = read_image(ImageRef(str(img), "nifti", index=0), canonical)
    again = read_image(ImageRef(str(img), "nifti", index=0), ReadOptions(norm="minmax", orient="stored"))
    assert first.shape == (7, 5) and again.shape == (7, 9)


def test_orient_option_reaches_dataset_masks_depths_and_digest(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(3):
        img, mask = _volume(tmp_path, f"p{i}")
        img.rename(root / "images" / f"p{i}_0000.nii.gz")
        mask.rename(root / "masks" / f"p{i}.nii.gz")
    spec = f"nifti:{root}?classes=background,a,b"
    ds = load_dataset(f"{spec}&slices=1&orient=stored")
    assert len(ds.records) == 3 * SHAPE[2]  # depth along the stored axis 2, not the canonical one
    r = ds.records[2]
    x, y = _released(r.image.path), _released(r.mask.path)
    np.testing.assert_array_equal(ds.load_mask(r), y[2])
    assert ds.load_image(r).shape == y[2].shape == (7, 9)
    from radprobe.features.extract import volume_depths

    vols = load_dataset(f"{spec}&orient=stored")
    assert volume_depths(vols, vols.records) == [5, 5, 5] == [x.shape[0]] * 3
    assert len(load_dataset(f"{spec}&slices=1").records) == 3 * 9  # canonical axis 2 is stored axis 1
    plain = load_dataset(spec)
    # the default is left out of the digest, so every digest made before orient= existed still holds
    assert ReadOptions().to_dict() == {"window": None, "norm": "auto", "bits": None, "channel": 0}
    assert plain.read.to_dict() == ReadOptions().to_dict()
    assert plain.manifest_digest() == load_dataset(f"{spec}&orient=canonical").manifest_digest()
    assert plain.manifest_digest() != vols.manifest_digest()
    assert vols.read.to_dict()["orient"] == "stored"
    with pytest.raises(DataError, match=r"^orient='up': expected canonical or stored$"):
        load_dataset(f"{spec}&orient=up")


def test_ct_window_is_the_released_clamp_and_matches_it_after_slice_minmax(tmp_path: Path) -> None:
    img, _ = _volume(tmp_path)
    x = _released(img)
    assert opt_window("-212,1624") == (-212.0, 1624.0)  # center -212, width 1624: [-1024, 600]
    opts = ReadOptions(window=opt_window("-212,1624"), orient="stored")
    vol = read_image(ImageRef(str(img), "nifti"), opts)
    np.testing.assert_allclose(vol, (np.clip(x, -1024, 600) + 1024) / 1624, atol=1e-6)
    # a window wins over norm, whatever the norm
    percentile = replace(opts, norm="percentile")
    np.testing.assert_array_equal(read_image(ImageRef(str(img), "nifti"), percentile), vol)
    # the released get_image_data: torch.clamp; RescaleImage then min-maxes each slice
    released = torch.clamp(torch.tensor(x).float(), min=-1024, max=600).numpy()
    for k in range(x.shape[0]):
        np.testing.assert_allclose(_minmax(vol[k]), _minmax(released[k]), atol=1e-6)
    # the default (0.5-99.5 percentile clipping per volume) is not a linear map of the clamp
    auto = read_image(ImageRef(str(img), "nifti"), ReadOptions(orient="stored"))
    assert np.abs(_minmax(auto[0]) - _minmax(released[0])).max() > 1e-3


def test_minmax_norm_is_linear_per_volume_as_the_released_mri_slices(tmp_path: Path) -> None:
    img, _ = _volume(tmp_path)
    x = _released(img)
    vol = read_image(ImageRef(str(img), "nifti"), ReadOptions(norm="minmax", orient="stored"))
    np.testing.assert_allclose(vol, (x - x.min()) / (x.max() - x.min()), atol=1e-6)
    for k in range(x.shape[0]):  # msd_heart.py has no clamp: per-slice min-max of the raw slice
        np.testing.assert_allclose(_minmax(vol[k]), _minmax(x[k]), atol=1e-6)
