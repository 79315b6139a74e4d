"""Segmentation baselines trained from scratch beside the MONAI U-Net (``seg-unet``): ``seg-transunet``.

They read the images (as ``seg-unet`` does) and share its loop: a learning-rate sweep selected on
validation macro Dice, DiceCE loss, AdamW with a cosine schedule, no augmentation, few-shot draws.
"""

from __future__ import annotations

from collections.abc import Sequence

from radprobe.segmentation.protocols import SegData, SegResult, _common, _image_stats, _run
from radprobe.segmentation.train import image_fetch
from radprobe.segmentation.transunet import TransUNet


def seg_transunet(
    data: SegData,
    lrs: Sequence[float] = (3e-4, 1e-3),
    epochs: int = 50,
    min_steps: int = 300,
    batch_size: int = 16,
    weight_decay: float = 1e-4,
    widths: Sequence[int] = (16, 32, 64, 128),
    vit_dim: int = 192,
    vit_depth: int = 4,
    vit_heads: int = 3,
    decoder_channels: Sequence[int] = (128, 64, 32, 16),
    shots: int | Sequence[int] | None = None,
    repeats: int = 3,
    save_predictions: bool = False,
    overlays: int = 3,
) -> SegResult:
    """TransUNet (R-ViT hybrid encoder + cascaded upsampler) trained from scratch on the images."""
    opts = dict(locals())
    opts.pop("data")
    splits = (data.train, data.val, data.test)
    if any(s.images is None for s in splits):
        raise RuntimeError("seg-transunet needs the images loaded")
    fetch = {s.name: image_fetch(s.images, data.device) for s in splits}  # type: ignore[arg-type]
    in_ch = int(data.train.images.shape[1])  # type: ignore[union-attr]
    mean, std = _image_stats(data.train.images)  # type: ignore[arg-type]
    C = len(data.classes)
    arch = {
        "widths": list(widths),
        "vit_dim": vit_dim,
        "vit_depth": vit_depth,
        "vit_heads": vit_heads,
        "decoder_channels": list(decoder_channels),
    }
    hparams = {
        **_common(opts),
        **arch,
        "in_channels": in_ch,
        "model": "TransUNet (2D: ResNet-style CNN + ViT + cascaded upsampler)",
        "augmentation": "none",
    }

    def build() -> TransUNet:
        return TransUNet(in_ch, C, data.size, mean=mean, std=std, **arch)  # type: ignore[arg-type]

    return _run("seg-transunet", data, build, fetch, opts, hparams)
