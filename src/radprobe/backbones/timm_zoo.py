"""Backbones whose weights live in timm: the named foundation models and any ``timm:<model>``."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

from torch import nn

from radprobe.backbones.base import BackboneInfo, Preprocess
from radprobe.backbones.registry import (
    RANDOM_DIGEST,
    BackboneEntry,
    BuildOptions,
    count_params,
    register,
    register_prefix,
    resolve_resolution,
    seeded,
)
from radprobe.backbones.timm_cnn import TimmCNN, as_feature_extractor, feature_channels
from radprobe.backbones.timm_vit import TimmViT, is_timm_vit
from radprobe.backbones.weights import Transform, hub_access, hub_error, load_weights
from radprobe.errors import RadprobeError

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def create_timm_model(
    timm_name: str, backbone: str, *, pretrained: bool, seed: bool, **kwargs: Any
) -> nn.Module:
    """``timm.create_model`` headless, with dynamic image size where the model supports it.

    Hub failures become a one-line :class:`WeightsError` instead of a traceback.
    """
    import timm

    kwargs.setdefault("dynamic_img_size", True)
    try:
        with seeded(seed), hub_access() if pretrained else nullcontext():
            for _ in range(3):
                try:
                    return timm.create_model(timm_name, pretrained=pretrained, num_classes=0, **kwargs)
                except TypeError as exc:
                    # CNNs take neither keyword; SAM takes no dynamic_img_size (it resizes its table).
                    bad = [k for k in ("dynamic_img_size", "img_size") if k in str(exc) and k in kwargs]
                    if not bad:
                        raise
                    kwargs.pop(bad[0])
            return timm.create_model(timm_name, pretrained=pretrained, num_classes=0, **kwargs)
    except RadprobeError:
        raise
    except Exception as exc:
        if pretrained:
            raise hub_error(backbone, f"timm {timm_name}", exc) from None
        raise


def timm_transforms(model: nn.Module) -> dict[str, Transform]:
    """timm's own converter for this architecture (e.g. original DINOv2/SAM checkpoints -> timm keys)."""
    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return {}
    return {"timm checkpoint_filter_fn": lambda sd: fn(sd, model)}


def pos_prefix_tokens(model: nn.Module) -> int | None:
    """How many prefix tokens the model's position table covers (None: not a token model)."""
    if not hasattr(model, "num_prefix_tokens"):
        return None
    return 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)


def wrap_timm(
    model: nn.Module,
    entry: BackboneEntry,
    opts: BuildOptions,
    *,
    hub_source: str,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    preprocess: Mapping[str, Any] | None = None,
    final_norm: bool = True,
    transforms: Mapping[str, Transform] | None = None,
) -> TimmViT | TimmCNN:
    """Load ``opts.weights`` strictly into a timm model and wrap it as a ViT or CNN backbone.

    ``hub_source`` names the weights when they came from the hub; ``mean``/``std`` override the
    pretrained config's normalisation, ``preprocess`` any :class:`Preprocess` field (its
    ``resolution`` stands in for the native one when none is asked for). ``final_norm=False`` reads
    ViT tokens without the final norm; ``transforms`` add checkpoint converters to timm's own.
    """
    extra: dict[str, Any] = {}
    fixed = dict(preprocess or {})
    if opts.weights is not None:
        digest, report = load_weights(
            model,
            opts.weights,
            backbone=entry.name,
            allow_partial=opts.allow_partial_weights,
            transforms={**timm_transforms(model), **(transforms or {})},
            num_prefix_tokens=pos_prefix_tokens(model),
        )
        source = f"file:{opts.weights}"
        extra.update(report.provenance())
    elif opts.from_hub:
        source = digest = hub_source
    else:
        source, digest = "random-init", RANDOM_DIGEST

    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    native = int(cfg.get("input_size", (3, 224, 224))[-1])
    interpolation = cfg.get("interpolation", "bicubic")
    interpolation = interpolation if interpolation in INTERPOLATIONS else "bicubic"
    arch = cfg.get("architecture") or type(model).__name__
    vit = is_timm_vit(model)
    if vit:
        patch: int | None = int(model.patch_embed.patch_size[0])
        # without the final norm SAM's tokens keep the trunk width, not the neck's
        embed_dim = int(model.num_features if final_norm else model.embed_dim)
        num_blocks = len(model.blocks)
        extra.update(
            num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 0) or 0),
            num_reg_tokens=int(getattr(model, "num_reg_tokens", 0) or 0),
            has_cls_token=getattr(model, "cls_token", None) is not None,
        )
    else:
        model = as_feature_extractor(model)
        chans = feature_channels(model)
        patch, embed_dim, num_blocks = None, chans[-1], len(chans)
        extra["stage_channels"] = chans

    resolution = resolve_resolution(entry.name, fixed.pop("resolution", native), patch, opts.resolution)
    pre = Preprocess(
        mean=tuple(mean or cfg.get("mean", (0.485, 0.456, 0.406))),  # type: ignore[arg-type]
        std=tuple(std or cfg.get("std", (0.229, 0.224, 0.225))),  # type: ignore[arg-type]
        resolution=resolution,
        patch_size=patch,
        interpolation=interpolation,
    )
    pre = replace(pre, **fixed) if fixed else pre
    info = BackboneInfo(
        name=entry.name,
        family=entry.family,
        arch=arch,
        source=source,
        embed_dim=embed_dim,
        patch_size=patch,
        native_resolution=native,
        params=count_params(model),
        num_blocks=num_blocks,
        weights_digest=digest,
        extra=extra,
    )
    if vit:
        wrapper = TimmViT(model, info, pre, final_norm=final_norm)
        if not wrapper.has_cls:
            info.extra["cls_is_pooled"] = True
        return wrapper
    return TimmCNN(model, info, pre)


