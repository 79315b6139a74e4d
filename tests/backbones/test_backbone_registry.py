"""The zoo: names, listings, cached numbers, preprocessing that travels with each backbone."""

from __future__ import annotations

import pytest
import torch

from radprobe.backbones import (
    BuildOptions,
    backbone_stats,
    create_backbone,
    get_backbone_entry,
    list_backbones,
    registered_names,
)
from radprobe.backbones.base import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN
from radprobe.backbones.registry import STAT_KEYS
from radprobe.errors import RadprobeError

REQUIRED = [
    *[f"dinov2-{s}{r}" for s in "sblg" for r in ("", "-reg")],
    "dinov3-s",
    "dinov3-b",
    "dinov3-l",
    "mae-b",
    "mae-l",
    "mae-h",
    "clip-l",
    "openclip-h",
    "vit-l-in21k",
    "sam-l",
    "resnet152",
    "densenet201",
    "vgg19",
    "rad-dino",
    "msn-l",
    "biomedclip",
    "test:vit-tiny",
    "test:vit-tiny-reg",
    "test:cnn-tiny",
]
HF_NAMES = {"rad-dino", "msn-l"}


def _meta_build(name: str):
    entry = get_backbone_entry(name)
    with torch.device("meta"):
        return entry.builder(entry, BuildOptions(pretrained=False, meta=True))


def test_list_backbones_is_complete_and_builds_no_model(monkeypatch):
    from radprobe.backbones import registry

    backbone_stats.cache_clear()
    # listing reads the recorded stats: a model built (even on the meta device) would be a slow path
    monkeypatch.setattr(registry.torch, "device", lambda *a, **k: pytest.fail("list_backbones built a model"))
    rows = list_backbones()
    by_name = {r["name"]: r for r in rows}
    assert set(REQUIRED) <= set(by_name)
    keys = {
        "name",
        "family",
        "arch",
        "source",
        "params",
        "patch_size",
        "native_resolution",
        "embed_dim",
        "num_blocks",
        "description",
        "requires",
    }
    assert all(set(r) == keys for r in rows)
    assert 21e6 < by_name["dinov2-s"]["params"] < 23e6
    assert 1.0e9 < by_name["dinov2-g"]["params"] < 1.2e9
    assert 58e6 <= by_name["resnet152"]["params"] <= 60e6
    assert by_name["dinov2-s"]["patch_size"] == 14 and by_name["resnet152"]["patch_size"] is None
    assert (by_name["rad-dino"]["requires"], by_name["biomedclip"]["requires"]) == ("hf", "openclip")
    assert by_name["dinov2-s"]["requires"] is None
    assert by_name["dinov2-s-reg"]["source"] == "timm:vit_small_patch14_reg4_dinov2.lvd142m"


@pytest.mark.parametrize("name", [n for n in REQUIRED if n not in HF_NAMES] + ["sam-b", "sam-h", "resnet50"])
def test_cached_numbers_match_a_meta_build(name):
    info = _meta_build(name).info
    assert backbone_stats(name) == {k: getattr(info, k) for k in STAT_KEYS}


@pytest.mark.parametrize("name", sorted(HF_NAMES))
def test_cached_numbers_match_a_meta_build_hf(name):
    pytest.importorskip("transformers")
    test_cached_numbers_match_a_meta_build(name)


@pytest.mark.parametrize("name", ["test:vit-tiny", "test:vit-tiny-reg", "test:cnn-tiny", "dinov2-s"])
def test_cached_numbers_match_a_real_build(name):
    bb = create_backbone(name, pretrained=False)
    assert sum(p.numel() for p in bb.parameters()) == backbone_stats(name)["params"]
    assert backbone_stats(name) == {k: getattr(bb.info, k) for k in STAT_KEYS}


def test_timm_prefix_meta_stats_match_real_build():
    real = create_backbone("timm:resnet10t", pretrained=False).info
    assert backbone_stats("timm:resnet10t") == {k: getattr(real, k) for k in STAT_KEYS}


@pytest.mark.parametrize(
    ("name", "expected"),
    [("dinov2-xs", "dinov2-s"), ("radd-dino", "rad-dino"), ("test:vit-tiny-regs", "test:vit-tiny-reg")],
)
def test_unknown_names_suggest_close_matches(name, expected):
    with pytest.raises(RadprobeError) as err:
        get_backbone_entry(name)
    msg = str(err.value)
    assert name in msg and expected in msg and "\n" not in msg


def test_unknown_timm_models_and_tags():
    with pytest.raises(RadprobeError, match="timm:resnet18"):
        get_backbone_entry("timm:resnet18x")
    with pytest.raises(RadprobeError, match="no pretrained tag"):
        get_backbone_entry("timm:resnet18.bogus")
    with pytest.raises(RadprobeError, match="names no model"):
        get_backbone_entry("timm:")
    assert get_backbone_entry("timm:resnet18.a1_in1k").source == "timm:resnet18.a1_in1k"


# paper: entries use the paper's preprocessing, not the weights' (test_backbone_paper.py)
@pytest.mark.parametrize(
    "name", [n for n in registered_names() if n not in HF_NAMES and not n.startswith("paper:")]
)
def test_preprocessing_matches_the_weights(name):
    bb = _meta_build(name)
    pre, entry = bb.preprocess, get_backbone_entry(name)
    if entry.family == "clip":
        assert (pre.mean, pre.std) == (CLIP_MEAN, CLIP_STD)
    elif entry.family in ("dinov2", "dinov3", "mae", "sam", "cnn", "test"):
        assert pre.mean == IMAGENET_MEAN
    if bb.info.patch_size:
        assert pre.resolution % bb.info.patch_size == 0
    assert pre.resolution == bb.info.native_resolution


def test_resolution_override():
    assert create_backbone("test:vit-tiny", resolution=128).preprocess.resolution == 128
    with pytest.raises(RadprobeError, match="not a multiple of test:vit-tiny's patch size 8; try 96"):
        create_backbone("test:vit-tiny", resolution=97)
    assert create_backbone("test:cnn-tiny", resolution=97).preprocess.resolution == 97  # no patch grid


def test_native_resolution_is_rounded_to_the_patch():
    from radprobe.backbones.registry import resolve_resolution

    assert resolve_resolution("x", 224, 14, None) == 224
    assert resolve_resolution("x", 500, 14, None) == 504
    assert resolve_resolution("x", 230, 16, None) == 224
    assert resolve_resolution("x", 300, None, None) == 300
