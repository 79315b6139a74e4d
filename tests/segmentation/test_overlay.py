"""Overlay PNGs carry panel titles and a caption with the case's Dice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from radprobe.segmentation import output


def test_overlay_has_titled_panels_and_a_dice_caption(tmp_path: Path) -> None:
    gt = np.zeros((32, 32), int)
    gt[8:20, 8:20] = 1
    pred = np.zeros((32, 32), int)
    pred[10:22, 10:22] = 2
    assert output._dice(gt, pred) == 2 * 100 / (144 + 144)  # foreground overlap, whatever the class
    assert output._dice(np.zeros_like(gt), np.zeros_like(gt)) is None
    path = tmp_path / "o.png"
    output.write_overlay(path, np.random.default_rng(0).random((32, 32)), gt, pred, "vit · seg-linear · c1")
    img = np.asarray(Image.open(path).convert("L"))
    assert img.shape == (256 + 36, 3 * 256)  # three 8x panels, a title strip and a caption strip
    assert (img[:18] < 128).any() and (img[-15:] < 128).any()  # text drawn in both strips
    assert (img[:2] == 255).all()  # on white
