"""Readers: every format to float32 [0, 1] with the right scaling, orientation and alignment."""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from radprobe.data import ImageRef, ReadOptions, load_dataset, read_image, read_mask
from radprobe.data.synthetic import write_dicom
from radprobe.errors import DataError


def _img(path: Path, opts: ReadOptions | None = None, **ref: object) -> np.ndarray:
    kind = ref.pop("kind", "image")
    return read_image(ImageRef(str(path), kind, **ref), opts)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- PNG / TIFF


def test_png16_roundtrip_keeps_more_than_8_bits(tmp_path: Path) -> None:
    arr = (np.arange(64 * 64, dtype=np.uint32) * 16 % 65536).astype(np.uint16).reshape(64, 64)
    Image.fromarray(arr).save(tmp_path / "x.png")
    out = _img(tmp_path / "x.png")
    assert out.dtype == np.float32 and out.shape == (64, 64)
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(np.round(out * 65535).astype(np.uint16), arr)
    assert len(np.unique(out)) > 256  # an 8-bit path would collapse these


def test_bits_option_rescales_12bit_data_in_16bit_png(tmp_path: Path) -> None:
    arr = np.array([[0, 1024], [2048, 4095]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "x.png")
    out = _img(tmp_path / "x.png", ReadOptions(bits=12))
    np.testing.assert_allclose(out, arr / 4095.0, atol=1e-6)
    assert _img(tmp_path / "x.png").max() < 0.07  # default: scaled by the 16-bit dtype max


def test_8bit_gray_rgb_rgba_palette_and_tiff(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 7, np.uint8)], axis=2)
    Image.fromarray(gray).save(tmp_path / "g.png")
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(rgba).save(tmp_path / "a.png")
    Image.fromarray(gray).save(tmp_path / "g.tif")
    Image.fromarray(gray).convert("P").save(tmp_path / "p.png")
    np.testing.assert_allclose(_img(tmp_path / "g.png"), gray / 255.0, atol=1e-6)
    np.testing.assert_allclose(_img(tmp_path / "g.tif"), gray / 255.0, atol=1e-6)
    np.testing.assert_allclose(_img(tmp_path / "c.png"), rgb / 255.0, atol=1e-6)
    out = _img(tmp_path / "a.png")
    assert out.shape == (20, 30, 3)
    np.testing.assert_allclose(out, rgb / 255.0, atol=1e-6)
    assert _img(tmp_path / "p.png").shape == (20, 30, 3)


def test_png_mask_keeps_class_indices(tmp_path: Path) -> None:
    mask = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = read_mask(ImageRef(str(tmp_path / "m.png")))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, mask)


@pytest.mark.parametrize(
    ("name", "content", "kind"),
    [
        ("bad.png", b"not a png at all", "image"),
        ("bad.dcm", b"\0" * 40, "dicom"),
        ("bad.nii.gz", b"xx", "nifti"),
    ],
)
def test_corrupt_file_raises_data_error_naming_it(
    tmp_path: Path, name: str, content: bytes, kind: str
) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=name.replace(".", r"\.")):
        _img(tmp_path / name, kind=kind)


# ---------------------------------------------------------------------------- DICOM


