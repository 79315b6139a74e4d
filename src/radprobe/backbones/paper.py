"""The backbones as Baharoon et al. (arXiv 2312.02366) ran them: ``paper:<name>`` beside ``<name>``.

Each ``paper:`` entry takes the features the authors' released code takes (MohammedSB/DINOv2ForRadiology,
``dinov2/eval/utils.py`` and ``dinov2/eval/setup.py``) and preprocesses images as its evaluation
transform does (``dinov2/data/transforms.py``): a bicubic resize to the input size without a crop,
each channel stretched to [0, 1] by its own minimum and maximum, then ImageNet mean/std for every
model, CLIP and SAM included. docs/paper-fidelity-backbones.md lists each detail against the code.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from radprobe.backbones.base import IMAGENET_MEAN, IMAGENET_STD, BackboneOutput
from radprobe.backbones.hf import build_hf
from radprobe.backbones.openclip import import_open_clip
from radprobe.backbones.registry import (
    RANDOM_DIGEST,
    BackboneEntry,
    BuildOptions,
    count_params,
    register,
    seeded,
)
from radprobe.backbones.timm_cnn import TimmCNN
from radprobe.backbones.timm_vit import TimmViT, block_indices
from radprobe.backbones.timm_zoo import create_timm_model, wrap_timm
from radprobe.backbones.weights import (
    FitReport,
    Transform,
    apply_state_dict,
    hub_access,
    hub_error,
    read_state_dict,
    weights_file,
)
from radprobe.utils import file_sha256

# The linear probe's eval transform (linear.py:426 -> transforms.py:108-114); 224 unless --image-size.
# The datasets hand it float tensors (e.g. data/datasets/nih_chest_xray.py:104-106), and torchvision
# 0.15 (requirements.txt:3) resizes tensors without antialiasing and leaves bicubic overshoot.
PAPER_PREPROCESS: dict[str, Any] = {
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "resolution": 224,
    "interpolation": "bicubic",
    "minmax": True,
    "antialias": False,
    "clamp": False,
}
# torchvision's classifier dropout, active when a paper VGG is trained (classifier[2] and [5]).
VGG_DROPOUT = 0.5


def _preprocess(**overrides: Any) -> dict[str, Any]:
    return {**PAPER_PREPROCESS, **overrides}


def _timm(entry: BackboneEntry, opts: BuildOptions, name: str | None = None, **kwargs: Any) -> nn.Module:
    """The entry's timm model (``options["kwargs"]`` passed on) at its checkpoint's own size, a
    ``resolution`` being served by the builder, never by timm resampling tables on the way in.
    ``name`` builds another architecture without hub weights (a trunk whose weights come elsewhere)."""
    return create_timm_model(
        name or entry.options["timm_name"],
        entry.name,
        pretrained=opts.from_hub and name is None,
        seed=not opts.from_hub and not opts.meta,
        **{**entry.options.get("kwargs", {}), **kwargs},
    )


# ---------------------------------------------------------------------------------------- DINOv2


def dinov2_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """A (1, 1 + N, D) table resampled to ``grid`` x ``grid`` as DINOv2's ``interpolate_pos_encoding``
    does (models/vision_transformer.py:165-189): bicubic by the scale factor (grid + 0.1) / sqrt(N),
    without antialiasing, where timm's resampler antialiases and scales by size."""
    n, dim = pos_embed.shape[1] - 1, pos_embed.shape[-1]
    side = math.isqrt(n)
    if side == grid:
        return pos_embed
    patches = pos_embed[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    scale = (grid + 0.1) / math.sqrt(n)
    patches = F.interpolate(patches, scale_factor=(scale, scale), mode="bicubic")
    if patches.shape[-2:] != (grid, grid):
        raise ValueError(f"DINOv2 interpolation gave a {tuple(patches.shape[-2:])} grid, not {grid}")
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)
    return torch.cat([pos_embed[:, :1], patches.to(pos_embed.dtype)], dim=1)


