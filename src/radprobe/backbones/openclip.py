"""open_clip image towers: BiomedCLIP.

BiomedCLIP's image tower is a timm ``vit_base_patch16_224`` trunk, so radprobe builds that trunk
with timm and only needs ``open_clip`` (the ``openclip`` extra, imported lazily) to fetch the hub
weights. A local ``open_clip_pytorch_model.bin`` loads without open_clip: its ``visual.trunk.``
prefix is stripped by the strict loader.
"""

from __future__ import annotations

from typing import Any

from radprobe.backbones.base import CLIP_MEAN, CLIP_STD
from radprobe.backbones.registry import BackboneEntry, BuildOptions, register
from radprobe.backbones.timm_cnn import TimmCNN
from radprobe.backbones.timm_vit import TimmViT
from radprobe.backbones.timm_zoo import create_timm_model, wrap_timm
from radprobe.backbones.weights import apply_state_dict, hub_access, hub_error
from radprobe.errors import RadprobeError


def import_open_clip(backbone: str) -> Any:
    """The ``open_clip`` module, or a one-line error naming the extra and the offline alternative."""
    try:
        import open_clip
    except ImportError:
        raise RadprobeError(
            f"backbone {backbone} needs the 'openclip' extra for hub weights: pip install "
            "'radprobe[openclip]', or pass --weights PATH to open_clip_pytorch_model.bin"
        ) from None
    return open_clip


def build_open_clip_timm(entry: BackboneEntry, opts: BuildOptions) -> TimmViT | TimmCNN:
    """Builder for open_clip models with a timm trunk: ``options`` has ``hub`` and ``trunk``."""
    hub = entry.options["hub"]
    open_clip = import_open_clip(entry.name) if opts.from_hub else None  # fail before building anything
    model = create_timm_model(
        entry.options["trunk"], entry.name, pretrained=False, seed=not opts.from_hub and not opts.meta
    )
    report = None
    if open_clip is not None:
        try:
            with hub_access():
                clip = open_clip.create_model(hub, require_pretrained=True)
        except Exception as exc:
            raise hub_error(entry.name, f"open_clip {hub}", exc) from None
        report = apply_state_dict(
            model,
            clip.visual.trunk.state_dict(),
            label=f"open_clip {hub}",
            backbone=entry.name,
            allow_partial=opts.allow_partial_weights,
        )
    backbone = wrap_timm(model, entry, opts, hub_source=f"openclip:{hub}", mean=CLIP_MEAN, std=CLIP_STD)
    if report is not None:
        backbone.info.extra.update(report.provenance())
    return backbone


register(
    BackboneEntry(
        name="biomedclip",
        family="clip",
        arch="vit_base_patch16_224",
        source="openclip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        description="BiomedCLIP ViT-B/16 image tower, PMC-15M figure-caption pairs (Microsoft)",
        builder=build_open_clip_timm,
        requires="openclip",
        stats=(85798656, 16, 224, 768, 12),
        options={
            "hub": "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
            "trunk": "vit_base_patch16_224",
        },
    )
)
