"""Segmentation parts: frozen-backbone heads, a from-scratch U-Net, losses, and slice/volume handling
for 2D images and 3D volumes.

Protocols (registered in :mod:`radprobe.protocols.registry`; run by :mod:`radprobe.run.segment`):

* ``seg-linear``  — BatchNorm + 1x1 conv on the last block's patch grid (DINOv2 linear segmentation)
* ``seg-decoder`` — a DPT-style light decoder fusing four frozen levels
* ``seg-updecoder`` — Baharoon et al.'s UNet decoder on the last five blocks' grids (:mod:`.updecoder`)

``preset=paper`` (seg-linear, seg-updecoder) trains as the paper's released code, every learning rate
of the sweep in one fused pass (:mod:`.fused`).
* ``seg-unet``    — MONAI's 2D UNet trained from scratch on the same data and splits (reference)
* ``seg-transunet`` — TransUNet (CNN + ViT encoder, cascaded upsampler) trained from scratch
  (:mod:`.transunet`, runner in :mod:`.baselines`)

Volumes are segmented slice by slice and scored per volume. Options: :mod:`.protocols` and the
shared scoring options of :mod:`.score_options`; metrics and their empty-class rules:
:mod:`radprobe.metrics.segmentation`.
"""