def _set_dinov2_grid(model: nn.Module, resolution: int) -> None:
    """Store the table for ``resolution`` so that timm, seeing the grid it holds, adds it unchanged."""
    patch = int(model.patch_embed.patch_size[0])
    grid = resolution // patch
    with torch.no_grad():
        model.pos_embed = nn.Parameter(dinov2_pos_embed(model.pos_embed.data, grid))
    model.patch_embed.img_size = (resolution, resolution)
    model.patch_embed.grid_size = (grid, grid)
    model.patch_embed.num_patches = grid * grid


def build_dinov2(entry: BackboneEntry, opts: BuildOptions) -> TimmViT | TimmCNN:
    """DINOv2 at 224 with the final norm on every block (``get_intermediate_layers(norm=True)``)."""
    model = _timm(entry, opts)
    backbone = wrap_timm(
        model, entry, opts, hub_source=f"timm:{entry.options['timm_name']}", preprocess=_preprocess()
    )
    if not opts.meta:
        _set_dinov2_grid(backbone.model, backbone.preprocess.resolution)
    return backbone


# ------------------------------------------------------------------------------------------- SAM


class PaperSAM(TimmViT):
    """SAM's image encoder without its neck: cls = pooled = the mean of the last block's tokens.

    blocks has n = 1 whatever is asked: the released wrapper returns that one vector as its only
    block (``SAMLarge.get_intermediate_layers``), so "the last 4 blocks" are the last block there.
    """

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, n_blocks: int = 1, grid_layers: tuple[int, ...] = ()
    ) -> BackboneOutput:
        return super().forward(x, 1, grid_layers)


def build_sam(entry: BackboneEntry, opts: BuildOptions) -> PaperSAM:
    """SAM's image encoder without its neck: 1024-d tokens of the last block at 1024 px
    (``SAMLarge``: ``neck = Identity``, mean of the 64 x 64 tokens)."""
    model = _timm(entry, opts)
    backbone = wrap_timm(
        model,
        entry,
        opts,
        hub_source=f"timm:{entry.options['timm_name']}",
        preprocess=_preprocess(resolution=1024),
        final_norm=False,
    )
    assert isinstance(backbone, TimmViT)
    # dropped after loading, so checkpoints that carry the neck still load strictly
    backbone.model.neck = nn.Identity()
    info = replace(backbone.info, params=count_params(backbone.model))
    return PaperSAM(backbone.model, info, backbone.preprocess, final_norm=False)


# ------------------------------------------------------------------------------------------- CNNs


def build_cnn(entry: BackboneEntry, opts: BuildOptions) -> TimmViT | TimmCNN:
    """ResNet / DenseNet with their classifier replaced by Identity: the global average pool."""
    model = _timm(entry, opts)
    return wrap_timm(
        model,
        entry,
        opts,
        hub_source=f"timm:{entry.options['timm_name']}",
        preprocess=_preprocess(),
        transforms=_torchvision_converters(model),
    )


def _torchvision_converters(model: nn.Module) -> dict[str, Transform]:
    """timm's converters from torchvision's key layout, which timm does not name checkpoint_filter_fn."""
    import timm.models.densenet as densenet
    import timm.models.vgg as vgg

    if isinstance(model, densenet.DenseNet):
        return {"timm densenet torchvision filter": densenet._filter_torchvision_pretrained}
    if isinstance(model, vgg.VGG):
        return {"timm vgg torchvision filter": vgg._filter_fn}
    return {}