def build_timm(entry: BackboneEntry, opts: BuildOptions) -> TimmViT | TimmCNN:
    """Builder for every timm-hosted entry: ``options["timm_name"]`` is the timm model[.tag]."""
    timm_name = entry.options["timm_name"]
    kwargs = dict(entry.options.get("kwargs", {}))
    if opts.resolution is not None:
        # build the position table at the working grid, so a checkpoint stored at that grid loads
        # as it is and nothing is resampled again (with antialias) on every forward pass
        kwargs.setdefault("img_size", opts.resolution)
    model = create_timm_model(
        timm_name,
        entry.name,
        pretrained=opts.from_hub,
        seed=not opts.from_hub and not opts.meta,
        **kwargs,
    )
    return wrap_timm(model, entry, opts, hub_source=f"timm:{timm_name}")


def _resolve_timm(name: str, rest: str) -> BackboneEntry:
    import timm

    arch, _, tag = rest.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise RadprobeError(f"unknown timm model {arch!r} in backbone {name!r}{hint}")
    if tag and rest not in timm.list_pretrained(f"{arch}.*"):
        tags = ", ".join(timm.list_pretrained(f"{arch}.*")[:5]) or "none"
        raise RadprobeError(f"timm has no pretrained tag {rest!r} (available: {tags})")
    return BackboneEntry(
        name=name,
        family="timm",
        arch=arch,
        source=f"timm:{rest}",
        description=f"timm model {rest}",
        builder=build_timm,
        options={"timm_name": rest},
    )


register_prefix("timm", _resolve_timm)

