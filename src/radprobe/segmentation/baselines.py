"""Segmentation baselines trained from scratch beside the MONAI U-Net (``seg-unet``): ``seg-transunet``.

They read the images (as ``seg-unet`` does) and share its loop: a learning-rate sweep selected on
validation macro Dice, DiceCE loss, AdamW with a cosine schedule, no augmentation, few-shot draws.
``preset=paper`` trains as Baharoon et al.'s ``transunet.ipynb`` instead (:mod:`.scratch`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from torch import nn

from radprobe.segmentation import scratch
from radprobe.segmentation.protocols import SegData, SegResult, _common, _image_stats, _run
from radprobe.segmentation.train import image_fetch
from radprobe.segmentation.transunet import PAPER_SIZE, TransUNet


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
    layout: str = "radprobe",
    preset: str | None = None,
    refit: bool = False,
    refit_lr: float | None = None,
    refit_epochs: int | None = None,
    predict_mode: str = "eval",
    shots: int | Sequence[int] | None = None,
    repeats: int = 3,
    save_predictions: bool = False,
    overlays: int = 3,
) -> SegResult:
    """TransUNet (R-ViT hybrid encoder + cascaded upsampler) trained from scratch on the images.

    ``layout``: ``"radprobe"`` (BatchNorm basic-block CNN, CPU-sized defaults) or ``"paper"`` (the
    released R50-ViT-L_16 parts at the size the options give). ``preset="paper"``: the training of
    ``transunet.ipynb`` (:mod:`.scratch`) on ``layout="paper"`` at the released size
    (:data:`~radprobe.segmentation.transunet.PAPER_SIZE`) unless options say otherwise. ``refit``,
    ``refit_lr``, ``refit_epochs``: as for ``seg-unet``."""
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
    model = MODELS[layout]
    if preset == "paper":
        hparams = {
            **_common(opts),
            **arch,
            **scratch.paper_hparams(opts, model),
            "layout": _layout(layout, arch),
        }

        def build_paper() -> nn.Module:
            return scratch.PaperInput(TransUNet(3, C, data.size, layout=layout, **arch))  # type: ignore[arg-type]

        pick = lambda seed: scratch.predictor(opts, seed)  # noqa: E731
        return _run(
            "seg-transunet",
            data,
            build_paper,
            fetch,
            opts,
            hparams,
            sweep=scratch.paper_sweep,
            predictor=pick,
        )
    hparams = {
        **_common(opts),
        **arch,
        "in_channels": in_ch,
        "model": model,
        "augmentation": "none",
        **scratch.refit_hparams(opts),
    }
    if layout != "radprobe":  # default runs keep their hparams
        hparams["layout"] = _layout(layout, arch)

    def build() -> TransUNet:
        return TransUNet(in_ch, C, data.size, mean=mean, std=std, layout=layout, **arch)  # type: ignore[arg-type]

    return _run("seg-transunet", data, build, fetch, opts, hparams)


MODELS = {
    "radprobe": "TransUNet (2D: ResNet-style CNN + ViT + cascaded upsampler)",
    "paper": "TransUNet R50-ViT-L_16 as released (ResNet-50 v2 hybrid: StdConv + GroupNorm bottlenecks "
    "(3, 4, 9); pre-norm ViT, dropout 0.1; cascaded upsampler, n_skip 3)",
}


def _layout(layout: str, arch: dict[str, Any]) -> str:
    """Which TransUNet ran and how its size compares with the paper's (recorded in its hparams)."""
    size = "the released size"
    if arch != PAPER_SIZE:
        size = (
            "not the released size (" + ", ".join(f"{k}={json.dumps(v)}" for k, v in PAPER_SIZE.items()) + ")"
        )
    if layout == "paper":
        return f"paper: the released R50-ViT-L_16 structure, {size}"
    return f"radprobe: BatchNorm basic-block CNN, ViT without dropout, not the paper's R50-ViT-L_16; {size}"
