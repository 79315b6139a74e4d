"""Training images read from the decoded-image cache are the ones decoding gives, augmented or not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from radprobe.backbones import create_backbone
from radprobe.data import load_dataset
from radprobe.features.image_source import decoded_split
from radprobe.features.images import ImageCache
from radprobe.finetune.data import Augment, ImageSet


@pytest.mark.parametrize(("size", "storage"), [(32, "uint8"), (40, "float32")])
def test_decoded_rows_equal_decoding(tmp_path, size, storage):
    rng = np.random.default_rng(0)
    for i in range(6):
        d = tmp_path / "data" / "train" / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(d / f"p{i}.png")
    ds = load_dataset(f"folder:{tmp_path / 'data'}")
    pre = create_backbone("test:vit-tiny", pretrained=False, resolution=32).preprocess
    entry = decoded_split(ImageCache(tmp_path / "images"), ds, "train", pre)
    assert entry is not None and entry.meta["storage"] == storage
    recs = ds.split("train")
    for augment in (None, Augment(hflip=True)):
        plain = ImageSet(ds, recs, pre, augment, seed=3)
        cached = ImageSet(ds, recs, pre, augment, seed=3, decoded=entry)
        for i in range(len(recs)):
            assert torch.equal(plain[i][0], cached[i][0]), (augment, i)