# (name, family, timm tag, description, cached stats: params, patch, native res, embed dim, blocks).
# Stats are checked against meta-device builds by tests/backbones/test_registry.py.
_TIMM_ENTRIES: list[tuple[str, str, str, str, tuple[int, int | None, int, int, int]]] = [
    (
        "dinov2-s",
        "dinov2",
        "vit_small_patch14_dinov2.lvd142m",
        "DINOv2 ViT-S/14, LVD-142M",
        (22056192, 14, 518, 384, 12),
    ),
    (
        "dinov2-b",
        "dinov2",
        "vit_base_patch14_dinov2.lvd142m",
        "DINOv2 ViT-B/14, LVD-142M",
        (86579712, 14, 518, 768, 12),
    ),
    (
        "dinov2-l",
        "dinov2",
        "vit_large_patch14_dinov2.lvd142m",
        "DINOv2 ViT-L/14, LVD-142M",
        (304367616, 14, 518, 1024, 24),
    ),
    (
        "dinov2-g",
        "dinov2",
        "vit_giant_patch14_dinov2.lvd142m",
        "DINOv2 ViT-g/14, LVD-142M",
        (1136479232, 14, 518, 1536, 40),
    ),
    (
        "dinov2-s-reg",
        "dinov2",
        "vit_small_patch14_reg4_dinov2.lvd142m",
        "DINOv2 ViT-S/14 with 4 registers, LVD-142M",
        (22057344, 14, 518, 384, 12),
    ),
    (
        "dinov2-b-reg",
        "dinov2",
        "vit_base_patch14_reg4_dinov2.lvd142m",
        "DINOv2 ViT-B/14 with 4 registers, LVD-142M",
        (86582016, 14, 518, 768, 12),
    ),
    (
        "dinov2-l-reg",
        "dinov2",
        "vit_large_patch14_reg4_dinov2.lvd142m",
        "DINOv2 ViT-L/14 with 4 registers, LVD-142M",
        (304370688, 14, 518, 1024, 24),
    ),
    (
        "dinov2-g-reg",
        "dinov2",
        "vit_giant_patch14_reg4_dinov2.lvd142m",
        "DINOv2 ViT-g/14 with 4 registers, LVD-142M",
        (1136483840, 14, 518, 1536, 40),
    ),
    (
        "dinov3-s",
        "dinov3",
        "vit_small_patch16_dinov3.lvd1689m",
        "DINOv3 ViT-S/16, LVD-1689M",
        (21586944, 16, 256, 384, 12),
    ),
    (
        "dinov3-b",
        "dinov3",
        "vit_base_patch16_dinov3.lvd1689m",
        "DINOv3 ViT-B/16, LVD-1689M",
        (85641216, 16, 256, 768, 12),
    ),
    (
        "dinov3-l",
        "dinov3",
        "vit_large_patch16_dinov3.lvd1689m",
        "DINOv3 ViT-L/16, LVD-1689M",
        (303079424, 16, 256, 1024, 24),
    ),
    (
        "mae-b",
        "mae",
        "vit_base_patch16_224.mae",
        "MAE ViT-B/16 encoder, ImageNet-1k",
        (85798656, 16, 224, 768, 12),
    ),
    (
        "mae-l",
        "mae",
        "vit_large_patch16_224.mae",
        "MAE ViT-L/16 encoder, ImageNet-1k",
        (303301632, 16, 224, 1024, 24),
    ),
    (
        "mae-h",
        "mae",
        "vit_huge_patch14_224.mae",
        "MAE ViT-H/14 encoder, ImageNet-1k",
        (630764800, 14, 224, 1280, 32),
    ),
    (
        "clip-l",
        "clip",
        "vit_large_patch14_clip_224.openai",
        "CLIP ViT-L/14 image tower, OpenAI",
        (303179776, 14, 224, 1024, 24),
    ),
    (
        "openclip-h",
        "clip",
        "vit_huge_patch14_clip_224.laion2b",
        "OpenCLIP ViT-H/14 image tower, LAION-2B",
        (630766080, 14, 224, 1280, 32),
    ),
    (
        "vit-l-in21k",
        "supervised",
        "vit_large_patch16_224.augreg_in21k",
        "supervised ViT-L/16, ImageNet-21k (AugReg)",
        (303301632, 16, 224, 1024, 24),
    ),
    (
        "sam-b",
        "sam",
        "samvit_base_patch16.sa1b",
        "SAM ViT-B image encoder, SA-1B (256-d neck features)",
        (89670912, 16, 1024, 256, 12),
    ),
    (
        "sam-l",
        "sam",
        "samvit_large_patch16.sa1b",
        "SAM ViT-L image encoder, SA-1B (256-d neck features)",
        (308278272, 16, 1024, 256, 24),
    ),
    (
        "sam-h",
        "sam",
        "samvit_huge_patch16.sa1b",
        "SAM ViT-H image encoder, SA-1B (256-d neck features)",
        (637026048, 16, 1024, 256, 32),
    ),
    (
        "resnet50",
        "cnn",
        "resnet50.tv_in1k",
        "ResNet-50, ImageNet-1k (torchvision)",
        (23508032, None, 224, 2048, 5),
    ),
    (
        "resnet152",
        "cnn",
        "resnet152.tv_in1k",
        "ResNet-152, ImageNet-1k (torchvision)",
        (58143808, None, 224, 2048, 5),
    ),
    (
        "densenet201",
        "cnn",
        "densenet201.tv_in1k",
        "DenseNet-201, ImageNet-1k (torchvision)",
        (18092928, None, 224, 1920, 5),
    ),
    ("vgg19", "cnn", "vgg19.tv_in1k", "VGG-19, ImageNet-1k (torchvision)", (139570240, None, 224, 512, 6)),
]

for _name, _family, _tag, _desc, _stats in _TIMM_ENTRIES:
    register(
        BackboneEntry(
            name=_name,
            family=_family,
            arch=_tag.split(".")[0],
            source=f"timm:{_tag}",
            description=_desc,
            builder=build_timm,
            stats=_stats,
            options={"timm_name": _tag},
        )
    )
