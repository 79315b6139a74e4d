"""Mask checks, resizing, few-shot draws, per-slice extraction and 3D reassembly/orientation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from radprobe.backbones import create_backbone
from radprobe.data import load_dataset
from radprobe.errors import DataError
from radprobe.features.cache import FeatureCache, FeatureSpec
from radprobe.features.extract import extract_split, feature_key, volume_rows
from radprobe.segmentation.data import draw_cases, load_split, resize_masks
from radprobe.segmentation.output import save_prediction
from radprobe.segmentation.train import image_fetch, predict


def test_shape_mismatch_names_both_files(easy2d):
    root = easy2d(n=12)
    bad = root / "masks" / "p003.png"
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(bad)
    ds = load_dataset(f"folder:{root}")
    with pytest.raises(DataError) as e:
        for s in ("train", "val", "test"):
            load_split(ds, s, 64)
    msg = str(e.value)
    assert "shape mismatch" in msg and str(bad) in msg and "p003.png" in msg and "(32, 48)" in msg


def test_label_outside_declared_classes_names_the_mask(easy2d):
    root = easy2d(n=12)
    bad = root / "masks" / "p005.png"
    m = np.asarray(Image.open(bad)).copy()
    m[0, 0] = 7
    Image.fromarray(m).save(bad)
    ds = load_dataset(f"folder:{root}")
    with pytest.raises(DataError) as e:
        for s in ("train", "val", "test"):
            load_split(ds, s, 64)
    assert str(bad) in str(e.value) and "[7]" in str(e.value) and "background" in str(e.value)


def test_resize_masks_is_nearest_and_keeps_labels():
    m = np.zeros((1, 4, 4), np.int64)
    m[0, :2, 2:] = 2
    m[0, 3, 0] = 1
    up = resize_masks(m, 8)
    assert up.shape == (1, 8, 8) and set(np.unique(up)) == {0, 1, 2}
    np.testing.assert_array_equal(up[0, ::2, ::2], m[0])
    np.testing.assert_array_equal(resize_masks(up, 4), m)


def test_draw_cases_prefers_distinct_patients():
    patients = np.array(["a", "a", "b", "b", "c"])
    for seed in range(5):
        idx = draw_cases(patients, 3, np.random.default_rng(seed))
        assert len(set(patients[idx])) == 3
    idx = draw_cases(patients, 5, np.random.default_rng(0))
    assert sorted(idx.tolist()) == [0, 1, 2, 3, 4]


def test_per_slice_extraction_rows_are_the_slices(tmp_path, volumes):
    ds = load_dataset(f"nifti:{volumes(n=4)}")
    bb = create_backbone("test:vit-tiny")
    cache = FeatureCache(tmp_path / "cache")
    spec = FeatureSpec(n_blocks=1, grid_layers=(1,), dtype="float32")
    fs, st = extract_split(bb, ds, "train", cache, spec, per_slice=True)
    recs = ds.split("train")
    vol = ds.load_image(recs[-1])
    rows = volume_rows(fs)
    assert len(rows) == len(recs) and fs.sample_ids[rows[-1].start] == f"{recs[-1].sample_id}#0"
    assert rows[-1].stop - rows[-1].start == vol.shape[0] and st.extra["forward_images"] == len(fs)
    k = vol.shape[0] // 2
    with torch.no_grad():
        ref = bb(bb.preprocess(vol[k])[None], grid_layers=(1,)).grid[1][0].numpy()
    np.testing.assert_allclose(fs.grid(1)[rows[-1].start + k], ref, atol=1e-4)
    # the classification (slice-averaged) entry of the same split keeps its own key and layout
    assert feature_key(bb, ds, "train", spec) != feature_key(bb, ds, "train", spec, per_slice=True)
    avg, _ = extract_split(bb, ds, "train", cache, spec)
    assert len(avg) == len(recs) and "volume" not in avg.arrays
    again, hit = extract_split(bb, ds, "train", cache, spec, per_slice=True)
    assert hit.cache_hit and again.key == fs.key


class _Oracle(torch.nn.Module):
    """Reads the label back from the intensity (label + 1) / 4, min-max scaled to {0, .5, 1}."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label = torch.round(x[:, 0] * 2).long().clamp(0, 2)
        return torch.nn.functional.one_hot(label, 3).permute(0, 3, 1, 2).float() * 10


@pytest.mark.parametrize(
    ("shape", "axis", "spacing"),
    [((20, 20, 12), 2, (2.5, 0.8, 1.2)), ((12, 20, 20), 0, (1.2, 2.5, 0.8))],
)
def test_slices_reassemble_into_the_volume_and_save_aligned(tmp_path, volumes, shape, axis, spacing):
    root = volumes(n=3, shape=shape)
    ds = load_dataset(f"nifti:{root}?axis={axis}")
    # square planes at their own size: the oracle sees unresampled pixels, so any slice-order, flip
    # or transpose error in reassembly shows up as a mismatch
    split = load_split(ds, "train", 20, keep_images=True)
    preds = predict(_Oracle(), image_fetch(split.images, "cpu"), split)
    for case, pred, mask in zip(split.cases, preds, split.masks, strict=True):
        assert pred.shape == mask.shape == case.shape == (12, 20, 20)
        np.testing.assert_array_equal(pred, mask)
        assert case.spacing == pytest.approx(spacing)  # (D, H, W) after reorientation
        # written back, the prediction lies on the source mask in world space
        path = save_prediction(tmp_path / "pred", case, pred)
        saved = nib.as_closest_canonical(nib.load(path))
        src = nib.as_closest_canonical(nib.load(case.record.mask.path))
        np.testing.assert_allclose(saved.affine, src.affine)
        np.testing.assert_array_equal(np.asarray(saved.dataobj), np.asarray(src.dataobj))
    assert nib.aff2axcodes(nib.load(root / "masks" / "p00.nii.gz").affine) == ("L", "P", "S")  # not RAS


