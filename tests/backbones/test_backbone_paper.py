"""``paper:`` backbones: the features and preprocessing of Baharoon et al.'s released code.

Each test runs the module the authors ran (torchvision, transformers, timm with the released code's
change) by hand on the same weights and input, with tiny or randomly initialised models and local
files only. docs/paper-fidelity-backbones.md names the test that guards each detail.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from radprobe.backbones import (
    BackboneEntry,
    BuildOptions,
    Preprocess,
    backbone_stats,
    create_backbone,
    get_backbone_entry,
    registered_names,
)
from radprobe.backbones.base import IMAGENET_MEAN, IMAGENET_STD
from radprobe.backbones.paper import build_biomedclip, build_dinov2, build_sam, dinov2_pos_embed
from radprobe.backbones.registry import STAT_KEYS
from radprobe.utils import file_sha256

PAPER = [n for n in registered_names() if n.startswith("paper:")]
HF_PAPER = {n for n in PAPER if get_backbone_entry(n).requires == "hf"}
# what each paper entry's features are, by dimension (VGG: fc7; SAM: trunk tokens; BiomedCLIP: projection)
DIMS = {
    "paper:vgg19": 4096,
    "paper:sam-l": 1024,
    "paper:vit-l-in21k": 1024,
    "paper:mae-l": 1024,
    "paper:msn-l": 1024,
    "paper:clip-l": 1024,
    "paper:openclip-h": 1280,
    "paper:resnet152": 2048,
    "paper:densenet201": 1920,
    "paper:biomedclip": 512,
    "paper:dinov2-l": 1024,
}


def _x(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _meta(name: str):
    entry = get_backbone_entry(name)
    with torch.device("meta"):
        return entry.builder(entry, BuildOptions(pretrained=False, meta=True))


def _needs(name: str) -> None:
    if name in HF_PAPER:
        pytest.importorskip("transformers")


def test_every_paper_baseline_has_an_entry():
    expected = {f"paper:dinov2-{s}" for s in "sblg"} | set(DIMS)
    assert expected == set(PAPER)


@pytest.mark.parametrize("name", PAPER)
def test_paper_cached_numbers_and_feature_width_match_a_meta_build(name):
    _needs(name)
    info = _meta(name).info
    assert backbone_stats(name) == {k: getattr(info, k) for k in STAT_KEYS}
    if name in DIMS:
        assert info.embed_dim == DIMS[name]


@pytest.mark.parametrize("name", PAPER)
def test_paper_preprocessing_is_the_released_eval_transform(name):
    # transforms.py:108-114: Resize((s, s), BICUBIC), no crop for the linear probe (crop = resize, l.426),
    # RescaleImage (per-channel min-max), Normalize with ImageNet mean/std whatever the model
    _needs(name)
    pre = _meta(name).preprocess
    assert (pre.mean, pre.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert (pre.interpolation, pre.minmax) == ("bicubic", True)
    # the datasets hand the transform float tensors; torchvision 0.15 resizes them without antialiasing
    assert (pre.antialias, pre.clamp) == (False, False)
    assert pre.resolution == (1024 if name == "paper:sam-l" else 224)  # SAMLarge views 64 x 64 tokens


@pytest.mark.parametrize("crop_from", [None, 256])
def test_paper_resize_is_torchvisions_tensor_resize_without_antialias_then_rescale(crop_from):
    # transforms.py:108-114 on a (3, H, W) float tensor (nih_chest_xray.py:104-106), torchvision 0.15:
    # Resize(antialias="warn") -> None -> False for tensors; no clamp of the bicubic overshoot
    from torchvision import transforms as T

    from radprobe.backbones.paper import PAPER_PREPROCESS

    rng = np.random.default_rng(0)
    image = (rng.random((300, 260)) > 0.5).astype(np.float32)  # sharp edges: aliasing and overshoot
    pre = Preprocess(**{**PAPER_PREPROCESS, "crop_from": crop_from})
    size = crop_from or 224
    steps = [T.Resize((size, size), T.InterpolationMode.BICUBIC, antialias=False), T.CenterCrop(224)]
    x = T.Compose(steps)(torch.from_numpy(image)[None].expand(3, -1, -1))
    assert x.min() < 0 or x.max() > 1  # the overshoot the released pipeline keeps
    lo, hi = x.amin((1, 2), keepdim=True), x.amax((1, 2), keepdim=True)
    want = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)((x - lo) / (hi - lo))
    torch.testing.assert_close(pre(image), want, atol=1e-5, rtol=0)
    smooth = Preprocess(**{**PAPER_PREPROCESS, "antialias": True, "clamp": True})
    assert (smooth(image) - want).abs().max() > 0.05  # antialiasing would be a visible difference
    assert {"antialias": False, "clamp": False}.items() <= pre.to_dict().items()
    assert "antialias" not in Preprocess().to_dict() and "clamp" not in Preprocess().to_dict()


@pytest.mark.parametrize(
    ("default", "dim", "source"),
    [
        ("vgg19", 512, "timm:vgg19.tv_in1k"),
        ("sam-l", 256, "timm:samvit_large_patch16.sa1b"),
        ("vit-l-in21k", 1024, "timm:vit_large_patch16_224.augreg_in21k"),
        ("clip-l", 1024, "timm:vit_large_patch14_clip_224.openai"),
    ],
)
def test_default_entries_keep_their_features_and_cache_keys(default, dim, source):
    bb = _meta(default)
    assert bb.info.embed_dim == dim and "minmax" not in bb.preprocess.to_dict()
    assert get_backbone_entry(default).source == source


def test_minmax_stretches_each_resized_channel_and_zeroes_a_flat_one():
    image = np.random.default_rng(0).random((40, 30, 3), dtype=np.float32) * 0.5 + 0.2
    image[..., 2] = 0.3  # a flat channel: the released RescaleImage would divide by zero
    pre = Preprocess(resolution=32, minmax=True)
    plain = Preprocess(resolution=32)
    raw = plain(image) * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    lo, hi = raw.amin((1, 2), keepdim=True), raw.amax((1, 2), keepdim=True)
    expected = torch.where(hi > lo, (raw - lo) / (hi - lo), 0.0)
    got = pre(image) * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert got[0].min() == pytest.approx(0, abs=1e-6) and got[0].max() == pytest.approx(1, abs=1e-6)
    assert pre.to_dict()["minmax"] is True and "minmax" not in plain.to_dict()


# ------------------------------------------------------------------------------ torchvision CNNs


def _torchvision_file(tmp_path, arch: str):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(tv.models, arch)(weights=None).eval()
    path = tmp_path / f"{arch}.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.mark.slow  # two full-size VGG-19s
def test_paper_vgg19_is_torchvisions_classifier_without_its_last_layer(tmp_path):
    # eval/utils.py:297-305: vgg19(DEFAULT), classifier[6] = Identity -> ReLU(fc7), dropout (eval: none)
    tv, path = _torchvision_file(tmp_path, "vgg19")
    bb = create_backbone("paper:vgg19", weights=path)
    assert bb.info.extra["weights_fit"]["transform"] == "timm vgg torchvision filter"
    tv.classifier[6] = nn.Identity()
    x = _x(size=64)  # 2 x 2 maps: the adaptive 7 x 7 pool before fc6 matters
    with torch.inference_mode():
        out = bb(x, n_blocks=4, grid_layers=(-1,))
        ref = tv(x)
        fc7_pre_relu = tv.classifier[:4](torch.flatten(tv.avgpool(tv.features(x)), 1))
    assert out.cls.shape == (2, 4096) and bb.info.embed_dim == 4096
    torch.testing.assert_close(out.cls, ref, atol=1e-5, rtol=1e-4)
    assert (fc7_pre_relu < 0).any() and (out.cls >= 0).all()  # after ReLU, not before
    torch.testing.assert_close(out.pooled, out.cls)
    assert out.blocks.shape == (2, 1, 2, 4096) and out.grid[-1].shape == (2, 512, 2, 2)
    default = create_backbone("vgg19", pretrained=False)
    assert default(x).cls.shape == (2, 512)  # the default entry keeps its pooled conv features


@pytest.mark.slow  # full-size torchvision models
@pytest.mark.parametrize(
    ("name", "arch", "head"),
    [("paper:resnet152", "resnet152", "fc"), ("paper:densenet201", "densenet201", "classifier")],
)
def test_paper_resnet_and_densenet_are_torchvision_without_classifier(tmp_path, name, arch, head):
    # eval/utils.py:251-263 (fc = Identity) and 283-295 (classifier = Identity)
    tv, path = _torchvision_file(tmp_path, arch)
    bb = create_backbone(name, weights=path)
    setattr(tv, head, nn.Identity())
    x = _x(size=96)
    with torch.inference_mode():
        out, ref = bb(x), tv(x)
    assert out.cls.shape == ref.shape == (2, DIMS[name])
    torch.testing.assert_close(out.cls, ref, atol=1e-5, rtol=1e-4)


def test_paper_resnet152_takes_torchvisions_default_v2_weights():
    # torchvision's ResNet152_Weights.DEFAULT is IMAGENET1K_V2; the default entry has V1
    assert get_backbone_entry("paper:resnet152").source == "timm:resnet152.tv2_in1k"
    assert get_backbone_entry("resnet152").source == "timm:resnet152.tv_in1k"


# ----------------------------------------------------------------------------------------- SAM

SAM_TINY = {
    "img_size": 64,
    "patch_size": 8,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "global_attn_indexes": (1,),
    "window_size": 4,
    "neck_chans": 16,
}


def test_paper_sam_is_the_encoder_without_its_neck(tmp_path):
    # eval/utils.py:265-277: vision_encoder.neck = Identity, mean of the last block's tokens
    from timm.models.vision_transformer_sam import VisionTransformerSAM

    torch.manual_seed(0)
    full = VisionTransformerSAM(**SAM_TINY, use_rel_pos=True, num_classes=0).eval()
    path = tmp_path / "sam.pth"
    torch.save(full.state_dict(), path)  # with the neck: still loads strictly
    entry = BackboneEntry(
        name="paper:sam-tiny",
        family="sam",
        arch="samvit",
        source="x",
        description="",
        builder=build_sam,
        options={"timm_name": "samvit_base_patch16", "kwargs": SAM_TINY},
    )
    bb = build_sam(entry, BuildOptions(weights=path)).eval()
    assert bb.info.embed_dim == 32 and not any("neck" in k for k in bb.state_dict())
    x = _x()
    with torch.inference_mode():
        out = bb(x, n_blocks=2, grid_layers=(-1,))
        full.neck = nn.Identity()
        tokens = full.forward_features(x)  # (B, C, H, W) as the blocks leave them
    torch.testing.assert_close(out.cls, tokens.mean((2, 3)))
    torch.testing.assert_close(out.pooled, out.cls)
    torch.testing.assert_close(out.grid[-1], tokens)
    assert out.blocks.shape == (2, 1, 2, 32)  # SAMLarge.get_intermediate_layers: one block, any n


# -------------------------------------------------------------------------------------- DINOv2


def test_dinov2_interpolation_is_dinov2s_own_not_timms(tmp_path):
    # models/vision_transformer.py:165-189: bicubic by scale factor (g + 0.1) / sqrt(N), no antialias
    from timm.layers import resample_abs_pos_embed

    kwargs = {"embed_dim": 32, "depth": 2, "num_heads": 2}
    torch.manual_seed(0)
    ref = timm.create_model("vit_small_patch14_dinov2", num_classes=0, dynamic_img_size=True, **kwargs).eval()
    path = tmp_path / "dinov2.pth"
    torch.save(ref.state_dict(), path)
    entry = BackboneEntry(
        name="paper:dinov2-tiny",
        family="dinov2",
        arch="dinov2",
        source="x",
        description="",
        builder=build_dinov2,
        options={"timm_name": "vit_small_patch14_dinov2.lvd142m", "kwargs": kwargs},
    )
    bb = build_dinov2(entry, BuildOptions(weights=path)).eval()
    assert bb.preprocess.resolution == 224 and "resampled" not in bb.info.extra.get("weights_fit", {})

    table = ref.pos_embed.detach()  # (1, 1 + 37 * 37, 32)
    grid = table[:, 1:].reshape(1, 37, 37, 32).permute(0, 3, 1, 2)
    scaled = F.interpolate(grid, scale_factor=(16.1 / 37, 16.1 / 37), mode="bicubic")
    expected = torch.cat([table[:, :1], scaled.permute(0, 2, 3, 1).reshape(1, 256, 32)], dim=1)
    torch.testing.assert_close(bb.model.pos_embed.detach(), expected)
    antialiased = resample_abs_pos_embed(table, [16, 16], num_prefix_tokens=1)
    assert (antialiased - expected).abs().max() > 1e-3  # timm's own resampling would show
    assert dinov2_pos_embed(table, 37) is table  # DINOv2 adds its table unchanged at its own size

    x = _x(size=224)
    with torch.inference_mode():
        out = bb(x, n_blocks=2)
        t = ref.patch_embed(x).flatten(1, 2)  # the released forward, written out
        t = torch.cat([ref.cls_token.expand(2, -1, -1), t], dim=1) + expected
        for blk in ref.blocks:
            t = blk(t)
        normed = ref.norm(t)  # get_intermediate_layers(norm=True)
    torch.testing.assert_close(out.cls, normed[:, 0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.pooled, normed[:, 1:].mean(1), atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------ transformers ViTs


def _tiny(transformers, model_type: str, **extra):
    common = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 64}
    return transformers.AutoConfig.for_model(model_type, patch_size=16, image_size=224, **common, **extra)


def _hf_folder(tmp_path, cls_name: str, config) -> tuple[object, object]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(config).eval()
    folder = tmp_path / cls_name
    model.save_pretrained(folder)
    # the weights' own processor (0.5 mean/std) must not replace the paper's ImageNet stats
    proc = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": {"height": 112, "width": 112}}
    (folder / "preprocessor_config.json").write_text(json.dumps(proc))
    return model, folder


def _check_unnormed_hidden_states(bb, hidden, last_normed) -> None:
    """cls, pooled and blocks are the released ``hidden_states[-n:]`` with no final norm."""
    out = bb(_x(n=2, size=224, seed=1), n_blocks=2)
    torch.testing.assert_close(out.cls, hidden[-1][:, 0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.pooled, hidden[-1][:, 1:].mean(1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.blocks[:, 0, 0], hidden[-2][:, 0], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(out.cls, last_normed[:, 0], atol=1e-3)  # the final norm would show
    assert (bb.preprocess.mean, bb.preprocess.resolution) == (IMAGENET_MEAN, 224)


def test_paper_vit_l_in21k_is_the_class_token_before_the_final_norm(tmp_path):
    # eval/utils.py:60-71: ViTForImageClassification(google/vit-large-patch16-224), hidden_states[-1][:, 0]
    transformers = pytest.importorskip("transformers")
    model, folder = _hf_folder(tmp_path, "ViTForImageClassification", _tiny(transformers, "vit"))
    bb = create_backbone("paper:vit-l-in21k", weights=folder)
    assert bb.info.extra["weights_fit"]["dropped_heads"] == ["classifier.bias", "classifier.weight"]
    with torch.inference_mode():
        ref = model(_x(n=2, size=224, seed=1), output_hidden_states=True)
        vit = model.vit(_x(n=2, size=224, seed=1))
        _check_unnormed_hidden_states(bb, ref.hidden_states, vit.last_hidden_state)


def test_paper_mae_l_is_the_unmasked_encoder_loaded_as_a_plain_vit(tmp_path):
    # eval/utils.py:217-228: ViTForImageClassification.from_pretrained('facebook/vit-mae-large'): no masking
    transformers = pytest.importorskip("transformers")
    config = _tiny(
        transformers,
        "vit_mae",
        decoder_hidden_size=16,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    _, folder = _hf_folder(tmp_path, "ViTMAEForPreTraining", config)
    bb = create_backbone("paper:mae-l", weights=folder)
    assert all(k.startswith("decoder.") for k in bb.info.extra["weights_fit"]["dropped_heads"])
    with torch.inference_mode():
        released = transformers.ViTForImageClassification.from_pretrained(folder).eval()
        x = _x(n=2, size=224, seed=1)
        ref = released(x, output_hidden_states=True)
        last = released.vit(x).last_hidden_state
        _check_unnormed_hidden_states(bb, ref.hidden_states, last)
        torch.testing.assert_close(bb(x).cls, bb(x).cls)  # no random masking


def test_paper_msn_l_is_the_class_token_before_the_final_norm(tmp_path):
    # eval/utils.py:95-106: ViTMSNModel('facebook/vit-msn-large'), hidden_states[-1][:, 0]
    transformers = pytest.importorskip("transformers")
    model, folder = _hf_folder(tmp_path, "ViTMSNModel", _tiny(transformers, "vit_msn"))
    bb = create_backbone("paper:msn-l", weights=folder)
    with torch.inference_mode():
        ref = model(_x(n=2, size=224, seed=1), output_hidden_states=True)
        _check_unnormed_hidden_states(bb, ref.hidden_states, ref.last_hidden_state)


def test_paper_clip_l_is_the_vision_class_token_before_post_layernorm(tmp_path):
    # eval/utils.py:131-142: CLIPModel(...).vision_model, hidden_states[-1][:, 0]; no projection
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 3,
            "patch_size": 16,
            "image_size": 224,
        },
        projection_dim=8,
    )
    model, folder = _hf_folder(tmp_path, "CLIPModel", config)
    bb = create_backbone("paper:clip-l", weights=folder)
    with torch.inference_mode():
        ref = model.vision_model(_x(n=2, size=224, seed=1), output_hidden_states=True)
        normed = model.vision_model.post_layernorm(ref.hidden_states[-1])
        _check_unnormed_hidden_states(bb, ref.hidden_states, normed)


# ---------------------------------------------------------------------------------- BiomedCLIP


def test_paper_biomedclip_is_the_projected_image_embedding(tmp_path):
    # eval/utils.py:201-211: create_model_from_pretrained(...).visual(x): trunk class token -> head.proj
    kwargs = {"img_size": 64, "depth": 2}
    torch.manual_seed(0)
    trunk = timm.create_model("vit_tiny_patch16_224", num_classes=0, **kwargs).eval()
    proj = torch.randn(16, 192)
    sd = {f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()}
    sd |= {"visual.head.proj.weight": proj, "text.proj": torch.randn(3, 3), "logit_scale": torch.ones(())}
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(sd, path)
    entry = BackboneEntry(
        name="paper:biomedclip-tiny",
        family="clip",
        arch="vit",
        source="x",
        description="",
        builder=build_biomedclip,
        requires="openclip",
        options={"hub": "nowhere", "trunk": "vit_tiny_patch16_224", "embed_dim": 16, "kwargs": kwargs},
    )
    bb = build_biomedclip(entry, BuildOptions(weights=path)).eval()
    assert bb.info.embed_dim == 16 and bb.info.weights_digest == file_sha256(path)
    assert bb.info.source == f"file:{path}"
    x = _x()
    with torch.inference_mode():
        out = bb(x, n_blocks=4, grid_layers=(-1,))
        ref = trunk(x) @ proj.T  # open_clip TimmModel.forward: head(trunk(x))
    torch.testing.assert_close(out.cls, ref, atol=1e-5, rtol=1e-4)
    assert out.blocks.shape == (2, 1, 2, 16) and out.grid[-1].shape == (2, 192, 4, 4)


def test_crop_from_is_torchvisions_resize_then_centre_crop():
    from torchvision.transforms import CenterCrop, InterpolationMode, Resize

    rng = np.random.default_rng(4)
    img = rng.random((300, 260)).astype(np.float32)
    pp = Preprocess(resolution=224, crop_from=256)
    t = torch.from_numpy(img)[None]
    ref = CenterCrop(224)(Resize((256, 256), InterpolationMode.BICUBIC, antialias=True)(t)).clamp(0, 1)
    mean, std = torch.tensor(pp.mean).view(3, 1, 1), torch.tensor(pp.std).view(3, 1, 1)
    torch.testing.assert_close(pp(img), (ref - mean) / std, atol=1e-5, rtol=1e-5)
    assert "crop_from" not in Preprocess().to_dict()  # keys without the crop stay what they were
    with pytest.raises(ValueError, match="crop_from 200 is smaller than the resolution 224"):
        Preprocess(resolution=224, crop_from=200)


def test_paper_entries_extract_under_fp16_autocast_on_a_gpu_as_released(monkeypatch):
    # configs/ssl_default_config.yaml:9 param_dtype fp16, used by eval/setup.py:63-70 for every model
    from dataclasses import replace

    from radprobe.backbones import registry
    from radprobe.features.extract import _autocast_dtype, compute_precision

    paper = [n for n in registry.registered_names() if n.startswith("paper:")]
    assert len(paper) == 14 and all(get_backbone_entry(n).options["autocast"] == "fp16" for n in paper)
    assert "autocast" not in get_backbone_entry("dinov2-s").options
    tiny = get_backbone_entry("test:vit-tiny")
    monkeypatch.setitem(
        registry._REGISTRY, "test:vit-tiny", replace(tiny, options={**tiny.options, "autocast": "fp16"})
    )
    bb = create_backbone("test:vit-tiny")
    assert bb.info.extra["autocast"] == "fp16"
    assert _autocast_dtype(torch.device("cuda"), bb) is torch.float16  # whatever bf16 support says
    assert compute_precision("cpu", bb) == "fp32"  # CPUs compute in fp32 for every backbone
