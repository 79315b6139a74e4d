"""The released segmentation augmentation through the frozen backbone (``augment="images"``) and the
released stream sampler of the paper preset: checked against torchvision and against extraction."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from radprobe.backbones import create_backbone
from radprobe.core.sampling import stream_order
from radprobe.data import load_dataset
from radprobe.errors import OptionError
from radprobe.features.cache import FeatureCache, FeatureSpec
from radprobe.features.extract import extract_split, volume_depths
from radprobe.features.image_source import decoded_split
from radprobe.features.images import PIXELS, ImageCache
from radprobe.protocols import registry
from radprobe.run.evaluate import EvalConfig, evaluate
from radprobe.segmentation import fused, online
from radprobe.segmentation.online import OnlineGrids, Pixels


@pytest.mark.parametrize("size", [64, 65])
def test_turn_is_torchvision_vflip_then_rotate_on_image_and_mask(size: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, size, size, generator=g)
    y = torch.randint(0, 4, (6, size, size), generator=g)
    flip = np.array([False, True, False, True, True, False])
    degrees = np.array([0.0, 90.0, -37.5, 12.25, -90.0, 63.0])
    xs, ys = online.turn(x, y, flip, degrees)
    for i in range(6):
        ref_x, ref_y = (TF.vflip(x[i]), TF.vflip(y[i])) if flip[i] else (x[i], y[i])
        ref_x = TF.rotate(ref_x, float(degrees[i]), InterpolationMode.NEAREST, fill=0)
        ref_y = TF.rotate(ref_y[None].float(), float(degrees[i]), InterpolationMode.NEAREST, fill=0)[0]
        assert torch.equal(xs[i], ref_x), i
        assert torch.equal(ys[i], ref_y.long()), i
    assert ys.dtype == y.dtype and not torch.equal(xs[2], x[2])


def test_draws_follow_the_released_transforms_and_repeat_per_seed_pass_and_row() -> None:
    assert online.draw(0, 3, "a") == online.draw(0, 3, "a")
    assert online.draw(0, 3, "a") != online.draw(0, 4, "a") != online.draw(1, 4, "a")
    draws = [online.draw(0, p, f"row{i}") for p in range(4) for i in range(1000)]
    flips = np.array([d[0] for d in draws])
    angles = np.array([d[1] for d in draws])
    # two independent vertical flips at p = 0.25: the image ends up mirrored with p = 3/8
    assert abs(flips.mean() - 0.375) < 0.02
    assert angles.min() >= -90 and angles.max() <= 90
    assert abs(angles.mean()) < 3 and abs(angles.std() - 180 / math.sqrt(12)) < 2


def test_stream_batches_are_full_and_see_each_row_once_per_pass() -> None:
    rows = np.arange(100, 110)  # the training rows of a few-shot draw, say
    s = fused.FusedSettings((0.1,), epochs=3, min_steps=0, batch_size=4, seed=5, sampler="stream")
    got = list(fused.batches(rows, 4, 3 * 3, s, np.random.default_rng(0)))
    assert [len(b) for b, _ in got] == [4] * 9  # ceil(10 / 4) full batches an epoch, as released
    flat_rows = np.concatenate([b for b, _ in got])
    flat_pass = np.concatenate([p for _, p in got])
    want = np.concatenate([stream_order(10, 4, e, 5) for e in range(3)])
    assert np.array_equal(flat_rows, rows[want % 10]) and np.array_equal(flat_pass, want // 10)
    for p in np.unique(flat_pass):
        seen = flat_rows[flat_pass == p]
        assert len(seen) == len(set(seen.tolist()))  # a row's draw is fresh on each pass
    epochs = list(fused.batches(rows, 4, 3 * 3, replace(s, sampler="epoch"), np.random.default_rng(0)))
    assert [len(b) for b, _ in epochs] == [4, 4, 2] * 3


def test_online_grids_without_a_turn_are_the_extracted_grids(easy2d, tmp_path: Path, monkeypatch) -> None:
    ds = load_dataset(f"folder:{easy2d(n=8)}")
    bb = create_backbone("test:vit-tiny", pretrained=False)
    bb = bb.with_preprocess(replace(bb.preprocess, minmax=True))  # min-max comes after the turn
    layer = bb.info.num_blocks - 1
    spec = FeatureSpec(n_blocks=1, grid_layers=(layer,), dtype="float16")
    fs, _ = extract_split(bb, ds, "train", FeatureCache(tmp_path / "f"), spec, num_workers=0)
    entry = decoded_split(ImageCache(tmp_path / "i"), ds, "train", replace(bb.preprocess, minmax=False))
    assert entry is not None and entry.sample_ids == fs.sample_ids
    px = Pixels(entry.arrays[PIXELS], str(entry.meta["storage"]), entry.sample_ids)
    n, size = len(fs), bb.preprocess.resolution
    targets = np.arange(n * size * size, dtype=np.int64).reshape(n, size, size) % 3
    grids = OnlineGrids(bb, [layer], [px], seed=0, device="cpu")
    rows = np.array([n - 1, 0, 1])
    monkeypatch.setattr(online, "draw", lambda *a: (False, 0.0))
    x, y = grids(rows, np.zeros(3, dtype=np.int64), targets)
    want = np.asarray(fs.grid(layer)[rows], dtype=np.float32)
    assert np.allclose(x[layer].numpy(), want, atol=2e-3) and torch.equal(y, torch.from_numpy(targets[rows]))
    monkeypatch.setattr(online, "draw", lambda *a: (True, 30.0))
    x2, y2 = grids(rows, np.zeros(3, dtype=np.int64), targets)
    assert not np.allclose(x2[layer].numpy(), want, atol=1e-1) and not torch.equal(y2, y)
    assert grids.forwards == 6


def test_paper_preset_trains_on_augmented_images_through_the_backbone(easy2d, tmp_path: Path) -> None:
    n_cases = 12
    cfg = EvalConfig(
        backbone="test:vit-tiny",
        dataset=f"folder:{easy2d(n=n_cases)}",
        protocols=["seg-linear"],
        out=tmp_path / "run",
        n_boot=0,
        progress=False,
        image_cache=False,  # the resized images then live in a temporary entry for the run
        options={"seg-linear": {"preset": "paper", "epochs": 2, "batch_size": 4, "overlays": 0}},
    )
    row = next(r for r in evaluate(cfg).rows if r["metric"] == "dice_macro")
    hp, sel = row["hparams"], row["selected"]
    assert hp["augmentation"] == online.DESCRIPTION and hp["sampler"] == "stream"
    n = row["n_train"]
    # the sweep's 7 heads share each batch: 2 epochs of ceil(n / 4) full batches of 4 through the backbone
    assert sel["augmented_forwards"] == 2 * math.ceil(n / 4) * 4 and sel["sweep"] == "fused"
    assert sel["refit"]["rows"] == n + row["n_val"] and 0 <= row["value"] <= 1


def test_paper_preset_on_volumes_turns_each_slice(volumes, tmp_path: Path) -> None:
    cfg = EvalConfig(
        backbone="test:vit-tiny",
        dataset=f"folder:{volumes(n=6)}",
        protocols=["seg-linear"],
        out=tmp_path / "run",
        n_boot=0,
        progress=False,
        options={
            "seg-linear": {"preset": "paper", "epochs": 1, "lrs": [0.01], "refit": False, "overlays": 0}
        },
    )
    row = next(r for r in evaluate(cfg).rows if r["metric"] == "dice_macro")
    assert row["hparams"]["augmentation"] == online.DESCRIPTION
    assert row["selected"]["augmented_forwards"] > row["n_train"]  # slices, not volumes


def test_augment_and_sampler_are_checked_in_one_line() -> None:
    o = registry.check_options("seg-linear", {"preset": "paper"})
    assert o["augment"] == "images" and o["sampler"] == "stream"
    o = registry.check_options("seg-updecoder", {"preset": "paper", "augment": "grids", "sampler": "epoch"})
    assert o["augment"] == "grids" and o["sampler"] == "epoch"
    for bad, match in (
        ({"augment": "images"}, "takes effect with preset=paper"),
        ({"sampler": "stream"}, "takes effect with preset=paper"),
        ({"preset": "paper", "augment": "flip"}, "expected 'images' or 'grids' or 'none'"),
        ({"preset": "paper", "sampler": "random"}, "expected 'stream' or 'epoch'"),
    ):
        with pytest.raises(OptionError, match=match) as e:
            registry.check_options("seg-linear", bad)
        assert "\n" not in str(e.value)


def test_online_grids_of_volume_slices_without_a_turn_are_the_extracted_slice_grids(
    volumes, tmp_path: Path, monkeypatch
) -> None:
    # slices of volumes: the pixels entry holds one row per slice, in the order of the per-slice cache
    ds = load_dataset(f"folder:{volumes(n=4)}")
    bb = create_backbone("test:vit-tiny", pretrained=False)
    layer = bb.info.num_blocks - 1
    spec = FeatureSpec(n_blocks=1, grid_layers=(layer,), dtype="float16")
    fs, _ = extract_split(bb, ds, "train", FeatureCache(tmp_path / "f"), spec, num_workers=0, per_slice=True)
    depths = volume_depths(ds, ds.split("train"))
    entry = decoded_split(
        ImageCache(tmp_path / "i"), ds, "train", replace(bb.preprocess, minmax=False), 0, depths
    )
    assert entry is not None and entry.sample_ids == fs.sample_ids and len(entry) == sum(depths)
    px = Pixels(entry.arrays[PIXELS], str(entry.meta["storage"]), entry.sample_ids)
    size = bb.preprocess.resolution
    targets = np.zeros((len(fs), size, size), dtype=np.uint8)
    grids = OnlineGrids(bb, [layer], [px], seed=0, device="cpu")
    rows = np.array([len(fs) - 1, 0, depths[0]])  # the last slice, the first, the second volume's first
    monkeypatch.setattr(online, "draw", lambda *a: (False, 0.0))
    x, _ = grids(rows, np.zeros(3, dtype=np.int64), targets)
    want = np.asarray(fs.grid(layer)[rows], dtype=np.float32)
    assert np.allclose(x[layer].numpy(), want, atol=2e-3)
