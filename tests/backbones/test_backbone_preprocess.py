"""Preprocessing that travels with each backbone: channels, size, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radprobe.backbones import Preprocess, create_backbone
from radprobe.backbones.base import CLIP_MEAN, CLIP_STD


def _unnormalise(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    return x * torch.tensor(pre.std).view(3, 1, 1) + torch.tensor(pre.mean).view(3, 1, 1)


@pytest.mark.parametrize("shape", [(50, 70), (50, 70, 1)])
def test_grayscale_becomes_three_identical_channels_at_the_backbone_resolution(shape):
    bb = create_backbone("test:vit-tiny")
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    x = bb.preprocess(image)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    raw = _unnormalise(x, bb.preprocess)
    torch.testing.assert_close(raw[0], raw[1])
    torch.testing.assert_close(raw[0], raw[2])


def test_rgba_drops_alpha_and_stats_are_applied():
    pre = Preprocess(mean=CLIP_MEAN, std=CLIP_STD, resolution=32, patch_size=16)
    image = np.full((32, 32, 4), 0.5, dtype=np.float32)
    image[..., 3] = 0.0
    x = pre(image)
    expected = (0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(x[:, 0, 0], expected)


def test_resolution_must_be_a_multiple_of_the_patch():
    with pytest.raises(ValueError, match="multiple of patch size 14"):
        Preprocess(resolution=225, patch_size=14)


def test_preprocessed_image_feeds_the_backbone_end_to_end():
    for name in ("test:vit-tiny-reg", "test:cnn-tiny"):
        bb = create_backbone(name, resolution=80)
        image = np.random.default_rng(1).random((120, 90), dtype=np.float32)
        with torch.inference_mode():
            out = bb(bb.preprocess(image)[None], grid_layers=(-1,))
        assert out.cls.shape == (1, bb.info.embed_dim) and torch.isfinite(out.cls).all()


def test_preprocess_is_serialisable_for_cache_keys():
    d = create_backbone("test:vit-tiny").preprocess.to_dict()
    assert d == {
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "resolution": 64,
        "patch_size": 8,
        "interpolation": "bicubic",
    }


@pytest.mark.parametrize("shape", [(224, 224), (300, 180), (40, 40)])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_grayscale_equals_its_three_channel_copy(shape, interpolation):
    # grayscale is resized as one channel and broadcast at normalisation: bit-identical to
    # resizing the same image repeated to RGB
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    p = Preprocess(resolution=224, interpolation=interpolation)
    gray, rgb = p(img), p(np.repeat(img[..., None], 3, axis=2))
    assert gray.shape == (3, 224, 224) and gray.is_contiguous()
    assert torch.equal(gray, rgb)