class PaperVGG(TimmCNN):
    """VGG-19 read as torchvision's ``classifier[:6]``: 7x7 adaptive pool, fc6, ReLU, dropout, fc7,
    ReLU, dropout -> 4096-d (``VGG19ImageNet1k``: ``classifier[6] = Identity``).

    cls = pooled = that vector; blocks has n = 1 as for every CNN; grid gives the conv stage maps.
    """

    def __init__(self, backbone: TimmCNN) -> None:
        super().__init__(backbone.model, backbone.info, backbone.preprocess)
        self.dropout = nn.Dropout(VGG_DROPOUT)

    def fc7(self, features: torch.Tensor) -> torch.Tensor:
        """The classifier's 4096-d output from the last (max-pooled) conv map."""
        mlp = self.model.pre_logits  # timm holds fc6/fc7 as 7x7 and 1x1 convolutions
        x = F.adaptive_avg_pool2d(features, (7, 7))
        x = mlp.drop(mlp.act1(mlp.fc1(x)))
        x = self.dropout(mlp.act2(mlp.fc2(x)))
        return x.flatten(1)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, n_blocks: int = 1, grid_layers: tuple[int, ...] = ()
    ) -> BackboneOutput:
        depth = self.info.num_blocks
        last, grid_idx = block_indices(self.info.name, depth, 1, tuple(grid_layers))
        wanted = sorted(set(last) | set(grid_idx.values()))
        maps = dict(zip(wanted, self._stages(x, wanted), strict=True))
        feats = self.fc7(maps[depth - 1])
        return BackboneOutput(
            cls=feats,
            pooled=feats,
            blocks=torch.stack([feats, feats], dim=1)[:, None],
            grid={layer: maps[i] for layer, i in grid_idx.items()},
        )


def build_vgg(entry: BackboneEntry, opts: BuildOptions) -> PaperVGG:
    model = _timm(entry, opts, drop_rate=VGG_DROPOUT)
    backbone = wrap_timm(
        model,
        entry,
        opts,
        hub_source=f"timm:{entry.options['timm_name']}",
        preprocess=_preprocess(),
        transforms=_torchvision_converters(model),
    )
    assert isinstance(backbone, TimmCNN)
    backbone.info = replace(backbone.info, embed_dim=int(model.pre_logits.fc2.out_channels))
    return PaperVGG(backbone)


# ------------------------------------------------------------------------------------ BiomedCLIP


class OpenClipVisual(nn.Module):
    """open_clip's ``TimmModel`` layout (``trunk``, ``head.proj``), so its state dict loads as it is."""

    def __init__(self, trunk: nn.Module, embed_dim: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = nn.Sequential(OrderedDict(proj=nn.Linear(trunk.num_features, embed_dim, bias=False)))


class PaperBiomedCLIP(TimmViT):
    """BiomedCLIP's image embedding: the trunk's final-normed class token through the 768 -> 512
    projection (``BiomedCLIPBase``: ``model.visual(x)``).

    cls = pooled = that embedding; blocks has n = 1 (the released wrapper returns one block and no
    patch tokens); grid gives the trunk's final-normed 768-d patch maps.
    """

    def __init__(self, backbone: TimmViT, proj: nn.Linear) -> None:
        super().__init__(backbone.model, backbone.info, backbone.preprocess)
        self.proj = proj

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, n_blocks: int = 1, grid_layers: tuple[int, ...] = ()
    ) -> BackboneOutput:
        out = super().forward(x, 1, grid_layers)
        emb = self.proj(out.cls)
        return BackboneOutput(
            cls=emb, pooled=emb, blocks=torch.stack([emb, emb], dim=1)[:, None], grid=out.grid
        )