def test_dicom_rescale_and_window_option(tmp_path: Path) -> None:
    px = np.array([[0, 100], [200, 300]], dtype=np.uint16)
    path = write_dicom(tmp_path / "a.dcm", px, slope=2.0, intercept=-100.0)  # HU -100, 100, 300, 500
    out = _img(path, ReadOptions(window=(200.0, 600.0)), kind="dicom")  # [-100, 500] -> [0, 1]
    np.testing.assert_allclose(out, [[0.0, 1 / 3], [2 / 3, 1.0]], atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    px = np.array([[0, 100], [200, 300]], dtype=np.uint16)
    m2 = write_dicom(tmp_path / "m2.dcm", px, slope=2.0, intercept=-100.0)
    m1 = write_dicom(tmp_path / "m1.dcm", px, slope=2.0, intercept=-100.0, photometric="MONOCHROME1")
    opts = ReadOptions(window=(200.0, 600.0))
    np.testing.assert_allclose(_img(m1, opts, kind="dicom"), 1.0 - _img(m2, opts, kind="dicom"), atol=1e-6)
    assert _img(m1, opts, kind="dicom")[0, 0] == pytest.approx(1.0)  # lowest value shows white


def test_dicom_header_window_then_minmax(tmp_path: Path) -> None:
    px = np.array([[0, 50], [100, 1000]], dtype=np.uint16)
    with_win = write_dicom(tmp_path / "w.dcm", px, window=(50.0, 100.0))
    no_win = write_dicom(tmp_path / "n.dcm", px)
    np.testing.assert_allclose(_img(with_win, kind="dicom"), [[0.0, 0.5], [1.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(_img(no_win, kind="dicom"), px / 1000.0, atol=1e-6)
    # An explicit window overrides the header's.
    np.testing.assert_allclose(
        _img(with_win, ReadOptions(window=(500.0, 1000.0)), kind="dicom"), px / 1000.0, atol=1e-6
    )


def test_dicom_series_sorted_by_position_not_file_order(tmp_path: Path) -> None:
    series = tmp_path / "series"
    zs = [3.0, -1.0, 1.0, 5.0]
    for i, z in enumerate(zs):
        # File names and InstanceNumber both disagree with the geometry.
        px = np.full((4, 4), int(z + 10), dtype=np.uint16)
        write_dicom(series / f"f{i}.dcm", px, position=(0.0, 0.0, z), instance=10 - i, series_uid="1.2.3")
    vol = read_image(ImageRef(str(series), "dicom-series"))  # min-max over the volume
    assert vol.shape == (4, 4, 4)
    np.testing.assert_allclose(vol[:, 0, 0], [0, 1 / 3, 2 / 3, 1], atol=1e-6)  # z = -1, 1, 3, 5


def test_dicom_series_falls_back_to_instance_number(tmp_path: Path) -> None:
    series = tmp_path / "series"
    for i, inst in enumerate([3, 1, 2]):
        write_dicom(series / f"f{i}.dcm", np.full((2, 2), inst, np.uint16), instance=inst, series_uid="1.2.4")
    vol = read_image(ImageRef(str(series), "dicom-series"))
    np.testing.assert_allclose(vol[:, 0, 0], [0, 0.5, 1], atol=1e-6)


# ---------------------------------------------------------------------------- NIfTI


def test_nifti_ct_window(tmp_path: Path) -> None:
    hu = np.array([-1000, -160, 40, 240, 1000], dtype=np.int16).reshape(5, 1, 1)
    nib.save(nib.Nifti1Image(hu, np.eye(4)), tmp_path / "ct.nii.gz")
    vol = _img(tmp_path / "ct.nii.gz", ReadOptions(window=(40.0, 400.0)), kind="nifti")
    np.testing.assert_allclose(np.sort(vol.ravel()), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)


def test_nifti_image_and_mask_stay_aligned_under_flipped_affine(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.random((6, 7, 8)).astype(np.float32)
    mask = np.zeros((6, 7, 8), np.uint8)
    mask[0:2, 1:3, 5:8] = 1
    data[mask == 1] += 2.0  # the masked region is the bright one
    canonical = np.diag([1.0, 1.0, 1.0, 1.0])
    # Same physical volume stored with a flipped first axis (LAS instead of RAS).
    flipped = np.array([[-1.0, 0, 0, 5.0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    for name, affine, d, m in [
        ("ras", canonical, data, mask),
        ("las", flipped, data[::-1].copy(), mask[::-1].copy()),
    ]:
        nib.save(nib.Nifti1Image(d, affine), tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(m, affine), tmp_path / f"{name}_mask.nii.gz")
    opts = ReadOptions(norm="minmax")
    img_a = _img(tmp_path / "ras.nii.gz", opts, kind="nifti")
    img_b = _img(tmp_path / "las.nii.gz", opts, kind="nifti")
    mask_a = read_mask(ImageRef(str(tmp_path / "ras_mask.nii.gz"), "nifti"))
    mask_b = read_mask(ImageRef(str(tmp_path / "las_mask.nii.gz"), "nifti"))
    np.testing.assert_allclose(img_a, img_b)
    np.testing.assert_array_equal(mask_a, mask_b)
    assert img_a.shape == mask_a.shape == (8, 7, 6)  # (D, H, W) with D along the axial axis
    assert img_b[mask_b == 1].min() > img_b[mask_b == 0].max()
    # Slicing gives the same planes as the volume.
    sl = read_image(ImageRef(str(tmp_path / "las.nii.gz"), "nifti", index=5), opts)
    np.testing.assert_allclose(sl, img_b[5])


def test_nifti_slices_dataset_keeps_masks_aligned(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    flipped = np.array(
        [[0, -1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1.0]]
    )  # permuted + flipped
    rng = np.random.default_rng(1)
    for i in range(6):
        m = np.zeros((10, 12, 4), np.uint8)
        o = int(rng.integers(0, 6))
        m[o : o + 4, 2:5, :] = 1
        d = rng.random(m.shape).astype(np.float32) + 3.0 * m
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(d, flipped), root / "images" / f"p{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(m, flipped), root / "masks" / f"p{i}.nii.gz")
    ds = load_dataset(f"nifti:{root}?slices=1&classes=background,lesion")
    assert ds.ndim == 2 and ds.task == "segmentation" and len(ds.records) == 6 * 4
    for r in ds.records[:8]:
        img, mask = ds.load_image(r), ds.load_mask(r)
        assert img.shape == mask.shape == (10, 12)
        assert img[mask == 1].min() > img[mask == 0].max()


# ---------------------------------------------------------------------------- npz / HDF5


def test_npz_medmnist_style(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in [("train", 30), ("val", 6), ("test", 9)]:
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 3, (n, 1))
    np.savez_compressed(tmp_path / "organ.npz", **arrays)
    ds = load_dataset(f"npz:{tmp_path / 'organ.npz'}")
    assert ds.task == "multiclass" and ds.classes == ("0", "1", "2") and ds.ndim == 2
    assert {s: len(v) for s, v in ds.splits().items()} == {"train": 30, "val": 6, "test": 9}
    r = ds.split("val")[4]
    np.testing.assert_allclose(ds.load_image(r), arrays["val_images"][4] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(ds.labels(ds.split("test")), arrays["test_labels"][:, 0])


def test_npz_multilabel_and_3d(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in [("train", 12), ("val", 4), ("test", 4)]:
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 8, 8, 8), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 5))
    np.savez(tmp_path / "chest3d.npz", **arrays)
    ds = load_dataset(str(tmp_path / "chest3d.npz"))  # bare path, auto-detected
    assert ds.task == "multilabel" and len(ds.classes) == 5 and ds.ndim == 3
    assert ds.labels(ds.split("train")).shape == (12, 5)
    assert ds.load_image(ds.records[0]).shape == (8, 8, 8)


def test_mat_v73_via_h5py_is_transposed_back(tmp_path: Path) -> None:
    img = np.arange(12, dtype=np.int16).reshape(3, 4) * 100  # MATLAB view: 3 rows x 4 columns
    mask = (img > 500).astype(np.uint8)
    for i in range(4):
        with h5py.File(tmp_path / f"{i}.mat", "w") as f:
            # MATLAB v7.3 writes column-major, so h5py sees the transpose.
            f.create_dataset("cjdata/image", data=img.T + i)
            f.create_dataset("cjdata/tumorMask", data=mask.T)
    (tmp_path / "m.csv").write_text(
        "path,mask,patient_id\n" + "".join(f"{i}.mat,{i}.mat,P{i}\n" for i in range(4))
    )
    ds = load_dataset(f"csv:{tmp_path / 'm.csv'}?key=cjdata/image&mask_key=cjdata/tumorMask&classes=bg,tumor")
    r = ds.records[0]
    out, m = ds.load_image(r), ds.load_mask(r)
    assert out.shape == m.shape == (3, 4)
    expected = img + int(r.image.path[-5])
    np.testing.assert_allclose(out, (expected - expected.min()) / np.ptp(expected), atol=1e-6)
    np.testing.assert_array_equal(m, mask)
