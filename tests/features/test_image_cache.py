"""The decoded-image cache: features equal the per-image path's, one decode per geometry, exact
storage, corrupt entries rebuilt, a full disk refused up front, and no way out of it lost."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from radprobe.backbones import create_backbone
from radprobe.data import load_dataset
from radprobe.errors import RadprobeError
from radprobe.features.cache import FeatureCache, FeatureSpec
from radprobe.features.extract import extract_split
from radprobe.features.images import PIXELS, ImageCache, image_key

SPEC = FeatureSpec(n_blocks=2)


def _pngs(
    root: Path,
    n: int = 10,
    size: int = 64,
    bits: int = 8,
    rgb_every: int = 0,
    splits: tuple[str, ...] = ("train",),
) -> str:
    """``n`` smooth images per split of a folder dataset (``rgb_every``: every k-th one in colour)."""
    rng = np.random.default_rng(size + bits)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n * len(splits)):
        d = root / splits[i // n] / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        a, b = rng.uniform(0.5, 4, 2)
        x = 0.5 + 0.5 * np.sin(a * xx * 6 + b * yy * 4 + i)
        if bits == 16:
            img = Image.fromarray((x * 65535).astype(np.uint16))
        elif rgb_every and i % rgb_every == rgb_every - 1:
            img = Image.fromarray((np.stack([x, x[::-1], x.T], -1) * 255).astype(np.uint8))
        else:
            img = Image.fromarray((x * 255).astype(np.uint8))
        img.save(d / f"p{i:03d}.png")
    return f"folder:{root}"


def _vit(**pre: Any) -> Any:
    bb = create_backbone("test:vit-tiny", pretrained=False)
    if pre:
        bb.preprocess = dataclasses.replace(bb.preprocess, **pre)
    return bb.eval()


def _three_ways(tmp: Path, bb: Any, ds: Any, **kw: Any) -> tuple[dict, dict, dict, list]:
    """Features without the image cache, building its entry, and reading it back."""
    old, _ = extract_split(bb, ds, "train", FeatureCache(tmp / "f0"), SPEC, batch_size=4, **kw)
    images = ImageCache(tmp / "images")
    built, s1 = extract_split(
        bb, ds, "train", FeatureCache(tmp / "f1"), SPEC, batch_size=4, images=images, **kw
    )
    hit, s2 = extract_split(
        bb, ds, "train", FeatureCache(tmp / "f2"), SPEC, batch_size=4, images=images, **kw
    )
    assert old.key == built.key == hit.key  # the feature key does not know how pixels arrived
    return old.arrays, built.arrays, hit.arrays, [s1.extra, s2.extra]


def _close(a: dict, b: dict) -> None:
    for k, v in a.items():
        if np.asarray(v).dtype.kind == "f":
            np.testing.assert_allclose(np.asarray(b[k]), np.asarray(v), rtol=0, atol=1e-5, err_msg=k)


@pytest.mark.parametrize(
    ("size", "bits", "pre", "storage"),
    [
        (64, 8, {}, "uint8"),  # 8-bit at the backbone's size: no resize, integers hold it exactly
        (48, 8, {}, "float32"),  # resized: values between the 8-bit steps
        (64, 16, {}, "uint16"),  # 16-bit PNG: uint8 would drop its low bits
        (64, 8, {"minmax": True}, "float32"),  # per-image stretch
        (64, 8, {"crop_from": 72}, "float32"),  # resize, then centre crop (the paper's kNN)
    ],
)
def test_features_equal_the_per_image_path(tmp_path, size, bits, pre, storage):
    ds = load_dataset(_pngs(tmp_path / "data", size=size, bits=bits))
    old, built, hit, (s1, s2) = _three_ways(tmp_path, _vit(**pre), ds)
    _close(old, built)
    _close(old, hit)
    assert (s1["data_path"], s2["data_path"]) == ("image-cache-build", "image-cache-hit")
    assert s1["decoded_images"] == len(ds.split("train")) and s2["decoded_images"] == 0
    assert s1["image_storage"] == s2["image_storage"] == storage
    assert {"decode_s", "forward_s"} <= set(s2)


def test_colour_and_grayscale_mixed_stay_exact(tmp_path):
    ds = load_dataset(_pngs(tmp_path / "data", n=8, rgb_every=4))  # batches of 4: one colour image each
    old, built, hit, _ = _three_ways(tmp_path, _vit(), ds)
    _close(old, built)
    _close(old, hit)


def test_volumes_per_slice_and_averaged_equal_the_per_image_path(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        d = tmp_path / "data" / "train" / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        vol = rng.integers(0, 255, (20, 24, 3 + i)).astype(np.int16)  # slices along the last axis
        nib.save(nib.Nifti1Image(vol, np.eye(4)), d / f"v{i}.nii.gz")
    ds = load_dataset(f"nifti:{tmp_path / 'data'}")
    bb = _vit()
    for per_slice in (True, False):
        old, built, hit, (_, s2) = _three_ways(tmp_path / str(per_slice), bb, ds, per_slice=per_slice)
        _close(old, built)
        _close(old, hit)
        assert s2["data_path"] == "image-cache-hit"


def test_backbones_of_one_geometry_share_one_entry(tmp_path):
    ds = load_dataset(_pngs(tmp_path / "data", size=48))
    images = ImageCache(tmp_path / "images")
    a = _vit()
    b = _vit(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))  # CLIP-like: other normalisation, same pixels
    cnn = create_backbone("test:cnn-tiny", pretrained=False).eval()  # no patch size, same pixels
    c = _vit(resolution=32)
    decoded = []
    for bb in (a, b, cnn, c):
        _, st = extract_split(bb, ds, "train", FeatureCache(tmp_path / "f"), SPEC, images=images)
        decoded.append(st.extra["decoded_images"])
    n = len(ds.split("train"))
    assert decoded == [n, 0, 0, n]
    assert len(images.entries()) == 2
    assert image_key(ds, "train", a.preprocess) == image_key(ds, "train", b.preprocess)


def _corrupt(entry: Path, how: str) -> None:
    p = entry / f"{PIXELS}.npy"
    data = bytearray(p.read_bytes())
    if how == "flip":
        data[-3] ^= 0xFF
        p.write_bytes(bytes(data))
    else:
        p.write_bytes(bytes(data[: len(data) // 2]))


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_corrupt_entry_is_rebuilt_with_one_warning(tmp_path, how):
    ds = load_dataset(_pngs(tmp_path / "data", size=48))
    bb = _vit()
    first, _ = extract_split(
        bb, ds, "train", FeatureCache(tmp_path / "f1"), SPEC, images=ImageCache(tmp_path / "i")
    )
    import radprobe.features.images as images_mod

    images_mod._VERIFIED.clear()  # as in a new process: the first open checks every byte
    images = ImageCache(tmp_path / "i")
    (entry,) = [e.path for e in images.entries()]
    _corrupt(entry, how)
    again, st = extract_split(bb, ds, "train", FeatureCache(tmp_path / "f2"), SPEC, images=images)
    problems = images.take_problems()
    assert len(problems) == 1 and str(entry) in problems[0] and "rebuilding" in problems[0]
    assert st.extra["data_path"] == "image-cache-build"
    _close(first.arrays, again.arrays)
    assert images.open(entry.name) is not None


@pytest.mark.parametrize("where", ["free space", "reserving blocks"])
def test_a_disk_too_small_is_refused_before_anything_is_written(tmp_path, monkeypatch, where):
    import errno
    import shutil

    import radprobe.features.images as images_mod

    ds = load_dataset(_pngs(tmp_path / "data", size=48))
    if where == "free space":
        real = shutil.disk_usage
        monkeypatch.setattr(images_mod.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    else:  # the check passed, then the disk filled before the entry's blocks were claimed

        def full(fd: int, offset: int, length: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(images_mod.os, "posix_fallocate", full)
    feats, images = FeatureCache(tmp_path / "f"), ImageCache(tmp_path / "i")
    with pytest.raises(RadprobeError) as e:
        extract_split(_vit(), ds, "train", feats, SPEC, images=images)
    msg = str(e.value)
    assert "\n" not in msg and "GiB" in msg and "RADPROBE_CACHE" in msg and "--no-image-cache" in msg
    leftovers = [
        p for root in (feats.root, images.root) for p in root.iterdir() if not p.name.endswith(".lock")
    ]
    assert leftovers == []


def test_eval_config_and_environment_turn_the_cache_off(tmp_path, monkeypatch):
    from radprobe.run.config import EvalConfig
    from radprobe.run.frozen import extract_all

    spec = _pngs(tmp_path / "data", n=4, size=32, splits=("train", "val", "test"))
    ds = load_dataset(spec)
    bb = _vit(resolution=32)

    def run(name: str, **kw: Any) -> Path:
        cfg = EvalConfig(
            backbone="test:vit-tiny", dataset=spec, protocols=[], out=tmp_path / "o",
            progress=False, cache_root=tmp_path / name, **kw,
        )  # fmt: skip
        _, stats = extract_all(cfg, bb, ds, SPEC, "cpu")
        assert {s.extra["data_path"] for s in stats.values()} == (
            {"image-cache-build"} if (tmp_path / name / "images").exists() else {"decode"}
        )
        return tmp_path / name / "images"

    assert len(ImageCache(run("on")).entries()) == 3
    assert not run("off", image_cache=False).exists()
    monkeypatch.setenv("RADPROBE_IMAGE_CACHE", "0")
    assert not run("env").exists()


def test_cache_list_and_prune_cover_decoded_images(tmp_path, monkeypatch, capsys):
    from radprobe.cli import main

    monkeypatch.setenv("RADPROBE_CACHE", str(tmp_path / "cache"))
    ds = load_dataset(_pngs(tmp_path / "data", size=48))
    images = ImageCache(tmp_path / "cache" / "images")
    extract_split(_vit(), ds, "train", FeatureCache(tmp_path / "cache" / "features"), SPEC, images=images)
    assert main(["cache", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["entries"]
    assert sorted(e["backbone"] for e in listed) == ["(images)", "test:vit-tiny"]
    assert [e["weights"] for e in listed if e["backbone"] == "(images)"] == ["64px float32"]
    assert main(["cache", "prune", "--backbone", "(images)", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["removed"]) == 1
    assert images.entries() == [] and len(FeatureCache(tmp_path / "cache" / "features").entries()) == 1


KILLED_WRITER = """
import sys, time
from pathlib import Path
from radprobe.backbones import create_backbone
from radprobe.data import load_dataset
from radprobe.features import image_source
from radprobe.features.cache import FeatureCache, FeatureSpec
from radprobe.features.extract import extract_split
from radprobe.features.images import ImageCache

