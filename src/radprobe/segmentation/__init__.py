"""Segmentation track: frozen-backbone heads and a from-scratch U-Net on 2D images and 3D volumes.

Protocols (``radprobe eval --protocol seg-linear,seg-decoder,seg-unet``):

* ``seg-linear``  — BatchNorm + 1x1 conv on the last block's patch grid (DINOv2 linear segmentation)
* ``seg-decoder`` — a DPT-style light decoder fusing four frozen levels
* ``seg-unet``    — MONAI's 2D UNet trained from scratch on the same data and splits (reference)

Volumes are segmented slice by slice and scored per volume. Options: :mod:`.protocols`; metrics and
their empty-class rules: :mod:`.metrics`; the run itself: :func:`evaluate_segmentation`.
"""

from __future__ import annotations

from radprobe.segmentation.evaluate import evaluate_segmentation, seg_resolution
from radprobe.segmentation.protocols import SEG_PROTOCOLS, SegData, SegResult

__all__ = ["SEG_PROTOCOLS", "SegData", "SegResult", "evaluate_segmentation", "seg_resolution"]
