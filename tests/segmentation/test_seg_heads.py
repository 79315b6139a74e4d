"""Head shapes, decoder level plans and sizes, U-Net padding."""

from __future__ import annotations

import torch

from radprobe.backbones import create_backbone
from radprobe.segmentation.heads import (
    LightDecoder,
    LinearHead,
    UNetModel,
    count_trainable,
    decoder_plan,
    linear_layer,
)


def test_decoder_plans():
    assert decoder_plan(24, True) == ([5, 11, 17, 23], [4.0, 2.0, 1.0, 0.5])  # DPT's ViT-L blocks
    assert decoder_plan(12, True)[0] == [2, 5, 8, 11]  # DPT's ViT-B blocks
    assert decoder_plan(2, True)[0] == [0, 0, 1, 1]  # shallow test model repeats blocks
    assert decoder_plan(5, False) == ([1, 2, 3, 4], [1.0] * 4)  # CNN: last four stages
    assert linear_layer(24) == 23


def test_vit_decoder_shapes_and_size():
    layers, scales = decoder_plan(24, True)
    dec = LightDecoder(layers, [1024] * 4, scales, num_classes=3, channels=128)
    n = count_trainable(dec)
    assert 1e6 < n < 5e6, n  # "light": a few M parameters at most, even on ViT-L features
    feats = {la: torch.randn(2, 1024, 8, 8) for la in set(layers)}
    assert dec(feats).shape == (2, 3, 32, 32)  # the x4 level sets the output resolution
    lin = LinearHead(23, 1024, 3)
    assert lin(feats).shape == (2, 3, 8, 8) and count_trainable(lin) == 1024 * 2 + 1024 * 3 + 3


def test_cnn_decoder_on_stage_maps():
    bb = create_backbone("test:cnn-tiny")
    layers, scales = decoder_plan(bb.info.num_blocks, False)
    with torch.no_grad():
        grid = bb(torch.randn(2, 3, 64, 64), grid_layers=tuple(layers)).grid
    dec = LightDecoder(layers, [grid[la].shape[1] for la in layers], scales, num_classes=2, channels=16)
    out = dec(grid)
    finest = max(grid.values(), key=lambda g: g.shape[-1])
    assert out.shape == (2, 2, *finest.shape[-2:])


def test_unet_pads_sizes_that_do_not_divide():
    net = UNetModel(1, 3, channels=(4, 8, 16), res_units=1)
    assert net(torch.randn(2, 1, 30, 26)).shape == (2, 3, 30, 26)
    assert net(torch.randn(1, 1, 32, 32)).shape == (1, 3, 32, 32)