tmp = Path(sys.argv[1])
store = image_source.CachedSource._store

def store_then_hang(self, row, rows, i):
    out = store(self, row, rows, i)
    if row > 0:  # some rows written, the entry not committed
        (tmp / "mid-write").touch()
        time.sleep(600)
    return out

image_source.CachedSource._store = store_then_hang
bb = create_backbone("test:vit-tiny", pretrained=False).eval()
extract_split(bb, load_dataset(sys.argv[2]), "train", FeatureCache(tmp / "f"), FeatureSpec(n_blocks=2),
              batch_size=2, images=ImageCache(tmp / "i"))
"""


def test_an_entry_killed_mid_write_is_never_read_and_is_rebuilt(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    spec = _pngs(tmp_path / "data", size=48)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path), spec], env=env)
    deadline = time.time() + 120
    while not (tmp_path / "mid-write").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "mid-write").exists(), "the writer never reached the middle of its entry"
    images = ImageCache(tmp_path / "i")
    ds = load_dataset(spec)
    key = image_key(ds, "train", _vit().preprocess)
    assert [p.name.startswith(f".{key}.") for p in images.root.glob("*.tmp")] == [True]  # the half entry
    assert images.entries() == [] and images.open(key) is None
    old, _ = extract_split(_vit(), ds, "train", FeatureCache(tmp_path / "old"), SPEC, batch_size=2)
    new, st = extract_split(
        _vit(), ds, "train", FeatureCache(tmp_path / "f"), SPEC, batch_size=2, images=images
    )
    assert st.extra["data_path"] == "image-cache-build"
    _close(old.arrays, new.arrays)
    assert list(images.root.glob("*.tmp")) == [] and images.open(key) is not None
