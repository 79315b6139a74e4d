"""Tiny, seeded, download-free backbones for tests and dry runs (``test:vit-tiny`` etc.)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from radprobe.backbones.base import IMAGENET_MEAN, IMAGENET_STD
from radprobe.backbones.registry import RANDOM_DIGEST, BackboneEntry, BuildOptions, register, seeded
from radprobe.backbones.timm_cnn import TimmCNN
from radprobe.backbones.timm_vit import TimmViT
from radprobe.backbones.timm_zoo import wrap_timm

NATIVE = 64
# ViT-Ti's width: PEFT parameter shares (LoRA r8 ~5 %) then look like a real model's, not a toy's.
WIDTH = 192


def _cfg(arch: str) -> dict[str, Any]:
    return {
        "architecture": arch,
        "input_size": (3, NATIVE, NATIVE),
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "interpolation": "bicubic",
    }


def _finish(model: nn.Module, arch: str, entry: BackboneEntry, opts: BuildOptions) -> TimmViT | TimmCNN:
    model.pretrained_cfg = _cfg(arch)
    # There are no hub weights: "pretrained" means the seeded init unless a file is given.
    return wrap_timm(model, entry, replace(opts, pretrained=False), hub_source=RANDOM_DIGEST)


def _vit_builder(reg_tokens: int):
    def build(entry: BackboneEntry, opts: BuildOptions) -> TimmViT | TimmCNN:
        from timm.models.vision_transformer import VisionTransformer

        with seeded(not opts.meta):
            model = VisionTransformer(
                img_size=NATIVE,
                patch_size=8,
                embed_dim=WIDTH,
                depth=2,
                num_heads=3,
                num_classes=0,
                reg_tokens=reg_tokens,
                dynamic_img_size=True,
            )
        return _finish(model, entry.arch, entry, opts)

    return build


def _build_cnn(entry: BackboneEntry, opts: BuildOptions) -> TimmViT | TimmCNN:
    from timm.models.resnet import BasicBlock, ResNet

    with seeded(not opts.meta):
        model = ResNet(
            block=BasicBlock, layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_width=8, num_classes=0
        )
    return _finish(model, entry.arch, entry, opts)


register(
    BackboneEntry(
        name="test:vit-tiny",
        family="test",
        arch="vit-tiny-test",
        source="random-init",
        description="random 2-block ViT (dim 192, patch 8, 64 px) for tests",
        builder=_vit_builder(0),
        stats=(939840, 8, NATIVE, WIDTH, 2),
    )
)
register(
    BackboneEntry(
        name="test:vit-tiny-reg",
        family="test",
        arch="vit-tiny-reg4-test",
        source="random-init",
        description="test:vit-tiny with 4 register tokens",
        builder=_vit_builder(4),
        stats=(941376, 8, NATIVE, WIDTH, 2),
    )
)
register(
    BackboneEntry(
        name="test:cnn-tiny",
        family="test",
        arch="resnet-tiny-test",
        source="random-init",
        description="random 4-stage ResNet (widths 8-64, 64 px) for tests",
        builder=_build_cnn,
        stats=(91216, None, NATIVE, 64, 5),
    )
)