def test_stacked_images_equal_concatenation_with_gray_repeated():
    from radprobe.segmentation.data import _stack

    rng = np.random.default_rng(0)
    parts = [rng.random((n, c, 6, 6)).astype(np.float16) for n, c in ((3, 1), (2, 3), (4, 1))]
    ref = np.concatenate([np.repeat(p, 3 // p.shape[1], axis=1) for p in parts])
    given = list(parts)
    out = _stack(given)
    np.testing.assert_array_equal(out, ref)
    assert out.dtype == np.float16 and given == [None, None, None]  # parts released as copied
    gray = [p for p in parts if p.shape[1] == 1]
    assert _stack(list(gray)).shape == (7, 1, 6, 6)


def test_large_slice_stacks_spill_to_an_unlinked_memory_map(tmp_path, volumes, monkeypatch):
    """Past the spill threshold the resized slices are served from disk; they equal the in-memory
    stack, and nothing is left in the cache's tmp folder even while the map is open."""
    import radprobe.segmentation.data as segdata

    ds = load_dataset(f"nifti:{volumes(n=4)}")
    ref = load_split(ds, "train", 16, keep_images=True)
    assert not isinstance(ref.images, np.memmap)
    monkeypatch.setattr(segdata, "SPILL_BYTES", 0)
    spilled = load_split(ds, "train", 16, keep_images=True)
    assert isinstance(spilled.images, np.memmap) and not spilled.images.flags.writeable
    np.testing.assert_array_equal(spilled.images, ref.images)
    tmp = tmp_path / "cache" / "tmp"
    monkeypatch.setenv("RADPROBE_CACHE", str(tmp_path / "cache"))
    load_split(ds, "val", 16, keep_images=True)
    assert tmp.is_dir() and list(tmp.iterdir()) == []
    # colour arriving after gray parts were spilled: back to memory, gray repeated as _stack does
    rng = np.random.default_rng(0)
    parts = [rng.random((n, c, 6, 6)).astype(np.float16) for n, c in ((3, 1), (4, 1), (2, 3), (1, 1))]
    stack = segdata.SliceStack()
    for p in parts:
        stack.add(p)
    out = stack.finish()
    np.testing.assert_array_equal(out, np.concatenate([np.repeat(p, 3 // p.shape[1], axis=1) for p in parts]))


def test_orient_stored_cases_take_the_stored_axes_for_shape_and_spacing(tmp_path):
    from radprobe.segmentation.data import nifti_spacing

    # stored axes i, j, k with voxel sizes 0.7, 2.0, 1.3 mm, permuted against RAS (i -> -y, j -> z, k -> x)
    affine = np.array([[0, 0, 1.3, 0], [-0.7, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 1.0]])
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(3):
        lab = (rng.random((6, 8, 4)) > 0.7).astype(np.uint8)
        img = nib.Nifti1Image(lab.astype(np.int16) * 50, affine)
        nib.save(img, tmp_path / "images" / f"p{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(lab, affine), tmp_path / "masks" / f"p{i}.nii.gz")
    path = str(tmp_path / "images" / "p0_0000.nii.gz")
    assert nifti_spacing(path, 2, "stored") == pytest.approx((1.3, 0.7, 2.0))  # moveaxis only
    assert nifti_spacing(path, 0, "stored") == pytest.approx((0.7, 2.0, 1.3))
    assert nifti_spacing(path, 2) == pytest.approx((2.0, 0.7, 1.3))  # canonical: (z, then y, x in-plane)
    ds = load_dataset(f"nifti:{tmp_path}?orient=stored&classes=background,fg")
    split = load_split(ds, "train", 8, keep_masks=True)
    for case, mask in zip(split.cases, split.masks, strict=True):
        released = nib.load(case.record.mask.path).get_fdata().transpose(2, 0, 1)
        assert case.shape == released.shape == (4, 6, 8)
        assert case.spacing == pytest.approx((1.3, 0.7, 2.0))
        np.testing.assert_array_equal(mask, released)


def test_predictions_of_a_stored_orientation_dataset_save_on_the_source_grid(tmp_path, volumes):
    # orient=stored (the paper presets of BTCV, AMOS, MSD Heart) reads the stored array: a saved
    # prediction equal to the mask must be the mask file, voxel for voxel, under its own affine
    root = volumes(n=3, shape=(20, 20, 12))
    ds = load_dataset(f"nifti:{root}?orient=stored")
    split = load_split(ds, "train", 20)
    for case, mask in zip(split.cases, split.masks, strict=True):
        path = save_prediction(tmp_path / "pred", case, mask, ds.read.orient)
        saved, src = nib.load(path), nib.load(case.record.mask.path)
        np.testing.assert_allclose(saved.affine, src.affine)
        np.testing.assert_array_equal(np.asarray(saved.dataobj), np.asarray(src.dataobj))