def _visual_only(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image tower of a full open_clip checkpoint; the text tower is not part of the backbone."""
    out = {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")}
    if not out:
        raise KeyError("no visual. keys")
    return out


def _load_visual(
    entry: BackboneEntry, opts: BuildOptions, visual: OpenClipVisual
) -> tuple[str, str, FitReport | None]:
    """Weights into ``visual`` from --weights, the hub (via open_clip) or none; (source, digest, report)."""
    hub = entry.options["hub"]
    common: dict[str, Any] = {"backbone": entry.name, "allow_partial": opts.allow_partial_weights}
    if opts.weights is not None:
        file = weights_file(opts.weights)
        transforms = {"open_clip image tower": _visual_only}
        report = apply_state_dict(
            visual, read_state_dict(file), label=str(file), transforms=transforms, **common
        )
        return f"file:{opts.weights}", file_sha256(file), report
    if opts.from_hub:
        open_clip = import_open_clip(entry.name)
        try:
            with hub_access():
                clip = open_clip.create_model(hub, require_pretrained=True)
        except Exception as exc:
            raise hub_error(entry.name, f"open_clip {hub}", exc) from None
        report = apply_state_dict(visual, clip.visual.state_dict(), label=f"open_clip {hub}", **common)
        return f"openclip:{hub}", f"openclip:{hub}", report
    return "random-init", RANDOM_DIGEST, None


def build_biomedclip(entry: BackboneEntry, opts: BuildOptions) -> PaperBiomedCLIP:
    trunk = _timm(entry, opts, name=entry.options["trunk"])  # weights: open_clip, below
    with seeded(not opts.meta):
        visual = OpenClipVisual(trunk, entry.options["embed_dim"])
    source, digest, report = _load_visual(entry, opts, visual)
    # the weights are in place: wrap the trunk as it is, then name where they came from
    as_is = BuildOptions(pretrained=False, meta=opts.meta, resolution=opts.resolution)
    backbone = wrap_timm(trunk, entry, as_is, hub_source=source, preprocess=_preprocess())
    assert isinstance(backbone, TimmViT)
    extra = dict(backbone.info.extra, **(report.provenance() if report is not None else {}))
    backbone.info = replace(
        backbone.info,
        source=source,
        weights_digest=digest,
        embed_dim=entry.options["embed_dim"],
        params=count_params(visual),
        extra=extra,
    )
    return PaperBiomedCLIP(backbone, visual.head.proj)


# ------------------------------------------------------------------------------------ the entries

_VIT_L16 = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "patch_size": 16,
    "image_size": 224,
}
_CLIP_L = {
    "model_type": "clip",
    "projection_dim": 768,
    "text_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "projection_dim": 768,
    },
    "vision_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "image_size": 224,
        "projection_dim": 768,
    },
}
_CLIP_H = {
    "model_type": "clip",
    "projection_dim": 1024,
    "text_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "hidden_act": "gelu",
        "projection_dim": 1024,
    },
    "vision_config": {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_attention_heads": 16,
        "num_hidden_layers": 32,
        "patch_size": 14,
        "image_size": 224,
        "hidden_act": "gelu",
        "projection_dim": 1024,
    },
}
# HF models: the last hidden states as the encoder leaves them, before the final layer norm
# (``output.hidden_states[-1][:, 0]``), at 224 px with the paper's fixed preprocessing.
_HF_PAPER = {"final_norm": False, "preprocess": {**_preprocess(), "fixed": True}}


def _hf(repo: str, config: dict[str, Any], **options: Any) -> dict[str, Any]:
    return {"repo": repo, "config": config, **_HF_PAPER, **options}


# (name, family, arch, source, builder, requires, stats, description, options); stats as in STAT_KEYS,
# checked against meta-device builds by tests/backbones/test_backbone_paper.py.
_ENTRIES: list[
    tuple[str, str, str, str, Any, str | None, tuple[int, int | None, int, int, int], str, dict]
] = [
    *[
        (
            f"paper:dinov2-{size}",
            "dinov2",
            f"vit_{arch}_patch14_dinov2",
            f"timm:vit_{arch}_patch14_dinov2.lvd142m",
            build_dinov2,
            None,
            stats,
            f"DINOv2 ViT-{size if size == 'g' else size.upper()}/14 as in the paper: 224 px, "
            "DINOv2's own position interpolation, final norm on every block",
            {"timm_name": f"vit_{arch}_patch14_dinov2.lvd142m"},
        )
        for size, arch, stats in (
            ("s", "small", (22056192, 14, 518, 384, 12)),
            ("b", "base", (86579712, 14, 518, 768, 12)),
            ("l", "large", (304367616, 14, 518, 1024, 24)),
            ("g", "giant", (1136479232, 14, 518, 1536, 40)),
        )
    ],
    (
        "paper:vit-l-in21k",
        "supervised",
        "vit",
        "hf:google/vit-large-patch16-224",
        build_hf,
        "hf",
        (303301632, 16, 224, 1024, 24),
        "supervised ViT-L/16 as in the paper: google/vit-large-patch16-224 (ImageNet-21k, fine-tuned on "
        "1k), class token before the final norm",
        _hf(
            "google/vit-large-patch16-224",
            {"model_type": "vit", **_VIT_L16},
            model_class="ViTModel",
            model_kwargs={"add_pooling_layer": False},
        ),
    ),
    (
        "paper:msn-l",
        "msn",
        "vit_msn",
        "hf:facebook/vit-msn-large",
        build_hf,
        "hf",
        (303301632, 16, 224, 1024, 24),
        "MSN ViT-L/16 as in the paper: class token before the final norm",
        _hf("facebook/vit-msn-large", {"model_type": "vit_msn", **_VIT_L16}),
    ),
    (
        "paper:mae-l",
        "mae",
        "vit",
        "hf:facebook/vit-mae-large",
        build_hf,
        "hf",
        (303301632, 16, 224, 1024, 24),
        "MAE ViT-L/16 as in the paper: the encoder loaded as a plain ViT (no masking), class token "
        "before the final norm",
        _hf(
            "facebook/vit-mae-large",
            {"model_type": "vit", **_VIT_L16},
            model_class="ViTModel",
            model_kwargs={"add_pooling_layer": False},
            drop_prefixes=("decoder.",),
        ),
    ),
    (
        "paper:clip-l",
        "clip",
        "clip_vision_model",
        "hf:openai/clip-vit-large-patch14",
        build_hf,
        "hf",
        (303179776, 14, 224, 1024, 24),
        "CLIP ViT-L/14 image tower as in the paper: class token before post_layernorm and projection, "
        "ImageNet mean/std",
        _hf("openai/clip-vit-large-patch14", _CLIP_L),
    ),
    (
        "paper:openclip-h",
        "clip",
        "clip_vision_model",
        "hf:laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        build_hf,
        "hf",
        (630766080, 14, 224, 1280, 32),
        "OpenCLIP ViT-H/14 (LAION-2B) image tower as in the paper: class token before post_layernorm "
        "and projection, ImageNet mean/std",
        _hf("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", _CLIP_H),
    ),
    (
        "paper:sam-l",
        "sam",
        "samvit_large_patch16",
        "timm:samvit_large_patch16.sa1b",
        build_sam,
        None,
        (307425280, 16, 1024, 1024, 24),
        "SAM ViT-L image encoder as in the paper: no neck, mean of the last block's 1024-d tokens, 1024 px",
        {"timm_name": "samvit_large_patch16.sa1b"},
    ),
    (
        "paper:resnet152",
        "cnn",
        "resnet152",
        "timm:resnet152.tv2_in1k",
        build_cnn,
        None,
        (58143808, None, 176, 2048, 5),
        "ResNet-152 as in the paper: torchvision's DEFAULT (IMAGENET1K_V2) weights, global average pool",
        {"timm_name": "resnet152.tv2_in1k"},
    ),
    (
        "paper:densenet201",
        "cnn",
        "densenet201",
        "timm:densenet201.tv_in1k",
        build_cnn,
        None,
        (18092928, None, 224, 1920, 5),
        "DenseNet-201 as in the paper: torchvision weights, ReLU then global average pool",
        {"timm_name": "densenet201.tv_in1k"},
    ),
    (
        "paper:vgg19",
        "cnn",
        "vgg19",
        "timm:vgg19.tv_in1k",
        build_vgg,
        None,
        (139570240, None, 224, 4096, 6),
        "VGG-19 as in the paper: torchvision weights, the classifier's 4096-d fc7 output after ReLU",
        {"timm_name": "vgg19.tv_in1k"},
    ),
    (
        "paper:biomedclip",
        "clip",
        "vit_base_patch16_224",
        "openclip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        build_biomedclip,
        "openclip",
        (86191872, 16, 224, 512, 12),
        "BiomedCLIP image tower as in the paper: the 512-d projected image embedding, ImageNet mean/std",
        {
            "hub": "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
            "trunk": "vit_base_patch16_224",
            "embed_dim": 512,
        },
    ),
]

for _name, _family, _arch, _source, _builder, _requires, _stats, _desc, _options in _ENTRIES:
    register(
        BackboneEntry(
            name=_name,
            family=_family,
            arch=_arch,
            source=_source,
            description=_desc,
            builder=_builder,
            requires=_requires,
            stats=_stats,
            # the released code extracts under fp16 autocast for every model (param_dtype: fp16)
            options={**_options, "autocast": "fp16"},
        )
    )
