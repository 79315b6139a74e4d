"""Entries of one feature family lend rows: an image is run through a backbone once per family."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from radprobe.backbones import create_backbone
from radprobe.data import load_dataset
from radprobe.data.synthetic import make_synthetic
from radprobe.features.cache import FeatureCache, FeatureSpec
from radprobe.features.extract import ROW_KEYS, extract_split, feature_family, forward_rate

SPEC = FeatureSpec(n_blocks=2, grid_layers=(-1,))


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("test:vit-tiny")


@pytest.fixture(scope="module")
def cls2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cls2d")
    make_synthetic("cls2d-binary", root)
    return root


def _rows_of(st) -> dict:
    """The row accounting of an extraction (its other stats say how pixels arrived and how long it took)."""
    return {k: st.extra[k] for k in ("forward_images", "reused_rows")}


def _ids(ds, split: str) -> set[str]:
    return {r.sample_id for r in ds.split(split)}


def _assert_same_entry(fs, ref) -> None:
    assert fs.sample_ids == ref.sample_ids and fs.arrays.keys() == ref.arrays.keys()
    for name, a in ref.arrays.items():
        if a.dtype.kind == "S":
            assert np.array_equal(fs.arrays[name], a), name
        else:
            np.testing.assert_allclose(fs.arrays[name], a, rtol=1e-5, atol=1e-5, err_msg=name)


def test_another_split_seed_borrows_the_images_already_extracted(tmp_path, backbone, cls2d):
    a, b = (load_dataset(f"folder:{cls2d}", split_seed=s) for s in (0, 1))
    shared = _ids(a, "train") & _ids(b, "train")
    assert 0 < len(shared) < len(b.split("train"))
    cache = FeatureCache(tmp_path / "cache")
    first, st = extract_split(backbone, a, "train", cache, SPEC)
    assert _rows_of(st) == {"forward_images": len(a.split("train")), "reused_rows": 0}
    fs, st = extract_split(backbone, b, "train", cache, SPEC)
    assert _rows_of(st) == {"forward_images": len(b.split("train")) - len(shared), "reused_rows": len(shared)}
    ref, _ = extract_split(backbone, b, "train", FeatureCache(tmp_path / "fresh"), SPEC)
    _assert_same_entry(fs, ref)
    # a shared image has the same identity, and so the same row, in both entries
    sid = sorted(shared)[0]
    i, j = first.sample_ids.index(sid), fs.sample_ids.index(sid)
    assert first.arrays[ROW_KEYS][i] == fs.arrays[ROW_KEYS][j] != b""
    np.testing.assert_array_equal(first.cls[i], fs.cls[j])

    # once every image of the dataset is in the family, other splits need no forward pass at all
    for split in ("val", "test"):
        extract_split(backbone, a, split, cache, SPEC)
    fs, st = extract_split(backbone, b, "test", cache, SPEC)
    assert _rows_of(st) == {"forward_images": 0, "reused_rows": len(b.split("test"))}
    _assert_same_entry(fs, extract_split(backbone, b, "test", FeatureCache(tmp_path / "fresh"), SPEC)[0])


def test_a_changed_image_file_is_extracted_again(tmp_path, backbone, cls2d):
    root = tmp_path / "data"
    shutil.copytree(cls2d, root)
    a, b = (load_dataset(f"folder:{root}", split_seed=s) for s in (0, 1))
    cache = FeatureCache(tmp_path / "cache")
    extract_split(backbone, a, "train", cache, SPEC)
    shared = sorted(_ids(a, "train") & _ids(b, "train"))
    changed = next(r for r in b.split("train") if r.sample_id == shared[0])
    donor = next(r for r in b.records if r.sample_id not in shared)
    Path(changed.image.path).write_bytes(Path(donor.image.path).read_bytes())  # new pixels, same path
    b = load_dataset(f"folder:{root}", split_seed=1)
    fs, st = extract_split(backbone, b, "train", cache, SPEC)
    assert st.extra["reused_rows"] == len(shared) - 1
    _assert_same_entry(fs, extract_split(backbone, b, "train", FeatureCache(tmp_path / "fresh"), SPEC)[0])


def test_other_specs_and_backbones_are_other_families(tmp_path, backbone, cls2d):
    a, b = (load_dataset(f"folder:{cls2d}", split_seed=s) for s in (0, 1))
    cache = FeatureCache(tmp_path / "cache")
    extract_split(backbone, a, "train", cache, SPEC)
    _, st = extract_split(backbone, b, "train", cache, FeatureSpec(n_blocks=1))
    assert st.extra["reused_rows"] == 0
    other = create_backbone("test:vit-tiny", resolution=96)
    assert feature_family(other, SPEC, per_slice=False) != feature_family(backbone, SPEC, per_slice=False)
    _, st = extract_split(other, b, "train", cache, SPEC)
    assert st.extra["reused_rows"] == 0


def test_per_slice_volumes_borrow_whole_volumes(tmp_path, backbone):
    root = tmp_path / "data"
    spec = make_synthetic("cls3d", root)
    a, b = (load_dataset(spec, split_seed=s) for s in (0, 1))
    cache = FeatureCache(tmp_path / "cache")
    extract_split(backbone, a, "train", cache, SPEC, per_slice=True)
    fs, st = extract_split(backbone, b, "train", cache, SPEC, per_slice=True)
    shared = _ids(a, "train") & _ids(b, "train")
    assert 0 < len(shared) < len(b.split("train"))
    lent = sum(1 for s in fs.sample_ids if s.split("#")[0] in shared)
    assert _rows_of(st) == {"forward_images": len(fs) - lent, "reused_rows": lent}
    ref, _ = extract_split(backbone, b, "train", FeatureCache(tmp_path / "fresh"), SPEC, per_slice=True)
    _assert_same_entry(fs, ref)


def test_family_markers_of_removed_entries_are_dropped(tmp_path, backbone, cls2d):
    a = load_dataset(f"folder:{cls2d}")
    cache = FeatureCache(tmp_path / "cache")
    fs, _ = extract_split(backbone, a, "val", cache, SPEC)
    family = fs.meta["family"]
    assert [e.key for e in cache.family(family)] == [fs.key]
    shutil.rmtree(fs.path)
    assert cache.family(family) == []
    assert not any((cache.root / ".families" / family).iterdir())


def test_forward_rate_counts_only_images_that_ran():
    stats = [
        {"extra": {"forward_images": 100}, "wall_time_s": 2.0},
        {"extra": {"forward_images": 0, "reused_rows": 40}, "wall_time_s": 0.1},  # all rows lent
        {"n_images": 50, "wall_time_s": 3.0},  # an entry written before the counts were kept
    ]
    assert forward_rate(stats) == pytest.approx(150 / 5.0)
    assert forward_rate([{"extra": {"forward_images": 0}, "wall_time_s": 0.2}]) == 0.0


def test_extract_cli_reports_lent_rows(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from radprobe.cli import app

    root = tmp_path / "data"
    make_synthetic("cls2d-multiclass", root)
    # a second label file over the same images (fewer rows, so other splits)
    lines = (root / "manifest.csv").read_text().splitlines()
    (root / "subset.csv").write_text("\n".join([lines[0], *lines[11:]]) + "\n")
    shutil.copy(root / "manifest.radprobe.yaml", root / "subset.radprobe.yaml")
    monkeypatch.setenv("RADPROBE_CACHE", str(tmp_path / "cache"))
    run = CliRunner().invoke
    base = ["extract", "--backbone", "test:vit-tiny", "--dataset"]
    first = run(app, [*base, f"csv:{root / 'manifest.csv'}"])
    assert first.exit_code == 0, first.output
    assert "rows lent" not in first.output
    res = run(app, [*base, f"csv:{root / 'subset.csv'}"])
    assert res.exit_code == 0, res.output
    assert res.output.count("rows lent by other cache entries") == 3  # every split


def test_reduced_precision_features_get_their_own_keys_and_family(backbone, cls2d):
    from radprobe.features.cache import cache_key
    from radprobe.features.extract import compute_precision, feature_key
    from radprobe.utils import digest

    ds = load_dataset(f"folder:{cls2d}")
    assert compute_precision("cpu") == "fp32"
    fp32 = feature_key(backbone, ds, "train", SPEC)
    bf16 = feature_key(backbone, ds, "train", SPEC, precision="bf16-autocast")
    assert fp32 != bf16
    # fp32 keys are the ones entries were always written under
    info = backbone.info
    layout = digest({k: list(v.shape) for k, v in backbone.state_dict().items()})
    old = cache_key(
        backbone={"name": info.name, "arch": info.arch, "weights": info.weights_digest, "layout": layout},
        preprocess=backbone.preprocess.to_dict(),
        manifest_digest=ds.manifest_digest(),
        split="train",
        split_digest=ds.split_digest("train"),
        spec=SPEC,
    )
    assert fp32 == old
    assert feature_family(backbone, SPEC, per_slice=False) != feature_family(
        backbone, SPEC, per_slice=False, precision="bf16-autocast"
    )
