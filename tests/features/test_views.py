"""Augmented training views: seeded crops and flips, extracted and cached like any features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tests.cli.cli_exe import run_radprobe, stderr_lines

from radprobe.backbones import create_backbone
from radprobe.data import load_dataset
from radprobe.features.cache import FeatureCache, FeatureSpec
from radprobe.features.extract import extract_split
from radprobe.features.views import AugmentView, view_family


def test_a_view_is_a_seeded_random_resized_crop_box_and_flip_per_sample():
    view = AugmentView(index=0)
    boxes = [view.params(200, 300, f"s{i}") for i in range(400)]
    assert view.params(200, 300, "s7") == boxes[7]  # the same image gets the same view every time
    assert AugmentView(index=1).params(200, 300, "s7") != boxes[7]  # another view, another draw
    areas = np.array([h * w / (200 * 300) for _, _, h, w, _ in boxes])
    ratios = np.array([w / h for _, _, h, w, _ in boxes])
    assert areas.min() >= 0.75 - 0.01 and areas.max() <= 1.0
    # torchvision's ratio range, apart from its centre-crop fallback after ten tries
    assert np.mean((ratios >= 3 / 4 - 0.02) & (ratios <= 4 / 3 + 0.02)) > 0.95
    assert all(t >= 0 and left >= 0 and t + h <= 200 and left + w <= 300 for t, left, h, w, _ in boxes)
    flips = np.mean([f for *_, f in boxes])
    assert 0.4 < flips < 0.6


def test_a_view_crops_then_mirrors_the_image():
    img = np.arange(60 * 80, dtype=np.float32).reshape(60, 80) / 4800
    view = next(v for v in view_family(20) if v.params(60, 80, "a")[4])  # one that flips "a"
    t, left, h, w, _ = view.params(60, 80, "a")
    np.testing.assert_array_equal(view(img, "a"), img[t : t + h, left : left + w][:, ::-1])
    rgb = np.stack([img, img * 0.5, img * 0.25], axis=-1)
    assert view(rgb, "a").shape == (h, w, 3)


def test_view_entries_hold_the_features_of_the_cropped_images_and_leave_other_keys_alone(tmp_path):
    assert "view" not in FeatureSpec().to_dict()  # keys of entries without views are unchanged
    ds = load_dataset("synthetic:cls2d-multiclass")
    bb = create_backbone("test:vit-tiny")
    cache = FeatureCache(tmp_path)
    spec = FeatureSpec(n_blocks=2)
    plain, _ = extract_split(bb, ds, "val", cache, spec)
    v = AugmentView(index=3)
    viewed, _ = extract_split(bb, ds, "val", cache, FeatureSpec(n_blocks=2, view=v))
    assert viewed.key != plain.key and viewed.sample_ids == plain.sample_ids
    assert json.loads((viewed.path / "manifest.json").read_text())["meta"]["spec"]["view"]["index"] == 3
    recs = ds.split("val")[:4]
    x = torch.stack([bb.preprocess(v(ds.load_image(r), r.sample_id)) for r in recs])
    with torch.inference_mode():
        ref = bb.eval()(x, n_blocks=2)
    np.testing.assert_allclose(np.asarray(viewed.cls)[:4], ref.cls.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(viewed.blocks)[:4], ref.blocks.numpy(), atol=1e-5)
    assert not np.allclose(np.asarray(viewed.cls)[:4], np.asarray(plain.cls)[:4], atol=1e-3)


def test_paper_linear_trains_on_cached_views_through_the_cli(tmp_path, monkeypatch):
    # the preset's own count (10) is checked in test_linear.py and by the paper study's plan; three
    # views keep this run short
    monkeypatch.setenv("RADPROBE_CACHE", str(tmp_path / "cache"))
    args = ["eval", "-b", "test:vit-tiny", "-d", "synthetic:cls2d-binary", "-p", "linear", "--json"]
    args += ["--set", "linear.preset=paper", "--set", "linear.epochs=3", "--set", "linear.train_views=3"]
    res = run_radprobe([*args, "--bootstrap", "10", "-o", str(tmp_path / "run")], tmp_path)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["rows"]
    assert {r["hparams"]["train_views"] for r in rows} == {3}
    specs = [
        json.loads(p.read_text())["meta"]["spec"]
        for p in (tmp_path / "cache" / "features").rglob("manifest.json")
    ]
    views = sorted(s["view"]["index"] for s in specs if "view" in s)
    assert views == [0, 0, 1, 1, 2, 2]  # train and val, three views each; test is never augmented


def test_views_on_a_3d_dataset_are_one_line_before_any_extraction(tmp_path, monkeypatch):
    monkeypatch.setenv("RADPROBE_CACHE", str(tmp_path / "cache"))
    args = ["eval", "-b", "test:vit-tiny", "-d", "synthetic:cls3d", "-p", "linear"]
    res = run_radprobe([*args, "--set", "linear.train_views=2", "-o", str(tmp_path / "run")], tmp_path)
    assert res.returncode == 2
    lines = stderr_lines(res)
    assert len(lines) == 1 and "linear.train_views=2: augmented views are drawn on 2D images" in lines[0]
    assert not list((tmp_path / "cache").rglob("*.npy"))


@pytest.mark.parametrize("n", [-1, 1.5])
def test_a_bad_view_count_is_refused(tmp_path, n):
    args = ["eval", "-b", "test:vit-tiny", "-d", "synthetic:cls2d-binary", "-p", "linear"]
    res = run_radprobe([*args, "--set", f"linear.train_views={n}", "-o", str(tmp_path / "run")], tmp_path)
    assert res.returncode == 2 and len(stderr_lines(res)) == 1
    assert f"linear.train_views={n}" in res.stderr


def test_paper_knn_reads_centre_cropped_features_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("RADPROBE_CACHE", str(tmp_path / "cache"))
    args = ["eval", "-b", "test:vit-tiny", "-d", "synthetic:cls2d-multilabel", "-p", "knn", "--json"]
    res = run_radprobe(
        [*args, "--set", "knn.preset=paper", "--bootstrap", "30", "-o", str(tmp_path / "a")], tmp_path
    )
    assert res.returncode == 0, res.stderr
    paper = json.loads(res.stdout)["rows"]
    assert {r["hparams"]["eval_view"] for r in paper} == {"resize to 256/224 of the input size, centre crop"}
    assert {r["ci_method"] for r in paper} == {"patient bootstrap, 30 resamples"}  # --bootstrap reaches them
    # the rows read the centre-cropped entries, extracted under crop_from beside the plain ones
    crop = {
        p.parent.name: json.loads(p.read_text())["meta"]["preprocess"].get("crop_from")
        for p in (tmp_path / "cache" / "features").rglob("manifest.json")
    }
    assert set(crop.values()) == {None, round(64 * 256 / 224)}  # test:vit-tiny runs at 64 px
    assert {crop[k] for k in paper[0]["feature_keys"]} == {round(64 * 256 / 224)}
